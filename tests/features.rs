//! Feature modules through real clients: disco, ping, version, vCard, blocking, registration.

mod common;

use std::time::Duration;

use common::*;
use rookery::config::ArchiveDefault;
use tokio_xmpp::minidom::Element;

#[tokio::test(flavor = "current_thread")]
async fn disco_ping_and_version() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let info = alice
        .iq(
            "d",
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    let query = child(&info, "query").expect("query");
    let identity = child(query, "identity").expect("identity");
    assert_eq!(identity.attr("category"), Some("server"));
    let features: Vec<&str> = query
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:blocking",
        "vcard-temp",
        "msgoffline",
        "jabber:iq:private",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let items = alice
        .iq(
            "i",
            "<iq type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    assert_eq!(items.attr("type"), Some("result"));
    let pong = alice
        .iq(
            "p",
            "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let v = alice
        .iq(
            "v",
            "<iq type='get' id='v' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
        )
        .await;
    let q = child(&v, "query").expect("version");
    assert_eq!(child(q, "name").map(|n| n.text()), Some("rookery".into()));
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn vcard_set_and_get() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let empty = alice
        .iq(
            "g0",
            "<iq type='get' id='g0'><vCard xmlns='vcard-temp'/></iq>",
        )
        .await;
    assert!(
        child(&empty, "vCard").is_some(),
        "an empty vCard for oneself"
    );
    let set = alice
        .iq(
            "s",
            "<iq type='set' id='s'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard></iq>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    let got = bob
        .iq(
            "g",
            "<iq type='get' id='g' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        )
        .await;
    let vcard = child(&got, "vCard").expect("vCard");
    assert_eq!(
        child(vcard, "FN").map(|f| f.text()),
        Some("Alice Liddell".into())
    );
    assert_eq!(got.attr("from"), Some("alice@localhost"));
    // Nobody else may change it.
    let denied = bob
        .iq(
            "x",
            "<iq type='set' id='x' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Bob</FN></vCard></iq>",
        )
        .await;
    assert_eq!(denied.attr("type"), Some("error"));
    server.shutdown().await;
}

/// The avatar hash (XEP-0153) in each of alice's presences as bob sees it: None without the
/// `<x/>`, Some("") for "no avatar".
async fn photo_seen_by(bob: &mut XmppClient, status: &'static str) -> Option<String> {
    let p = bob
        .expect("alice's presence", move |e| {
            e.name() == "presence"
                && e.attr("from") == Some("alice@localhost/a")
                && child(e, "status").is_some_and(|s| s.text() == status)
        })
        .await;
    p.get_child("x", "vcard-temp:x:update").map(|x| {
        x.get_child("photo", "vcard-temp:x:update")
            .map(|p| p.text())
            .unwrap_or_else(|| "not ready".to_owned())
    })
}

#[tokio::test(flavor = "current_thread")]
async fn presence_carries_the_vcard_avatar_hash() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    befriend(&server, "alice", "bob").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice.send("<presence><status>1</status></presence>").await;
    assert_eq!(
        photo_seen_by(&mut bob, "1").await,
        None,
        "no vCard, no hash"
    );

    // "abc", whose SHA-1 is well known, as the photo.
    let set = alice
        .iq(
            "s1",
            "<iq type='set' id='s1'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>\
             <BINVAL>YWJj</BINVAL></PHOTO></vCard></iq>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    alice.send("<presence><status>2</status></presence>").await;
    assert_eq!(
        photo_seen_by(&mut bob, "2").await.as_deref(),
        Some("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    // A client that says it is not ready yet keeps its word, in directed presence too.
    alice
        .send("<presence><status>3</status><x xmlns='vcard-temp:x:update'/></presence>")
        .await;
    assert_eq!(
        photo_seen_by(&mut bob, "3").await.as_deref(),
        Some("not ready")
    );
    alice
        .send("<presence to='bob@localhost/b'><status>4</status></presence>")
        .await;
    assert_eq!(
        photo_seen_by(&mut bob, "4").await.as_deref(),
        Some("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    // A vCard without a photo: an empty hash says "no avatar".
    alice
        .iq(
            "s2",
            "<iq type='set' id='s2'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>",
        )
        .await;
    alice.send("<presence><status>5</status></presence>").await;
    assert_eq!(photo_seen_by(&mut bob, "5").await.as_deref(), Some(""));
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_command() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    let block = bob
        .iq(
            "b",
            "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>",
        )
        .await;
    assert_eq!(block.attr("type"), Some("result"));
    let list = bob
        .iq(
            "l",
            "<iq type='get' id='l'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        )
        .await;
    let items: Vec<_> = child(&list, "blocklist")
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(items, ["alice@localhost"]);

    alice
        .send("<message to='bob@localhost' type='chat'><body>let me in</body></message>")
        .await;
    let err = alice
        .expect("bounce from a blocker", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    assert!(child(child(&err, "error").unwrap(), "service-unavailable").is_some());
    bob.expect_none("blocked message", Duration::from_millis(300), |e| {
        e.name() == "message"
    })
    .await;
    // bob cannot write to alice while he blocks her either.
    bob.send("<message to='alice@localhost' id='o' type='chat'><body>hi</body></message>")
        .await;
    let err = bob
        .expect("not-acceptable", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    let error = child(&err, "error").unwrap();
    assert!(child(error, "not-acceptable").is_some());
    assert!(child(error, "blocked").is_some_and(|b| b.ns() == "urn:xmpp:blocking:errors"));

    bob.iq(
        "u",
        "<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    )
    .await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>now?</body></message>")
        .await;
    bob.expect("message after unblock", is_message_with_body("now?"))
        .await;
    server.shutdown().await;
}

/// The router answers "blocks nobody" from a note in the account's session-table entry once
/// the empty block list is cached; a block made while messages flow must clear it at once.
#[tokio::test]
async fn a_block_made_while_messages_flow_takes_effect_at_once() {
    a_block_made_while_messages_flow_takes_effect_at_once_with(ArchiveDefault::Always).await;
}

/// With archiving off, messages before the block go on without their trees; the block still
/// stops the next one.
#[tokio::test]
async fn a_block_made_while_messages_flow_takes_effect_at_once_with_archiving_off() {
    a_block_made_while_messages_flow_takes_effect_at_once_with(ArchiveDefault::Never).await;
}

async fn a_block_made_while_messages_flow_takes_effect_at_once_with(archive: ArchiveDefault) {
    let server = TestServer::start_with(|c| c.archive.default = archive).await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    exchange(&mut alice, &mut bob, 3).await;
    let sessions = &server.running.as_ref().expect("running").server.sessions;
    let bob_bare = rookery::jid::BareJid::new("bob@localhost").expect("jid");
    assert!(
        sessions.summary(&bob_bare).hints.blocks_nobody,
        "the empty list is noted by now"
    );

    bob.iq(
        "b",
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>",
    )
    .await;
    assert!(!sessions.summary(&bob_bare).hints.blocks_nobody);
    alice
        .send("<message id='in' to='bob@localhost/b' type='chat'><body>blocked?</body></message>")
        .await;
    alice
        .expect("the bounce", |e| {
            e.name() == "message" && e.attr("id") == Some("in") && e.attr("type") == Some("error")
        })
        .await;
    bob.send("<message id='out' to='alice@localhost/a' type='chat'><body>hi</body></message>")
        .await;
    let err = bob
        .expect("not-acceptable", |e| {
            e.name() == "message" && e.attr("id") == Some("out") && e.attr("type") == Some("error")
        })
        .await;
    assert!(child(child(&err, "error").unwrap(), "not-acceptable").is_some());
    bob.expect_none("blocked message", Duration::from_millis(300), |e| {
        e.name() == "message" && e.attr("type") != Some("error")
    })
    .await;
    server.shutdown().await;
}

fn is_presence(from: &'static str, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "presence"
            && e.attr("from").is_some_and(|f| f.starts_with(from))
            && e.attr("type") == kind
    }
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_and_presence() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    befriend(&server, "alice", "bob").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    alice.send("<presence/>").await;
    carol.send("<presence/>").await;
    bob.send("<presence><status>here</status></presence>").await;
    alice
        .expect("bob's presence", is_presence("bob@localhost/b", None))
        .await;

    // Blocking a subscriber: it sees the user go unavailable. Blocking a stranger: nothing,
    // since it never saw the user's presence (XEP-0191 §3.3.2).
    bob.iq(
        "b1",
        "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>\
         <item jid='alice@localhost'/><item jid='carol@localhost'/></block></iq>",
    )
    .await;
    alice
        .expect(
            "bob unavailable",
            is_presence("bob@localhost/b", Some("unavailable")),
        )
        .await;
    carol
        .expect_none(
            "presence from bob",
            Duration::from_millis(300),
            is_presence("bob@localhost", Some("unavailable")),
        )
        .await;

    // While blocked, alice gets none of bob's broadcasts, and her probe is not answered.
    bob.send("<presence><status>busy</status></presence>").await;
    alice
        .expect_none(
            "a broadcast from a blocker",
            Duration::from_millis(300),
            is_presence("bob@localhost/b", None),
        )
        .await;

    // An iq result from a blocked entity is dropped, not bounced back to it.
    alice
        .send("<iq type='result' id='stray' to='bob@localhost/b'/>")
        .await;
    alice
        .expect_none(
            "an error for an iq result",
            Duration::from_millis(300),
            |e| e.name() == "iq" && e.attr("id") == Some("stray"),
        )
        .await;

    // Unblocking a subscriber sends it the current presence (§3.4).
    bob.iq(
        "u1",
        "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'>\
         <item jid='alice@localhost'/></unblock></iq>",
    )
    .await;
    let p = alice
        .expect("bob's presence again", is_presence("bob@localhost/b", None))
        .await;
    let status = child(&p, "status").map(|s| s.text());
    assert_eq!(status.as_deref(), Some("busy"));
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn offline_messages_from_a_sender_blocked_since_are_not_delivered() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>stored one</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>stored two</body></message>")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Bob blocks alice before he ever comes online (no presence yet: nothing is delivered).
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.iq(
        "b",
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>",
    )
    .await;
    bob.send("<presence/>").await;
    bob.expect_none(
        "a message from a blocked sender",
        Duration::from_millis(500),
        |e| e.name() == "message",
    )
    .await;
    server.shutdown().await;
}

async fn register(server: &TestServer, user: &str, password: &str) -> String {
    let mut raw = Raw::tls(server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send("<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    raw.read_iq("g").await;
    raw.send(&format!(
        "<iq type='set' id='s'><query xmlns='jabber:iq:register'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    ))
    .await;
    raw.read_iq("s").await
}

#[tokio::test(flavor = "current_thread")]
async fn in_band_registration_when_open() {
    let server = TestServer::start_with(|c| c.registration.open = true).await;
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(
        features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );

    let reply = register(&server, "newbie", "fresh").await;
    assert!(reply.contains("type='result'"), "{reply}");
    let c = XmppClient::connect(&server, "newbie@localhost/x", "fresh").await;
    c.close().await;
    let reply = register(&server, "newbie", "other").await;
    assert!(reply.contains("<conflict"), "{reply}");

    // Password change and account removal once logged in.
    let mut raw = Raw::login(&server, "newbie", "fresh", "r").await;
    raw.send("<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>newbie</username><password>changed</password></query></iq>")
        .await;
    let r = raw.read_iq("pw").await;
    assert!(r.contains("type='result'"), "{r}");
    // At once: the server drops the credentials it kept from the logins before.
    assert!(!Raw::password_works(&server, "newbie", "fresh").await);
    let c = XmppClient::connect(&server, "newbie@localhost/y", "changed").await;
    c.close().await;
    raw.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("id='rm'"), "{closed}");
    assert!(closed.contains("<not-authorized"), "{closed}");
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("newbie", "changed")
    ))
    .await;
    assert!(
        raw.read_until("</failure>")
            .await
            .contains("<not-authorized")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn in_band_registration_when_closed() {
    let server = TestServer::start().await;
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(!features.contains("iq-register"), "{features}");
    let reply = register(&server, "newbie", "fresh").await;
    assert!(reply.contains("<service-unavailable"), "{reply}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_inactive_client_gets_presence_and_chat_states_with_the_next_message() {
    // XEP-0352: alice (a raw client, since CSI elements are not stanzas) goes inactive; bob's
    // presence changes and chat states wait, his next message brings them all, in order.
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let mut alice = Raw::login(&server, "alice", "secret", "phone").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/desk", "secret").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice.read_for(Duration::from_millis(300)).await;

    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    // The inactive element has no answer: a ping round trip shows it was taken.
    alice
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.read_iq("p1").await;
    for show in ["away", "xa"] {
        bob.send(&format!(
            "<presence to='alice@localhost/phone'><show>{show}</show></presence>"
        ))
        .await;
    }
    bob.send(
        "<message to='alice@localhost/phone' type='chat'>\
         <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )
    .await;
    let held = alice.read_for(Duration::from_millis(500)).await;
    assert!(
        !held.contains("<show>") && !held.contains("composing"),
        "{held}"
    );

    bob.send("<message to='alice@localhost/phone' type='chat'><body>wake up</body></message>")
        .await;
    let burst = alice.read_until("wake up").await;
    let xa = burst.find("<show>xa</show>").expect("the newest presence");
    let composing = burst.find("composing").expect("the chat state");
    assert!(xa < composing, "held stanzas keep their order: {burst}");
    assert!(
        !burst.contains("<show>away</show>"),
        "only the newest presence: {burst}"
    );

    // Active again: presence flows at once.
    alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    bob.send("<presence to='alice@localhost/phone'><show>chat</show></presence>")
        .await;
    alice.read_until("<show>chat</show>").await;

    // An unknown element in the CSI namespace is a stream error.
    alice.send("<sleepy xmlns='urn:xmpp:csi:0'/>").await;
    let closed = alice.read_until("</stream:stream>").await;
    assert!(closed.contains("unsupported-stanza-type"), "{closed}");
    bob.close().await;
    server.shutdown().await;
}

const PRIVATE: &str = "jabber:iq:private";

/// The fragment in a private storage result.
fn fragment(e: &Element) -> Element {
    assert_eq!(e.attr("type"), Some("result"), "{e:?}");
    let query = e.get_child("query", PRIVATE).expect("query");
    query.children().next().expect("a fragment").clone()
}

#[tokio::test(flavor = "current_thread")]
async fn private_xml_storage_keeps_fragments_for_their_owner_alone() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let get = |id: &str, fragment: &str| {
        format!("<iq type='get' id='{id}'><query xmlns='{PRIVATE}'>{fragment}</query></iq>")
    };
    let set = |id: &str, fragments: &str| {
        format!("<iq type='set' id='{id}'><query xmlns='{PRIVATE}'>{fragments}</query></iq>")
    };

    // Nothing stored yet: the empty element comes back.
    let r = alice
        .iq("g0", &get("g0", "<storage xmlns='storage:bookmarks'/>"))
        .await;
    let f = fragment(&r);
    assert_eq!(
        (f.name(), f.ns().as_str()),
        ("storage", "storage:bookmarks")
    );
    assert_eq!(f.children().count(), 0);

    // Two fragments in one set (XEP-0048 bookmarks and the XEP-0083 delimiter Pidgin asks for).
    let r = alice
        .iq(
            "s1",
            &set(
                "s1",
                "<storage xmlns='storage:bookmarks'><conference jid='room@conference.localhost' \
                 autojoin='true' name='Room'><nick>al</nick></conference></storage>\
                 <roster xmlns='roster:delimiter'>::</roster>",
            ),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let bookmarks = fragment(
        &alice
            .iq("g1", &get("g1", "<storage xmlns='storage:bookmarks'/>"))
            .await,
    );
    let conference = bookmarks.children().next().expect("a bookmark");
    assert_eq!(conference.attr("jid"), Some("room@conference.localhost"));
    assert_eq!(
        child(conference, "nick").map(|n| n.text()).as_deref(),
        Some("al")
    );
    let delimiter = fragment(
        &alice
            .iq("g2", &get("g2", "<roster xmlns='roster:delimiter'/>"))
            .await,
    );
    assert_eq!(delimiter.text(), "::");
    // The same name in another namespace is another fragment.
    let notes = fragment(
        &alice
            .iq("g3", &get("g3", "<storage xmlns='storage:rosternotes'/>"))
            .await,
    );
    assert_eq!(notes.children().count(), 0);
    // An empty element removes what was kept under its name.
    alice
        .iq("s2", &set("s2", "<roster xmlns='roster:delimiter'/>"))
        .await;
    let delimiter = fragment(
        &alice
            .iq("g4", &get("g4", "<roster xmlns='roster:delimiter'/>"))
            .await,
    );
    assert_eq!(delimiter.text(), "");

    // Bad requests, each with its error, and nothing changed.
    let r = alice.iq("e1", &set("e1", "")).await;
    assert_eq!(error_condition(&r), "not-acceptable", "an empty set: {r:?}");
    let r = alice.iq("e2", &get("e2", "")).await;
    assert_eq!(error_condition(&r), "not-acceptable", "an empty get: {r:?}");
    let r = alice.iq("e3", &set("e3", "<prefs>mine</prefs>")).await;
    assert_eq!(
        error_condition(&r),
        "not-acceptable",
        "no namespace of its own: {r:?}"
    );
    let r = alice
        .iq("e4", &get("e4", "<a xmlns='x:one'/><b xmlns='x:two'/>"))
        .await;
    assert_eq!(error_condition(&r), "bad-request", "two at once: {r:?}");
    let too_many: String = (0..300)
        .map(|i| format!("<f{i} xmlns='x:many'>{i}</f{i}>"))
        .collect();
    let r = alice.iq("e5", &set("e5", &too_many)).await;
    assert_eq!(
        error_condition(&r),
        "resource-constraint",
        "300 fragments: {r:?}"
    );
    let none = fragment(&alice.iq("g5", &get("g5", "<f1 xmlns='x:many'/>")).await);
    assert_eq!(none.text(), "", "a refused set stores nothing");

    // Another account's storage is forbidden, to read and to write.
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    for (id, kind) in [("b1", "get"), ("b2", "set")] {
        let r = bob
            .iq(
                id,
                &format!(
                    "<iq type='{kind}' id='{id}' to='alice@localhost'><query xmlns='{PRIVATE}'>\
                     <storage xmlns='storage:bookmarks'/></query></iq>"
                ),
            )
            .await;
        assert_eq!(error_condition(&r), "forbidden", "{kind}: {r:?}");
    }
    bob.close().await;
    alice.close().await;

    // Kept across a restart.
    let server = server.restart().await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let bookmarks = fragment(
        &alice
            .iq("g6", &get("g6", "<storage xmlns='storage:bookmarks'/>"))
            .await,
    );
    assert_eq!(bookmarks.children().count(), 1);
    server.shutdown().await;
}
