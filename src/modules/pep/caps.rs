//! Entity capabilities (XEP-0115) as PEP uses them: which nodes a client wants notifications
//! for (its `<node>+notify` features, XEP-0163 §4.3), learnt once per capabilities hash by
//! asking one client with that hash and checking its answer against the hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use minidom::Element;
use xmpp_parsers::caps as xcaps;
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::hashes::Algo;

use crate::jid::{BareJid, FullJid};

pub const NS: &str = "http://jabber.org/protocol/caps";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// Hashes remembered; a full cache starts again empty (clients share few distinct hashes).
const MAX_KNOWN: usize = 10_000;
/// Questions in flight; beyond this, new hashes wait for a later presence.
const MAX_ASKING: usize = 1_000;
/// A client that has not answered by then is not waited for.
const ASK_TIMEOUT: Duration = Duration::from_secs(60);
const ID_PREFIX: &str = "caps-";

/// The nodes a client wants notifications for.
pub type NotifyNodes = Arc<Vec<String>>;

/// A client's capabilities as announced in its presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub node: String,
    pub ver: String,
    pub hash: String,
}

/// The `<c/>` element of a presence, if it has a usable one (legacy caps without a hash
/// cannot be verified and are ignored).
pub fn announced(presence: &Element) -> Option<Announced> {
    let c = presence.get_child("c", NS)?;
    Some(Announced {
        node: c.attr("node")?.to_owned(),
        ver: c.attr("ver")?.to_owned(),
        hash: c.attr("hash")?.to_owned(),
    })
}

/// A question sent to a client about its hash, and who is waiting for the answer.
struct Asking {
    caps: Announced,
    asked: FullJid,
    sent: Instant,
    /// (owner, contact resource) pairs to serve once the answer is in.
    waiting: Vec<(BareJid, FullJid)>,
}

#[derive(Default)]
pub struct CapsCache {
    known: Mutex<HashMap<String, NotifyNodes>>,
    /// Keyed by the iq id of the question.
    asking: Mutex<HashMap<String, Asking>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What to do about a presence whose hash may be unknown.
pub enum Lookup {
    Known(NotifyNodes),
    /// Send this disco#info question; the answer comes back through [`CapsCache::answer`].
    Ask(Element),
    /// Someone else's question about the same hash is in flight; this pair waits for it.
    Waiting,
}

impl CapsCache {
    pub fn known(&self, ver: &str) -> Option<NotifyNodes> {
        self.known.lock().ok()?.get(ver).cloned()
    }

    /// The notify nodes for a resource's announced caps, or the question that learns them.
    pub fn lookup(
        &self,
        server_domain: &str,
        caps: &Announced,
        owner: &BareJid,
        contact: &FullJid,
    ) -> Lookup {
        if let Some(nodes) = self.known(&caps.ver) {
            return Lookup::Known(nodes);
        }
        let Ok(mut asking) = self.asking.lock() else {
            return Lookup::Waiting;
        };
        asking.retain(|_, a| a.sent.elapsed() < ASK_TIMEOUT);
        if let Some(a) = asking.values_mut().find(|a| a.caps.ver == caps.ver) {
            if a.waiting.len() < MAX_ASKING {
                a.waiting.push((owner.clone(), contact.clone()));
            }
            return Lookup::Waiting;
        }
        if asking.len() >= MAX_ASKING {
            return Lookup::Waiting;
        }
        let id = format!(
            "{ID_PREFIX}{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut query = Element::bare("query", DISCO_INFO);
        crate::stanza::set_attr(&mut query, "node", &format!("{}#{}", caps.node, caps.ver));
        let mut iq = crate::stanza::build(
            "iq",
            &[
                ("type", "get"),
                ("id", &id),
                ("from", server_domain),
                ("to", &contact.to_string()),
            ],
        );
        iq.append_child(query);
        asking.insert(
            id,
            Asking {
                caps: caps.clone(),
                asked: contact.clone(),
                sent: Instant::now(),
                waiting: vec![(owner.clone(), contact.clone())],
            },
        );
        Lookup::Ask(iq)
    }

    /// Takes a client's answer to one of our questions: the nodes it wants and the pairs to
    /// serve with them. None if the iq is not an answer to us, or an error. A verified answer
    /// is remembered for everyone with the same hash; an unverified one serves only the
    /// client that gave it.
    pub fn answer(
        &self,
        from: &FullJid,
        iq: &Element,
    ) -> Option<(NotifyNodes, Vec<(BareJid, FullJid)>)> {
        let id = iq.attr("id")?;
        if !id.starts_with(ID_PREFIX) {
            return None;
        }
        let asking = {
            let mut all = self.asking.lock().ok()?;
            match all.get(id) {
                Some(a) if a.asked == *from => all.remove(id)?,
                _ => return None,
            }
        };
        if crate::stanza::stanza_type(iq) != "result" {
            return None;
        }
        let query = iq.get_child("query", DISCO_INFO)?;
        let info = DiscoInfoResult::try_from(query.clone()).ok()?;
        let nodes: NotifyNodes = Arc::new(
            info.features
                .iter()
                .filter_map(|f| f.strip_suffix("+notify"))
                .map(str::to_owned)
                .collect(),
        );
        if verifies(&info, &asking.caps) {
            if let Ok(mut known) = self.known.lock() {
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(asking.caps.ver.clone(), nodes.clone());
            }
            Some((nodes, asking.waiting))
        } else {
            tracing::debug!(jid = %from, "capabilities answer does not match its hash");
            let own = asking
                .waiting
                .into_iter()
                .filter(|(_, c)| c == from)
                .collect();
            Some((nodes, own))
        }
    }
}

/// XEP-0115 §5.4: the answer hashes to the announced `ver`.
fn verifies(info: &DiscoInfoResult, caps: &Announced) -> bool {
    let Ok(algo) = caps.hash.parse::<Algo>() else {
        return false;
    };
    match xcaps::hash_caps(&xcaps::compute_disco(info), algo) {
        Ok(hash) => BASE64.encode(&hash.hash) == caps.ver,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2's simple example.
    const EXAMPLE: &str = "<query xmlns='http://jabber.org/protocol/disco#info' \
        node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
        <identity category='client' name='Exodus 0.9.1' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/></query>";

    fn jid(s: &str) -> FullJid {
        crate::jid::parse(s)
            .expect("jid")
            .try_into_full()
            .expect("full")
    }

    fn caps(ver: &str) -> Announced {
        Announced {
            node: "http://code.google.com/p/exodus".into(),
            ver: ver.into(),
            hash: "sha-1".into(),
        }
    }

    fn answer_to(question: &Element, query: &str) -> Element {
        let mut iq = crate::stanza::build(
            "iq",
            &[("type", "result"), ("id", question.attr("id").expect("id"))],
        );
        iq.append_child(query.parse().expect("query"));
        iq
    }

    #[test]
    fn a_verified_answer_is_remembered_for_the_hash() {
        let cache = CapsCache::default();
        let owner = crate::jid::parse_bare("owner@localhost").expect("bare");
        let client = jid("juliet@localhost/balcony");
        let good = caps("QgayPKawpkPSDYmwT/WM94uAlu0=");
        let Lookup::Ask(question) = cache.lookup("localhost", &good, &owner, &client) else {
            panic!("expected a question");
        };
        let other = jid("romeo@localhost/orchard");
        assert!(matches!(
            cache.lookup("localhost", &good, &owner, &other),
            Lookup::Waiting
        ));
        let (nodes, waiting) = cache
            .answer(&client, &answer_to(&question, EXAMPLE))
            .expect("answer");
        assert!(nodes.is_empty());
        assert_eq!(waiting.len(), 2);
        assert!(cache.known("QgayPKawpkPSDYmwT/WM94uAlu0=").is_some());
    }

    #[test]
    fn a_wrong_hash_serves_only_the_client_that_answered() {
        let cache = CapsCache::default();
        let owner = crate::jid::parse_bare("owner@localhost").expect("bare");
        let client = jid("juliet@localhost/balcony");
        let forged = caps("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let Lookup::Ask(question) = cache.lookup("localhost", &forged, &owner, &client) else {
            panic!("expected a question");
        };
        let query = EXAMPLE.replace(
            "<feature var='http://jabber.org/protocol/muc'/>",
            "<feature var='urn:xmpp:avatar:metadata+notify'/>",
        );
        let stranger = jid("mallory@localhost/x");
        assert!(
            cache
                .answer(&stranger, &answer_to(&question, &query))
                .is_none()
        );
        let (nodes, waiting) = cache
            .answer(&client, &answer_to(&question, &query))
            .expect("answer");
        assert_eq!(*nodes, vec!["urn:xmpp:avatar:metadata".to_owned()]);
        assert_eq!(waiting, vec![(owner, client)]);
        assert!(cache.known("AAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_none());
    }
}
