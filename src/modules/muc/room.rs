//! One room's state and rules (XEP-0045): occupants with roles, affiliations, configuration,
//! subject and history. Every operation returns the stanzas it causes, addressed and ready to
//! route, so the caller never holds the room's lock while routing.

use std::collections::{BTreeMap, VecDeque};

use minidom::Element;
use serde::{Deserialize, Serialize};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::jid::{BareJid, FullJid, Jid};
use crate::modules::{el, text_el};
use crate::stanza::{self, StanzaError};

pub const NS: &str = "http://jabber.org/protocol/muc";
pub const USER: &str = "http://jabber.org/protocol/muc#user";
pub const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub const REQUEST: &str = "http://jabber.org/protocol/muc#request";
const DATA: &str = "jabber:x:data";
const DELAY: &str = "urn:xmpp:delay";
const SID: &str = "urn:xmpp:sid:0";
const VCARD: &str = "vcard-temp";

/// Messages kept for history on join.
pub const HISTORY_KEPT: usize = 50;
/// History sent on join when the client does not say.
pub const HISTORY_DEFAULT: usize = 20;
/// Longest nickname, in characters.
pub const MAX_NICK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// The room configuration (the muc#roomconfig form), stored as JSON for persistent rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    /// Listed in the service's disco items; false is a hidden room.
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Empty means no password.
    pub password: String,
    pub max_occupants: usize,
    /// Real JIDs visible to everyone (non-anonymous) rather than to moderators only.
    pub whois_anyone: bool,
    /// Participants may change the subject (otherwise moderators only).
    pub change_subject: bool,
    /// Occupants may send each other private messages.
    pub allow_pm: bool,
    /// Messages are archived and served by MAM (muc#roomconfig_enablelogging).
    pub logging: bool,
    /// The room carries a chat of the REST bridge: occupants' messages are numbered into it.
    pub bridged: bool,
    /// Nicknames the REST bridge speaks under, which no occupant may take.
    pub reserved_nicks: Vec<String>,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            max_occupants: 200,
            whois_anyone: false,
            change_subject: false,
            allow_pm: true,
            logging: true,
            bridged: false,
            reserved_nicks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    pub jid: FullJid,
    pub role: Role,
    /// The occupant's own presence payload (show, status, …), without MUC elements.
    pub presence: Element,
    /// Messages the occupant may still send now (a token bucket, see [`MessageRate`]).
    pub budget: f64,
    pub budget_at_ms: i64,
}

/// Messages per second an occupant may send to a room, and the burst it may save up: beyond
/// this, messages are refused rather than flooding every other occupant. A rate of 0 means
/// no limit (`muc.message_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageRate {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for MessageRate {
    fn default() -> Self {
        MessageRate {
            per_second: 5.0,
            burst: 20.0,
        }
    }
}

impl Occupant {
    /// Takes one message from the budget; false when the occupant sends too fast.
    fn spend(&mut self, rate: MessageRate, now_ms: i64) -> bool {
        if rate.per_second <= 0.0 {
            return true;
        }
        let elapsed = (now_ms - self.budget_at_ms).max(0) as f64 / 1000.0;
        self.budget = (self.budget + elapsed * rate.per_second).min(rate.burst);
        self.budget_at_ms = now_ms;
        if self.budget < 1.0 {
            return false;
        }
        self.budget -= 1.0;
        true
    }
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    /// The message as broadcast (from room/nick), without `to`.
    stanza: Element,
    stamp_ms: i64,
    chars: usize,
}

/// What a join asked for (XEP-0045 §7.2.14).
#[derive(Debug, Clone, Default)]
pub struct HistoryRequest {
    pub max_stanzas: Option<usize>,
    pub max_chars: Option<usize>,
    pub seconds: Option<i64>,
    pub since_ms: Option<i64>,
}

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    /// Bare JID → affiliation; `none` is not stored.
    pub affiliations: BTreeMap<String, Affiliation>,
    pub occupants: Vec<Occupant>,
    /// (who set it, text)
    pub subject: Option<(String, String)>,
    history: VecDeque<HistoryEntry>,
    /// A new room stays locked until its owner configures it (or accepts the defaults).
    pub locked: bool,
    /// The server's limit on each occupant's messages (not stored with the room).
    pub rate: MessageRate,
}

/// The outcome of an operation: stanzas to route, and whether the stored room changed.
#[derive(Debug, Default)]
pub struct Effects {
    pub out: Vec<Element>,
    pub save: bool,
    /// The room ended (destroyed, or temporary and empty).
    pub gone: bool,
    /// A groupchat message to archive: the broadcast form, without `to`.
    pub archive: Option<Element>,
    /// One message for many occupants (without `to`), sent once per node in a cluster.
    pub broadcast: Option<(Element, Vec<FullJid>)>,
}

impl Room {
    pub fn new(jid: BareJid, config: RoomConfig) -> Room {
        Room {
            jid,
            config,
            affiliations: BTreeMap::new(),
            occupants: Vec::new(),
            subject: None,
            history: VecDeque::new(),
            locked: false,
            rate: MessageRate::default(),
        }
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    pub fn by_real(&self, jid: &FullJid) -> Option<&Occupant> {
        self.occupants.iter().find(|o| &o.jid == jid)
    }

    pub fn by_nick(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.iter().find(|o| o.nick == nick)
    }

    /// A nickname is free for `from` unless another user has it in the room, or the REST
    /// bridge speaks under it (so that no occupant can pass for the application).
    fn nick_free(&self, nick: &str, from: &FullJid) -> Result<(), StanzaError> {
        if let Some(other) = self.by_nick(nick)
            && other.jid.to_bare() != from.to_bare()
        {
            return Err(StanzaError::conflict().with_text("that nickname is in use"));
        }
        if self.config.reserved_nicks.iter().any(|r| r == nick) {
            return Err(StanzaError::conflict().with_text("that nickname is the application's"));
        }
        Ok(())
    }

    /// Reserves a nickname the REST bridge speaks under; true if it is new (the room is then
    /// stored again).
    pub fn reserve_nick(&mut self, nick: &str) -> bool {
        if self.config.reserved_nicks.iter().any(|r| r == nick) {
            return false;
        }
        self.config.reserved_nicks.push(nick.to_owned());
        true
    }

    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    /// The presence of `o` as `viewer` sees it, with the given extra status codes.
    fn presence_of(&self, o: &Occupant, viewer: &Occupant, codes: &[&str]) -> Element {
        let mut p = o.presence.clone();
        stanza::set_attr(&mut p, "from", &self.occupant_jid(&o.nick));
        stanza::set_attr(&mut p, "to", &viewer.jid.to_string());
        let aff = self.affiliation(&o.jid.to_bare().to_string());
        let mut item = el(
            "item",
            USER,
            &[("affiliation", aff.as_str()), ("role", o.role.as_str())],
        );
        if self.config.whois_anyone || viewer.role == Role::Moderator || viewer.jid == o.jid {
            stanza::set_attr(&mut item, "jid", &o.jid.to_string());
        }
        let mut x = el("x", USER, &[]);
        x.append_child(item);
        for c in codes {
            x.append_child(el("status", USER, &[("code", c)]));
        }
        p.append_child(x);
        p
    }

    /// Unavailable presence for `o` (leaving, kicked, banned, renamed), to every occupant
    /// including `o` itself.
    fn unavailable_of(&self, o: &Occupant, new_nick: Option<&str>, codes: &[&str]) -> Vec<Element> {
        let aff = self.affiliation(&o.jid.to_bare().to_string());
        let mut out = Vec::new();
        let viewers = self
            .occupants
            .iter()
            .filter(|v| v.jid != o.jid)
            .chain(std::iter::once(o));
        for viewer in viewers {
            let mut p = stanza::build(
                "presence",
                &[
                    ("type", "unavailable"),
                    ("from", &self.occupant_jid(&o.nick)),
                    ("to", &viewer.jid.to_string()),
                ],
            );
            let role = if new_nick.is_some() {
                o.role
            } else {
                Role::None
            };
            let mut item = el(
                "item",
                USER,
                &[("affiliation", aff.as_str()), ("role", role.as_str())],
            );
            if let Some(n) = new_nick {
                stanza::set_attr(&mut item, "nick", n);
            }
            if self.config.whois_anyone || viewer.role == Role::Moderator || viewer.jid == o.jid {
                stanza::set_attr(&mut item, "jid", &o.jid.to_string());
            }
            let mut x = el("x", USER, &[]);
            x.append_child(item);
            for c in codes {
                x.append_child(el("status", USER, &[("code", c)]));
            }
            if viewer.jid == o.jid {
                x.append_child(el("status", USER, &[("code", "110")]));
            }
            p.append_child(x);
            out.push(p);
        }
        out
    }

    /// A presence to room/nick from someone not in the room: the join (XEP-0045 §7.2).
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        from: &FullJid,
        nick: &str,
        presence: &Element,
        password: Option<&str>,
        history: &HistoryRequest,
        created: bool,
        now_ms: i64,
    ) -> Result<Effects, StanzaError> {
        let bare = from.to_bare().to_string();
        let aff = self.affiliation(&bare);
        if self.locked && aff != Affiliation::Owner {
            return Err(StanzaError::item_not_found()
                .with_text("this room is locked until its owner configures it"));
        }
        if aff == Affiliation::Outcast {
            return Err(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        if self.config.members_only && aff < Affiliation::Member {
            return Err(
                StanzaError::registration_required().with_text("this room is for members only")
            );
        }
        if !self.config.password.is_empty()
            && aff < Affiliation::Admin
            && password != Some(self.config.password.as_str())
        {
            return Err(StanzaError::not_authorized().with_text("a password is required"));
        }
        self.nick_free(nick, from)?;
        if self.occupants.len() >= self.config.max_occupants && aff < Affiliation::Admin {
            return Err(StanzaError::service_unavailable().with_text("the room is full"));
        }
        let occupant = Occupant {
            nick: nick.to_owned(),
            jid: from.clone(),
            role: self.default_role(aff),
            presence: clean_presence(presence),
            budget: self.rate.burst,
            budget_at_ms: now_ms,
        };
        let mut fx = Effects::default();
        // Everyone already there, to the newcomer.
        for o in &self.occupants {
            fx.out.push(self.presence_of(o, &occupant, &[]));
        }
        self.occupants.push(occupant.clone());
        // The newcomer, to everyone (itself last, with its own status codes).
        for viewer in &self.occupants {
            if viewer.jid == occupant.jid {
                continue;
            }
            fx.out.push(self.presence_of(&occupant, viewer, &[]));
        }
        let mut own = vec!["110"];
        if self.config.whois_anyone {
            own.push("100");
        }
        if self.config.logging {
            own.push("170");
        }
        if created {
            own.push("201");
        }
        fx.out.push(self.presence_of(&occupant, &occupant, &own));
        fx.out.extend(self.history_for(&occupant, history, now_ms));
        fx.out.push(self.subject_for(&occupant));
        Ok(fx)
    }

    fn history_for(&self, to: &Occupant, req: &HistoryRequest, now_ms: i64) -> Vec<Element> {
        let max = req.max_stanzas.unwrap_or(HISTORY_DEFAULT);
        let mut picked: Vec<&HistoryEntry> = Vec::new();
        let mut chars = 0;
        for h in self.history.iter().rev() {
            if picked.len() >= max {
                break;
            }
            if let Some(s) = req.seconds
                && h.stamp_ms < now_ms - s * 1000
            {
                break;
            }
            if let Some(since) = req.since_ms
                && h.stamp_ms < since
            {
                break;
            }
            if let Some(mc) = req.max_chars
                && chars + h.chars > mc
            {
                break;
            }
            chars += h.chars;
            picked.push(h);
        }
        picked
            .into_iter()
            .rev()
            .map(|h| {
                let mut m = h.stanza.clone();
                stanza::set_attr(&mut m, "to", &to.jid.to_string());
                let mut delay = el(
                    "delay",
                    DELAY,
                    &[
                        ("from", &self.jid.to_string()),
                        ("stamp", &stanza::stamp_from_ms(h.stamp_ms)),
                    ],
                );
                delay.append_text_node("");
                m.append_child(delay);
                m
            })
            .collect()
    }

    fn subject_for(&self, to: &Occupant) -> Element {
        let (from, text) = match &self.subject {
            Some((nick, text)) => (self.occupant_jid(nick), text.as_str()),
            None => (self.jid.to_string(), ""),
        };
        let mut m = stanza::build(
            "message",
            &[
                ("type", "groupchat"),
                ("from", &from),
                ("to", &to.jid.to_string()),
            ],
        );
        m.append_child(text_el("subject", crate::stream::ns::CLIENT, text));
        m
    }

    /// Presence from an occupant: a status change, or a nick change (§7.6).
    pub fn update_presence(
        &mut self,
        from: &FullJid,
        nick: &str,
        presence: &Element,
    ) -> Result<Effects, StanzaError> {
        let Some(i) = self.occupants.iter().position(|o| &o.jid == from) else {
            return Err(StanzaError::item_not_found());
        };
        let mut fx = Effects::default();
        if self.occupants[i].nick != nick {
            self.nick_free(nick, from)?;
            let old = self.occupants[i].clone();
            fx.out
                .extend(self.unavailable_of(&old, Some(nick), &["303"]));
            self.occupants[i].nick = nick.to_owned();
        }
        self.occupants[i].presence = clean_presence(presence);
        let o = self.occupants[i].clone();
        for viewer in &self.occupants {
            let codes: &[&str] = if viewer.jid == o.jid { &["110"] } else { &[] };
            fx.out.push(self.presence_of(&o, viewer, codes));
        }
        Ok(fx)
    }

    /// Unavailable presence from an occupant: it leaves (§7.14).
    pub fn leave(&mut self, from: &FullJid, presence: &Element) -> Effects {
        let mut fx = Effects::default();
        let Some(i) = self.occupants.iter().position(|o| &o.jid == from) else {
            return fx;
        };
        let mut o = self.occupants.remove(i);
        o.presence = clean_presence(presence);
        for mut p in self.unavailable_of(&o, None, &[]) {
            for c in o.presence.children() {
                p.append_child(c.clone());
            }
            fx.out.push(p);
        }
        fx.gone = self.occupants.is_empty() && !self.config.persistent;
        fx
    }

    /// A groupchat message from an occupant (§7.4), or a subject change (§8.1).
    pub fn groupchat(
        &mut self,
        from: &FullJid,
        msg: &Element,
        now_ms: i64,
    ) -> Result<Effects, StanzaError> {
        let Some(i) = self.occupants.iter().position(|o| &o.jid == from) else {
            return Err(StanzaError::not_acceptable().with_text("only occupants may send here"));
        };
        if self.occupants[i].role < Role::Participant {
            return Err(StanzaError::forbidden().with_text("visitors have no voice here"));
        }
        if !self.occupants[i].spend(self.rate, now_ms) {
            return Err(StanzaError::resource_constraint().with_text(format!(
                "slow down: at most {} messages a second here",
                self.rate.per_second
            )));
        }
        let sender = self.occupants[i].clone();
        let subject = msg.get_child("subject", crate::stream::ns::CLIENT);
        let has_body = msg.has_child("body", crate::stream::ns::CLIENT);
        let mut fx = Effects::default();
        if let Some(subject) = subject
            && !has_body
        {
            if sender.role < Role::Moderator && !self.config.change_subject {
                return Err(StanzaError::forbidden().with_text("you may not change the subject"));
            }
            self.subject = Some((sender.nick.clone(), subject.text()));
            fx.save = self.config.persistent;
        }
        self.publish(&sender.nick, msg, now_ms, fx)
    }

    /// Sends a groupchat message to every occupant from `nick` (an occupant, or the REST
    /// bridge's application), with the room's stanza id, into history and the archive.
    pub fn publish(
        &mut self,
        nick: &str,
        msg: &Element,
        now_ms: i64,
        mut fx: Effects,
    ) -> Result<Effects, StanzaError> {
        let subject = msg.get_child("subject", crate::stream::ns::CLIENT);
        let has_body = msg.has_child("body", crate::stream::ns::CLIENT);
        let mut out = msg.clone();
        stanza::remove_attr(&mut out, "to");
        stanza::set_attr(&mut out, "from", &self.occupant_jid(nick));
        // Stanza ids are the room's to give.
        for node in out.take_nodes() {
            if !node.as_element().is_some_and(|c| c.is("stanza-id", SID)) {
                out.append_node(node);
            }
        }
        let room_id = uuid::Uuid::new_v4().to_string();
        out.append_child(el(
            "stanza-id",
            SID,
            &[("by", &self.jid.to_string()), ("id", &room_id)],
        ));
        if has_body && self.config.logging {
            fx.archive = Some(out.clone());
        }
        if has_body || subject.is_none() {
            let chars = out.children().map(|c| c.text().chars().count()).sum();
            self.history.push_back(HistoryEntry {
                stanza: out.clone(),
                stamp_ms: now_ms,
                chars,
            });
            while self.history.len() > HISTORY_KEPT {
                self.history.pop_front();
            }
        }
        fx.broadcast = Some((out, self.occupants.iter().map(|o| o.jid.clone()).collect()));
        Ok(fx)
    }

    /// A private message from one occupant to another (§7.5).
    pub fn private_message(
        &self,
        from: &FullJid,
        to_nick: &str,
        msg: &Element,
    ) -> Result<Effects, StanzaError> {
        let Some(sender) = self.by_real(from) else {
            return Err(StanzaError::not_acceptable().with_text("only occupants may send here"));
        };
        if !self.config.allow_pm {
            return Err(StanzaError::forbidden().with_text("private messages are off here"));
        }
        let Some(target) = self.by_nick(to_nick) else {
            return Err(StanzaError::item_not_found().with_text("no such occupant"));
        };
        let mut m = msg.clone();
        stanza::set_attr(&mut m, "from", &self.occupant_jid(&sender.nick));
        stanza::set_attr(&mut m, "to", &target.jid.to_string());
        if m.get_child("x", USER).is_none() {
            m.append_child(el("x", USER, &[]));
        }
        Ok(Effects {
            out: vec![m],
            ..Effects::default()
        })
    }

    /// An iq from one occupant to another (§7.5 for iq): forwarded from the sender's occupant
    /// JID, with an id that tells the room where the answer goes back to. A vCard request goes
    /// to the target's account, which holds vCards, as Prosody and ejabberd do.
    pub fn forward_iq(
        &self,
        from: &FullJid,
        to_nick: &str,
        iq: &Element,
    ) -> Result<Effects, StanzaError> {
        let Some(sender) = self.by_real(from) else {
            return Err(StanzaError::not_acceptable().with_text("you are not in this room"));
        };
        let Some(target) = self.by_nick(to_nick) else {
            return Err(StanzaError::item_not_found().with_text("no such occupant"));
        };
        let vcard_get = stanza::stanza_type(iq) == "get"
            && stanza::iq_payload(iq).is_some_and(|p| p.is("vCard", VCARD));
        let to = if vcard_get {
            target.jid.to_bare().to_string()
        } else {
            target.jid.to_string()
        };
        let mut out = iq.clone();
        stanza::set_attr(&mut out, "from", &self.occupant_jid(&sender.nick));
        stanza::set_attr(&mut out, "to", &to);
        let id = forwarded_iq_id(from.resource().as_str(), iq.attr("id").unwrap_or_default());
        stanza::set_attr(&mut out, "id", &id);
        Ok(Effects {
            out: vec![out],
            ..Effects::default()
        })
    }

    /// The answer to a forwarded iq, on its way back to the occupant that asked: `from` is
    /// the answering occupant (or its account, for a vCard), `to_nick` the asker's nickname.
    /// None when either has left or the id is not one the room made.
    pub fn relay_iq_answer(&self, from: &Jid, to_nick: &str, answer: &Element) -> Option<Element> {
        let (resource, id) = original_iq_id(answer.attr("id")?)?;
        let responder = self.occupants.iter().find(|o| match from.try_as_full() {
            Ok(full) => &o.jid == full,
            Err(_) => o.jid.to_bare() == from.to_bare(),
        })?;
        let asker = self
            .occupants
            .iter()
            .find(|o| o.nick == to_nick && o.jid.resource().as_str() == resource)?;
        let mut out = answer.clone();
        stanza::set_attr(&mut out, "from", &self.occupant_jid(&responder.nick));
        stanza::set_attr(&mut out, "to", &asker.jid.to_string());
        stanza::set_attr(&mut out, "id", &id);
        Some(out)
    }

    /// The service is going down: every occupant learns it is out of the room (status 332),
    /// so that its client joins again once the service is back.
    pub fn shutdown(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.occupants)
            .iter()
            .map(|o| {
                let aff = self.affiliation(&o.jid.to_bare().to_string());
                let jid = o.jid.to_string();
                let (mut p, mut x) =
                    self.removal(o, &[("affiliation", aff.as_str()), ("jid", &jid)]);
                x.append_child(el("status", USER, &[("code", "332")]));
                x.append_child(el("status", USER, &[("code", "110")]));
                p.append_child(x);
                p
            })
            .collect()
    }

    /// An occupant's own unavailable presence when the room removes everyone, and its
    /// muc#user element with the item (role none) for the caller to complete.
    fn removal(&self, o: &Occupant, item: &[(&str, &str)]) -> (Element, Element) {
        let p = stanza::build(
            "presence",
            &[
                ("type", "unavailable"),
                ("from", &self.occupant_jid(&o.nick)),
                ("to", &o.jid.to_string()),
            ],
        );
        let mut item_el = el("item", USER, &[("role", Role::None.as_str())]);
        for (k, v) in item {
            stanza::set_attr(&mut item_el, k, v);
        }
        let mut x = el("x", USER, &[]);
        x.append_child(item_el);
        (p, x)
    }

    /// The REST bridge grants or withdraws membership (`member` or `none`) with an owner's
    /// rights; in a members-only room a withdrawn member leaves (321).
    pub fn bridge_membership(&mut self, jid: &str, member: bool) -> Result<Effects, StanzaError> {
        let mut fx = Effects::default();
        let aff = if member {
            Affiliation::Member
        } else {
            Affiliation::None
        };
        if self.affiliation(jid) == aff {
            return Ok(fx);
        }
        self.set_affiliation(Affiliation::Owner, jid, aff, "", &mut fx)?;
        Ok(fx)
    }

    /// A visitor asks for voice (§7.13): every moderator gets the approval form (§8.6).
    pub fn voice_request(&self, from: &FullJid) -> Result<Effects, StanzaError> {
        let Some(asker) = self.by_real(from) else {
            return Err(StanzaError::not_acceptable().with_text("only occupants may ask for voice"));
        };
        let mut fx = Effects::default();
        if asker.role != Role::Visitor {
            return Ok(fx);
        }
        let form = voice_form(asker);
        for moderator in self.occupants.iter().filter(|o| o.role == Role::Moderator) {
            let mut m = stanza::build(
                "message",
                &[
                    ("from", &self.jid.to_string()),
                    ("to", &moderator.jid.to_string()),
                ],
            );
            m.append_child(form.clone());
            fx.out.push(m);
        }
        Ok(fx)
    }

    /// A moderator's answer to a voice request (§8.6): on approval the visitor becomes a
    /// participant, as if the moderator had granted voice through the admin namespace.
    pub fn voice_decision(
        &mut self,
        from: &FullJid,
        form: &Element,
    ) -> Result<Effects, StanzaError> {
        let value = |var: &str| {
            form.children()
                .find(|f| f.is("field", DATA) && f.attr("var") == Some(var))
                .and_then(|f| f.get_child("value", DATA))
                .map(|v| v.text())
        };
        let mut fx = Effects::default();
        if !matches!(value("muc#request_allow").as_deref(), Some("1" | "true")) {
            return Ok(fx);
        }
        let nick = value("muc#roomnick").ok_or_else(|| {
            StanzaError::bad_request().with_text("the voice request names no muc#roomnick")
        })?;
        let actor_aff = self.affiliation(&from.to_bare().to_string());
        let actor_role = self.by_real(from).map_or(Role::None, |o| o.role);
        if self.by_nick(&nick).is_some_and(|o| o.role != Role::Visitor) {
            return Ok(fx);
        }
        self.set_role(actor_aff, actor_role, &nick, Role::Participant, "", &mut fx)?;
        Ok(fx)
    }

    /// A mediated invitation (§7.8.2): the room forwards it; in a members-only room an
    /// invitation by an admin or owner makes the invitee a member.
    pub fn invite(
        &mut self,
        from: &FullJid,
        invites: &[(String, String)],
    ) -> Result<Effects, StanzaError> {
        let inviter_aff = self.affiliation(&from.to_bare().to_string());
        if self.by_real(from).is_none() {
            return Err(StanzaError::not_acceptable().with_text("only occupants may invite"));
        }
        if self.config.members_only && inviter_aff < Affiliation::Admin {
            return Err(StanzaError::forbidden().with_text("only admins may invite here"));
        }
        let mut fx = Effects::default();
        for (to, reason) in invites {
            if self.config.members_only && self.affiliation(to) == Affiliation::None {
                self.affiliations.insert(to.clone(), Affiliation::Member);
                fx.save = self.config.persistent;
            }
            let mut m = stanza::build("message", &[("from", &self.jid.to_string()), ("to", to)]);
            let mut x = el("x", USER, &[]);
            let mut invite = el("invite", USER, &[("from", &from.to_bare().to_string())]);
            if !reason.is_empty() {
                invite.append_child(text_el("reason", USER, reason));
            }
            x.append_child(invite);
            if !self.config.password.is_empty() {
                x.append_child(text_el("password", USER, &self.config.password));
            }
            m.append_child(x);
            fx.out.push(m);
        }
        Ok(fx)
    }

    /// Admin requests that change roles or affiliations (§8, §9, §10).
    pub fn admin_set(&mut self, from: &FullJid, items: &[Element]) -> Result<Effects, StanzaError> {
        let actor_aff = self.affiliation(&from.to_bare().to_string());
        let actor_role = self.by_real(from).map_or(Role::None, |o| o.role);
        let mut fx = Effects::default();
        for item in items {
            let reason = item
                .get_child("reason", ADMIN)
                .map(|r| r.text())
                .unwrap_or_default();
            if let Some(role) = item.attr("role") {
                let role = Role::parse(role).ok_or_else(StanzaError::bad_request)?;
                let nick = item.attr("nick").ok_or_else(StanzaError::bad_request)?;
                self.set_role(actor_aff, actor_role, nick, role, &reason, &mut fx)?;
            } else if let Some(aff) = item.attr("affiliation") {
                let aff = Affiliation::parse(aff).ok_or_else(StanzaError::bad_request)?;
                let target = item
                    .attr("jid")
                    .and_then(|j| crate::jid::parse(j).ok())
                    .map(|j| j.to_bare().to_string())
                    .or_else(|| {
                        item.attr("nick")
                            .and_then(|n| self.by_nick(n))
                            .map(|o| o.jid.to_bare().to_string())
                    })
                    .ok_or_else(StanzaError::bad_request)?;
                self.set_affiliation(actor_aff, &target, aff, &reason, &mut fx)?;
            } else {
                return Err(StanzaError::bad_request());
            }
        }
        Ok(fx)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_role(
        &mut self,
        actor_aff: Affiliation,
        actor_role: Role,
        nick: &str,
        role: Role,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        if actor_role < Role::Moderator {
            return Err(StanzaError::forbidden().with_text("only moderators change roles"));
        }
        let Some(i) = self.occupants.iter().position(|o| o.nick == nick) else {
            return Err(StanzaError::item_not_found().with_text("no such occupant"));
        };
        let target_aff = self.affiliation(&self.occupants[i].jid.to_bare().to_string());
        if target_aff > actor_aff || (target_aff >= Affiliation::Admin && role < Role::Moderator) {
            return Err(StanzaError::not_allowed()
                .with_text("you cannot change the role of someone with a higher affiliation"));
        }
        if role == Role::Moderator && actor_aff < Affiliation::Admin {
            return Err(StanzaError::not_allowed().with_text("only admins grant moderation"));
        }
        if role == Role::None {
            // A kick (§8.2).
            let o = self.occupants.remove(i);
            fx.out
                .extend(self.with_reason(self.unavailable_of(&o, None, &["307"]), reason));
            fx.gone = self.occupants.is_empty() && !self.config.persistent;
            return Ok(());
        }
        self.occupants[i].role = role;
        let o = self.occupants[i].clone();
        for viewer in &self.occupants {
            let codes: &[&str] = if viewer.jid == o.jid { &["110"] } else { &[] };
            fx.out.push(self.presence_of(&o, viewer, codes));
        }
        Ok(())
    }

    fn set_affiliation(
        &mut self,
        actor: Affiliation,
        target: &str,
        aff: Affiliation,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        let current = self.affiliation(target);
        let allowed = match actor {
            Affiliation::Owner => true,
            Affiliation::Admin => current < Affiliation::Admin && aff < Affiliation::Admin,
            _ => false,
        };
        if !allowed {
            return Err(StanzaError::forbidden().with_text("you may not change that affiliation"));
        }
        if current == Affiliation::Owner
            && aff != Affiliation::Owner
            && self
                .affiliations
                .values()
                .filter(|a| **a == Affiliation::Owner)
                .count()
                == 1
        {
            return Err(StanzaError::conflict().with_text("a room keeps at least one owner"));
        }
        if aff == Affiliation::None {
            self.affiliations.remove(target);
        } else {
            self.affiliations.insert(target.to_owned(), aff);
        }
        fx.save = self.config.persistent;
        // Occupants with that bare JID: removed (ban, or members-only without membership),
        // or shown with their new affiliation and role.
        let hit: Vec<usize> = (0..self.occupants.len())
            .filter(|&i| self.occupants[i].jid.to_bare().to_string() == target)
            .collect();
        for &i in hit.iter().rev() {
            if aff == Affiliation::Outcast || (self.config.members_only && aff == Affiliation::None)
            {
                let o = self.occupants.remove(i);
                let code = if aff == Affiliation::Outcast {
                    "301"
                } else {
                    "321"
                };
                fx.out
                    .extend(self.with_reason(self.unavailable_of(&o, None, &[code]), reason));
            } else {
                self.occupants[i].role = self.default_role(aff);
                let o = self.occupants[i].clone();
                for viewer in &self.occupants {
                    let codes: &[&str] = if viewer.jid == o.jid { &["110"] } else { &[] };
                    fx.out.push(self.presence_of(&o, viewer, codes));
                }
            }
        }
        fx.gone = self.occupants.is_empty() && !self.config.persistent;
        Ok(())
    }

    fn with_reason(&self, mut out: Vec<Element>, reason: &str) -> Vec<Element> {
        if reason.is_empty() {
            return out;
        }
        for p in &mut out {
            if let Some(x) = p.get_child_mut("x", USER)
                && let Some(item) = x.get_child_mut("item", USER)
            {
                item.append_child(text_el("reason", USER, reason));
            }
        }
        out
    }

    /// The items of an admin list request (§9.5, §8.5).
    pub fn admin_get(&self, from: &FullJid, item: &Element) -> Result<Element, StanzaError> {
        let actor_aff = self.affiliation(&from.to_bare().to_string());
        let actor_role = self.by_real(from).map_or(Role::None, |o| o.role);
        let mut query = el("query", ADMIN, &[]);
        if let Some(aff) = item.attr("affiliation") {
            let aff = Affiliation::parse(aff).ok_or_else(StanzaError::bad_request)?;
            if actor_aff < Affiliation::Admin
                && !(aff == Affiliation::Member && actor_aff == Affiliation::Member)
            {
                return Err(StanzaError::forbidden());
            }
            for (jid, a) in &self.affiliations {
                if *a == aff {
                    query.append_child(el(
                        "item",
                        ADMIN,
                        &[("affiliation", a.as_str()), ("jid", jid)],
                    ));
                }
            }
        } else if let Some(role) = item.attr("role") {
            let role = Role::parse(role).ok_or_else(StanzaError::bad_request)?;
            if actor_role < Role::Moderator {
                return Err(StanzaError::forbidden());
            }
            for o in self.occupants.iter().filter(|o| o.role == role) {
                query.append_child(el(
                    "item",
                    ADMIN,
                    &[
                        ("role", o.role.as_str()),
                        ("nick", &o.nick),
                        ("jid", &o.jid.to_string()),
                        (
                            "affiliation",
                            self.affiliation(&o.jid.to_bare().to_string()).as_str(),
                        ),
                    ],
                ));
            }
        } else {
            return Err(StanzaError::bad_request());
        }
        Ok(query)
    }

    /// The configuration form (§10.2).
    pub fn config_form(&self) -> Element {
        let c = &self.config;
        let mut x = el("x", DATA, &[("type", "form")]);
        let field = |var: &str, kind: &str, value: &str| {
            let mut f = el("field", DATA, &[("var", var), ("type", kind)]);
            f.append_child(text_el("value", DATA, value));
            f
        };
        let flag = |b: bool| if b { "1" } else { "0" };
        x.append_child(field("FORM_TYPE", "hidden", ROOMCONFIG));
        x.append_child(field("muc#roomconfig_roomname", "text-single", &c.name));
        x.append_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            &c.description,
        ));
        x.append_child(field(
            "muc#roomconfig_persistentroom",
            "boolean",
            flag(c.persistent),
        ));
        x.append_child(field(
            "muc#roomconfig_publicroom",
            "boolean",
            flag(c.public),
        ));
        x.append_child(field(
            "muc#roomconfig_membersonly",
            "boolean",
            flag(c.members_only),
        ));
        x.append_child(field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            flag(c.moderated),
        ));
        x.append_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            flag(!c.password.is_empty()),
        ));
        x.append_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            &c.password,
        ));
        x.append_child(field(
            "muc#roomconfig_maxusers",
            "list-single",
            &c.max_occupants.to_string(),
        ));
        x.append_child(field(
            "muc#roomconfig_whois",
            "list-single",
            if c.whois_anyone {
                "anyone"
            } else {
                "moderators"
            },
        ));
        x.append_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            flag(c.change_subject),
        ));
        x.append_child(field(
            "muc#roomconfig_enablelogging",
            "boolean",
            flag(c.logging),
        ));
        x.append_child(field(
            "muc#roomconfig_allowpm",
            "list-single",
            if c.allow_pm { "anyone" } else { "none" },
        ));
        let mut query = el("query", OWNER, &[]);
        query.append_child(x);
        query
    }

    /// Applies a submitted configuration form; unknown fields are refused by name.
    pub fn apply_config(
        &mut self,
        form: &Element,
        max_allowed: usize,
    ) -> Result<Effects, StanzaError> {
        let mut c = self.config.clone();
        let mut password_on = !c.password.is_empty();
        for f in form.children().filter(|f| f.is("field", DATA)) {
            let var = f.attr("var").unwrap_or("");
            let value = f
                .get_child("value", DATA)
                .map(|v| v.text())
                .unwrap_or_default();
            let boolean = || matches!(value.as_str(), "1" | "true");
            match var {
                "FORM_TYPE" => {
                    if value != ROOMCONFIG {
                        return Err(StanzaError::bad_request().with_text("unknown FORM_TYPE"));
                    }
                }
                "muc#roomconfig_roomname" => c.name = value,
                "muc#roomconfig_roomdesc" => c.description = value,
                "muc#roomconfig_persistentroom" => c.persistent = boolean(),
                "muc#roomconfig_publicroom" => c.public = boolean(),
                "muc#roomconfig_membersonly" => c.members_only = boolean(),
                "muc#roomconfig_moderatedroom" => c.moderated = boolean(),
                "muc#roomconfig_passwordprotectedroom" => password_on = boolean(),
                "muc#roomconfig_roomsecret" => c.password = value,
                "muc#roomconfig_maxusers" => {
                    let n: usize = value.parse().map_err(|_| {
                        StanzaError::not_acceptable().with_text("maxusers is not a number")
                    })?;
                    if n == 0 || n > max_allowed {
                        return Err(StanzaError::not_acceptable()
                            .with_text(format!("maxusers must be 1 to {max_allowed}")));
                    }
                    c.max_occupants = n;
                }
                "muc#roomconfig_whois" => c.whois_anyone = value == "anyone",
                "muc#roomconfig_changesubject" => c.change_subject = boolean(),
                "muc#roomconfig_allowpm" => c.allow_pm = value != "none",
                // Fields other servers offer that do not apply here are accepted and ignored,
                // so clients that submit a form from elsewhere keep working.
                "muc#roomconfig_enablelogging"
                | "muc#roomconfig_getmemberlist"
                | "muc#roomconfig_presencebroadcast"
                | "muc#roomconfig_roomadmins"
                | "muc#roomconfig_roomowners"
                | "muc#roomconfig_lang"
                | "muc#roomconfig_pubsub"
                | "muc#roomconfig_canchangenick"
                | "muc#roomconfig_allowinvites"
                | "muc#maxhistoryfetch" => {}
                other => {
                    return Err(StanzaError::not_acceptable()
                        .with_text(format!("unknown configuration field `{other}`")));
                }
            }
        }
        if !password_on {
            c.password.clear();
        } else if c.password.is_empty() {
            return Err(StanzaError::not_acceptable()
                .with_text("a password-protected room needs a password"));
        }
        let mut fx = Effects::default();
        let was_anonymous = !self.config.whois_anyone;
        let now_members_only = c.members_only && !self.config.members_only;
        self.config = c;
        self.locked = false;
        fx.save = true;
        if now_members_only {
            // Occupants without membership leave with status 322 (§9.7).
            let outsiders: Vec<usize> = (0..self.occupants.len())
                .filter(|&i| {
                    self.affiliation(&self.occupants[i].jid.to_bare().to_string())
                        < Affiliation::Member
                })
                .collect();
            for &i in outsiders.iter().rev() {
                let o = self.occupants.remove(i);
                fx.out.extend(self.unavailable_of(&o, None, &["322"]));
            }
        }
        // Status 172/173 tell occupants that real JIDs became visible or hidden (§10.2.1).
        let code = match (was_anonymous, self.config.whois_anyone) {
            (true, true) => Some("172"),
            (false, false) => Some("173"),
            _ => None,
        };
        let mut codes = vec!["104"];
        codes.extend(code);
        for o in &self.occupants {
            let mut m = stanza::build(
                "message",
                &[
                    ("type", "groupchat"),
                    ("from", &self.jid.to_string()),
                    ("to", &o.jid.to_string()),
                ],
            );
            let mut x = el("x", USER, &[]);
            for c in &codes {
                x.append_child(el("status", USER, &[("code", c)]));
            }
            m.append_child(x);
            fx.out.push(m);
        }
        Ok(fx)
    }

    /// Destroys the room (§10.9): every occupant leaves with the reason and alternate venue.
    pub fn destroy(&mut self, reason: &str, alternate: Option<&str>) -> Effects {
        let mut fx = Effects::default();
        for o in std::mem::take(&mut self.occupants) {
            let (mut p, mut x) = self.removal(&o, &[("affiliation", "none")]);
            let mut d = el("destroy", USER, &[]);
            if let Some(a) = alternate {
                stanza::set_attr(&mut d, "jid", a);
            }
            if !reason.is_empty() {
                d.append_child(text_el("reason", USER, reason));
            }
            x.append_child(d);
            x.append_child(el("status", USER, &[("code", "110")]));
            p.append_child(x);
            fx.out.push(p);
        }
        fx.gone = true;
        fx
    }

    /// disco#info of the room (§6.4), with the muc#roominfo form.
    pub fn disco_info(&self) -> Element {
        let info = "http://jabber.org/protocol/disco#info";
        let mut q = el("query", info, &[]);
        let name = if self.config.name.is_empty() {
            self.jid
                .node()
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default()
        } else {
            self.config.name.clone()
        };
        q.append_child(el(
            "identity",
            info,
            &[
                ("category", "conference"),
                ("type", "text"),
                ("name", &name),
            ],
        ));
        let c = &self.config;
        for f in [
            NS,
            "http://jabber.org/protocol/disco#info",
            "urn:xmpp:mam:2",
            SID,
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.password.is_empty() {
                "muc_unsecured"
            } else {
                "muc_passwordprotected"
            },
            if c.whois_anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
        ] {
            if f == "urn:xmpp:mam:2" && !c.logging {
                continue;
            }
            q.append_child(el("feature", info, &[("var", f)]));
        }
        let mut x = el("x", DATA, &[("type", "result")]);
        let field = |var: &str, value: &str| {
            let mut f = el("field", DATA, &[("var", var)]);
            f.append_child(text_el("value", DATA, value));
            f
        };
        // XEP-0068 §4.3: FORM_TYPE counts only when hidden.
        let mut form_type = field("FORM_TYPE", ROOMINFO);
        stanza::set_attr(&mut form_type, "type", "hidden");
        x.append_child(form_type);
        x.append_child(field("muc#roominfo_description", &c.description));
        x.append_child(field(
            "muc#roominfo_occupants",
            &self.occupants.len().to_string(),
        ));
        x.append_child(field(
            "muc#roominfo_subject",
            self.subject.as_ref().map_or("", |(_, s)| s.as_str()),
        ));
        q.append_child(x);
        q
    }
}

/// The occupant's presence payload without the MUC join element.
/// The id of a forwarded iq: the asker's resource and its own id, so the answer finds its way
/// back without the room keeping state per iq.
fn forwarded_iq_id(resource: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{resource}\0{id}"))
}

fn original_iq_id(forwarded: &str) -> Option<(String, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(forwarded).ok()?).ok()?;
    let (resource, id) = raw.split_once('\0')?;
    Some((resource.to_owned(), id.to_owned()))
}

/// The form a moderator receives for a voice request (§8.6, Example 97).
fn voice_form(asker: &Occupant) -> Element {
    let mut x = el("x", DATA, &[("type", "form")]);
    x.append_child(text_el("title", DATA, "Voice request"));
    x.append_child(text_el(
        "instructions",
        DATA,
        "To approve this request for voice, select the \"Grant voice to this person?\" checkbox and submit this form.",
    ));
    let fields: [(&str, &str, &str, &str); 5] = [
        ("FORM_TYPE", "hidden", "", REQUEST),
        ("muc#role", "list-single", "Requested role", "participant"),
        ("muc#jid", "jid-single", "User ID", &asker.jid.to_string()),
        ("muc#roomnick", "text-single", "Room Nickname", &asker.nick),
        (
            "muc#request_allow",
            "boolean",
            "Grant voice to this person?",
            "false",
        ),
    ];
    for (var, kind, label, value) in fields {
        let mut f = el("field", DATA, &[("var", var), ("type", kind)]);
        if !label.is_empty() {
            stanza::set_attr(&mut f, "label", label);
        }
        f.append_child(text_el("value", DATA, value));
        x.append_child(f);
    }
    x
}

fn clean_presence(p: &Element) -> Element {
    let mut out = stanza::build("presence", &[]);
    for c in p.children() {
        if !c.is("x", NS) && !c.is("x", USER) {
            out.append_child(c.clone());
        }
    }
    out
}

/// Reads the `<history/>` request of a join.
pub fn history_request(x: Option<&Element>) -> HistoryRequest {
    let Some(h) = x.and_then(|x| x.get_child("history", NS)) else {
        return HistoryRequest::default();
    };
    let num = |a: &str| h.attr(a).and_then(|v| v.parse::<usize>().ok());
    HistoryRequest {
        max_stanzas: num("maxstanzas"),
        max_chars: num("maxchars"),
        seconds: h.attr("seconds").and_then(|v| v.parse().ok()),
        since_ms: h
            .attr("since")
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis()),
    }
}
