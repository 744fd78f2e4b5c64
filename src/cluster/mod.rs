//! The cluster shape: N nodes with one domain, one PostgreSQL and one Redis act as one server.
//!
//! Redis holds the shared session table (who is bound where, with what presence), the nodes'
//! leases and each node's bus stream. Every node keeps the whole table in memory as its local
//! view ([`View`]), kept current by change events that the table's scripts publish, so routing
//! a stanza reads memory and never waits for Redis.
//!
//! - Binding: one script checks for a conflicting binding, writes the new one and publishes
//!   the change; then the binding node waits until every other node has acknowledged the event
//!   (bounded), so the new resource is routable everywhere before its bind result is sent.
//! - Conflicts: bindings carry a cluster-wide sequence number; of two bindings of one full JID
//!   the higher wins on every node, and the node holding the loser closes it with `conflict`.
//! - Liveness: each node renews a lease (Redis time); any node that sees an expired lease
//!   reaps that node in one script (its bindings and bus stream), broadcasts unavailable
//!   presence for its resources and re-routes the frames it had not read.
//! - Redis outage: local sessions keep working from the view; writes that fail mark the node
//!   dirty, and once Redis answers again the node puts its sessions back (and, if it was
//!   reaped meanwhile, announces their presence again).

pub mod bus;
mod moves;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use minidom::Element;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::jid::FullJid;
use crate::router::table::{
    Bound, Endpoint, RemoteSession, Resource, SessionCommand, SessionSender, SessionTable,
    TableError, View,
};
use crate::server::Server;
use crate::stream::writer;
use bus::{BusSender, Frame, Op, Outgoing};

/// How long a binding waits for the other nodes to acknowledge it before answering anyway (a
/// node that does not answer in time is about to lose its lease).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis ({url}): {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
}

/// A session as stored in Redis and carried in change events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    conn: u64,
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<String>,
    #[serde(default)]
    priority: i8,
    #[serde(default)]
    interested: bool,
    #[serde(default)]
    carbons: bool,
}

impl Record {
    fn of(r: &Resource) -> Record {
        Record {
            conn: r.sender.conn_id(),
            seq: r.seq,
            presence: r
                .presence
                .as_ref()
                .and_then(|p| String::from_utf8(writer::element(p)).ok()),
            priority: r.priority,
            interested: r.interested,
            carbons: r.carbons,
        }
    }

    fn apply(&self, r: &mut Resource) {
        r.presence = self
            .presence
            .as_ref()
            .and_then(|xml| xml.parse::<Element>().ok())
            .map(Arc::new);
        r.priority = self.priority;
        r.interested = self.interested;
        r.carbons = self.carbons;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    node: String,
    #[serde(flatten)]
    change: Change,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Change {
    Bind {
        jid: String,
        rec: Record,
    },
    Update {
        jid: String,
        rec: Record,
    },
    Unbind {
        jid: String,
        conn: u64,
    },
    Down {
        down: String,
    },
    /// A per-node cache entry changed (see `SessionTable::invalidate`).
    Invalidate {
        cache: String,
        key: String,
    },
}

#[derive(Default)]
struct PendingAck {
    received: usize,
    needed: Option<usize>,
    done: Option<oneshot::Sender<()>>,
}

/// This node's membership in the cluster; also its session table.
pub struct Cluster {
    pub node: Arc<str>,
    prefix: String,
    client: redis::Client,
    conn: ConnectionManager,
    view: View,
    bus: BusSender,
    outgoing: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Frames a previous run of this node (same configured name) never read; re-routed once
    /// the server is up.
    leftovers: Mutex<Vec<String>>,
    acks: Mutex<HashMap<u64, PendingAck>>,
    /// A table write failed: Redis may not match this node's sessions until they are put back.
    dirty: AtomicBool,
    lease: Duration,
    stop: watch::Sender<bool>,
    /// Set once the server exists, for events that concern its modules' caches.
    server: std::sync::OnceLock<std::sync::Weak<Server>>,
    /// Room → hosting node, as last learnt, with when to ask again.
    room_hosts: Mutex<HashMap<String, (Arc<str>, std::time::Instant)>>,
    /// Sessions this node asked another node for (XEP-0198 resumption).
    waiting_moves: moves::Waiting,
}

/// Where a group chat room is hosted.
#[derive(Debug, Clone)]
pub enum RoomHost {
    Here,
    There(Arc<str>),
}

fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "node".into() } else { host };
    let mut suffix = [0u8; 4];
    let _ = getrandom::fill(&mut suffix);
    format!("{host}-{:08x}", u32::from_be_bytes(suffix))
}

impl Cluster {
    /// Joins the cluster: registers this node's lease, subscribes to the change events and loads
    /// the other nodes' sessions. Fails if Redis cannot be reached at start-up.
    pub async fn join(config: &Config) -> Result<Arc<Cluster>, ClusterError> {
        let url = config.cluster.redis_url.clone();
        let err = |source| ClusterError::Redis {
            url: crate::store::redacted(&url),
            source,
        };
        let client = redis::Client::open(url.as_str()).map_err(err)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(err)?;
        let (bus, outgoing) = BusSender::new();
        let (stop, _) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            node: node_name(&config.cluster.node).into(),
            prefix: format!("rookery:{}:", config.domain),
            client,
            conn,
            view: View::default(),
            bus,
            outgoing: Mutex::new(Some(outgoing)),
            leftovers: Mutex::new(Vec::new()),
            acks: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            lease: Duration::from_secs(config.cluster.lease_seconds),
            stop,
            server: std::sync::OnceLock::new(),
            room_hosts: Mutex::new(HashMap::new()),
            waiting_moves: moves::Waiting::default(),
        });
        // A node restarted under a fixed name may have left bindings behind: clear them.
        let leftovers = cluster.reap(&cluster.node, true).await.map_err(err)?;
        cluster.refresh().await.map_err(err)?;
        let pubsub = cluster.subscribe().await.map_err(err)?;
        tokio::spawn(cluster.clone().listen(pubsub));
        info!(node = %cluster.node, "joined the cluster");
        if let Some((_, frames)) = leftovers {
            *cluster.leftovers.lock().unwrap_or_else(|e| e.into_inner()) = frames;
        }
        Ok(cluster)
    }

    /// Starts the tasks that need the server: the bus writer and reader and the lease loop.
    pub fn start(self: &Arc<Self>, server: Arc<Server>) -> Vec<JoinHandle<()>> {
        let _ = self.server.set(Arc::downgrade(&server));
        let mut tasks = Vec::new();
        let outgoing = self
            .outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = outgoing {
            tasks.push(tokio::spawn(self.clone().write_bus(server.clone(), rx)));
        }
        tasks.push(tokio::spawn(self.clone().read_bus(server.clone())));
        let leftovers =
            std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|e| e.into_inner()));
        if !leftovers.is_empty() {
            let (server, cluster) = (server.clone(), self.clone());
            tasks.push(tokio::spawn(async move {
                cluster.reroute(&server, &leftovers).await
            }));
        }
        tasks.push(tokio::spawn(self.clone().keep_lease(server)));
        tasks
    }

    /// A random secret every node of the cluster shares: the first node to ask makes it.
    pub async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, ClusterError> {
        let key = format!("{}secret:{name}", self.prefix);
        let mut fresh = [0u8; 32];
        let _ = getrandom::fill(&mut fresh);
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let mut conn = self.conn.clone();
        let err = |source| ClusterError::Redis {
            url: "cluster.redis_url".into(),
            source,
        };
        let _: bool = redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await
            .map(|r| r.is_some())
            .map_err(err)?;
        let secret: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(secret.into_bytes())
    }

    /// Leaves the cluster on a clean shutdown, after the local sessions have closed: removes
    /// this node's lease and bindings, and re-routes frames that arrived too late.
    pub async fn leave(&self, server: &Server) {
        let _ = self.stop.send(true);
        match self.reap(&self.node, true).await {
            Ok(Some((_, frames))) => self.reroute(server, &frames).await,
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot leave the cluster cleanly"),
        }
    }

    // Key names.
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
    fn sessions_key(&self, node: &str) -> String {
        self.key(&format!("node:{node}:sessions"))
    }
    fn inbox_key(&self, node: &str) -> String {
        self.key(&format!("node:{node}:inbox"))
    }
    fn acks_channel(&self, node: &str) -> String {
        self.key(&format!("acks:{node}"))
    }
    /// "node conn " : the owner prefix the scripts compare with.
    fn owner(&self, conn: u64) -> String {
        format!("{} {conn} ", self.node)
    }

    fn event(&self, change: Change) -> String {
        serde_json::to_string(&Event {
            node: self.node.to_string(),
            change,
        })
        .unwrap_or_default()
    }

    fn remote(&self, node: &str, jid: &str, conn: u64) -> Endpoint {
        Endpoint::Remote(RemoteSession {
            node: node.into(),
            conn_id: conn,
            jid: jid.into(),
            bus: self.bus.clone(),
        })
    }

    fn resource_from(&self, node: &str, jid: &str, rec: &Record) -> Option<Resource> {
        let full = FullJid::new(jid).ok()?;
        let mut r = Resource::new(full, self.remote(node, jid, rec.conn), rec.seq);
        rec.apply(&mut r);
        Some(r)
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key("events")).await?;
        pubsub.subscribe(self.acks_channel(&self.node)).await?;
        // Subscribed first, loaded second: a change between the two is both in the load and
        // in an event, and applying it twice is harmless.
        self.load_remote().await?;
        Ok(pubsub)
    }

    /// Loads the bindings of every live node but this one, through the per-node indexes (no
    /// scan of the keyspace).
    async fn load_remote(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = conn.zrange(self.key("nodes"), 0, -1).await?;
        let mut remote = Vec::new();
        for node in nodes.iter().filter(|n| n.as_str() != &*self.node) {
            let records: HashMap<String, String> = conn.hgetall(self.sessions_key(node)).await?;
            for (jid, json) in records {
                if let Ok(rec) = serde_json::from_str::<Record>(&json)
                    && let Some(r) = self.resource_from(node, &jid, &rec)
                {
                    remote.push(r);
                }
            }
        }
        self.view.replace_remote(remote);
        Ok(())
    }

    /// Applies change events until told to stop; reconnects (and reloads) when Redis goes away.
    async fn listen(self: Arc<Self>, mut pubsub: redis::aio::PubSub) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            {
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(m) => self.on_message(&m),
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            warn!("lost the cluster's change events; reconnecting");
            pubsub = loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                match self.subscribe().await {
                    Ok(p) => break p,
                    Err(e) => {
                        warn!(error = %e, "cannot reach redis");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            backoff = Duration::from_millis(100);
            info!("change events back");
        }
    }

    fn on_message(&self, msg: &redis::Msg) {
        let Ok(payload) = msg.get_payload::<String>() else {
            return;
        };
        if msg.get_channel_name() != self.key("events") {
            if let Ok(seq) = payload.parse::<u64>() {
                self.acked(seq);
            }
            return;
        }
        let Ok(event) = serde_json::from_str::<Event>(&payload) else {
            warn!("undecodable cluster event");
            return;
        };
        if event.node == *self.node {
            return;
        }
        match event.change {
            Change::Bind { jid, rec } => {
                let seq = rec.seq;
                if let Some(r) = self.resource_from(&event.node, &jid, &rec)
                    && let Bound::Accepted(Some(old)) = self.view.bind(r)
                    && old.is_local()
                {
                    old.command(SessionCommand::Replaced);
                }
                let mut conn = self.conn.clone();
                let channel = self.acks_channel(&event.node);
                tokio::spawn(async move {
                    let _: redis::RedisResult<()> = conn.publish(channel, seq).await;
                });
            }
            Change::Update { jid, rec } => {
                if let Ok(full) = FullJid::new(&jid) {
                    self.view.update(&full, rec.conn, |r| rec.apply(r));
                }
            }
            Change::Unbind { jid, conn } => {
                if let Ok(full) = FullJid::new(&jid) {
                    self.view.unbind(&full, conn);
                }
            }
            Change::Invalidate { cache, key } => {
                if let Some(server) = self.server.get().and_then(std::sync::Weak::upgrade) {
                    match cache.as_str() {
                        crate::modules::blocking::CACHE => {
                            crate::modules::blocking::forget_cached(&server, &key)
                        }
                        crate::modules::mam::CACHE => {
                            crate::modules::mam::forget_cached(&server, &key)
                        }
                        crate::modules::bridge::CACHE => {
                            crate::modules::bridge::changed_elsewhere(&server, &key)
                        }
                        _ => {}
                    }
                }
            }
            Change::Down { down } => {
                let gone = self.view.remove_where(|r| on_node(r, &down));
                info!(node = %down, sessions = gone.len(), "node left the cluster");
            }
        }
    }

    fn acked(&self, seq: u64) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        // The binding registers its entry before its event exists, so an ack without one is
        // late (the wait timed out) and is ignored rather than kept forever.
        let Some(pending) = acks.get_mut(&seq) else {
            return;
        };
        pending.received += 1;
        if pending.needed.is_some_and(|n| pending.received >= n)
            && let Some(done) = acks.remove(&seq).and_then(|p| p.done)
        {
            let _ = done.send(());
        }
    }

    /// Waits (bounded) until `needed` other nodes acknowledged event `seq`.
    async fn wait_for_acks(&self, seq: u64, needed: usize, rx: oneshot::Receiver<()>) {
        {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            let pending = acks.entry(seq).or_default();
            if pending.received >= needed {
                acks.remove(&seq);
                return;
            }
            pending.needed = Some(needed);
        }
        if tokio::time::timeout(ACK_TIMEOUT, rx).await.is_err() {
            warn!(seq, "not every node acknowledged a binding in time");
        }
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }

    /// Writes a binding to Redis. Returns whether it was accepted and how many nodes (this
    /// one included) received its event.
    async fn write_binding(&self, r: &Resource, mode: &str) -> redis::RedisResult<(bool, usize)> {
        let jid = r.jid.to_string();
        let rec = Record::of(r);
        let record = serde_json::to_string(&rec).unwrap_or_default();
        let event = self.event(Change::Bind {
            jid: jid.clone(),
            rec,
        });
        let mut conn = self.conn.clone();
        let (accepted, receivers): (i64, i64) = scripts::BIND
            .key(self.key("owners"))
            .key(self.sessions_key(&self.node))
            .key(self.key("events"))
            .arg(&jid)
            .arg(format!("{}{}", self.owner(r.sender.conn_id()), r.seq))
            .arg(record)
            .arg(event)
            .arg(&self.prefix)
            .arg(mode)
            .invoke_async(&mut conn)
            .await?;
        Ok((accepted == 1, usize::try_from(receivers).unwrap_or(0)))
    }

    async fn write_update(&self, r: &Resource) -> redis::RedisResult<()> {
        let jid = r.jid.to_string();
        let rec = Record::of(r);
        let record = serde_json::to_string(&rec).unwrap_or_default();
        let event = self.event(Change::Update {
            jid: jid.clone(),
            rec,
        });
        let mut conn = self.conn.clone();
        let _: i64 = scripts::UPDATE
            .key(self.key("owners"))
            .key(self.sessions_key(&self.node))
            .key(self.key("events"))
            .arg(&jid)
            .arg(self.owner(r.sender.conn_id()))
            .arg(record)
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn write_unbind(&self, jid: &str, conn_id: u64) -> redis::RedisResult<()> {
        let event = self.event(Change::Unbind {
            jid: jid.to_owned(),
            conn: conn_id,
        });
        let mut conn = self.conn.clone();
        let _: i64 = scripts::UNBIND
            .key(self.key("owners"))
            .key(self.sessions_key(&self.node))
            .key(self.key("events"))
            .arg(jid)
            .arg(self.owner(conn_id))
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Renews the lease; returns whether it still existed and the nodes whose lease expired.
    async fn refresh(&self) -> redis::RedisResult<(bool, Vec<String>)> {
        let mut conn = self.conn.clone();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let (existed, dead): (i64, Vec<String>) = scripts::REFRESH
            .key(self.key("nodes"))
            .arg(&*self.node)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok((existed == 1, dead))
    }

    /// Reaps a node (see `scripts::REAP`): its session records and unread frames, or None if
    /// it turned out to be alive.
    async fn reap(
        &self,
        node: &str,
        force: bool,
    ) -> redis::RedisResult<Option<(Vec<(String, Record)>, Vec<String>)>> {
        let mut conn = self.conn.clone();
        let event = self.event(Change::Down {
            down: node.to_owned(),
        });
        let reaped: Option<(Vec<String>, Vec<String>)> = scripts::REAP
            .key(self.key("nodes"))
            .key(self.key("events"))
            .arg(node)
            .arg(&self.prefix)
            .arg(if force { "1" } else { "0" })
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(reaped.map(|(flat, frames)| {
            let sessions = flat
                .chunks_exact(2)
                .filter_map(|kv| Some((kv[0].clone(), serde_json::from_str(&kv[1]).ok()?)))
                .collect();
            (sessions, frames)
        }))
    }

    /// Renews the lease every third of its length, reaps expired nodes, and puts this node's
    /// sessions back after an outage.
    async fn keep_lease(self: Arc<Self>, server: Arc<Server>) {
        let mut stop = self.stop.subscribe();
        let mut shutdown = server.shutdown_signal();
        let period = (self.lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
                _ = shutdown.changed() => return,
            }
            let (existed, dead) = match self.refresh().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot renew the node lease");
                    self.dirty.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            if !existed || self.dirty.swap(false, Ordering::Relaxed) {
                self.put_sessions_back(&server, !existed).await;
            }
            self.renew_rooms().await;
            for node in dead {
                match self.reap(&node, false).await {
                    Ok(Some((sessions, frames))) => {
                        self.after_reap(&server, &node, sessions, frames).await
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, node, "cannot reap node"),
                }
            }
        }
    }

    /// What the reaper of a dead node owes the rest: its resources leave every view (the
    /// `Down` event does that on the other nodes), their contacts see them go unavailable, and
    /// the frames it never read are re-routed.
    async fn after_reap(
        &self,
        server: &Server,
        node: &str,
        sessions: Vec<(String, Record)>,
        frames: Vec<String>,
    ) {
        warn!(
            node,
            sessions = sessions.len(),
            frames = frames.len(),
            "reaped a node whose lease expired"
        );
        self.view.remove_where(|r| on_node(r, node));
        // Frames first: once contacts see the resources go, what was sent to them is stored.
        self.reroute(server, &frames).await;
        for (jid, rec) in &sessions {
            if rec.presence.is_some()
                && let Ok(full) = FullJid::new(jid)
            {
                crate::modules::presence::vanished(server, &full).await;
            }
        }
    }

    /// Writes every local session to Redis again (after Redis was unreachable, or after this
    /// node was reaped while it could not renew its lease). A session whose full JID was bound
    /// elsewhere meanwhile is closed with `conflict`.
    async fn put_sessions_back(&self, server: &Server, reaped: bool) {
        let local = self.view.local();
        let mut failed = false;
        for r in &local {
            match self.write_binding(r, "register").await {
                Ok((true, _)) => {
                    if reaped && r.available() {
                        crate::modules::presence::reannounce(server, r).await;
                    }
                }
                Ok((false, _)) => r.sender.command(SessionCommand::Replaced),
                Err(_) => failed = true,
            }
        }
        // Bindings this node removed while Redis was away.
        if !failed {
            let mut conn = self.conn.clone();
            let stored: redis::RedisResult<HashMap<String, String>> =
                conn.hgetall(self.sessions_key(&self.node)).await;
            if let Ok(stored) = stored {
                for (jid, json) in stored {
                    let Ok(rec) = serde_json::from_str::<Record>(&json) else {
                        continue;
                    };
                    let live = local
                        .iter()
                        .any(|r| r.jid.to_string() == jid && r.sender.conn_id() == rec.conn);
                    if !live && self.write_unbind(&jid, rec.conn).await.is_err() {
                        failed = true;
                    }
                }
            }
        }
        if failed {
            self.dirty.store(true, Ordering::Relaxed);
        } else {
            info!(
                sessions = local.len(),
                "sessions registered with the cluster"
            );
        }
    }

    /// Drains the outgoing bus queue into the destination nodes' streams.
    async fn write_bus(self: Arc<Self>, server: Arc<Server>, mut rx: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(bus::BATCH);
        while rx.recv_many(&mut batch, bus::BATCH).await > 0 {
            for (node, frames) in bus::by_node(std::mem::take(&mut batch)) {
                let encoded: Vec<String> = frames
                    .iter()
                    .filter_map(|f| serde_json::to_string(f).ok())
                    .collect();
                let mut conn = self.conn.clone();
                let handed: redis::RedisResult<i64> = scripts::HAND_OVER
                    .key(self.key("nodes"))
                    .key(self.inbox_key(&node))
                    .arg(&*node)
                    .arg(&encoded)
                    .invoke_async(&mut conn)
                    .await;
                tracing::debug!(node = %node, frames = encoded.len(), result = ?handed, "bus hand-over");
                match handed {
                    Ok(1) => {}
                    Ok(_) => {
                        bus::log_refused(&node, &frames);
                        self.reroute_frames(&server, frames).await;
                    }
                    Err(e) => {
                        warn!(error = %e, node = %node, "cannot hand frames to node");
                        self.dirty.store(true, Ordering::Relaxed);
                        self.reroute_frames(&server, frames).await;
                    }
                }
            }
        }
    }

    /// Reads this node's bus stream and hands each frame to its session.
    async fn read_bus(self: Arc<Self>, server: Arc<Server>) {
        let mut stop = self.stop.subscribe();
        let mut shutdown = server.shutdown_signal();
        let inbox = self.inbox_key(&self.node);
        let mut backoff = Duration::from_millis(100);
        // A dedicated connection: XREAD BLOCK holds it for up to READ_BLOCK.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(bus::READ_BLOCK + Duration::from_secs(2)));
        let mut reader: Option<redis::aio::MultiplexedConnection> = None;
        let mut last_id = "0".to_owned();
        loop {
            if *stop.borrow() || *shutdown.borrow() {
                return;
            }
            let conn = match &mut reader {
                Some(c) => c,
                None => match self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => reader.insert(c),
                    Err(e) => {
                        warn!(error = %e, "cannot reach redis for the bus");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let options = redis::streams::StreamReadOptions::default()
                .block(bus::READ_BLOCK.as_millis() as usize)
                .count(bus::BATCH);
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> = conn
                .xread_options(&[inbox.as_str()], &[last_id.as_str()], &options)
                .await;
            let reply = match read {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "bus read failed");
                    reader = None;
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let Some(reply) = reply else { continue };
            let mut ids = Vec::new();
            for key in reply.keys {
                for entry in key.ids {
                    if let Some(redis::Value::BulkString(bytes)) = entry.map.get("f")
                        && let Ok(json) = std::str::from_utf8(bytes)
                        && let Some(frame) = bus::decode(json)
                    {
                        crate::metrics::bus_frame("in");
                        self.hand_to_session(&server, frame).await;
                    }
                    last_id = entry.id.clone();
                    ids.push(entry.id);
                }
            }
            if !ids.is_empty() {
                let mut conn = self.conn.clone();
                let deleted: redis::RedisResult<i64> = conn.xdel(&inbox, &ids).await;
                if let Err(e) = deleted {
                    warn!(error = %e, "cannot delete delivered bus frames");
                }
            }
        }
    }

    async fn hand_to_session(&self, server: &Server, frame: Frame) {
        tracing::debug!(jid = %frame.jid, conn = frame.conn, "bus frame received");
        let target = FullJid::new(&frame.jid)
            .ok()
            .and_then(|j| self.view.resource(&j))
            .filter(|r| bus::is_target(&r.sender, frame.conn));
        match frame.op {
            Op::Stanza { xml } => {
                let Ok(stanza) = xml.parse::<Element>() else {
                    return;
                };
                match target {
                    Some(r) => {
                        if let Err(e) = r.sender.deliver(stanza) {
                            let stanza = match e {
                                crate::router::table::DeliveryError::Full(s)
                                | crate::router::table::DeliveryError::Closed(s) => s,
                            };
                            crate::router::route(server, stanza).await;
                        }
                    }
                    // The session is gone: route again, as if it had never been found.
                    None => crate::router::route(server, stanza).await,
                }
            }
            Op::Room { xml } => {
                if let Ok(stanza) = xml.parse::<Element>() {
                    crate::modules::muc::route_here(server, stanza).await;
                }
            }
            Op::Fanout { xml, targets } => {
                let Ok(message) = xml.parse::<Element>() else {
                    return;
                };
                for (jid, conn) in targets {
                    let mut m = message.clone();
                    crate::stanza::set_attr(&mut m, "to", &jid);
                    let local = FullJid::new(&jid)
                        .ok()
                        .and_then(|j| self.view.resource(&j))
                        .filter(|r| bus::is_target(&r.sender, conn));
                    match local {
                        Some(r) => {
                            let _ = r.sender.deliver(m);
                        }
                        None => crate::router::route(server, m).await,
                    }
                }
            }
            Op::Replaced => {
                if let Some(r) = target {
                    r.sender.command(SessionCommand::Replaced);
                }
            }
            Op::Close { condition } => {
                if let Some(r) = target {
                    r.sender.command(SessionCommand::Close(
                        crate::router::table::CloseReason::from_condition(&condition),
                    ));
                }
            }
            Op::Resume {
                id,
                owner,
                reply_to,
            } => self.on_resume_request(server, id, &owner, reply_to),
            Op::Moved { id, state } => self.on_moved(server, &id, state).await,
        }
    }
}

fn on_node(r: &Resource, node: &str) -> bool {
    matches!(&r.sender, Endpoint::Remote(s) if &*s.node == node)
}

impl Cluster {
    /// Frames that did not reach their session (its node refused them, died holding them, or
    /// could not be reached). A stanza whose resource is gone or now bound here is routed
    /// afresh, so it may still arrive live; otherwise messages go to offline storage (or back
    /// to their sender) and requests get an error: never silence, and never a loop.
    async fn reroute_frames(&self, server: &Server, frames: Vec<Frame>) {
        crate::metrics::bus_rerouted(frames.len());
        let frames = frames.into_iter().flat_map(|f| match f.op {
            Op::Fanout { xml, targets } => {
                let Ok(message) = xml.parse::<Element>() else {
                    return Vec::new();
                };
                targets
                    .into_iter()
                    .map(|(jid, conn)| {
                        let mut m = message.clone();
                        crate::stanza::set_attr(&mut m, "to", &jid);
                        let xml = String::from_utf8(writer::element(&m)).unwrap_or_default();
                        Frame {
                            jid,
                            conn,
                            op: Op::Stanza { xml },
                        }
                    })
                    .collect()
            }
            op => vec![Frame { op, ..f }],
        });
        for frame in frames {
            let xml = match frame.op {
                Op::Stanza { xml } => xml,
                // The room's host is gone: this node serves the room from now on.
                Op::Room { xml } => {
                    if let Ok(stanza) = xml.parse::<Element>() {
                        crate::modules::muc::route_here(server, stanza).await;
                    }
                    continue;
                }
                // The asking node is gone: the moving session has no one to go to.
                Op::Moved {
                    state: Some(state), ..
                } => {
                    crate::session::c2s::abandon(server, *state).await;
                    continue;
                }
                Op::Close { .. }
                | Op::Replaced
                | Op::Fanout { .. }
                | Op::Resume { .. }
                | Op::Moved { .. } => continue,
            };
            let Ok(stanza) = xml.parse::<Element>() else {
                continue;
            };
            // Routed afresh only when that cannot lead back to a node: the resource is gone
            // (the bare JID's rules apply) or now bound here. A resource still on another node
            // is not tried again, so a frame never bounces between nodes.
            let elsewhere = FullJid::new(&frame.jid)
                .ok()
                .and_then(|j| self.view.resource(&j))
                .is_some_and(|r| !r.sender.is_local());
            if elsewhere {
                undeliverable(server, &frame.jid, stanza).await;
            } else {
                crate::router::route(server, stanza).await;
            }
        }
    }

    async fn reroute(&self, server: &Server, frames: &[String]) {
        let decoded = frames.iter().filter_map(|f| bus::decode(f)).collect();
        self.reroute_frames(server, decoded).await;
    }
}

async fn undeliverable(server: &Server, jid: &str, stanza: Element) {
    use crate::stanza::{self, StanzaError};
    let Ok(full) = FullJid::new(jid) else { return };
    match (stanza.name(), stanza::stanza_type(&stanza)) {
        ("message", "" | "normal" | "chat") => {
            use crate::modules::offline::{IfOnlineNow, store_or_bounce};
            store_or_bounce(server, &full.to_bare(), stanza, IfOnlineNow::Keep).await
        }
        ("iq", "get" | "set") => {
            crate::router::bounce(server, &stanza, StanzaError::service_unavailable()).await
        }
        _ => {}
    }
}

#[async_trait]
impl SessionTable for Cluster {
    async fn bind(
        &self,
        jid: FullJid,
        sender: SessionSender,
    ) -> Result<Option<SessionSender>, TableError> {
        let unavailable = |e: redis::RedisError| TableError::Unavailable(e.to_string());
        let mut conn = self.conn.clone();
        let seq: u64 = conn.incr(self.key("seq"), 1).await.map_err(unavailable)?;
        let resource = Resource::new(jid, Endpoint::Local(sender), seq);
        let (done_tx, done_rx) = oneshot::channel();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(seq)
            .or_default()
            .done = Some(done_tx);
        let forget_acks = || {
            self.acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&seq);
        };
        let (accepted, receivers) = match self.write_binding(&resource, "bind").await {
            Ok(w) => w,
            Err(e) => {
                forget_acks();
                return Err(unavailable(e));
            }
        };
        if !accepted {
            forget_acks();
            return Err(TableError::Conflict);
        }
        let old = match self.view.bind(resource) {
            Bound::Accepted(old) => old,
            Bound::Superseded(_) => {
                forget_acks();
                return Err(TableError::Conflict);
            }
        };
        self.wait_for_acks(seq, receivers.saturating_sub(1), done_rx)
            .await;
        Ok(old.and_then(|e| match e {
            Endpoint::Local(s) => Some(s),
            Endpoint::Remote(_) => None,
        }))
    }

    async fn unbind(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        if self.view.unbind(jid, conn_id).is_none() {
            return Ok(());
        }
        if let Err(e) = self.write_unbind(&jid.to_string(), conn_id).await {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(TableError::Unavailable(e.to_string()));
        }
        Ok(())
    }

    async fn set_presence(
        &self,
        jid: &FullJid,
        conn_id: u64,
        presence: Option<(Arc<Element>, i8)>,
    ) -> Result<(), TableError> {
        let changed = self.view.update(jid, conn_id, |r| r.set_presence(presence));
        self.store_update(changed).await
    }

    async fn set_interested(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        let changed = self.view.update(jid, conn_id, |r| r.interested = true);
        self.store_update(changed).await
    }

    async fn set_carbons(&self, jid: &FullJid, conn_id: u64, on: bool) -> Result<(), TableError> {
        let changed = self.view.update(jid, conn_id, |r| r.carbons = on);
        self.store_update(changed).await
    }

    fn view(&self) -> &View {
        &self.view
    }

    fn invalidate(&self, cache: &'static str, key: &str) {
        let event = self.event(Change::Invalidate {
            cache: cache.to_owned(),
            key: key.to_owned(),
        });
        let mut conn = self.conn.clone();
        let channel = self.key("events");
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = conn.publish(channel, event).await;
        });
    }
}

impl Cluster {
    async fn store_update(&self, changed: Option<Resource>) -> Result<(), TableError> {
        let Some(r) = changed else { return Ok(()) };
        if let Err(e) = self.write_update(&r).await {
            // The view already has the change, so this node routes correctly; the others
            // learn it when the sessions are put back.
            self.dirty.store(true, Ordering::Relaxed);
            return Err(TableError::Unavailable(e.to_string()));
        }
        Ok(())
    }

    /// The node that hosts a group chat room: one node at a time holds a room lease in Redis
    /// and every other node hands it the room's stanzas, so a room has one state. A host
    /// whose node lease is gone loses its rooms to the next node that needs them, which loads
    /// them from the store. Without Redis, rooms are served where their stanzas arrive.
    pub async fn room_host(&self, room: &str) -> RoomHost {
        let now = std::time::Instant::now();
        if let Some((node, until)) = self
            .room_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            && *until > now
        {
            return self.host(node.clone());
        }
        let mut conn = self.conn.clone();
        let lease_ms = u64::try_from((self.lease * 3).as_millis()).unwrap_or(u64::MAX);
        let claimed: redis::RedisResult<String> = scripts::CLAIM_ROOM
            .key(self.key(&format!("room:{room}")))
            .key(self.key("nodes"))
            .arg(&*self.node)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await;
        let node: Arc<str> = match claimed {
            Ok(n) => n.into(),
            Err(e) => {
                warn!(error = %e, room, "cannot reach redis for a room's host; serving it here");
                return RoomHost::Here;
            }
        };
        // Asked again well within the room lease, which the host renews the same way.
        self.room_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.to_owned(), (node.clone(), now + self.lease / 3));
        self.host(node)
    }

    fn host(&self, node: Arc<str>) -> RoomHost {
        if node == self.node {
            RoomHost::Here
        } else {
            RoomHost::There(node)
        }
    }

    /// Hands a room's stanza to its host; gives it back if that cannot be done now.
    pub fn to_room_host(&self, node: &Arc<str>, stanza: Element) -> Result<(), Element> {
        self.bus.room_stanza(node, stanza)
    }

    /// Renews the leases of the rooms this node hosts (those it learnt it hosts).
    async fn renew_rooms(&self) {
        let hosted: Vec<String> = self
            .room_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (n, _))| *n == self.node)
            .map(|(r, _)| r.clone())
            .collect();
        for room in hosted {
            // Expire the cache entry so that the next stanza asks (and renews) again.
            self.room_hosts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&room);
            let _ = self.room_host(&room).await;
        }
    }
}
