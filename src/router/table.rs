//! The session table: which resources of each account are bound, where they are, and their
//! presence. The router reads it for every stanza, so reads are synchronous lookups in memory;
//! writes are async so that a cluster implementation can make them durable elsewhere first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use minidom::Element;
use tokio::sync::mpsc;

use crate::jid::{BareJid, FullJid};

/// What a session's task receives from the rest of the server.
#[derive(Debug)]
pub enum SessionCommand {
    /// A stanza to write to the client. Boxed: the channel allocates slots of the enum's size
    /// in blocks, and an inline Element would make every idle connection's block large.
    Stanza(Box<Element>),
    /// Another login bound the same full JID: close with a `conflict` stream error.
    Replaced,
    /// Close the stream with this stream error condition.
    Close(&'static str),
}

/// The address of a session's task: a bounded channel, so a slow reader cannot make the
/// server buffer without bound.
#[derive(Debug, Clone)]
pub struct SessionSender {
    pub conn_id: u64,
    pub tx: mpsc::Sender<SessionCommand>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("session queue full")]
    Full(Element),
    #[error("session closed")]
    Closed(Element),
}

impl SessionSender {
    /// Queues a stanza without waiting. A full queue means the client does not read: the
    /// session is told to close, and the stanza comes back so the caller can store or bounce it.
    pub fn deliver(&self, stanza: Element) -> Result<(), DeliveryError> {
        match self.tx.try_send(SessionCommand::Stanza(Box::new(stanza))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(SessionCommand::Stanza(s))) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(SessionCommand::Close("policy-violation")).await;
                });
                Err(DeliveryError::Full(*s))
            }
            Err(mpsc::error::TrySendError::Closed(SessionCommand::Stanza(s))) => {
                Err(DeliveryError::Closed(*s))
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

/// One bound resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub jid: FullJid,
    pub sender: SessionSender,
    /// The last available presence broadcast by this resource; None until initial presence
    /// and after unavailable presence.
    pub presence: Option<Arc<Element>>,
    pub priority: i8,
    /// Requested the roster, so it receives roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Asked for Message Carbons (XEP-0280): gets copies of the account's 1:1 chats.
    pub carbons: bool,
}

impl Resource {
    pub fn available(&self) -> bool {
        self.presence.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("session table unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SessionTable: Send + Sync {
    /// Binds a resource; returns the session it replaced, if the full JID was bound already.
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

    fn resources(&self, bare: &BareJid) -> Vec<Resource>;
    /// Whether any resource of the account has carbons on: asked for every chat message, so
    /// it must not copy the resource list.
    fn any_carbons(&self, bare: &BareJid) -> bool;
    fn resource(&self, jid: &FullJid) -> Option<Resource>;
    fn count(&self) -> usize;
}

/// The single-node table: a map in this process.
#[derive(Default)]
pub struct LocalTable {
    // A std lock: it is never held across an await, and reads vastly outnumber writes.
    inner: RwLock<HashMap<BareJid, Vec<Resource>>>,
}

impl LocalTable {
    fn with_resource<F: FnOnce(&mut Resource)>(&self, jid: &FullJid, conn_id: u64, f: F) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&jid.to_bare())
            && let Some(r) = list
                .iter_mut()
                .find(|r| &r.jid == jid && r.sender.conn_id == conn_id)
        {
            f(r);
        }
    }
}

#[async_trait]
impl SessionTable for LocalTable {
    async fn bind(
        &self,
        jid: FullJid,
        sender: SessionSender,
    ) -> Result<Option<SessionSender>, TableError> {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(jid.to_bare()).or_default();
        let old = list
            .iter()
            .position(|r| r.jid == jid)
            .map(|i| list.swap_remove(i).sender);
        list.push(Resource {
            jid,
            sender,
            presence: None,
            priority: 0,
            interested: false,
            carbons: false,
        });
        Ok(old)
    }

    async fn unbind(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let bare = jid.to_bare();
        if let Some(list) = map.get_mut(&bare) {
            list.retain(|r| !(&r.jid == jid && r.sender.conn_id == conn_id));
            if list.is_empty() {
                map.remove(&bare);
            }
        }
        Ok(())
    }

    async fn set_presence(
        &self,
        jid: &FullJid,
        conn_id: u64,
        presence: Option<(Arc<Element>, i8)>,
    ) -> Result<(), TableError> {
        self.with_resource(jid, conn_id, |r| match presence {
            Some((p, prio)) => {
                r.presence = Some(p);
                r.priority = prio;
            }
            None => {
                r.presence = None;
                r.priority = 0;
            }
        });
        Ok(())
    }

    async fn set_interested(&self, jid: &FullJid, conn_id: u64) -> Result<(), TableError> {
        self.with_resource(jid, conn_id, |r| r.interested = true);
        Ok(())
    }

    async fn set_carbons(&self, jid: &FullJid, conn_id: u64, on: bool) -> Result<(), TableError> {
        self.with_resource(jid, conn_id, |r| r.carbons = on);
        Ok(())
    }

    fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare).cloned().unwrap_or_default()
    }

    fn any_carbons(&self, bare: &BareJid) -> bool {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare)
            .is_some_and(|list| list.iter().any(|r| r.carbons))
    }

    fn resource(&self, jid: &FullJid) -> Option<Resource> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(&jid.to_bare())?
            .iter()
            .find(|r| &r.jid == jid)
            .cloned()
    }

    fn count(&self) -> usize {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(id: u64) -> (SessionSender, mpsc::Receiver<SessionCommand>) {
        let (tx, rx) = mpsc::channel(2);
        (SessionSender { conn_id: id, tx }, rx)
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
        assert_eq!(t.resource(&jid).unwrap().sender.conn_id, 2);
        t.unbind(&jid, 2).await.unwrap();
        assert_eq!(t.count(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_hands_the_stanza_back() {
        let (s, _rx) = sender(1);
        let m = Element::bare("message", "jabber:client");
        s.deliver(m.clone()).unwrap();
        s.deliver(m.clone()).unwrap();
        assert!(matches!(s.deliver(m), Err(DeliveryError::Full(_))));
    }
}
