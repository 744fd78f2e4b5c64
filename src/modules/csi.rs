//! Client State Indication (XEP-0352): while a client says it is inactive (a phone in a
//! pocket), what can wait is held back: presence updates (only the newest per sender is kept)
//! and messages that carry nothing to read (chat states, receipts, markers). Anything else, a
//! message with a body above all, goes out at once with everything held before it, in order.
//! The session owns the held stanzas; this module decides what can wait.

use std::collections::VecDeque;

use async_trait::async_trait;
use minidom::Element;

use super::Module;
use crate::server::Server;

pub const NS: &str = "urn:xmpp:csi:0";
/// Held stanzas beyond this go out at once: an inactive client still gets them eventually,
/// and the server's memory per session stays bounded.
const MAX_HELD: usize = 256;

/// Payload namespaces a message may carry and still wait.
const CAN_WAIT: &[&str] = &[
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:hints",
    "urn:xmpp:sid:0",
    "urn:xmpp:delay",
];

pub struct Csi;

#[async_trait]
impl Module for Csi {
    fn name(&self) -> &'static str {
        "csi"
    }

    fn stream_features(&self, _server: &Server) -> Vec<Element> {
        vec![Element::bare("csi", NS)]
    }
}

/// Whether a stanza for an inactive client can wait for the next one that cannot.
pub fn can_wait(stanza: &Element) -> bool {
    match stanza.name() {
        "presence" => matches!(stanza.attr("type"), None | Some("unavailable")),
        "message" => {
            stanza.attr("type") != Some("error")
                && stanza
                    .children()
                    .all(|c| CAN_WAIT.iter().any(|n| c.has_ns(*n)))
        }
        _ => false,
    }
}

/// The stanzas held for an inactive client, oldest first.
#[derive(Default)]
pub struct Held(VecDeque<Element>);

impl Held {
    /// Holds a stanza that can wait; a newer presence from the same sender replaces the older.
    /// Returns everything held when the bound is reached, for sending now.
    pub fn hold(&mut self, stanza: Element) -> Option<VecDeque<Element>> {
        if stanza.name() == "presence" {
            let from = stanza.attr("from");
            self.0
                .retain(|h| !(h.name() == "presence" && h.attr("from") == from));
        }
        self.0.push_back(stanza);
        (self.0.len() >= MAX_HELD).then(|| self.take())
    }

    pub fn take(&mut self) -> VecDeque<Element> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn presence_and_chat_states_wait_bodies_and_subscriptions_do_not() {
        assert!(can_wait(&el(
            "<presence xmlns='jabber:client' from='a@x/r'/>"
        )));
        assert!(can_wait(&el(
            "<presence xmlns='jabber:client' type='unavailable'/>"
        )));
        assert!(!can_wait(&el(
            "<presence xmlns='jabber:client' type='subscribe'/>"
        )));
        assert!(can_wait(&el("<message xmlns='jabber:client'><composing \
             xmlns='http://jabber.org/protocol/chatstates'/></message>")));
        assert!(!can_wait(&el(
            "<message xmlns='jabber:client'><body>hi</body><active \
             xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!can_wait(&el(
            "<message xmlns='jabber:client'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"
        )));
        assert!(!can_wait(&el("<iq xmlns='jabber:client' type='get'/>")));
    }

    #[test]
    fn only_the_newest_presence_per_sender_is_held_and_the_bound_flushes() {
        let mut held = Held::default();
        for show in ["away", "xa"] {
            let p = el(&format!(
                "<presence xmlns='jabber:client' from='b@x/r'><show>{show}</show></presence>"
            ));
            assert!(held.hold(p).is_none());
        }
        let all = held.take();
        assert_eq!(all.len(), 1);
        assert!(String::from(&all[0]).contains("xa"));
        let mut flushed = None;
        for i in 0..MAX_HELD {
            let p = el(&format!(
                "<presence xmlns='jabber:client' from='c{i}@x/r'/>"
            ));
            flushed = held.hold(p);
        }
        assert_eq!(flushed.map(|f| f.len()), Some(MAX_HELD));
    }
}
