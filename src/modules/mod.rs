//! Feature modules: one per protocol feature, registered in [`all`].
//!
//! A module answers the iq namespaces it declares and lists the disco features it adds, so the
//! core never names a XEP: adding one means adding a module and a line below.

pub mod blocking;
pub mod bridge;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
pub mod upload;
pub mod vcard;
pub mod version;

use std::sync::Arc;

use async_trait::async_trait;
use minidom::Element;

use crate::jid::{BareJid, Jid};
use crate::server::Server;
use crate::stanza::{self, StanzaError};

/// Every module the server runs, in the order their features are listed.
pub fn all() -> Vec<Arc<dyn Module>> {
    vec![
        Arc::new(disco::Disco),
        Arc::new(roster::RosterModule),
        Arc::new(presence::PresenceModule),
        Arc::new(offline::Offline),
        Arc::new(ping::Ping),
        Arc::new(version::Version),
        Arc::new(register::Register),
        Arc::new(blocking::Blocking::default()),
        Arc::new(carbons::Carbons),
        Arc::new(csi::Csi),
        Arc::new(push::Push),
        Arc::new(upload::Upload::default()),
        Arc::new(vcard::VCard),
        Arc::new(private::Private),
        Arc::new(pep::Pep::default()),
        Arc::new(mam::Mam::default()),
        Arc::new(muc::Muc::default()),
        Arc::new(bridge::Bridge::default()),
    ]
}

/// Who an iq is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IqTarget {
    /// The server's own domain.
    Server,
    /// A local account; the server answers on its behalf (RFC 6121 §8.5.2.1.2).
    Account(BareJid),
}

/// An iq request handed to a module.
pub struct IqRequest<'a> {
    pub server: &'a Server,
    /// The sender, as stamped by its session.
    pub from: &'a Jid,
    /// The sender's connection when it is a local client session.
    pub conn_id: Option<u64>,
    pub target: IqTarget,
    pub iq: &'a Element,
    pub payload: &'a Element,
    pub is_set: bool,
    /// Stanzas for the requester that must reach it before the iq result (MAM results).
    pub before_reply: &'a std::sync::Mutex<Vec<Element>>,
}

impl IqRequest<'_> {
    /// True when a user addresses their own account (or the server on their own behalf).
    pub fn is_own_account(&self) -> bool {
        match &self.target {
            IqTarget::Server => false,
            IqTarget::Account(bare) => *bare == self.from.to_bare(),
        }
    }

    /// The sender's username when a local user addresses their own account; `forbidden`
    /// otherwise (rosters and block lists are private).
    pub fn own_user(&self) -> Result<&str, StanzaError> {
        match self.local_user() {
            Some(user) if self.is_own_account() => Ok(user),
            _ => Err(StanzaError::forbidden()),
        }
    }

    /// The sender's local username, if the sender is a local user.
    pub fn local_user(&self) -> Option<&str> {
        if self.server.is_local_domain(self.from.domain().as_str()) {
            self.from.node().map(|n| n.as_str())
        } else {
            None
        }
    }
}

/// The payload of the result, or the error to send back.
pub type IqResult = Result<Option<Element>, StanzaError>;

#[async_trait]
pub trait Module: std::any::Any + Send + Sync {
    fn name(&self) -> &'static str;

    /// disco#info features of the server that this module adds.
    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        Vec::new()
    }

    /// disco#info features of every account that this module adds.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }

    /// Stream features this module adds after authentication.
    fn stream_features(&self, _server: &Server) -> Vec<Element> {
        Vec::new()
    }

    /// The iq payload namespaces this module answers.
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    async fn handle_iq(&self, _req: IqRequest<'_>) -> IqResult {
        Err(StanzaError::service_unavailable())
    }
}

/// Answers an iq get/set addressed to the server or to an account: the stanzas to send back
/// to the requester in order, the iq result or error last; nothing for results and errors,
/// which are never answered.
pub async fn handle_iq(
    server: &Server,
    from: &Jid,
    conn_id: Option<u64>,
    target: IqTarget,
    iq: &Element,
) -> Vec<Element> {
    let kind = stanza::stanza_type(iq);
    if kind != "get" && kind != "set" {
        return Vec::new();
    }
    let Some(payload) = stanza::iq_payload(iq) else {
        return stanza::error_reply(iq, &StanzaError::bad_request())
            .into_iter()
            .collect();
    };
    let Some(module) = server.iq_handler(&payload.ns()) else {
        return stanza::error_reply(iq, &StanzaError::service_unavailable())
            .into_iter()
            .collect();
    };
    let before_reply = std::sync::Mutex::new(Vec::new());
    let req = IqRequest {
        server,
        from,
        conn_id,
        target,
        iq,
        payload,
        is_set: kind == "set",
        before_reply: &before_reply,
    };
    let reply = match module.handle_iq(req).await {
        Ok(payload) => Some(stanza::iq_result(iq, payload)),
        Err(err) => stanza::error_reply(iq, &err),
    };
    let mut out = before_reply.into_inner().unwrap_or_else(|e| e.into_inner());
    out.extend(reply);
    out
}

/// Sends `payload` in an iq set to the resources of `owner` (roster and block-list pushes);
/// with `only_interested`, to those that asked for the roster (RFC 6121 §2.1.6).
pub fn push(server: &Server, owner: &BareJid, payload: &Element, only_interested: bool) {
    for r in server.sessions.resources(owner) {
        if only_interested && !r.interested {
            continue;
        }
        let mut iq = stanza::build(
            "iq",
            &[
                ("type", "set"),
                ("id", &format!("push-{}", uuid::Uuid::new_v4().simple())),
                ("to", &r.jid.to_string()),
            ],
        );
        iq.append_child(payload.clone());
        let _ = r.sender.deliver(iq);
    }
}

/// Builds an element in `ns` with attributes.
/// Clears `hint` in the session-table entry of the local account `user`, whose cache entry
/// behind it a module has just dropped.
fn clear_hint(server: &Server, user: &str, hint: crate::router::table::Hint) {
    let bare = format!("{user}@{}", server.domain);
    server.sessions.view().hint(&bare, hint, false);
}

pub fn el(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::bare(name, ns);
    for (k, v) in attrs {
        stanza::set_attr(&mut e, k, v);
    }
    e
}

/// Builds `<name xmlns=ns>text</name>`.
pub fn text_el(name: &str, ns: &str, text: &str) -> Element {
    Element::builder(name, ns).append(text).build()
}

/// Builder-style appending, for nesting elements in one expression.
pub trait WithChild {
    fn with_child(self, child: Element) -> Element;
}

impl WithChild for Element {
    fn with_child(mut self, child: Element) -> Element {
        self.append_child(child);
        self
    }
}
