//! The cluster shape: nodes sharing one PostgreSQL and one Redis (real servers, started by the
//! harness) act as one server for tokio-xmpp clients spread over them.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::services::{Postgres, Redis, free_port};
use common::*;
use rookery::store::{RosterItem, Subscription};

const LEASE_SECONDS: u64 = 2;

/// An in-process node of a cluster.
async fn node(name: &str, db: &str, redis: &Redis) -> TestServer {
    let (db, redis, name) = (db.to_owned(), redis.url(), name.to_owned());
    TestServer::start_with(move |c| {
        c.storage.url = db;
        c.cluster.redis_url = redis;
        c.cluster.node = name;
        c.cluster.lease_seconds = LEASE_SECONDS;
    })
    .await
}

/// Users alice, bob and carol (password "pw"), alice and bob subscribed to each other.
async fn users(server: &TestServer) {
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    let store = &server.running.as_ref().expect("running").server.store;
    for (user, contact) in [("alice", "bob@localhost"), ("bob", "alice@localhost")] {
        let item = RosterItem {
            jid: contact.into(),
            name: None,
            subscription: Subscription::Both,
            ask: false,
            groups: Vec::new(),
        };
        store.put_roster_item(user, &item).await.expect("roster");
    }
}

/// A fresh Redis and database with two in-process nodes on them, and the test users.
async fn two_nodes() -> (Redis, TestServer, TestServer) {
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let n1 = node("n1", &db, &redis).await;
    let n2 = node("n2", &db, &redis).await;
    users(&n1).await;
    (redis, n1, n2)
}

fn is_presence_from(from: &'static str, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "presence"
            && e.attr("from").is_some_and(|f| f.starts_with(from))
            && e.attr("type") == kind
    }
}

use tokio_xmpp::minidom::Element;

#[tokio::test]
async fn users_on_two_nodes_chat_and_see_each_other() {
    let (_redis, n1, n2) = two_nodes().await;

    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
    // Bound on node 2 means routable from node 1 by the time the client has its bind result.
    let bob_jid = rookery::jid::FullJid::new("bob@localhost/b").expect("jid");
    let n1_sessions = &n1.running.as_ref().expect("running").server.sessions;
    assert!(n1_sessions.resource(&bob_jid).is_some());
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    // Each sees the other's presence: by the probe at login or by the broadcast.
    alice
        .expect("bob's presence", is_presence_from("bob@localhost/b", None))
        .await;
    bob.expect(
        "alice's presence",
        is_presence_from("alice@localhost/a", None),
    )
    .await;

    alice
        .send("<message to='bob@localhost' type='chat'><body>hi bob</body></message>")
        .await;
    let m = bob
        .expect("alice's message", is_message_with_body("hi bob"))
        .await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    bob.send("<message to='alice@localhost/a' type='chat'><body>hi alice</body></message>")
        .await;
    alice
        .expect("bob's answer", is_message_with_body("hi alice"))
        .await;

    // An iq to a full JID on the other node, and its answer.
    alice
        .send("<iq type='get' id='p1' to='bob@localhost/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let ping = bob
        .expect("alice's ping", |e| {
            e.name() == "iq" && e.attr("id") == Some("p1")
        })
        .await;
    assert_eq!(ping.attr("from"), Some("alice@localhost/a"));
    bob.send("<iq type='result' id='p1' to='alice@localhost/a'/>")
        .await;
    alice
        .expect("bob's pong", |e| {
            e.name() == "iq" && e.attr("id") == Some("p1") && e.attr("type") == Some("result")
        })
        .await;

    // A roster push reaches every interested resource, whichever node it is on.
    let mut bob2 = XmppClient::connect(&n1, "bob@localhost/b2", "pw").await;
    bob2.iq(
        "r0",
        "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    bob.iq(
        "r1",
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    bob.iq(
        "r2",
        "<iq type='set' id='r2'><query xmlns='jabber:iq:roster'>\
         <item jid='carol@localhost' name='Carol'/></query></iq>",
    )
    .await;
    bob2.expect("the roster push", |e| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.children().any(|q| {
                q.children()
                    .any(|i| i.attr("jid") == Some("carol@localhost"))
            })
    })
    .await;

    // A block list changed on node 2 is enforced on node 1, which had it cached.
    bob.iq(
        "b1",
        "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>\
         <item jid='alice@localhost'/></block></iq>",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice
        .send("<message id='blocked' to='bob@localhost/b' type='chat'><body>blocked?</body></message>")
        .await;
    alice
        .expect("the error for a blocked message", |e| {
            e.name() == "message"
                && e.attr("id") == Some("blocked")
                && e.attr("type") == Some("error")
        })
        .await;
    bob.iq(
        "b2",
        "<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    )
    .await;

    // Going offline on node 2 is seen on node 1.
    bob.send("<presence type='unavailable'/>").await;
    alice
        .expect(
            "bob unavailable",
            is_presence_from("bob@localhost/b", Some("unavailable")),
        )
        .await;
    for c in [alice, bob, bob2] {
        c.close().await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn the_same_full_jid_on_two_nodes_replaces_the_older_session() {
    let (_redis, n1, n2) = two_nodes().await;
    let mut first = Raw::login(&n1, "alice", "pw", "phone").await;
    let _second = Raw::login(&n2, "alice", "pw", "phone").await;
    let closed = first.read_to_close().await;
    assert!(closed.contains("<conflict"), "{closed}");
    // The newer session is the one the cluster routes to.
    let mut bob = XmppClient::connect(&n1, "bob@localhost/b", "pw").await;
    let mut second = _second;
    bob.send("<message to='alice@localhost/phone' type='chat'><body>which</body></message>")
        .await;
    second.read_until("which").await;
    bob.close().await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn a_stream_managed_session_resumes_on_another_node() {
    use common::sm::*;
    let (_redis, n1, n2) = two_nodes().await;
    let mut carol = XmppClient::connect(&n2, "carol@localhost/c", "pw").await;
    let (mut phone, id) = phone(&n1, "pw").await;
    send_bodies(&mut carol, 1..=5).await;
    let got = phone.read_until("m5</body>").await;
    assert_eq!(bodies(&got), ["m1", "m2", "m3", "m4", "m5"], "{got}");
    drop(phone);
    send_bodies(&mut carol, 6..=8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back through the other node. The phone handled three stanzas: its own presence, m1, m2.
    let mut back = authenticated(&n2, "pw").await;
    back.send(&format!("<resume xmlns='{SM}' h='3' previd='{id}'/>"))
        .await;
    let resumed = back.read_until("m8</body>").await;
    assert!(resumed.contains("<resumed"), "{resumed}");
    assert_eq!(
        bodies(&resumed),
        ["m3", "m4", "m5", "m6", "m7", "m8"],
        "no losses and no duplicates: {resumed}"
    );
    // The same resource, still available, now served by node 2 as every node sees.
    let phone_jid = rookery::jid::FullJid::new("alice@localhost/phone").expect("jid");
    let seen_from_n1 = n1
        .running
        .as_ref()
        .and_then(|r| r.server.sessions.resource(&phone_jid))
        .expect("bound");
    assert!(!seen_from_n1.sender.is_local() && seen_from_n1.available());
    send_bodies(&mut carol, 9..=9).await;
    back.read_until("m9</body>").await;

    // And back again to node 1: m3…m9 were handled too.
    drop(back);
    send_bodies(&mut carol, 10..=10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = authenticated(&n1, "pw").await;
    again
        .send(&format!("<resume xmlns='{SM}' h='10' previd='{id}'/>"))
        .await;
    let resumed = again.read_until("m10</body>").await;
    assert!(resumed.contains("<resumed"), "{resumed}");
    assert_eq!(bodies(&resumed), ["m10"], "{resumed}");
    carol.close().await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn a_burst_across_nodes_arrives_complete_and_in_order() {
    let (_redis, n1, n2) = two_nodes().await;
    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .expect("bob's presence", is_presence_from("bob@localhost/b", None))
        .await;
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            alice
                .send(&format!(
                    "<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>"
                ))
                .await;
        }
        alice
    });
    for i in 0..1000 {
        let want = format!("m{i}");
        let m = bob
            .expect("the next message", |e| e.name() == "message")
            .await;
        let body = m
            .children()
            .find(|c| c.name() == "body")
            .map(|b| b.text())
            .unwrap_or_default();
        assert_eq!(body, want, "message {i} out of order or lost");
    }
    let alice = sender.await.expect("sender");
    alice.close().await;
    bob.close().await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// Frames waiting, unread, in a node's bus stream.
async fn inbox_len(redis: &Redis, node: &str) -> usize {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("XLEN")
        .arg(format!("rookery:localhost:node:{node}:inbox"))
        .query_async(&mut conn)
        .await
        .expect("XLEN")
}

/// A node in its own process, so that it can be killed.
struct NodeProcess {
    child: Child,
    dir: tempfile::TempDir,
    c2s: SocketAddr,
}

impl NodeProcess {
    /// Starts the node and waits (without blocking the test's runtime, which also runs node 1)
    /// until it accepts connections.
    async fn start(name: &str, db: &str, redis: &Redis) -> NodeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let c2s: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = format!(
            "data_dir = \"{data}\"\n\
             [listen]\nc2s = \"{c2s}\"\nc2s_tls = \"127.0.0.1:{tls}\"\n\
             s2s = \"127.0.0.1:{s2s}\"\nhttp = \"127.0.0.1:{http}\"\n\
             [storage]\nurl = \"{db}\"\n\
             [cluster]\nredis_url = \"{redis}\"\nnode = \"{name}\"\nlease_seconds = {LEASE_SECONDS}\n",
            data = dir.path().display(),
            tls = free_port(),
            s2s = free_port(),
            http = free_port(),
            redis = redis.url(),
        );
        let path: PathBuf = dir.path().join("rookery.toml");
        std::fs::write(&path, config).expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["serve", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rookery starts");
        let deadline = std::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(c2s).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {name} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NodeProcess { child, dir, c2s }
    }

    async fn connect(&self, jid: &str) -> XmppClient {
        let connector = Connector {
            addr: self.c2s,
            tls: trust(self.dir.path()),
            direct_tls: false,
        };
        XmppClient::connect_with(connector, jid, "pw").await
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_killed_node_is_reaped_and_nothing_handed_to_it_is_lost() {
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let n1 = node("n1", &db, &redis).await;
    users(&n1).await;
    let n2 = NodeProcess::start("n2", &db, &redis).await;

    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    alice.send("<presence/>").await;
    let mut bob = n2.connect("bob@localhost/b").await;
    bob.send("<presence/>").await;
    alice
        .expect("bob's presence", is_presence_from("bob@localhost/b", None))
        .await;

    // Node 2 freezes, so a message handed to it is never read there; then it dies.
    n2.signal("-STOP");
    alice
        .send("<message to='bob@localhost/b' type='chat'><body>in flight</body></message>")
        .await;
    // The message waits in node 2's bus stream, unread.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while inbox_len(&redis, "n2").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the message never reached node 2's stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frozen_at = std::time::Instant::now();
    n2.signal("-KILL");
    drop(bob);

    alice
        .expect(
            "bob unavailable once the lease expires",
            is_presence_from("bob@localhost/b", Some("unavailable")),
        )
        .await;
    let noticed = frozen_at.elapsed();
    assert!(
        // Expiry after at most one lease, noticed within a third more; one second of slack.
        noticed < Duration::from_millis(LEASE_SECONDS * 1000 * 4 / 3 + 1000),
        "took {noticed:?}"
    );
    alice
        .send("<message to='bob@localhost' type='chat'><body>after</body></message>")
        .await;

    // Bob comes back on node 1 and gets both: the one node 2 never delivered and the later one.
    let mut bob = XmppClient::connect(&n1, "bob@localhost/b", "pw").await;
    bob.send("<presence/>").await;
    // Both, in whichever order the reaper and alice stored them.
    let mut got = Vec::new();
    while !(got.iter().any(|b| b == "in flight") && got.iter().any(|b| b == "after")) {
        let next = tokio::time::timeout(WAIT - Duration::from_secs(1), async {
            bob.expect("a message", |e| e.name() == "message").await
        })
        .await;
        let Ok(m) = next else {
            panic!("bob got only {got:?}: a message was lost");
        };
        got.push(child(&m, "body").map(|b| b.text()).unwrap_or_default());
    }
    alice.close().await;
    bob.close().await;
    n1.shutdown().await;
}

#[tokio::test]
async fn a_redis_restart_in_the_middle_of_traffic_loses_nothing() {
    let (mut redis, n1, n2) = two_nodes().await;
    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    let mut carol = XmppClient::connect(&n1, "carol@localhost/c", "pw").await;
    let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
    alice.send("<presence/>").await;
    carol.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .expect("bob's presence", is_presence_from("bob@localhost/b", None))
        .await;

    redis.stop();
    // Local traffic goes on while Redis is away.
    alice
        .send("<message to='carol@localhost/c' type='chat'><body>local</body></message>")
        .await;
    carol
        .expect("a message on the same node", is_message_with_body("local"))
        .await;
    // Cross-node traffic is kept for later rather than lost.
    alice
        .send("<message to='bob@localhost/b' type='chat'><body>during</body></message>")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();

    // Once the nodes have put their sessions back, messages cross live again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let mut live = Vec::new();
    loop {
        n += 1;
        alice
            .send(&format!(
                "<message to='bob@localhost/b' type='chat'><body>after {n}</body></message>"
            ))
            .await;
        let got = tokio::time::timeout(Duration::from_millis(700), async {
            bob.expect("a message after the restart", |e| e.name() == "message")
                .await
        })
        .await;
        if let Ok(m) = got {
            let body = child(&m, "body").map(|b| b.text()).unwrap_or_default();
            let done = body.starts_with("after");
            live.push(body);
            if done {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live message after the restart"
        );
    }
    // The message sent during the outage arrived live once Redis was back, or was stored and
    // comes at bob's next login.
    let mut bob = if live.iter().any(|b| b == "during") {
        bob
    } else {
        bob.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
        bob.send("<presence/>").await;
        bob.expect(
            "the message from the outage",
            is_message_with_body("during"),
        )
        .await;
        bob
    };
    bob.send("<presence type='unavailable'/>").await;
    for c in [alice, bob, carol] {
        c.close().await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn a_room_has_one_host_and_occupants_on_both_nodes() {
    let (_redis, n1, n2) = two_nodes().await;
    let room = "team@conference.localhost";
    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
    alice
        .send(&format!(
            "<presence to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    alice
        .expect("alice in the room", |e| {
            e.name() == "presence" && e.attr("from") == Some("team@conference.localhost/Alice")
        })
        .await;
    let done = alice
        .iq(
            "cfg",
            &format!(
                "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
        )
        .await;
    assert_eq!(done.attr("type"), Some("result"));
    // Bob's join arrives on node 2 and is served by the room's host.
    bob.send(&format!(
        "<presence to='{room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    bob.expect("alice, seen from node 2", |e| {
        e.name() == "presence" && e.attr("from") == Some("team@conference.localhost/Alice")
    })
    .await;
    alice
        .expect("bob joining", |e| {
            e.name() == "presence" && e.attr("from") == Some("team@conference.localhost/Bob")
        })
        .await;
    // A second occupant on node 2: node 1 sends node 2 the room's message once, for both.
    let mut bob2 = XmppClient::connect(&n2, "bob@localhost/b2", "pw").await;
    bob2.send(&format!(
        "<presence to='{room}/Bob2'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    alice
        .expect("bob's second resource joining", |e| {
            e.name() == "presence" && e.attr("from") == Some("team@conference.localhost/Bob2")
        })
        .await;
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat'><body>from node 1</body></message>"
        ))
        .await;
    for c in [&mut bob, &mut bob2] {
        let jid = c.jid.to_string();
        let m = c
            .expect(
                "the message from node 1",
                is_message_with_body("from node 1"),
            )
            .await;
        assert_eq!(m.attr("to"), Some(jid.as_str()));
    }
    bob2.close().await;
    bob.send(&format!(
        "<message to='{room}' type='groupchat'><body>from node 2</body></message>"
    ))
    .await;
    for c in [&mut alice, &mut bob] {
        let m = c
            .expect(
                "the message from node 2",
                is_message_with_body("from node 2"),
            )
            .await;
        assert_eq!(m.attr("from"), Some("team@conference.localhost/Bob"));
    }
    alice.close().await;
    bob.close().await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn a_room_moves_to_another_node_when_its_host_dies() {
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let n1 = node("n1", &db, &redis).await;
    users(&n1).await;
    let n2 = NodeProcess::start("n2", &db, &redis).await;
    let room = "lasting@conference.localhost";

    // Bob creates a persistent room through node 2, which becomes its host.
    let mut bob = n2.connect("bob@localhost/b").await;
    bob.send(&format!(
        "<presence to='{room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    bob.expect("bob in the room", |e| {
        e.name() == "presence" && e.attr("from") == Some("lasting@conference.localhost/Bob")
    })
    .await;
    let done = bob
        .iq(
            "cfg",
            &format!(
                "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'>\
                 <value>1</value></field></x></query></iq>"
            ),
        )
        .await;
    assert_eq!(done.attr("type"), Some("result"));
    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    alice
        .send(&format!(
            "<presence to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    alice
        .expect("alice in the room, hosted on node 2", |e| {
            e.name() == "presence" && e.attr("from") == Some("lasting@conference.localhost/Bob")
        })
        .await;

    n2.signal("-KILL");
    drop(bob);
    // Once node 2 is declared dead, node 1 takes the room over from the store. Nothing can
    // answer alice's self-ping (XEP-0410) until then. After it, node 1 answers: `not-acceptable`,
    // and she joins again; or, if her join was still unacknowledged in node 2's stream and
    // re-routed with the rest (at-least-once), a result: she is already in.
    let killed_at = std::time::Instant::now();
    let mut n = 0;
    let joined_again = loop {
        n += 1;
        let id = format!("sp{n}");
        alice
            .send(&format!(
                "<iq type='get' id='{id}' to='{room}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        let answer = tokio::time::timeout(Duration::from_millis(800), async {
            alice
                .expect("the self-ping answer", |e| {
                    e.name() == "iq" && e.attr("id") == Some(id.as_str())
                })
                .await
        })
        .await;
        if let Ok(a) = answer {
            break a.attr("type") == Some("error");
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(LEASE_SECONDS * 5),
            "the room never moved"
        );
    };
    if joined_again {
        alice
            .send(&format!(
                "<presence to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
            ))
            .await;
        let own = alice
            .expect("alice back in the room", |e| {
                e.name() == "presence"
                    && e.attr("from") == Some("lasting@conference.localhost/Alice")
            })
            .await;
        assert_ne!(
            own.attr("type"),
            Some("error"),
            "the room was kept: {own:?}"
        );
    }
    let info = alice
        .iq(
            "i",
            &format!("<iq type='get' id='i' to='{room}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
        )
        .await;
    let persistent = child(&info, "query")
        .expect("query")
        .children()
        .any(|f| f.attr("var") == Some("muc_persistent"));
    assert!(persistent, "configuration kept");
    alice.close().await;
    n1.shutdown().await;
}

#[tokio::test]
async fn a_room_message_crosses_to_another_node_once_for_all_its_occupants() {
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let n1 = node("n1", &db, &redis).await;
    users(&n1).await;
    let n2 = NodeProcess::start("n2", &db, &redis).await;
    let room = "fan@conference.localhost";
    // The room is created, and so hosted, on node 1.
    let mut alice = XmppClient::connect(&n1, "alice@localhost/a", "pw").await;
    alice
        .send(&format!(
            "<presence to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    alice
        .expect("alice in the room", |e| {
            e.name() == "presence" && e.attr("from") == Some("fan@conference.localhost/Alice")
        })
        .await;
    alice
        .iq(
            "cfg",
            &format!(
                "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
        )
        .await;
    // Three occupants on node 2.
    let mut bobs = Vec::new();
    for r in ["b1", "b2", "b3"] {
        let mut b = n2.connect(&format!("bob@localhost/{r}")).await;
        b.send(&format!(
            "<presence to='{room}/{r}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
        let joined = format!("fan@conference.localhost/{r}");
        alice
            .expect("an occupant on node 2", move |e| {
                e.name() == "presence" && e.attr("from") == Some(joined.as_str())
            })
            .await;
        bobs.push(b);
    }
    // Node 2 holds still while the message is handed over: its stream grows by one frame.
    // (What was still on its way to it before, such as join presence, is counted first.)
    n2.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = inbox_len(&redis, "n2").await;
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat'><body>for all three</body></message>"
        ))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while inbox_len(&redis, "n2").await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing handed to node 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inbox_len(&redis, "n2").await,
        before + 1,
        "one frame for three occupants"
    );
    n2.signal("-CONT");
    for b in &mut bobs {
        b.expect("the room's message", is_message_with_body("for all three"))
            .await;
    }
    alice.close().await;
    for b in bobs {
        b.close().await;
    }
    n1.shutdown().await;
}

/// The body of a carbon copy (`sent` or `received`) of a chat message.
fn carbon_body(e: &Element, kind: &str) -> Option<String> {
    let wrapper = child(e, kind).filter(|w| w.ns() == "urn:xmpp:carbons:2")?;
    let msg = child(child(wrapper, "forwarded")?, "message")?;
    child(msg, "body").map(|b| b.text())
}

#[tokio::test]
async fn carbons_and_the_archive_give_devices_on_two_nodes_the_same_history() {
    let (_redis, n1, n2) = two_nodes().await;
    let mut desk = XmppClient::connect(&n1, "alice@localhost/desk", "pw").await;
    let mut phone = XmppClient::connect(&n2, "alice@localhost/phone", "pw").await;
    let mut bob = XmppClient::connect(&n2, "bob@localhost/b", "pw").await;
    for c in [&mut desk, &mut phone] {
        let r = c
            .iq(
                "cc",
                "<iq type='set' id='cc'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"));
        c.send("<presence/>").await;
    }
    bob.send("<presence/>").await;

    desk.send(
        "<message to='bob@localhost' type='chat' id='m1'><body>from the desk</body></message>",
    )
    .await;
    bob.expect("the desk's message", is_message_with_body("from the desk"))
        .await;
    phone
        .expect("the sent carbon", |e| {
            carbon_body(e, "sent").as_deref() == Some("from the desk")
        })
        .await;
    bob.send("<message to='alice@localhost/desk' type='chat'><body>to the desk</body></message>")
        .await;
    let live = desk
        .expect("bob's answer", is_message_with_body("to the desk"))
        .await;
    phone
        .expect("the received carbon", |e| {
            carbon_body(e, "received").as_deref() == Some("to the desk")
        })
        .await;
    let live_id = live
        .children()
        .find(|c| c.name() == "stanza-id")
        .and_then(|s| s.attr("id"))
        .expect("a stanza id")
        .to_owned();

    // The phone, on the other node, reads both from the shared archive.
    phone
        .send("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
        .await;
    let mut archived = Vec::new();
    loop {
        let e = phone
            .expect("archive results", |e| {
                (e.name() == "iq" && e.attr("id") == Some("q"))
                    || (e.name() == "message" && child(e, "result").is_some())
            })
            .await;
        if e.name() == "iq" {
            assert_eq!(e.attr("type"), Some("result"));
            break;
        }
        let r = child(&e, "result").expect("result");
        let m = child(child(r, "forwarded").expect("forwarded"), "message").expect("message");
        archived.push((
            r.attr("id").unwrap_or_default().to_owned(),
            child(m, "body").map(|b| b.text()).unwrap_or_default(),
        ));
    }
    let bodies: Vec<&str> = archived.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["from the desk", "to the desk"]);
    assert_eq!(
        archived[1].0, live_id,
        "the live stanza id is the archive id"
    );
}

#[tokio::test]
async fn rest_posts_on_two_nodes_share_one_numbering_and_reach_the_room() {
    let (_redis, n1, n2) = two_nodes().await;
    let http = reqwest::Client::new();
    let base1 = format!("http://{}/api/v1", n1.http);
    let base2 = format!("http://{}/api/v1", n2.http);
    let app: serde_json::Value = http
        .post(format!("{base1}/applications"))
        .json(&serde_json::json!({"name": "bridge"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let token = app["token"].as_str().expect("token").to_owned();
    let chat: serde_json::Value = http
        .post(format!("{base2}/applications/{token}/chats"))
        .send()
        .await
        .expect("chat")
        .json()
        .await
        .expect("json");
    let room = chat["jid"].as_str().expect("jid").to_owned();
    let status = http
        .post(format!("{base1}/applications/{token}/chats/1/members"))
        .json(&serde_json::json!({"jid": "carol@localhost"}))
        .send()
        .await
        .expect("member")
        .status();
    assert_eq!(status, reqwest::StatusCode::CREATED);
    // An occupant on node 2 sees what is posted on either node.
    let mut carol = XmppClient::connect(&n2, "carol@localhost/c", "pw").await;
    carol
        .send(&format!(
            "<presence to='{room}/carol'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    let joined = carol
        .expect("the join", |e| {
            e.name() == "presence" && e.attr("from") == Some(format!("{room}/carol").as_str())
        })
        .await;
    assert_eq!(joined.attr("type"), None, "{}", String::from(&joined));

    let posts = (0..200).map(|i| {
        let http = http.clone();
        let base = if i % 2 == 0 { &base1 } else { &base2 };
        let url = format!("{base}/applications/{token}/chats/1/messages");
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&serde_json::json!({"body": format!("post {i}")}))
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
            resp.json::<serde_json::Value>().await.expect("json")["number"]
                .as_i64()
                .expect("number")
        })
    });
    let mut numbers: Vec<i64> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=200).collect::<Vec<_>>());
    for base in [&base1, &base2] {
        let chat: serde_json::Value = http
            .get(format!("{base}/applications/{token}/chats/1"))
            .send()
            .await
            .expect("chat")
            .json()
            .await
            .expect("json");
        assert_eq!(chat["messages_count"], 200);
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 200 {
        let m = carol
            .expect("the posts", |e| {
                e.name() == "message" && e.attr("type") == Some("groupchat")
            })
            .await;
        if let Some(b) = child(&m, "body") {
            seen.insert(b.text());
        }
    }

    // A live feed on node 1 hears a post on node 2 at once, through the cluster's events
    // (well within the feed's 5 s safety re-read).
    let feed = http
        .get(format!(
            "{base1}/applications/{token}/chats/1/messages/stream"
        ))
        .send()
        .await
        .expect("stream");
    assert_eq!(feed.status(), reqwest::StatusCode::OK);
    let mut feed = feed.bytes_stream();
    let status = http
        .post(format!("{base2}/applications/{token}/chats/1/messages"))
        .json(&serde_json::json!({"body": "from the other node"}))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), async {
        while !text.contains("from the other node") {
            let chunk = futures::StreamExt::next(&mut feed)
                .await
                .expect("more of the feed")
                .expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event within 2 s");
    assert!(text.contains("\"number\":201"), "{text}");
}

/// A server for `domain` with the test certificate, its s2s listener on `port`, trusting no
/// peer certificate (so peers authenticate by dialback) and routing `peer` to `peer_port`.
fn federated(c: &mut rookery::config::Config, domain: &str, port: u16, peer: &str, peer_port: u16) {
    let certs = test_certs();
    c.domain = domain.into();
    c.tls.cert = certs.join(format!("{domain}.pem")).display().to_string();
    c.tls.key = certs.join(format!("{domain}.key")).display().to_string();
    c.listen.s2s = format!("127.0.0.1:{port}").parse().expect("addr");
    c.s2s
        .routes
        .insert(peer.into(), format!("127.0.0.1:{peer_port}"));
}

#[tokio::test]
async fn a_peer_server_reaches_users_on_any_node_by_dialback_with_a_shared_secret() {
    // Two nodes of rookery.test and a separate other.test that only knows node 1's address.
    // alice is on node 2, so node 2 opens the link to other.test; other.test checks node 2's
    // dialback key by asking node 1, which can only confirm it with the cluster's shared
    // secret; bob's answer arrives on node 1 and crosses the cluster bus to alice.
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let (p1, p2, pb) = (free_port(), free_port(), free_port());
    let cluster_node = |name: &'static str, port: u16| {
        let (db, redis) = (db.clone(), redis.url());
        move |c: &mut rookery::config::Config| {
            c.storage.url = db;
            c.cluster.redis_url = redis;
            c.cluster.node = name.into();
            c.cluster.lease_seconds = LEASE_SECONDS;
            federated(c, "rookery.test", port, "other.test", pb);
        }
    };
    let n1 = TestServer::start_with(cluster_node("n1", p1)).await;
    let n2 = TestServer::start_with(cluster_node("n2", p2)).await;
    let other =
        TestServer::start_with(|c| federated(c, "other.test", pb, "rookery.test", p1)).await;
    n1.add_user("alice", "pw").await;
    other.add_user("bob", "pw").await;

    let mut alice = XmppClient::connect(&n2, "alice@rookery.test/a", "pw").await;
    let mut bob = XmppClient::connect(&other, "bob@other.test/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .send("<message to='bob@other.test' type='chat'><body>from node 2</body></message>")
        .await;
    let m = bob
        .expect("alice's message", is_message_with_body("from node 2"))
        .await;
    assert_eq!(m.attr("from"), Some("alice@rookery.test/a"));
    bob.send("<message to='alice@rookery.test/a' type='chat'><body>to node 2</body></message>")
        .await;
    let m = alice
        .expect("bob's answer", is_message_with_body("to node 2"))
        .await;
    assert_eq!(m.attr("from"), Some("bob@other.test/b"));
    alice.close().await;
    bob.close().await;
    drop(redis);
}

#[tokio::test]
async fn a_component_on_one_node_serves_users_on_the_other() {
    let redis = Redis::start();
    let db = Postgres::shared().fresh_database().await;
    let with_component = |name: &'static str| {
        let (db, redis) = (db.clone(), redis.url());
        move |c: &mut rookery::config::Config| {
            c.storage.url = db;
            c.cluster.redis_url = redis;
            c.cluster.node = name.into();
            c.cluster.lease_seconds = LEASE_SECONDS;
            c.listen.component = "127.0.0.1:0".parse().expect("addr");
            c.components.insert(
                "echo.localhost".into(),
                rookery::config::Component {
                    secret: "s3cret".into(),
                },
            );
        }
    };
    let n1 = TestServer::start_with(with_component("n1")).await;
    let n2 = TestServer::start_with(with_component("n2")).await;
    users(&n1).await;

    let addr = n1.running.as_ref().expect("running").component_addr;
    let mut component = Raw::component(
        addr.expect("component listener"),
        "echo.localhost",
        "s3cret",
    )
    .await;

    let mut alice = XmppClient::connect(&n2, "alice@localhost/a", "pw").await;
    alice
        .send("<message to='bot@echo.localhost' type='chat'><body>ping</body></message>")
        .await;
    let got = component.read_until("</message>").await;
    assert!(
        got.contains("ping") && got.contains("alice@localhost/a"),
        "{got}"
    );
    component
        .send(
            "<message xmlns='jabber:component:accept' from='bot@echo.localhost' \
             to='alice@localhost/a' type='chat'><body>pong</body></message>",
        )
        .await;
    let m = alice
        .expect("the component's answer", is_message_with_body("pong"))
        .await;
    assert_eq!(m.attr("from"), Some("bot@echo.localhost"));
    alice.close().await;
    drop(redis);
}
