//! Offline messages (XEP-0160): chat and normal messages for an account with no available
//! resource are stored and delivered, with a XEP-0203 delay stamp, at its next initial presence.

use async_trait::async_trait;
use minidom::Element;
use tracing::warn;

use super::{Module, el};
use crate::jid::BareJid;
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::stream::{ns, writer};

/// Messages kept per account; beyond this the sender gets an error rather than the account
/// growing without bound.
pub const MAX_OFFLINE_PER_USER: u64 = 1000;

const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const HINTS: &str = "urn:xmpp:hints";

pub struct Offline;

#[async_trait]
impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec!["msgoffline"]
    }
}

/// Whether a message is worth keeping for later: chat states are transient (XEP-0085 §5.6) and
/// XEP-0334 hints can ask for no storage.
fn worth_storing(msg: &Element) -> bool {
    if msg.has_child("no-store", HINTS) || msg.has_child("no-permanent-store", HINTS) {
        return false;
    }
    msg.children().any(|c| c.ns() != CHATSTATES)
}

/// What to do with a message being stored when its account turns out to have an available
/// resource after all (see [`came_online`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfOnlineNow {
    /// Claim it back and deliver it: the router found no resource a moment ago.
    Deliver,
    /// Keep it stored: delivery to that resource has just failed (its node could not be
    /// reached), and trying again could go round in a loop.
    Keep,
}

/// Stores a message for an account with no available resource, or bounces it when the
/// account's offline storage is full.
pub async fn store_or_bounce(server: &Server, to: &BareJid, msg: Element, online: IfOnlineNow) {
    if !worth_storing(&msg) {
        return;
    }
    let Some(user) = to.node().map(|n| n.as_str()) else {
        return;
    };
    let count = match server.store.offline_count(user).await {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "offline store unavailable");
            return router::bounce(server, &msg, StanzaError::internal()).await;
        }
    };
    if count >= MAX_OFFLINE_PER_USER {
        return router::bounce(
            server,
            &msg,
            StanzaError::service_unavailable().with_text("offline storage full"),
        )
        .await;
    }
    let Ok(xml) = String::from_utf8(writer::element(&msg)) else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    match server.store.push_offline(user, &xml, now).await {
        Ok(id) => {
            crate::metrics::offline_stored();
            let delivered = online == IfOnlineNow::Deliver
                && came_online(server, to, user, (id, now), &xml, msg.clone()).await;
            if !delivered {
                super::push::notify(server, to, &msg).await;
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot store offline message");
            router::bounce(server, &msg, StanzaError::internal()).await;
        }
    }
}

/// The router found no resource for the message, but one may have sent its initial presence
/// and taken its stored messages while this one was being stored; without this it would wait
/// until the next login. If a resource is available now, the message is claimed back from the
/// store and delivered. True when nothing is left to do: a resource has it (or a resource's
/// taking has it), or it went back to its sender.
async fn came_online(
    server: &Server,
    to: &BareJid,
    user: &str,
    (id, stamp_ms): (i64, i64),
    xml: &str,
    msg: Element,
) -> bool {
    if !router::has_candidates(server, to) {
        return false;
    }
    match server.store.claim_offline(user, id).await {
        // Taken by a resource coming online, which delivers it.
        Ok(false) => true,
        Ok(true) => {
            let Err(msg) = router::to_top_resources(server, to, msg) else {
                crate::metrics::offline_delivered(1);
                return true;
            };
            // The resource went away again (or cannot take more): stored once more, as it was.
            if let Err(e) = server.store.push_offline(user, xml, stamp_ms).await {
                warn!(error = %e, "cannot store offline message again");
                router::bounce(server, &msg, StanzaError::internal()).await;
                return true;
            }
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot claim a stored message back");
            false
        }
    }
}

/// Takes the stored messages of `user` out of the store, stamped with when they were received
/// (XEP-0203).
pub async fn take(server: &Server, user: &str) -> Vec<Element> {
    let stored = match server.store.take_offline(user).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot take offline messages");
            return Vec::new();
        }
    };
    let owner = crate::jid::parse_bare(&format!("{user}@{}", server.domain)).ok();
    let mut out = Vec::with_capacity(stored.len());
    for m in stored {
        let Ok(mut msg) = m.stanza.parse::<Element>() else {
            continue;
        };
        // Blocked after it was stored: a blocked entity's messages never arrive (XEP-0191).
        if let Some(owner) = &owner
            && let Some(from) = msg.attr("from").and_then(|f| crate::jid::parse(f).ok())
            && super::blocking::blocks(server, owner, &from).await
        {
            continue;
        }
        let mut delay = el(
            "delay",
            ns::DELAY,
            &[
                ("from", &server.domain),
                ("stamp", &stanza::stamp_from_ms(m.stamp_ms)),
            ],
        );
        delay.append_text_node("Offline storage");
        msg.append_child(delay);
        out.push(msg);
    }
    crate::metrics::offline_delivered(out.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_states_alone_are_not_stored() {
        let m: Element = "<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            .parse()
            .unwrap();
        assert!(!worth_storing(&m));
        let m: Element = "<message xmlns='jabber:client'><body>x</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            .parse()
            .unwrap();
        assert!(worth_storing(&m));
        let m: Element = "<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
            .parse()
            .unwrap();
        assert!(!worth_storing(&m));
    }
}
