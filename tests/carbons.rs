//! Message Carbons (XEP-0280): a second device sees both sides of the conversation.

mod common;

use std::time::Duration;

use common::*;
use rookery::config::ArchiveDefault;
use tokio_xmpp::minidom::Element;

fn carbon<'a>(e: &'a Element, kind: &str) -> Option<&'a Element> {
    let wrapper = child(e, kind).filter(|w| w.ns() == "urn:xmpp:carbons:2")?;
    child(child(wrapper, "forwarded")?, "message")
}

fn is_carbon(kind: &'static str, body: &'static str) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "message"
            && carbon(e, kind).is_some_and(|m| child(m, "body").is_some_and(|b| b.text() == body))
    }
}

async fn enable(c: &mut XmppClient, on: bool) {
    let verb = if on { "enable" } else { "disable" };
    let r = c
        .iq(
            verb,
            &format!("<iq type='set' id='{verb}'><{verb} xmlns='urn:xmpp:carbons:2'/></iq>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
}

#[tokio::test(flavor = "current_thread")]
async fn second_device_sees_sent_and_received_messages() {
    second_device_sees_sent_and_received_messages_with(ArchiveDefault::Always).await;
}

/// With archiving off, a message to an account without carbons goes on without its tree.
#[tokio::test(flavor = "current_thread")]
async fn second_device_sees_sent_and_received_messages_with_archiving_off() {
    second_device_sees_sent_and_received_messages_with(ArchiveDefault::Never).await;
}

async fn second_device_sees_sent_and_received_messages_with(archive: ArchiveDefault) {
    let server = TestServer::start_with(|c| c.archive.default = archive).await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut phone = XmppClient::connect(&server, "alice@localhost/phone", "pw").await;
    let mut desk = XmppClient::connect(&server, "alice@localhost/desk", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    phone
        .send("<presence><priority>5</priority></presence>")
        .await;
    desk.send("<presence/>").await;
    bob.send("<presence/>").await;
    enable(&mut desk, true).await;

    // Received: to the phone's full JID, copied to the desk.
    bob.send("<message to='alice@localhost/phone' type='chat'><body>one</body></message>")
        .await;
    phone.expect("original", is_message_with_body("one")).await;
    let c = desk
        .expect("received carbon", is_carbon("received", "one"))
        .await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(
        carbon(&c, "received").unwrap().attr("from"),
        Some("bob@localhost/b")
    );

    // To the bare JID: the phone (higher priority) gets it, the desk a carbon.
    bob.send("<message to='alice@localhost' type='chat'><body>two</body></message>")
        .await;
    phone.expect("original", is_message_with_body("two")).await;
    desk.expect("received carbon", is_carbon("received", "two"))
        .await;

    // Sent: what the phone sends shows up on the desk.
    phone
        .send("<message to='bob@localhost' type='chat'><body>three</body></message>")
        .await;
    bob.expect("original", is_message_with_body("three")).await;
    let c = desk.expect("sent carbon", is_carbon("sent", "three")).await;
    assert_eq!(
        carbon(&c, "sent").unwrap().attr("to"),
        Some("bob@localhost")
    );

    // Private messages and group chat are not copied; nor is anything once disabled.
    bob.send("<message to='alice@localhost/phone' type='chat'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    phone
        .expect("private original", is_message_with_body("secret"))
        .await;
    desk.expect_none(
        "private carbon",
        Duration::from_millis(300),
        is_carbon("received", "secret"),
    )
    .await;
    enable(&mut desk, false).await;
    bob.send("<message to='alice@localhost/phone' type='chat'><body>four</body></message>")
        .await;
    phone.expect("original", is_message_with_body("four")).await;
    desk.expect_none("carbon after disable", Duration::from_millis(300), |e| {
        carbon(e, "received").is_some()
    })
    .await;
    server.shutdown().await;
}
