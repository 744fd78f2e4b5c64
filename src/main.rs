//! The `rookery` binary: parses the command line, reports start-up errors in one line.

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use rookery::auth::scram;
use rookery::cli::{Cli, Command, UserAction, password, username_for};
use rookery::config::Config;
use rookery::store::{self, StoreError};

/// jemalloc rather than the C library's malloc: a connection's buffers are allocated on one
/// worker thread and freed on another, and glibc's arenas serialise those frees on a lock (a
/// fifth of the CPU time of a group chat fan-out went to malloc, free and their futex waits).
/// It also keeps less memory per idle connection.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one background thread returns freed pages to the
/// system within a second, instead of connections' threads doing it as they allocate.
// The name is jemalloc's (with tikv-jemalloc-sys's symbol prefix); it overrides a weak default.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rookery: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        // Every error type here already names its cause in its message; `{:#}` would repeat it.
        eprintln!("rookery: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => serve(load_config(config.as_deref())?).await,
        Command::Migrate { config } => {
            let config = load_config(config.as_deref())?;
            store::open(&config.storage_url()).await?;
            println!(
                "schema of {} is up to date",
                store::redacted(&config.storage_url())
            );
            Ok(())
        }
        Command::User { config, action } => user(load_config(config.as_deref())?, action).await,
    }
}

async fn serve(config: Config) -> Result<()> {
    let running = rookery::app::start(config).await?;
    tracing::info!(domain = %running.server.domain, "rookery started");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| anyhow!("cannot handle SIGINT: {e}"))?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn user(config: Config, action: UserAction) -> Result<()> {
    let store = store::open(&config.storage_url()).await?;
    match action {
        UserAction::Add { jid, password: pw } => {
            let user = username_for(&jid, &config.domain)?;
            let creds = scram::derive_credentials(&password(pw)?, scram::DEFAULT_ITERATIONS)?;
            match store.create_account(&user, &creds).await {
                Err(StoreError::AccountExists) => bail!("{user}@{} already exists", config.domain),
                r => r?,
            }
            println!("created {user}@{}", config.domain);
        }
        UserAction::Passwd { jid, password: pw } => {
            let user = username_for(&jid, &config.domain)?;
            let creds = scram::derive_credentials(&password(pw)?, scram::DEFAULT_ITERATIONS)?;
            match store.set_credentials(&user, &creds).await {
                Err(StoreError::NoSuchAccount) => bail!("{user}@{} does not exist", config.domain),
                r => r?,
            }
            println!("password changed for {user}@{}", config.domain);
        }
        UserAction::Delete { jid } => {
            let user = username_for(&jid, &config.domain)?;
            if !store.delete_account(&user).await? {
                bail!("{user}@{} does not exist", config.domain);
            }
            println!("deleted {user}@{}", config.domain);
        }
        UserAction::List => {
            for user in store.list_accounts().await? {
                println!("{user}@{}", config.domain);
            }
        }
    }
    Ok(())
}
