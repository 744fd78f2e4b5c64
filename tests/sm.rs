//! Stream Management (XEP-0198): acks both ways, resumption after a dropped connection with
//! exactly the unacknowledged stanzas, and a session not resumed in time leaving them offline.
//! The phone is a raw client (stream management elements are not stanzas); the sender is a
//! tokio-xmpp client.

mod common;

use std::time::Duration;

use common::sm::*;
use common::*;
use rookery::config::ArchiveDefault;

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_connection_resumes_with_exactly_the_unacknowledged_stanzas() {
    a_dropped_connection_resumes_with_exactly_the_unacknowledged_stanzas_with(
        ArchiveDefault::Always,
    )
    .await;
}

/// With archiving off, bob's messages reach the phone's queue as the bytes bob's client sent.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_connection_resumes_with_exactly_the_unacknowledged_stanzas_with_archiving_off() {
    a_dropped_connection_resumes_with_exactly_the_unacknowledged_stanzas_with(
        ArchiveDefault::Never,
    )
    .await;
}

async fn a_dropped_connection_resumes_with_exactly_the_unacknowledged_stanzas_with(
    archive: ArchiveDefault,
) {
    let server = TestServer::start_with(|c| c.archive.default = archive).await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    bob.send("<presence/>").await;
    let (mut phone, id) = phone(&server, "secret").await;

    // Acks from the server count what the phone sent after enabling: its presence and a ping.
    phone
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    phone.read_iq("p1").await;
    phone.send(&format!("<r xmlns='{SM}'/>")).await;
    phone.read_until("<a ").await;
    let ack = format!("<a {}", phone.read_until("/>").await);
    assert_eq!(attr(&ack, "a", "h").as_deref(), Some("2"), "{ack}");

    // Five messages arrive; the phone has handled two when its connection drops mid-burst.
    send_bodies(&mut bob, 1..=5).await;
    let got = phone.read_until("m5</body>").await;
    assert_eq!(
        bodies(&got),
        ["m1", "m2", "m3", "m4", "m5"],
        "every message once: {got}"
    );
    drop(phone);
    // While it is away, three more.
    send_bodies(&mut bob, 6..=8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The phone handled four stanzas: its own presence, the ping's result, m1 and m2.
    let mut back = authenticated(&server, "secret").await;
    back.send(&format!("<resume xmlns='{SM}' h='4' previd='{id}'/>"))
        .await;
    let resumed = back.read_until("m8</body>").await;
    assert!(resumed.contains("<resumed"), "{resumed}");
    assert_eq!(
        attr(&resumed, "resumed", "previd").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        bodies(&resumed),
        ["m3", "m4", "m5", "m6", "m7", "m8"],
        "no losses and no duplicates: {resumed}"
    );
    // The resumed session is the same resource, alive: a message reaches it at once.
    send_bodies(&mut bob, 9..=9).await;
    back.read_until("m9</body>").await;

    // A second resumption of an id that was taken over, by someone else, fails.
    server.add_user("mallory", "secret").await;
    let mut other = Raw::tls(&server).await;
    other.send(&stream_header(DOMAIN)).await;
    other.read_until("</stream:features>").await;
    other
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            plain("mallory", "secret")
        ))
        .await;
    other.read_until("<success").await;
    other.send(&stream_header(DOMAIN)).await;
    other.read_until("</stream:features>").await;
    other
        .send(&format!("<resume xmlns='{SM}' h='0' previd='{id}'/>"))
        .await;
    let failed = other.read_until("</failed>").await;
    assert!(failed.contains("item-not-found"), "{failed}");
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_session_not_resumed_in_time_leaves_its_unacknowledged_messages_offline() {
    let server = TestServer::start_with(|c| c.limits.resume_seconds = 1).await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    bob.send("<presence/>").await;
    let (mut phone, id) = phone(&server, "secret").await;
    send_bodies(&mut bob, 1..=3).await;
    phone.read_until("m3</body>").await;
    drop(phone);
    send_bodies(&mut bob, 4..=4).await;

    let store = &server.running.as_ref().expect("running").server.store;
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.offline_count("alice").await.expect("count") < 4 {
        assert!(tokio::time::Instant::now() < deadline, "not stored offline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Too late to resume: the client is told, binds anew and gets them from offline storage.
    let mut back = authenticated(&server, "secret").await;
    back.send(&format!("<resume xmlns='{SM}' h='0' previd='{id}'/>"))
        .await;
    let failed = back.read_until("</failed>").await;
    assert!(failed.contains("item-not-found"), "{failed}");
    back.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>phone</resource></bind></iq>",
    )
    .await;
    back.read_iq("b1").await;
    back.send("<presence/>").await;
    let offline = back.read_until("m4</body>").await;
    assert_eq!(bodies(&offline), ["m1", "m2", "m3", "m4"], "{offline}");
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn stream_management_bad_input() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    // Enabling before binding a resource is refused.
    let mut early = authenticated(&server, "secret").await;
    early.send(&format!("<enable xmlns='{SM}'/>")).await;
    let failed = early.read_until("</failed>").await;
    assert!(failed.contains("unexpected-request"), "{failed}");

    // Enabling twice is refused; the session goes on.
    let (mut phone, _) = phone(&server, "secret").await;
    phone.send(&format!("<enable xmlns='{SM}'/>")).await;
    let failed = phone.read_until("</failed>").await;
    assert!(failed.contains("unexpected-request"), "{failed}");
    // Acknowledging more than was sent ends the stream.
    phone.send(&format!("<a xmlns='{SM}' h='1000'/>")).await;
    let closed = phone.read_until("</stream:stream>").await;
    assert!(closed.contains("undefined-condition"), "{closed}");
    server.shutdown().await;
}

/// Whether alice's phone session takes stanzas already written out (see `SessionSender`).
fn phone_writes_through(server: &TestServer) -> bool {
    let sessions = &server.running.as_ref().expect("running").server.sessions;
    let jid = rookery::jid::FullJid::new("alice@localhost/phone").expect("jid");
    match sessions.resource(&jid).map(|r| r.sender) {
        Some(rookery::router::table::Endpoint::Local(s)) => s.writes_through(),
        other => panic!("the phone is bound here: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn stanzas_come_written_out_unless_the_session_holds_them() {
    stanzas_come_written_out_unless_the_session_holds_them_with(ArchiveDefault::Always).await;
}

/// With archiving off, messages for the phone go on as their client wrote them; those that
/// arrive while it holds stanzas back are read back into trees.
#[tokio::test(flavor = "current_thread")]
async fn stanzas_come_written_out_unless_the_session_holds_them_with_archiving_off() {
    stanzas_come_written_out_unless_the_session_holds_them_with(ArchiveDefault::Never).await;
}

async fn stanzas_come_written_out_unless_the_session_holds_them_with(archive: ArchiveDefault) {
    let server = TestServer::start_with(|c| c.archive.default = archive).await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    bob.send("<presence/>").await;
    let mut phone = Raw::login(&server, "alice", "secret", "phone").await;
    phone.send("<presence/>").await;
    let ping = |id: &str| format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>");
    phone.send(&ping("p1")).await;
    phone.read_iq("p1").await;
    assert!(
        phone_writes_through(&server),
        "a plain session writes through"
    );
    send_bodies(&mut bob, 1..=1).await;
    phone.read_until("m1</body>").await;

    // Inactive (XEP-0352): held stanzas need trees, until the client is active again.
    phone.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    phone.send(&ping("p2")).await;
    phone.read_iq("p2").await;
    assert!(!phone_writes_through(&server));
    phone.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    phone.send(&ping("p3")).await;
    phone.read_iq("p3").await;
    assert!(phone_writes_through(&server));

    // Stream management keeps the bytes of each stanza until it is acknowledged, so the
    // session still takes them written out: the phone's ack of the ping's result and both
    // messages is taken, and the stream goes on.
    phone.send(&format!("<enable xmlns='{SM}'/>")).await;
    phone.read_until("<enabled").await;
    phone.send(&ping("p4")).await;
    phone.read_iq("p4").await;
    assert!(phone_writes_through(&server));
    send_bodies(&mut bob, 2..=3).await;
    let got = phone.read_until("m3</body>").await;
    assert_eq!(bodies(&got), ["m2", "m3"], "{got}");
    phone
        .send(&format!("<a xmlns='{SM}' h='3'/><r xmlns='{SM}'/>"))
        .await;
    phone.read_until("<a ").await;
    let ack = format!("<a {}", phone.read_until("/>").await);
    assert_eq!(
        attr(&ack, "a", "h").as_deref(),
        Some("1"),
        "the ping: {ack}"
    );
    bob.close().await;
    server.shutdown().await;
}
