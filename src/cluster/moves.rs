//! Stream management resumption across nodes (XEP-0198 §5 in a cluster): a client whose
//! connection dropped may come back through any node. The node it reaches asks the nodes that
//! hold the user's resources for the session; the one that has it hands over its state (the
//! counters, the unacknowledged stanzas, presence) and ends it there without a word to
//! contacts, and the session carries on at the new node.
//!
//! A state that arrives after the asking node gave up, or that the asking node never takes,
//! is not lost: its stanzas are routed again (other resources or offline storage) and the
//! contacts learn the resource is gone, as when a session is not resumed in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Cluster;
use super::bus::Op;
use crate::jid::{self, BareJid};
use crate::router::table::Endpoint;
use crate::server::Server;
use crate::session::sm::{Moved, Resumption};

/// How long the session's node waits for the session to pack up.
const PACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the resuming node waits for an answer; longer than the above, so that a late
/// answer is rare.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);

/// Resumption requests this node sent, by session id, waiting for their answer.
#[derive(Default)]
pub struct Waiting(Mutex<HashMap<String, oneshot::Sender<Option<Box<Moved>>>>>);

impl Waiting {
    fn add(&self, id: &str) -> oneshot::Receiver<Option<Box<Moved>>> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), tx);
        rx
    }

    fn take(&self, id: &str) -> Option<oneshot::Sender<Option<Box<Moved>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }
}

impl Cluster {
    /// Fetches session `id` of `owner` from the node that holds it, if any does.
    pub async fn fetch_session(&self, id: &str, owner: &BareJid) -> Option<Moved> {
        let mut nodes: Vec<Arc<str>> = Vec::new();
        for r in self.view.resources(owner) {
            if let Endpoint::Remote(s) = &r.sender
                && !nodes.contains(&s.node)
            {
                nodes.push(s.node.clone());
            }
        }
        for node in nodes {
            let answer = self.waiting_moves.add(id);
            let request = Op::Resume {
                id: id.to_owned(),
                owner: owner.to_string(),
                reply_to: self.node.to_string(),
            };
            self.bus.control(node, request).await;
            let got = tokio::time::timeout(ANSWER_TIMEOUT, answer).await;
            // A late answer finds nobody waiting and is abandoned (see `on_moved`).
            self.waiting_moves.take(id);
            if let Ok(Ok(Some(state))) = got {
                let same_owner = jid::parse(&state.jid).is_ok_and(|j| j.to_bare() == *owner);
                if same_owner && state.id == id {
                    return Some(*state);
                }
            }
        }
        None
    }

    /// Another node asks for one of our sessions: the session packs up in its own task and
    /// the answer goes back over the bus, without holding up this node's bus reader.
    pub(super) fn on_resume_request(
        &self,
        server: &Server,
        id: String,
        owner: &str,
        reply_to: String,
    ) {
        let session = jid::parse_bare(owner)
            .ok()
            .and_then(|owner| server.resumable.find(&id, &owner));
        let bus = self.bus.clone();
        tokio::spawn(async move {
            let mut state = None;
            if let Some(session) = session {
                let (reply, packed) = oneshot::channel();
                if session.send(Resumption::Elsewhere { reply }).await.is_ok() {
                    state = tokio::time::timeout(PACK_TIMEOUT, packed)
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
            }
            let answer = Op::Moved {
                id,
                state: state.map(Box::new),
            };
            bus.control(reply_to.into(), answer).await;
        });
    }

    /// The answer to one of our requests; one nobody waits for any more is abandoned.
    pub(super) async fn on_moved(&self, server: &Server, id: &str, state: Option<Box<Moved>>) {
        let state = match self.waiting_moves.take(id) {
            Some(waiter) => match waiter.send(state) {
                Ok(()) => return,
                Err(state) => state,
            },
            None => state,
        };
        if let Some(state) = state {
            crate::session::c2s::abandon(server, *state).await;
        }
    }
}
