//! Stanza helpers: addressing, typed stanza errors and replies.

use minidom::Element;
use rxml::Namespace;

use crate::stream::ns;

/// A stanza error (RFC 6120 §8.3) about to be sent back to whoever sent the stanza.
#[derive(Debug, Clone, PartialEq)]
pub struct StanzaError {
    pub condition: &'static str,
    pub text: Option<String>,
    /// An application-specific condition element, for example XEP-0191's `<blocked/>`.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: &'static str) -> Self {
        StanzaError {
            condition,
            text: None,
            app: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    pub fn bad_request() -> Self {
        Self::new("bad-request")
    }
    pub fn conflict() -> Self {
        Self::new("conflict")
    }
    pub fn feature_not_implemented() -> Self {
        Self::new("feature-not-implemented")
    }
    pub fn forbidden() -> Self {
        Self::new("forbidden")
    }
    pub fn internal() -> Self {
        Self::new("internal-server-error")
    }
    pub fn item_not_found() -> Self {
        Self::new("item-not-found")
    }
    pub fn jid_malformed() -> Self {
        Self::new("jid-malformed")
    }
    pub fn not_acceptable() -> Self {
        Self::new("not-acceptable")
    }
    pub fn not_allowed() -> Self {
        Self::new("not-allowed")
    }
    pub fn not_authorized() -> Self {
        Self::new("not-authorized")
    }
    pub fn policy_violation() -> Self {
        Self::new("policy-violation")
    }
    pub fn remote_server_not_found() -> Self {
        Self::new("remote-server-not-found")
    }
    pub fn registration_required() -> Self {
        Self::new("registration-required")
    }
    pub fn resource_constraint() -> Self {
        Self::new("resource-constraint")
    }
    pub fn service_unavailable() -> Self {
        Self::new("service-unavailable")
    }
    pub fn unexpected_request() -> Self {
        Self::new("unexpected-request")
    }

    /// The error type RFC 6120 §8.3.3 associates with the condition.
    pub fn error_type(&self) -> &'static str {
        match self.condition {
            "bad-request" | "jid-malformed" | "not-acceptable" | "policy-violation"
            | "redirect" | "gone" => "modify",
            "forbidden" | "not-authorized" | "registration-required" => "auth",
            "internal-server-error"
            | "recipient-unavailable"
            | "resource-constraint"
            | "unexpected-request"
            | "remote-server-timeout" => "wait",
            _ => "cancel",
        }
    }

    pub fn to_element(&self) -> Element {
        let mut error = Element::builder("error", ns::CLIENT)
            .attr(rxml::xml_ncname!("type").to_owned(), self.error_type())
            .append(Element::bare(self.condition, ns::STANZA_ERRORS))
            .build();
        if let Some(text) = &self.text {
            let mut t = Element::builder("text", ns::STANZA_ERRORS)
                .append(text.as_str())
                .build();
            t.set_attr(
                Namespace::xml().clone(),
                rxml::xml_ncname!("lang").to_owned(),
                "en",
            );
            error.append_child(t);
        }
        if let Some(app) = &self.app {
            error.append_child(app.as_ref().clone());
        }
        error
    }
}

pub fn set_attr(el: &mut Element, name: &str, value: &str) {
    if let Ok(name) = rxml::NcName::try_from(name) {
        el.set_attr(Namespace::NONE, name, value);
    }
}

pub fn remove_attr(el: &mut Element, name: &str) {
    el.attrs_mut().remove(&Namespace::NONE, name);
}

pub fn stanza_type(el: &Element) -> &str {
    el.attr("type").unwrap_or("")
}

/// Builds an element in the client namespace with the given attributes.
pub fn build(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut el = Element::bare(name, ns::CLIENT);
    for (k, v) in attrs {
        set_attr(&mut el, k, v);
    }
    el
}

/// The error reply to a stanza, addressed back to its sender; None for an error stanza,
/// which must never be answered with another error (RFC 6120 §8.3.1).
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Option<Element> {
    if stanza_type(stanza) == "error" {
        return None;
    }
    let mut reply = Element::bare(stanza.name(), ns::CLIENT);
    for (k, v) in [
        ("id", stanza.attr("id")),
        ("to", stanza.attr("from")),
        ("from", stanza.attr("to")),
    ] {
        if let Some(v) = v {
            set_attr(&mut reply, k, v);
        }
    }
    set_attr(&mut reply, "type", "error");
    // Echoing the payload of a message helps the sender's client show what failed; for iq and
    // presence the error alone is what clients expect.
    if stanza.name() == "message" {
        for child in stanza.children() {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(err.to_element());
    Some(reply)
}

/// An iq result answering `iq`, with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::bare("iq", ns::CLIENT);
    for (k, v) in [
        ("id", iq.attr("id")),
        ("to", iq.attr("from")),
        ("from", iq.attr("to")),
    ] {
        if let Some(v) = v {
            set_attr(&mut reply, k, v);
        }
    }
    set_attr(&mut reply, "type", "result");
    if let Some(p) = payload {
        reply.append_child(p);
    }
    reply
}

/// The one payload child of an iq of type get or set (RFC 6120 §8.2.3).
pub fn iq_payload(iq: &Element) -> Option<&Element> {
    let mut children = iq.children();
    let first = children.next()?;
    if children.next().is_some() {
        return None;
    }
    Some(first)
}

/// Moves a stanza from one content namespace to another (`jabber:client` inside the server,
/// `jabber:server` between servers, `jabber:component:accept` to components, RFC 6120 §4.8.3).
/// Only elements in `from` change: payloads keep their own namespaces, and a forwarded
/// stanza inside a payload stays in `jabber:client` as XEP-0297 wants.
pub fn renamespace(mut el: Element, from: &str, to: &str) -> Element {
    if !el.has_ns(from) {
        return el;
    }
    let mut out = Element::bare(el.name(), to);
    *out.attrs_mut() = std::mem::take(el.attrs_mut());
    for node in el.take_nodes() {
        match node {
            minidom::Node::Element(child) => {
                out.append_child(renamespace(child, from, to));
            }
            minidom::Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

pub fn now_stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn stamp_from_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_errors() {
        let msg: Element =
            "<message xmlns='jabber:client' from='a@x/r' to='b@x' id='1'><body>hi</body></message>"
                .parse()
                .unwrap();
        let reply = error_reply(&msg, &StanzaError::service_unavailable()).unwrap();
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.get_child("error", ns::CLIENT).unwrap();
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZA_ERRORS));
        assert!(error_reply(&reply, &StanzaError::bad_request()).is_none());
    }

    #[test]
    fn renamespace_moves_only_the_content_namespace() {
        let msg: Element = "<message xmlns='jabber:server' to='b@x'><body>hi</body>\
            <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
            <message xmlns='jabber:client'><body>inner</body></message></forwarded></sent>\
            </message>"
            .parse()
            .unwrap();
        let m = renamespace(msg, "jabber:server", ns::CLIENT);
        assert_eq!(m.ns(), ns::CLIENT);
        assert_eq!(m.attr("to"), Some("b@x"));
        assert_eq!(m.get_child("body", ns::CLIENT).unwrap().text(), "hi");
        let inner = m
            .get_child("sent", "urn:xmpp:carbons:2")
            .and_then(|s| s.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", ns::CLIENT));
        assert!(inner.is_some());
        let back = renamespace(m, ns::CLIENT, "jabber:server");
        assert!(back.has_child("body", "jabber:server"));
    }
}
