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

#[tokio::test(flavor = "current_thread")]
async fn health_and_metrics() {
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
