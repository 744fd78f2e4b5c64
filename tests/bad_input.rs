//! Bad input gets a clear error and affects only its own connection.

mod common;

use common::*;

/// A second, well-behaved session that must keep working while another misbehaves.
async fn bystanders(server: &TestServer) -> (XmppClient, XmppClient) {
    let alice = XmppClient::connect(server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(server, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    bob.expect("own presence", |e| e.name() == "presence").await;
    (alice, bob)
}

async fn still_talking(alice: &mut XmppClient, bob: &mut XmppClient, body: &'static str) {
    alice
        .send(&format!(
            "<message to='bob@localhost' type='chat'><body>{body}</body></message>"
        ))
        .await;
    bob.expect("message after the bad input", is_message_with_body(body))
        .await;
}

async fn setup() -> TestServer {
    let server = TestServer::start_with(|c| {
        c.limits.max_stanza_bytes = 10_000;
        c.limits.max_body_chars = 100;
    })
    .await;
    for u in ["alice", "bob", "mallory"] {
        server.add_user(u, "pw").await;
    }
    server
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_xml_closes_only_that_stream() {
    let server = setup().await;
    let (mut alice, mut bob) = bystanders(&server).await;
    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send("<message><body></message>").await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<not-well-formed"), "{closed}");
    assert!(closed.ends_with("</stream:stream>"), "{closed}");
    assert!(
        !closed.contains("<stream:stream"),
        "no second stream header: {closed}"
    );
    still_talking(&mut alice, &mut bob, "after malformed").await;

    // Before authentication too, and with entity declarations: RFC 6120 §11.1 restricts them.
    let mut bad = Raw::tcp(server.c2s).await;
    bad.send("<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]><stream:stream>")
        .await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<restricted-xml"), "{closed}");
    still_talking(&mut alice, &mut bob, "after doctype").await;
    server.shutdown().await;
}

/// RFC 6120 §11.1: comments and processing instructions are restricted-xml; character data
/// between stanzas is not a stanza (bad-format). Each ends only the stream that sent it.
#[tokio::test(flavor = "current_thread")]
async fn restricted_xml_and_text_between_stanzas_close_only_that_stream() {
    let server = setup().await;
    let (mut alice, mut bob) = bystanders(&server).await;
    for (input, condition) in [
        (
            "<message to='bob@localhost'><!-- hidden --></message>",
            "<restricted-xml",
        ),
        ("<?php system('x') ?>", "<restricted-xml"),
        ("hello <presence/>", "<bad-format"),
    ] {
        let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
        bad.send(input).await;
        let closed = bad.read_to_close().await;
        assert!(closed.contains(condition), "{input}: {closed}");
        assert!(closed.ends_with("</stream:stream>"), "{closed}");
        still_talking(&mut alice, &mut bob, "after restricted").await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn oversized_stanza_and_deep_nesting_are_policy_violations() {
    let server = setup().await;
    let (mut alice, mut bob) = bystanders(&server).await;
    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send(&format!(
        "<message to='bob@localhost'><body>{}</body></message>",
        "x".repeat(20_000)
    ))
    .await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<policy-violation"), "{closed}");
    still_talking(&mut alice, &mut bob, "after oversized").await;

    // A start tag that never ends is cut off by the same limit.
    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    let mut tag = String::from("<message");
    for i in 0..2_000 {
        tag.push_str(&format!(" a{i}='v'"));
    }
    bad.send(&tag).await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<policy-violation"), "{closed}");

    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send(&"<x>".repeat(100)).await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<policy-violation"), "{closed}");
    still_talking(&mut alice, &mut bob, "after deep").await;

    // The limit is advertised (XEP-0478).
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(features.contains("urn:xmpp:stream-limits:0"), "{features}");
    assert!(
        features.contains("<max-bytes>10000</max-bytes>"),
        "{features}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn body_over_the_limit_is_refused_and_the_stream_survives() {
    let server = setup().await;
    let (_alice, mut bob) = bystanders(&server).await;
    let mut mallory = XmppClient::connect(&server, "mallory@localhost/m", "pw").await;
    mallory
        .send(&format!(
            "<message to='bob@localhost' id='long' type='chat'><body>{}</body></message>",
            "y".repeat(101)
        ))
        .await;
    let err = mallory
        .expect("policy-violation", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    let error = child(&err, "error").unwrap();
    assert_eq!(error.attr("type"), Some("modify"));
    assert!(child(error, "policy-violation").is_some());
    let pong = mallory
        .iq(
            "p",
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    bob.expect_none(
        "the long message",
        std::time::Duration::from_millis(300),
        |e| e.name() == "message",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn spoofed_from_is_invalid_from() {
    let server = setup().await;
    let (mut alice, mut bob) = bystanders(&server).await;
    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send(
        "<message from='alice@localhost/a' to='bob@localhost'><body>it is me</body></message>",
    )
    .await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<invalid-from"), "{closed}");
    bob.expect_none(
        "the spoofed message",
        std::time::Duration::from_millis(300),
        |e| e.name() == "message",
    )
    .await;
    still_talking(&mut alice, &mut bob, "after spoof").await;

    // Its own bare JID is a legitimate `from`.
    let mut ok = Raw::login(&server, "mallory", "pw", "m").await;
    ok.send("<message from='mallory@localhost' to='bob@localhost' type='chat'><body>honest</body></message>")
        .await;
    bob.expect("honest message", is_message_with_body("honest"))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_namespaces_elements_and_addresses() {
    let server = setup().await;
    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send("<message xmlns='urn:example:nope' to='bob@localhost'/>")
        .await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<invalid-namespace"), "{closed}");

    let mut bad = Raw::login(&server, "mallory", "pw", "m").await;
    bad.send("<hello/>").await;
    let closed = bad.read_to_close().await;
    assert!(closed.contains("<unsupported-stanza-type"), "{closed}");

    let mut raw = Raw::login(&server, "mallory", "pw", "m").await;
    raw.send("<message to='@@bad@@' id='j'><body>x</body></message>")
        .await;
    let err = raw.read_until("</message>").await;
    assert!(err.contains("<jid-malformed"), "{err}");
    raw.send("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let err = raw.read_until("</iq>").await;
    assert!(err.contains("<bad-request"), "iq without id: {err}");
    raw.send(
        "<iq type='get' id='two'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    let err = raw.read_until("</iq>").await;
    assert!(err.contains("<bad-request"), "two payloads: {err}");
    raw.send("<iq type='get' id='u'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    let err = raw.read_until("</iq>").await;
    assert!(err.contains("<service-unavailable"), "{err}");
    raw.send("<presence><priority>high</priority></presence>")
        .await;
    let err = raw.read_until("</presence>").await;
    assert!(err.contains("<bad-request"), "{err}");
    // After all of that the stream still works.
    raw.send("<iq type='get' id='ok'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    raw.read_until("id='ok'").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn stanzas_before_authentication_are_refused() {
    let server = setup().await;
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send("<message to='bob@localhost'><body>sneaky</body></message>")
        .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<not-authorized"), "{closed}");

    // Three failed attempts end the stream.
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    for _ in 0..2 {
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            plain("alice", "nope")
        ))
        .await;
        raw.read_until("</failure>").await;
    }
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!</auth>")
        .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<incorrect-encoding"), "{closed}");
    assert!(closed.contains("<policy-violation"), "{closed}");

    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'/>")
        .await;
    let failure = raw.read_until("</failure>").await;
    assert!(failure.contains("<invalid-mechanism"), "{failure}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn per_account_state_is_bounded() {
    // The default stanza limit: a block of 1001 items is a 40 kB stanza.
    let server = TestServer::start().await;
    for u in ["bob", "mallory"] {
        server.add_user(u, "pw").await;
    }
    let mut mallory = XmppClient::connect(&server, "mallory@localhost/m", "pw").await;
    // Block lists.
    let mut items = String::new();
    for i in 0..1001 {
        items.push_str(&format!("<item jid='spam{i}@example.org'/>"));
    }
    let r = mallory
        .iq(
            "b",
            &format!("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", String::from(&r));
    assert!(child(child(&r, "error").unwrap(), "resource-constraint").is_some());

    // Directed presence.
    mallory.send("<presence/>").await;
    for i in 0..1000 {
        mallory
            .send(&format!("<presence to='peer{i}@localhost'/>"))
            .await;
    }
    mallory
        .send("<presence to='one-too-many@localhost'/>")
        .await;
    let err = mallory
        .expect("resource-constraint", |e| {
            e.name() == "presence" && e.attr("type") == Some("error")
        })
        .await;
    assert!(child(child(&err, "error").unwrap(), "resource-constraint").is_some());

    // Pending subscription requests: a full set drops requests from new contacts.
    let store = &server.running.as_ref().unwrap().server.store;
    for i in 0..1000 {
        store
            .put_subscription_request(
                "bob",
                &rookery::store::SubscriptionRequest {
                    contact: format!("stranger{i}@example.org"),
                    stanza: "<presence xmlns='jabber:client' type='subscribe'/>".into(),
                },
            )
            .await
            .unwrap();
    }
    mallory
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    mallory
        .iq(
            "p",
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    let pending = store.subscription_requests("bob").await.unwrap();
    assert_eq!(pending.len(), 1000);
    assert!(!pending.iter().any(|r| r.contact == "mallory@localhost"));
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn messages_to_made_up_addresses_bounce_and_leave_nothing_cached() {
    let server = setup().await;
    let mut mallory = XmppClient::connect(&server, "mallory@localhost/m", "pw").await;
    mallory.send("<presence/>").await;
    let running = server.running.as_ref().expect("running");
    let mut before = 0;
    for i in 0..200 {
        if i == 1 {
            // Mallory's own list is loaded by the first message.
            before = rookery::modules::blocking::cached_lists(&running.server);
        }
        mallory
            .send(&format!(
                "<message to='ghost{i}@localhost' id='g{i}' type='chat'><body>x</body></message>"
            ))
            .await;
        let err = mallory
            .expect("bounce", |e| {
                e.name() == "message" && e.attr("type") == Some("error")
            })
            .await;
        assert_eq!(err.attr("id"), Some(format!("g{i}").as_str()));
        assert!(child(child(&err, "error").unwrap(), "service-unavailable").is_some());
    }
    assert_eq!(
        rookery::modules::blocking::cached_lists(&running.server),
        before
    );
    let (mut alice, mut bob) = bystanders(&server).await;
    still_talking(&mut alice, &mut bob, "after the ghosts").await;
    server.shutdown().await;
}

/// A client that sends faster than `limits.c2s_bytes_per_second` is read no faster than that:
/// nothing it sent is refused or lost, and other clients are served meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_flooding_client_is_slowed_down_and_nobody_else() {
    let server = TestServer::start_with(|c| {
        c.limits.max_stanza_bytes = 10_000;
        // A burst of 20 kB, then 10 kB/s.
        c.limits.c2s_bytes_per_second = 10_000;
    })
    .await;
    for u in ["alice", "bob", "mallory"] {
        server.add_user(u, "pw").await;
    }
    let (mut alice, mut bob) = bystanders(&server).await;
    let mut mallory = Raw::login(&server, "mallory", "pw", "m").await;
    // 600 pings of 100 bytes: 60 kB, four seconds' worth past the burst.
    let flood: String = (0..600)
        .map(|i| {
            format!(
                "<iq type='get' id='flood-{i:03}-padding-to-a-hundred' to='localhost'>\
                 <ping xmlns='urn:xmpp:ping'/></iq>"
            )
        })
        .collect();
    assert_eq!(flood.len(), 60_000);
    mallory.send(&flood).await;

    still_talking(&mut alice, &mut bob, "served meanwhile").await;
    let early = mallory
        .read_for(std::time::Duration::from_millis(300))
        .await;
    let answered = early.matches("id='flood-").count();
    assert!(
        answered > 0 && answered < 400,
        "the burst and a little more are read at once, not all 600: {answered}"
    );
    let rest = mallory
        .read_until("id='flood-599-padding-to-a-hundred'")
        .await;
    assert_eq!(
        answered + rest.matches("id='flood-").count(),
        600,
        "every ping is answered in the end"
    );
    assert!(!rest.contains("<error"), "{rest}");
    still_talking(&mut alice, &mut bob, "and after").await;
    server.shutdown().await;
}
