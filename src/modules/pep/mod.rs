//! Personal Eventing Protocol (XEP-0163): every account is a pubsub service (XEP-0060) with
//! nodes that its owner publishes to and its contacts hear about. Clients keep avatars
//! (XEP-0084), nicknames, bookmarks (XEP-0402) and OMEMO device lists and bundles here; the
//! nodes and items live in the store, so they outlive sessions and every cluster node sees
//! them.
//!
//! Only the owner publishes, configures, retracts, purges and deletes. Others retrieve items
//! as the node's access model allows. Subscriptions are implicit, from presence and entity
//! capabilities (`caps.rs`, `notify.rs`); explicit subscriptions are not offered.

pub mod caps;
pub mod config;
pub mod notify;

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, IqTarget, Module, WithChild, el};
use crate::jid::BareJid;
use crate::server::Server;
use crate::stanza::StanzaError;
use crate::store::{PepItem, PepNode};
use crate::stream::writer;
use config::{Fields, NodeConfig};

pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// Nodes per account.
const MAX_NODES: usize = 256;
/// Longest node name and item id.
const MAX_NAME: usize = 1024;

#[derive(Default)]
pub struct Pep {
    caps: caps::CapsCache,
    seen: notify::Seen,
}

/// The features XEP-0163 §6 and XEP-0060 §10 name for what this service does.
const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-access",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

#[async_trait]
impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }

    fn account_features(&self) -> &'static [&'static str] {
        FEATURES
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[PUBSUB, OWNER]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        // There is no pubsub service on the server's own address, only on accounts.
        let IqTarget::Account(owner) = &req.target else {
            return Err(StanzaError::service_unavailable());
        };
        let is_owner = req.from.to_bare() == *owner;
        let Some(op) = operation(req.payload) else {
            return Err(StanzaError::bad_request().with_text("one pubsub operation expected"));
        };
        let owner_ns = req.payload.ns() == OWNER;
        match (owner_ns, op.name(), req.is_set) {
            (false, "items", false) => self.items(&req, owner, op).await,
            (false, "publish", true) => self.publish(&req, owner, is_owner, op).await,
            (false, "retract", true) => self.retract(&req, owner, is_owner, op).await,
            (false, "create", true) => self.create(&req, owner, is_owner, op).await,
            (true, "configure", _) => self.configure(&req, owner, is_owner, op).await,
            (true, "default", false) => Ok(Some(owner_payload(
                el("default", OWNER, &[]).with_child(NodeConfig::default().form()),
            ))),
            (true, "delete", true) => self.delete(&req, owner, is_owner, op).await,
            (true, "purge", true) => self.purge(&req, owner, is_owner, op).await,
            (_, name @ ("subscribe" | "unsubscribe" | "subscriptions" | "affiliations"), _)
            | (_, name @ ("options" | "subscription"), _) => Err(unsupported(name)),
            _ => Err(StanzaError::bad_request().with_text("unknown pubsub request")),
        }
    }
}

/// The operation element of a `<pubsub/>` request; `<publish-options/>` and `<configure/>`
/// ride along with `<publish/>` and `<create/>`.
fn operation(payload: &Element) -> Option<&Element> {
    let mut ops = payload.children().filter(|c| {
        !(c.name() == "publish-options" || (c.name() == "configure" && payload.ns() == PUBSUB))
    });
    let op = ops.next()?;
    ops.next().is_none().then_some(op)
}

fn pubsub_error(err: StanzaError, condition: &str) -> StanzaError {
    err.with_app(el(condition, ERRORS, &[]))
}

fn unsupported(feature: &str) -> StanzaError {
    StanzaError::feature_not_implemented().with_app(el(
        "unsupported",
        ERRORS,
        &[("feature", feature)],
    ))
}

fn not_owner() -> StanzaError {
    StanzaError::forbidden().with_text("only the owner manages a personal node")
}

fn owner_payload(child: Element) -> Element {
    el("pubsub", OWNER, &[]).with_child(child)
}

fn node_name(op: &Element) -> Result<&str, StanzaError> {
    match op.attr("node") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => Ok(n),
        Some(_) => Err(StanzaError::not_acceptable().with_text("bad node name")),
        None => Err(pubsub_error(StanzaError::bad_request(), "nodeid-required")),
    }
}

pub(crate) fn user_of(owner: &BareJid) -> &str {
    owner.node().map(|n| n.as_str()).unwrap_or("")
}

pub(crate) fn parse_config(json: &str) -> Option<NodeConfig> {
    serde_json::from_str(json).ok()
}

fn store_error(e: crate::store::StoreError) -> StanzaError {
    tracing::warn!(error = %e, "PEP store call failed");
    StanzaError::internal()
}

impl Pep {
    async fn node(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
    ) -> Result<Option<NodeConfig>, StanzaError> {
        let stored = server
            .store
            .pep_node(user_of(owner), node)
            .await
            .map_err(store_error)?;
        Ok(stored.and_then(|n| parse_config(&n.config)))
    }

    async fn save_node(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        config: &NodeConfig,
        is_new: bool,
    ) -> Result<(), StanzaError> {
        let user = user_of(owner);
        if is_new {
            let count = server
                .store
                .pep_nodes(user)
                .await
                .map_err(store_error)?
                .len();
            if count >= MAX_NODES {
                return Err(StanzaError::resource_constraint()
                    .with_text(format!("at most {MAX_NODES} nodes per account")));
            }
        }
        let config = serde_json::to_string(config).map_err(|_| StanzaError::internal())?;
        let stored = PepNode {
            node: node.to_owned(),
            config,
        };
        server
            .store
            .pep_set_node(user, &stored)
            .await
            .map_err(store_error)
    }

    /// An existing node, for the operations only its owner may do.
    async fn owned_node<'e>(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &'e Element,
    ) -> Result<(&'e str, NodeConfig), StanzaError> {
        if !is_owner {
            return Err(not_owner());
        }
        let node = node_name(op)?;
        match self.node(req.server, owner, node).await? {
            Some(config) => Ok((node, config)),
            None => Err(StanzaError::item_not_found()),
        }
    }

    /// The node's configuration if `req`'s sender may read it; the error to answer otherwise.
    async fn readable(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        node: &str,
    ) -> Result<NodeConfig, StanzaError> {
        let Some(config) = self.node(req.server, owner, node).await? else {
            return Err(StanzaError::item_not_found());
        };
        if req.from.to_bare() == *owner {
            return Ok(config);
        }
        let item = req
            .server
            .store
            .roster_item(user_of(owner), &req.from.to_bare().to_string())
            .await
            .map_err(store_error)?;
        if notify::allows(&config, item.as_ref()) {
            return Ok(config);
        }
        Err(match config.access_model {
            config::AccessModel::Presence => pubsub_error(
                StanzaError::not_authorized(),
                "presence-subscription-required",
            ),
            config::AccessModel::Roster => {
                pubsub_error(StanzaError::not_authorized(), "not-in-roster-group")
            }
            _ => pubsub_error(StanzaError::not_allowed(), "closed-node"),
        })
    }

    /// XEP-0060 §6.5: the newest items (all kept ones, or `max_items`), or the named ones.
    async fn items(&self, req: &IqRequest<'_>, owner: &BareJid, op: &Element) -> IqResult {
        let node = node_name(op)?;
        let max = match op.attr("max_items") {
            None => config::MAX_ITEMS,
            Some(m) => match m.parse::<u32>() {
                Ok(n) if n > 0 => n.min(config::MAX_ITEMS),
                _ => return Err(StanzaError::bad_request().with_text("bad max_items")),
            },
        };
        self.readable(req, owner, node).await?;
        let ids: Vec<String> = op
            .children()
            .filter(|c| c.is("item", PUBSUB))
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect();
        let mut found = req
            .server
            .store
            .pep_items(user_of(owner), node, &ids, max)
            .await
            .map_err(store_error)?;
        // Oldest first, as they were published.
        found.reverse();
        let mut items = el("items", PUBSUB, &[("node", node)]);
        for item in found {
            let mut i = el("item", PUBSUB, &[("id", &item.item_id)]);
            if let Ok(payload) = item.payload.parse::<Element>() {
                i.append_child(payload);
            }
            items.append_child(i);
        }
        Ok(Some(el("pubsub", PUBSUB, &[]).with_child(items)))
    }

    /// XEP-0060 §7.1 with XEP-0163 §7: auto-creation, and publish-options as preconditions.
    async fn publish(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        if !is_owner {
            return Err(not_owner());
        }
        let node = node_name(op)?;
        let mut items = op.children().filter(|c| c.is("item", PUBSUB));
        let item = match (items.next(), items.next()) {
            (Some(item), None) => item,
            (None, _) => return Err(pubsub_error(StanzaError::bad_request(), "item-required")),
            (Some(_), Some(_)) => {
                return Err(pubsub_error(StanzaError::bad_request(), "invalid-payload"));
            }
        };
        let mut payloads = item.children();
        let payload = match (payloads.next(), payloads.next()) {
            (Some(p), None) => p,
            (None, _) => {
                return Err(pubsub_error(StanzaError::bad_request(), "payload-required"));
            }
            (Some(_), Some(_)) => {
                return Err(pubsub_error(StanzaError::bad_request(), "invalid-payload"));
            }
        };
        let item_id = match item.attr("id") {
            Some(id) if !id.is_empty() && id.len() <= MAX_NAME => id.to_owned(),
            Some(id) if !id.is_empty() => {
                return Err(StanzaError::not_acceptable().with_text("item id too long"));
            }
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };
        let options: Fields = req
            .payload
            .get_child("publish-options", PUBSUB)
            .and_then(config::submitted)
            .unwrap_or_default();
        let precondition = || pubsub_error(StanzaError::conflict(), "precondition-not-met");
        let config = match self.node(req.server, owner, node).await? {
            Some(existing) => {
                if !existing.satisfies(&options) {
                    return Err(precondition());
                }
                existing
            }
            None => {
                let config = NodeConfig::default()
                    .apply(&options)
                    .map_err(|_| precondition())?;
                self.save_node(req.server, owner, node, &config, true)
                    .await?;
                config
            }
        };
        let xml =
            String::from_utf8(writer::element(payload)).map_err(|_| StanzaError::bad_request())?;
        let stored = PepItem {
            item_id: item_id.clone(),
            published_ms: chrono::Utc::now().timestamp_millis(),
            payload: xml,
        };
        req.server
            .store
            .pep_publish(user_of(owner), node, &stored, config.max_items)
            .await
            .map_err(store_error)?;
        let to = notify::recipients(req.server, self, owner, node, &config).await;
        let message = notify::event_message(
            owner,
            &config,
            notify::items_event(node, &config, std::slice::from_ref(&stored)),
        );
        notify::send(req.server, message, to).await;
        let published = el("publish", PUBSUB, &[("node", node)]).with_child(el(
            "item",
            PUBSUB,
            &[("id", &item_id)],
        ));
        Ok(Some(el("pubsub", PUBSUB, &[]).with_child(published)))
    }

    /// XEP-0060 §7.2: removes one item, notifying if asked to (or the node says so).
    async fn retract(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        if !is_owner {
            return Err(not_owner());
        }
        let node = node_name(op)?;
        let ids: Vec<&str> = op
            .children()
            .filter(|c| c.is("item", PUBSUB))
            .filter_map(|c| c.attr("id"))
            .collect();
        let [id] = ids.as_slice() else {
            return Err(pubsub_error(StanzaError::bad_request(), "item-required"));
        };
        let Some(config) = self.node(req.server, owner, node).await? else {
            return Err(StanzaError::item_not_found());
        };
        let removed = req
            .server
            .store
            .pep_retract(user_of(owner), node, id)
            .await
            .map_err(store_error)?;
        if !removed {
            return Err(StanzaError::item_not_found());
        }
        let notify = match op.attr("notify") {
            Some(v) => v == "1" || v == "true",
            None => config.notify_retract,
        };
        if notify {
            let event = el("items", EVENT, &[("node", node)]).with_child(el(
                "retract",
                EVENT,
                &[("id", id)],
            ));
            let to = notify::recipients(req.server, self, owner, node, &config).await;
            notify::send(req.server, notify::event_message(owner, &config, event), to).await;
        }
        Ok(None)
    }

    /// XEP-0060 §8.1: an explicit create, optionally configured in the same request.
    async fn create(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        if !is_owner {
            return Err(not_owner());
        }
        let node = op
            .attr("node")
            .ok_or_else(|| pubsub_error(StanzaError::not_acceptable(), "nodeid-required"))?;
        let node = node_name(op).map(|_| node)?;
        if self.node(req.server, owner, node).await?.is_some() {
            return Err(StanzaError::conflict().with_text("the node exists"));
        }
        let fields = req
            .payload
            .get_child("configure", PUBSUB)
            .and_then(config::submitted)
            .unwrap_or_default();
        let config = NodeConfig::default().apply(&fields)?;
        self.save_node(req.server, owner, node, &config, true)
            .await?;
        Ok(None)
    }

    /// XEP-0060 §8.2: the configuration form, or a submitted one.
    async fn configure(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        let (node, current) = self.owned_node(req, owner, is_owner, op).await?;
        if !req.is_set {
            let configure = el("configure", OWNER, &[("node", node)]).with_child(current.form());
            return Ok(Some(owner_payload(configure)));
        }
        let x = op
            .get_child("x", config::DATA)
            .ok_or_else(|| StanzaError::bad_request().with_text("a form is required"))?;
        if x.attr("type") == Some("cancel") {
            return Ok(None);
        }
        let fields = config::submitted(op).unwrap_or_default();
        let next = current.apply(&fields)?;
        self.save_node(req.server, owner, node, &next, false)
            .await?;
        Ok(None)
    }

    /// XEP-0060 §8.4: the node goes with its items; contacts hear of it.
    async fn delete(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        let (node, config) = self.owned_node(req, owner, is_owner, op).await?;
        let to = if config.notify_delete {
            notify::recipients(req.server, self, owner, node, &config).await
        } else {
            Vec::new()
        };
        req.server
            .store
            .pep_delete_node(user_of(owner), node)
            .await
            .map_err(store_error)?;
        let event = el("delete", EVENT, &[("node", node)]);
        notify::send(req.server, notify::event_message(owner, &config, event), to).await;
        Ok(None)
    }

    /// XEP-0060 §8.5: every item goes; contacts hear of it.
    async fn purge(
        &self,
        req: &IqRequest<'_>,
        owner: &BareJid,
        is_owner: bool,
        op: &Element,
    ) -> IqResult {
        let (node, config) = self.owned_node(req, owner, is_owner, op).await?;
        req.server
            .store
            .pep_purge(user_of(owner), node)
            .await
            .map_err(store_error)?;
        if config.notify_retract {
            let to = notify::recipients(req.server, self, owner, node, &config).await;
            let event = el("purge", EVENT, &[("node", node)]);
            notify::send(req.server, notify::event_message(owner, &config, event), to).await;
        }
        Ok(None)
    }
}

/// disco#items of an account (XEP-0060 §5.2): the nodes the asker may read.
pub async fn disco_items(
    server: &Server,
    owner: &BareJid,
    asker: &crate::jid::Jid,
) -> Result<Vec<String>, StanzaError> {
    let user = user_of(owner);
    let nodes = server.store.pep_nodes(user).await.map_err(store_error)?;
    if asker.to_bare() == *owner {
        return Ok(nodes.into_iter().map(|n| n.node).collect());
    }
    let item = server
        .store
        .roster_item(user, &asker.to_bare().to_string())
        .await
        .map_err(store_error)?;
    Ok(nodes
        .into_iter()
        .filter(|n| parse_config(&n.config).is_some_and(|c| notify::allows(&c, item.as_ref())))
        .map(|n| n.node)
        .collect())
}
