//! Start-up and shutdown of a whole server: open the store, set up TLS, bind the listeners and
//! run them until asked to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::router::table::{LocalTable, SessionTable};
use crate::server::Server;
use crate::session::s2s::{Federation, dialback};
use crate::store::{self, StoreError};
use crate::transport::listener::{self, ListenerKind};
use crate::transport::peer_tls::PeerTls;
use crate::transport::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server.
pub struct Running {
    pub server: Arc<Server>,
    pub c2s_addr: SocketAddr,
    pub c2s_tls_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// None when `listen.https` is not configured.
    pub https_addr: Option<SocketAddr>,
    pub s2s_addr: SocketAddr,
    /// None when `listen.s2s_tls` is not configured.
    pub s2s_tls_addr: Option<SocketAddr>,
    /// None when no component is configured.
    pub component_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    cluster: Option<(Arc<Cluster>, Vec<JoinHandle<()>>)>,
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    listener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { key, addr, source })
}

/// Opens everything the configuration names and starts accepting connections.
pub async fn start(config: Config) -> Result<Running, StartError> {
    crate::metrics::install();
    let store = store::open(&config.storage_url()).await?;
    let tls = tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        &config.data_dir,
        &config.domain,
        config.tls.post_quantum,
    )?;
    let c2s = bind("listen.c2s", config.listen.c2s).await?;
    let c2s_tls = bind("listen.c2s_tls", config.listen.c2s_tls).await?;
    let http = bind("listen.http", config.listen.http).await?;
    let https = match config.listen.https {
        Some(addr) => Some(bind("listen.https", addr).await?),
        None => None,
    };
    let s2s = bind("listen.s2s", config.listen.s2s).await?;
    let s2s_tls = match config.listen.s2s_tls {
        Some(addr) => Some(bind("listen.s2s_tls", addr).await?),
        None => None,
    };
    // Components only where some are configured: the port stays free otherwise.
    let component = if config.components.is_empty() {
        None
    } else {
        Some(bind("listen.component", config.listen.component).await?)
    };
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let c2s_addr = local(&c2s, config.listen.c2s);
    let c2s_tls_addr = local(&c2s_tls, config.listen.c2s_tls);
    let http_addr = local(&http, config.listen.http);
    // The bound address, for URLs the server hands out (a configured port 0 is now a number).
    let mut config = config;
    config.listen.http = http_addr;
    let https_addr = https
        .as_ref()
        .zip(config.listen.https)
        .map(|(l, configured)| local(l, configured));
    config.listen.https = https_addr;
    let s2s_addr = local(&s2s, config.listen.s2s);
    let s2s_tls_addr = s2s_tls
        .as_ref()
        .zip(config.listen.s2s_tls)
        .map(|(l, configured)| local(l, configured));
    let component_addr = component
        .as_ref()
        .map(|c| local(c, config.listen.component));
    let (stop, stopped) = watch::channel(false);
    let cluster = if config.cluster.redis_url.is_empty() {
        None
    } else {
        Some(Cluster::join(&config).await?)
    };
    let sessions: Arc<dyn SessionTable> = match &cluster {
        Some(c) => c.clone(),
        None => Arc::new(LocalTable::default()),
    };
    let secret = dialback_secret(&config, cluster.as_deref()).await?;
    let federation = Federation::new(PeerTls::new(&tls, &config.s2s.trust)?, secret);
    let server = Arc::new(Server::new(
        config,
        store,
        sessions,
        cluster.clone(),
        tls,
        Some(federation),
        stopped,
    ));
    if let Some(f) = &server.federation {
        f.attach(&server);
    }
    let mut listeners = vec![
        tokio::spawn(listener::accept_loop(
            server.clone(),
            c2s,
            ListenerKind::C2sStartTls,
        )),
        tokio::spawn(listener::accept_loop(
            server.clone(),
            c2s_tls,
            ListenerKind::C2sDirectTls,
        )),
        tokio::spawn(crate::http::serve(server.clone(), http)),
        tokio::spawn(listener::accept_loop(
            server.clone(),
            s2s,
            ListenerKind::S2s,
        )),
        tokio::spawn(crate::modules::mam::expire_loop(server.clone())),
        tokio::spawn({
            let server = server.clone();
            async move {
                let shutdown = server.shutdown_signal();
                server
                    .credentials
                    .watch(server.store.as_ref(), shutdown)
                    .await;
            }
        }),
    ];
    if let (Some(https), Some(addr)) = (https, https_addr) {
        let tls = crate::http::tls::config(&server.tls.config);
        let https = crate::http::tls::HttpsListener::start(https, tls).map_err(|source| {
            StartError::Listen {
                key: "listen.https",
                addr,
                source,
            }
        })?;
        listeners.push(tokio::spawn(crate::http::serve_tls(server.clone(), https)));
    }
    if let Some(s2s_tls) = s2s_tls {
        listeners.push(tokio::spawn(listener::accept_loop(
            server.clone(),
            s2s_tls,
            ListenerKind::S2sDirectTls,
        )));
    }
    if let Some(component) = component {
        listeners.push(tokio::spawn(listener::accept_loop(
            server.clone(),
            component,
            ListenerKind::Component,
        )));
    }
    let cluster = cluster.map(|c| {
        let tasks = c.start(server.clone());
        (c, tasks)
    });
    Ok(Running {
        server,
        c2s_addr,
        c2s_tls_addr,
        http_addr,
        https_addr,
        s2s_addr,
        s2s_tls_addr,
        component_addr,
        stop,
        listeners,
        cluster,
    })
}

/// The dialback key secret (XEP-0185): configured, shared by the cluster, or random.
async fn dialback_secret(
    config: &Config,
    cluster: Option<&Cluster>,
) -> Result<dialback::Secret, StartError> {
    if !config.s2s.dialback_secret.is_empty() {
        return Ok(dialback::Secret::new(config.s2s.dialback_secret.as_bytes()));
    }
    match cluster {
        Some(c) => Ok(dialback::Secret::new(
            &c.shared_secret("s2s-dialback").await?,
        )),
        None => Ok(dialback::Secret::random()),
    }
}

impl Running {
    /// Closes every stream with `system-shutdown` and waits (a bounded time) for the sessions
    /// to say goodbye.
    pub async fn shutdown(self) {
        crate::modules::muc::shutdown(&self.server).await;
        let _ = self.stop.send(true);
        for l in self.listeners {
            let _ = l.await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.server.sessions.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Messages go out before their archive rows are written: write the last ones.
        crate::modules::mam::settle(&self.server).await;
        if let Some((cluster, tasks)) = self.cluster {
            cluster.leave(&self.server).await;
            for t in tasks {
                t.abort();
            }
        }
    }
}
