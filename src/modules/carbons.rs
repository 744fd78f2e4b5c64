//! Message Carbons (XEP-0280): every carbons-enabled resource of an account sees the account's
//! 1:1 conversations, both what its other resources send and what they receive.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module, el};
use crate::jid::{BareJid, FullJid};
use crate::router::table::{AccountSummary, Resource};
use crate::server::Server;
use crate::stanza::{self, StanzaError};

pub const NS: &str = "urn:xmpp:carbons:2";
pub const RULES: &str = "urn:xmpp:carbons:rules:0";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const RECEIPTS: &str = "urn:xmpp:receipts";
const MARKERS: &str = "urn:xmpp:chat-markers:0";

pub struct Carbons;

#[async_trait]
impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS, RULES]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if !req.is_set {
            return Err(StanzaError::bad_request());
        }
        let on = match req.payload.name() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::bad_request()),
        };
        // Only a connected resource can switch carbons, and only for itself.
        let (Some(conn_id), Ok(full)) = (req.conn_id, req.from.clone().try_into_full()) else {
            return Err(StanzaError::not_allowed());
        };
        req.server
            .sessions
            .set_carbons(&full, conn_id, on)
            .await
            .map_err(|_| StanzaError::internal())?;
        Ok(None)
    }
}

/// The XEP-0280 §6 rules: 1:1 chat messages, normal messages with a body, and chat states,
/// receipts and markers in them; never group chat or errors, nor what the sender marked private.
pub fn eligible(msg: &Element) -> bool {
    if msg.has_child("private", NS) || msg.has_child("no-copy", HINTS) {
        return false;
    }
    // A carbon is not copied again.
    if msg.has_child("sent", NS) || msg.has_child("received", NS) {
        return false;
    }
    match stanza::stanza_type(msg) {
        "chat" => true,
        "groupchat" | "error" | "headline" => false,
        _ => msg.children().any(|c| {
            c.is("body", crate::stream::ns::CLIENT)
                || c.has_ns(CHATSTATES)
                || c.has_ns(RECEIPTS)
                || c.has_ns(MARKERS)
        }),
    }
}

fn wrap(kind: &str, owner: &BareJid, to: &FullJid, msg: &Element) -> Element {
    let mut forwarded = Element::bare("forwarded", FORWARD);
    forwarded.append_child(msg.clone());
    let mut wrapper = Element::bare(kind, NS);
    wrapper.append_child(forwarded);
    let mut carbon = el(
        "message",
        crate::stream::ns::CLIENT,
        &[
            ("from", &owner.to_string()),
            ("to", &to.to_string()),
            ("type", stanza::stanza_type(msg)),
        ],
    );
    carbon.append_child(wrapper);
    carbon
}

/// Whether a copy of `msg` may be owed to any resource of the account `summary` describes
/// (looked up for the message already); cheap, so that the common case (nobody has carbons
/// on) copies nothing.
pub fn wanted(summary: &AccountSummary, msg: &Element) -> bool {
    summary.carbons && eligible(msg)
}

/// Sends `kind` ("sent" or "received") copies of `msg` to the carbons-enabled resources of
/// `owner`, except those in `skip` (the sender, or the resources that got the original).
pub fn copy(server: &Server, owner: &BareJid, kind: &str, msg: &Element, skip: &[FullJid]) {
    if !(server.sessions.any_carbons(owner) && eligible(msg)) {
        return;
    }
    let targets: Vec<Resource> = server
        .sessions
        .resources(owner)
        .into_iter()
        .filter(|r| r.carbons && r.available() && !skip.contains(&r.jid))
        .collect();
    for r in targets {
        let _ = r.sender.deliver(wrap(kind, owner, &r.jid, msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn eligibility_follows_the_rules() {
        assert!(eligible(&parse(
            "<message xmlns='jabber:client' type='chat'/>"
        )));
        assert!(eligible(&parse(
            "<message xmlns='jabber:client'><body>x</body></message>"
        )));
        assert!(eligible(&parse(
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='1'/></message>"
        )));
        assert!(!eligible(&parse("<message xmlns='jabber:client'/>")));
        assert!(!eligible(&parse(
            "<message xmlns='jabber:client' type='groupchat'><body>x</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message xmlns='jabber:client' type='error'><body>x</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message xmlns='jabber:client' type='chat'><private xmlns='urn:xmpp:carbons:2'/></message>"
        )));
        assert!(!eligible(&parse(
            "<message xmlns='jabber:client' type='chat'><no-copy xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}
