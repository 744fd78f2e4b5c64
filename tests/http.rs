//! The HTTP listener: health and the Prometheus metrics an operator and the benchmark read.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The metrics are the process's: the tests that count them take turns.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many store calls of kind `op` the process has made so far.
async fn store_calls(server: &TestServer, op: &str) -> u64 {
    let (_, text) = get(server, "/metrics").await;
    let key = format!("rookery_store_seconds_count{{op=\"{op}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// Reads of block lists and of archiving preferences so far.
async fn settings_reads(server: &TestServer) -> [u64; 2] {
    [
        store_calls(server, "blocklist").await,
        store_calls(server, "archive_prefs").await,
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn health_and_metrics() {
    let _turn = METRICS.lock().await;
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (status, body) = get(&server, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>counted</body></message>")
        .await;
    alice
        .iq(
            "p",
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|l| l == "rookery_offline_messages 1"),
        "bob's message waits offline:\n{text}"
    );
    for metric in [
        "rookery_connections{kind=\"c2s\"}",
        "rookery_stanzas_in_total{kind=\"message\"}",
        "rookery_stanzas_out_total{kind=\"iq\"}",
        "rookery_route_seconds_bucket",
        "rookery_store_seconds_bucket{op=\"credentials\"",
        "rookery_offline_stored_total",
        "rookery_sessions",
    ] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }
    let (status, _) = get(&server, "/nope").await;
    assert_eq!(status, 404);
    alice.close().await;
    server.shutdown().await;
}

/// Every message asks for its sender's and its recipient's block list and archiving
/// preferences. A session that becomes available loads its own, so that its first messages do
/// not wait for the store (after a restart, every user's first message at once).
#[tokio::test(flavor = "current_thread")]
async fn available_session_has_its_settings_loaded_before_it_chats() {
    let _turn = METRICS.lock().await;
    let server = TestServer::start().await;
    server.add_user("carol", "pw").await;
    server.add_user("dave", "pw").await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    let mut dave = XmppClient::connect(&server, "dave@localhost/d", "pw").await;
    let before = settings_reads(&server).await;
    for client in [&mut carol, &mut dave] {
        client.send("<presence/>").await;
        client
            .expect("own presence", |e| {
                e.name() == "presence" && e.attr("type").is_none()
            })
            .await;
    }
    let loaded = settings_reads(&server).await;
    assert_eq!(loaded, before.map(|n| n + 2), "one read of each per user");

    carol
        .send("<message to='dave@localhost/d' type='chat'><body>hi</body></message>")
        .await;
    dave.expect("carol's message", |e| e.name() == "message")
        .await;
    dave.send("<message to='carol@localhost' type='chat'><body>hi</body></message>")
        .await;
    carol
        .expect("dave's message", |e| e.name() == "message")
        .await;
    let after = settings_reads(&server).await;
    assert_eq!(after, loaded, "the messages found both in the cache");
    carol.close().await;
    dave.close().await;
    server.shutdown().await;
}

/// A store that cannot count the offline messages does not break the scrape: everything else
/// is served, and the gauge keeps the last count it had.
#[tokio::test(flavor = "current_thread")]
async fn metrics_are_served_when_the_offline_count_fails() {
    if std::env::var("ROOKERY_TEST_STORE").as_deref() == Ok("postgres") {
        return; // the table is broken through the SQLite file below
    }
    let _turn = METRICS.lock().await;
    let server = TestServer::start().await;
    server.add_user("erin", "pw").await;
    server.add_user("frank", "pw").await;
    let mut erin = XmppClient::connect(&server, "erin@localhost/e", "pw").await;
    erin.send("<message to='frank@localhost' type='chat'><body>waits</body></message>")
        .await;
    erin.iq(
        "p",
        "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    let gauge = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("rookery_offline_messages "))
            .map(str::to_owned)
    };
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(gauge(&text).as_deref(), Some("rookery_offline_messages 1"));
    // A second message waits too, so a count that still worked would read 2.
    erin.send("<message to='frank@localhost' type='chat'><body>waits too</body></message>")
        .await;
    erin.iq(
        "q",
        "<iq type='get' id='q'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;

    let db = server.dir.path().join("rookery.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("the server's database opens");
    sqlx::query("ALTER TABLE offline_messages RENAME TO offline_messages_gone")
        .execute(&pool)
        .await
        .expect("table renamed");
    pool.close().await;

    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("rookery_sessions"), "{text}");
    assert_eq!(gauge(&text).as_deref(), Some("rookery_offline_messages 1"));
    erin.close().await;
    server.shutdown().await;
}
