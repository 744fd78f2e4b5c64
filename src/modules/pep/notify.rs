//! Who hears about a PEP node (XEP-0163 §4.3): the owner's own resources and the contacts
//! allowed by the node's access model, each resource only if its capabilities ask for the
//! node (`+notify`); and the last item sent to a resource when it comes online.
//!
//! Local resources are found in the session table, which holds every resource's presence
//! across the cluster. Resources on other servers are known only from the presence they send
//! to our users, so this node remembers those it has seen.

use std::collections::HashMap;
use std::sync::Mutex;

use minidom::Element;

use super::caps::{self, Lookup, NotifyNodes};
use super::config::{AccessModel, NodeConfig, SendLast};
use super::{EVENT, Pep, user_of};
use crate::jid::{self, BareJid, FullJid};
use crate::modules::el;
use crate::router;
use crate::server::Server;
use crate::stanza;
use crate::store::{PepItem, RosterItem};

/// Resources remembered per owner; a contact with more is not served beyond this.
const MAX_SEEN_PER_OWNER: usize = 1_000;

/// The caps hash of every resource (with caps) whose presence reached each local owner
/// through this node: so the last items go out once per resource and hash, and resources on
/// other servers can be notified.
#[derive(Default)]
pub struct Seen(Mutex<HashMap<BareJid, HashMap<FullJid, String>>>);

impl Seen {
    /// Records a resource's hash; true if it is new or changed.
    fn record(&self, owner: &BareJid, contact: &FullJid, ver: &str) -> bool {
        let Ok(mut all) = self.0.lock() else {
            return false;
        };
        let seen = all.entry(owner.clone()).or_default();
        if seen.get(contact).map(String::as_str) == Some(ver) {
            return false;
        }
        if seen.len() >= MAX_SEEN_PER_OWNER && !seen.contains_key(contact) {
            return false;
        }
        seen.insert(contact.clone(), ver.to_owned());
        true
    }

    fn forget(&self, owner: &BareJid, contact: &FullJid) {
        if let Ok(mut all) = self.0.lock()
            && let Some(seen) = all.get_mut(owner)
        {
            seen.remove(contact);
            if seen.is_empty() {
                all.remove(owner);
            }
        }
    }

    /// Resources on other servers that `owner` has seen, with their hashes.
    fn remote(&self, server: &Server, owner: &BareJid) -> Vec<(FullJid, String)> {
        let Ok(all) = self.0.lock() else {
            return Vec::new();
        };
        all.get(owner)
            .map(|seen| {
                seen.iter()
                    .filter(|(jid, _)| !server.is_local_domain(jid.domain().as_str()))
                    .map(|(j, v)| (j.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether a contact with this roster item may see the node (the owner always may).
pub fn allows(config: &NodeConfig, item: Option<&RosterItem>) -> bool {
    match config.access_model {
        AccessModel::Open => true,
        AccessModel::Presence => item.is_some_and(|i| i.subscription.has_from()),
        AccessModel::Roster => item.is_some_and(|i| {
            i.groups
                .iter()
                .any(|g| config.roster_groups_allowed.contains(g))
        }),
        AccessModel::Whitelist => false,
    }
}

fn wants(pep: &Pep, ver: &str, node: &str) -> bool {
    pep.caps
        .known(ver)
        .is_some_and(|nodes| nodes.iter().any(|n| n == node))
}

fn caps_ver(presence: Option<&std::sync::Arc<Element>>) -> Option<String> {
    presence.and_then(|p| caps::announced(p)).map(|c| c.ver)
}

/// The full JIDs to notify about `node` of `owner`.
pub async fn recipients(
    server: &Server,
    pep: &Pep,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
) -> Vec<FullJid> {
    let mut to = Vec::new();
    if !config.deliver_notifications {
        return to;
    }
    let local = |bare: &BareJid, to: &mut Vec<FullJid>| {
        for r in server.sessions.resources(bare) {
            if caps_ver(r.presence.as_ref()).is_some_and(|v| wants(pep, &v, node)) {
                to.push(r.jid.clone());
            }
        }
    };
    local(owner, &mut to);
    if config.access_model == AccessModel::Whitelist {
        return to;
    }
    let roster = match server.store.roster(user_of(owner)).await {
        Ok(r) => r.items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read roster for notifications");
            return to;
        }
    };
    let remote = pep.seen.remote(server, owner);
    for item in roster.iter().filter(|i| allows(config, Some(i))) {
        let Ok(contact) = jid::parse_bare(&item.jid) else {
            continue;
        };
        if server.is_local_domain(contact.domain().as_str()) {
            local(&contact, &mut to);
        } else {
            to.extend(
                remote
                    .iter()
                    .filter(|(j, v)| j.to_bare() == contact && wants(pep, v, node))
                    .map(|(j, _)| j.clone()),
            );
        }
    }
    to
}

/// A notification message from `owner` carrying one `<items/>` (or `<delete/>`, `<purge/>`).
pub fn event_message(owner: &BareJid, config: &NodeConfig, content: Element) -> Element {
    let mut message = stanza::build(
        "message",
        &[
            ("from", &owner.to_string()),
            ("type", &config.notification_type),
            ("id", &uuid::Uuid::new_v4().simple().to_string()),
        ],
    );
    let mut event = el("event", EVENT, &[]);
    event.append_child(content);
    message.append_child(event);
    message
}

/// The `<items/>` of a notification for published items.
pub fn items_event(node: &str, config: &NodeConfig, items: &[PepItem]) -> Element {
    let mut list = el("items", EVENT, &[("node", node)]);
    for item in items {
        let mut i = el("item", EVENT, &[("id", &item.item_id)]);
        if config.deliver_payloads
            && let Ok(payload) = item.payload.parse::<Element>()
        {
            i.append_child(payload);
        }
        list.append_child(i);
    }
    list
}

/// Sends one notification to each recipient.
pub async fn send(server: &Server, message: Element, to: Vec<FullJid>) {
    for jid in to {
        let mut m = message.clone();
        stanza::set_attr(&mut m, "to", &jid.to_string());
        router::route(server, m).await;
    }
}

/// A presence from `contact` reached `owner` (or, for the owner's own resources, was
/// broadcast by it). Remembers its caps and, when they are new, sends the last item of each
/// node the resource wants and may see.
pub async fn presence_seen(
    server: &Server,
    owner: &BareJid,
    contact: &FullJid,
    presence: &Element,
) {
    let Some(pep) = server.module::<Pep>() else {
        return;
    };
    let kind = stanza::stanza_type(presence);
    let caps = (kind.is_empty())
        .then(|| caps::announced(presence))
        .flatten();
    let Some(caps) = caps else {
        if kind.is_empty() || kind == "unavailable" {
            pep.seen.forget(owner, contact);
        }
        return;
    };
    if !pep.seen.record(owner, contact, &caps.ver) {
        return;
    }
    match pep.caps.lookup(&server.domain, &caps, owner, contact) {
        Lookup::Known(nodes) => send_last(server, owner, contact, &nodes).await,
        Lookup::Ask(question) => router::route(server, question).await,
        Lookup::Waiting => {}
    }
}

/// An iq result or error addressed to the server: if it answers a capabilities question,
/// serves the resources that waited for it.
pub async fn answer(server: &Server, from: &FullJid, iq: &Element) {
    let Some(pep) = server.module::<Pep>() else {
        return;
    };
    if let Some((nodes, waiting)) = pep.caps.answer(from, iq) {
        for (owner, contact) in waiting {
            send_last(server, &owner, &contact, &nodes).await;
        }
    }
}

/// XEP-0163 §4.3.2: the last item of each of `owner`'s nodes that `contact` wants and may
/// see.
async fn send_last(server: &Server, owner: &BareJid, contact: &FullJid, wanted: &NotifyNodes) {
    if wanted.is_empty() {
        return;
    }
    let user = user_of(owner);
    let Ok(nodes) = server.store.pep_nodes(user).await else {
        return;
    };
    let mut item: Option<Option<RosterItem>> = None;
    for node in nodes.iter().filter(|n| wanted.contains(&n.node)) {
        let Some(config) = super::parse_config(&node.config) else {
            continue;
        };
        if config.send_last_published_item != SendLast::OnSubAndPresence
            || !config.deliver_notifications
        {
            continue;
        }
        if contact.to_bare() != *owner {
            if item.is_none() {
                let found = server
                    .store
                    .roster_item(user, &contact.to_bare().to_string())
                    .await
                    .ok()
                    .flatten();
                item = Some(found);
            }
            if !allows(&config, item.as_ref().and_then(|i| i.as_ref())) {
                continue;
            }
        }
        let Ok(last) = server.store.pep_items(user, &node.node, &[], 1).await else {
            continue;
        };
        if last.is_empty() {
            continue;
        }
        let message = event_message(owner, &config, items_event(&node.node, &config, &last));
        send(server, message, vec![contact.clone()]).await;
    }
}
