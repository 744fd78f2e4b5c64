//! Push Notifications (XEP-0357): a client registers its app server's pubsub node; when a
//! message with a body reaches the account while no session can show it (it is kept offline,
//! or the session waits to be resumed after a dropped connection), the server publishes a
//! notification there, so the app server can wake the phone. Like Prosody by default, the
//! notification says that something arrived, not what or from whom.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module};
use crate::jid::{self, BareJid};
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::PushRegistration;

pub const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DATA: &str = "jabber:x:data";
/// Devices (registrations) per account.
const MAX_REGISTRATIONS: usize = 20;
/// The publish-options form is stored as the client sent it; it has to stay small.
const MAX_OPTIONS_BYTES: usize = 4096;

pub struct Push;

#[async_trait]
impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if !req.is_set {
            return Err(StanzaError::bad_request().with_text("push is enabled with an iq set"));
        }
        let user = req.own_user()?;
        let service = req
            .payload
            .attr("jid")
            .and_then(|j| jid::parse(j).ok())
            .map(|j| j.to_string())
            .ok_or_else(|| StanzaError::bad_request().with_text("a valid 'jid' is required"))?;
        let node = req.payload.attr("node").filter(|n| !n.is_empty());
        let store = &req.server.store;
        match req.payload.name() {
            "enable" => {
                let node = node.ok_or_else(|| {
                    StanzaError::bad_request().with_text("'node' is required to enable")
                })?;
                let options = match req.payload.get_child("x", DATA) {
                    Some(form) => {
                        let xml = String::from_utf8(crate::stream::writer::element(form))
                            .map_err(|_| StanzaError::bad_request())?;
                        if xml.len() > MAX_OPTIONS_BYTES {
                            return Err(StanzaError::policy_violation()
                                .with_text("publish-options form too large"));
                        }
                        Some(xml)
                    }
                    None => None,
                };
                let existing = store.push_registrations(user).await.map_err(internal)?;
                let replacing = existing
                    .iter()
                    .any(|r| r.service == service && r.node == node);
                if !replacing && existing.len() >= MAX_REGISTRATIONS {
                    return Err(
                        StanzaError::resource_constraint().with_text("too many push registrations")
                    );
                }
                let registration = PushRegistration {
                    service,
                    node: node.to_owned(),
                    options,
                };
                store
                    .enable_push(user, &registration)
                    .await
                    .map_err(internal)?;
                Ok(None)
            }
            "disable" => {
                store
                    .disable_push(user, &service, node)
                    .await
                    .map_err(internal)?;
                Ok(None)
            }
            _ => Err(StanzaError::feature_not_implemented()),
        }
    }
}

fn internal(e: crate::store::StoreError) -> StanzaError {
    tracing::warn!(error = %e, "push registrations unavailable");
    StanzaError::internal()
}

/// Notifies `owner`'s app servers that `message` arrived while no session could show it.
/// Only messages with a body wake a phone: chat states and receipts do not.
pub async fn notify(server: &Server, owner: &BareJid, message: &Element) {
    if message.name() != "message"
        || stanza::stanza_type(message) == "error"
        || !message.children().any(|c| c.name() == "body")
    {
        return;
    }
    let Some(user) = owner.node().map(|n| n.as_str()) else {
        return;
    };
    let registrations = match server.store.push_registrations(user).await {
        Ok(r) => r,
        Err(e) => return tracing::warn!(error = %e, "push registrations unavailable"),
    };
    for registration in registrations {
        router::route(server, publication(owner, &registration)).await;
    }
}

/// XEP-0357 §7: the pubsub publish of a notification, with the app server's publish-options.
fn publication(owner: &BareJid, registration: &PushRegistration) -> Element {
    let id = format!("push-{}", uuid::Uuid::new_v4().simple());
    let mut iq = stanza::build(
        "iq",
        &[
            ("type", "set"),
            ("id", &id),
            ("from", &owner.to_string()),
            ("to", &registration.service),
        ],
    );
    let mut form = Element::bare("x", DATA);
    stanza::set_attr(&mut form, "type", "submit");
    form.append_child(field("FORM_TYPE", "urn:xmpp:push:summary"));
    form.append_child(field("message-count", "1"));
    let mut notification = Element::bare("notification", NS);
    notification.append_child(form);
    let mut item = Element::bare("item", PUBSUB);
    item.append_child(notification);
    let mut publish = Element::bare("publish", PUBSUB);
    stanza::set_attr(&mut publish, "node", &registration.node);
    publish.append_child(item);
    let mut pubsub = Element::bare("pubsub", PUBSUB);
    pubsub.append_child(publish);
    if let Some(options) = registration
        .options
        .as_deref()
        .and_then(|o| o.parse::<Element>().ok())
    {
        let mut publish_options = Element::bare("publish-options", PUBSUB);
        publish_options.append_child(options);
        pubsub.append_child(publish_options);
    }
    iq.append_child(pubsub);
    iq
}

fn field(var: &str, value: &str) -> Element {
    let mut f = Element::bare("field", DATA);
    stanza::set_attr(&mut f, "var", var);
    f.append_child(super::text_el("value", DATA, value));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_the_node_and_carries_the_publish_options() {
        let owner = jid::parse_bare("alice@localhost").unwrap();
        let registration = PushRegistration {
            service: "push.example".into(),
            node: "n1".into(),
            options: Some(
                "<x xmlns='jabber:x:data' type='submit'><field var='secret'>\
                 <value>s</value></field></x>"
                    .into(),
            ),
        };
        let iq = publication(&owner, &registration);
        assert_eq!(iq.attr("to"), Some("push.example"));
        assert_eq!(iq.attr("from"), Some("alice@localhost"));
        let pubsub = iq.get_child("pubsub", PUBSUB).unwrap();
        let publish = pubsub.get_child("publish", PUBSUB).unwrap();
        assert_eq!(publish.attr("node"), Some("n1"));
        let text = String::from(&iq);
        assert!(text.contains("urn:xmpp:push:summary"), "{text}");
        assert!(pubsub.get_child("publish-options", PUBSUB).is_some());
        assert!(!text.contains("<body"), "no message content: {text}");
    }
}
