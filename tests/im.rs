//! Instant messaging with tokio-xmpp clients: roster, subscriptions, presence, messages,
//! offline storage, resource conflicts, and what survives a restart.

mod common;

use std::time::Duration;

use common::*;
use tokio_xmpp::minidom::Element;

const ROSTER: &str = "jabber:iq:roster";

fn roster_item<'a>(iq: &'a Element, jid: &str) -> Option<&'a Element> {
    child(iq, "query")?
        .children()
        .find(|i| i.attr("jid") == Some(jid))
}

fn is_push_for(jid: &'static str, subscription: &'static str) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && roster_item(e, jid).is_some_and(|i| i.attr("subscription") == Some(subscription))
    }
}

fn is_presence(from: String, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "presence" && e.attr("from") == Some(from.as_str()) && e.attr("type") == kind
    }
}

async fn roster_get(c: &mut XmppClient, id: &str) -> Element {
    c.iq(
        id,
        &format!("<iq type='get' id='{id}'><query xmlns='{ROSTER}'/></iq>"),
    )
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn subscription_handshake_both_ways_with_pushes_to_every_resource() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let mut alice1 = XmppClient::connect(&server, "alice@localhost/one", "a").await;
    let mut alice2 = XmppClient::connect(&server, "alice@localhost/two", "a").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "b").await;
    for (c, id) in [(&mut alice1, "r1"), (&mut alice2, "r2"), (&mut bob, "r3")] {
        let r = roster_get(c, id).await;
        assert_eq!(r.attr("type"), Some("result"));
        c.send("<presence/>").await;
    }

    // alice adds bob with a name and a group: both of her resources get the push.
    let set = alice1
        .iq(
            "add",
            &format!(
                "<iq type='set' id='add'><query xmlns='{ROSTER}'><item jid='bob@localhost' \
                 name='Bob'><group>Friends</group></item></query></iq>"
            ),
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    for c in [&mut alice1, &mut alice2] {
        let push = c
            .expect("roster push", is_push_for("bob@localhost", "none"))
            .await;
        let item = roster_item(&push, "bob@localhost").unwrap();
        assert_eq!(item.attr("name"), Some("Bob"));
        assert!(child(&push, "query").unwrap().attr("ver").is_some());
    }

    // alice → subscribe → bob; bob approves.
    alice1
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    for c in [&mut alice1, &mut alice2] {
        let push = c
            .expect("pending-out push", |e| {
                roster_item(e, "bob@localhost").is_some_and(|i| i.attr("ask") == Some("subscribe"))
            })
            .await;
        assert_eq!(push.attr("type"), Some("set"));
    }
    let request = bob
        .expect("subscription request", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await;
    assert_eq!(request.attr("from"), Some("alice@localhost"));
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    bob.expect("bob's push: from", is_push_for("alice@localhost", "from"))
        .await;
    for c in [&mut alice1, &mut alice2] {
        c.expect("alice's push: to", is_push_for("bob@localhost", "to"))
            .await;
        // Approval brings bob's current presence.
        c.expect(
            "bob's presence",
            is_presence("bob@localhost/b".into(), None),
        )
        .await;
    }

    // bob → subscribe → alice; alice approves from her second resource.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice2
        .expect("request at alice", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await;
    alice2
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    for c in [&mut alice1, &mut alice2] {
        c.expect("alice's push: both", is_push_for("bob@localhost", "both"))
            .await;
    }
    bob.expect("bob's push: both", is_push_for("alice@localhost", "both"))
        .await;

    for (c, id, contact) in [
        (&mut alice1, "g1", "bob@localhost"),
        (&mut bob, "g2", "alice@localhost"),
    ] {
        let r = roster_get(c, id).await;
        let item = roster_item(&r, contact).expect("item");
        assert_eq!(item.attr("subscription"), Some("both"));
        assert_eq!(item.attr("ask"), None);
    }

    // Roster versioning: the current version gets an empty result.
    let r = roster_get(&mut alice1, "v1").await;
    let ver = child(&r, "query").unwrap().attr("ver").unwrap().to_owned();
    let r = alice1
        .iq(
            "v2",
            &format!("<iq type='get' id='v2'><query xmlns='{ROSTER}' ver='{ver}'/></iq>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(child(&r, "query").is_none(), "{}", String::from(&r));

    // Removing the item cancels both subscriptions.
    alice1
        .iq(
            "rm",
            &format!(
                "<iq type='set' id='rm'><query xmlns='{ROSTER}'><item jid='bob@localhost' \
                 subscription='remove'/></query></iq>"
            ),
        )
        .await;
    alice2
        .expect("remove push", is_push_for("bob@localhost", "remove"))
        .await;
    bob.expect("bob's push: none", is_push_for("alice@localhost", "none"))
        .await;
    server.shutdown().await;
}

async fn subscribe_both_ways(server: &TestServer, a: &str, b: &str) {
    let mut ca = Raw::login(server, a, "pw", "setup").await;
    let mut cb = Raw::login(server, b, "pw", "setup").await;
    cb.send("<presence/>").await;
    ca.send(&format!("<presence to='{b}@localhost' type='subscribe'/>"))
        .await;
    cb.read_until("type='subscribe'").await;
    cb.send(&format!("<presence to='{a}@localhost' type='subscribed'/>"))
        .await;
    cb.send(&format!("<presence to='{a}@localhost' type='subscribe'/>"))
        .await;
    ca.send("<presence/>").await;
    ca.read_until("type='subscribe'").await;
    ca.send(&format!("<presence to='{b}@localhost' type='subscribed'/>"))
        .await;
    // Wait until both sides see `both` before going on.
    for (c, other, id) in [(&mut ca, b, "x1"), (&mut cb, a, "x2")] {
        for _ in 0..50 {
            c.send(&format!(
                "<iq type='get' id='{id}'><query xmlns='{ROSTER}'/></iq>"
            ))
            .await;
            let r = c.read_until("</iq>").await;
            if r.contains(&format!("jid='{other}@localhost'")) && r.contains("subscription='both'")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.send("</stream:stream>").await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn presence_reaches_subscribers_and_unavailable_follows_disconnect() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    subscribe_both_ways(&server, "alice", "bob").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice.send("<presence/>").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.send("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = alice
        .expect("bob available", is_presence("bob@localhost/b".into(), None))
        .await;
    assert_eq!(child(&p, "show").map(|s| s.text()), Some("away".into()));
    // bob's initial presence brings him alice's presence (probe answered).
    bob.expect(
        "alice available",
        is_presence("alice@localhost/a".into(), None),
    )
    .await;
    bob.close().await;
    alice
        .expect(
            "bob unavailable",
            is_presence("bob@localhost/b".into(), Some("unavailable")),
        )
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn messages_to_bare_and_full_jid() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    bob.expect("own presence", |e| e.name() == "presence").await;

    alice
        .send("<message to='bob@localhost' type='chat'><body>to bare</body></message>")
        .await;
    let m = bob
        .expect("message to bare", is_message_with_body("to bare"))
        .await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    alice
        .send("<message to='bob@localhost/b' type='chat'><body>to full</body></message>")
        .await;
    bob.expect("message to full", is_message_with_body("to full"))
        .await;
    // An address in another case arrives in its normal form.
    alice
        .send("<message to='Bob@LocalHost/b' type='chat'><body>cased</body></message>")
        .await;
    let m = bob.expect("cased", is_message_with_body("cased")).await;
    assert_eq!(m.attr("to"), Some("bob@localhost/b"));
    // A chat message to a resource that is not bound goes to the account's resources
    // (RFC 6121 §8.5.3.2.1).
    alice
        .send("<message to='bob@localhost/gone' type='chat'><body>stray</body></message>")
        .await;
    bob.expect("to an unbound resource", is_message_with_body("stray"))
        .await;
    // Unicode and markup characters arrive intact.
    alice
        .send(
            "<message to='bob@localhost' type='chat'><body>h&#xe9;llo &lt;b&gt; &amp; \u{1F600}</body></message>",
        )
        .await;
    bob.expect(
        "escaped body",
        is_message_with_body("héllo <b> & \u{1F600}"),
    )
    .await;

    // A message to an account that does not exist bounces.
    alice
        .send("<message to='nobody@localhost' id='m1' type='chat'><body>x</body></message>")
        .await;
    let err = alice
        .expect("bounce", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    let err = child(&err, "error").unwrap();
    assert!(child(err, "service-unavailable").is_some());
    // So does one to another domain while federation is not served.
    alice
        .send("<message to='carol@elsewhere.example' type='chat'><body>x</body></message>")
        .await;
    let err = alice
        .expect("remote bounce", |e| {
            e.name() == "message"
                && e.attr("type") == Some("error")
                && e.attr("from") == Some("carol@elsewhere.example")
        })
        .await;
    assert!(child(child(&err, "error").unwrap(), "remote-server-not-found").is_some());
    server.shutdown().await;
}

/// With archiving off, a message between two sessions that need nothing more of it is not
/// built into a tree on its way: it arrives whole all the same, with `from` stamped, and what
/// does need it read (a forged stanza id, an address not in its normal form, a long body, a
/// `from` the client gave, a block) still sees it. Bob's client writes its own XML and does
/// not enable stream management, so his session writes what it gets straight through.
#[tokio::test(flavor = "current_thread")]
async fn messages_between_plain_sessions_arrive_whole() {
    let server = TestServer::start_with(|c| {
        c.archive.default = rookery::config::ArchiveDefault::Never;
        c.limits.max_body_chars = 300;
    })
    .await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = Raw::login(&server, "bob", "pw", "b").await;
    async fn next_message(bob: &mut Raw) -> Element {
        let text = bob.read_until("</message>").await;
        let start = text.rfind("<message").expect("a message");
        text[start..].parse().expect("a message that parses")
    }
    // Once an account is online, nothing about it needs a message's tree: what its features
    // would be asked was noted when its first presence was handled, before any message.
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    let sessions = &server.running.as_ref().expect("running").server.sessions;
    let deadline = tokio::time::Instant::now() + WAIT;
    for account in ["alice@localhost", "bob@localhost"] {
        let bare = rookery::jid::BareJid::new(account).expect("jid");
        loop {
            let summary = sessions.summary(&bare);
            if summary.hints.blocks_nobody && summary.hints.archives_nothing {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{account}'s first presence noted nothing: {summary:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for round in 0..20 {
        alice
            .send(&format!(
                "<message to='bob@localhost/b' type='chat'><body>warm {round}</body></message>"
            ))
            .await;
        next_message(&mut bob).await;
    }
    for account in ["alice@localhost", "bob@localhost"] {
        let summary = sessions.summary(&rookery::jid::BareJid::new(account).expect("jid"));
        assert!(
            summary.hints.blocks_nobody && summary.hints.archives_nothing && !summary.carbons,
            "nothing about {account} needs a message's tree: {summary:?}"
        );
    }

    alice
        .send(
            "<message to='bob@localhost/b' type='chat' id='w1' xml:lang='fr'>\
             <body>h&#xe9;llo &lt;b&gt; &amp; > \u{1F600}</body>\
             <x xmlns='urn:example:x' a='1'><y>z</y></x>\
             <p:q xmlns:p='urn:example:p' p:r='&apos;s'/></message>",
        )
        .await;
    let m = next_message(&mut bob).await;
    assert_eq!(m.attr("id"), Some("w1"));
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    assert_eq!(m.attr("to"), Some("bob@localhost/b"));
    assert_eq!(child(&m, "body").unwrap().text(), "héllo <b> & > \u{1F600}");
    let x = m.get_child("x", "urn:example:x").expect("x");
    assert_eq!(x.attr("a"), Some("1"));
    assert_eq!(x.get_child("y", "urn:example:x").expect("y").text(), "z");
    assert!(m.get_child("q", "urn:example:p").is_some(), "{m:?}");

    // CDATA is written out as text.
    alice
        .send("<message to='bob@localhost/b' type='chat' id='c1'><body><![CDATA[<i>]]></body></message>")
        .await;
    let m = next_message(&mut bob).await;
    assert_eq!(m.attr("id"), Some("c1"));
    assert_eq!(child(&m, "body").unwrap().text(), "<i>");
    // A stanza id that claims to be bob's server's is removed (XEP-0359).
    alice
        .send(
            "<message to='bob@localhost/b' type='chat' id='w2'><body>forged</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='1'/></message>",
        )
        .await;
    let m = next_message(&mut bob).await;
    assert_eq!(m.attr("id"), Some("w2"));
    assert!(
        m.get_child("stanza-id", "urn:xmpp:sid:0").is_none(),
        "{m:?}"
    );
    // An address in another case arrives in its normal form.
    alice
        .send("<message to='Bob@LocalHost/b' type='chat' id='w3'><body>cased</body></message>")
        .await;
    let m = next_message(&mut bob).await;
    assert_eq!(m.attr("id"), Some("w3"));
    assert_eq!(m.attr("to"), Some("bob@localhost/b"));
    // The client's own JID as `from` is taken (another is a stream error: `bad_input`).
    alice
        .send(
            "<message from='alice@localhost/a' to='bob@localhost/b' type='chat' id='w4'>\
             <body>own from</body></message>",
        )
        .await;
    let m = next_message(&mut bob).await;
    assert_eq!(m.attr("id"), Some("w4"));
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    // A message longer than the body limit whose body is within it goes; a body over the
    // limit is refused.
    let padding = "p".repeat(400);
    alice
        .send(&format!(
            "<message to='bob@localhost/b' type='chat' id='w5'><body>short</body>\
             <x xmlns='urn:example:x' pad='{padding}'/></message>"
        ))
        .await;
    assert_eq!(next_message(&mut bob).await.attr("id"), Some("w5"));
    alice
        .send(&format!(
            "<message to='bob@localhost/b' type='chat' id='w6'><body>{padding}</body></message>"
        ))
        .await;
    let err = alice
        .expect("long body refused", |e| {
            e.attr("id") == Some("w6") && e.attr("type") == Some("error")
        })
        .await;
    assert!(child(child(&err, "error").unwrap(), "policy-violation").is_some());
    // Once bob blocks alice, her messages bounce.
    bob.send(
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>",
    )
    .await;
    bob.read_iq("b").await;
    alice
        .send("<message to='bob@localhost/b' type='chat' id='w7'><body>blocked</body></message>")
        .await;
    alice
        .expect("the bounce", |e| {
            e.attr("id") == Some("w7") && e.attr("type") == Some("error")
        })
        .await;
    let rest = bob.read_for(Duration::from_millis(300)).await;
    assert!(!rest.contains("<message"), "{rest}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn offline_message_is_delivered_at_next_login_with_delay() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>while you were out</body></message>")
        .await;
    // Chat states alone are not stored.
    alice
        .send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    alice
        .iq(
            "sync",
            "<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.expect_none("message before presence", Duration::from_millis(300), |e| {
        e.name() == "message"
    })
    .await;
    bob.send("<presence/>").await;
    let m = bob
        .expect(
            "offline message",
            is_message_with_body("while you were out"),
        )
        .await;
    let delay = child(&m, "delay").expect("delay stamp");
    assert_eq!(delay.ns(), "urn:xmpp:delay");
    assert_eq!(delay.attr("from"), Some("localhost"));
    assert!(delay.attr("stamp").is_some_and(|s| s.ends_with('Z')));
    bob.expect_none("chat state", Duration::from_millis(300), |e| {
        e.name() == "message"
    })
    .await;
    server.shutdown().await;
}

/// The router found no resource for a message, and by the time it is stored the recipient has
/// sent initial presence and taken its stored messages: it is delivered now, not at the next
/// login.
#[tokio::test(flavor = "current_thread")]
async fn a_message_stored_as_its_recipient_comes_online_is_delivered() {
    use rookery::modules::offline::{IfOnlineNow, store_or_bounce};
    let server = TestServer::start().await;
    for user in ["alice", "bob", "carol"] {
        server.add_user(user, "pw").await;
    }
    let running = server.running.as_ref().expect("running");
    let stored_late = |to: &str, body: &str, online: IfOnlineNow| {
        let msg: minidom::Element = format!(
            "<message xmlns='jabber:client' from='alice@localhost/a' to='{to}' type='chat'>\
             <body>{body}</body></message>"
        )
        .parse()
        .expect("message");
        let to = rookery::jid::parse_bare(to).expect("jid");
        let server = running.server.clone();
        async move { store_or_bounce(&server, &to, msg, online).await }
    };
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    bob.expect("own presence", is_presence("bob@localhost/b".into(), None))
        .await;
    stored_late("bob@localhost", "just in time", IfOnlineNow::Deliver).await;
    let m = bob
        .expect("the message, live", is_message_with_body("just in time"))
        .await;
    assert!(child(&m, "delay").is_none(), "not a stored one: {m:?}");
    let store = &running.server.store;
    assert_eq!(store.offline_count("bob").await.expect("count"), 0);
    // A message that has just failed to reach the resource (its node could not be reached)
    // stays stored rather than going round again.
    stored_late("bob@localhost", "kept", IfOnlineNow::Keep).await;
    assert_eq!(store.offline_count("bob").await.expect("count"), 1);
    bob.expect_none("the kept message", Duration::from_millis(300), |e| {
        e.name() == "message"
    })
    .await;

    // A resource of negative priority takes no bare-JID message (RFC 6121 §8.5.2.1.1): it stays.
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    carol
        .send("<presence><priority>-1</priority></presence>")
        .await;
    carol
        .expect(
            "own presence",
            is_presence("carol@localhost/c".into(), None),
        )
        .await;
    stored_late("carol@localhost", "for later", IfOnlineNow::Deliver).await;
    assert_eq!(store.offline_count("carol").await.expect("count"), 1);
    carol
        .expect_none("a stored message", Duration::from_millis(300), |e| {
            e.name() == "message"
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn same_resource_twice_replaces_the_first_with_conflict() {
    let server = TestServer::start().await;
    server.add_user("bob", "pw").await;
    server.add_user("alice", "pw").await;
    let mut first = Raw::login(&server, "bob", "pw", "same").await;
    let mut second = XmppClient::connect(&server, "bob@localhost/same", "pw").await;
    let closed = first.read_to_close().await;
    assert!(closed.contains("<conflict"), "{closed}");
    assert!(closed.contains("</stream:stream>"), "{closed}");
    assert!(
        !closed.contains("<stream:stream"),
        "no second stream header: {closed}"
    );
    // The new session is the one that gets messages.
    let mut alice = Raw::login(&server, "alice", "pw", "a").await;
    alice
        .send("<message to='bob@localhost/same'><body>who is there</body></message>")
        .await;
    second
        .expect(
            "message on the new session",
            is_message_with_body("who is there"),
        )
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn restart_keeps_accounts_rosters_and_offline_messages() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    subscribe_both_ways(&server, "alice", "bob").await;
    let mut alice = Raw::login(&server, "alice", "pw", "a").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>kept across restarts</body></message>")
        .await;
    alice
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.read_until("id='p'").await;
    // A pending-in request must survive too.
    server.add_user("carol", "pw").await;
    let mut carol = Raw::login(&server, "carol", "pw", "c").await;
    carol
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    carol
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    carol.read_until("id='p'").await;

    let server = server.restart().await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    let r = roster_get(&mut bob, "r").await;
    let item = roster_item(&r, "alice@localhost").expect("roster kept");
    assert_eq!(item.attr("subscription"), Some("both"));
    bob.send("<presence/>").await;
    // Both arrive after initial presence, in no promised order.
    let (mut message, mut request) = (false, false);
    while !(message && request) {
        let e = bob
            .expect("offline message and subscription request", |e| {
                is_message_with_body("kept across restarts")(e)
                    || (e.name() == "presence" && e.attr("type") == Some("subscribe"))
            })
            .await;
        if e.name() == "message" {
            message = true;
        } else {
            assert_eq!(e.attr("from"), Some("carol@localhost"));
            request = true;
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn negative_priority_gets_no_bare_jid_messages() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut bob_low = XmppClient::connect(&server, "bob@localhost/low", "pw").await;
    bob_low
        .send("<presence><priority>-1</priority></presence>")
        .await;
    bob_low
        .expect("own presence", |e| e.name() == "presence")
        .await;
    let mut alice = Raw::login(&server, "alice", "pw", "a").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>stored, not shown</body></message>")
        .await;
    bob_low
        .expect_none("bare message", Duration::from_millis(300), |e| {
            e.name() == "message"
        })
        .await;
    // Full-JID messages still reach it.
    alice
        .send("<message to='bob@localhost/low' type='chat'><body>direct</body></message>")
        .await;
    bob_low
        .expect("full message", is_message_with_body("direct"))
        .await;
    // The bare-JID one waits offline for a non-negative resource.
    let mut bob = XmppClient::connect(&server, "bob@localhost/main", "pw").await;
    bob.send("<presence><priority>5</priority></presence>")
        .await;
    bob.expect("offline message", is_message_with_body("stored, not shown"))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn directed_presence_and_its_unavailable_on_disconnect() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("carol", "pw").await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    carol.send("<presence/>").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice.send("<presence/>").await;
    // Not subscribed: carol hears of alice only through directed presence.
    alice
        .send("<presence to='carol@localhost'><status>hello</status></presence>")
        .await;
    let p = carol
        .expect(
            "directed presence",
            is_presence("alice@localhost/a".into(), None),
        )
        .await;
    assert_eq!(child(&p, "status").map(|s| s.text()), Some("hello".into()));
    alice.close().await;
    carol
        .expect(
            "unavailable after disconnect",
            is_presence("alice@localhost/a".into(), Some("unavailable")),
        )
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn unsubscribe_and_cancel_end_presence_both_ways() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    subscribe_both_ways(&server, "alice", "bob").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    for (c, id) in [(&mut alice, "r1"), (&mut bob, "r2")] {
        roster_get(c, id).await;
        c.send("<presence/>").await;
    }
    alice
        .expect(
            "bob's presence",
            is_presence("bob@localhost/b".into(), None),
        )
        .await;

    // bob stops following alice: his side drops `to`, hers drops `from`, and bob is told
    // alice is unavailable to him now.
    bob.send("<presence to='alice@localhost' type='unsubscribe'/>")
        .await;
    bob.expect("bob's push: from", is_push_for("alice@localhost", "from"))
        .await;
    alice
        .expect("alice's push: to", is_push_for("bob@localhost", "to"))
        .await;
    bob.expect(
        "alice unavailable to bob",
        is_presence("alice@localhost/a".into(), Some("unavailable")),
    )
    .await;

    // bob then revokes alice's subscription to him: both sides end at `none`, and alice is
    // told bob is unavailable to her now.
    bob.send("<presence to='alice@localhost' type='unsubscribed'/>")
        .await;
    bob.expect("bob's push: none", is_push_for("alice@localhost", "none"))
        .await;
    alice
        .expect("alice's push: none", is_push_for("bob@localhost", "none"))
        .await;
    alice
        .expect(
            "bob unavailable to alice",
            is_presence("bob@localhost/b".into(), Some("unavailable")),
        )
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn subscribing_to_a_nonexistent_account_is_refused() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    roster_get(&mut alice, "r").await;
    alice.send("<presence/>").await;
    alice
        .send("<presence to='ghost@localhost' type='subscribe'/>")
        .await;
    // RFC 6121 §3.2.3: the roster push comes first, then the `unsubscribed` itself.
    alice
        .expect("pending-out cleared", |e| {
            roster_item(e, "ghost@localhost")
                .is_some_and(|i| i.attr("ask").is_none() && i.attr("subscription") == Some("none"))
        })
        .await;
    let p = alice
        .expect("unsubscribed on behalf of the missing account", |e| {
            e.name() == "presence" && e.attr("type") == Some("unsubscribed")
        })
        .await;
    assert_eq!(p.attr("from"), Some("ghost@localhost"));
    server.shutdown().await;
}
