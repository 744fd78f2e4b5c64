//! Presence (RFC 6121 §3 and §4): the subscription state machine, presence broadcast, probes
//! and directed presence.
//!
//! The pending-in half of a subscription lives in the store as a subscription request, so it
//! survives restarts and is offered again at every login until the user answers it.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use minidom::Element;
use tracing::warn;

use super::{Module, offline, roster};
use crate::jid::{self, BareJid, FullJid, Jid};
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::{RosterItem, Subscription, SubscriptionRequest};
use crate::stream::writer;

pub struct PresenceModule;

/// Pending-in requests kept per account: beyond this, requests from new contacts are dropped
/// rather than letting strangers grow the store without bound.
pub const MAX_PENDING_REQUESTS: usize = 1000;
/// Entities one session may send directed presence to (each must hear of its going offline).
pub const MAX_DIRECTED: usize = 1000;

#[async_trait]
impl Module for PresenceModule {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn account_features(&self) -> &'static [&'static str] {
        // RFC 6121 §3.4 subscription pre-approval is not offered; nothing to announce.
        &[]
    }
}

/// Presence state of one session, owned by its task.
#[derive(Debug, Default)]
pub struct SessionPresence {
    pub available: bool,
    /// Initial presence was sent: probes and pending requests went out.
    pub initial_done: bool,
    /// Offline messages were handed over (needs a non-negative priority, XEP-0160 §3).
    pub offline_done: bool,
    /// Entities that got directed presence and must hear of our unavailability.
    pub directed: HashSet<String>,
}

fn user_of(bare: &BareJid) -> &str {
    bare.node().map(|n| n.as_str()).unwrap_or_default()
}

fn with_to(presence: &Element, to: &str) -> Element {
    let mut p = presence.clone();
    stanza::set_attr(&mut p, "to", to);
    p
}

fn priority_of(presence: &Element) -> Result<i8, StanzaError> {
    match presence.get_child("priority", crate::stream::ns::CLIENT) {
        None => Ok(0),
        Some(p) => p
            .text()
            .trim()
            .parse::<i8>()
            .map_err(|_| StanzaError::bad_request().with_text("priority must be -128..127")),
    }
}

async fn roster_items(server: &Server, owner: &BareJid) -> Vec<RosterItem> {
    match server.store.roster(user_of(owner)).await {
        Ok(r) => r.items,
        Err(e) => {
            warn!(error = %e, "cannot read roster for presence");
            Vec::new()
        }
    }
}

/// Handles a presence stanza a local client sent; `from` is already stamped with its full JID.
/// Stanzas for the sending session itself are pushed to `to_self`.
pub async fn outbound(
    server: &Server,
    state: &mut SessionPresence,
    from: &FullJid,
    conn_id: u64,
    mut presence: Element,
    to_self: &mut Vec<Element>,
) -> Result<(), StanzaError> {
    let kind = stanza::stanza_type(&presence).to_owned();
    let owner = from.to_bare();
    if let Some(to) = presence.attr("to").map(str::to_owned) {
        let to = jid::parse(&to).map_err(|_| StanzaError::jid_malformed())?;
        return match kind.as_str() {
            "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
                outbound_subscription(server, &owner, &to.to_bare(), &kind, presence).await;
                Ok(())
            }
            // Probes are the server's business (RFC 6121 §4.3); a client's is dropped.
            "probe" => Ok(()),
            "" | "unavailable" => {
                if kind.is_empty() {
                    super::vcard::stamp_presence(server, user_of(&owner), &mut presence).await;
                }
                let key = to.to_string();
                if kind.is_empty() {
                    if state.directed.len() >= MAX_DIRECTED && !state.directed.contains(&key) {
                        return Err(StanzaError::resource_constraint()
                            .with_text("too many directed presences"));
                    }
                    state.directed.insert(key);
                } else {
                    state.directed.remove(&key);
                }
                router::route(server, presence).await;
                Ok(())
            }
            "error" => {
                router::route(server, presence).await;
                Ok(())
            }
            _ => Err(StanzaError::bad_request().with_text("unknown presence type")),
        };
    }
    match kind.as_str() {
        "" => {
            let priority = priority_of(&presence)?;
            stanza::remove_attr(&mut presence, "to");
            super::vcard::stamp_presence(server, user_of(&owner), &mut presence).await;
            let shared = Arc::new(presence.clone());
            let _ = server
                .sessions
                .set_presence(from, conn_id, Some((shared, priority)))
                .await;
            state.available = true;
            broadcast(server, from, &presence, to_self).await;
            if !state.initial_done {
                state.initial_done = true;
                tokio::join!(
                    super::blocking::preload(server, &owner),
                    super::mam::preload(server, &owner)
                );
                probe_contacts(server, from, to_self).await;
                pending_requests(server, &owner, to_self).await;
            }
            if priority >= 0 && !state.offline_done {
                state.offline_done = true;
                to_self.extend(offline::take(server, user_of(&owner)).await);
            }
            Ok(())
        }
        "unavailable" => {
            go_unavailable(server, state, from, conn_id, Some(presence), to_self).await;
            Ok(())
        }
        // Subscription types and probes need an addressee.
        _ => Err(StanzaError::bad_request().with_text("presence of this type needs a 'to'")),
    }
}

/// Broadcasts unavailable presence for a session that goes offline or disconnects.
pub async fn go_unavailable(
    server: &Server,
    state: &mut SessionPresence,
    from: &FullJid,
    conn_id: u64,
    presence: Option<Element>,
    to_self: &mut Vec<Element>,
) {
    let was_available = state.available;
    state.available = false;
    let _ = server.sessions.set_presence(from, conn_id, None).await;
    let mut presence = presence.unwrap_or_else(|| {
        stanza::build(
            "presence",
            &[("type", "unavailable"), ("from", &from.to_string())],
        )
    });
    stanza::remove_attr(&mut presence, "to");
    if was_available {
        broadcast(server, from, &presence, to_self).await;
    }
    for to in std::mem::take(&mut state.directed) {
        router::route(server, with_to(&presence, &to)).await;
    }
}

/// Broadcasts unavailable presence for a resource whose node died: it can no longer say
/// goodbye itself. (Directed presence it had sent is lost with its node.)
pub async fn vanished(server: &Server, from: &FullJid) {
    let presence = stanza::build(
        "presence",
        &[("type", "unavailable"), ("from", &from.to_string())],
    );
    broadcast(server, from, &presence, &mut Vec::new()).await;
}

/// Broadcasts a resource's current presence again, after the cluster had declared it gone.
pub async fn reannounce(server: &Server, resource: &crate::router::table::Resource) {
    if let Some(p) = &resource.presence {
        let mut p = (**p).clone();
        stanza::remove_attr(&mut p, "to");
        broadcast(server, &resource.jid, &p, &mut Vec::new()).await;
    }
}

/// Sends a presence broadcast to subscribed contacts and to all of the user's own available
/// resources, including the one that sent it (RFC 6121 §4.2.2, §4.4.2).
async fn broadcast(
    server: &Server,
    from: &FullJid,
    presence: &Element,
    to_self: &mut Vec<Element>,
) {
    let owner = from.to_bare();
    for item in roster_items(server, &owner).await {
        if item.subscription.has_from() && !blocks_contact(server, &owner, &item.jid).await {
            router::route(server, with_to(presence, &item.jid)).await;
        }
    }
    for r in server.sessions.resources(&owner) {
        let p = with_to(presence, &r.jid.to_string());
        if &r.jid == from {
            to_self.push(p);
        } else if r.available() {
            let _ = r.sender.deliver(p);
        }
    }
    // The owner's own resources hear about its personal eventing nodes too.
    super::pep::notify::presence_seen(server, &owner, from, presence).await;
}

/// Probes the contacts of a new session (RFC 6121 §4.3): for local contacts, their current
/// presence goes straight to the new resource; a contact on another server gets a probe from
/// the user's bare JID, which its server answers.
async fn probe_contacts(server: &Server, to: &FullJid, to_self: &mut Vec<Element>) {
    let owner = to.to_bare();
    let to_str = to.to_string();
    for item in roster_items(server, &owner).await {
        if !item.subscription.has_to() {
            continue;
        }
        let Ok(contact) = jid::parse_bare(&item.jid) else {
            continue;
        };
        if blocked_either_way(server, &owner, &contact).await {
            continue;
        }
        if !server.is_local_domain(contact.domain().as_str()) {
            let probe = stanza::build(
                "presence",
                &[
                    ("type", "probe"),
                    ("from", &owner.to_string()),
                    ("to", &item.jid),
                ],
            );
            router::route(server, probe).await;
            continue;
        }
        for r in server.sessions.resources(&contact) {
            if let Some(p) = &r.presence {
                to_self.push(with_to(p, &to_str));
            }
        }
    }
}

/// Whether `owner` blocks the roster contact `contact` (a bare JID string).
async fn blocks_contact(server: &Server, owner: &BareJid, contact: &str) -> bool {
    match jid::parse(contact) {
        Ok(c) => super::blocking::blocks(server, owner, &c).await,
        Err(_) => false,
    }
}

async fn blocked_either_way(server: &Server, a: &BareJid, b: &BareJid) -> bool {
    super::blocking::blocks(server, a, &Jid::from(b.clone())).await
        || super::blocking::blocks(server, b, &Jid::from(a.clone())).await
}

/// Offers the pending-in subscription requests again (RFC 6121 §3.1.3).
async fn pending_requests(server: &Server, owner: &BareJid, to_self: &mut Vec<Element>) {
    let Ok(requests) = server.store.subscription_requests(user_of(owner)).await else {
        return;
    };
    for r in requests {
        if blocks_contact(server, owner, &r.contact).await {
            continue;
        }
        if let Ok(p) = r.stanza.parse::<Element>() {
            to_self.push(p);
        }
    }
}

/// Sends unavailable presence from each of `owner`'s available resources to `contact`.
pub async fn send_unavailable_to(server: &Server, owner: &BareJid, contact: &str) {
    for r in server.sessions.resources(owner) {
        if r.available() {
            let p = stanza::build(
                "presence",
                &[
                    ("type", "unavailable"),
                    ("from", &r.jid.to_string()),
                    ("to", contact),
                ],
            );
            router::route(server, p).await;
        }
    }
}

/// Sends the current presence of each of `owner`'s available resources to `contact`.
pub async fn send_current_to(server: &Server, owner: &BareJid, contact: &str) {
    for r in server.sessions.resources(owner) {
        if let Some(p) = &r.presence {
            router::route(server, with_to(p, contact)).await;
        }
    }
}

async fn item_or_new(server: &Server, owner: &BareJid, contact: &BareJid) -> (RosterItem, bool) {
    match server
        .store
        .roster_item(user_of(owner), &contact.to_string())
        .await
    {
        Ok(Some(item)) => (item, true),
        _ => (
            RosterItem {
                jid: contact.to_string(),
                name: None,
                subscription: Subscription::None,
                ask: false,
                groups: Vec::new(),
            },
            false,
        ),
    }
}

/// Drops an answered pending-in request; if that fails it is offered again at next login,
/// which the user can answer again, so the failure is only logged.
async fn forget_request(server: &Server, owner: &BareJid, contact: &str) {
    if let Err(e) = server
        .store
        .remove_subscription_request(user_of(owner), contact)
        .await
    {
        warn!(error = %e, "cannot remove a subscription request");
    }
}

async fn has_request(server: &Server, owner: &BareJid, contact: &BareJid) -> bool {
    server
        .store
        .has_subscription_request(user_of(owner), &contact.to_string())
        .await
        .unwrap_or(false)
}

/// A subscription stanza a local user sends (RFC 6121 §3, the user's server's side).
async fn outbound_subscription(
    server: &Server,
    owner: &BareJid,
    contact: &BareJid,
    kind: &str,
    mut presence: Element,
) {
    // Subscription stanzas travel between bare JIDs (RFC 6121 §3.1.2).
    stanza::set_attr(&mut presence, "from", &owner.to_string());
    stanza::set_attr(&mut presence, "to", &contact.to_string());
    let (mut item, exists) = item_or_new(server, owner, contact).await;
    let contact_str = contact.to_string();
    match kind {
        "subscribe" => {
            if !item.subscription.has_to() && !item.ask {
                item.ask = true;
                let _ = roster::save_and_push(server, owner, &item).await;
            }
            router::route(server, presence).await;
        }
        "subscribed" => {
            if !has_request(server, owner, contact).await {
                return;
            }
            forget_request(server, owner, &contact_str).await;
            item.subscription = item.subscription.with_from(true);
            let _ = roster::save_and_push(server, owner, &item).await;
            router::route(server, presence).await;
            send_current_to(server, owner, &contact_str).await;
        }
        "unsubscribe" => {
            if !exists {
                return;
            }
            if item.subscription.has_to() || item.ask {
                item.subscription = item.subscription.with_to(false);
                item.ask = false;
                let _ = roster::save_and_push(server, owner, &item).await;
            }
            router::route(server, presence).await;
        }
        "unsubscribed" => {
            let pending = has_request(server, owner, contact).await;
            if !pending && !item.subscription.has_from() {
                return;
            }
            if pending {
                forget_request(server, owner, &contact_str).await;
            }
            let had_from = item.subscription.has_from();
            if exists && had_from {
                item.subscription = item.subscription.with_from(false);
                let _ = roster::save_and_push(server, owner, &item).await;
            }
            router::route(server, presence).await;
            if had_from {
                send_unavailable_to(server, owner, &contact_str).await;
            }
        }
        _ => {}
    }
}

/// Delivers a stanza to every available resource of a local user.
fn deliver_to_available(server: &Server, owner: &BareJid, stanza: &Element) -> bool {
    let mut any = false;
    for r in server.sessions.resources(owner) {
        if r.available() {
            let mut s = stanza.clone();
            stanza::set_attr(&mut s, "to", &r.jid.to_string());
            any |= r.sender.deliver(s).is_ok();
        }
    }
    any
}

async fn account_exists(server: &Server, owner: &BareJid) -> bool {
    server.sessions.is_bound(owner)
        || matches!(server.store.credentials(user_of(owner)).await, Ok(Some(_)))
}

/// A subscription stanza for a local user (RFC 6121 §3, the contact's server's side).
pub async fn inbound_subscription(server: &Server, owner: &BareJid, mut presence: Element) {
    let Some(from) = presence.attr("from").and_then(|f| jid::parse(f).ok()) else {
        return;
    };
    let contact = from.to_bare();
    let contact_str = contact.to_string();
    let kind = stanza::stanza_type(&presence).to_owned();
    stanza::set_attr(&mut presence, "from", &contact_str);
    stanza::set_attr(&mut presence, "to", &owner.to_string());
    if !account_exists(server, owner).await {
        if kind == "subscribe" {
            // RFC 6121 §3.1.3: no such user means no subscription.
            let reply = stanza::build(
                "presence",
                &[
                    ("type", "unsubscribed"),
                    ("from", &owner.to_string()),
                    ("to", &contact_str),
                ],
            );
            router::route(server, reply).await;
        }
        return;
    }
    let (mut item, exists) = item_or_new(server, owner, &contact).await;
    match kind.as_str() {
        "subscribe" => {
            if item.subscription.has_from() {
                let reply = stanza::build(
                    "presence",
                    &[
                        ("type", "subscribed"),
                        ("from", &owner.to_string()),
                        ("to", &contact_str),
                    ],
                );
                router::route(server, reply).await;
                return;
            }
            let Ok(xml) = String::from_utf8(writer::element(&presence)) else {
                return;
            };
            let pending = server
                .store
                .subscription_requests(user_of(owner))
                .await
                .map(|r| r.len())
                .unwrap_or(0);
            if pending >= MAX_PENDING_REQUESTS && !has_request(server, owner, &contact).await {
                warn!(
                    user = user_of(owner),
                    "pending subscription requests full; dropped one"
                );
                return;
            }
            let request = SubscriptionRequest {
                contact: contact_str,
                stanza: xml,
            };
            if let Err(e) = server
                .store
                .put_subscription_request(user_of(owner), &request)
                .await
            {
                warn!(error = %e, "cannot store subscription request");
                return;
            }
            deliver_to_available(server, owner, &presence);
        }
        "subscribed" => {
            if !exists || !item.ask {
                return;
            }
            item.ask = false;
            item.subscription = item.subscription.with_to(true);
            let _ = roster::save_and_push(server, owner, &item).await;
            deliver_to_available(server, owner, &presence);
        }
        "unsubscribe" => {
            let pending = has_request(server, owner, &contact).await;
            if !pending && !item.subscription.has_from() {
                return;
            }
            if pending {
                forget_request(server, owner, &contact_str).await;
            }
            if exists && item.subscription.has_from() {
                item.subscription = item.subscription.with_from(false);
                let _ = roster::save_and_push(server, owner, &item).await;
            }
            deliver_to_available(server, owner, &presence);
            send_unavailable_to(server, owner, &contact_str).await;
        }
        "unsubscribed" => {
            if !exists || !(item.subscription.has_to() || item.ask) {
                return;
            }
            item.subscription = item.subscription.with_to(false);
            item.ask = false;
            let _ = roster::save_and_push(server, owner, &item).await;
            deliver_to_available(server, owner, &presence);
        }
        _ => {}
    }
}

/// A probe for a local user's presence (RFC 6121 §4.3.2): answered only for subscribers.
pub async fn inbound_probe(server: &Server, owner: &BareJid, probe: &Element) {
    let Some(from) = probe.attr("from").and_then(|f| jid::parse(f).ok()) else {
        return;
    };
    let subscribed = matches!(
        server.store.roster_item(user_of(owner), &from.to_bare().to_string()).await,
        Ok(Some(item)) if item.subscription.has_from()
    );
    if !subscribed || super::blocking::blocks(server, owner, &from).await {
        return;
    }
    let to = from.to_string();
    let mut any = false;
    for r in server.sessions.resources(owner) {
        if let Some(p) = &r.presence {
            any = true;
            router::route(server, with_to(p, &to)).await;
        }
    }
    if !any {
        let p = stanza::build(
            "presence",
            &[
                ("type", "unavailable"),
                ("from", &owner.to_string()),
                ("to", &to),
            ],
        );
        router::route(server, p).await;
    }
}
