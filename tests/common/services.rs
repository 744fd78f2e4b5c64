//! Real PostgreSQL and Redis servers for the tests, started from the Debian packages' binaries
//! in throwaway directories on loopback ports.
//!
//! Each server runs under a small shell wrapper that holds a pipe from the test process: when
//! the test process ends (even by a panic or `process::exit`), the pipe closes, the wrapper
//! stops the server and removes its directory. Statics are never dropped, so this is what
//! keeps a crashed test run from leaving servers behind.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, for a server started after it is chosen.
/// Taken below Linux's ephemeral range (32768 and up): a port the kernel hands out for
/// binding to port 0 is also what it picks for the next outgoing connection, so a server
/// started a moment later found it taken now and then. A port is handed out once per test
/// process: the check closes its socket, so two servers not yet started could get the same one.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut seed = [0u8; 4];
    getrandom::fill(&mut seed).expect("random bytes");
    let start = u32::from_le_bytes(seed) % COUNT;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let port = (0..COUNT)
        .map(|i| (FIRST + (start + i) % COUNT) as u16)
        .filter(|port| !handed_out.contains(port))
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range");
    handed_out.insert(port);
    port
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `script` under `sh`, with the server's stop command run when our end of stdin closes.
fn supervised(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sh starts")
}

fn pg_bin(name: &str) -> PathBuf {
    for version in ["17", "16", "15", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{name}"));
        if p.exists() {
            return p;
        }
    }
    panic!("PostgreSQL binaries not found: install the postgresql package");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_pg_user(cmd: &Path) -> String {
    if is_root() {
        format!(
            "setpriv --reuid=postgres --regid=postgres --init-groups {}",
            cmd.display()
        )
    } else {
        cmd.display().to_string()
    }
}

pub struct Postgres {
    pub port: u16,
    _wrapper: Child,
}

static POSTGRES: OnceLock<Postgres> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

impl Postgres {
    /// The one PostgreSQL server of this test process, started on first use.
    pub fn shared() -> &'static Postgres {
        POSTGRES.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("rookery-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown of the PostgreSQL directory failed");
        }
        let data = dir.join("data");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} -D {} -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8",
                as_pg_user(&pg_bin("initdb")),
                data.display()
            ))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let script = format!(
            "{postgres} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300 >{dir}/log 2>&1 &
             pid=$!; read _ignored; kill -INT $pid; wait $pid 2>/dev/null; rm -rf {dir}",
            postgres = as_pg_user(&pg_bin("postgres")),
            data = data.display(),
            dir = dir.display(),
        );
        let wrapper = supervised(&script);
        wait_for_port(port, "PostgreSQL");
        Postgres {
            port,
            _wrapper: wrapper,
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database on the shared server.
    pub async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        // The port opens before the server accepts sessions ("the database system is starting
        // up"): retry for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admin = loop {
            match sqlx::PgConnection::connect(&self.url("postgres")).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to PostgreSQL: {e}"),
            }
        };
        // The name is built from a process id and a counter above, never from input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.url(&name)
    }
}

/// A Redis server owned by one test, so the test can stop and restart it.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    wrapper: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("rookery-redis-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let mut redis = Redis {
            port: free_port(),
            dir,
            wrapper: None,
        };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (as a crash would: no save, connections cut).
    pub fn stop(&mut self) {
        if let Some(mut w) = self.wrapper.take() {
            drop(w.stdin.take());
            let _ = w.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) {
        assert!(self.wrapper.is_none(), "already running");
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
             --dir {dir} >{dir}/log 2>&1 &
             pid=$!; read _ignored; kill -KILL $pid; wait $pid 2>/dev/null",
            port = self.port,
            dir = self.dir.display(),
        );
        self.wrapper = Some(supervised(&script));
        wait_for_port(self.port, "Redis");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
