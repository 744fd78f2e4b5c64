//! Service Discovery (XEP-0030): info and items of the server and of accounts, generated from
//! the registered modules.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, IqTarget, Module, el, pep};
use crate::server::Server;
use crate::stanza::StanzaError;

pub const INFO: &str = "http://jabber.org/protocol/disco#info";
pub const ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Disco;

/// The server's disco#info features, sorted and without duplicates.
pub fn server_features(server: &Server) -> Vec<&'static str> {
    let mut features: Vec<&'static str> = server
        .modules
        .iter()
        .flat_map(|m| m.server_features(server))
        .collect();
    features.sort_unstable();
    features.dedup();
    features
}

fn account_features(server: &Server) -> Vec<&'static str> {
    let mut features: Vec<&'static str> = server
        .modules
        .iter()
        .flat_map(|m| m.account_features().iter().copied())
        .collect();
    features.sort_unstable();
    features.dedup();
    features
}

fn info(identity: (&str, &str, &str), features: &[&str]) -> Element {
    let (category, kind, name) = identity;
    let mut query = Element::bare("query", INFO);
    query.append_child(el(
        "identity",
        INFO,
        &[("category", category), ("type", kind), ("name", name)],
    ));
    for f in features {
        query.append_child(el("feature", INFO, &[("var", f)]));
    }
    query
}

#[async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![INFO, ITEMS]
    }

    fn account_features(&self) -> &'static [&'static str] {
        &[INFO, ITEMS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[INFO, ITEMS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if req.is_set {
            return Err(StanzaError::not_allowed());
        }
        let is_info = req.payload.ns() == INFO;
        if let Some(node) = req.payload.attr("node") {
            return match &req.target {
                IqTarget::Account(owner) if is_info => pep_node_info(&req, owner, node).await,
                _ => Err(StanzaError::item_not_found()),
            };
        }
        match (&req.target, is_info) {
            (IqTarget::Server, true) => Ok(Some(info(
                ("server", "im", "rookery"),
                &server_features(req.server),
            ))),
            (IqTarget::Account(_), true) => {
                let mut query = info(("account", "registered", ""), &account_features(req.server));
                // XEP-0163 §6.1: every account is a personal eventing service.
                query.append_child(el(
                    "identity",
                    INFO,
                    &[("category", "pubsub"), ("type", "pep")],
                ));
                Ok(Some(query))
            }
            // The server lists its services (group chat, components); accounts publish no
            // items.
            (IqTarget::Server, false) => {
                let mut q = Element::bare("query", ITEMS);
                q.append_child(el(
                    "item",
                    ITEMS,
                    &[("jid", &req.server.muc_domain), ("name", "Chatrooms")],
                ));
                q.append_child(el(
                    "item",
                    ITEMS,
                    &[
                        ("jid", &req.server.upload_domain),
                        ("name", "HTTP File Upload"),
                    ],
                ));
                for domain in req.server.config.components.keys() {
                    q.append_child(el("item", ITEMS, &[("jid", domain)]));
                }
                Ok(Some(q))
            }
            // XEP-0060 §5.2: an account's items are its PEP nodes the asker may read.
            (IqTarget::Account(owner), false) => {
                let mut q = Element::bare("query", ITEMS);
                for node in pep::disco_items(req.server, owner, req.from).await? {
                    q.append_child(el(
                        "item",
                        ITEMS,
                        &[("jid", &owner.to_string()), ("node", &node)],
                    ));
                }
                Ok(Some(q))
            }
        }
    }
}

/// disco#info of one PEP node (XEP-0060 §5.3), for those who may read it.
async fn pep_node_info(req: &IqRequest<'_>, owner: &crate::jid::BareJid, node: &str) -> IqResult {
    let readable = pep::disco_items(req.server, owner, req.from).await?;
    if !readable.iter().any(|n| n == node) {
        return Err(StanzaError::item_not_found());
    }
    let mut query = info(("pubsub", "leaf", ""), &[pep::PUBSUB]);
    crate::stanza::set_attr(&mut query, "node", node);
    Ok(Some(query))
}
