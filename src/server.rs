//! The server's shared state: configuration, store, session table, TLS and feature modules.
//! Every connection task holds an `Arc<Server>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::config::Config;
use crate::modules::{self, Module};
use crate::router::table::SessionTable;
use crate::store::Store;
use crate::transport::tls::TlsSetup;

pub struct Server {
    pub config: Config,
    /// The served domain, normalised.
    pub domain: String,
    /// The group chat service's domain (XEP-0045).
    pub muc_domain: String,
    /// The file upload service's domain (XEP-0363).
    pub upload_domain: String,
    pub store: Arc<dyn Store>,
    /// What logins read from the store, kept in memory.
    pub credentials: crate::auth::cache::CredentialsCache,
    pub sessions: Arc<dyn SessionTable>,
    /// This node's cluster membership, in the cluster shape.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub tls: TlsSetup,
    /// Server-to-server streams; None in tests that build a server without them.
    pub federation: Option<crate::session::s2s::Federation>,
    /// RFC 5929 tls-server-end-point channel-binding data of our certificate, computed once.
    pub tls_server_end_point: Vec<u8>,
    pub modules: Vec<Arc<dyn Module>>,
    /// Stream-managed sessions of this node that a new connection may resume (XEP-0198).
    pub resumable: crate::session::sm::Registry,
    /// BOSH sessions of this node (XEP-0124).
    pub bosh: Arc<crate::transport::bosh::Sessions>,
    /// iq payload namespace → index into `modules`, built once at start.
    iq_handlers: HashMap<&'static str, usize>,
    next_conn_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Server {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        sessions: Arc<dyn SessionTable>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        tls: TlsSetup,
        federation: Option<crate::session::s2s::Federation>,
        shutdown: watch::Receiver<bool>,
    ) -> Server {
        let modules = modules::all();
        let mut iq_handlers = HashMap::new();
        for (i, m) in modules.iter().enumerate() {
            for ns in m.iq_namespaces() {
                iq_handlers.insert(*ns, i);
            }
        }
        Server {
            tls_server_end_point: crate::transport::tls::tls_server_end_point(&tls.leaf_der),
            domain: config.domain.clone(),
            muc_domain: crate::modules::muc::service_domain(&config),
            upload_domain: config.upload_domain(),
            config,
            store,
            credentials: Default::default(),
            sessions,
            cluster,
            tls,
            federation,
            modules,
            resumable: Default::default(),
            bosh: Default::default(),
            iq_handlers,
            next_conn_id: AtomicU64::new(first_conn_id()),
            shutdown,
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn iq_handler(&self, ns: &str) -> Option<&Arc<dyn Module>> {
        self.iq_handlers.get(ns).map(|&i| &self.modules[i])
    }

    /// A receiver that changes to `true` when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The running instance of a module type, for modules whose state other parts consult.
    pub fn module<T: Module + 'static>(&self) -> Option<&T> {
        self.modules.iter().find_map(|m| {
            let any: &dyn std::any::Any = m.as_ref();
            any.downcast_ref::<T>()
        })
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        domain == self.domain
    }
}

/// Connection ids start from a random base so that ids from different nodes of a cluster do
/// not collide (the session table identifies a session by its id).
fn first_conn_id() -> u64 {
    let mut base = [0u8; 4];
    let _ = getrandom::fill(&mut base);
    // Below 2^52: ids stay exact wherever they pass through a double.
    (u64::from(u32::from_be_bytes(base) & 0x000f_ffff) << 32) | 1
}

pub type SharedServer = Arc<Server>;
