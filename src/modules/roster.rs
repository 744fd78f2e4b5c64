//! Roster management (RFC 6121 §2) with roster versioning (XEP-0237).

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module, el, text_el};
use crate::jid::{self, BareJid};
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::{RosterItem, Subscription};

pub const NS: &str = "jabber:iq:roster";
pub const VER_FEATURE_NS: &str = "urn:xmpp:features:rosterver";
const MAX_ITEMS: usize = 1000;
const MAX_NAME_CHARS: usize = 1023;

pub struct RosterModule;

/// Serialises one roster item.
pub fn item_element(item: &RosterItem) -> Element {
    let mut e = el(
        "item",
        NS,
        &[
            ("jid", &item.jid),
            ("subscription", item.subscription.as_str()),
        ],
    );
    if let Some(name) = &item.name {
        stanza::set_attr(&mut e, "name", name);
    }
    if item.ask {
        stanza::set_attr(&mut e, "ask", "subscribe");
    }
    for g in &item.groups {
        e.append_child(text_el("group", NS, g));
    }
    e
}

/// Sends a roster push to every interested resource of `owner` (RFC 6121 §2.1.6).
pub fn push(server: &Server, owner: &BareJid, item: Element, version: i64) {
    let query = Element::builder("query", NS)
        .attr(rxml::xml_ncname!("ver").to_owned(), version.to_string())
        .append(item)
        .build();
    super::push(server, owner, &query, true);
}

/// Stores an item and pushes it to the owner's interested resources.
pub async fn save_and_push(
    server: &Server,
    owner: &BareJid,
    item: &RosterItem,
) -> Result<(), StanzaError> {
    let user = owner.node().map(|n| n.as_str()).unwrap_or_default();
    let version = server
        .store
        .put_roster_item(user, item)
        .await
        .map_err(|_| StanzaError::internal())?;
    push(server, owner, item_element(item), version);
    Ok(())
}

struct ItemSet {
    jid: String,
    name: Option<String>,
    groups: Vec<String>,
    remove: bool,
}

fn parse_item_set(query: &Element) -> Result<ItemSet, StanzaError> {
    let mut items = query.children().filter(|c| c.is("item", NS));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::bad_request().with_text("exactly one item is required"));
    };
    let jid = item
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request().with_text("item without jid"))?;
    let jid = jid::parse(jid).map_err(|_| StanzaError::jid_malformed())?;
    if jid.resource().is_some() {
        return Err(StanzaError::bad_request().with_text("roster items are bare JIDs"));
    }
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(StanzaError::not_acceptable().with_text("name too long"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS)) {
        let g = g.text();
        if g.is_empty() || g.chars().count() > MAX_NAME_CHARS {
            return Err(StanzaError::not_acceptable().with_text("bad group name"));
        }
        if groups.contains(&g) {
            return Err(StanzaError::bad_request().with_text("duplicate group"));
        }
        groups.push(g);
    }
    Ok(ItemSet {
        jid: jid.to_string(),
        name,
        groups,
        remove: item.attr("subscription") == Some("remove"),
    })
}

async fn remove(
    server: &Server,
    owner: &BareJid,
    user: &str,
    contact: &str,
) -> Result<(), StanzaError> {
    let store = &server.store;
    let Some(existing) = store
        .roster_item(user, contact)
        .await
        .map_err(|_| StanzaError::internal())?
    else {
        return Err(StanzaError::item_not_found());
    };
    let pending_in = store
        .has_subscription_request(user, contact)
        .await
        .unwrap_or(false);
    // RFC 6121 §2.5.2: removing an item cancels the subscriptions in both directions.
    let mut notices = Vec::new();
    if existing.subscription.has_to() || existing.ask {
        notices.push("unsubscribe");
    }
    if existing.subscription.has_from() || pending_in {
        notices.push("unsubscribed");
    }
    let version = store
        .remove_roster_item(user, contact)
        .await
        .map_err(|_| StanzaError::internal())?;
    let _ = store.remove_subscription_request(user, contact).await;
    if existing.subscription.has_from() {
        super::presence::send_unavailable_to(server, owner, contact).await;
    }
    for kind in notices {
        let p = stanza::build(
            "presence",
            &[
                ("type", kind),
                ("from", &owner.to_string()),
                ("to", contact),
            ],
        );
        router::route(server, p).await;
    }
    if let Some(version) = version {
        let item = el("item", NS, &[("jid", contact), ("subscription", "remove")]);
        push(server, owner, item, version);
    }
    Ok(())
}

#[async_trait]
impl Module for RosterModule {
    fn name(&self) -> &'static str {
        "roster"
    }

    fn stream_features(&self, _server: &Server) -> Vec<Element> {
        vec![Element::bare("ver", VER_FEATURE_NS)]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        let user = req.own_user()?;
        let owner = req.from.to_bare();
        let server = req.server;
        if !req.is_set {
            if let (Some(conn_id), Ok(full)) = (req.conn_id, req.from.clone().try_into_full()) {
                let _ = server.sessions.set_interested(&full, conn_id).await;
            }
            let roster = server
                .store
                .roster(user)
                .await
                .map_err(|_| StanzaError::internal())?;
            if req.payload.attr("ver") == Some(roster.version.to_string().as_str()) {
                // XEP-0237 §3: the client's copy is current.
                return Ok(None);
            }
            let mut query = el("query", NS, &[("ver", &roster.version.to_string())]);
            for item in &roster.items {
                query.append_child(item_element(item));
            }
            return Ok(Some(query));
        }
        let set = parse_item_set(req.payload)?;
        if set.jid == owner.to_string() {
            return Err(StanzaError::not_allowed().with_text("cannot add yourself"));
        }
        if set.remove {
            remove(server, &owner, user, &set.jid).await?;
            return Ok(None);
        }
        let existing = server
            .store
            .roster_item(user, &set.jid)
            .await
            .map_err(|_| StanzaError::internal())?;
        if existing.is_none() {
            let count = server
                .store
                .roster(user)
                .await
                .map_err(|_| StanzaError::internal())?
                .items
                .len();
            if count >= MAX_ITEMS {
                return Err(StanzaError::not_allowed().with_text("roster is full"));
            }
        }
        let item = RosterItem {
            jid: set.jid,
            name: set.name,
            subscription: existing
                .as_ref()
                .map_or(Subscription::None, |e| e.subscription),
            ask: existing.as_ref().is_some_and(|e| e.ask),
            groups: set.groups,
        };
        save_and_push(server, &owner, &item).await?;
        Ok(None)
    }
}
