//! The session table: which resources of each account are bound, where they are, and their
//! presence. The router reads it for every stanza, so reads are synchronous lookups in memory;
//! writes are async so that a cluster implementation can make them durable elsewhere first.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use minidom::Element;
use tokio::sync::mpsc;

use crate::jid::{BareJid, FullJid, Jid};

/// What a session's task receives from the rest of the server.
#[derive(Debug)]
pub enum SessionCommand {
    /// A stanza to write to the client.
    Stanza(QueuedStanza),
    /// Another login bound the same full JID: close with a `conflict` stream error.
    Replaced,
    /// Close the stream with this stream error condition.
    Close(CloseReason),
}

// Every idle connection's queue holds a block of 32 commands.
const _: () = assert!(std::mem::size_of::<SessionCommand>() == 16);

/// The stream errors another part of the server can close a session with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    NotAuthorized,
    Conflict,
    SystemShutdown,
    PolicyViolation,
    Reset,
}

impl CloseReason {
    /// The stream error condition (RFC 6120 §4.9.3).
    pub fn condition(self) -> &'static str {
        match self {
            CloseReason::NotAuthorized => "not-authorized",
            CloseReason::Conflict => "conflict",
            CloseReason::SystemShutdown => "system-shutdown",
            CloseReason::PolicyViolation => "policy-violation",
            CloseReason::Reset => "reset",
        }
    }

    /// The reason a condition names, as it comes over the cluster bus.
    pub fn from_condition(name: &str) -> CloseReason {
        match name {
            "not-authorized" => CloseReason::NotAuthorized,
            "conflict" => CloseReason::Conflict,
            "system-shutdown" => CloseReason::SystemShutdown,
            "policy-violation" => CloseReason::PolicyViolation,
            _ => CloseReason::Reset,
        }
    }
}

/// A stanza on its way to a session. Every kind is boxed: the channel allocates slots of the
/// command's size in blocks, and an inline Element would make every idle connection's block
/// large.
#[derive(Debug)]
pub enum QueuedStanza {
    /// A stanza of its own.
    Owned(Box<Element>),
    /// One of many copies of a stanza that differ only in `to` (a room's message to each
    /// occupant): shared rather than cloned, until a session needs a copy of its own.
    Addressed(Box<(Arc<Element>, FullJid)>),
    /// A stanza already written out as XML, for a session that writes what it gets straight
    /// to its client (see [`SessionSender::deliver`]).
    Written(Box<Vec<u8>>),
}

impl QueuedStanza {
    pub fn addressed(stanza: Arc<Element>, to: FullJid) -> QueuedStanza {
        QueuedStanza::Addressed(Box::new((stanza, to)))
    }

    /// Writes `stanza` out now; `None` for one the writer would not write (a name that could
    /// break the markup), which has to go as a tree.
    fn written(stanza: &Element) -> Option<QueuedStanza> {
        let xml = crate::stream::writer::element(stanza);
        (!xml.is_empty()).then(|| QueuedStanza::Written(Box::new(xml)))
    }

    pub fn name(&self) -> &str {
        match self {
            QueuedStanza::Owned(el) => el.name(),
            QueuedStanza::Addressed(a) => a.0.name(),
            QueuedStanza::Written(xml) => written_name(xml),
        }
    }

    pub fn into_element(self) -> Element {
        match self {
            QueuedStanza::Owned(el) => *el,
            QueuedStanza::Addressed(a) => {
                let (stanza, to) = *a;
                let mut el = Arc::unwrap_or_clone(stanza);
                crate::stanza::set_attr(&mut el, "to", to.as_str());
                el
            }
            // Only where a session holds back a stanza written for it just before its client
            // went inactive, hibernates, or ends with stanzas queued or unacknowledged: the
            // tree is read back from the XML.
            QueuedStanza::Written(xml) => read_back(&xml),
        }
    }

    /// Appends the stanza's XML to `out`; a shared one is not copied for it.
    pub fn write_into(&self, out: &mut Vec<u8>) {
        match self {
            QueuedStanza::Owned(el) => crate::stream::writer::element_into(el, out),
            QueuedStanza::Addressed(a) => {
                crate::stream::writer::element_to_into(&a.0, a.1.as_str(), out)
            }
            QueuedStanza::Written(xml) => out.extend_from_slice(xml),
        }
    }
}

/// The element name a written stanza starts with.
pub fn written_name(xml: &[u8]) -> &str {
    let name = xml.get(1..).unwrap_or_default();
    let end = name
        .iter()
        .position(|b| matches!(b, b' ' | b'/' | b'>'))
        .unwrap_or(name.len());
    std::str::from_utf8(&name[..end]).unwrap_or_default()
}

/// The tree of a stanza written out for a session: by the server's writer, or a client's
/// message as it was checked when read ([`RawMessage`](crate::stream::parser::RawMessage)).
/// Either is well-formed and in `jabber:client` by default, so reading it back does not fail;
/// if it ever did, the stanza's bare top element is what is left, and the failure is logged.
pub fn read_back(xml: &[u8]) -> Element {
    crate::stream::parser::read_client_stanza(xml).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stanza written for a session could not be read back");
        Element::bare(written_name(xml), crate::stream::ns::CLIENT)
    })
}

/// The address of a session's task: a bounded channel, so a slow reader cannot make the
/// server buffer without bound.
#[derive(Debug, Clone)]
pub struct SessionSender {
    pub conn_id: u64,
    pub tx: mpsc::Sender<SessionCommand>,
    /// Shared with the session: set while it writes what it gets straight to its client, and
    /// so can take stanzas already written out (see [`deliver`](Self::deliver)).
    writes_through: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("session queue full")]
    Full(Element),
    #[error("session closed")]
    Closed(Element),
}

impl SessionSender {
    /// The sender of a session that always wants stanzas as trees (a component's, which
    /// rewrites their namespace).
    pub fn new(conn_id: u64, tx: mpsc::Sender<SessionCommand>) -> SessionSender {
        SessionSender {
            conn_id,
            tx,
            writes_through: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The sender of a session that says with the returned flag whether it writes what it
    /// gets straight to its client; it starts out doing so.
    pub fn writing_through(
        conn_id: u64,
        tx: mpsc::Sender<SessionCommand>,
    ) -> (SessionSender, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(true));
        let sender = SessionSender {
            conn_id,
            tx,
            writes_through: flag.clone(),
        };
        (sender, flag)
    }

    /// Queues a stanza without waiting. A full queue means the client does not read: the
    /// session is told to close, and the stanza comes back so the caller can store or bounce it.
    ///
    /// A session that writes straight through gets the stanza written out here, by the
    /// routing task that just parsed or built it: its tree is in this core's cache, and the
    /// session (often on the other core, later) copies one buffer instead of walking a tree of
    /// a dozen allocations in cold memory and freeing them there.
    pub fn deliver(&self, stanza: Element) -> Result<(), DeliveryError> {
        let written = if self.writes_through.load(Ordering::Relaxed) {
            QueuedStanza::written(&stanza)
        } else {
            None
        };
        self.deliver_queued(written.unwrap_or_else(|| QueuedStanza::Owned(Box::new(stanza))))
    }

    /// Whether stanzas for this session are written out before they are queued.
    pub fn writes_through(&self) -> bool {
        self.writes_through.load(Ordering::Relaxed)
    }

    /// [`deliver`](Self::deliver) for any kind of outgoing stanza.
    pub fn deliver_queued(&self, stanza: QueuedStanza) -> Result<(), DeliveryError> {
        match self.tx.try_send(SessionCommand::Stanza(stanza)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(SessionCommand::Stanza(s))) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx
                        .send(SessionCommand::Close(CloseReason::PolicyViolation))
                        .await;
                });
                Err(DeliveryError::Full(s.into_element()))
            }
            Err(mpsc::error::TrySendError::Closed(SessionCommand::Stanza(s))) => {
                Err(DeliveryError::Closed(s.into_element()))
            }
            Err(_) => Err(DeliveryError::Closed(Element::bare("message", ""))),
        }
    }

    pub fn command(&self, cmd: SessionCommand) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(cmd).await;
        });
    }
}

/// Where a bound resource lives: in this process, or on another node of the cluster.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Local(SessionSender),
    Remote(RemoteSession),
}

/// A session on another node, reached through the cluster bus.
#[derive(Debug, Clone)]
pub struct RemoteSession {
    pub node: Arc<str>,
    pub conn_id: u64,
    /// The resource's full JID, so the owning node finds the session without parsing `to`.
    pub jid: Arc<str>,
    pub bus: crate::cluster::bus::BusSender,
}

impl Endpoint {
    /// Connection ids are unique across the cluster (each node starts from a random base).
    pub fn conn_id(&self) -> u64 {
        match self {
            Endpoint::Local(s) => s.conn_id,
            Endpoint::Remote(r) => r.conn_id,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Endpoint::Local(_))
    }

    /// Queues a stanza without waiting; see [`SessionSender::deliver`]. For a remote session
    /// a full bus queue hands the stanza back the same way.
    pub fn deliver(&self, stanza: Element) -> Result<(), DeliveryError> {
        match self {
            Endpoint::Local(s) => s.deliver(stanza),
            Endpoint::Remote(r) => r.bus.stanza(r, stanza),
        }
    }

    pub fn command(&self, cmd: SessionCommand) {
        match self {
            Endpoint::Local(s) => s.command(cmd),
            Endpoint::Remote(r) => r.bus.command(r, cmd),
        }
    }
}

/// One bound resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub jid: FullJid,
    pub sender: Endpoint,
    /// The last available presence broadcast by this resource; None until initial presence
    /// and after unavailable presence.
    pub presence: Option<Arc<Element>>,
    pub priority: i8,
    /// Requested the roster, so it receives roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Asked for Message Carbons (XEP-0280): gets copies of the account's 1:1 chats.
    pub carbons: bool,
    /// The cluster-wide order of bindings: of two bindings of one full JID the higher wins,
    /// whichever order the nodes learn about them in. Always 0 on a single node.
    pub seq: u64,
}

impl Resource {
    pub fn new(jid: FullJid, sender: Endpoint, seq: u64) -> Resource {
        Resource {
            jid,
            sender,
            presence: None,
            priority: 0,
            interested: false,
            carbons: false,
            seq,
        }
    }

    pub fn available(&self) -> bool {
        self.presence.is_some()
    }

    /// Applies a presence change: `Some` for available with its priority, `None` for
    /// unavailable.
    pub fn set_presence(&mut self, presence: Option<(Arc<Element>, i8)>) {
        match presence {
            Some((p, prio)) => {
                self.presence = Some(p);
                self.priority = prio;
            }
            None => {
                self.presence = None;
                self.priority = 0;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("session table unavailable: {0}")]
    Unavailable(String),
    /// A newer binding of the same full JID exists elsewhere in the cluster.
    #[error("the resource was bound again elsewhere")]
    Conflict,
}

#[async_trait]
pub trait SessionTable: Send + Sync {
    /// Binds a resource; returns the session it replaced, if the full JID was bound already
    /// on this node (a session on another node is closed by its own node).
    async fn bind(
        &self,
        jid: FullJid,
        sender: SessionSender,
    ) -> Result<Option<SessionSender>, TableError>;
    /// Removes a binding, but only if it still belongs to this connection.
    async fn unbind(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError>;
    /// Records presence: `Some` for available with its priority, `None` for unavailable.
    async fn set_presence(
        &self,
        jid: &FullJid,
        conn_id: u64,
        presence: Option<(Arc<Element>, i8)>,
    ) -> Result<(), TableError>;
    async fn set_interested(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError>;
    async fn set_carbons(&self, jid: &FullJid, conn_id: u64, on: bool) -> Result<(), TableError>;

    /// The in-memory view every read below is answered from, never waiting.
    fn view(&self) -> &View;

    fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        self.view().resources(bare)
    }
    /// Whether any resource of the account is bound: asked for every chat message (does the
    /// account exist?), so it must not copy the resource list.
    fn is_bound(&self, bare: &BareJid) -> bool {
        self.view().is_bound(bare)
    }

    /// Whether any resource of the account has carbons on: asked for every chat message, so
    /// it must not copy the resource list.
    fn any_carbons(&self, bare: &BareJid) -> bool {
        self.view().any_carbons(bare)
    }
    /// See [`View::summary`].
    fn summary(&self, bare: &BareJid) -> AccountSummary {
        self.view().summary(bare)
    }
    fn resource(&self, jid: &FullJid) -> Option<Resource> {
        self.view().resource(jid)
    }
    /// See [`View::deliver`].
    fn deliver(&self, jid: &FullJid, stanza: Element) -> Result<(), Element> {
        self.view().deliver(jid, stanza)
    }
    /// The sessions of this node.
    fn count(&self) -> usize {
        self.view().count_local()
    }
    /// Tells the other nodes of a cluster that a per-node cache entry changed; nothing to do
    /// on a single node.
    fn invalidate(&self, _cache: &'static str, _key: &str) {}
}

/// What binding did to the view.
#[derive(Debug)]
pub enum Bound {
    /// The new binding is in; it replaced this one, if any.
    Accepted(Option<Endpoint>),
    /// A newer binding of the same full JID is already known: the new one lost.
    Superseded(Endpoint),
}

/// An account's bare JID as the view's key, found by its text: routing looks accounts up from
/// full JIDs, and borrowing the text before the resource costs nothing where building a
/// `BareJid` costs an allocation, twice for every message.
#[derive(Clone, PartialEq, Eq)]
struct Account(BareJid);

// `Borrow<str>` promises that the key hashes and compares as its text does.
impl Hash for Account {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state)
    }
}

impl Borrow<str> for Account {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

/// The bare part of `jid` as text: neither a localpart nor a domain can hold a `/` (RFC 7622
/// §3.3.1, §3.2), so the first one starts the resource.
fn bare_text(jid: &Jid) -> &str {
    let text = jid.as_str();
    text.split_once('/').map_or(text, |(bare, _)| bare)
}

/// What routing asks about an account for every message, answered by one lookup of its entry
/// in the view. Each feature keeps its own cache, a map of its own: asking them one by one
/// costs a lookup into cold memory apiece, twice per message (sender and recipient).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountSummary {
    /// Whether some resource of the account has carbons on (XEP-0280).
    pub carbons: bool,
    pub hints: Hints,
}

/// Answers a feature has found in its own cache and left in the account's entry. A hint that
/// is not set only means "ask the feature": it is set when the feature's cache says so and
/// cleared when that cache entry is dropped, and it goes with the entry when the account's
/// last resource unbinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// The account's block list is empty (XEP-0191).
    pub blocks_nobody: bool,
    /// The account's archive preferences archive nothing (XEP-0313).
    pub archives_nothing: bool,
}

/// One of the [`Hints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    BlocksNobody,
    ArchivesNothing,
}

impl Hints {
    fn flag(&mut self, hint: Hint) -> &mut bool {
        match hint {
            Hint::BlocksNobody => &mut self.blocks_nobody,
            Hint::ArchivesNothing => &mut self.archives_nothing,
        }
    }

    fn get(mut self, hint: Hint) -> bool {
        *self.flag(hint)
    }
}

/// An account's entry in the view: its bound resources, never empty, and its hints.
#[derive(Default)]
struct Entry {
    resources: Vec<Resource>,
    hints: Hints,
}

impl Entry {
    fn summary(&self) -> AccountSummary {
        AccountSummary {
            carbons: self.resources.iter().any(|r| r.carbons),
            hints: self.hints,
        }
    }
}

type ViewMap = HashMap<Account, Entry>;

/// The in-memory map of bound resources that every routing decision reads. A single node's
/// table is just this; a cluster node keeps one as its local view of the whole cluster.
#[derive(Default)]
pub struct View {
    // A std lock: it is never held across an await, and reads vastly outnumber writes.
    inner: RwLock<ViewMap>,
}

impl View {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewMap> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewMap> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bind(&self, resource: Resource) -> Bound {
        let mut map = self.write();
        let list = &mut map
            .entry(Account(resource.jid.to_bare()))
            .or_default()
            .resources;
        let Some(i) = list.iter().position(|r| r.jid == resource.jid) else {
            list.push(resource);
            return Bound::Accepted(None);
        };
        if list[i].seq > resource.seq {
            return Bound::Superseded(resource.sender);
        }
        let old = std::mem::replace(&mut list[i], resource);
        Bound::Accepted(Some(old.sender))
    }

    /// Removes a binding if it still belongs to `conn_id`; returns it.
    pub fn unbind(&self, jid: &FullJid, conn_id: u64) -> Option<Resource> {
        let mut map = self.write();
        let bare = bare_text(jid);
        let list = &mut map.get_mut(bare)?.resources;
        let i = list
            .iter()
            .position(|r| &r.jid == jid && r.sender.conn_id() == conn_id)?;
        let removed = list.swap_remove(i);
        if list.is_empty() {
            map.remove(bare);
        }
        Some(removed)
    }

    /// Changes a binding if it still belongs to `conn_id`; returns the changed resource.
    pub fn update<F: FnOnce(&mut Resource)>(
        &self,
        jid: &FullJid,
        conn_id: u64,
        f: F,
    ) -> Option<Resource> {
        let mut map = self.write();
        let r = map
            .get_mut(bare_text(jid))?
            .resources
            .iter_mut()
            .find(|r| &r.jid == jid && r.sender.conn_id() == conn_id)?;
        f(r);
        Some(r.clone())
    }

    /// Removes every resource `keep` rejects; returns them.
    pub fn remove_where(&self, reject: impl Fn(&Resource) -> bool) -> Vec<Resource> {
        let mut map = self.write();
        let mut removed = Vec::new();
        map.retain(
            |_,
             Entry {
                 resources: list, ..
             }| {
                let mut i = 0;
                while i < list.len() {
                    if reject(&list[i]) {
                        removed.push(list.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                !list.is_empty()
            },
        );
        removed
    }

    /// Replaces every remote resource with `remote` in one step (after reconnecting to the
    /// cluster, when change events may have been missed).
    pub fn replace_remote(&self, remote: Vec<Resource>) {
        let mut map = self.write();
        map.retain(
            |_,
             Entry {
                 resources: list, ..
             }| {
                list.retain(|r| r.sender.is_local());
                !list.is_empty()
            },
        );
        for r in remote {
            let list = &mut map.entry(Account(r.jid.to_bare())).or_default().resources;
            match list.iter().position(|l| l.jid == r.jid) {
                Some(i) if list[i].seq < r.seq => list[i] = r,
                Some(_) => {}
                None => list.push(r),
            }
        }
    }

    /// The resources bound to this node.
    pub fn local(&self) -> Vec<Resource> {
        self.read()
            .values()
            .flat_map(|e| &e.resources)
            .filter(|r| r.sender.is_local())
            .cloned()
            .collect()
    }

    pub fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        self.read()
            .get(bare.as_str())
            .map(|e| e.resources.clone())
            .unwrap_or_default()
    }

    /// Whether any resource of `bare` is bound, without copying them out.
    pub fn is_bound(&self, bare: &BareJid) -> bool {
        self.read()
            .get(bare.as_str())
            .is_some_and(|e| !e.resources.is_empty())
    }

    pub fn any_carbons(&self, bare: &BareJid) -> bool {
        self.read()
            .get(bare.as_str())
            .is_some_and(|e| e.resources.iter().any(|r| r.carbons))
    }

    /// What routing asks about `bare` for every message; all unknown if it is not bound.
    pub fn summary(&self, bare: &BareJid) -> AccountSummary {
        self.read()
            .get(bare.as_str())
            .map_or_else(AccountSummary::default, Entry::summary)
    }

    /// Sets or clears one of `bare`'s hints; nothing if the account is not bound. A feature
    /// calls this while it holds the lock of its own cache, so that a hint set from a cache
    /// entry and a hint cleared with it cannot pass each other.
    pub fn hint(&self, bare: &str, hint: Hint, known: bool) {
        // Most calls change nothing (an account that is not bound, a hint already there):
        // they should not wait for the lock every router reads through.
        let changes = |map: &ViewMap| map.get(bare).is_some_and(|e| e.hints.get(hint) != known);
        if !changes(&self.read()) {
            return;
        }
        if let Some(e) = self.write().get_mut(bare) {
            *e.hints.flag(hint) = known;
        }
    }

    /// Queues `stanza` for the resource `jid` without copying the resource out of the view: a
    /// copy would add to and take from the counters its channel sender shares with every other
    /// copy, for every message. Gives the stanza back if no such resource is bound or its
    /// session cannot take it.
    pub fn deliver(&self, jid: &FullJid, stanza: Element) -> Result<(), Element> {
        let map = self.read();
        let Some(resource) = map
            .get(bare_text(jid))
            .and_then(|e| e.resources.iter().find(|r| &r.jid == jid))
        else {
            return Err(stanza);
        };
        resource.sender.deliver(stanza).map_err(|e| match e {
            DeliveryError::Full(s) | DeliveryError::Closed(s) => s,
        })
    }

    /// Queues the XML `write` gives for the resource `jid` if it is bound on this node, its
    /// session writes straight through and `wanted` says yes to what routing asks of its
    /// account (one lookup for both): true if queued, false if not tried. A session that does
    /// not take it gives the stanza back as a tree.
    pub fn deliver_written(
        &self,
        jid: &FullJid,
        wanted: impl FnOnce(AccountSummary) -> bool,
        write: impl FnOnce() -> Vec<u8>,
    ) -> Result<bool, Element> {
        let map = self.read();
        let Some(entry) = map.get(bare_text(jid)) else {
            return Ok(false);
        };
        let Some(Endpoint::Local(session)) = entry
            .resources
            .iter()
            .find(|r| &r.jid == jid)
            .map(|r| &r.sender)
        else {
            return Ok(false);
        };
        if !session.writes_through() || !wanted(entry.summary()) {
            return Ok(false);
        }
        match session.deliver_queued(QueuedStanza::Written(Box::new(write()))) {
            Ok(()) => Ok(true),
            Err(DeliveryError::Full(s) | DeliveryError::Closed(s)) => Err(s),
        }
    }

    pub fn resource(&self, jid: &FullJid) -> Option<Resource> {
        self.read()
            .get(bare_text(jid))?
            .resources
            .iter()
            .find(|r| &r.jid == jid)
            .cloned()
    }

    pub fn count_local(&self) -> usize {
        self.read()
            .values()
            .flat_map(|e| &e.resources)
            .filter(|r| r.sender.is_local())
            .count()
    }
}

/// The single-node table: the view is the whole truth.
#[derive(Default)]
pub struct LocalTable {
    view: View,
}

fn local_sender(e: Endpoint) -> Option<SessionSender> {
    match e {
        Endpoint::Local(s) => Some(s),
        Endpoint::Remote(_) => None,
    }
}

#[async_trait]
impl SessionTable for LocalTable {
    async fn bind(
        &self,
        jid: FullJid,
        sender: SessionSender,
    ) -> Result<Option<SessionSender>, TableError> {
        match self
            .view
            .bind(Resource::new(jid, Endpoint::Local(sender), 0))
        {
            Bound::Accepted(old) => Ok(old.and_then(local_sender)),
            // Equal sequence numbers: the later binding always wins on one node.
            // Never on one node (every seq is 0, and the later binding wins); closing the
            // newcomer is the safe reading regardless.
            Bound::Superseded(e) => {
                e.command(SessionCommand::Replaced);
                Ok(None)
            }
        }
    }

    async fn unbind(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        self.view.unbind(jid, conn_id);
        Ok(())
    }

    async fn set_presence(
        &self,
        jid: &FullJid,
        conn_id: u64,
        presence: Option<(Arc<Element>, i8)>,
    ) -> Result<(), TableError> {
        self.view.update(jid, conn_id, |r| r.set_presence(presence));
        Ok(())
    }

    async fn set_interested(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        self.view.update(jid, conn_id, |r| r.interested = true);
        Ok(())
    }

    async fn set_carbons(&self, jid: &FullJid, conn_id: u64, on: bool) -> Result<(), TableError> {
        self.view.update(jid, conn_id, |r| r.carbons = on);
        Ok(())
    }

    fn view(&self) -> &View {
        &self.view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(id: u64) -> (SessionSender, mpsc::Receiver<SessionCommand>) {
        let (tx, rx) = mpsc::channel(2);
        (SessionSender::new(id, tx), rx)
    }

    #[tokio::test]
    async fn bind_replaces_same_full_jid_and_unbind_checks_connection() {
        let t = LocalTable::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (s1, _r1) = sender(1);
        let (s2, _r2) = sender(2);
        assert!(t.bind(jid.clone(), s1).await.unwrap().is_none());
        let old = t.bind(jid.clone(), s2).await.unwrap().unwrap();
        assert_eq!(old.conn_id, 1);
        // The replaced connection's late unbind must not remove the new binding.
        t.unbind(&jid, 1).await.unwrap();
        assert_eq!(t.resource(&jid).unwrap().sender.conn_id(), 2);
        t.unbind(&jid, 2).await.unwrap();
        assert_eq!(t.count(), 0);
    }

    #[test]
    fn a_newer_binding_is_never_replaced_by_an_older_one() {
        let v = View::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (s1, _r1) = sender(1);
        let (s2, _r2) = sender(2);
        let newer = Resource::new(jid.clone(), Endpoint::Local(s2), 7);
        let older = Resource::new(jid.clone(), Endpoint::Local(s1), 3);
        assert!(matches!(v.bind(newer), Bound::Accepted(None)));
        assert!(matches!(v.bind(older), Bound::Superseded(e) if e.conn_id() == 1));
        assert_eq!(v.resource(&jid).unwrap().sender.conn_id(), 2);
    }

    /// Lookups by full JID borrow the text before the first `/`; a resource may hold more.
    #[test]
    fn accounts_are_found_from_full_jids_whose_resources_hold_slashes() {
        let v = View::default();
        let jid = FullJid::new("a@x/desk/top").unwrap();
        let (s, mut rx) = sender(1);
        assert!(matches!(
            v.bind(Resource::new(jid.clone(), Endpoint::Local(s), 1)),
            Bound::Accepted(None)
        ));
        assert_eq!(bare_text(&jid), "a@x");
        assert_eq!(bare_text(&Jid::new("x/r").unwrap()), "x");
        assert!(v.is_bound(&BareJid::new("a@x").unwrap()));
        assert!(!v.is_bound(&BareJid::new("a@y").unwrap()));
        assert!(
            v.deliver(&jid, Element::bare("message", "jabber:client"))
                .is_ok()
        );
        assert!(matches!(rx.try_recv(), Ok(SessionCommand::Stanza(_))));
        let other = FullJid::new("a@x/desk").unwrap();
        assert!(
            v.deliver(&other, Element::bare("message", "jabber:client"))
                .is_err()
        );
        assert!(v.unbind(&jid, 1).is_some());
        assert!(
            v.read().is_empty(),
            "the account's entry goes with its last resource"
        );
    }

    /// Hints live in a bound account's entry: set and cleared there, never for an account
    /// that is not bound, and gone with its last resource.
    #[tokio::test]
    async fn hints_belong_to_bound_accounts_and_go_with_them() {
        let t = LocalTable::default();
        let bare = BareJid::new("a@x").unwrap();
        let (phone, desk) = (
            FullJid::new("a@x/phone").unwrap(),
            FullJid::new("a@x/desk").unwrap(),
        );
        t.view().hint("a@x", Hint::BlocksNobody, true);
        assert_eq!(t.summary(&bare), AccountSummary::default(), "not bound");

        let (s1, _r1) = sender(1);
        let (s2, _r2) = sender(2);
        t.bind(phone.clone(), s1).await.unwrap();
        t.bind(desk.clone(), s2).await.unwrap();
        t.view().hint("a@x", Hint::BlocksNobody, true);
        t.view().hint("a@x", Hint::ArchivesNothing, true);
        t.view().hint("a@x", Hint::ArchivesNothing, false);
        let hints = Hints {
            blocks_nobody: true,
            archives_nothing: false,
        };
        assert_eq!(
            t.summary(&bare),
            AccountSummary {
                carbons: false,
                hints
            }
        );
        t.set_carbons(&desk, 2, true).await.unwrap();
        assert!(t.summary(&bare).carbons);
        // One resource going keeps the entry and its hints, not the other's carbons.
        t.unbind(&desk, 2).await.unwrap();
        assert_eq!(
            t.summary(&bare),
            AccountSummary {
                carbons: false,
                hints
            }
        );
        t.unbind(&phone, 1).await.unwrap();
        let (s3, _r3) = sender(3);
        t.bind(phone, s3).await.unwrap();
        assert_eq!(t.summary(&bare), AccountSummary::default(), "a new entry");
    }

    #[tokio::test]
    async fn a_full_queue_hands_the_stanza_back() {
        let (s, _rx) = sender(1);
        let m = Element::bare("message", "jabber:client");
        s.deliver(m.clone()).unwrap();
        s.deliver(m.clone()).unwrap();
        assert!(matches!(s.deliver(m), Err(DeliveryError::Full(_))));
    }

    #[tokio::test]
    async fn a_shared_stanza_handed_back_carries_its_recipient() {
        let (s, _rx) = sender(1);
        let room_message = Arc::new(
            Element::builder("message", "jabber:client")
                .attr("type".try_into().unwrap(), "groupchat")
                .build(),
        );
        let to = |r: &str| FullJid::new(&format!("u@x/{r}")).unwrap();
        s.deliver_queued(QueuedStanza::addressed(room_message.clone(), to("a")))
            .unwrap();
        s.deliver_queued(QueuedStanza::addressed(room_message.clone(), to("b")))
            .unwrap();
        match s.deliver_queued(QueuedStanza::addressed(room_message.clone(), to("c"))) {
            Err(DeliveryError::Full(el)) => {
                assert_eq!(el.attr("to"), Some("u@x/c"));
                assert_eq!(el.attr("type"), Some("groupchat"));
            }
            other => panic!("expected a full queue, got {other:?}"),
        }
        // The shared original is untouched.
        assert_eq!(room_message.attr("to"), None);
    }

    /// A stanza with what a writer and a reader could disagree on: escaped text, non-ASCII
    /// text, `xml:lang`, a child in its own namespace with a namespaced attribute.
    const AWKWARD: &str = "<message xmlns='jabber:client' to='b@x/r' from='a@x/r' type='chat' \
        xml:lang='de'><body>1 &lt; 2 &amp;&amp; 'q' \"d\" &gt; \u{fc}\u{2603}</body>\
        <x xmlns='urn:example' xmlns:e='urn:example:attr' e:flag='1' plain='a&apos;b'><y/></x>\
        </message>";

    #[test]
    fn a_session_writing_through_gets_stanzas_written_out_that_read_back_the_same() {
        let (tx, mut rx) = mpsc::channel(2);
        let (s, flag) = SessionSender::writing_through(1, tx);
        let original: Element = AWKWARD.parse().unwrap();
        s.deliver(original.clone()).unwrap();
        let Ok(SessionCommand::Stanza(queued)) = rx.try_recv() else {
            panic!("a stanza is queued");
        };
        assert!(matches!(queued, QueuedStanza::Written(_)), "{queued:?}");
        assert_eq!(queued.name(), "message");
        let mut out = Vec::new();
        queued.write_into(&mut out);
        assert_eq!(
            out,
            crate::stream::writer::element(&original),
            "the same bytes"
        );
        assert_eq!(queued.into_element(), original, "the same tree");

        // While the session holds stanzas back, they come as trees.
        flag.store(false, Ordering::Relaxed);
        assert!(!s.writes_through());
        s.deliver(original.clone()).unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(SessionCommand::Stanza(QueuedStanza::Owned(_)))
        ));
    }

    #[tokio::test]
    async fn a_written_stanza_that_finds_the_queue_full_comes_back_as_its_tree() {
        let (tx, _rx) = mpsc::channel(1);
        let (s, _flag) = SessionSender::writing_through(1, tx);
        let original: Element = AWKWARD.parse().unwrap();
        s.deliver(original.clone()).unwrap();
        match s.deliver(original.clone()) {
            Err(DeliveryError::Full(el)) => assert_eq!(el, original),
            other => panic!("expected a full queue, got {other:?}"),
        }
    }

    #[test]
    fn a_stanza_the_writer_refuses_goes_as_a_tree() {
        let (tx, mut rx) = mpsc::channel(1);
        let (s, _flag) = SessionSender::writing_through(1, tx);
        // Trees the server builds itself skip the parser's name checks.
        let bad = Element::bare("a>b", "jabber:client");
        s.deliver(bad).unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(SessionCommand::Stanza(QueuedStanza::Owned(_)))
        ));
    }

    #[test]
    fn written_names_are_read_from_the_start_tag() {
        for (xml, name) in [
            (&b"<iq xmlns='jabber:client'/>"[..], "iq"),
            (b"<presence/>", "presence"),
            (b"<message>", "message"),
            (b"", ""),
        ] {
            assert_eq!(written_name(xml), name);
        }
    }
}
