//! The scenarios and their report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;

use crate::client::{self, ClientError, Conn, Target};
use crate::procstat::{self, Sample};
use crate::split::Seen;
use crate::{RunArgs, Scenario};

/// How long in-flight messages may take to arrive after sending stops.
const DRAIN: Duration = Duration::from_secs(5);
/// How long joining a room, or a connection's first round trip, may take.
const READY_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub users: usize,
    pub connected: usize,
    pub connect_errors: usize,
    pub connect_seconds: f64,
    pub rate: u32,
    pub sent: u64,
    /// Copies that should arrive: one per chat message, one per occupant per room message.
    pub expected: u64,
    pub delivered: u64,
    pub errors: u64,
    pub window_seconds: f64,
    pub latency_ms: [f64; 4],
    pub logins: u64,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub cpu_seconds: f64,
}

impl Report {
    fn per_second(&self, n: u64) -> f64 {
        if self.window_seconds > 0.0 {
            n as f64 / self.window_seconds
        } else {
            0.0
        }
    }

    pub fn rss_per_connection_kb(&self) -> f64 {
        if self.connected == 0 {
            return 0.0;
        }
        self.rss_after_kb.saturating_sub(self.rss_before_kb) as f64 / self.connected as f64
    }

    pub fn cpu_per_10k(&self) -> f64 {
        let n = if self.delivered > 0 {
            self.delivered
        } else {
            self.logins
        };
        if n == 0 {
            return 0.0;
        }
        self.cpu_seconds / n as f64 * 10_000.0
    }

    pub fn to_json(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        format!(
            "{{\"label\":\"{}\",\"scenario\":\"{}\",\"users\":{},\"connected\":{},\
             \"connect_errors\":{},\"connect_seconds\":{:.3},\"rate\":{},\"sent\":{},\
             \"expected\":{},\"delivered\":{},\"lost\":{},\"errors\":{},\"window_seconds\":{:.3},\
             \"delivered_per_second\":{:.1},\"p50_ms\":{p50:.3},\"p90_ms\":{p90:.3},\
             \"p99_ms\":{p99:.3},\"max_ms\":{max:.3},\"logins\":{},\"logins_per_second\":{:.1},\
             \"rss_before_kb\":{},\"rss_after_kb\":{},\"rss_per_connection_kb\":{:.2},\
             \"cpu_seconds\":{:.2},\"cpu_seconds_per_10k\":{:.3}}}",
            self.label,
            self.scenario,
            self.users,
            self.connected,
            self.connect_errors,
            self.connect_seconds,
            self.rate,
            self.sent,
            self.expected,
            self.delivered,
            self.expected.saturating_sub(self.delivered),
            self.errors,
            self.window_seconds,
            self.per_second(self.delivered),
            self.logins,
            self.per_second(self.logins),
            self.rss_before_kb,
            self.rss_after_kb,
            self.rss_per_connection_kb(),
            self.cpu_seconds,
            self.cpu_per_10k(),
        )
    }

    pub fn print(&self) {
        println!("{} / {}", self.label, self.scenario);
        println!(
            "  connected {}/{} in {:.2} s ({} errors)",
            self.connected, self.users, self.connect_seconds, self.connect_errors
        );
        match self.scenario.as_str() {
            "chat" | "muc" | "rest" | "federation" => {
                let [p50, p90, p99, max] = self.latency_ms;
                println!(
                    "  sent {} delivered {} lost {} errors {} at {:.0} deliveries/s (sending {}/s)",
                    self.sent,
                    self.delivered,
                    self.expected.saturating_sub(self.delivered),
                    self.errors,
                    self.per_second(self.delivered),
                    self.rate
                );
                println!("  latency ms p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.2}");
                println!(
                    "  server CPU {:.2} s, {:.3} s per 10k messages",
                    self.cpu_seconds,
                    self.cpu_per_10k()
                );
            }
            "login" => println!(
                "  {} logins in {:.1} s: {:.0}/s, {} errors, server CPU {:.2} s",
                self.logins,
                self.window_seconds,
                self.per_second(self.logins),
                self.errors,
                self.cpu_seconds
            ),
            _ => println!(
                "  server RSS {} kB → {} kB: {:.1} kB per connection",
                self.rss_before_kb,
                self.rss_after_kb,
                self.rss_per_connection_kb()
            ),
        }
    }
}

/// A small xorshift generator: the load only needs cheap, uncorrelated picks.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn target(args: &RunArgs) -> Target {
    Target {
        addrs: args.server.clone(),
        domain: args.domain.clone(),
        tls: client::tls_config(),
        sources: args.sources.clone(),
        salted: Arc::new(Mutex::new(HashMap::new())),
        sm: args.sm,
    }
}

type Connection = Conn<TlsStream<TcpStream>>;

/// Logs `args.users` users in at `args.login_rate` per second.
async fn connect_all(args: &RunArgs, target: &Target) -> (Vec<Option<Connection>>, usize, f64) {
    connect_users(args, target, args.users).await
}

/// Logs users 1..=`users` (after `args.first_user`) in at `args.login_rate` per second.
async fn connect_users(
    args: &RunArgs,
    target: &Target,
    users: usize,
) -> (Vec<Option<Connection>>, usize, f64) {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(users);
    for i in 0..users {
        let due = start + Duration::from_secs_f64(i as f64 / args.login_rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let target = target.clone();
        let n = args.first_user + i;
        let user = format!("{}{}", args.prefix, n + 1);
        let password = args.password.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                client::login(&target, n, &user, &password, "r"),
            )
            .await
        }));
    }
    let mut conns = Vec::with_capacity(users);
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok(Ok(Ok(c))) => conns.push(Some(c)),
            other => {
                if errors < 3 {
                    eprintln!("login failed: {}", describe(other));
                }
                errors += 1;
                conns.push(None);
            }
        }
    }
    (conns, errors, start.elapsed().as_secs_f64())
}

fn describe(
    r: Result<
        Result<Result<Connection, ClientError>, tokio::time::error::Elapsed>,
        tokio::task::JoinError,
    >,
) -> String {
    match r {
        Ok(Ok(Ok(_))) => "ok".into(),
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Err(_)) => "timed out".into(),
        Err(e) => e.to_string(),
    }
}

pub async fn run(args: &RunArgs) -> Report {
    let mut report = Report {
        label: args.label.clone(),
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        users: args.users,
        rate: args.rate,
        ..Report::default()
    };
    let target = target(args);
    if args.scenario == Scenario::Idle && args.processes > 1 {
        if let Err(e) = idle_spread(args, &mut report).await {
            eprintln!("idle over {} processes: {e}", args.processes);
        }
        return report;
    }
    if args.scenario == Scenario::Login {
        login_loops(args, &target, &mut report).await;
        return report;
    }
    if args.scenario == Scenario::Rest {
        crate::rest::run(args, &mut report).await;
        return report;
    }
    let before = procstat::sample(&args.pid).unwrap_or_default();
    if args.scenario == Scenario::Federation {
        federation(args, &target, &mut report, before.rss_kb).await;
        return report;
    }
    let (conns, errors, seconds) = connect_all(args, &target).await;
    report.connect_errors = errors;
    report.connect_seconds = seconds;
    report.connected = conns.iter().filter(|c| c.is_some()).count();
    report.rss_before_kb = before.rss_kb;
    match args.scenario {
        Scenario::Idle => idle(args, conns, &mut report).await,
        Scenario::Muc => muc(args, conns, &mut report).await,
        _ => chat(args, conns, &mut report).await,
    }
    report
}

async fn idle(args: &RunArgs, conns: Vec<Option<Connection>>, report: &mut Report) {
    // Memory is read at the end of the idle period, so that it is what idle connections hold
    // (every server has settled: lazy allocations, pending writes, buffers it frees when
    // connections go quiet).
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let after = procstat::sample(&args.pid).unwrap_or_default();
    report.rss_after_kb = after.rss_kb;
    for c in conns.into_iter().flatten() {
        c.close().await;
    }
}

/// The idle scenario with its users spread over `args.processes` copies of this program, each
/// holding its share (see [`hold`]): one process may open only as many files as its limit
/// allows, and holding 100,000 connections takes more than one process where that limit is
/// lower. Memory is read when every share is connected and has been idle for the run's
/// duration.
async fn idle_spread(args: &RunArgs, report: &mut Report) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt;

    report.rss_before_kb = procstat::sample(&args.pid).unwrap_or_default().rss_kb;
    let exe = std::env::current_exe()?;
    let processes = args.processes;
    let joined = |items: Vec<String>| items.join(",");
    let mut children = Vec::with_capacity(processes);
    for k in 0..processes {
        let (first, users) = share(args.users, processes, k);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["run", "--scenario", "idle", "--hold"])
            .arg("--server")
            .arg(joined(args.server.iter().map(|a| a.to_string()).collect()))
            .args(["--domain", &args.domain, "--prefix", &args.prefix])
            .args(["--password", &args.password])
            .args(["--users", &users.to_string()])
            .args(["--first-user", &first.to_string()])
            .arg("--login-rate")
            .arg((args.login_rate / processes as u32).max(1).to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if !args.sources.is_empty() {
            cmd.arg("--sources")
                .arg(joined(args.sources.iter().map(|a| a.to_string()).collect()));
        }
        children.push(cmd.spawn()?);
    }
    // Each share says when its users are connected.
    let connecting =
        Duration::from_secs(120 + (args.users as u64) / u64::from(args.login_rate.max(1)));
    for child in &mut children {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no standard output"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(connecting, lines.next_line())
            .await
            .map_err(|_| std::io::Error::other("a share did not finish connecting"))??
            .unwrap_or_default();
        let held: Vec<&str> = line.split_whitespace().collect();
        match held.as_slice() {
            ["held", connected, errors, seconds] => {
                report.connected += connected.parse::<usize>().unwrap_or(0);
                report.connect_errors += errors.parse::<usize>().unwrap_or(0);
                report.connect_seconds = report
                    .connect_seconds
                    .max(seconds.parse::<f64>().unwrap_or(0.0));
            }
            _ => return Err(std::io::Error::other(format!("a share said {line:?}"))),
        }
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    report.rss_after_kb = procstat::sample(&args.pid).unwrap_or_default().rss_kb;
    // Closing a share's standard input lets it close its connections and end.
    for child in &mut children {
        drop(child.stdin.take());
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Ok(())
}

/// Share `k` of `users` split over `processes`: the number of users before it, and its size.
/// The shares are contiguous, disjoint, cover every user and differ in size by at most one.
fn share(users: usize, processes: usize, k: usize) -> (usize, usize) {
    let first = users * k / processes;
    (first, users * (k + 1) / processes - first)
}

/// One share of [`idle_spread`]: connects its users, says so on standard output, and holds
/// them until standard input closes.
pub async fn hold(args: &RunArgs) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let target = target(args);
    let (conns, errors, seconds) = connect_all(args, &target).await;
    let connected = conns.iter().filter(|c| c.is_some()).count();
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("held {connected} {errors} {seconds:.3}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    for c in conns.into_iter().flatten() {
        c.close().await;
    }
    Ok(())
}

#[derive(Default)]
struct ChatStats {
    sent: AtomicU64,
    /// Messages a connection took from its queue and could not write (its stream failed).
    unsent: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// Whether `traced` is filled (`--latency-trace`).
    tracing: AtomicBool,
    /// (send stamp, latency) of each delivery, in microseconds.
    traced: Mutex<Vec<(u64, u32)>>,
}

impl ChatStats {
    fn reset(&self) {
        for counter in [
            &self.sent,
            &self.unsent,
            &self.expected,
            &self.delivered,
            &self.errors,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Ok(mut l) = self.latencies_us.lock() {
            l.clear();
        }
    }
}

enum Wake {
    Read(Result<(), ClientError>),
    /// The next message to send; `None` once the run has dropped the queue's sender (its end).
    Send(Option<usize>),
}

/// What one connection sends: `kind` messages to `targets[index]` for each index it is handed,
/// each expected to arrive `fanout` times; a room to join first (as room@service/nick), if any.
struct Sending {
    targets: Arc<Vec<String>>,
    kind: &'static str,
    fanout: u64,
    join: Option<String>,
}

async fn conn_task(
    mut conn: Connection,
    mut rx: mpsc::Receiver<usize>,
    stats: Arc<ChatStats>,
    sending: Sending,
    ready: oneshot::Sender<bool>,
    epoch: Instant,
) {
    let mut latencies = Vec::new();
    if conn.send("<presence/>").await.is_err() {
        let _ = ready.send(false);
        return;
    }
    // Ready once the server has handled the presence (and the join): a run's first messages
    // would otherwise queue behind every user's presence and measure the logins' aftermath.
    let settled = match &sending.join {
        Some(occupant) => tokio::time::timeout(READY_WAIT, join_room(&mut conn, occupant))
            .await
            .unwrap_or(false),
        None => matches!(
            tokio::time::timeout(READY_WAIT, conn.round_trip()).await,
            Ok(Ok(()))
        ),
    };
    let _ = ready.send(settled);
    if !settled {
        return;
    }
    loop {
        let wake = tokio::select! {
            r = conn.read_seen(|seen| match seen {
                Seen::Stamped(sent_at) => latencies.push(sent_at),
                Seen::Error => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                Seen::Other => {}
            }) => Wake::Read(r),
            j = rx.recv() => Wake::Send(j),
        };
        match wake {
            Wake::Read(Err(_)) | Wake::Send(None) => break,
            Wake::Read(Ok(())) => {
                if conn.answer_acks().await.is_err() {
                    break;
                }
                if latencies.is_empty() {
                    continue;
                }
                // One lock for all the messages of a read: fan-out delivers them in bursts.
                let now = epoch.elapsed().as_micros() as u64;
                stats
                    .delivered
                    .fetch_add(latencies.len() as u64, Ordering::Relaxed);
                let latency =
                    |sent_at: u64| now.saturating_sub(sent_at).min(u32::MAX as u64) as u32;
                if let Ok(mut l) = stats.latencies_us.lock() {
                    l.extend(latencies.iter().map(|&sent_at| latency(sent_at)));
                }
                if stats.tracing.load(Ordering::Relaxed)
                    && let Ok(mut t) = stats.traced.lock()
                {
                    t.extend(latencies.iter().map(|&s| (s, latency(s))));
                }
                latencies.clear();
            }
            Wake::Send(Some(j)) => {
                let stamp = epoch.elapsed().as_micros();
                let msg = format!(
                    "<message to='{}' type='{}'><body>b:{stamp}</body></message>",
                    sending.targets[j], sending.kind
                );
                if conn.send(&msg).await.is_err() {
                    stats.unsent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
                stats.expected.fetch_add(sending.fanout, Ordering::Relaxed);
            }
        }
    }
    conn.close().await;
}

/// Joins a room without history; the first occupant also accepts the default configuration
/// (an instant room, XEP-0045 §10.1.2), which unlocks the room on every server.
async fn join_room(conn: &mut Connection, occupant: &str) -> bool {
    let room = occupant.split('/').next().unwrap_or_default().to_owned();
    let presence = format!(
        "<presence to='{occupant}'><x xmlns='http://jabber.org/protocol/muc'>\
         <history maxstanzas='0'/></x></presence>"
    );
    if conn.send(&presence).await.is_err() {
        return false;
    }
    let mut stanzas = Vec::new();
    loop {
        stanzas.clear();
        if conn.read_stanzas(&mut stanzas).await.is_err() {
            return false;
        }
        for el in &stanzas {
            if el.name() == "iq" && el.attr("id") == Some("bench-cfg") {
                return el.attr("type") == Some("result");
            }
            if el.name() != "presence" || el.attr("from") != Some(occupant) {
                continue;
            }
            if el.attr("type") == Some("error") {
                return false;
            }
            let created = el
                .children()
                .filter(|x| x.name() == "x")
                .flat_map(|x| x.children())
                .any(|c| c.name() == "status" && c.attr("code") == Some("201"));
            if !created {
                return true;
            }
            let instant = format!(
                "<iq type='set' id='bench-cfg' to='{room}'>\
                 <query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            );
            if conn.send(&instant).await.is_err() {
                return false;
            }
        }
    }
}

/// p50, p90, p99 and max in milliseconds of latencies recorded in microseconds.
pub fn latency_summary(recorded: &Mutex<Vec<u32>>) -> [f64; 4] {
    let mut lat = recorded.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    [
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
    ]
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// The connections' tasks, their queues, and what they count.
struct Load {
    senders: Vec<mpsc::Sender<usize>>,
    live: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<ChatStats>,
    epoch: Instant,
}

impl Load {
    fn new() -> Load {
        Load {
            senders: Vec::new(),
            live: Vec::new(),
            stats: Arc::new(ChatStats::default()),
            epoch: Instant::now(),
        }
    }

    /// Starts a connection's task; the answer says whether it got ready (see `conn_task`).
    fn spawn(&mut self, conn: Connection, sending: Sending) -> oneshot::Receiver<bool> {
        let (tx, rx) = mpsc::channel(1024);
        let (ready, is_ready) = oneshot::channel();
        self.senders.push(tx);
        self.live.push(tokio::spawn(conn_task(
            conn,
            rx,
            self.stats.clone(),
            sending,
            ready,
            self.epoch,
        )));
        is_ready
    }
}

/// Waits until every connection is ready; returns how many could not get so.
async fn unready(readies: Vec<oneshot::Receiver<bool>>) -> usize {
    let mut failed = 0;
    for rx in readies {
        if !rx.await.unwrap_or(false) {
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("{failed} connections did not get ready");
    }
    failed
}

async fn chat(args: &RunArgs, conns: Vec<Option<Connection>>, report: &mut Report) {
    let mut load = Load::new();
    let jids: Vec<String> = conns.iter().flatten().map(|c| c.jid.clone()).collect();
    let jids = Arc::new(jids);
    let mut readies = Vec::new();
    for c in conns.into_iter().flatten() {
        let sending = Sending {
            targets: jids.clone(),
            kind: "chat",
            fanout: 1,
            join: None,
        };
        readies.push(load.spawn(c, sending));
    }
    let n = load.senders.len();
    if n < 2 {
        eprintln!("chat needs at least two connected users");
        return;
    }
    report.connect_errors += unready(readies).await;
    // Presence broadcasts to contacts settle before the measured window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drive(args, load, report, |rng| {
        let from = rng.below(n);
        let mut to = rng.below(n - 1);
        if to >= from {
            to += 1;
        }
        (from, to)
    })
    .await;
}

/// Half the users on the server, half on its peer (`--peer-server`, `--peer-domain`); each
/// message goes from a user of the server to a user of the peer, so every one crosses a
/// server-to-server stream. `--pid` should name both servers: the figures are their sums.
async fn federation(args: &RunArgs, target: &Target, report: &mut Report, rss_before_kb: u64) {
    let (Some(peer_addr), half) = (args.peer_server, args.users / 2) else {
        return;
    };
    let peer = Target {
        addrs: vec![peer_addr],
        domain: args.peer_domain.clone(),
        ..target.clone()
    };
    let (senders, errors_a, seconds_a) = connect_users(args, target, half).await;
    let (receivers, errors_b, seconds_b) = connect_users(args, &peer, half).await;
    report.connect_errors = errors_a + errors_b;
    report.connect_seconds = seconds_a + seconds_b;
    report.connected = senders
        .iter()
        .chain(&receivers)
        .filter(|c| c.is_some())
        .count();
    report.rss_before_kb = rss_before_kb;
    let mut load = Load::new();
    let peers: Vec<String> = receivers.iter().flatten().map(|c| c.jid.clone()).collect();
    let peers = Arc::new(peers);
    let mut readies = Vec::new();
    for c in senders.into_iter().flatten() {
        let sending = Sending {
            targets: peers.clone(),
            kind: "chat",
            fanout: 1,
            join: None,
        };
        readies.push(load.spawn(c, sending));
    }
    let n = load.senders.len();
    for c in receivers.into_iter().flatten() {
        let receiving = Sending {
            targets: Arc::new(Vec::new()),
            kind: "chat",
            fanout: 0,
            join: None,
        };
        readies.push(load.spawn(c, receiving));
    }
    if n == 0 || peers.is_empty() {
        eprintln!("federation needs users on both servers");
        return;
    }
    report.connect_errors += unready(readies).await;
    // One message opens the server-to-server streams before the measured window; it is not
    // counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = load.senders[0].try_send(0);
    let opened = Instant::now();
    // Both counts, so that the warm-up message is counted before the reset and never after.
    while (load.stats.delivered.load(Ordering::Relaxed) == 0
        || load.stats.sent.load(Ordering::Relaxed) == 0)
        && opened.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.stats.reset();
    drive(args, load, report, |rng| {
        (rng.below(n), rng.below(peers.len()))
    })
    .await;
}

/// Rooms of `room_size` occupants; each message goes to the sender's room and is counted at
/// every occupant, the sender included.
async fn muc(args: &RunArgs, conns: Vec<Option<Connection>>, report: &mut Report) {
    let service = if args.muc_domain.is_empty() {
        format!("conference.{}", args.domain)
    } else {
        args.muc_domain.clone()
    };
    let conns: Vec<Connection> = conns.into_iter().flatten().collect();
    let size = args.room_size.max(2);
    let rooms: Vec<String> = (0..conns.len().div_ceil(size))
        .map(|r| format!("benchroom{r}@{service}"))
        .collect();
    let rooms = Arc::new(rooms);
    let members = |r: usize| (conns.len() - r * size).min(size) as u64;
    let fanouts: Vec<u64> = (0..rooms.len()).map(members).collect();
    let mut load = Load::new();
    let mut readies = Vec::new();
    // Each room's creator first, so that the others join a room that exists and is unlocked.
    let mut creators = Vec::new();
    let mut others = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        if i % size == 0 {
            creators.push((i, c));
        } else {
            others.push((i, c));
        }
    }
    let mut occupant_rooms = Vec::new();
    for batch in [creators, others] {
        let mut waiting = Vec::new();
        for (i, c) in batch {
            let r = i / size;
            let nick = c.jid.split('@').next().unwrap_or("occupant").to_owned();
            let sending = Sending {
                targets: rooms.clone(),
                kind: "groupchat",
                fanout: fanouts[r],
                join: Some(format!("{}/{nick}", rooms[r])),
            };
            waiting.push(load.spawn(c, sending));
            occupant_rooms.push(r);
        }
        for rx in waiting {
            readies.push(rx.await.unwrap_or(false));
        }
    }
    let joined = readies.iter().filter(|ok| **ok).count();
    report.connect_errors += readies.len() - joined;
    if joined < readies.len() {
        eprintln!(
            "{} of {} occupants could not join",
            readies.len() - joined,
            readies.len()
        );
    }
    let speakers: Vec<usize> = (0..readies.len()).filter(|&i| readies[i]).collect();
    if speakers.is_empty() {
        eprintln!("muc needs occupants");
        return;
    }
    // Join presences settle before the measured window.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drive(args, load, report, |rng| {
        let who = speakers[rng.below(speakers.len())];
        (who, occupant_rooms[who])
    })
    .await;
}

/// Sends `args.rate` messages a second for `args.duration` seconds, each from and to what
/// `pick` says (connection, target index), lets the last ones arrive, and fills the report.
async fn drive(
    args: &RunArgs,
    load: Load,
    report: &mut Report,
    mut pick: impl FnMut(&mut Rng) -> (usize, usize),
) {
    let Load {
        senders,
        live,
        stats,
        epoch,
    } = load;
    let cpu_before = procstat::sample(&args.pid).unwrap_or_default();
    let mut rng = Rng::new();
    stats
        .tracing
        .store(args.latency_trace.is_some(), Ordering::Relaxed);
    let start = Instant::now();
    let window = Duration::from_secs(args.duration);
    let mut scheduled = 0u64;
    let mut queued = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    while start.elapsed() < window {
        ticker.tick().await;
        let due = (args.rate as f64 * start.elapsed().as_secs_f64()) as u64;
        while scheduled < due {
            let (from, to) = pick(&mut rng);
            // A full queue means this connection cannot keep up: the message is not sent,
            // so it counts neither as sent nor as lost.
            if senders[from].try_send(to).is_ok() {
                queued += 1;
            }
            scheduled += 1;
        }
    }
    let window_seconds = start.elapsed().as_secs_f64();
    let drain_until = Instant::now() + DRAIN;
    // Every queued message is written (or its connection failed) before the wait for
    // deliveries: a message taken from its queue but not yet counted as sent would otherwise
    // let that wait end early and lose its deliveries.
    while Instant::now() < drain_until
        && stats.sent.load(Ordering::Relaxed) + stats.unsent.load(Ordering::Relaxed) < queued
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while Instant::now() < drain_until
        && stats.delivered.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed)
            < stats.expected.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = procstat::sample(&args.pid).unwrap_or_default();
    // Dropping the queues ends every connection's task (see `Wake::Send`).
    drop(senders);
    for h in live {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    report.sent = stats.sent.load(Ordering::Relaxed);
    report.expected = stats.expected.load(Ordering::Relaxed);
    report.delivered = stats.delivered.load(Ordering::Relaxed);
    report.errors = stats.errors.load(Ordering::Relaxed);
    report.window_seconds = window_seconds;
    report.latency_ms = latency_summary(&stats.latencies_us);
    if let Some(path) = &args.latency_trace {
        let since = start.saturating_duration_since(epoch).as_micros() as u64;
        write_trace(path, &stats.traced, since);
    }
    report.cpu_seconds = cpu_delta(cpu_before, cpu_after);
    report.rss_after_kb = cpu_after.rss_kb;
}

/// Writes the traced deliveries in the order they were sent, stamps taken relative to `since`.
fn write_trace(path: &std::path::Path, traced: &Mutex<Vec<(u64, u32)>>, since: u64) {
    let mut rows = traced.lock().map(|t| t.clone()).unwrap_or_default();
    rows.sort_unstable();
    let text: String = rows
        .iter()
        .map(|&(sent, latency)| {
            format!(
                "{:.3} {:.3}\n",
                sent.saturating_sub(since) as f64 / 1000.0,
                latency as f64 / 1000.0
            )
        })
        .collect();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn cpu_delta(before: Sample, after: Sample) -> f64 {
    (after.cpu_seconds - before.cpu_seconds).max(0.0)
}

/// Logs every user in once before the window opens. A client keeps its SCRAM SaltedPassword
/// (RFC 5802, section 5.1, lets it), and so does the generator (`Target::salted`): without this
/// the window's first second would be spent on one PBKDF2 per user in the generator, on the
/// same cores as the server, and would count against whichever server logged in fastest.
async fn warm_up_logins(args: &RunArgs, target: &Target) {
    let (users, concurrency) = (args.users.max(1), args.concurrency.max(1));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let target = target.clone();
        let (prefix, password) = (args.prefix.clone(), args.password.clone());
        workers.push(tokio::spawn(async move {
            for k in (w..users).step_by(concurrency) {
                let user = format!("{prefix}{}", k + 1);
                if let Ok(c) = client::login(&target, k, &user, &password, &format!("w{w}")).await {
                    c.close().await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

async fn login_loops(args: &RunArgs, target: &Target, report: &mut Report) {
    warm_up_logins(args, target).await;
    let logins = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = procstat::sample(&args.pid).unwrap_or_default();
    let start = Instant::now();
    let window = Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let (target, logins, errors) = (target.clone(), logins.clone(), errors.clone());
        let (prefix, password) = (args.prefix.clone(), args.password.clone());
        let (users, concurrency) = (args.users.max(1), args.concurrency.max(1));
        workers.push(tokio::spawn(async move {
            let mut k = w;
            while start.elapsed() < window {
                let user = format!("{prefix}{}", k % users + 1);
                k += concurrency;
                match client::login(&target, k, &user, &password, &format!("l{w}")).await {
                    Ok(c) => {
                        c.close().await;
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let after = procstat::sample(&args.pid).unwrap_or_default();
    report.window_seconds = start.elapsed().as_secs_f64();
    report.logins = logins.load(Ordering::Relaxed);
    report.errors = errors.load(Ordering::Relaxed);
    report.cpu_seconds = cpu_delta(before, after);
    report.rss_before_kb = before.rss_kb;
    report.rss_after_kb = after.rss_kb;
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_user_once() {
        assert_eq!(share(5, 2, 0), (0, 2));
        assert_eq!(share(5, 2, 1), (2, 3));
        for (users, processes) in [(100_000, 6), (7, 7), (3, 5), (1, 1)] {
            let mut next = 0;
            for k in 0..processes {
                let (first, n) = share(users, processes, k);
                assert_eq!(first, next, "{users} over {processes}");
                assert!(n.abs_diff(users / processes) <= 1);
                next = first + n;
            }
            assert_eq!(next, users, "{users} over {processes}");
        }
    }
}
