//! Entity capabilities (XEP-0115) as PEP uses them: which nodes a client wants notifications
//! for (its `<node>+notify` features, XEP-0163 §4.3), learnt once per capabilities hash by
//! asking one client with that hash and checking its answer against the hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use minidom::Element;

use crate::jid::{BareJid, FullJid};

pub const NS: &str = "http://jabber.org/protocol/caps";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DATA: &str = "jabber:x:data";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

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
        let nodes: NotifyNodes = Arc::new(
            query
                .children()
                .filter(|f| f.is("feature", DISCO_INFO))
                .filter_map(|f| f.attr("var")?.strip_suffix("+notify"))
                .map(str::to_owned)
                .collect(),
        );
        if verifies(query, &asking.caps) {
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
fn verifies(query: &Element, caps: &Announced) -> bool {
    let Some(input) = verification_string(query) else {
        return false;
    };
    let digest = match caps.hash.as_str() {
        "sha-1" => {
            use sha1::Digest;
            sha1::Sha1::digest(input.as_bytes()).to_vec()
        }
        "sha-256" => {
            use sha2::Digest;
            sha2::Sha256::digest(input.as_bytes()).to_vec()
        }
        _ => return false,
    };
    BASE64.encode(digest) == caps.ver
}

/// XEP-0115 §5.1's verification string; None for an answer §5.4 calls invalid (duplicate
/// identities, features or form types). Written here because xmpp-parsers 0.23 appends `<`
/// before sorting, which orders `x#y` before `x` and rejects most real clients' hashes.
fn verification_string(query: &Element) -> Option<String> {
    let mut identities: Vec<[&str; 4]> = query
        .children()
        .filter(|c| c.is("identity", DISCO_INFO))
        .map(|i| {
            [
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr_ns(XML_NS, "lang").unwrap_or(""),
                i.attr("name").unwrap_or(""),
            ]
        })
        .collect();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.is("feature", DISCO_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    let mut forms = Vec::new();
    for x in query.children().filter(|c| c.is("x", DATA)) {
        let mut form_type = None;
        let mut fields: Vec<(&str, Vec<String>)> = Vec::new();
        for field in x.children().filter(|c| c.is("field", DATA)) {
            let var = field.attr("var").unwrap_or("");
            let mut values: Vec<String> = field
                .children()
                .filter(|v| v.is("value", DATA))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                form_type = values.pop();
            } else {
                values.sort();
                fields.push((var, values));
            }
        }
        // §5.4: a form without FORM_TYPE is left out of the string.
        if let Some(form_type) = form_type {
            fields.sort();
            forms.push((form_type, fields));
        }
    }
    identities.sort_unstable();
    features.sort_unstable();
    forms.sort();
    let distinct = |n: usize, mut keys: Vec<String>| {
        keys.dedup();
        keys.len() == n
    };
    if !distinct(
        identities.len(),
        identities.iter().map(|i| i.join("/")).collect(),
    ) || !distinct(
        features.len(),
        features.iter().map(|f| f.to_string()).collect(),
    ) || !distinct(forms.len(), forms.iter().map(|f| f.0.clone()).collect())
    {
        return None;
    }
    let mut s = String::new();
    for identity in identities {
        s.push_str(&identity.join("/"));
        s.push('<');
    }
    for feature in features {
        s.push_str(feature);
        s.push('<');
    }
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            for value in values {
                s.push_str(&value);
                s.push('<');
            }
        }
    }
    Some(s)
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

    fn verify(query: &str, ver: &str) -> bool {
        let query: Element = query.parse().expect("query");
        verifies(
            &query,
            &Announced {
                node: String::new(),
                ver: ver.into(),
                hash: "sha-1".into(),
            },
        )
    }

    #[test]
    fn the_verification_string_sorts_before_it_joins() {
        // A slixmpp client's answer: `shim#SubID` and `metadata+notify` sort after `shim` and
        // `metadata` only when the strings themselves are sorted (i;octet).
        let slixmpp = format!(
            "<query xmlns='{DISCO_INFO}'><identity category='client' type='bot'/>{}</query>",
            [
                "http://jabber.org/protocol/disco#info",
                "urn:xmpp:ping",
                "jabber:x:data",
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/shim",
                "http://jabber.org/protocol/shim#SubID",
                "urn:xmpp:avatar:metadata+notify",
                "urn:xmpp:avatar:metadata",
            ]
            .iter()
            .map(|f| format!("<feature var='{f}'/>"))
            .collect::<String>()
        );
        assert!(verify(&slixmpp, "kwIV8tEtD/ks9sDgw6PFahvemVU="));
        assert!(!verify(&slixmpp, "gpaHBhhNuRQjy5mX9nifDYBjvt0="));
    }

    #[test]
    fn the_complex_example_of_the_spec_verifies() {
        // XEP-0115 §5.3: identities in two languages and a software-information form.
        let psi = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
            <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
            <field var='ip_version'><value>ipv6</value><value>ipv4</value></field>\
            <field var='os'><value>Mac</value></field>\
            <field var='os_version'><value>10.5.1</value></field>\
            <field var='software'><value>Psi</value></field>\
            <field var='software_version'><value>0.11</value></field></x></query>";
        assert!(verify(psi, "q07IKJEyjvHSyhy//CH0CxmKi8w="));
        let doubled = psi.replace(
            "<feature var='http://jabber.org/protocol/muc'/>",
            "<feature var='http://jabber.org/protocol/muc'/><feature var='http://jabber.org/protocol/muc'/>",
        );
        assert!(
            !verify(&doubled, "q07IKJEyjvHSyhy//CH0CxmKi8w="),
            "duplicates are invalid"
        );
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
