//! Personal eventing (XEP-0163) with tokio-xmpp clients: avatars (XEP-0084) reach contacts
//! whose entity capabilities (XEP-0115) ask for them, bookmarks (XEP-0402) stay private,
//! OMEMO nodes are opened with publish-options and reconfigured the way Conversations does,
//! and bad requests get pubsub errors.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::caps::*;
use common::*;
use std::time::Duration;
use tokio_xmpp::minidom::Element;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";

fn event_item_ids(message: &Element) -> Vec<String> {
    message
        .get_child("event", EVENT)
        .and_then(|ev| ev.get_child("items", EVENT))
        .map(|items| {
            items
                .children()
                .filter_map(|i| i.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn result_items(iq: &Element) -> Vec<&Element> {
    assert_eq!(iq.attr("type"), Some("result"), "{}", String::from(iq));
    iq.get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|items| items.children().collect())
        .unwrap_or_default()
}

/// The defined condition and the pubsub-specific one of an error answer.
fn conditions(iq: &Element) -> (String, Option<String>) {
    assert_eq!(iq.attr("type"), Some("error"), "{}", String::from(iq));
    let error = iq.get_child("error", "jabber:client").expect("error");
    let defined = error
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        .map(|c| c.name().to_owned())
        .expect("a defined condition");
    let specific = error
        .children()
        .find(|c| c.ns() == ERRORS)
        .map(|c| c.name().to_owned());
    (defined, specific)
}

fn publish(id: &str, node: &str, item_id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let options = if options.is_empty() {
        String::new()
    } else {
        let fields: String = options
            .iter()
            .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
            .collect();
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             {fields}</x></publish-options>"
        )
    };
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{item_id}'>{payload}</item></publish>{options}</pubsub></iq>"
    )
}

fn items_request(id: &str, to: &str, node: &str, inner: &str) -> String {
    format!(
        "<iq type='get' id='{id}' to='{to}'><pubsub xmlns='{PUBSUB}'>\
         <items node='{node}'>{inner}</items></pubsub></iq>"
    )
}

const BOOKMARK_OPTIONS: &[(&str, &str)] = &[
    ("pubsub#persist_items", "true"),
    ("pubsub#max_items", "max"),
    ("pubsub#send_last_published_item", "never"),
    ("pubsub#access_model", "whitelist"),
];

#[tokio::test(flavor = "current_thread")]
async fn avatars_reach_contacts_that_want_them() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    befriend(&server, "alice", "bob").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice.send("<presence/>").await;
    let mut bob = online_with_caps(&server, "bob@localhost/b", &[AVATAR_METADATA], true).await;

    let data = BASE64.encode(b"not really a png");
    let published = alice
        .iq(
            "d1",
            &publish(
                "d1",
                AVATAR_DATA,
                "hash1",
                &format!("<data xmlns='{AVATAR_DATA}'>{data}</data>"),
                &[],
            ),
        )
        .await;
    assert_eq!(published.attr("type"), Some("result"));
    let metadata = format!(
        "<metadata xmlns='{AVATAR_METADATA}'><info bytes='16' id='hash1' type='image/png'/></metadata>"
    );
    let published = alice
        .iq(
            "m1",
            &publish("m1", AVATAR_METADATA, "hash1", &metadata, &[]),
        )
        .await;
    let item = published
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish", PUBSUB))
        .and_then(|p| p.get_child("item", PUBSUB))
        .and_then(|i| i.attr("id"));
    assert_eq!(item, Some("hash1"));

    // Bob asked for metadata only: the data node's item never reaches him unasked.
    let event = bob
        .expect(
            "the metadata notification",
            is_items_event("alice@localhost", AVATAR_METADATA),
        )
        .await;
    assert_eq!(event_item_ids(&event), vec!["hash1"]);
    bob.expect_none(
        "a data notification",
        Duration::from_millis(300),
        is_items_event("alice@localhost", AVATAR_DATA),
    )
    .await;
    let fetched = bob
        .iq(
            "get-data",
            &items_request(
                "get-data",
                "alice@localhost",
                AVATAR_DATA,
                "<item id='hash1'/>",
            ),
        )
        .await;
    let items = result_items(&fetched);
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].get_child("data", AVATAR_DATA).map(|d| d.text()),
        Some(data)
    );

    // A contact without a presence subscription may not read presence-access nodes.
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    let refused = carol
        .iq(
            "c1",
            &items_request("c1", "alice@localhost", AVATAR_METADATA, ""),
        )
        .await;
    assert_eq!(
        conditions(&refused),
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );

    // The hash is known now: a second resource is not asked, and gets the last item at once.
    let mut bob2 = online_with_caps(&server, "bob@localhost/two", &[AVATAR_METADATA], false).await;
    let last = bob2
        .expect(
            "the last metadata item on coming online",
            is_items_event("alice@localhost", AVATAR_METADATA),
        )
        .await;
    assert_eq!(event_item_ids(&last), vec!["hash1"]);

    // Discovery: the PEP identity, publish-options, and the nodes each asker may read.
    let info = carol
        .iq(
            "i1",
            &format!(
                "<iq type='get' id='i1' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ),
        )
        .await;
    let query = info.get_child("query", DISCO_INFO).expect("info");
    assert!(query.children().any(|c| c.name() == "identity"
        && c.attr("category") == Some("pubsub")
        && c.attr("type") == Some("pep")));
    assert!(
        query
            .children()
            .any(|c| c.attr("var") == Some("http://jabber.org/protocol/pubsub#publish-options"))
    );
    let disco_items = |iq: &Element| -> Vec<String> {
        iq.get_child("query", DISCO_ITEMS)
            .map(|q| {
                q.children()
                    .filter_map(|i| i.attr("node").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let items_xml = |id: &str| {
        format!("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='{DISCO_ITEMS}'/></iq>")
    };
    let mut by_bob = disco_items(&bob.iq("n1", &items_xml("n1")).await);
    by_bob.sort();
    assert_eq!(by_bob, vec![AVATAR_DATA, AVATAR_METADATA]);
    assert!(disco_items(&carol.iq("n2", &items_xml("n2")).await).is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn bookmarks_stay_private_and_reach_the_owners_resources() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u, "pw").await;
    }
    befriend(&server, "alice", "bob").await;
    let mut phone = online_with_caps(&server, "alice@localhost/phone", &[BOOKMARKS], true).await;
    let mut bob = online_with_caps(&server, "bob@localhost/b", &[BOOKMARKS], false).await;
    let mut laptop = XmppClient::connect(&server, "alice@localhost/laptop", "pw").await;
    laptop.send("<presence/>").await;

    for (id, room) in [
        ("b1", "tea@conference.localhost"),
        ("b2", "coffee@conference.localhost"),
    ] {
        let conference = format!(
            "<conference xmlns='{BOOKMARKS}' name='{id}' autojoin='true'><nick>alice</nick></conference>"
        );
        let done = laptop
            .iq(
                id,
                &publish(id, BOOKMARKS, room, &conference, BOOKMARK_OPTIONS),
            )
            .await;
        assert_eq!(done.attr("type"), Some("result"), "{}", String::from(&done));
        let event = phone
            .expect(
                "the bookmark on the other device",
                is_items_event("alice@localhost", BOOKMARKS),
            )
            .await;
        assert_eq!(event_item_ids(&event), vec![room]);
    }
    bob.expect_none(
        "alice's bookmarks",
        Duration::from_millis(300),
        is_items_event("alice@localhost", BOOKMARKS),
    )
    .await;
    let refused = bob
        .iq("x1", &items_request("x1", "alice@localhost", BOOKMARKS, ""))
        .await;
    assert_eq!(
        conditions(&refused),
        ("not-allowed".into(), Some("closed-node".into()))
    );

    // max_items=max keeps every bookmark.
    let all = laptop
        .iq(
            "all",
            &items_request("all", "alice@localhost", BOOKMARKS, ""),
        )
        .await;
    let ids: Vec<&str> = result_items(&all)
        .iter()
        .filter_map(|i| i.attr("id"))
        .collect();
    assert_eq!(
        ids,
        vec!["tea@conference.localhost", "coffee@conference.localhost"]
    );

    // Options that contradict the node's configuration are a failed precondition.
    let conflicting = laptop
        .iq(
            "b3",
            &publish(
                "b3",
                BOOKMARKS,
                "x@conference.localhost",
                &format!("<conference xmlns='{BOOKMARKS}'/>"),
                &[("pubsub#access_model", "open")],
            ),
        )
        .await;
    assert_eq!(
        conditions(&conflicting),
        ("conflict".into(), Some("precondition-not-met".into()))
    );

    // A retraction with notify reaches the other device.
    let retracted = laptop
        .iq(
            "r1",
            &format!(
                "<iq type='set' id='r1'><pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS}' notify='1'>\
                 <item id='tea@conference.localhost'/></retract></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(retracted.attr("type"), Some("result"));
    let event = phone
        .expect(
            "the retraction",
            is_items_event("alice@localhost", BOOKMARKS),
        )
        .await;
    let retract = event
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .and_then(|i| i.get_child("retract", EVENT))
        .and_then(|r| r.attr("id"));
    assert_eq!(retract, Some("tea@conference.localhost"));

    // send_last_published_item=never: a device coming online is not sent the last bookmark.
    let mut tablet = online_with_caps(&server, "alice@localhost/tablet", &[BOOKMARKS], false).await;
    tablet
        .expect_none(
            "a bookmark on coming online",
            Duration::from_millis(500),
            is_items_event("alice@localhost", BOOKMARKS),
        )
        .await;
    server.shutdown().await;
}

fn configure_form(node: &str, fields: &[(&str, &str)]) -> String {
    let fields: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    format!(
        "<pubsub xmlns='{OWNER}'><configure node='{node}'>\
         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#node_config</value></field>{fields}</x>\
         </configure></pubsub>"
    )
}

#[tokio::test(flavor = "current_thread")]
async fn omemo_nodes_open_by_publish_options_and_reconfiguration() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    befriend(&server, "alice", "bob").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice.send("<presence/>").await;
    let mut bob = online_with_caps(&server, "bob@localhost/b", &[DEVICELIST], true).await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    let devices = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>";
    let open = [("pubsub#access_model", "open")];
    let done = alice
        .iq("p1", &publish("p1", DEVICELIST, "current", devices, &open))
        .await;
    assert_eq!(done.attr("type"), Some("result"));
    bob.expect(
        "the device list",
        is_items_event("alice@localhost", DEVICELIST),
    )
    .await;
    // Open: anyone reads the device list, even without a subscription.
    let read = carol
        .iq(
            "c1",
            &items_request("c1", "alice@localhost", DEVICELIST, ""),
        )
        .await;
    assert_eq!(result_items(&read).len(), 1);

    // The owner reads the configuration form and closes the node to contacts...
    let form = alice
        .iq(
            "f1",
            &format!(
                "<iq type='get' id='f1'><pubsub xmlns='{OWNER}'><configure node='{DEVICELIST}'/></pubsub></iq>"
            ),
        )
        .await;
    let access = form
        .get_child("pubsub", OWNER)
        .and_then(|p| p.get_child("configure", OWNER))
        .and_then(|c| c.get_child("x", "jabber:x:data"))
        .and_then(|x| {
            x.children()
                .find(|f| f.attr("var") == Some("pubsub#access_model"))
        })
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text());
    assert_eq!(access.as_deref(), Some("open"));
    let set = alice
        .iq(
            "f2",
            &format!(
                "<iq type='set' id='f2'>{}</iq>",
                configure_form(DEVICELIST, &[("pubsub#access_model", "presence")])
            ),
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    let refused = carol
        .iq(
            "c2",
            &items_request("c2", "alice@localhost", DEVICELIST, ""),
        )
        .await;
    assert_eq!(conditions(&refused).0, "not-authorized");

    // ...then a client publishing with access_model=open fails its precondition, opens the
    // node again and republishes, as Conversations does.
    let failed = alice
        .iq("p2", &publish("p2", DEVICELIST, "current", devices, &open))
        .await;
    assert_eq!(
        conditions(&failed).1.as_deref(),
        Some("precondition-not-met")
    );
    let reopened = alice
        .iq(
            "f3",
            &format!(
                "<iq type='set' id='f3'>{}</iq>",
                configure_form(DEVICELIST, &open)
            ),
        )
        .await;
    assert_eq!(reopened.attr("type"), Some("result"));
    let done = alice
        .iq("p3", &publish("p3", DEVICELIST, "current", devices, &open))
        .await;
    assert_eq!(done.attr("type"), Some("result"));

    // Items outlive a restart of the server.
    drop((alice, bob, carol));
    let server = server.restart().await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    let read = carol
        .iq(
            "c3",
            &items_request("c3", "alice@localhost", DEVICELIST, ""),
        )
        .await;
    let items = result_items(&read);
    assert_eq!(items.len(), 1, "the same id replaces the item");
    assert!(
        items[0]
            .get_child("list", "eu.siacs.conversations.axolotl")
            .is_some()
    );

    // Deleting the node tells contacts who want it.
    let mut bob = online_with_caps(&server, "bob@localhost/b", &[DEVICELIST], true).await;
    bob.expect(
        "the last device list",
        is_items_event("alice@localhost", DEVICELIST),
    )
    .await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let deleted = alice
        .iq(
            "d1",
            &format!(
                "<iq type='set' id='d1'><pubsub xmlns='{OWNER}'><delete node='{DEVICELIST}'/></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(deleted.attr("type"), Some("result"));
    bob.expect("the deletion", |e| {
        e.get_child("event", EVENT)
            .and_then(|ev| ev.get_child("delete", EVENT))
            .is_some_and(|d| d.attr("node") == Some(DEVICELIST))
    })
    .await;
    let gone = carol
        .iq(
            "c4",
            &items_request("c4", "alice@localhost", DEVICELIST, ""),
        )
        .await;
    assert_eq!(conditions(&gone).0, "item-not-found");
    server.shutdown().await;
}

/// What a bad request is, the request, and the defined and pubsub conditions it gets.
type BadCase = (
    &'static str,
    &'static str,
    (&'static str, Option<&'static str>),
);

#[tokio::test(flavor = "current_thread")]
async fn bad_pubsub_requests_get_clear_errors() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u, "pw").await;
    }
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    let cases: &[BadCase] = &[
        (
            "no node",
            "<publish><item><x xmlns='urn:test'/></item></publish>",
            ("bad-request", Some("nodeid-required")),
        ),
        (
            "no item",
            "<publish node='urn:test'/>",
            ("bad-request", Some("item-required")),
        ),
        (
            "no payload",
            "<publish node='urn:test'><item id='1'/></publish>",
            ("bad-request", Some("payload-required")),
        ),
        (
            "two payloads",
            "<publish node='urn:test'><item><a xmlns='urn:test'/><b xmlns='urn:test'/></item></publish>",
            ("bad-request", Some("invalid-payload")),
        ),
        (
            "unknown node",
            "<items node='urn:none'/>",
            ("item-not-found", None),
        ),
        (
            "explicit subscription",
            "<subscribe node='urn:test' jid='alice@localhost'/>",
            ("feature-not-implemented", Some("unsupported")),
        ),
        (
            "bad max_items",
            "<items node='urn:test' max_items='none'/>",
            ("bad-request", None),
        ),
        (
            "bad publish-options",
            "<publish node='urn:new'><item><x xmlns='urn:test'/></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='pubsub#max_items'><value>0</value></field></x></publish-options>",
            ("conflict", Some("precondition-not-met")),
        ),
        (
            "two operations",
            "<items node='a'/><items node='b'/>",
            ("bad-request", None),
        ),
    ];
    for (i, (what, inner, expected)) in cases.iter().enumerate() {
        let id = format!("bad{i}");
        let kind = if inner.starts_with("<items") {
            "get"
        } else {
            "set"
        };
        let reply = alice
            .iq(
                &id,
                &format!(
                    "<iq type='{kind}' id='{id}'><pubsub xmlns='{PUBSUB}'>{inner}</pubsub></iq>"
                ),
            )
            .await;
        let (defined, specific) = conditions(&reply);
        assert_eq!((defined.as_str(), specific.as_deref()), *expected, "{what}");
    }
    // Nothing above created a node.
    let none = alice
        .iq(
            "list",
            &format!(
                "<iq type='get' id='list' to='alice@localhost'><query xmlns='{DISCO_ITEMS}'/></iq>"
            ),
        )
        .await;
    assert_eq!(
        none.get_child("query", DISCO_ITEMS)
            .map(|q| q.children().count()),
        Some(0)
    );

    // Only the owner publishes or configures; there is no pubsub service on the domain.
    let foreign = bob
        .iq(
            "f1",
            &format!(
                "<iq type='set' id='f1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
                 <publish node='urn:test'><item><x xmlns='urn:test'/></item></publish></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(conditions(&foreign).0, "forbidden");
    let domain = bob
        .iq(
            "f2",
            &format!(
                "<iq type='get' id='f2' to='localhost'><pubsub xmlns='{PUBSUB}'><items node='x'/></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(conditions(&domain).0, "service-unavailable");
    let done = alice
        .iq(
            "ok",
            &publish("ok", "urn:test", "1", "<x xmlns='urn:test'/>", &[]),
        )
        .await;
    assert_eq!(done.attr("type"), Some("result"));
    let bad_config = alice
        .iq(
            "c1",
            &format!(
                "<iq type='set' id='c1'>{}</iq>",
                configure_form("urn:test", &[("pubsub#max_items", "100000")])
            ),
        )
        .await;
    assert_eq!(conditions(&bad_config).0, "not-acceptable");
    let unknown_field = alice
        .iq(
            "c2",
            &format!(
                "<iq type='set' id='c2'>{}</iq>",
                configure_form("urn:test", &[("pubsub#made_up", "1")])
            ),
        )
        .await;
    assert_eq!(conditions(&unknown_field).0, "not-acceptable");
    let create_existing = alice
        .iq(
            "c3",
            &format!(
                "<iq type='set' id='c3'><pubsub xmlns='{PUBSUB}'><create node='urn:test'/></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(conditions(&create_existing).0, "conflict");
    server.shutdown().await;
}
