//! The `rest` scenario: an application posts messages to its chats over the REST bridge at a
//! fixed aggregate rate, over a pool of keep-alive HTTP connections; each post's round trip
//! (request to `201 Created` with its number) is its latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::RunArgs;
use crate::procstat;
use crate::scenario::{Report, Rng, latency_summary};

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    created: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// Creates an application with `args.chats` chats; the URLs of their message lists.
async fn setup(http: &reqwest::Client, base: &str, chats: usize) -> Result<Vec<String>, String> {
    let app: Value = http
        .post(format!("{base}/applications"))
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let token = app["token"]
        .as_str()
        .ok_or_else(|| format!("no application created: {app}"))?;
    let mut urls = Vec::new();
    for _ in 0..chats.max(1) {
        let chat: Value = http
            .post(format!("{base}/applications/{token}/chats"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let n = chat["number"]
            .as_i64()
            .ok_or_else(|| format!("no chat created: {chat}"))?;
        urls.push(format!("{base}/applications/{token}/chats/{n}/messages"));
    }
    Ok(urls)
}

pub async fn run(args: &RunArgs, report: &mut Report) {
    let Some(addr) = args.http else {
        eprintln!("rest needs --http (the server's HTTP listener)");
        return;
    };
    let base = format!("http://{addr}/api/v1");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let urls = match setup(&http, &base, args.chats).await {
        Ok(u) => Arc::new(u),
        Err(e) => {
            eprintln!("rest: cannot set up the application: {e}");
            report.errors += 1;
            return;
        }
    };
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel::<(usize, Instant)>(args.concurrency * 64);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, urls, stats, rx) = (http.clone(), urls.clone(), stats.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            loop {
                // The lock is only held while waiting for the next job, never over a request.
                let job = rx.lock().await.recv().await;
                let Some((chat, due)) = job else { break };
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let sent = http
                    .post(&urls[chat])
                    .json(&json!({"body": "a message posted by the benchmark"}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let _ = r.bytes().await;
                        stats.created.fetch_add(1, Ordering::Relaxed);
                        let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        if let Ok(mut l) = stats.latencies_us.lock() {
                            l.push(us);
                        }
                    }
                    _ => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let before = procstat::sample(&args.pid).unwrap_or_default();
    let mut rng = Rng::new();
    let start = Instant::now();
    let window = Duration::from_secs(args.duration);
    let mut scheduled = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    while start.elapsed() < window {
        ticker.tick().await;
        let due = (args.rate as f64 * start.elapsed().as_secs_f64()) as u64;
        while scheduled < due {
            // Latency counts from when the post was due, so a backlog shows as latency; a
            // full queue means the pool cannot keep up and the post is not made at all.
            let _ = tx.try_send((rng.below(urls.len()), Instant::now()));
            scheduled += 1;
        }
    }
    report.window_seconds = start.elapsed().as_secs_f64();
    drop(tx);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let after = procstat::sample(&args.pid).unwrap_or_default();
    report.sent = stats.sent.load(Ordering::Relaxed);
    report.expected = report.sent;
    report.delivered = stats.created.load(Ordering::Relaxed);
    report.errors = stats.errors.load(Ordering::Relaxed);
    report.latency_ms = latency_summary(&stats.latencies_us);
    report.cpu_seconds = (after.cpu_seconds - before.cpu_seconds).max(0.0);
    report.rss_before_kb = before.rss_kb;
    report.rss_after_kb = after.rss_kb;
}
