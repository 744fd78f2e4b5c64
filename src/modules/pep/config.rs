//! A PEP node's configuration (XEP-0060 §16.4, `pubsub#node_config`): its defaults for
//! personal eventing, the form that shows and changes it, and the publish-options check
//! (XEP-0060 §7.1.5) that clients such as Conversations rely on to make OMEMO nodes open and
//! bookmarks private.

use minidom::Element;
use serde::{Deserialize, Serialize};

use super::super::el;
use crate::stanza::StanzaError;

pub const DATA: &str = "jabber:x:data";
pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The most items a node keeps; `max` in a form means this.
pub const MAX_ITEMS: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone may retrieve items.
    Open,
    /// Contacts with a subscription to the owner's presence (the PEP default).
    Presence,
    /// Contacts in one of `roster_groups_allowed`.
    Roster,
    /// Only the owner.
    Whitelist,
}

impl AccessModel {
    fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }

    fn parse(value: &str) -> Result<AccessModel, StanzaError> {
        match value {
            "open" => Ok(AccessModel::Open),
            "presence" => Ok(AccessModel::Presence),
            "roster" => Ok(AccessModel::Roster),
            "whitelist" => Ok(AccessModel::Whitelist),
            "authorize" => Err(StanzaError::not_acceptable()
                .with_text("the authorize access model is not supported")),
            _ => Err(StanzaError::not_acceptable().with_text("unknown access model")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }

    fn parse(value: &str) -> Result<SendLast, StanzaError> {
        match value {
            "never" => Ok(SendLast::Never),
            "on_sub" => Ok(SendLast::OnSub),
            "on_sub_and_presence" => Ok(SendLast::OnSubAndPresence),
            _ => Err(StanzaError::not_acceptable().with_text("unknown send_last_published_item")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub title: String,
    pub item_type: String,
    pub access_model: AccessModel,
    pub roster_groups_allowed: Vec<String>,
    pub max_items: u32,
    pub persist_items: bool,
    pub send_last_published_item: SendLast,
    pub deliver_notifications: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    /// `headline` (the default) or `normal`: the type of notification messages.
    pub notification_type: String,
}

impl Default for NodeConfig {
    /// XEP-0163 §4.3: presence access, the last item sent when a contact comes online.
    fn default() -> Self {
        NodeConfig {
            title: String::new(),
            item_type: String::new(),
            access_model: AccessModel::Presence,
            roster_groups_allowed: Vec::new(),
            max_items: 1,
            persist_items: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            deliver_notifications: true,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            notification_type: "headline".to_owned(),
        }
    }
}

/// A submitted form's fields, FORM_TYPE left out.
pub type Fields = Vec<(String, Vec<String>)>;

/// The fields of a submitted `jabber:x:data` form inside `parent`, if there is one.
pub fn submitted(parent: &Element) -> Option<Fields> {
    let x = parent.get_child("x", DATA)?;
    Some(
        x.children()
            .filter(|c| c.is("field", DATA))
            .filter_map(|f| {
                let var = f.attr("var")?;
                (var != "FORM_TYPE").then(|| {
                    let values = f
                        .children()
                        .filter(|v| v.is("value", DATA))
                        .map(|v| v.text())
                        .collect();
                    (var.to_owned(), values)
                })
            })
            .collect(),
    )
}

fn single(values: &[String]) -> &str {
    values.first().map(|v| v.trim()).unwrap_or("")
}

fn boolean(values: &[String]) -> Result<bool, StanzaError> {
    match single(values) {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(StanzaError::not_acceptable().with_text("a boolean field needs 0 or 1")),
    }
}

fn max_items(values: &[String]) -> Result<u32, StanzaError> {
    match single(values) {
        "max" => Ok(MAX_ITEMS),
        v => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_ITEMS).contains(&n) => Ok(n),
            _ => Err(StanzaError::not_acceptable()
                .with_text(format!("pubsub#max_items must be 1..{MAX_ITEMS} or max"))),
        },
    }
}

impl NodeConfig {
    /// Changes the fields a form submits; an unknown field or a bad value changes nothing.
    pub fn apply(&self, fields: &Fields) -> Result<NodeConfig, StanzaError> {
        let mut next = self.clone();
        for (var, values) in fields {
            match var.as_str() {
                "pubsub#title" => next.title = single(values).to_owned(),
                "pubsub#type" => next.item_type = single(values).to_owned(),
                "pubsub#access_model" => next.access_model = AccessModel::parse(single(values))?,
                "pubsub#roster_groups_allowed" => next.roster_groups_allowed = values.clone(),
                "pubsub#max_items" => next.max_items = max_items(values)?,
                "pubsub#persist_items" => next.persist_items = boolean(values)?,
                "pubsub#send_last_published_item" => {
                    next.send_last_published_item = SendLast::parse(single(values))?
                }
                "pubsub#deliver_notifications" => next.deliver_notifications = boolean(values)?,
                "pubsub#deliver_payloads" => next.deliver_payloads = boolean(values)?,
                "pubsub#notify_retract" => next.notify_retract = boolean(values)?,
                "pubsub#notify_delete" => next.notify_delete = boolean(values)?,
                "pubsub#notification_type" => match single(values) {
                    v @ ("headline" | "normal") => next.notification_type = v.to_owned(),
                    _ => {
                        return Err(StanzaError::not_acceptable()
                            .with_text("pubsub#notification_type is headline or normal"));
                    }
                },
                // Only the owner publishes to a personal node.
                "pubsub#publish_model" if single(values) == "publishers" => {}
                _ => {
                    return Err(StanzaError::not_acceptable()
                        .with_text(format!("unsupported node configuration field {var}")));
                }
            }
        }
        Ok(next)
    }

    /// XEP-0060 §7.1.5: publish-options are preconditions; every field must already hold.
    pub fn satisfies(&self, options: &Fields) -> bool {
        matches!(self.apply(options), Ok(applied) if applied == *self)
    }

    /// The `pubsub#node_config` form (type `form` for the owner to fill in).
    pub fn form(&self) -> Element {
        let mut x = el("x", DATA, &[("type", "form")]);
        x.append_child(field("FORM_TYPE", "hidden", "", &[NODE_CONFIG]));
        x.append_child(field(
            "pubsub#title",
            "text-single",
            "A friendly name for the node",
            &[&self.title],
        ));
        x.append_child(field(
            "pubsub#type",
            "text-single",
            "The type of node data, usually specified by the namespace of the payload",
            &[&self.item_type],
        ));
        let mut access = field(
            "pubsub#access_model",
            "list-single",
            "Who may subscribe and retrieve items",
            &[self.access_model.as_str()],
        );
        for model in ["open", "presence", "roster", "whitelist"] {
            access.append_child(option(model));
        }
        x.append_child(access);
        let groups: Vec<&str> = self
            .roster_groups_allowed
            .iter()
            .map(String::as_str)
            .collect();
        x.append_child(field(
            "pubsub#roster_groups_allowed",
            "text-multi",
            "Roster groups allowed to subscribe",
            &groups,
        ));
        x.append_child(field(
            "pubsub#max_items",
            "text-single",
            "Max number of items to persist",
            &[&self.max_items.to_string()],
        ));
        x.append_child(flag(
            "pubsub#persist_items",
            "Persist items to storage",
            self.persist_items,
        ));
        let mut send_last = field(
            "pubsub#send_last_published_item",
            "list-single",
            "When to send the last published item",
            &[self.send_last_published_item.as_str()],
        );
        for when in ["never", "on_sub", "on_sub_and_presence"] {
            send_last.append_child(option(when));
        }
        x.append_child(send_last);
        x.append_child(flag(
            "pubsub#deliver_notifications",
            "Whether to deliver event notifications",
            self.deliver_notifications,
        ));
        x.append_child(flag(
            "pubsub#deliver_payloads",
            "Whether to deliver payloads with event notifications",
            self.deliver_payloads,
        ));
        x.append_child(flag(
            "pubsub#notify_retract",
            "Notify subscribers when items are removed from the node",
            self.notify_retract,
        ));
        x.append_child(flag(
            "pubsub#notify_delete",
            "Notify subscribers when the node is deleted",
            self.notify_delete,
        ));
        let mut kind = field(
            "pubsub#notification_type",
            "list-single",
            "Specify the delivery style for notifications",
            &[&self.notification_type],
        );
        kind.append_child(option("headline"));
        kind.append_child(option("normal"));
        x.append_child(kind);
        let mut publish = field(
            "pubsub#publish_model",
            "list-single",
            "Who may publish items",
            &["publishers"],
        );
        publish.append_child(option("publishers"));
        x.append_child(publish);
        x
    }
}

fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut f = el("field", DATA, &[("var", var), ("type", kind)]);
    if !label.is_empty() {
        crate::stanza::set_attr(&mut f, "label", label);
    }
    for v in values {
        f.append_child(super::super::text_el("value", DATA, v));
    }
    f
}

fn flag(var: &str, label: &str, value: bool) -> Element {
    field(var, "boolean", label, &[if value { "1" } else { "0" }])
}

fn option(value: &str) -> Element {
    let mut o = el("option", DATA, &[]);
    o.append_child(super::super::text_el("value", DATA, value));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect()
    }

    #[test]
    fn publish_options_hold_only_when_every_field_matches() {
        let config = NodeConfig::default()
            .apply(&fields(&[
                ("pubsub#access_model", "whitelist"),
                ("pubsub#max_items", "max"),
                ("pubsub#persist_items", "true"),
                ("pubsub#send_last_published_item", "never"),
            ]))
            .expect("valid");
        assert_eq!(config.max_items, MAX_ITEMS);
        assert!(config.satisfies(&fields(&[("pubsub#access_model", "whitelist")])));
        assert!(config.satisfies(&fields(&[("pubsub#persist_items", "1")])));
        assert!(!config.satisfies(&fields(&[("pubsub#access_model", "open")])));
        assert!(!config.satisfies(&fields(&[("pubsub#unknown", "1")])));
    }

    #[test]
    fn bad_values_are_not_acceptable() {
        let base = NodeConfig::default();
        for (var, value) in [
            ("pubsub#max_items", "0"),
            ("pubsub#max_items", "many"),
            ("pubsub#access_model", "authorize"),
            ("pubsub#persist_items", "maybe"),
            ("pubsub#publish_model", "open"),
        ] {
            let err = base.apply(&fields(&[(var, value)])).expect_err(var);
            assert_eq!(err.condition, "not-acceptable");
        }
    }

    #[test]
    fn the_form_round_trips() {
        let config = NodeConfig::default()
            .apply(&fields(&[("pubsub#access_model", "open")]))
            .expect("valid");
        let mut wrapper = el("configure", "x", &[]);
        wrapper.append_child(config.form());
        let submitted = submitted(&wrapper).expect("a form");
        assert_eq!(NodeConfig::default().apply(&submitted), Ok(config));
    }
}
