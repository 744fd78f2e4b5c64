//! The cluster bus: how a stanza for a session on another node gets there.
//!
//! Each node reads its own Redis stream (`node:<name>:inbox`). Streams rather than pub/sub,
//! because a stream keeps what its reader has not taken: when a node dies, the frames handed
//! to it and not yet read are still there, and the node that reaps it re-routes them (to
//! offline storage, or back to the sender as an error). A frame is appended only while the
//! destination holds its lease (see `scripts::HAND_OVER`), and the reader deletes frames as it
//! delivers them, so a frame is delivered, re-routed by the reaper, or refused to the sender.
//!
//! Senders never wait: `BusSender` is a bounded queue drained by one writer task that batches
//! frames per destination; a full queue hands the stanza back like a full session queue does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use crate::router::table::{DeliveryError, Endpoint, RemoteSession, SessionCommand};
use crate::stream::writer;

/// Frames waiting for the writer; beyond this, senders get their stanza back.
pub const QUEUE_DEPTH: usize = 16_384;
/// Frames per Redis call, written or read.
pub const BATCH: usize = 512;

/// One thing for one session on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frame {
    /// The session's full JID and connection.
    pub jid: String,
    pub conn: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Stanza {
        xml: String,
    },
    /// A stanza for a group chat room this node hosts (the frame's jid and conn are unused).
    Room {
        xml: String,
    },
    /// One message (without `to`) for several sessions on the node (full JID, connection).
    Fanout {
        xml: String,
        targets: Vec<(String, u64)>,
    },
    Close {
        condition: String,
    },
    Replaced,
    /// A client resumes session `id` of `owner` on node `reply_to` (XEP-0198 in a cluster).
    Resume {
        id: String,
        owner: String,
        reply_to: String,
    },
    /// The answer: the session's state, now gone from the node that sends it; None if that
    /// node has no such session.
    Moved {
        id: String,
        state: Option<Box<crate::session::sm::Moved>>,
    },
}

/// A frame on its way out, with its destination node.
#[derive(Debug)]
pub struct Outgoing {
    pub node: Arc<str>,
    pub frame: Frame,
}

#[derive(Debug, Clone)]
pub struct BusSender {
    tx: mpsc::Sender<Outgoing>,
}

impl BusSender {
    pub fn new() -> (BusSender, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        (BusSender { tx }, rx)
    }

    pub fn stanza(&self, to: &RemoteSession, stanza: Element) -> Result<(), DeliveryError> {
        let Ok(xml) = String::from_utf8(writer::element(&stanza)) else {
            return Err(DeliveryError::Closed(stanza));
        };
        let out = Outgoing {
            node: to.node.clone(),
            frame: Frame {
                jid: to.jid.to_string(),
                conn: to.conn_id,
                op: Op::Stanza { xml },
            },
        };
        match self.tx.try_send(out) {
            Ok(()) => {
                crate::metrics::bus_frame("out");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(DeliveryError::Full(stanza)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DeliveryError::Closed(stanza)),
        }
    }

    /// Hands a stanza for a room to the node that hosts it; gives it back if the bus is full.
    pub fn room_stanza(&self, node: &Arc<str>, stanza: Element) -> Result<(), Element> {
        let Ok(xml) = String::from_utf8(writer::element(&stanza)) else {
            return Err(stanza);
        };
        let out = Outgoing {
            node: node.clone(),
            frame: Frame {
                jid: String::new(),
                conn: 0,
                op: Op::Room { xml },
            },
        };
        match self.tx.try_send(out) {
            Ok(()) => {
                crate::metrics::bus_frame("out");
                Ok(())
            }
            Err(_) => Err(stanza),
        }
    }

    /// Hands one message for several of `node`'s sessions over in one frame; gives the
    /// targets back if the bus is full.
    pub fn fan_out(
        &self,
        node: &Arc<str>,
        message: &Element,
        targets: Vec<(String, u64)>,
    ) -> Result<(), Vec<(String, u64)>> {
        let Ok(xml) = String::from_utf8(writer::element(message)) else {
            return Err(targets);
        };
        let out = Outgoing {
            node: node.clone(),
            frame: Frame {
                jid: String::new(),
                conn: 0,
                op: Op::Fanout { xml, targets },
            },
        };
        match self.tx.try_send(out) {
            Ok(()) => {
                crate::metrics::bus_frame("out");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) => {
                match o.frame.op {
                    Op::Fanout { targets, .. } => Err(targets),
                    _ => Err(Vec::new()),
                }
            }
        }
    }

    /// Sends a frame that concerns no session (resumption requests and answers), waiting for
    /// room in the queue.
    pub async fn control(&self, node: Arc<str>, op: Op) {
        let out = Outgoing {
            node,
            frame: Frame {
                jid: String::new(),
                conn: 0,
                op,
            },
        };
        if self.tx.send(out).await.is_ok() {
            crate::metrics::bus_frame("out");
        }
    }

    pub fn command(&self, to: &RemoteSession, cmd: SessionCommand) {
        let op = match cmd {
            SessionCommand::Stanza(s) => {
                let _ = self.stanza(to, s.into_element());
                return;
            }
            SessionCommand::Replaced => Op::Replaced,
            SessionCommand::Close(c) => Op::Close {
                condition: c.condition().to_owned(),
            },
        };
        let out = Outgoing {
            node: to.node.clone(),
            frame: Frame {
                jid: to.jid.to_string(),
                conn: to.conn_id,
                op,
            },
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(out).await;
        });
    }
}

/// Groups a batch of outgoing frames by destination node, keeping each node's order.
pub fn by_node(batch: Vec<Outgoing>) -> HashMap<Arc<str>, Vec<Frame>> {
    let mut map: HashMap<Arc<str>, Vec<Frame>> = HashMap::new();
    for o in batch {
        map.entry(o.node).or_default().push(o.frame);
    }
    map
}

/// How long the reader blocks in one XREAD before checking for shutdown.
pub const READ_BLOCK: Duration = Duration::from_millis(1000);

/// Decodes a frame read from a stream or from a reaped node's leftovers.
pub fn decode(json: &str) -> Option<Frame> {
    match serde_json::from_str(json) {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(error = %e, "undecodable bus frame");
            None
        }
    }
}

/// Whether an endpoint is the local session a frame is for.
pub fn is_target(endpoint: &Endpoint, conn: u64) -> bool {
    endpoint.is_local() && endpoint.conn_id() == conn
}

pub fn log_refused(node: &str, frames: &[Frame]) {
    let first = frames.first().map(|f| match &f.op {
        Op::Stanza { xml } | Op::Room { xml } | Op::Fanout { xml, .. } => {
            xml.chars().take(160).collect::<String>()
        }
        // A moving session's stanzas are not for the log.
        Op::Resume { .. } | Op::Moved { .. } => "session resumption".to_owned(),
        other => format!("{other:?}"),
    });
    tracing::info!(node, frames = frames.len(), first = ?first, "node gone: frames refused, re-routing");
}
