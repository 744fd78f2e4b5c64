//! The credentials a login reads, kept in memory. Reading them from the store was a round trip
//! to a database thread, a sixth of the CPU of a login with a full TLS handshake.
//!
//! `rookery user` changes accounts in the store beside a running server, and other nodes of a
//! cluster change them in the shared one, so the cache watches a counter that every change of
//! credentials moves (a trigger in the store: a password set, an account deleted) and starts
//! over when it has moved. A change made here takes effect at once; one made elsewhere within
//! [`WATCH_EVERY`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::store::{Credentials, Store};

/// How often the store's credentials version is read.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Accounts kept at most (about 200 bytes each); beyond that, logins read the store.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct CredentialsCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Arc<Credentials>>,
    /// Moves whenever entries are dropped: a read of the store that began before a drop may
    /// have read what the drop was for, and is not kept.
    generation: u64,
}

impl CredentialsCache {
    /// `user`'s credentials; None for an unknown user or when the store fails.
    pub async fn get(&self, store: &dyn Store, user: &str) -> Option<Arc<Credentials>> {
        let generation = {
            let inner = self.lock();
            if let Some(c) = inner.entries.get(user) {
                return Some(c.clone());
            }
            inner.generation
        };
        let creds = Arc::new(store.credentials(user).await.ok().flatten()?);
        let mut inner = self.lock();
        if inner.generation == generation && inner.entries.len() < CAPACITY {
            inner.entries.insert(user.to_owned(), creds.clone());
        }
        Some(creds)
    }

    /// Drops `user`'s credentials after this server changed them.
    pub fn forget(&self, user: &str) {
        let mut inner = self.lock();
        inner.entries.remove(user);
        inner.generation += 1;
    }

    fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.generation += 1;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the store's credentials version every [`WATCH_EVERY`] until shutdown, and drops
    /// every entry when it has moved (or cannot be read). The first reading drops too: what
    /// was kept before it was not checked against any version.
    pub async fn watch(&self, store: &dyn Store, mut shutdown: watch::Receiver<bool>) {
        let mut seen = None;
        loop {
            match store.credentials_version().await {
                Ok(v) if seen == Some(v) => {}
                Ok(v) => {
                    self.clear();
                    seen = Some(v);
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the credentials version; logins read the store");
                    self.clear();
                    seen = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
