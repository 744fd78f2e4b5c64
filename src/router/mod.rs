//! The router: finds where a stanza goes and applies the RFC 6121 §8 delivery rules.
//!
//! Callers hand it stanzas whose `from` is already trusted (stamped by the session that
//! received them) and whose `to` is set. Local sessions get stanzas through their channel;
//! what no session takes goes to the feature modules (offline storage, subscription
//! handling) or back to the sender as an error, never into silence.

pub mod table;

use std::future::Future;
use std::pin::Pin;

use minidom::Element;
use tracing::debug;

use crate::jid::{self, BareJid, FullJid, Jid};
use crate::modules::{self, blocking, carbons, mam, muc, offline, pep, presence, upload};
use crate::server::Server;
use crate::session::{component, s2s};
use crate::stanza::{self, StanzaError};
use table::{AccountSummary, DeliveryError, Resource};

/// Routes a stanza to its `to` address.
///
/// Boxed because routing recurses: a subscription handled for a local user can route presence
/// and errors again.
pub fn route(server: &Server, stanza: Element) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let started = std::time::Instant::now();
        route_now(server, stanza).await;
        crate::metrics::routed(started);
    })
}

/// Routes a stanza from a local client's session, whose addresses the session has parsed
/// already: its `to` (also set as the attribute) and its own JID (stamped as `from`). Routing
/// a message would otherwise parse both again, stringprep and IDNA included.
pub async fn route_from_session(server: &Server, stanza: Element, to: Jid, from: &Jid) {
    let started = std::time::Instant::now();
    route_parsed(server, stanza, to, Some(from)).await;
    crate::metrics::routed(started);
}

async fn route_now(server: &Server, stanza: Element) {
    let Some(to_attr) = stanza.attr("to") else {
        debug!("dropping stanza without a recipient");
        return;
    };
    let to = match jid::parse(to_attr) {
        Ok(to) => to,
        Err(_) => return bounce(server, &stanza, StanzaError::jid_malformed()).await,
    };
    let from = stanza.attr("from").and_then(|f| jid::parse(f).ok());
    route_parsed(server, stanza, to, from.as_ref()).await
}

/// Who serves an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Muc,
    Upload,
    Component,
    /// Another server, over s2s.
    Remote,
    /// This server itself: a local domain without a node.
    Server,
    /// An account of a local domain.
    Account,
}

fn destination(server: &Server, to: &Jid) -> Destination {
    let domain = to.domain().as_str();
    if muc::is_service(server, to) {
        Destination::Muc
    } else if upload::is_service(server, to) {
        Destination::Upload
    } else if component::is_component(server, domain) {
        Destination::Component
    } else if !server.is_local_domain(domain) {
        Destination::Remote
    } else if to.node().is_none() {
        Destination::Server
    } else {
        Destination::Account
    }
}

async fn route_parsed(server: &Server, stanza: Element, to: Jid, from: Option<&Jid>) {
    match destination(server, &to) {
        Destination::Muc => return muc::route(server, stanza).await,
        Destination::Upload => return upload::route(server, stanza).await,
        Destination::Component => {
            return component::deliver(server, to.domain().as_str(), stanza).await;
        }
        Destination::Remote => return s2s::send(server, stanza).await,
        Destination::Server => return to_server(server, stanza).await,
        Destination::Account => {}
    }
    // A copy of the text cut at the resource: `to_bare` would format it anew.
    let bare = to.clone().into_bare();
    let account = server.sessions.summary(&bare);
    if let Some(from) = from
        && blocking::blocks_hinted(server, &bare, account.hints, from).await
    {
        // XEP-0191 §3.4: a blocked entity's messages and iq requests are refused; presence,
        // errors and iq responses are dropped without a word.
        let refused = match (stanza.name(), stanza::stanza_type(&stanza)) {
            ("message", kind) => kind != "error",
            ("iq", kind) => matches!(kind, "get" | "set"),
            _ => false,
        };
        if refused {
            bounce(server, &stanza, StanzaError::service_unavailable()).await;
        }
        return;
    }
    match stanza.name() {
        "message" => route_message(server, &to, &bare, &account, stanza).await,
        "presence" => route_presence(server, &to, &bare, stanza).await,
        "iq" => route_iq(server, &to, bare, stanza).await,
        _ => debug!(name = stanza.name(), "dropping unknown stanza kind"),
    }
}

/// What [`deliver_written`] did with a message.
#[derive(Debug)]
pub enum Written {
    /// Queued for its recipient.
    Delivered,
    /// Nothing: something on the message's way needs its tree.
    NeedsTree,
    /// The recipient's session did not take it (its queue is full, or it has just ended):
    /// here is its tree, to be routed the usual way.
    Refused(Element),
}

/// Delivers a message from a local client's account `from` to the resource `to` as the XML
/// `write` gives (the message with `from` stamped), where routing it as a tree would do no
/// more than write it out for the recipient: `to` is a resource bound on this node whose
/// session writes what it gets straight to its client, and neither account has a block
/// list, archives anything or has carbons on (XEP-0191, XEP-0313, XEP-0280). The caller has
/// made the checks of a client's message that need no account.
pub fn deliver_written(
    server: &Server,
    from: &BareJid,
    to: &Jid,
    write: impl FnOnce() -> Vec<u8>,
) -> Written {
    let started = std::time::Instant::now();
    let Ok(full) = to.try_as_full() else {
        return Written::NeedsTree;
    };
    let plain = |summary: AccountSummary| {
        summary.hints.blocks_nobody && summary.hints.archives_nothing && !summary.carbons
    };
    if destination(server, to) != Destination::Account || !plain(server.sessions.summary(from)) {
        return Written::NeedsTree;
    }
    let written = match server.sessions.view().deliver_written(full, plain, write) {
        Ok(true) => Written::Delivered,
        Ok(false) => Written::NeedsTree,
        Err(stanza) => Written::Refused(stanza),
    };
    if matches!(written, Written::Delivered) {
        crate::metrics::routed(started);
    }
    written
}

/// Sends one message to many full JIDs (a room's occupants): local sessions get it directly,
/// and each other node of a cluster gets it once with the list of its recipients, rather than
/// once per recipient.
pub async fn fan_out(server: &Server, message: Element, to: Vec<FullJid>) {
    use std::collections::HashMap;
    use std::sync::Arc;
    /// A node's bus, and its sessions the message is for.
    type NodeTargets = (crate::cluster::bus::BusSender, Vec<(String, u64)>);
    let mut remote: HashMap<Arc<str>, NodeTargets> = HashMap::new();
    // Local sessions share the one message and write it with their own `to`.
    let message = Arc::new(message);
    for jid in to {
        let found = server.sessions.resource(&jid);
        match found.as_ref().map(|r| &r.sender) {
            Some(table::Endpoint::Remote(rs)) => {
                remote
                    .entry(rs.node.clone())
                    .or_insert_with(|| (rs.bus.clone(), Vec::new()))
                    .1
                    .push((jid.to_string(), rs.conn_id));
            }
            Some(table::Endpoint::Local(session)) => {
                let _ =
                    session.deliver_queued(table::QueuedStanza::addressed(message.clone(), jid));
            }
            None => {
                let mut m = (*message).clone();
                stanza::set_attr(&mut m, "to", jid.as_str());
                route(server, m).await;
            }
        }
    }
    for (node, (bus, targets)) in remote {
        if let Err(targets) = bus.fan_out(&node, &message, targets) {
            // The bus is full: one at a time, as the router would.
            for (jid, _) in targets {
                let mut m = (*message).clone();
                stanza::set_attr(&mut m, "to", &jid);
                route(server, m).await;
            }
        }
    }
}

/// A stanza that was on its way to a session that has ended: a message goes to the
/// recipient's other resources or offline storage (it is archived already), an iq request back
/// to its sender with an error; the rest is dropped.
pub async fn redeliver(server: &Server, stanza: Element) {
    let to = stanza.attr("to").and_then(|t| jid::parse(t).ok());
    match (stanza.name(), stanza::stanza_type(&stanza), to) {
        ("message", "" | "normal" | "chat" | "headline", Some(to)) => {
            message_to_bare(server, &to.to_bare(), stanza).await
        }
        ("iq", "get" | "set", _) => {
            bounce(server, &stanza, StanzaError::service_unavailable()).await
        }
        _ => {}
    }
}

/// Sends the error reply for `stanza` back to its sender.
pub async fn bounce(server: &Server, stanza: &Element, err: StanzaError) {
    if let Some(reply) = stanza::error_reply(stanza, &err) {
        route(server, reply).await;
    }
}

async fn to_server(server: &Server, stanza: Element) {
    match stanza.name() {
        "iq" if matches!(stanza::stanza_type(&stanza), "result" | "error") => {
            let from = stanza.attr("from").and_then(|f| jid::parse(f).ok());
            if let Some(from) = from.and_then(|f| f.try_into_full().ok()) {
                pep::notify::answer(server, &from, &stanza).await;
            }
        }
        "iq" => {
            let from = stanza.attr("from").and_then(|f| jid::parse(f).ok());
            if let Some(from) = from {
                for reply in
                    modules::handle_iq(server, &from, None, modules::IqTarget::Server, &stanza)
                        .await
                {
                    route(server, reply).await;
                }
            }
        }
        "message" if matches!(stanza::stanza_type(&stanza), "" | "normal" | "chat") => {
            bounce(server, &stanza, StanzaError::service_unavailable()).await
        }
        _ => {}
    }
}

/// Whether `bare` is an account here: bound somewhere, or known to the store.
pub(crate) async fn account_exists(server: &Server, bare: &BareJid) -> bool {
    if server.sessions.is_bound(bare) {
        return true;
    }
    let Some(user) = bare.node() else {
        return false;
    };
    matches!(server.store.credentials(user.as_str()).await, Ok(Some(_)))
}

/// Hands a stanza to one resource; gives it back if the session cannot take it.
fn deliver(resource: &Resource, stanza: Element) -> Result<(), Element> {
    resource.sender.deliver(stanza).map_err(|e| match e {
        DeliveryError::Full(s) | DeliveryError::Closed(s) => s,
    })
}

/// The available resources with non-negative priority, highest priority first.
fn candidates(server: &Server, bare: &BareJid) -> Vec<Resource> {
    let mut list: Vec<Resource> = server
        .sessions
        .resources(bare)
        .into_iter()
        .filter(|r| r.available() && r.priority >= 0)
        .collect();
    list.sort_by_key(|r| std::cmp::Reverse(r.priority));
    list
}

async fn route_message(
    server: &Server,
    to: &Jid,
    bare: &BareJid,
    account: &AccountSummary,
    mut stanza: Element,
) {
    mam::archive(server, bare, account.hints, &mut stanza).await;
    let Ok(full) = to.try_as_full() else {
        return message_to_bare(server, bare, stanza).await;
    };
    let carbon = carbons::wanted(account, &stanza).then(|| stanza.clone());
    match server.sessions.deliver(full, stanza) {
        Ok(()) => {
            if let Some(msg) = carbon {
                carbons::copy(server, bare, "received", &msg, std::slice::from_ref(full));
            }
        }
        // No such resource, or its session is going away: treat it as addressed to the bare
        // JID.
        Err(stanza) => message_to_bare(server, bare, stanza).await,
    }
}

/// RFC 6121 §8.5.2 (bare JID) and §8.5.3.2 (full JID with no such resource).
async fn message_to_bare(server: &Server, bare: &BareJid, stanza: Element) {
    if !account_exists(server, bare).await {
        return bounce(server, &stanza, StanzaError::service_unavailable()).await;
    }
    let kind = stanza::stanza_type(&stanza).to_owned();
    match kind.as_str() {
        "groupchat" => bounce(server, &stanza, StanzaError::service_unavailable()).await,
        "error" => {}
        "headline" => {
            for r in candidates(server, bare) {
                let _ = deliver(&r, stanza.clone());
            }
        }
        _ => {
            if let Err(stanza) = to_top_resources(server, bare, stanza) {
                offline::store_or_bounce(server, bare, stanza, offline::IfOnlineNow::Deliver).await;
            }
        }
    }
}

/// Delivers a chat or normal message for the bare JID to each available resource of the
/// highest non-negative priority (RFC 6121 §8.5.2.1.1), with carbons to the others. Gives the
/// message back when no resource took it.
pub fn to_top_resources(server: &Server, bare: &BareJid, stanza: Element) -> Result<(), Element> {
    let list = candidates(server, bare);
    let top = list.first().map(|r| r.priority);
    let mut delivered = Vec::new();
    for r in list.iter().filter(|r| Some(r.priority) == top) {
        if deliver(r, stanza.clone()).is_ok() {
            delivered.push(r.jid.clone());
        }
    }
    if delivered.is_empty() {
        return Err(stanza);
    }
    carbons::copy(server, bare, "received", &stanza, &delivered);
    Ok(())
}

/// Whether a message for the bare JID now has a resource to go to.
pub fn has_candidates(server: &Server, bare: &BareJid) -> bool {
    !candidates(server, bare).is_empty()
}

async fn route_presence(server: &Server, to: &Jid, bare: &BareJid, stanza: Element) {
    match stanza::stanza_type(&stanza) {
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
            presence::inbound_subscription(server, bare, stanza).await
        }
        "probe" => presence::inbound_probe(server, bare, &stanza).await,
        _ => {
            if let Ok(full) = to.try_as_full() {
                if let Some(r) = server.sessions.resource(full) {
                    let _ = deliver(&r, stanza);
                }
                return;
            }
            for r in server.sessions.resources(bare) {
                if r.available() {
                    let _ = deliver(&r, stanza.clone());
                }
            }
            // A contact's resource is online (or gone): personal eventing follows it.
            let from = stanza.attr("from").and_then(|f| jid::parse(f).ok());
            if let Some(from) = from.and_then(|f| f.try_into_full().ok()) {
                pep::notify::presence_seen(server, bare, &from, &stanza).await;
            }
        }
    }
}

async fn route_iq(server: &Server, to: &Jid, bare: BareJid, stanza: Element) {
    let is_request = matches!(stanza::stanza_type(&stanza), "get" | "set");
    if let Ok(full) = to.try_as_full() {
        if let Some(r) = server.sessions.resource(full) {
            if let Err(stanza) = deliver(&r, stanza)
                && is_request
            {
                bounce(server, &stanza, StanzaError::service_unavailable()).await;
            }
        } else if is_request {
            bounce(server, &stanza, StanzaError::service_unavailable()).await;
        }
        return;
    }
    if !is_request {
        return;
    }
    if !account_exists(server, &bare).await {
        return bounce(server, &stanza, StanzaError::service_unavailable()).await;
    }
    let from = stanza.attr("from").and_then(|f| jid::parse(f).ok());
    if let Some(from) = from {
        let replies = modules::handle_iq(
            server,
            &from,
            None,
            modules::IqTarget::Account(bare),
            &stanza,
        )
        .await;
        for reply in replies {
            route(server, reply).await;
        }
    }
}
