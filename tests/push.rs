//! Push Notifications (XEP-0357): a test app server, connected as an external component,
//! receives the pubsub publish when a message arrives for an account whose phone is offline
//! or whose stream-managed session waits to be resumed; nothing after the phone disables push.

mod common;

use std::time::Duration;

use common::*;

const PUSH: &str = "urn:xmpp:push:0";

fn enable(id: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    format!(
        "<iq type='set' id='{id}'><enable xmlns='{PUSH}' jid='push.localhost'{node}>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>device-secret</value></field></x></enable></iq>"
    )
}

/// A server with alice and bob, and a test app server connected as push.localhost.
async fn with_app_server() -> (TestServer, Raw) {
    let server = TestServer::start_with(|c| {
        c.listen.component = "127.0.0.1:0".parse().expect("addr");
        c.components.insert(
            "push.localhost".into(),
            rookery::config::Component {
                secret: "s3cret".into(),
            },
        );
    })
    .await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let addr = server.running.as_ref().expect("running").component_addr;
    let app_server = Raw::component(addr.expect("listener"), "push.localhost", "s3cret").await;
    (server, app_server)
}

#[tokio::test(flavor = "current_thread")]
async fn the_app_server_hears_of_messages_while_the_phone_is_away() {
    let (server, mut app_server) = with_app_server().await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    bob.send("<presence/>").await;

    // The phone registers, with stream management, then its connection drops.
    let mut phone = Raw::login(&server, "alice", "secret", "phone").await;
    phone.send(&enable("e1", Some("n1"))).await;
    let answer = phone.read_iq("e1").await;
    assert!(
        answer.contains("type='result'") || answer.contains("type=\"result\""),
        "{answer}"
    );
    phone
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    phone.read_until("<enabled").await;
    phone.send("<presence/>").await;
    phone.read_for(Duration::from_millis(200)).await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A message while the session waits to be resumed: a notification, with the options.
    bob.send("<message to='alice@localhost' type='chat'><body>are you there?</body></message>")
        .await;
    let publish = app_server.read_until("</iq>").await;
    assert!(
        publish.contains("node='n1'") || publish.contains("node=\"n1\""),
        "{publish}"
    );
    assert!(publish.contains("urn:xmpp:push:summary"), "{publish}");
    assert!(publish.contains("device-secret"), "{publish}");
    assert!(publish.contains("alice@localhost"), "{publish}");
    assert!(
        !publish.contains("are you there"),
        "the content stays private: {publish}"
    );
    // Chat states do not wake the phone.
    bob.send(
        "<message to='alice@localhost' type='chat'>\
         <paused xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )
    .await;
    let quiet = app_server.read_for(Duration::from_millis(400)).await;
    assert!(!quiet.contains("<iq"), "{quiet}");

    // Back on a fresh login (no resumption): the phone disables push; offline messages no
    // longer notify.
    let mut phone = Raw::login(&server, "alice", "secret", "phone2").await;
    phone
        .send(&format!(
            "<iq type='set' id='d1'><disable xmlns='{PUSH}' jid='push.localhost' node='n1'/></iq>"
        ))
        .await;
    phone.read_iq("d1").await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send("<message to='alice@localhost' type='chat'><body>still there?</body></message>")
        .await;
    let quiet = app_server.read_for(Duration::from_millis(600)).await;
    assert!(!quiet.contains("<iq"), "disabled: {quiet}");
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_offline_account_notifies_and_bad_registrations_are_refused() {
    let (server, mut app_server) = with_app_server().await;

    let mut phone = XmppClient::connect(&server, "alice@localhost/phone", "secret").await;
    // Without a node: bad-request. For someone else's account: forbidden.
    let e = phone.iq("b1", &enable("b1", None)).await;
    assert!(
        String::from(&e).contains("bad-request"),
        "{}",
        String::from(&e)
    );
    let other = enable("b2", Some("n1")).replace("<iq ", "<iq to='bob@localhost' ");
    let e = phone.iq("b2", &other).await;
    assert!(
        String::from(&e).contains("forbidden"),
        "{}",
        String::from(&e)
    );
    // The account advertises the feature.
    let info = phone
        .iq(
            "i1",
            "<iq type='get' id='i1' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    assert!(
        String::from(&info).contains(PUSH),
        "{}",
        String::from(&info)
    );
    let ok = phone.iq("e1", &enable("e1", Some("n2"))).await;
    assert_eq!(ok.attr("type"), Some("result"));
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    bob.send("<message to='alice@localhost' type='chat'><body>for later</body></message>")
        .await;
    let publish = app_server.read_until("</iq>").await;
    assert!(publish.contains("n2"), "{publish}");
    bob.close().await;
    server.shutdown().await;
}
