//! Multi-User Chat (XEP-0045) on `conference.<domain>` (config `muc.domain`): the service
//! finds the room a stanza is for, lets the room apply its rules (`room.rs`), stores what
//! must survive a restart, and routes what the room says, never holding a room's lock while
//! routing.

pub mod room;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use minidom::Element;
use tracing::warn;

use super::{Module, el};
use crate::jid::{self, FullJid, Jid};
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::StoredRoom;
use room::{Affiliation, Effects, Room, RoomConfig};

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const PING: &str = "urn:xmpp:ping";
const DATA: &str = "jabber:x:data";
/// Rooms one service hosts at most; beyond this, creating a room is refused.
pub const MAX_ROOMS: usize = 10_000;

#[derive(Default)]
pub struct Muc {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
}

#[async_trait]
impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }
}

fn module(server: &Server) -> Option<&Muc> {
    server.module::<Muc>()
}

/// Whether a failed operation should be answered (never for errors and results).
fn answerable(stanza: &Element) -> bool {
    !matches!(stanza::stanza_type(stanza), "error" | "result")
}

/// Routes a stanza addressed to the MUC service, a room, or an occupant: in a cluster, to the
/// node that hosts the room; otherwise here.
pub async fn route(server: &Server, stanza: Element) {
    let room = stanza
        .attr("to")
        .and_then(|t| jid::parse(t).ok())
        .and_then(|t| t.node().map(|n| n.as_str().to_owned()));
    if let (Some(cluster), Some(room)) = (&server.cluster, room)
        && let crate::cluster::RoomHost::There(node) = cluster.room_host(&room).await
    {
        if let Err(stanza) = cluster.to_room_host(&node, stanza)
            && answerable(&stanza)
        {
            // The bus is full: the sender hears it (serving the room here would split it).
            router::bounce(server, &stanza, StanzaError::resource_constraint()).await;
        }
        return;
    }
    route_here(server, stanza).await
}

/// Tells the occupants of every room hosted here that the service is going down (status
/// 332), before their sessions close.
pub async fn shutdown(server: &Server) {
    let Some(m) = module(server) else { return };
    let rooms: Vec<Arc<Mutex<Room>>> = m
        .rooms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, r)| r)
        .collect();
    for room in rooms {
        let goodbyes = room.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        for p in goodbyes {
            router::route(server, p).await;
        }
    }
}

/// Handles a stanza for the service or a room on this node.
pub async fn route_here(server: &Server, stanza: Element) {
    let Some(m) = module(server) else { return };
    let Some(from) = stanza.attr("from").and_then(|f| jid::parse(f).ok()) else {
        return;
    };
    let Some(to) = stanza.attr("to").and_then(|t| jid::parse(t).ok()) else {
        return;
    };
    if stanza.name() == "iq"
        && !answerable(&stanza)
        && let (Some(room), Some(nick)) = (to.node(), to.resource())
    {
        if let Some(answer) = m.relay_iq_answer(room.as_str(), &from, nick.as_str(), &stanza) {
            router::route(server, answer).await;
        }
        return;
    }
    if from.node().is_none() && from.resource().is_none() && from.domain().as_str() == server.domain
    {
        // Only the server itself sends from its bare domain: the REST bridge.
        if let Some(room) = to.node() {
            m.bridge(server, room.as_str(), stanza).await;
        }
        return;
    }
    let Ok(from) = from.try_into_full() else {
        return;
    };
    let outcome = match to.node() {
        None => m.to_service(server, &stanza).await,
        Some(node) => {
            let room = node.as_str().to_owned();
            let nick = to.resource().map(|r| r.as_str().to_owned());
            m.to_room(server, &from, &room, nick.as_deref(), &stanza)
                .await
        }
    };
    match outcome {
        Ok(out) => {
            for s in out {
                router::route(server, s).await;
            }
        }
        Err(err) if answerable(&stanza) => {
            if let Some(mut reply) = stanza::error_reply(&stanza, &err) {
                if stanza.name() == "presence" {
                    reply.append_child(el("x", room::NS, &[]));
                }
                router::route(server, reply).await;
            }
        }
        Err(_) => {}
    }
}

impl Muc {
    fn relay_iq_answer(
        &self,
        name: &str,
        from: &Jid,
        to_nick: &str,
        answer: &Element,
    ) -> Option<Element> {
        let room = self.loaded(name)?;
        let r = room.lock().unwrap_or_else(|e| e.into_inner());
        r.relay_iq_answer(from, to_nick, answer)
    }

    fn loaded(&self, name: &str) -> Option<Arc<Mutex<Room>>> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The room, from memory or (a persistent room after a restart) from the store.
    async fn room(
        &self,
        server: &Server,
        name: &str,
    ) -> Result<Option<Arc<Mutex<Room>>>, StanzaError> {
        if let Some(r) = self.loaded(name) {
            return Ok(Some(r));
        }
        let stored = server
            .store
            .muc_room(name)
            .await
            .map_err(|_| StanzaError::internal())?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let Ok(jid) = jid::parse_bare(&format!("{name}@{}", server.muc_domain)) else {
            return Ok(None);
        };
        let config: RoomConfig = serde_json::from_str(&stored.config).unwrap_or_default();
        let mut room = Room::new(jid, config);
        room.rate = message_rate(server);
        room.subject = serde_json::from_str(&stored.subject).ok();
        for (j, a) in &stored.affiliations {
            if let Some(a) = Affiliation::parse(a) {
                room.affiliations.insert(j.clone(), a);
            }
        }
        let room = Arc::new(Mutex::new(room));
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(rooms.entry(name.to_owned()).or_insert(room).clone()))
    }

    /// Creates a room for its first occupant, who becomes its owner; it stays locked until
    /// configured (XEP-0045 §10.1).
    fn create(
        &self,
        server: &Server,
        name: &str,
        owner: &FullJid,
    ) -> Result<Arc<Mutex<Room>>, StanzaError> {
        let jid = jid::parse_bare(&format!("{name}@{}", server.muc_domain))
            .map_err(|_| StanzaError::jid_malformed())?;
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = rooms.get(name) {
            return Ok(r.clone());
        }
        if rooms.len() >= MAX_ROOMS {
            return Err(StanzaError::resource_constraint().with_text("too many rooms"));
        }
        let mut room = Room::new(jid, RoomConfig::default());
        room.rate = message_rate(server);
        room.locked = true;
        room.affiliations
            .insert(owner.to_bare().to_string(), Affiliation::Owner);
        let room = Arc::new(Mutex::new(room));
        rooms.insert(name.to_owned(), room.clone());
        Ok(room)
    }

    async fn to_service(
        &self,
        server: &Server,
        stanza: &Element,
    ) -> Result<Vec<Element>, StanzaError> {
        if stanza.name() != "iq" || !matches!(stanza::stanza_type(stanza), "get" | "set") {
            return if stanza.name() == "message" {
                Err(StanzaError::service_unavailable())
            } else {
                Ok(Vec::new())
            };
        }
        let payload = stanza::iq_payload(stanza).ok_or_else(StanzaError::bad_request)?;
        let query = if payload.is("query", DISCO_INFO) {
            let mut q = el("query", DISCO_INFO, &[]);
            q.append_child(el(
                "identity",
                DISCO_INFO,
                &[
                    ("category", "conference"),
                    ("type", "text"),
                    ("name", "Chatrooms"),
                ],
            ));
            for f in [room::NS, DISCO_INFO, DISCO_ITEMS, "urn:xmpp:sid:0"] {
                q.append_child(el("feature", DISCO_INFO, &[("var", f)]));
            }
            q
        } else if payload.is("query", DISCO_ITEMS) {
            let mut q = el("query", DISCO_ITEMS, &[]);
            for (jid, name) in self.public_rooms(server).await {
                q.append_child(el("item", DISCO_ITEMS, &[("jid", &jid), ("name", &name)]));
            }
            q
        } else if payload.is("ping", PING) {
            return Ok(vec![stanza::iq_result(stanza, None)]);
        } else {
            return Err(StanzaError::service_unavailable());
        };
        Ok(vec![stanza::iq_result(stanza, Some(query))])
    }

    /// Rooms listed in the service's disco items: public, and persistent or occupied.
    async fn public_rooms(&self, server: &Server) -> Vec<(String, String)> {
        let mut out: HashMap<String, String> = HashMap::new();
        if let Ok(stored) = server.store.muc_rooms().await {
            for r in stored {
                let config: RoomConfig = serde_json::from_str(&r.config).unwrap_or_default();
                if config.public {
                    out.insert(format!("{}@{}", r.name, server.muc_domain), config.name);
                }
            }
        }
        let rooms: Vec<Arc<Mutex<Room>>> = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for r in rooms {
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            if r.config.public && !r.locked && (r.config.persistent || !r.occupants.is_empty()) {
                out.insert(r.jid.to_string(), r.config.name.clone());
            }
        }
        let mut list: Vec<_> = out.into_iter().collect();
        list.sort();
        list
    }

    async fn to_room(
        &self,
        server: &Server,
        from: &FullJid,
        name: &str,
        nick: Option<&str>,
        stanza: &Element,
    ) -> Result<Vec<Element>, StanzaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let kind = stanza::stanza_type(stanza);
        let existing = self.room(server, name).await?;
        // Only a join may create a room.
        let joining = stanza.name() == "presence" && kind.is_empty() && nick.is_some();
        let (room, created) = match existing {
            Some(r) => (r, false),
            None if joining => (self.create(server, name, from)?, true),
            None if stanza.name() == "presence" => return Ok(Vec::new()),
            None => return Err(StanzaError::item_not_found().with_text("no such room")),
        };
        if nick.is_none()
            && stanza.name() == "iq"
            && let Some(q) = stanza::iq_payload(stanza).filter(|p| p.ns() == super::mam::NS)
        {
            return archive_query(server, name, &room, from, stanza, q).await;
        }
        let (result, archived, bridged) = {
            let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
            let result = apply(&mut r, from, nick, stanza, created, now);
            let archived = queue_archive(server, name, result.as_ref().ok().map(|(fx, _)| fx));
            (result, archived, r.config.bridged)
        };
        let (fx, reply) = match result {
            Ok(v) => v,
            Err(e) => {
                if created {
                    self.forget(name);
                }
                return Err(e);
            }
        };
        // What an occupant said in a bridged room also goes to the room's REST chat.
        let said = fx
            .broadcast
            .as_ref()
            .filter(|_| bridged)
            .map(|(m, _)| m.clone());
        let mut out = self.deliver(server, name, &room, fx, archived).await;
        if let Some(m) = said {
            super::bridge::from_room(server, name, &m).await;
        }
        out.extend(reply);
        Ok(out)
    }

    /// The common end of a room operation: stamps the archive id, stores the room if it
    /// changed, and sends the broadcast; what is left to route one by one.
    async fn deliver(
        &self,
        server: &Server,
        name: &str,
        room: &Arc<Mutex<Room>>,
        mut fx: Effects,
        archived: Option<tokio::sync::oneshot::Receiver<Option<i64>>>,
    ) -> Vec<Element> {
        if let Some(id) = archived
            && let Ok(Some(id)) = id.await
        {
            // The room's stanza id is its archive id (XEP-0359, XEP-0313 §5.2).
            let id = id.to_string();
            if let Some((m, _)) = &mut fx.broadcast
                && let Some(sid) = m.get_child_mut("stanza-id", super::mam::SID)
            {
                stanza::set_attr(sid, "id", &id);
            }
        }
        self.settle(server, name, room, &fx).await;
        if let Some((message, to)) = fx.broadcast.take() {
            router::fan_out(server, message, to).await;
        }
        fx.out
    }

    /// An operation of the REST bridge on a room it carries: a message posted (or corrected)
    /// by an application, or a membership change.
    async fn bridge(&self, server: &Server, name: &str, mut stanza: Element) {
        let room = match self.room(server, name).await {
            Ok(Some(r)) => r,
            _ => {
                warn!(
                    room = name,
                    "the REST bridge names a room that does not exist"
                );
                return;
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        let (result, archived) = {
            let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
            let result = match stanza.name() {
                "message" => {
                    let nick = stanza
                        .get_child("bridge", super::bridge::NS)
                        .and_then(|b| b.attr("nick"))
                        .unwrap_or("api")
                        .to_owned();
                    stanza.remove_child("bridge", super::bridge::NS);
                    let fx = Effects {
                        save: r.reserve_nick(&nick) && r.config.persistent,
                        ..Effects::default()
                    };
                    r.publish(&nick, &stanza, now, fx)
                }
                _ => match stanza.get_child("member", super::bridge::NS) {
                    Some(m) => {
                        let jid = m.attr("jid").unwrap_or_default().to_owned();
                        r.bridge_membership(&jid, m.attr("remove").is_none())
                    }
                    None => Ok(Effects::default()),
                },
            };
            let archived = queue_archive(server, name, result.as_ref().ok());
            (result, archived)
        };
        match result {
            Ok(fx) => {
                for s in self.deliver(server, name, &room, fx, archived).await {
                    router::route(server, s).await;
                }
            }
            Err(e) => warn!(room = name, error = ?e, "the REST bridge's room operation failed"),
        }
    }

    fn forget(&self, name: &str) {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Stores or removes the room as the operation requires.
    async fn settle(&self, server: &Server, name: &str, room: &Arc<Mutex<Room>>, fx: &Effects) {
        if fx.gone {
            self.forget(name);
            let persistent = room
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config
                .persistent;
            // A destroyed room leaves the store too; an empty persistent room stays.
            if (!persistent || room_destroyed(fx))
                && let Err(e) = server.store.delete_muc_room(name).await
            {
                warn!(error = %e, room = name, "cannot delete room");
            }
            return;
        }
        if !fx.save {
            return;
        }
        let stored = {
            let r = room.lock().unwrap_or_else(|e| e.into_inner());
            if !r.config.persistent {
                None
            } else {
                Some(StoredRoom {
                    name: name.to_owned(),
                    config: serde_json::to_string(&r.config).unwrap_or_default(),
                    subject: r
                        .subject
                        .as_ref()
                        .and_then(|s| serde_json::to_string(s).ok())
                        .unwrap_or_default(),
                    affiliations: r
                        .affiliations
                        .iter()
                        .map(|(j, a)| (j.clone(), a.as_str().to_owned()))
                        .collect(),
                })
            }
        };
        let result = match stored {
            Some(s) => server.store.save_muc_room(&s).await,
            // Configured from persistent to temporary: it leaves the store.
            None => server.store.delete_muc_room(name).await,
        };
        if let Err(e) = result {
            warn!(error = %e, room = name, "cannot store room");
        }
    }
}

/// A MAM query to a room (XEP-0313 §5): for occupants, members and above, and anyone in a
/// public room that is not members-only.
async fn archive_query(
    server: &Server,
    name: &str,
    room: &Arc<Mutex<Room>>,
    from: &FullJid,
    iq: &Element,
    query: &Element,
) -> Result<Vec<Element>, StanzaError> {
    let room_jid = {
        let r = room.lock().unwrap_or_else(|e| e.into_inner());
        let aff = r.affiliation(&from.to_bare().to_string());
        let allowed = r.by_real(from).is_some()
            || aff >= Affiliation::Member
            || (r.config.public && !r.config.members_only && aff != Affiliation::Outcast);
        if !allowed || !r.config.logging {
            return Err(StanzaError::forbidden().with_text("this archive is not open to you"));
        }
        r.jid.to_string()
    };
    let reply_with = |payload: Element| {
        let mut reply = stanza::iq_result(iq, Some(payload));
        stanza::set_attr(&mut reply, "from", &room_jid);
        reply
    };
    let owner = super::mam::Owner::Room(name);
    match (query.name(), stanza::stanza_type(iq)) {
        ("query", "get") => Ok(vec![reply_with(super::mam::query_form())]),
        ("metadata", "get") => Ok(vec![reply_with(super::mam::metadata(server, owner).await?)]),
        ("query", "set") => {
            let to = Jid::from(from.clone());
            let (mut out, fin) =
                super::mam::run_query(server, owner, &room_jid, &to, query).await?;
            for m in &mut out {
                stanza::set_attr(m, "from", &room_jid);
            }
            out.push(reply_with(fin));
            Ok(out)
        }
        _ => Err(StanzaError::bad_request()),
    }
}

/// Queues the groupchat message an operation archives, if any. Called while the room's lock
/// is held, so that archive ids follow the room's order.
fn queue_archive(
    server: &Server,
    name: &str,
    fx: Option<&Effects>,
) -> Option<tokio::sync::oneshot::Receiver<Option<i64>>> {
    let m = fx?.archive.as_ref()?;
    let sender = m.attr("from").unwrap_or_default();
    super::mam::queue_room_message(server, name, sender, m)
}

fn room_destroyed(fx: &Effects) -> bool {
    fx.out.iter().any(|s| {
        s.get_child("x", room::USER)
            .is_some_and(|x| x.has_child("destroy", room::USER))
    })
}

/// Applies one stanza to a room: the effects, and the direct reply (iq result) if any.
fn apply(
    r: &mut Room,
    from: &FullJid,
    nick: Option<&str>,
    stanza: &Element,
    created: bool,
    now: i64,
) -> Result<(Effects, Option<Element>), StanzaError> {
    let kind = stanza::stanza_type(stanza);
    match (stanza.name(), nick) {
        ("presence", Some(nick)) => {
            let nick = valid_nick(nick)?;
            let fx = match kind {
                "unavailable" => r.leave(from, stanza),
                "" if r.by_real(from).is_some() => r.update_presence(from, nick, stanza)?,
                "" => {
                    let x = stanza.get_child("x", room::NS);
                    let password = x
                        .and_then(|x| x.get_child("password", room::NS))
                        .map(|p| p.text());
                    r.join(
                        from,
                        nick,
                        stanza,
                        password.as_deref(),
                        &room::history_request(x),
                        created,
                        now,
                    )?
                }
                _ => Effects::default(),
            };
            Ok((fx, None))
        }
        ("presence", None) => Err(StanzaError::jid_malformed().with_text("a nickname is needed")),
        ("message", None) => {
            if let Some(form) = stanza.get_child("x", DATA).filter(|x| is_voice_form(x)) {
                return if form
                    .children()
                    .any(|f| f.attr("var") == Some("muc#request_allow"))
                {
                    Ok((r.voice_decision(from, form)?, None))
                } else {
                    Ok((r.voice_request(from)?, None))
                };
            }
            if let Some(x) = stanza.get_child("x", room::USER) {
                let invites: Vec<(String, String)> = x
                    .children()
                    .filter(|c| c.is("invite", room::USER))
                    .filter_map(|i| {
                        let to = jid::parse(i.attr("to")?).ok()?.to_bare().to_string();
                        let reason = i
                            .get_child("reason", room::USER)
                            .map(|r| r.text())
                            .unwrap_or_default();
                        Some((to, reason))
                    })
                    .collect();
                if !invites.is_empty() {
                    return Ok((r.invite(from, &invites)?, None));
                }
            }
            match kind {
                "groupchat" => Ok((r.groupchat(from, stanza, now)?, None)),
                "error" => Ok((Effects::default(), None)),
                _ => {
                    Err(StanzaError::bad_request().with_text("send groupchat messages to the room"))
                }
            }
        }
        ("message", Some(to_nick)) => match kind {
            "groupchat" => Err(StanzaError::bad_request().with_text("groupchat goes to the room")),
            "error" => Ok((Effects::default(), None)),
            _ => Ok((r.private_message(from, to_nick, stanza)?, None)),
        },
        ("iq", target_nick) => iq(r, from, target_nick, stanza),
        _ => Ok((Effects::default(), None)),
    }
}

/// A voice request or its answer: a data form of type `muc#request` (§7.13, §8.6).
fn is_voice_form(x: &Element) -> bool {
    x.attr("type") == Some("submit")
        && x.children().any(|f| {
            f.attr("var") == Some("FORM_TYPE")
                && f.get_child("value", DATA)
                    .is_some_and(|v| v.text() == room::REQUEST)
        })
}

fn valid_nick(nick: &str) -> Result<&str, StanzaError> {
    if nick.trim().is_empty() || nick.chars().count() > room::MAX_NICK {
        return Err(StanzaError::jid_malformed()
            .with_text(format!("a nickname has 1 to {} characters", room::MAX_NICK)));
    }
    Ok(nick)
}

fn iq(
    r: &mut Room,
    from: &FullJid,
    nick: Option<&str>,
    stanza: &Element,
) -> Result<(Effects, Option<Element>), StanzaError> {
    let kind = stanza::stanza_type(stanza);
    if !matches!(kind, "get" | "set") {
        return Ok((Effects::default(), None));
    }
    let payload = stanza::iq_payload(stanza).ok_or_else(StanzaError::bad_request)?;
    let result = |p: Option<Element>| Some(stanza::iq_result(stanza, p));
    if let Some(nick) = nick {
        // XEP-0410: an occupant pinging itself learns whether it is still joined.
        if payload.is("ping", PING) {
            return match r.by_nick(nick) {
                Some(o) if &o.jid == from => Ok((Effects::default(), result(None))),
                _ if r.by_real(from).is_none() => {
                    Err(StanzaError::not_acceptable().with_text("you are not in this room"))
                }
                Some(_) => Ok((r.forward_iq(from, nick, stanza)?, None)),
                None => Err(StanzaError::item_not_found()),
            };
        }
        return Ok((r.forward_iq(from, nick, stanza)?, None));
    }
    let aff = r.affiliation(&from.to_bare().to_string());
    match (payload.name(), payload.ns().as_str(), kind) {
        ("query", DISCO_INFO, "get") => {
            if r.locked && aff != Affiliation::Owner {
                return Err(StanzaError::item_not_found());
            }
            Ok((Effects::default(), result(Some(r.disco_info()))))
        }
        ("query", DISCO_ITEMS, "get") => Ok((
            Effects::default(),
            result(Some(el("query", DISCO_ITEMS, &[]))),
        )),
        ("ping", PING, "get") => Ok((Effects::default(), result(None))),
        ("query", room::OWNER, _) => {
            if aff != Affiliation::Owner {
                return Err(StanzaError::forbidden().with_text("only owners configure a room"));
            }
            if kind == "get" {
                return Ok((Effects::default(), result(Some(r.config_form()))));
            }
            if let Some(d) = payload.get_child("destroy", room::OWNER) {
                let reason = d
                    .get_child("reason", room::OWNER)
                    .map(|x| x.text())
                    .unwrap_or_default();
                return Ok((r.destroy(&reason, d.attr("jid")), result(None)));
            }
            let Some(x) = payload.get_child("x", "jabber:x:data") else {
                return Err(StanzaError::bad_request());
            };
            match x.attr("type") {
                Some("submit") => Ok((r.apply_config(x, 10_000)?, result(None))),
                Some("cancel") if r.locked => Ok((r.destroy("", None), result(None))),
                Some("cancel") => Ok((Effects::default(), result(None))),
                _ => Err(StanzaError::bad_request()),
            }
        }
        ("query", room::ADMIN, "get") => {
            let item = payload
                .get_child("item", room::ADMIN)
                .ok_or_else(StanzaError::bad_request)?;
            Ok((Effects::default(), result(Some(r.admin_get(from, item)?))))
        }
        ("query", room::ADMIN, "set") => {
            let items: Vec<Element> = payload
                .children()
                .filter(|c| c.is("item", room::ADMIN))
                .cloned()
                .collect();
            if items.is_empty() {
                return Err(StanzaError::bad_request());
            }
            Ok((r.admin_set(from, &items)?, result(None)))
        }
        _ => Err(StanzaError::service_unavailable()),
    }
}

fn message_rate(server: &Server) -> room::MessageRate {
    room::MessageRate {
        per_second: server.config.muc.message_rate,
        burst: server.config.muc.message_burst,
    }
}

/// The service's domain for a server configuration.
pub fn service_domain(config: &crate::config::Config) -> String {
    if config.muc.domain.is_empty() {
        format!("conference.{}", config.domain)
    } else {
        config.muc.domain.clone()
    }
}

/// Used by the router for `to` addresses on the service's domain.
pub fn is_service(server: &Server, to: &Jid) -> bool {
    to.domain().as_str() == server.muc_domain
}
