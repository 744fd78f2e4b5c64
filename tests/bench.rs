//! The load tool measures what it claims: a small chat run against a real server and against
//! the reference relay delivers everything it sends, with ordered percentiles.

mod common;

use std::process::Command;

use common::*;

fn field(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().expect("a number")
}

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rookery-bench"))
        .args(args)
        .output()
        .expect("rookery-bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a scenario against `server` as users `<prefix>1..=<users>` (password `pw`), with the
/// test process's pid for the /proc figures, and returns the JSON report.
async fn run_against(
    server: &TestServer,
    scenario: &str,
    users: usize,
    prefix: &str,
    extra: &[&str],
) -> String {
    let mut args: Vec<String> = [
        "run",
        "--scenario",
        scenario,
        "--server",
        &server.c2s.to_string(),
        "--pid",
        &std::process::id().to_string(),
        "--users",
        &users.to_string(),
        "--prefix",
        prefix,
        "--password",
        "pw",
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .expect("bench")
}

fn check_chat(json: &str) {
    let sent = field(json, "sent");
    assert!(sent >= 100.0, "{json}");
    assert_eq!(field(json, "delivered"), sent, "{json}");
    assert_eq!(field(json, "errors"), 0.0, "{json}");
    let (p50, p90, p99, max) = (
        field(json, "p50_ms"),
        field(json, "p90_ms"),
        field(json, "p99_ms"),
        field(json, "max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{json}"
    );
    assert!(max < 5_000.0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_run_against_rookery_delivers_everything() {
    let server = TestServer::start().await;
    for i in 1..=10 {
        server.add_user(&format!("load{i}"), "pw").await;
    }
    let trace = tempfile::NamedTempFile::new().expect("temp file");
    let trace_path = trace.path().to_string_lossy().into_owned();
    let json = run_against(
        &server,
        "chat",
        10,
        "load",
        &[
            "--rate",
            "100",
            "--duration",
            "2",
            "--latency-trace",
            &trace_path,
        ],
    )
    .await;
    check_chat(&json);
    assert_eq!(field(&json, "connected"), 10.0, "{json}");
    assert!(field(&json, "cpu_seconds") >= 0.0, "{json}");
    // The trace has a line per delivery: when it was sent in the window, and its latency.
    let rows: Vec<(f64, f64)> = std::fs::read_to_string(trace.path())
        .expect("trace")
        .lines()
        .map(|l| {
            let (sent, latency) = l.split_once(' ').expect("two numbers");
            (
                sent.parse().expect("sent"),
                latency.parse().expect("latency"),
            )
        })
        .collect();
    assert_eq!(rows.len() as f64, field(&json, "delivered"), "{json}");
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "in send order");
    assert!(
        rows.iter()
            .all(|&(sent, latency)| (0.0..10_000.0).contains(&sent)
                && latency > 0.0
                && latency <= field(&json, "max_ms"))
    );
    server.shutdown().await;
}

/// With stream management on, the load's client answers the server's requests for acks: each
/// of the two users reads more messages than a session may leave unacknowledged (1,000), and
/// none is lost. With archiving off they go on as their sender's bytes, kept by the recipient's
/// session until acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_run_with_stream_management_acknowledges_what_it_reads() {
    let server =
        TestServer::start_with(|c| c.archive.default = rookery::config::ArchiveDefault::Never)
            .await;
    for i in 1..=2 {
        server.add_user(&format!("acked{i}"), "pw").await;
    }
    let json = run_against(
        &server,
        "chat",
        2,
        "acked",
        &["--rate", "1500", "--duration", "2", "--sm"],
    )
    .await;
    check_chat(&json);
    assert!(field(&json, "delivered") > 2.0 * 1000.0, "{json}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_idle_runs_report_their_figures() {
    let server = TestServer::start().await;
    for i in 1..=4 {
        server.add_user(&format!("load{i}"), "pw").await;
    }
    let login = run_against(
        &server,
        "login",
        4,
        "load",
        &["--duration", "1", "--concurrency", "2"],
    )
    .await;
    assert!(field(&login, "logins") >= 1.0, "{login}");
    assert_eq!(field(&login, "errors"), 0.0, "{login}");
    let idle = run_against(&server, "idle", 4, "load", &["--duration", "0"]).await;
    assert_eq!(field(&idle, "connected"), 4.0, "{idle}");
    assert!(field(&idle, "rss_after_kb") > 0.0, "{idle}");
    server.shutdown().await;
}

#[test]
fn chat_run_against_the_relay_delivers_everything() {
    let addr = format!("127.0.0.1:{}", common::services::free_port());
    let mut relay = Command::new(env!("CARGO_BIN_EXE_rookery-bench"))
        .args(["relay", "--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let json = bench(&[
        "run",
        "--scenario",
        "chat",
        "--server",
        &addr,
        "--users",
        "10",
        "--rate",
        "100",
        "--duration",
        "2",
        "--json",
    ]);
    let _ = relay.kill();
    let _ = relay.wait();
    check_chat(&json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_spread_over_processes_holds_every_user() {
    let server = TestServer::start().await;
    for i in 1..=5 {
        server.add_user(&format!("held{i}"), "pw").await;
    }
    let idle = run_against(
        &server,
        "idle",
        5,
        "held",
        &["--processes", "2", "--duration", "0"],
    )
    .await;
    // Users 1-2 in one process and 3-5 in the other (see `scenario::share`).
    assert_eq!(field(&idle, "connected"), 5.0, "{idle}");
    assert_eq!(field(&idle, "connect_errors"), 0.0, "{idle}");
    assert!(field(&idle, "rss_after_kb") > 0.0, "{idle}");
    server.shutdown().await;
}

#[test]
fn spreading_over_processes_is_only_for_the_idle_scenario() {
    for (scenario, processes) in [("chat", "2"), ("idle", "0"), ("idle", "65")] {
        let out = Command::new(env!("CARGO_BIN_EXE_rookery-bench"))
            .args(["run", "--scenario", scenario, "--server", "127.0.0.1:5222"])
            .args(["--processes", processes])
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{scenario} over {processes}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("processes"), "{err}");
    }
}

#[test]
fn refuses_targets_off_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_rookery-bench"))
        .args(["run", "--scenario", "idle", "--server", "192.0.2.1:5222"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muc_run_counts_every_occupants_copy() {
    let server = TestServer::start_with(|c| c.muc.message_rate = 0.0).await;
    for i in 1..=12 {
        server.add_user(&format!("occ{i}"), "pw").await;
    }
    let json = run_against(
        &server,
        "muc",
        12,
        "occ",
        &["--room-size", "5", "--rate", "50", "--duration", "2"],
    )
    .await;
    // Rooms of 5, 5 and 2: every message is expected once per occupant of its room.
    let sent = field(&json, "sent");
    let expected = field(&json, "expected");
    assert!(sent >= 50.0, "{json}");
    assert!(expected >= 2.0 * sent && expected <= 5.0 * sent, "{json}");
    assert_eq!(field(&json, "delivered"), expected, "{json}");
    assert_eq!(field(&json, "connect_errors"), 0.0, "{json}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_run_posts_messages_to_the_bridge() {
    let server = TestServer::start().await;
    let addr = server.c2s.to_string();
    let http = server.http.to_string();
    let pid = std::process::id().to_string();
    let json = tokio::task::spawn_blocking(move || {
        bench(&[
            "run",
            "--scenario",
            "rest",
            "--server",
            &addr,
            "--http",
            &http,
            "--pid",
            &pid,
            "--rate",
            "100",
            "--duration",
            "2",
            "--chats",
            "3",
            "--json",
        ])
    })
    .await
    .expect("bench");
    let sent = field(&json, "sent");
    assert!(sent >= 150.0, "{json}");
    assert_eq!(field(&json, "delivered"), sent, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
    // Every post is in the store: the three chats' counts add up.
    let store = &server.running.as_ref().expect("running").server.store;
    let (apps, _) = store.rest_apps(0, 10).await.expect("apps");
    let mut total = 0;
    for c in store.rest_chats(apps[0].id, 0, 10).await.expect("chats") {
        total += c.messages_count;
    }
    assert_eq!(total as f64, sent);
    server.shutdown().await;
}
