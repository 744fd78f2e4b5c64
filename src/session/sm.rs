//! Stream Management (XEP-0198 v3): the counters and the queue of stanzas the client has not
//! acknowledged yet, and the registry through which a new connection resumes a session whose
//! connection dropped. The c2s session drives it; this file holds the bookkeeping.
//!
//! The queue keeps each stanza as the bytes written to the client, not as a tree: that is what
//! a resumed stream sends again, a copy of bytes costs less than a copy of a tree, and a
//! stanza the router wrote out already (or a client's message passed on as it came) is kept
//! without ever being built into one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use minidom::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::conn::XmlConn;
use crate::jid::BareJid;
use crate::router::table;
use crate::stanza;
use crate::stream::ns;

pub const NS: &str = "urn:xmpp:sm:3";
/// Unacknowledged stanzas a session may hold; a client that never acknowledges is closed
/// rather than buffered without bound.
pub const MAX_UNACKED: usize = 1000;

/// A client's acknowledgement that does not fit what was sent.
#[derive(Debug, thiserror::Error)]
#[error("the client acknowledged {acked} stanzas, but only {sent} were sent")]
pub struct BadAck {
    pub acked: u32,
    pub sent: u32,
}

/// One session's stream management state.
pub struct Sm {
    /// The resumption id, when the client asked for resumption.
    pub id: Option<String>,
    /// Stanzas handled from the client (`h` of our acks), modulo 2^32.
    inbound: u32,
    /// Stanzas the client has acknowledged, modulo 2^32.
    acked: u32,
    /// Sent and not acknowledged, oldest first, as written.
    unacked: VecDeque<Vec<u8>>,
    /// An `<r/>` of ours is outstanding.
    requested: bool,
}

impl Sm {
    pub fn new(resumable: bool) -> Sm {
        Sm {
            id: resumable.then(|| uuid::Uuid::new_v4().simple().to_string()),
            inbound: 0,
            acked: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }

    /// `<enabled/>`, with the id and time limit when the session can be resumed.
    pub fn enabled(&self, resume_seconds: u64) -> Element {
        let mut el = Element::bare("enabled", NS);
        if let Some(id) = &self.id {
            stanza::set_attr(&mut el, "id", id);
            stanza::set_attr(&mut el, "resume", "true");
            stanza::set_attr(&mut el, "max", &resume_seconds.to_string());
        }
        el
    }

    pub fn handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// `<a h='…'/>`: what we have handled.
    pub fn ack(&self) -> Element {
        let mut a = Element::bare("a", NS);
        stanza::set_attr(&mut a, "h", &self.inbound.to_string());
        a
    }

    /// Records a stanza written to the client, as written; false once too many wait for an ack.
    pub fn sent(&mut self, xml: Vec<u8>) -> bool {
        self.unacked.push_back(xml);
        self.unacked.len() <= MAX_UNACKED
    }

    /// The client has handled `h` stanzas in all: the acknowledged ones leave the queue.
    pub fn acknowledge(&mut self, h: u32) -> Result<(), BadAck> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(BadAck {
                acked: h,
                sent: self.acked.wrapping_add(self.unacked.len() as u32),
            });
        }
        self.unacked.drain(..newly);
        self.acked = h;
        self.requested = false;
        Ok(())
    }

    /// An `<r/>` to send after a write, if stanzas wait for an ack and none is asked for yet.
    pub fn request(&mut self) -> Option<Element> {
        if self.requested || self.unacked.is_empty() {
            return None;
        }
        self.requested = true;
        Some(Element::bare("r", NS))
    }

    /// `<resumed/>` for a new connection that says it handled `h` stanzas.
    pub fn resumed(&self) -> Element {
        let mut el = Element::bare("resumed", NS);
        stanza::set_attr(&mut el, "h", &self.inbound.to_string());
        stanza::set_attr(&mut el, "previd", self.id.as_deref().unwrap_or_default());
        el
    }

    /// What is still unacknowledged, to send again on a resumed stream; it stays queued.
    pub fn pending(&mut self) -> impl Iterator<Item = &[u8]> {
        self.requested = false;
        self.unacked.iter().map(Vec::as_slice)
    }

    /// The counters and the unacknowledged stanzas, for a session moving to another node.
    pub fn export(&mut self) -> (u32, u32, Vec<String>) {
        let unacked = self
            .unacked
            .drain(..)
            .filter_map(|xml| String::from_utf8(xml).ok())
            .collect();
        (self.inbound, self.acked, unacked)
    }

    /// The state of a session that moved here from another node; stanzas that do not read
    /// as a client's stanza are dropped, so that what the new stream sends again is sound.
    pub fn restore(moved: &Moved) -> Sm {
        Sm {
            id: Some(moved.id.clone()),
            inbound: moved.inbound,
            acked: moved.acked,
            unacked: moved
                .unacked
                .iter()
                .filter(|xml| crate::stream::parser::read_client_stanza(xml.as_bytes()).is_ok())
                .map(|xml| xml.as_bytes().to_vec())
                .collect(),
            requested: false,
        }
    }

    /// Everything unacknowledged, as trees, for the session's end: such messages are routed
    /// again.
    pub fn take(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.unacked)
            .into_iter()
            .map(|xml| table::read_back(&xml))
            .collect()
    }
}

/// `<failed/>` with a stanza error condition.
pub fn failed(condition: &str) -> Element {
    let mut el = Element::bare("failed", NS);
    el.append_child(Element::bare(condition, ns::STANZA_ERRORS));
    el
}

/// A client resuming a session (XEP-0198 §5): it has authenticated as the session's user.
pub enum Resumption {
    /// On a new connection to this node, saying how many stanzas it handled.
    Here { conn: Box<XmlConn>, h: u32 },
    /// On another node of the cluster: the session hands its state over and ends here.
    Elsewhere { reply: oneshot::Sender<Moved> },
}

/// A resumable session on its way to another cluster node: what the node that resumes it
/// needs to carry on where it stopped. Stanzas travel as XML.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub jid: String,
    pub id: String,
    pub inbound: u32,
    pub acked: u32,
    pub unacked: Vec<String>,
    /// The last available presence and its priority; None while unavailable.
    pub presence: Option<(String, i8)>,
    pub initial_done: bool,
    pub offline_done: bool,
    pub directed: Vec<String>,
    pub interested: bool,
    pub carbons: bool,
}

/// The resumable sessions of this node, by resumption id.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<String, (BareJid, mpsc::Sender<Resumption>)>>);

impl Registry {
    pub fn register(&self, id: &str, owner: BareJid, to: mpsc::Sender<Resumption>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id.to_owned(), (owner, to));
    }

    pub fn forget(&self, id: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    /// The session `id` if `owner` may resume it.
    pub fn find(&self, id: &str, owner: &BareJid) -> Option<mpsc::Sender<Resumption>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(o, tx)| o == owner && !tx.is_closed())
            .map(|(_, tx)| tx.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Vec<u8> {
        format!("<message xmlns='jabber:client' id='{n}'/>").into_bytes()
    }

    /// The ids of what waits for an ack, in order.
    fn pending_ids(sm: &mut Sm) -> Vec<String> {
        sm.pending()
            .map(|xml| {
                let el = crate::stream::parser::read_client_stanza(xml).unwrap();
                el.attr("id").unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn acks_drop_what_the_client_handled_and_too_many_is_an_error() {
        let mut sm = Sm::new(true);
        assert!(sm.id.is_some());
        assert!(sm.request().is_none(), "nothing to ask about");
        for n in 0..5 {
            assert!(sm.sent(msg(n)));
        }
        assert!(sm.request().is_some());
        assert!(sm.request().is_none(), "one request at a time");
        sm.acknowledge(2).unwrap();
        assert_eq!(pending_ids(&mut sm), ["2", "3", "4"]);
        assert!(sm.acknowledge(1).is_err(), "h cannot go back");
        assert!(sm.acknowledge(9).is_err(), "h cannot exceed what was sent");
        sm.acknowledge(5).unwrap();
        assert!(sm.take().is_empty());
        sm.handled();
        sm.handled();
        assert_eq!(sm.ack().attr("h"), Some("2"));
    }

    #[test]
    fn a_moved_session_keeps_its_counters_and_queue() {
        let mut sm = Sm::new(true);
        for n in 0..3 {
            sm.sent(msg(n));
        }
        sm.handled();
        sm.acknowledge(1).unwrap();
        let (inbound, acked, mut unacked) = sm.export();
        // What does not read as a client's stanza is dropped on arrival, not sent again.
        unacked.insert(1, "<message id='broken'".into());
        let moved = Moved {
            jid: "a@b/c".into(),
            id: sm.id.clone().unwrap(),
            inbound,
            acked,
            unacked,
            presence: None,
            initial_done: true,
            offline_done: true,
            directed: Vec::new(),
            interested: true,
            carbons: false,
        };
        let mut there = Sm::restore(&moved);
        assert_eq!(there.resumed().attr("h"), Some("1"));
        there.acknowledge(2).unwrap();
        assert_eq!(pending_ids(&mut there), ["2"]);
        assert_eq!(there.take()[0].attr("id"), Some("2"), "read back as a tree");
    }

    #[test]
    fn counters_wrap_around() {
        let mut sm = Sm::new(false);
        sm.acked = u32::MAX - 1;
        for n in 0..4 {
            sm.sent(msg(n));
        }
        sm.acknowledge(1).unwrap();
        assert_eq!(sm.pending().count(), 1);
    }
}
