//! The REST bridge inside the server: every chat of the HTTP API is carried by a persistent,
//! members-only group chat room. A message posted over HTTP reaches the room's occupants from
//! a nickname that names the application; a message an occupant writes in the room gets the
//! chat's next number. The HTTP side (`http::api`) calls in here; the room calls
//! [`from_room`].
//!
//! The bridge talks to a room with stanzas from the server's bare domain, which no client or
//! peer can send from, so that the room's host node (in a cluster, wherever it is) applies
//! them in the room's own order.

use async_trait::async_trait;
use minidom::Element;
use tokio::sync::broadcast;
use tracing::warn;

use super::muc::room::RoomConfig;
use super::{Module, el, text_el};
use crate::server::Server;
use crate::stanza;
use crate::store::{NewRestMessage, RestApp, RestChat, RestMessage, StoreError, StoredRoom};

/// The namespace of the bridge's instructions to a room (never sent to clients).
pub const NS: &str = "urn:rookery:bridge:0";
/// The cluster cache name under which nodes tell each other that a chat changed.
pub const CACHE: &str = "rest_chat";
const CORRECT: &str = "urn:xmpp:message-correct:0";
/// Wake-ups queued for the live feeds of one node; a feed that falls behind re-reads anyway.
const CHANGES_QUEUE: usize = 1024;

/// Holds the wake-up channel of this node's live feeds (server-sent events).
pub struct Bridge {
    changes: broadcast::Sender<(i64, i64)>,
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            changes: broadcast::channel(CHANGES_QUEUE).0,
        }
    }
}

#[async_trait]
impl Module for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
    }
}

fn module(server: &Server) -> Option<&Bridge> {
    server.module::<Bridge>()
}

/// Wake-ups for this node's live feeds: (application id, chat number) of a changed chat.
pub fn subscribe(server: &Server) -> Option<broadcast::Receiver<(i64, i64)>> {
    module(server).map(|b| b.changes.subscribe())
}

/// Wakes the live feeds of a chat on this node and, in a cluster, on every other node.
pub fn changed(server: &Server, app_id: i64, chat: i64) {
    wake(server, app_id, chat);
    server
        .sessions
        .invalidate(CACHE, &format!("{app_id}:{chat}"));
}

/// Wakes this node's feeds for a change another node announced ("app:chat").
pub fn changed_elsewhere(server: &Server, key: &str) {
    if let Some((a, c)) = key.split_once(':')
        && let (Ok(a), Ok(c)) = (a.parse(), c.parse())
    {
        wake(server, a, c);
    }
}

fn wake(server: &Server, app_id: i64, chat: i64) {
    if let Some(b) = module(server) {
        // No receiver means no feed is open: nothing to wake.
        let _ = b.changes.send((app_id, chat));
    }
}

/// A fresh room name: random, so that it tells nothing about the application or its token.
pub fn new_room_name() -> String {
    format!("chat-{}", uuid::Uuid::new_v4().simple())
}

/// The room's JID, which the API hands out so that XMPP users know where to join.
pub fn room_jid(server: &Server, room: &str) -> String {
    format!("{room}@{}", server.muc_domain)
}

/// Stores the room that carries a new chat: persistent, members-only, hidden, archived.
pub async fn create_room(
    server: &Server,
    app: &RestApp,
    room: &str,
    number: i64,
) -> Result<(), StoreError> {
    let config = RoomConfig {
        name: format!("{} #{number}", app.name),
        persistent: true,
        public: false,
        members_only: true,
        logging: true,
        bridged: true,
        reserved_nicks: vec![app.name.clone()],
        ..RoomConfig::default()
    };
    let stored = StoredRoom {
        name: room.to_owned(),
        config: serde_json::to_string(&config).unwrap_or_default(),
        subject: String::new(),
        affiliations: Vec::new(),
    };
    server.store.save_muc_room(&stored).await
}

/// Sends a message posted over HTTP to the room's occupants (and its archive).
pub async fn post(server: &Server, chat: &RestChat, msg: &RestMessage) {
    to_room(server, chat, message(msg, None)).await;
}

/// Sends an edit as a correction (XEP-0308) of the message the occupants saw.
pub async fn correct(server: &Server, chat: &RestChat, msg: &RestMessage) {
    let mut m = message(msg, Some(&msg.xmpp_id));
    stanza::set_attr(&mut m, "id", &uuid::Uuid::new_v4().to_string());
    to_room(server, chat, m).await;
}

fn message(msg: &RestMessage, replaces: Option<&str>) -> Element {
    let mut m = stanza::build("message", &[("type", "groupchat"), ("id", &msg.xmpp_id)]);
    m.append_child(text_el("body", crate::stream::ns::CLIENT, &msg.body));
    if let Some(id) = replaces {
        m.append_child(el("replace", CORRECT, &[("id", id)]));
    }
    m.append_child(el("bridge", NS, &[("nick", &msg.sender)]));
    m
}

/// Grants or withdraws membership of the chat's room.
pub async fn membership(server: &Server, chat: &RestChat, jid: &str, member: bool) {
    let mut iq = stanza::build("iq", &[("type", "set"), ("id", "bridge")]);
    let mut m = el("member", NS, &[("jid", jid)]);
    if !member {
        stanza::set_attr(&mut m, "remove", "true");
    }
    iq.append_child(m);
    to_room(server, chat, iq).await;
}

async fn to_room(server: &Server, chat: &RestChat, mut stanza: Element) {
    stanza::set_attr(&mut stanza, "from", &server.domain);
    stanza::set_attr(&mut stanza, "to", &room_jid(server, &chat.room));
    super::muc::route(server, stanza).await;
}

/// A message an occupant wrote in a bridged room: it becomes the chat's next message, or,
/// when it corrects (XEP-0308) an earlier message of the same occupant, an edit of that one.
/// `msg` is the room's broadcast copy, from the occupant's room JID.
pub async fn from_room(server: &Server, room: &str, msg: &Element) {
    let (Some(sender), Some(body)) = (
        msg.attr("from"),
        msg.get_child("body", crate::stream::ns::CLIENT),
    ) else {
        return;
    };
    let body = body.text();
    let chat = match server.store.rest_chat_by_room(room).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, room, "cannot find the chat of a bridged room");
            return;
        }
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let replaces = msg.get_child("replace", CORRECT).and_then(|r| r.attr("id"));
    let result = match replaces {
        Some(original) => correct_from_room(server, &chat, sender, original, &body, now_ms).await,
        None => Ok(None),
    };
    let done = match result {
        Ok(Some(())) => Ok(()),
        // Not a correction, or one of nothing this occupant wrote: a message of its own.
        Ok(None) => {
            let new = NewRestMessage {
                body: &body,
                sender,
                xmpp_id: msg.attr("id").unwrap_or_default(),
                via_api: false,
                now_ms,
            };
            server
                .store
                .rest_add_message(chat.app_id, chat.number, &new)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => changed(server, chat.app_id, chat.number),
        Err(e) => warn!(error = %e, room, "cannot number a room message into its chat"),
    }
}

/// Applies an occupant's correction to the message it replaces; None if there is no such
/// message of that occupant.
async fn correct_from_room(
    server: &Server,
    chat: &RestChat,
    sender: &str,
    original: &str,
    body: &str,
    now_ms: i64,
) -> Result<Option<()>, StoreError> {
    if original.is_empty() {
        return Ok(None);
    }
    let Some(old) = server
        .store
        .rest_message_by_xmpp_id(chat.app_id, chat.number, original)
        .await?
        .filter(|m| !m.via_api && m.sender == sender)
    else {
        return Ok(None);
    };
    // Later than the creation even within the same millisecond: that is what marks an edit.
    let now_ms = now_ms.max(old.created_ms + 1);
    Ok(server
        .store
        .rest_edit_message(chat.app_id, chat.number, old.number, body, now_ms)
        .await?
        .map(|_| ()))
}
