//! Federation between two rookery servers on loopback (rookery.test and other.test, with the
//! test certificates from certs/test), driven by tokio-xmpp clients on each side; and raw peers
//! that try what a peer must not. Interoperability with Prosody is in tests/slixmpp.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::services::free_port;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_xmpp::minidom::Element;

const MAM: &str = "urn:xmpp:mam:2";

/// How a test server authenticates its peers.
#[derive(Clone, Copy)]
struct Trust {
    /// Peer certificates from the test CA verify.
    ca: bool,
    dialback: bool,
}

const CA_AND_DIALBACK: Trust = Trust {
    ca: true,
    dialback: true,
};

/// A server for `domain` whose s2s listener is on `port`, with a static route to its peer.
async fn server(domain: &str, port: u16, peer: (&str, u16), trust: Trust) -> TestServer {
    server_with(domain, port, peer, trust, |_| {}).await
}

async fn server_with(
    domain: &str,
    port: u16,
    peer: (&str, u16),
    trust: Trust,
    adjust: impl FnOnce(&mut rookery::config::Config) + Send + 'static,
) -> TestServer {
    let certs = test_certs();
    let (domain, peer_domain, peer_port) = (domain.to_owned(), peer.0.to_owned(), peer.1);
    TestServer::start_with(move |c| {
        c.tls.cert = certs.join(format!("{domain}.pem")).display().to_string();
        c.tls.key = certs.join(format!("{domain}.key")).display().to_string();
        c.domain = domain;
        c.listen.s2s = format!("127.0.0.1:{port}").parse().expect("addr");
        if trust.ca {
            c.s2s.trust = vec![certs.join("ca.pem")];
        }
        c.s2s.dialback = trust.dialback;
        for d in [peer_domain.clone(), format!("conference.{peer_domain}")] {
            c.s2s.routes.insert(d, format!("127.0.0.1:{peer_port}"));
        }
        adjust(c);
    })
    .await
}

/// rookery.test and other.test, routed to each other, with alice on the first and bob and
/// carol on the second (password "pw").
async fn two_servers(trust: Trust) -> (TestServer, TestServer) {
    let (pa, pb) = (free_port(), free_port());
    let a = server("rookery.test", pa, ("other.test", pb), trust).await;
    let b = server("other.test", pb, ("rookery.test", pa), trust).await;
    a.add_user("alice", "pw").await;
    for u in ["bob", "carol"] {
        b.add_user(u, "pw").await;
    }
    (a, b)
}

fn is_presence(from: &'static str, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "presence"
            && e.attr("from").is_some_and(|f| f.starts_with(from))
            && e.attr("type") == kind
    }
}

/// alice and bob chat both ways; the stanzas keep their senders' full JIDs.
async fn chat_both_ways(alice: &mut XmppClient, bob: &mut XmppClient) {
    // Available, so that a message to the bare JID is delivered rather than kept offline.
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .send("<message to='bob@other.test' type='chat'><body>hi bob</body></message>")
        .await;
    let m = bob
        .expect("alice's message", is_message_with_body("hi bob"))
        .await;
    assert_eq!(m.attr("from"), Some("alice@rookery.test/a"));
    bob.send("<message to='alice@rookery.test/a' type='chat'><body>hi alice</body></message>")
        .await;
    let m = alice
        .expect("bob's message", is_message_with_body("hi alice"))
        .await;
    assert_eq!(m.attr("from"), Some("bob@other.test/b"));
}

#[tokio::test(flavor = "current_thread")]
async fn users_on_two_servers_subscribe_see_presence_chat_and_keep_history() {
    // Dialback off: both directions must authenticate by certificate (SASL EXTERNAL).
    let (a, b) = two_servers(Trust {
        ca: true,
        dialback: false,
    })
    .await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;

    // RFC 6121 §3: the subscription handshake, both ways, across the servers.
    alice
        .send("<presence to='bob@other.test' type='subscribe'/>")
        .await;
    bob.expect(
        "alice's request",
        is_presence("alice@rookery.test", Some("subscribe")),
    )
    .await;
    bob.send("<presence to='alice@rookery.test' type='subscribed'/>")
        .await;
    alice
        .expect("bob's presence", is_presence("bob@other.test/b", None))
        .await;
    bob.send("<presence to='alice@rookery.test' type='subscribe'/>")
        .await;
    alice
        .expect(
            "bob's request",
            is_presence("bob@other.test", Some("subscribe")),
        )
        .await;
    alice
        .send("<presence to='bob@other.test' type='subscribed'/>")
        .await;
    bob.expect(
        "alice's presence",
        is_presence("alice@rookery.test/a", None),
    )
    .await;
    let roster = alice
        .iq(
            "r1",
            "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
    let item = child(&roster, "query").and_then(|q| child(q, "item"));
    assert_eq!(
        item.and_then(|i| i.attr("subscription")),
        Some("both"),
        "{}",
        String::from(&roster)
    );

    // RFC 6121 §4.3: a new session's server probes the remote contact, whose server answers
    // with its current presence.
    alice.close().await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    alice.send("<presence/>").await;
    alice
        .expect(
            "bob's presence, answering the probe",
            is_presence("bob@other.test/b", None),
        )
        .await;

    chat_both_ways(&mut alice, &mut bob).await;

    // Disco of a remote entity: the iq goes over federation and back.
    let info = alice
        .iq(
            "d1",
            "<iq type='get' id='d1' to='other.test'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{}", String::from(&info));
    assert_eq!(info.attr("from"), Some("other.test"));

    // A federated sender's message to someone offline is kept for them.
    alice
        .send(
            "<message to='carol@other.test' type='chat'><body>while you were out</body></message>",
        )
        .await;
    let store = &b.running.as_ref().expect("running").server.store;
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.offline_count("carol").await.expect("count") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not stored offline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut carol = XmppClient::connect(&b, "carol@other.test/c", "pw").await;
    carol.send("<presence/>").await;
    let m = carol
        .expect(
            "the offline message",
            is_message_with_body("while you were out"),
        )
        .await;
    assert_eq!(m.attr("from"), Some("alice@rookery.test/a"));
    assert!(child(&m, "delay").is_some(), "{}", String::from(&m));

    // Both directions of the federated conversation are in alice's archive.
    alice
        .send(&format!(
            "<iq type='set' id='q1'><query xmlns='{MAM}' queryid='q1'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{MAM}</value></field><field var='with'><value>bob@other.test</value>\
             </field></x></query></iq>"
        ))
        .await;
    let mut bodies = Vec::new();
    loop {
        let e = alice
            .expect("archive results", |e| {
                (e.name() == "iq" && e.attr("id") == Some("q1"))
                    || (e.name() == "message" && e.children().any(|c| c.is("result", MAM)))
            })
            .await;
        if e.name() == "iq" {
            assert_eq!(e.attr("type"), Some("result"), "{}", String::from(&e));
            break;
        }
        let forwarded = child(&e, "result").and_then(|r| child(r, "forwarded"));
        let body = forwarded
            .and_then(|f| child(f, "message"))
            .and_then(|m| child(m, "body"))
            .map(|b| b.text());
        bodies.extend(body);
    }
    assert_eq!(bodies, ["hi bob", "hi alice"]);

    // bob going offline reaches alice.
    bob.close().await;
    alice
        .expect(
            "bob's unavailable presence",
            is_presence("bob@other.test/b", Some("unavailable")),
        )
        .await;
    alice.close().await;
    carol.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn untrusted_certificates_fall_back_to_dialback_or_are_refused() {
    // Neither side trusts the test CA: only dialback can authenticate.
    let no_ca = Trust {
        ca: false,
        dialback: true,
    };
    let (a, b) = two_servers(no_ca).await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    chat_both_ways(&mut alice, &mut bob).await;
    alice.close().await;
    bob.close().await;

    // Without dialback and without a verifiable certificate nothing crosses: the sender gets
    // an error instead.
    let (a, _b) = two_servers(Trust {
        ca: false,
        dialback: false,
    })
    .await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    alice
        .send("<message to='bob@other.test' type='chat' id='x1'><body>hello?</body></message>")
        .await;
    let e = alice
        .expect("the bounce", |e| {
            e.name() == "message" && e.attr("type") == Some("error") && e.attr("id") == Some("x1")
        })
        .await;
    let error = child(&e, "error").expect("error");
    assert!(
        child(error, "remote-server-not-found").is_some(),
        "{}",
        String::from(&e)
    );
    // While the peer is backing off, the next message is bounced at once.
    let started = tokio::time::Instant::now();
    alice
        .send("<message to='bob@other.test' type='chat' id='x2'><body>again?</body></message>")
        .await;
    alice
        .expect("the second bounce", |e| {
            e.attr("type") == Some("error") && e.attr("id") == Some("x2")
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    alice.close().await;
}

/// A raw peer that opens a stream as `from` and authenticates with the other.test
/// certificate by SASL EXTERNAL.
struct RawPeer {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    buf: String,
}

impl RawPeer {
    async fn connect(server: &TestServer, from: &str) -> RawPeer {
        let addr = server.running.as_ref().expect("running").s2s_addr;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let header = peer_header(from);
        tcp.write_all(header.as_bytes()).await.expect("write");
        let mut plain = String::new();
        while !plain.contains("</stream:features>") {
            let mut b = [0u8; 4096];
            let n = tcp.read(&mut b).await.expect("read");
            assert!(n > 0, "closed: {plain}");
            plain.push_str(&String::from_utf8_lossy(&b[..n]));
        }
        assert!(plain.contains("<required/>"), "STARTTLS required: {plain}");
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .expect("write");
        let mut b = [0u8; 4096];
        let n = tcp.read(&mut b).await.expect("read");
        assert!(String::from_utf8_lossy(&b[..n]).contains("<proceed"));
        let tls = Self::tls(tcp, Vec::new()).await.expect("TLS");
        let mut peer = RawPeer {
            tls,
            buf: String::new(),
        };
        peer.send(&header).await;
        peer.read_until("</stream:features>").await;
        peer
    }

    /// TLS from the first byte (XEP-0368), naming `alpn`; the features it was offered.
    async fn connect_direct(
        addr: std::net::SocketAddr,
        from: &str,
        alpn: &[u8],
    ) -> std::io::Result<(RawPeer, String)> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = Self::tls(tcp, vec![alpn.to_vec()]).await?;
        let mut peer = RawPeer {
            tls,
            buf: String::new(),
        };
        peer.send(&peer_header(from)).await;
        let features = peer.read_until("</stream:features>").await;
        Ok((peer, features))
    }

    /// TLS as other.test, with its certificate as the client certificate.
    async fn tls(
        tcp: TcpStream,
        alpn: Vec<Vec<u8>>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let certs = test_certs();
        let chain: Vec<_> = rustls_pemfile::certs(
            &mut std::fs::read(certs.join("other.test.pem"))
                .expect("pem")
                .as_slice(),
        )
        .map(|c| c.expect("cert"))
        .collect();
        let key = rustls_pemfile::private_key(
            &mut std::fs::read(certs.join("other.test.key"))
                .expect("key")
                .as_slice(),
        )
        .expect("key")
        .expect("a key");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca_roots())
        .with_client_auth_cert(chain, key)
        .expect("client cert");
        let mut config = config;
        config.alpn_protocols = alpn;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("rookery.test").expect("name"), tcp)
            .await
    }

    async fn send(&mut self, s: &str) {
        self.tls.write_all(s.as_bytes()).await.expect("write");
        self.tls.flush().await.expect("flush");
    }

    /// Reads until `needle` arrives, or panics on timeout; returns what was read.
    async fn read_until(&mut self, needle: &str) -> String {
        let read = async {
            while !self.buf.contains(needle) {
                let mut b = [0u8; 4096];
                match self.tls.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&b[..n])),
                }
            }
        };
        let _ = tokio::time::timeout(WAIT, read).await;
        assert!(self.buf.contains(needle), "no {needle} in {}", self.buf);
        std::mem::take(&mut self.buf)
    }

    /// SASL EXTERNAL, then the restarted stream's features.
    async fn authenticate(&mut self, from: &str) -> bool {
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
            .await;
        let answer = self.read_until("xmpp-sasl").await;
        let answer = if answer.contains("<success") || answer.contains("<failure") {
            answer
        } else {
            answer + &self.read_until(">").await
        };
        if !answer.contains("<success") {
            return false;
        }
        self.send(&peer_header(from)).await;
        self.read_until("</stream:features>").await;
        true
    }
}

fn peer_header(from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='rookery.test' version='1.0'>"
    )
}

fn ca_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(test_certs().join("ca.pem")).expect("ca");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    roots
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_may_only_send_from_its_authenticated_domains_to_ours() {
    let port = free_port();
    let a = server(
        "rookery.test",
        port,
        ("other.test", free_port()),
        CA_AND_DIALBACK,
    )
    .await;
    a.add_user("alice", "pw").await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    alice.send("<presence/>").await;

    // Authenticated as other.test: its stanzas are routed. It asks for one stream both ways
    // (XEP-0288), so what we send to other.test comes back over this stream (the static route
    // to other.test leads nowhere).
    let mut peer = RawPeer::connect(&a, "other.test").await;
    peer.send("<bidi xmlns='urn:xmpp:bidi'/>").await;
    assert!(peer.authenticate("other.test").await);
    peer.send(
        "<message from='bob@other.test/b' to='alice@rookery.test' type='chat'>\
         <body>genuine</body></message>",
    )
    .await;
    let m = alice
        .expect("the peer's message", is_message_with_body("genuine"))
        .await;
    assert_eq!(m.attr("from"), Some("bob@other.test/b"));
    alice
        .send("<message to='bob@other.test' type='chat'><body>both ways</body></message>")
        .await;
    let back = peer.read_until("</message>").await;
    assert!(
        back.contains("both ways")
            && (back.contains("from='alice@rookery.test/a'")
                || back.contains("from=\"alice@rookery.test/a\"")),
        "{back}"
    );
    assert!(back.contains("jabber:server"), "{back}");
    // Piggybacking (XEP-0220 §2.3): a second domain over the same stream. The certificate
    // covers *.other.test, so no callback is needed.
    peer.send("<db:result from='conference.other.test' to='rookery.test'>0123</db:result>")
        .await;
    let verdict = peer.read_until("/>").await;
    assert!(
        verdict.contains("valid") && !verdict.contains("invalid"),
        "{verdict}"
    );
    peer.send(
        "<message from='room@conference.other.test/nick' to='alice@rookery.test' \
         type='chat'><body>piggybacked</body></message>",
    )
    .await;
    alice
        .expect(
            "the piggybacked domain's message",
            is_message_with_body("piggybacked"),
        )
        .await;
    // A domain it did not authenticate: invalid-from, and nothing is routed.
    peer.send(
        "<message from='mallory@elsewhere.test' to='alice@rookery.test' type='chat'>\
         <body>spoofed</body></message>",
    )
    .await;
    let closed = peer.read_until("</stream:stream>").await;
    assert!(closed.contains("<invalid-from"), "{closed}");

    // A domain we do not serve: host-unknown.
    let mut peer = RawPeer::connect(&a, "other.test").await;
    assert!(peer.authenticate("other.test").await);
    peer.send(
        "<message from='bob@other.test' to='someone@third.test' type='chat'>\
         <body>relay this</body></message>",
    )
    .await;
    let closed = peer.read_until("</stream:stream>").await;
    assert!(closed.contains("<host-unknown"), "{closed}");

    // A certificate for other.test does not authenticate third.test.
    let mut peer = RawPeer::connect(&a, "third.test").await;
    assert!(!peer.authenticate("third.test").await);
    peer.send(
        "<message from='eve@third.test' to='alice@rookery.test' type='chat'>\
         <body>unauthenticated</body></message>",
    )
    .await;
    let closed = peer.read_until("</stream:stream>").await;
    assert!(closed.contains("<not-authorized"), "{closed}");

    // A dialback key nobody made is refused by the authoritative server (here: us).
    let mut peer = RawPeer::connect(&a, "other.test").await;
    peer.send("<db:verify from='other.test' to='rookery.test' id='forged'>0123abcd</db:verify>")
        .await;
    let answer = peer.read_until("/>").await;
    assert!(
        answer.contains("type='invalid'") || answer.contains("type=\"invalid\""),
        "{answer}"
    );

    alice
        .expect_none("a spoofed message", Duration::from_millis(500), |e| {
            e.name() == "message"
                && e.children().any(|c| {
                    c.name() == "body" && !["genuine", "piggybacked"].contains(&c.text().as_str())
                })
        })
        .await;
    alice.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_link_closes_and_a_new_message_opens_another() {
    let (pa, pb) = (free_port(), free_port());
    let a = server_with(
        "rookery.test",
        pa,
        ("other.test", pb),
        CA_AND_DIALBACK,
        |c| {
            c.s2s.idle_seconds = 1;
        },
    )
    .await;
    let b = server("other.test", pb, ("rookery.test", pa), CA_AND_DIALBACK).await;
    a.add_user("alice", "pw").await;
    b.add_user("bob", "pw").await;
    let links = |s: &TestServer| {
        s.running
            .as_ref()
            .and_then(|r| r.server.federation.as_ref())
            .map(|f| f.links().len())
            .unwrap_or_default()
    };
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .send("<message to='bob@other.test' type='chat'><body>first</body></message>")
        .await;
    bob.expect("the first message", is_message_with_body("first"))
        .await;
    assert_eq!(links(&a), 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while links(&a) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle link stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alice
        .send("<message to='bob@other.test' type='chat'><body>second</body></message>")
        .await;
    bob.expect("the second message", is_message_with_body("second"))
        .await;
    alice.close().await;
    bob.close().await;
}

/// Mutual subscriptions between alice@rookery.test and bob@other.test, straight in the stores.
async fn befriend_across(a: &TestServer, b: &TestServer) {
    for (server, user, contact) in [
        (a, "alice", "bob@other.test"),
        (b, "bob", "alice@rookery.test"),
    ] {
        let item = rookery::store::RosterItem {
            jid: contact.into(),
            name: None,
            subscription: rookery::store::Subscription::Both,
            ask: false,
            groups: Vec::new(),
        };
        let store = &server.running.as_ref().expect("running").server.store;
        store.put_roster_item(user, &item).await.expect("roster");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn personal_eventing_reaches_contacts_on_another_server() {
    use common::caps::*;
    const METADATA: &str = "urn:xmpp:avatar:metadata";
    let (a, b) = two_servers(CA_AND_DIALBACK).await;
    befriend_across(&a, &b).await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    alice.send("<presence/>").await;
    // Each server asks bob once about his capabilities: his own, and alice's, which learnt
    // them from the presence he sent her.
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    announce_caps(&mut bob, &[METADATA], 2).await;
    alice
        .expect("bob's presence", is_presence("bob@other.test/b", None))
        .await;

    let metadata = format!(
        "<metadata xmlns='{METADATA}'><info bytes='3' id='h1' type='image/png'/></metadata>"
    );
    let published = alice
        .iq(
            "m1",
            &format!(
                "<iq type='set' id='m1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                 <publish node='{METADATA}'><item id='h1'>{metadata}</item></publish></pubsub></iq>"
            ),
        )
        .await;
    assert_eq!(published.attr("type"), Some("result"));
    bob.expect(
        "alice's avatar across the servers",
        is_items_event("alice@rookery.test", METADATA),
    )
    .await;
    // A second resource with the same capabilities: nobody asks, and alice's server sends
    // the last item when his presence reaches her.
    let mut bob2 = XmppClient::connect(&b, "bob@other.test/two", "pw").await;
    announce_caps(&mut bob2, &[METADATA], 0).await;
    bob2.expect(
        "the last avatar on coming online",
        is_items_event("alice@rookery.test", METADATA),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer that sends faster than `limits.s2s_bytes_per_second` is read no faster than that, and
/// everything it sent arrives.
#[tokio::test(flavor = "current_thread")]
async fn a_fast_peer_is_slowed_down_and_loses_nothing() {
    let (pa, pb) = (free_port(), free_port());
    let a = server("rookery.test", pa, ("other.test", pb), CA_AND_DIALBACK).await;
    let b = server_with(
        "other.test",
        pb,
        ("rookery.test", pa),
        CA_AND_DIALBACK,
        |c| {
            // A burst of 20 kB, then 10 kB/s.
            c.limits.max_stanza_bytes = 10_000;
            c.limits.s2s_bytes_per_second = 10_000;
        },
    )
    .await;
    a.add_user("alice", "pw").await;
    b.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    // Four messages of 8 kB: 32 kB, more than a second's worth past the burst.
    let body = "x".repeat(8_000);
    for i in 0..4 {
        alice
            .send(&format!(
                "<message to='bob@other.test' type='chat' id='big{i}'><body>{body}</body></message>"
            ))
            .await;
    }
    for i in 0..4 {
        let id = format!("big{i}");
        let m = bob
            .expect("a large message", |e| {
                e.name() == "message" && e.attr("id") == Some(id.as_str())
            })
            .await;
        assert_eq!(child(&m, "body").map(|b| b.text().len()), Some(8_000));
    }
    let metrics = rookery::metrics::render().expect("metrics recorder");
    let pauses = metrics
        .lines()
        .find(|l| l.starts_with("rookery_read_pauses_total{kind=\"s2s\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert!(pauses.is_some_and(|n| n >= 1.0), "{metrics}");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_may_connect_with_tls_from_the_first_byte() {
    let a = server_with(
        "rookery.test",
        free_port(),
        ("other.test", free_port()),
        CA_AND_DIALBACK,
        |c| c.listen.s2s_tls = Some("127.0.0.1:0".parse().expect("addr")),
    )
    .await;
    a.add_user("alice", "pw").await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    alice.send("<presence/>").await;
    let addr = a
        .running
        .as_ref()
        .and_then(|r| r.s2s_tls_addr)
        .expect("the s2s_tls listener");

    let (mut peer, features) = RawPeer::connect_direct(addr, "other.test", b"xmpp-server")
        .await
        .expect("TLS with ALPN xmpp-server");
    assert!(
        !features.contains("starttls"),
        "TLS is on already: {features}"
    );
    assert!(features.contains("EXTERNAL"), "{features}");
    assert!(peer.authenticate("other.test").await);
    peer.send(
        "<message from='bob@other.test/b' to='alice@rookery.test' type='chat'>\
         <body>straight over TLS</body></message>",
    )
    .await;
    alice
        .expect(
            "the message over direct TLS",
            is_message_with_body("straight over TLS"),
        )
        .await;

    // Another protocol's name is refused in the handshake, and the listener goes on.
    assert!(
        RawPeer::connect_direct(addr, "other.test", b"xmpp-client")
            .await
            .is_err()
    );
    let (mut again, _) = RawPeer::connect_direct(addr, "other.test", b"xmpp-server")
        .await
        .expect("a second peer");
    assert!(again.authenticate("other.test").await);
    alice.close().await;
}

/// Each server reaches the other through a `tls://` route to its direct-TLS listener: the
/// outgoing side starts TLS at once (ALPN `xmpp-server`), and nothing listens for STARTTLS
/// there, so only TLS from the first byte can carry the chat.
#[tokio::test(flavor = "current_thread")]
async fn two_servers_federate_over_tls_from_the_first_byte() {
    let (tls_a, tls_b) = (free_port(), free_port());
    let with_tls_listener = |port: u16, peer: &'static str, peer_port: u16| {
        move |c: &mut rookery::config::Config| {
            c.listen.s2s_tls = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
            c.s2s
                .routes
                .insert(peer.to_owned(), format!("tls://127.0.0.1:{peer_port}"));
        }
    };
    let a = server_with(
        "rookery.test",
        free_port(),
        ("other.test", free_port()),
        CA_AND_DIALBACK,
        with_tls_listener(tls_a, "other.test", tls_b),
    )
    .await;
    let b = server_with(
        "other.test",
        free_port(),
        ("rookery.test", free_port()),
        CA_AND_DIALBACK,
        with_tls_listener(tls_b, "rookery.test", tls_a),
    )
    .await;
    a.add_user("alice", "pw").await;
    b.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&a, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&b, "bob@other.test/b", "pw").await;
    chat_both_ways(&mut alice, &mut bob).await;
    alice.close().await;
    bob.close().await;
}
