//! rookery-bench: the same XMPP load against any server, with the server's CPU and memory read
//! from /proc. Every run is bounded in count and time and talks only to loopback.
//!
//! Scenarios: `idle` (connect and hold), `chat` (1:1 messages at a fixed aggregate rate),
//! `muc` (group chat rooms of `--room-size` occupants, messages at a fixed aggregate rate,
//! every occupant's copy counted), `login` (connect-authenticate-bind-disconnect loops),
//! `rest` (message posts to the REST bridge at a fixed aggregate rate), `federation` (1:1
//! messages from users of one server to users of a peer server, over server-to-server streams). `relay` runs the reference TLS relay,
//! `provision` creates the benchmark accounts for rookery and Prosody.

mod client;
mod procstat;
mod provision;
mod relay;
mod rest;
mod scenario;
mod split;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The load generator shares the cores with the server under test, so it takes the allocator
/// that costs it least (as the server does; see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "rookery-bench",
    about = "XMPP load generator and reference relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    Idle,
    Chat,
    Muc,
    Login,
    Rest,
    Federation,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServerKind {
    Rookery,
    Prosody,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario against a server.
    Run(Box<RunArgs>),
    /// The reference relay: TLS, a token login, and forwarding by `to` without parsing.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "localhost")]
        domain: String,
    },
    /// Create benchmark accounts `<prefix>1..=<users>` for a server that is not running.
    Provision {
        #[arg(long, value_enum)]
        kind: ServerKind,
        /// rookery: the storage URL; Prosody: its data directory.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "localhost")]
        domain: String,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value = "bench")]
        prefix: String,
        #[arg(long, default_value = "bench")]
        password: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The server's c2s (STARTTLS) address, or the comma-separated addresses of a cluster's
    /// nodes (users are spread over them in turn); on loopback only.
    #[arg(long, value_delimiter = ',', required = true)]
    pub server: Vec<SocketAddr>,
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// The server's process id, to read its CPU time and memory (comma-separated for a
    /// cluster's nodes: the figures are their sums).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    #[arg(long, default_value = "bench")]
    pub password: String,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 500)]
    pub login_rate: u32,
    /// chat, muc: aggregate messages sent per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// muc: occupants per room (the users are split into rooms of this size).
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// muc: the group chat service; empty → conference.<domain>.
    #[arg(long, default_value = "")]
    pub muc_domain: String,
    /// Seconds the measured phase lasts (at most 600).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// federation: the peer server's c2s address; half the users log in there.
    #[arg(long)]
    pub peer_server: Option<SocketAddr>,
    /// federation: the peer server's domain.
    #[arg(long, default_value = "")]
    pub peer_domain: String,
    /// rest: the server's HTTP listener (loopback).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// rest: chats the posts are spread over.
    #[arg(long, default_value_t = 10)]
    pub chats: usize,
    /// login: concurrent login loops; rest: concurrent HTTP requests.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// idle: hold the connections from this many processes, each holding its share. One
    /// process may open only as many files as its limit (`ulimit -n`) allows.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// The number of the first user minus one (for a process holding a share of a run).
    #[arg(long, default_value_t = 0, hide = true)]
    pub first_user: usize,
    /// Print "held <connected> <errors> <seconds>" once the users are connected, then hold
    /// them until standard input closes (a process holding a share of a run).
    #[arg(long, hide = true)]
    pub hold: bool,
    /// chat, muc, federation: write each delivery to this file as a line "<sent> <latency>"
    /// (milliseconds; sent since the measured window began), to see when the slow ones were.
    #[arg(long, hide = true)]
    pub latency_trace: Option<std::path::PathBuf>,
    /// Enable stream management (XEP-0198, without resumption) on every connection: the
    /// server keeps what it sends until the client acknowledges it, as for mobile and desktop
    /// clients.
    #[arg(long)]
    pub sm: bool,
    /// Source addresses in 127.0.0.0/8 to spread connections over.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A label for the output (for example the server's name).
    #[arg(long, default_value = "server")]
    pub label: String,
}

fn loopback_only(args: &RunArgs) -> Result<(), String> {
    if let Some(bad) = args.server.iter().find(|s| !s.ip().is_loopback()) {
        return Err(format!("{bad} is not a loopback address"));
    }
    if let Some(bad) = args.peer_server.filter(|p| !p.ip().is_loopback()) {
        return Err(format!("{bad} is not a loopback address"));
    }
    if args.scenario == Scenario::Federation
        && (args.peer_server.is_none() || args.peer_domain.is_empty())
    {
        return Err("federation needs --peer-server and --peer-domain".into());
    }
    if let Some(bad) = args.http.filter(|h| !h.ip().is_loopback()) {
        return Err(format!("{bad} is not a loopback address"));
    }
    if let Some(bad) = args.sources.iter().find(|s| !s.is_loopback()) {
        return Err(format!("source {bad} is not a loopback address"));
    }
    if args.duration > 600 || args.users > 200_000 || args.processes > 64 {
        return Err("runs are bounded: at most 600 s, 200,000 users and 64 processes".into());
    }
    if args.processes == 0 || (args.processes > 1 && args.scenario != Scenario::Idle) {
        return Err("--processes spreads only the idle scenario, over at least one".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Provision(#[from] provision::ProvisionError),
    #[error("relay: {0}")]
    Relay(std::io::Error),
    #[error("holding connections: {0}")]
    Hold(std::io::Error),
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rookery-bench: {e}");
            std::process::exit(1);
        }
    };
    let result: Result<(), BenchError> = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                loopback_only(&args).map_err(BenchError::Usage)?;
                if args.hold {
                    return scenario::hold(&args).await.map_err(BenchError::Hold);
                }
                let report = scenario::run(&args).await;
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    report.print();
                }
                Ok(())
            }
            Command::Relay { listen, domain } => {
                if !listen.ip().is_loopback() {
                    return Err(BenchError::Usage(format!("{listen} is not loopback")));
                }
                relay::run(listen, domain).await.map_err(BenchError::Relay)
            }
            Command::Provision {
                kind,
                target,
                domain,
                users,
                prefix,
                password,
            } => {
                let dir = PathBuf::from(&target);
                match kind {
                    ServerKind::Rookery => {
                        provision::rookery(&target, users, &prefix, &password).await?
                    }
                    ServerKind::Prosody => {
                        provision::prosody(&dir, &domain, users, &prefix, &password)?
                    }
                }
                Ok(())
            }
        }
    });
    // Connections still open at the end are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("rookery-bench: {e}");
        std::process::exit(1);
    }
}
