//! Message Archive Management (XEP-0313, `urn:xmpp:mam:2`) for accounts: every 1:1 message a
//! user sends or receives is archived (as their preferences, XEP-0441, or the server default
//! allow) under a server-assigned id that is also its stanza id (XEP-0359), and any of the
//! user's devices can page through the archive by contact, time, id and words (XEP-0431).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use minidom::Element;
use tracing::warn;

use super::{IqRequest, IqResult, Module, el, text_el};
use crate::jid::{self, BareJid, Jid};
use crate::router::table::{Hint, Hints};
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::{ArchivePrefs, ArchiveQuery, NewArchived, Store};
use crate::stream::{ns, writer};
use tokio::sync::{mpsc, oneshot, watch};

pub const NS: &str = "urn:xmpp:mam:2";
const EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const SID: &str = "urn:xmpp:sid:0";
const FULLTEXT: &str = "urn:xmpp:fulltext:0";
const FULLTEXT_FIELD: &str = "{urn:xmpp:fulltext:0}fulltext";
const RSM: &str = "http://jabber.org/protocol/rsm";
const DATA: &str = "jabber:x:data";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";

/// Results per page when the client does not say, and at most.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 250;
/// The name other nodes of a cluster know the preferences cache by.
pub const CACHE: &str = "archive_prefs";

#[derive(Default)]
pub struct Mam {
    /// Preferences per user, read on every archived message: cached, and dropped on change.
    prefs: RwLock<HashMap<String, CachedPrefs>>,
    /// The archive's queue, started with the first archived message.
    writer: std::sync::OnceLock<Writer>,
}

/// Messages waiting for an id, and numbered messages waiting to be written; a full queue
/// makes senders wait (backpressure).
const WRITE_QUEUE: usize = 4096;
/// Messages per transaction at most.
const WRITE_BATCH: usize = 2048;
/// How long the writer waits for more messages to join a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// Ids a node that is its archive's only writer keeps ready, per archive (see [`IdSource`]).
const IDS_AHEAD: usize = 4096;
/// How long numbering waits for ids before it lets messages go unarchived.
const IDS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a query waits for the archive to catch up before it reads what is there.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The way from a message to its archive row: two tasks, so that numbering never waits for
/// a commit. The numberer gives each message its archive id, which is also the stanza id
/// the recipient sees; the writer commits the rows in batches behind it.
struct Writer {
    jobs: mpsc::Sender<ArchiveJob>,
    progress: Arc<Progress>,
}

/// How far the two tasks have got, in messages counted in queue order.
#[derive(Default)]
struct Progress {
    /// Messages given an id (and so perhaps delivered with it already).
    numbered: AtomicU64,
    /// Messages written, or failed to write.
    settled: watch::Sender<u64>,
}

/// One message for the archive, and where its id goes.
struct ArchiveJob {
    row: ArchiveRow,
    id: oneshot::Sender<Option<i64>>,
}

struct ArchiveRow {
    /// A room's archive rather than a user's; `user` is then the room's name.
    room: bool,
    user: String,
    with_bare: String,
    with_full: String,
    stamp_ms: i64,
    body: String,
    stanza: String,
}

impl Writer {
    /// `alone`: this node is the archive's only writer (no cluster).
    fn start(store: Arc<dyn Store>, alone: bool) -> Writer {
        let (jobs, queued) = mpsc::channel(WRITE_QUEUE);
        let (rows, numbered) = mpsc::channel(WRITE_QUEUE);
        let progress = Arc::new(Progress::default());
        let ids = if alone {
            IdSource::Ahead {
                accounts: IdSource::supply(store.clone(), false),
                rooms: IdSource::supply(store.clone(), true),
            }
        } else {
            IdSource::OnDemand(store.clone())
        };
        tokio::spawn(number(ids, queued, rows, progress.clone()));
        tokio::spawn(write(store, numbered, progress.clone()));
        Writer { jobs, progress }
    }

    /// Waits until every message numbered so far is written (or has failed to be), so that a
    /// query finds every archived message delivered before it.
    async fn settled(&self) {
        let target = self.progress.numbered.load(Ordering::Acquire);
        let mut settled = self.progress.settled.subscribe();
        if tokio::time::timeout(SETTLE_LIMIT, settled.wait_for(|n| *n >= target))
            .await
            .is_err()
        {
            warn!("the archive writer is behind: a query reads the archive as it is");
        }
    }
}

/// Where the numberer takes archive ids from.
enum IdSource {
    /// From the store, as each batch needs them: nodes of a cluster, whose ids must keep the
    /// order messages came in across nodes. Ids one node took ahead would number its messages
    /// below those the others numbered since.
    OnDemand(Arc<dyn Store>),
    /// From queues that a task per archive keeps filled ahead of need: a node that is its
    /// archive's only writer. Numbering then seldom waits for the store (PostgreSQL: a round
    /// trip, and now and then tens of milliseconds when the database is busy).
    Ahead {
        accounts: mpsc::Receiver<i64>,
        rooms: mpsc::Receiver<i64>,
    },
}

impl IdSource {
    /// Starts the task that keeps a queue of `room` or account archive ids filled.
    fn supply(store: Arc<dyn Store>, room: bool) -> mpsc::Receiver<i64> {
        let (tx, rx) = mpsc::channel(IDS_AHEAD);
        tokio::spawn(async move {
            loop {
                let Some(ids) = new_ids(store.as_ref(), room, IDS_AHEAD / 2).await else {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                for id in ids {
                    if tx.send(id).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// `n` ids for one archive, increasing; None (and the messages go unarchived) if the
    /// store cannot give them in time.
    async fn take(&mut self, room: bool, n: usize) -> Option<std::vec::IntoIter<i64>> {
        if n == 0 {
            return None;
        }
        let queue = match self {
            IdSource::OnDemand(store) => {
                return new_ids(store.as_ref(), room, n).await.map(Vec::into_iter);
            }
            IdSource::Ahead { rooms, .. } if room => rooms,
            IdSource::Ahead { accounts, .. } => accounts,
        };
        let mut ids = Vec::with_capacity(n);
        let filled = tokio::time::timeout(IDS_WAIT, async {
            while ids.len() < n {
                let missing = n - ids.len();
                if queue.recv_many(&mut ids, missing).await == 0 {
                    break;
                }
            }
        })
        .await;
        if filled.is_err() || ids.len() < n {
            warn!(
                messages = n,
                "no archive ids in time: messages go unarchived"
            );
            return None;
        }
        Some(ids.into_iter())
    }
}

/// Gives messages their ids in queue order, as fast as they come, and passes them on to the
/// writer. Each archive's ids increase in queue order, which is each conversation's order.
async fn number(
    mut ids: IdSource,
    mut queued: mpsc::Receiver<ArchiveJob>,
    rows: mpsc::Sender<(i64, ArchiveRow)>,
    progress: Arc<Progress>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queued.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let rooms = batch.iter().filter(|j| j.row.room).count();
        let mut account_ids = ids.take(false, batch.len() - rooms).await;
        let mut room_ids = ids.take(true, rooms).await;
        let ids: Vec<Option<i64>> = batch
            .iter()
            .map(|job| {
                let ids = if job.row.room {
                    &mut room_ids
                } else {
                    &mut account_ids
                };
                ids.as_mut().and_then(Iterator::next)
            })
            .collect();
        // Counted before any sender learns its id: a query that starts after a delivery then
        // waits for its row.
        let count = ids.iter().flatten().count();
        progress.numbered.fetch_add(count as u64, Ordering::Release);
        let mut numbered = Vec::with_capacity(count);
        for (job, id) in batch.drain(..).zip(ids) {
            let _ = job.id.send(id);
            if let Some(id) = id {
                numbered.push((id, job.row));
            }
        }
        for row in numbered {
            if rows.send(row).await.is_err() {
                return;
            }
        }
    }
}

/// `n` new ids for one archive from the store.
async fn new_ids(store: &dyn Store, room: bool, n: usize) -> Option<Vec<i64>> {
    let ids = if room {
        store.room_archive_new_ids(n).await
    } else {
        store.archive_new_ids(n).await
    };
    match ids {
        Ok(ids) if ids.len() == n => Some(ids),
        Ok(_) => {
            warn!(messages = n, "the store handed out too few archive ids");
            None
        }
        Err(e) => {
            warn!(error = %e, messages = n, "cannot number archived messages");
            None
        }
    }
}

/// Group commit: every numbered message waiting when the writer is free goes into one
/// transaction per archive, so the archive keeps up with many senders instead of paying one
/// commit per message.
async fn write(
    store: Arc<dyn Store>,
    mut numbered: mpsc::Receiver<(i64, ArchiveRow)>,
    progress: Arc<Progress>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while numbered.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        gather(&mut numbered, &mut batch).await;
        let (rooms, accounts): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(_, r)| r.room);
        let written = rooms.len() + accounts.len();
        for (room, rows) in [(false, accounts), (true, rooms)] {
            if !rows.is_empty() {
                write_rows(store.as_ref(), room, &rows).await;
            }
        }
        progress.settled.send_modify(|n| *n += written as u64);
    }
}

/// Waits a moment for more messages before writing: each transaction costs far more than a
/// row (the commit, and a new full-text index segment), so a batch of many is what makes
/// archiving cheap under load. Deliveries do not wait for it: only queries of the archive
/// might, for at most [`GATHER`] and a commit.
async fn gather<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    let deadline = tokio::time::Instant::now() + GATHER;
    while batch.len() < WRITE_BATCH {
        let room = WRITE_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, room)).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

async fn write_rows(store: &dyn Store, room: bool, rows: &[(i64, ArchiveRow)]) {
    let records: Vec<NewArchived<'_>> = rows
        .iter()
        .map(|(id, r)| NewArchived {
            id: *id,
            user: &r.user,
            with_bare: &r.with_bare,
            with_full: &r.with_full,
            stamp_ms: r.stamp_ms,
            body: &r.body,
            stanza: &r.stanza,
        })
        .collect();
    let result = if room {
        store.room_archive_append_batch(&records).await
    } else {
        store.archive_append_batch(&records).await
    };
    if let Err(e) = result {
        // The messages went out with their ids already; a query will not find them.
        warn!(error = %e, messages = rows.len(), "cannot archive messages");
    }
}

#[async_trait]
impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn account_features(&self) -> &'static [&'static str] {
        &[NS, EXTENDED, SID, FULLTEXT]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        let user = req.own_user()?;
        match (req.payload.name(), req.is_set) {
            ("query", false) => Ok(Some(query_form())),
            ("query", true) => self.query(&req, user).await,
            ("metadata", false) => metadata(req.server, Owner::Account(user)).await.map(Some),
            ("prefs", false) => Ok(Some(prefs_element(&*self.prefs(req.server, user).await))),
            ("prefs", true) => {
                let prefs = parse_prefs(req.payload)?;
                req.server
                    .store
                    .set_archive_prefs(user, &prefs)
                    .await
                    .map_err(|_| StanzaError::internal())?;
                self.forget(req.server, user);
                req.server.sessions.invalidate(CACHE, user);
                Ok(Some(prefs_element(&prefs)))
            }
            _ => Err(StanzaError::bad_request()),
        }
    }
}

/// A user's cached preferences, with the one answer every message asks for kept beside them:
/// read from the map's own entry, it costs no visit to the preferences elsewhere in memory.
#[derive(Clone)]
struct CachedPrefs {
    archives_nothing: bool,
    prefs: Arc<ArchivePrefs>,
}

impl Mam {
    /// Whether `user`'s cached preferences archive nothing; None if they are not cached.
    /// Notes a cached "nothing" in `owner`'s entry in the session table, where the router
    /// finds it with the account's other answers; noted while the cache is locked, so that
    /// `forget` cannot clear the note before it is made.
    fn cached_archives_nothing(
        &self,
        server: &Server,
        owner: &BareJid,
        user: &str,
    ) -> Option<bool> {
        let cache = self.prefs.read().unwrap_or_else(|e| e.into_inner());
        let nothing = cache.get(user).map(|p| p.archives_nothing);
        if nothing == Some(true) {
            server
                .sessions
                .view()
                .hint(owner.as_str(), Hint::ArchivesNothing, true);
        }
        nothing
    }

    async fn prefs(&self, server: &Server, user: &str) -> Arc<ArchivePrefs> {
        if let Some(p) = self
            .prefs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return p.prefs.clone();
        }
        let prefs = match server.store.archive_prefs(user).await {
            Ok(Some(p)) => p,
            // No preferences stored, or the store failed: the server default applies.
            _ => ArchivePrefs {
                default: server.config.archive.default.as_str().to_owned(),
                always: Vec::new(),
                never: Vec::new(),
            },
        };
        let cached = CachedPrefs {
            archives_nothing: prefs.archives_nothing(),
            prefs: Arc::new(prefs),
        };
        self.prefs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), cached.clone());
        cached.prefs
    }

    fn writer(&self, server: &Server) -> &Writer {
        self.writer
            .get_or_init(|| Writer::start(server.store.clone(), server.cluster.is_none()))
    }

    /// Queues one message for the archive; None if the writer has stopped.
    async fn append(&self, server: &Server, job: ArchiveJob) -> Option<()> {
        self.writer(server).jobs.send(job).await.ok()
    }

    fn forget(&self, server: &Server, user: &str) {
        let mut cache = self.prefs.write().unwrap_or_else(|e| e.into_inner());
        cache.remove(user);
        // Cleared while the cache is locked: see `cached_archives_nothing`.
        super::clear_hint(server, user, Hint::ArchivesNothing);
    }

    async fn query(&self, req: &IqRequest<'_>, user: &str) -> IqResult {
        let owner = format!("{user}@{}", req.server.domain);
        let (results, fin) = run_query(
            req.server,
            Owner::Account(user),
            &owner,
            req.from,
            req.payload,
        )
        .await?;
        // The results go to the requesting session before the iq result (XEP-0313 §4.2).
        req.before_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(results);
        Ok(Some(fin))
    }
}

/// Whose archive a query reads.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Account(&'a str),
    /// A room, by name.
    Room(&'a str),
}

/// Runs a MAM query: the result messages (addressed to `to`) and the `fin` element.
pub async fn run_query(
    server: &Server,
    owner: Owner<'_>,
    owner_jid: &str,
    to: &Jid,
    payload: &Element,
) -> Result<(Vec<Element>, Element), StanzaError> {
    let query = parse_query(payload)?;
    let flip = payload.has_child("flip-page", NS);
    let page = fetch(server, owner, &query).await?;
    let query_id = payload.attr("queryid");
    let mut results: Vec<Element> = page
        .messages
        .iter()
        .filter_map(|m| result_message(owner_jid, to, query_id, m))
        .collect();
    if flip {
        results.reverse();
    }
    let mut fin = el("fin", NS, &[]);
    if page.complete {
        stanza::set_attr(&mut fin, "complete", "true");
    }
    let mut set = Element::bare("set", RSM);
    if let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) {
        let (first, last) = if flip { (last, first) } else { (first, last) };
        set.append_child(text_el("first", RSM, &first.id.to_string()));
        set.append_child(text_el("last", RSM, &last.id.to_string()));
    }
    fin.append_child(set);
    Ok((results, fin))
}

async fn fetch(
    server: &Server,
    owner: Owner<'_>,
    query: &ArchiveQuery,
) -> Result<crate::store::ArchivePage, StanzaError> {
    settle(server).await;
    match owner {
        Owner::Account(user) => server.store.archive_query(user, query).await,
        Owner::Room(room) => server.store.room_archive_query(room, query).await,
    }
    .map_err(|_| StanzaError::internal())
}

/// The archive's oldest and newest message (XEP-0313 §6.3, archive metadata): what a client
/// reads to learn how far back it has to page. An empty archive has an empty `<metadata/>`.
pub async fn metadata(server: &Server, owner: Owner<'_>) -> Result<Element, StanzaError> {
    let end = |from_end| ArchiveQuery {
        max: 1,
        from_end,
        ..ArchiveQuery::default()
    };
    let oldest = fetch(server, owner, &end(false)).await?;
    let newest = fetch(server, owner, &end(true)).await?;
    let mut md = el("metadata", NS, &[]);
    if let (Some(first), Some(last)) = (oldest.messages.first(), newest.messages.last()) {
        for (name, m) in [("start", first), ("end", last)] {
            md.append_child(el(
                name,
                NS,
                &[
                    ("id", &m.id.to_string()),
                    ("timestamp", &stanza::stamp_from_ms(m.stamp_ms)),
                ],
            ));
        }
    }
    Ok(md)
}

/// Queues a room message for the room's archive without waiting, so that a room can queue
/// while it holds its own lock and ids follow the room's order. The receiver yields the id;
/// None if the archive is too far behind to take it.
pub fn queue_room_message(
    server: &Server,
    room: &str,
    sender: &str,
    msg: &Element,
) -> Option<oneshot::Receiver<Option<i64>>> {
    let m = module(server)?;
    let (job, id) = job(true, room, sender.to_owned(), sender.to_owned(), msg)?;
    match m.writer(server).jobs.try_send(job) {
        Ok(()) => Some(id),
        Err(_) => {
            warn!(room, "archive queue full: a room message is not archived");
            None
        }
    }
}

fn module(server: &Server) -> Option<&Mam> {
    server.module::<Mam>()
}

/// A message as the archive writer takes it, and where its archive id will arrive.
fn job(
    room: bool,
    owner: &str,
    with_bare: String,
    with_full: String,
    msg: &Element,
) -> Option<(ArchiveJob, oneshot::Receiver<Option<i64>>)> {
    let stanza = String::from_utf8(writer::element(msg)).ok()?;
    let body = msg
        .children()
        .filter(|c| c.is("body", ns::CLIENT))
        .map(|b| b.text())
        .collect::<Vec<_>>()
        .join("\n");
    let (id_tx, id) = oneshot::channel();
    let row = ArchiveRow {
        room,
        user: owner.to_owned(),
        with_bare,
        with_full,
        stamp_ms: chrono::Utc::now().timestamp_millis(),
        body,
        stanza,
    };
    Some((ArchiveJob { row, id: id_tx }, id))
}

/// Reads `owner`'s archiving preferences into the cache if they are not there yet: every
/// message the user sends or receives asks for them (see `blocking::preload`).
pub async fn preload(server: &Server, owner: &BareJid) {
    if let (Some(m), Some(user)) = (module(server), owner.node()) {
        m.prefs(server, user.as_str()).await;
        // Noted now rather than at the account's first message, which then takes the router's
        // short way as well.
        m.cached_archives_nothing(server, owner, user.as_str());
    }
}

/// Drops cached preferences changed on another node of the cluster.
pub fn forget_cached(server: &Server, user: &str) {
    if let Some(m) = module(server) {
        m.forget(server, user);
    }
}

/// Which way a message passes the archive's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The owner sent it.
    Outgoing,
    /// The owner receives it.
    Incoming,
}

/// Whether a message belongs in an archive: 1:1 chat and normal messages with a body that
/// the sender did not mark as not to be stored (XEP-0334); never errors, headlines or group
/// chat (rooms keep their own archive).
fn archivable(msg: &Element) -> bool {
    matches!(stanza::stanza_type(msg), "" | "normal" | "chat")
        && msg.has_child("body", ns::CLIENT)
        && !msg.has_child("no-store", HINTS)
        && !msg.has_child("no-permanent-store", HINTS)
}

/// Archives a message `owner` receives, if the rules and the owner's preferences say so, and
/// marks it with its archive id before it is delivered. Any stanza id claiming to be from
/// `owner`'s archive is removed first: it could only be forged (XEP-0359 §5). `hints` are
/// the owner's, looked up for the message already.
pub async fn archive(server: &Server, owner: &BareJid, hints: Hints, msg: &mut Element) {
    strip_stanza_ids(msg, owner.as_str());
    let Some(pending) = enqueue(server, owner, hints, Direction::Incoming, msg).await else {
        return;
    };
    if let Some(id) = pending.id().await {
        msg.append_child(el(
            "stanza-id",
            SID,
            &[("by", owner.as_str()), ("id", &id.to_string())],
        ));
    }
}

/// Queues a message `owner` sent for their archive, if the rules and their preferences say
/// so. Nothing in the routed message depends on the row, so the caller can route it before
/// the message has its id.
pub async fn archive_sent(
    server: &Server,
    owner: &BareJid,
    hints: Hints,
    msg: &Element,
) -> Option<Pending> {
    enqueue(server, owner, hints, Direction::Outgoing, msg).await
}

/// A message on its way to the archive.
pub struct Pending(oneshot::Receiver<Option<i64>>);

impl Pending {
    /// The message's archive id, once it has one (its row may not be written yet, but any
    /// query from then on finds it); None if it could not be archived.
    pub async fn id(self) -> Option<i64> {
        self.0.await.ok().flatten()
    }
}

/// Waits until every message numbered so far is in the archive: before a query reads it,
/// and at shutdown once the sessions are gone.
pub async fn settle(server: &Server) {
    if let Some(w) = module(server).and_then(|m| m.writer.get()) {
        w.settled().await;
    }
}

/// Hands `msg` to the archive writer if it belongs in `owner`'s archive.
async fn enqueue(
    server: &Server,
    owner: &BareJid,
    hints: Hints,
    direction: Direction,
    msg: &Element,
) -> Option<Pending> {
    if hints.archives_nothing {
        return None;
    }
    let (m, user) = (module(server)?, owner.node()?);
    if !server.is_local_domain(owner.domain().as_str()) || !archivable(msg) {
        return None;
    }
    let user = user.as_str();
    // Nothing can be archived for this user: no need to look further. Cached preferences are
    // asked in place, the common case for every message when archiving is off.
    if m.cached_archives_nothing(server, owner, user) == Some(true) {
        return None;
    }
    // Accounts that do not exist have no archive (and get no cached preferences); checked
    // after the cheap tests, since it can cost a store read.
    if !crate::router::account_exists(server, owner).await {
        return None;
    }
    let prefs = m.prefs(server, user).await;
    if prefs.archives_nothing() {
        return None;
    }
    let peer_attr = match direction {
        Direction::Outgoing => "to",
        Direction::Incoming => "from",
    };
    let peer = msg.attr(peer_attr).and_then(|p| jid::parse(p).ok())?;
    if !wanted(server, &prefs, user, &peer).await {
        return None;
    }
    let (job, id) = job(
        false,
        user,
        peer.to_bare().to_string(),
        peer.to_string(),
        msg,
    )?;
    m.append(server, job).await?;
    Some(Pending(id))
}

/// XEP-0441: the always and never lists first, then the default mode.
async fn wanted(server: &Server, prefs: &ArchivePrefs, user: &str, peer: &Jid) -> bool {
    let bare = peer.to_bare().to_string();
    let full = peer.to_string();
    let listed = |list: &[String]| list.iter().any(|j| *j == bare || *j == full);
    if listed(&prefs.never) {
        return false;
    }
    if listed(&prefs.always) {
        return true;
    }
    match prefs.default.as_str() {
        "always" => true,
        "roster" => matches!(server.store.roster_item(user, &bare).await, Ok(Some(_))),
        _ => false,
    }
}

fn strip_stanza_ids(msg: &mut Element, owner: &str) {
    let forged = |n: &minidom::Node| {
        n.as_element()
            .is_some_and(|c| c.is("stanza-id", SID) && c.attr("by") == Some(owner))
    };
    if msg.nodes().any(forged) {
        for node in msg.take_nodes() {
            if !forged(&node) {
                msg.append_node(node);
            }
        }
    }
}

/// The query form (XEP-0313 §4.1.1).
pub fn query_form() -> Element {
    let mut x = el("x", DATA, &[("type", "form")]);
    let mut form_type = el("field", DATA, &[("var", "FORM_TYPE"), ("type", "hidden")]);
    form_type.append_child(text_el("value", DATA, NS));
    x.append_child(form_type);
    for (var, kind) in [
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("after-id", "text-single"),
        ("before-id", "text-single"),
        ("ids", "text-multi"),
        (FULLTEXT_FIELD, "text-single"),
    ] {
        x.append_child(el("field", DATA, &[("var", var), ("type", kind)]));
    }
    let mut query = el("query", NS, &[]);
    query.append_child(x);
    query
}

/// The submitted fields of a query form, each with all its values.
fn form_values(query: &Element) -> Vec<(String, Vec<String>)> {
    let Some(x) = query.get_child("x", DATA) else {
        return Vec::new();
    };
    x.children()
        .filter(|c| c.is("field", DATA))
        .filter_map(|f| {
            let values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", DATA))
                .map(|v| v.text())
                .collect();
            Some((f.attr("var")?.to_owned(), values)).filter(|(_, v)| !v.is_empty())
        })
        .collect()
}

fn parse_id(text: &str) -> Result<i64, StanzaError> {
    // Ids the server never handed out cannot name a message (XEP-0313 §4.3.2).
    text.trim()
        .parse::<i64>()
        .map_err(|_| StanzaError::item_not_found().with_text(format!("no message with id {text}")))
}

fn parse_stamp(field: &str, text: &str) -> Result<i64, StanzaError> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            StanzaError::bad_request().with_text(format!("`{field}` is not an XEP-0082 date-time"))
        })
}

fn parse_query(query: &Element) -> Result<ArchiveQuery, StanzaError> {
    let mut q = ArchiveQuery {
        max: DEFAULT_PAGE,
        ..ArchiveQuery::default()
    };
    for (var, values) in form_values(query) {
        let value = &values[0];
        match var.as_str() {
            "FORM_TYPE" if value == NS => {}
            "FORM_TYPE" => return Err(StanzaError::bad_request().with_text("unknown FORM_TYPE")),
            "with" => {
                let with = jid::parse(value.trim())
                    .map_err(|_| StanzaError::jid_malformed().with_text("`with` is not a JID"))?;
                q.with = Some(with.to_string());
            }
            "start" => q.start_ms = Some(parse_stamp("start", value)?),
            "end" => q.end_ms = Some(parse_stamp("end", value)?),
            "after-id" => q.after_id = Some(parse_id(value)?),
            "before-id" => q.before_id = Some(parse_id(value)?),
            "ids" => {
                if values.len() > MAX_PAGE {
                    return Err(StanzaError::policy_violation()
                        .with_text(format!("at most {MAX_PAGE} ids in one query")));
                }
                q.ids = values
                    .iter()
                    .map(|v| parse_id(v))
                    .collect::<Result<_, _>>()?;
            }
            FULLTEXT_FIELD => q.text = Some(value.clone()).filter(|t| !t.trim().is_empty()),
            other => {
                return Err(StanzaError::feature_not_implemented()
                    .with_text(format!("unknown field `{other}`")));
            }
        }
    }
    if let Some(set) = query.get_child("set", RSM) {
        if let Some(max) = set.get_child("max", RSM) {
            let n: usize = max
                .text()
                .trim()
                .parse()
                .map_err(|_| StanzaError::bad_request().with_text("RSM max is not a number"))?;
            q.max = n.min(MAX_PAGE);
        }
        if let Some(after) = set.get_child("after", RSM) {
            let id = parse_id(&after.text())?;
            q.after_id = Some(q.after_id.map_or(id, |a| a.max(id)));
        }
        if let Some(before) = set.get_child("before", RSM) {
            // An empty <before/> asks for the last page.
            q.from_end = true;
            let text = before.text();
            if !text.trim().is_empty() {
                let id = parse_id(&text)?;
                q.before_id = Some(q.before_id.map_or(id, |b| b.min(id)));
            }
        }
    }
    Ok(q)
}

/// One result (XEP-0313 §4.2): the archived message, forwarded with its timestamp.
fn result_message(
    owner: &str,
    to: &Jid,
    query_id: Option<&str>,
    m: &crate::store::ArchivedMessage,
) -> Option<Element> {
    let original: Element = m.stanza.parse().ok()?;
    let mut delay = el(
        "delay",
        ns::DELAY,
        &[("stamp", &stanza::stamp_from_ms(m.stamp_ms))],
    );
    delay.append_text_node("");
    let mut forwarded = el("forwarded", FORWARD, &[]);
    forwarded.append_child(delay);
    forwarded.append_child(original);
    let id = m.id.to_string();
    let mut result = el("result", NS, &[("id", &id)]);
    if let Some(q) = query_id {
        stanza::set_attr(&mut result, "queryid", q);
    }
    result.append_child(forwarded);
    let mut msg = stanza::build(
        "message",
        &[
            ("from", owner),
            ("to", &to.to_string()),
            ("id", &format!("mam-{id}")),
        ],
    );
    msg.append_child(result);
    Some(msg)
}

fn prefs_element(prefs: &ArchivePrefs) -> Element {
    let mut e = el("prefs", NS, &[("default", &prefs.default)]);
    for (name, list) in [("always", &prefs.always), ("never", &prefs.never)] {
        let mut l = el(name, NS, &[]);
        for j in list {
            l.append_child(text_el("jid", NS, j));
        }
        e.append_child(l);
    }
    e
}

/// At most this many JIDs in each preference list.
const MAX_PREF_JIDS: usize = 1000;

fn parse_prefs(e: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = e.attr("default").unwrap_or("always");
    if !matches!(default, "always" | "roster" | "never") {
        return Err(StanzaError::bad_request().with_text("default must be always, roster or never"));
    }
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        let Some(l) = e.get_child(name, NS) else {
            return Ok(Vec::new());
        };
        let jids: Result<Vec<String>, StanzaError> = l
            .children()
            .filter(|c| c.is("jid", NS))
            .map(|c| {
                jid::parse(c.text().trim())
                    .map(|j| j.to_string())
                    .map_err(|_| StanzaError::jid_malformed())
            })
            .collect();
        let jids = jids?;
        if jids.len() > MAX_PREF_JIDS {
            return Err(StanzaError::resource_constraint()
                .with_text(format!("at most {MAX_PREF_JIDS} JIDs per list")));
        }
        Ok(jids)
    };
    Ok(ArchivePrefs {
        default: default.to_owned(),
        always: list("always")?,
        never: list("never")?,
    })
}

/// Deletes archived messages older than the configured retention, now and every hour.
pub async fn expire_loop(server: Arc<Server>) {
    let Some(keep) = server.config.archive.retention() else {
        return;
    };
    let mut shutdown = server.shutdown_signal();
    loop {
        let cutoff = chrono::Utc::now().timestamp_millis()
            - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        match server.store.archive_expire(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "expired archived messages"),
            Err(e) => warn!(error = %e, "cannot expire archived messages"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn query_fields_and_rsm() {
        let q = parse_query(&parse(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>Bob@Example.org</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='{urn:xmpp:fulltext:0}fulltext'><value>hello</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>1000</max><before/></set></query>",
        ))
        .unwrap();
        assert_eq!(q.with.as_deref(), Some("bob@example.org"));
        assert_eq!(q.start_ms, Some(1_275_868_800_000));
        assert_eq!(q.text.as_deref(), Some("hello"));
        assert_eq!(q.max, MAX_PAGE);
        assert!(q.from_end);
    }

    #[test]
    fn bad_queries_are_refused() {
        let bad_stamp = parse(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='start'><value>yesterday</value></field></x></query>",
        );
        assert!(parse_query(&bad_stamp).is_err());
        let unknown_id = parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
             <after>not-an-id</after></set></query>",
        );
        assert!(parse_query(&unknown_id).is_err());
        let unknown_field = parse(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='colour'><value>red</value></field></x></query>",
        );
        assert!(parse_query(&unknown_field).is_err());
    }

    #[test]
    fn forged_stanza_ids_are_removed() {
        let mut m = parse(
            "<message xmlns='jabber:client' from='eve@x'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='other.example' id='2'/></message>",
        );
        strip_stanza_ids(&mut m, "bob@localhost");
        let ids: Vec<_> = m
            .children()
            .filter(|c| c.is("stanza-id", SID))
            .filter_map(|c| c.attr("by"))
            .collect();
        assert_eq!(ids, ["other.example"]);
        assert_eq!(m.attr("from"), Some("eve@x"));
    }
}
