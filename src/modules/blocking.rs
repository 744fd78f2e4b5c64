//! Blocking Command (XEP-0191): per-account block lists, enforced by the router in both
//! directions.
//!
//! The router asks for every stanza to a local account whether its sender is blocked, so block
//! lists are cached in memory after the first read and updated on every change (on every node
//! of a cluster: a change is announced through the session table).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module, el, presence};
use crate::jid::{self, BareJid, Jid};
use crate::router::table::{Hint, Hints};
use crate::server::Server;
use crate::stanza::StanzaError;

pub const NS: &str = "urn:xmpp:blocking";
pub const ERRORS_NS: &str = "urn:xmpp:blocking:errors";
/// Entries one account may block; a bound so that no client grows the store without limit.
pub const MAX_BLOCKED: usize = 1000;

#[derive(Default)]
pub struct Blocking {
    /// Block lists per user; None for an empty list, the common case, so that asking it (for
    /// every stanza) reads only the map's own entry.
    cache: RwLock<HashMap<String, Option<Arc<Vec<String>>>>>,
}

impl Blocking {
    /// `f` of `user`'s block list if it is cached.
    fn cached<T>(&self, user: &str, f: impl FnOnce(&[String]) -> T) -> Option<T> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .get(user)
            .map(|list| f(list.as_deref().map_or(&[], Vec::as_slice)))
    }

    async fn list(&self, server: &Server, user: &str) -> Arc<Vec<String>> {
        if let Some(list) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return list.clone().unwrap_or_default();
        }
        // On a store error nobody is blocked for this stanza; the next one retries.
        let Ok(list) = server.store.blocklist(user).await else {
            return Arc::default();
        };
        let list = Arc::new(list);
        let entry = (!list.is_empty()).then(|| list.clone());
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), entry);
        list
    }

    fn forget(&self, server: &Server, user: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.remove(user);
        // Cleared while the cache is locked: see `blocks`, which sets it likewise.
        super::clear_hint(server, user, Hint::BlocksNobody);
    }
}

/// The name other nodes of a cluster know this cache by.
pub const CACHE: &str = "blocklist";

/// Drops a cached block list changed on another node of the cluster.
pub fn forget_cached(server: &Server, user: &str) {
    if let Some(m) = module(server) {
        m.forget(server, user);
    }
}

/// Reads `owner`'s block list into the cache if it is not there yet. Every stanza to or from the
/// user asks for it, so a session that becomes available loads it up front: otherwise its first
/// messages wait for the store, and after a restart every user's first message at once.
pub async fn preload(server: &Server, owner: &BareJid) {
    if let (Some(m), Some(user)) = (module(server), owner.node()) {
        m.list(server, user.as_str()).await;
        // Noted now rather than at the account's first message, which then takes the router's
        // short way as well.
        m.cached(user.as_str(), |list| note_empty(server, owner, list));
    }
}

/// Notes an empty block list in the account's entry in the session table, where the router
/// finds it with the account's other answers. Called with the cache locked, so that `forget`
/// cannot clear the note before it is made.
fn note_empty(server: &Server, owner: &BareJid, list: &[String]) {
    if list.is_empty() {
        server
            .sessions
            .view()
            .hint(owner.as_str(), Hint::BlocksNobody, true);
    }
}

fn module(server: &Server) -> Option<&Blocking> {
    server.module::<Blocking>()
}

/// Whether `owner`'s block list matches `other` (full JID, bare JID or domain, XEP-0191 §3.3).
pub async fn blocks(server: &Server, owner: &BareJid, other: &Jid) -> bool {
    let (Some(m), Some(user)) = (module(server), owner.node()) else {
        return false;
    };
    if !server.is_local_domain(owner.domain().as_str()) {
        return false;
    }
    // Every message asks twice (the sender's list and the recipient's): a cached list is read
    // in place rather than copied out.
    let cached = m.cached(user.as_str(), |list| {
        note_empty(server, owner, list);
        matches_entry(list, other)
    });
    if let Some(blocked) = cached {
        return blocked;
    }
    // A name that is no account blocks nobody, and must not leave a list in the cache: a
    // client could otherwise grow it without bound by writing to made-up addresses.
    if !crate::router::account_exists(server, owner).await {
        return false;
    }
    matches_entry(&m.list(server, user.as_str()).await, other)
}

/// [`blocks`], answered without asking the block list when `hints` (looked up for the message
/// already) say that it is empty.
pub async fn blocks_hinted(server: &Server, owner: &BareJid, hints: Hints, other: &Jid) -> bool {
    !hints.blocks_nobody && blocks(server, owner, other).await
}

/// How many block lists are held in memory.
pub fn cached_lists(server: &Server) -> usize {
    module(server).map_or(0, |m| {
        m.cache.read().unwrap_or_else(|e| e.into_inner()).len()
    })
}

/// Whether one of the block-list `entries` matches `other` (full JID, bare JID or domain).
fn matches_entry(entries: &[String], other: &Jid) -> bool {
    if entries.is_empty() {
        return false;
    }
    let full = other.to_string();
    let bare = other.to_bare().to_string();
    let domain = other.domain().as_str();
    entries
        .iter()
        .any(|b| *b == full || *b == bare || b == domain)
}

/// Where a change of `entries` affects presence: the addresses among them, or behind a domain
/// entry, of contacts that receive the user's presence (subscription `from` or `both`). Other
/// blocked entities never saw the user's presence, so they get nothing.
async fn presence_targets(server: &Server, user: &str, entries: &[String]) -> Vec<String> {
    let Ok(roster) = server.store.roster(user).await else {
        return Vec::new();
    };
    let subscribers: Vec<String> = roster
        .items
        .into_iter()
        .filter(|i| i.subscription.has_from())
        .map(|i| i.jid)
        .collect();
    let mut targets = Vec::new();
    for entry in entries {
        let Ok(e) = jid::parse(entry) else { continue };
        if e.node().is_none() && e.resource().is_none() {
            // A domain entry covers every subscriber at that domain.
            targets.extend(
                subscribers
                    .iter()
                    .filter(|s| jid::parse(s).is_ok_and(|j| j.domain() == e.domain()))
                    .cloned(),
            );
        } else if subscribers.contains(&e.to_bare().to_string()) {
            targets.push(entry.clone());
        }
    }
    targets.sort();
    targets.dedup();
    targets
}

/// The error for a user who sends to someone on their own block list.
pub fn blocked_error() -> StanzaError {
    StanzaError::not_acceptable().with_app(Element::bare("blocked", ERRORS_NS))
}

fn items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    payload
        .children()
        .filter(|c| c.is("item", NS))
        .map(|c| {
            let j = c.attr("jid").ok_or_else(StanzaError::bad_request)?;
            jid::parse(j)
                .map(|j| j.to_string())
                .map_err(|_| StanzaError::jid_malformed())
        })
        .collect()
}

#[async_trait]
impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        let user = req.own_user()?;
        let owner = req.from.to_bare();
        let store = &req.server.store;
        match (req.is_set, req.payload.name()) {
            (false, "blocklist") => {
                let mut list = Element::bare("blocklist", NS);
                for j in self.list(req.server, user).await.iter() {
                    list.append_child(el("item", NS, &[("jid", j)]));
                }
                Ok(Some(list))
            }
            (true, "block") => {
                let jids = items(req.payload)?;
                if jids.is_empty() {
                    return Err(StanzaError::bad_request());
                }
                let current = self.list(req.server, user).await;
                let new = jids.iter().filter(|j| !current.contains(j)).count();
                if current.len() + new > MAX_BLOCKED {
                    return Err(StanzaError::resource_constraint()
                        .with_text(format!("a block list holds at most {MAX_BLOCKED} entries")));
                }
                store
                    .block(user, &jids)
                    .await
                    .map_err(|_| StanzaError::internal())?;
                self.forget(req.server, user);
                req.server.sessions.invalidate(CACHE, user);
                // Blocked subscribers stop seeing the user's presence (XEP-0191 §3.3.2).
                for to in presence_targets(req.server, user, &jids).await {
                    presence::send_unavailable_to(req.server, &owner, &to).await;
                }
                // XEP-0191 §3.3: every resource hears of the change.
                super::push(req.server, &owner, req.payload, false);
                Ok(None)
            }
            (true, "unblock") => {
                let jids = items(req.payload)?;
                let before = self.list(req.server, user).await;
                store
                    .unblock(user, &jids)
                    .await
                    .map_err(|_| StanzaError::internal())?;
                self.forget(req.server, user);
                req.server.sessions.invalidate(CACHE, user);
                // Subscribers no longer blocked see the user's presence again (§3.4).
                let unblocked: Vec<String> = if jids.is_empty() {
                    before.to_vec()
                } else {
                    jids.clone()
                };
                let still = self.list(req.server, user).await;
                for to in presence_targets(req.server, user, &unblocked).await {
                    let Ok(j) = jid::parse(&to) else { continue };
                    if !matches_entry(&still, &j) {
                        presence::send_current_to(req.server, &owner, &to).await;
                    }
                }
                // XEP-0191 §3.3: every resource hears of the change.
                super::push(req.server, &owner, req.payload, false);
                Ok(None)
            }
            _ => Err(StanzaError::bad_request()),
        }
    }
}
