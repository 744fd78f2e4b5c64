//! The SQLite store, the embedded default: one file under `data_dir`, in WAL mode so readers
//! never wait for the writer.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    ArchivePage, ArchivePrefs, ArchiveQuery, ArchivedMessage, Credentials, NewArchived,
    NewRestMessage, OfflineMessage, PepItem, PepNode, PrivateFragment, PushRegistration, RestApp,
    RestChat, RestMessage, Roster, RosterItem, ScramKeys, Store, StoreError, StoreResult,
    StoredRoom, Subscription, SubscriptionRequest, archive_sql, offline_in_order, search_words,
};

// The columns each REST row is read from, as literals so that queries stay `&'static str`.
macro_rules! rest_app_columns {
    () => {
        "id, name, token, chats_count"
    };
}
macro_rules! rest_chat_columns {
    () => {
        "app_id, number, messages_count, revision, room"
    };
}
macro_rules! rest_message_columns {
    () => {
        "number, body, sender, created_ms, updated_ms, revision, xmpp_id, via_api"
    };
}

pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one writing connection. SQLite has a single writer anyway; queueing writers here,
    /// in async code, beats letting several connections sleep in SQLite's busy handler.
    writer: SqlitePool,
    /// Copies the WAL back into the database beside the writer; stopped with the store.
    _checkpoints: Option<Checkpoints>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often once the WAL nears [`AUTOCHECKPOINT_PAGES`]: the writer's own checkpoint is
/// coming, and what it has to copy and sync is what was written since the last pass here.
const CHECKPOINT_NEAR_THRESHOLD: Duration = Duration::from_millis(20);
/// Where the writer checkpoints itself (`wal_autocheckpoint`).
const AUTOCHECKPOINT_PAGES: i64 = 40_000;
/// A WAL this long is near [`AUTOCHECKPOINT_PAGES`].
const NEAR_THRESHOLD_PAGES: i64 = AUTOCHECKPOINT_PAGES * 9 / 10;

/// A task that checkpoints the WAL from a reading connection, so that the writer seldom does.
/// SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that
/// commit then copies the whole WAL and syncs the file (60–80 ms for the archive's 40 MB
/// under load, every 1.5 s at 1,000 archived messages a second), and every write and archive
/// query waiting for the writer waits for it too. A passive checkpoint beside the writer
/// blocks nobody, and leaves the writer's own checkpoint little to copy.
struct Checkpoints(tokio::task::JoinHandle<()>);

impl Checkpoints {
    fn start(pool: SqlitePool) -> Checkpoints {
        Checkpoints(tokio::spawn(async move {
            let (mut pause, mut last_pages) = (CHECKPOINT_EVERY, 0);
            loop {
                tokio::time::sleep(pause).await;
                // The pass answers (busy, pages in the WAL, pages copied back).
                let pass: Result<(i64, i64, i64), _> =
                    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&pool)
                        .await;
                let pages = match pass {
                    Ok((_, pages, _)) => pages,
                    Err(e) => {
                        tracing::debug!(error = %e, "WAL checkpoint");
                        0
                    }
                };
                // Only while the WAL still grows: a long WAL nobody writes to stays long
                // until the next write, and has nothing left to copy.
                let growing_near = pages >= NEAR_THRESHOLD_PAGES && pages != last_pages;
                pause = if growing_near {
                    CHECKPOINT_NEAR_THRESHOLD
                } else {
                    CHECKPOINT_EVERY
                };
                last_pages = pages;
            }
        }))
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database the URL names and applies the migrations.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // The automatic checkpoint is the backstop for [`Checkpoints`]: under constant
            // writes the WAL cannot start over after a checkpoint beside the writer, so it
            // still grows to this (about 160 MB) and the writer checkpoints. That checkpoint
            // copies what is left and syncs the WAL and the database with every write
            // waiting (30-50 ms here when 200 ms of writes were left), so the threshold sets
            // how often writes stall: every 3 s at 2,000 archived msg/s, where 10,000 pages
            // was every second. At 100,000 pages reads slowed down.
            .pragma("wal_autocheckpoint", AUTOCHECKPOINT_PAGES.to_string())
            .pragma("cache_size", "-65536");
        let in_memory = url.contains(":memory:");
        if !in_memory {
            let path = options.get_filename();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(e.into()))?;
            }
        }
        let pool = if in_memory {
            // An in-memory database lives as long as its one connection: the pool must never
            // close it for being idle or old.
            pool_options()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            pool_options().max_connections(8)
        };
        let pool = pool.connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let writer = if in_memory {
            pool.clone()
        } else {
            pool_options()
                .max_connections(1)
                .connect_with(options)
                .await?
        };
        let checkpoints = (!in_memory).then(|| Checkpoints::start(pool.clone()));
        Ok(SqliteStore {
            pool,
            writer,
            _checkpoints: checkpoints,
        })
    }

    /// Bumps the roster version inside a transaction that changes the roster.
    async fn bump_version(tx: &mut Transaction<'_, Sqlite>, user: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO roster_versions (username, version) VALUES (?, 1) \
             ON CONFLICT (username) DO UPDATE SET version = version + 1 RETURNING version",
        )
        .bind(user)
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get(0)?)
    }
}

/// A connection to SQLite lives in this process and cannot go stale the way a network
/// connection does, so the pool does not ping it before handing it out: every ping is a round
/// trip to the connection's worker thread, and it was a third of each credentials lookup.
fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new().test_before_acquire(false)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn keys(row: &sqlx::sqlite::SqliteRow, stored: &str, server: &str) -> StoreResult<ScramKeys> {
    Ok(ScramKeys {
        stored_key: row.try_get(stored)?,
        server_key: row.try_get(server)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO accounts (username, salt, iterations, sha1_stored_key, sha1_server_key, \
             sha256_stored_key, sha256_server_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user)
        .bind(&creds.salt)
        .bind(creds.iterations as i64)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AccountExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_credentials(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE accounts SET salt = ?, iterations = ?, sha1_stored_key = ?, \
             sha1_server_key = ?, sha256_stored_key = ?, sha256_server_key = ? WHERE username = ?",
        )
        .bind(&creds.salt)
        .bind(creds.iterations as i64)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(user)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchAccount);
        }
        Ok(())
    }

    async fn credentials(&self, user: &str) -> StoreResult<Option<Credentials>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE username = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let iterations: i64 = row.try_get("iterations")?;
        Ok(Some(Credentials {
            salt: row.try_get("salt")?,
            iterations: u32::try_from(iterations).unwrap_or(0),
            sha1: keys(&row, "sha1_stored_key", "sha1_server_key")?,
            sha256: keys(&row, "sha256_stored_key", "sha256_server_key")?,
        }))
    }

    async fn delete_account(&self, user: &str) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await?;
        // The foreign keys cascade, but every table is named so nothing depends on them.
        for statement in [
            "DELETE FROM roster_groups WHERE username = ?",
            "DELETE FROM roster_items WHERE username = ?",
            "DELETE FROM roster_versions WHERE username = ?",
            "DELETE FROM subscription_requests WHERE username = ?",
            "DELETE FROM offline_messages WHERE username = ?",
            "DELETE FROM blocklist WHERE username = ?",
            "DELETE FROM vcards WHERE username = ?",
            "DELETE FROM private_data WHERE username = ?",
            "DELETE FROM archive WHERE username = ?",
            "DELETE FROM archive_prefs WHERE username = ?",
        ] {
            sqlx::query(statement).bind(user).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM accounts WHERE username = ?")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn credentials_version(&self) -> StoreResult<i64> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM credentials_version")
            .fetch_one(&self.pool)
            .await?;
        Ok(version)
    }

    async fn list_accounts(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT username FROM accounts ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    async fn roster(&self, user: &str) -> StoreResult<Roster> {
        let version: i64 = sqlx::query("SELECT version FROM roster_versions WHERE username = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let rows = sqlx::query(
            "SELECT contact, name, subscription, ask FROM roster_items WHERE username = ? \
             ORDER BY contact",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let groups = sqlx::query(
            "SELECT contact, grp FROM roster_groups WHERE username = ? ORDER BY contact, grp",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(item_from_row(row)?);
        }
        for g in &groups {
            let contact: String = g.try_get(0)?;
            if let Ok(i) = items.binary_search_by(|it: &RosterItem| it.jid.cmp(&contact)) {
                items[i].groups.push(g.try_get(1)?);
            }
        }
        Ok(Roster { version, items })
    }

    async fn roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<RosterItem>> {
        let row = sqlx::query(
            "SELECT contact, name, subscription, ask FROM roster_items \
             WHERE username = ? AND contact = ?",
        )
        .bind(user)
        .bind(contact)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut item = item_from_row(&row)?;
        let groups = sqlx::query(
            "SELECT grp FROM roster_groups WHERE username = ? AND contact = ? ORDER BY grp",
        )
        .bind(user)
        .bind(contact)
        .fetch_all(&self.pool)
        .await?;
        for g in &groups {
            item.groups.push(g.try_get(0)?);
        }
        Ok(Some(item))
    }

    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> StoreResult<i64> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO roster_items (username, contact, name, subscription, ask) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (username, contact) DO UPDATE SET \
             name = excluded.name, subscription = excluded.subscription, ask = excluded.ask",
        )
        .bind(user)
        .bind(&item.jid)
        .bind(&item.name)
        .bind(item.subscription.as_str())
        .bind(item.ask)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM roster_groups WHERE username = ? AND contact = ?")
            .bind(user)
            .bind(&item.jid)
            .execute(&mut *tx)
            .await?;
        for g in &item.groups {
            sqlx::query(
                "INSERT OR IGNORE INTO roster_groups (username, contact, grp) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(&item.jid)
            .bind(g)
            .execute(&mut *tx)
            .await?;
        }
        let version = Self::bump_version(&mut tx, user).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn remove_roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<i64>> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM roster_groups WHERE username = ? AND contact = ?")
            .bind(user)
            .bind(contact)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM roster_items WHERE username = ? AND contact = ?")
            .bind(user)
            .bind(contact)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let version = Self::bump_version(&mut tx, user).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn put_subscription_request(
        &self,
        user: &str,
        request: &SubscriptionRequest,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO subscription_requests (username, contact, stanza) VALUES (?, ?, ?) \
             ON CONFLICT (username, contact) DO UPDATE SET stanza = excluded.stanza",
        )
        .bind(user)
        .bind(&request.contact)
        .bind(&request.stanza)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn remove_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM subscription_requests WHERE username = ? AND contact = ?")
                .bind(user)
                .bind(contact)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn subscription_requests(&self, user: &str) -> StoreResult<Vec<SubscriptionRequest>> {
        let rows = sqlx::query(
            "SELECT contact, stanza FROM subscription_requests WHERE username = ? ORDER BY contact",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SubscriptionRequest {
                    contact: r.try_get(0)?,
                    stanza: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn has_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT 1 FROM subscription_requests WHERE username = ? AND contact = ?")
                .bind(user)
                .bind(contact)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn push_offline(&self, user: &str, stanza: &str, stamp_ms: i64) -> StoreResult<i64> {
        let done = sqlx::query(
            "INSERT INTO offline_messages (username, stanza, stamp_ms) VALUES (?, ?, ?)",
        )
        .bind(user)
        .bind(stanza)
        .bind(stamp_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.last_insert_rowid())
    }

    async fn offline_count(&self, user: &str) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM offline_messages WHERE username = ?")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn offline_total(&self) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM offline_messages")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn take_offline(&self, user: &str) -> StoreResult<Vec<OfflineMessage>> {
        let rows = sqlx::query(
            "DELETE FROM offline_messages WHERE username = ? RETURNING id, stanza, stamp_ms",
        )
        .bind(user)
        .fetch_all(&self.writer)
        .await?;
        offline_in_order(&rows)
    }

    async fn claim_offline(&self, user: &str, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM offline_messages WHERE username = ? AND id = ?")
            .bind(user)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn push_registrations(&self, user: &str) -> StoreResult<Vec<PushRegistration>> {
        let rows = sqlx::query_as::<_, PushRegistration>(
            "SELECT service, node, options FROM push_registrations WHERE username = ? ORDER BY service, node",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn enable_push(&self, user: &str, registration: &PushRegistration) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO push_registrations (username, service, node, options) VALUES (?, ?, ?, ?) ON CONFLICT (username, service, node) DO UPDATE SET options = excluded.options",
        )
        .bind(user)
        .bind(&registration.service)
        .bind(&registration.node)
        .bind(&registration.options)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn disable_push(&self, user: &str, service: &str, node: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM push_registrations WHERE username = ?1 AND service = ?2 AND (?3 IS NULL OR node = ?3)",
        )
        .bind(user)
        .bind(service)
        .bind(node)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn pep_nodes(&self, user: &str) -> StoreResult<Vec<PepNode>> {
        let rows = sqlx::query_as::<_, PepNode>(
            "SELECT node, config FROM pep_nodes WHERE username = ? ORDER BY node",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn pep_node(&self, user: &str, node: &str) -> StoreResult<Option<PepNode>> {
        let row = sqlx::query_as::<_, PepNode>(
            "SELECT node, config FROM pep_nodes WHERE username = ? AND node = ?",
        )
        .bind(user)
        .bind(node)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    async fn pep_set_node(&self, user: &str, node: &PepNode) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pep_nodes (username, node, config) VALUES (?, ?, ?) \
             ON CONFLICT (username, node) DO UPDATE SET config = excluded.config",
        )
        .bind(user)
        .bind(&node.node)
        .bind(&node.config)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn pep_delete_node(&self, user: &str, node: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM pep_nodes WHERE username = ? AND node = ?")
            .bind(user)
            .bind(node)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn pep_publish(
        &self,
        user: &str,
        node: &str,
        item: &PepItem,
        max_items: u32,
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO pep_items (username, node, item_id, seq, published_ms, payload) \
             VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items \
             WHERE username = ?1 AND node = ?2), ?4, ?5) \
             ON CONFLICT (username, node, item_id) DO UPDATE SET seq = excluded.seq, \
             published_ms = excluded.published_ms, payload = excluded.payload",
        )
        .bind(user)
        .bind(node)
        .bind(&item.item_id)
        .bind(item.published_ms)
        .bind(&item.payload)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM pep_items WHERE username = ?1 AND node = ?2 AND seq NOT IN \
             (SELECT seq FROM pep_items WHERE username = ?1 AND node = ?2 \
             ORDER BY seq DESC LIMIT ?3)",
        )
        .bind(user)
        .bind(node)
        .bind(i64::from(max_items))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pep_items(
        &self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> StoreResult<Vec<PepItem>> {
        let mut rows = sqlx::query_as::<_, PepItem>(
            "SELECT item_id, published_ms, payload FROM pep_items \
             WHERE username = ? AND node = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(user)
        .bind(node)
        .bind(if ids.is_empty() { i64::from(max) } else { -1 })
        .fetch_all(&self.pool)
        .await?;
        if !ids.is_empty() {
            rows.retain(|r| ids.contains(&r.item_id));
        }
        Ok(rows)
    }

    async fn pep_retract(&self, user: &str, node: &str, item_id: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM pep_items WHERE username = ? AND node = ? AND item_id = ?")
                .bind(user)
                .bind(node)
                .bind(item_id)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn pep_purge(&self, user: &str, node: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM pep_items WHERE username = ? AND node = ?")
            .bind(user)
            .bind(node)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn blocklist(&self, user: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT jid FROM blocklist WHERE username = ? ORDER BY jid")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    async fn block(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        for jid in jids {
            sqlx::query("INSERT OR IGNORE INTO blocklist (username, jid) VALUES (?, ?)")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unblock(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocklist WHERE username = ?")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        for jid in jids {
            sqlx::query("DELETE FROM blocklist WHERE username = ? AND jid = ?")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>> {
        self.new_ids(archive_sql::Archive::Account, n).await
    }

    async fn archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()> {
        self.append_batch(archive_sql::Archive::Account, messages)
            .await
    }

    async fn room_archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>> {
        self.new_ids(archive_sql::Archive::Room, n).await
    }

    async fn room_archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()> {
        self.append_batch(archive_sql::Archive::Room, messages)
            .await
    }

    async fn room_archive_query(
        &self,
        room: &str,
        query: &ArchiveQuery,
    ) -> StoreResult<ArchivePage> {
        self.query_archive(archive_sql::Archive::Room, room, query)
            .await
    }

    async fn muc_room(&self, name: &str) -> StoreResult<Option<StoredRoom>> {
        let row = sqlx::query("SELECT config, subject FROM muc_rooms WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let affs = sqlx::query(
            "SELECT jid, affiliation FROM muc_affiliations WHERE room = ? ORDER BY jid",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let mut affiliations = Vec::with_capacity(affs.len());
        for a in &affs {
            affiliations.push((a.try_get(0)?, a.try_get(1)?));
        }
        Ok(Some(StoredRoom {
            name: name.to_owned(),
            config: row.try_get(0)?,
            subject: row.try_get(1)?,
            affiliations,
        }))
    }

    async fn muc_rooms(&self) -> StoreResult<Vec<StoredRoom>> {
        let rows = sqlx::query("SELECT name, config, subject FROM muc_rooms ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(StoredRoom {
                name: r.try_get(0)?,
                config: r.try_get(1)?,
                subject: r.try_get(2)?,
                affiliations: Vec::new(),
            });
        }
        Ok(out)
    }

    async fn save_muc_room(&self, room: &StoredRoom) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO muc_rooms (name, config, subject) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET config = excluded.config, \
             subject = excluded.subject",
        )
        .bind(&room.name)
        .bind(&room.config)
        .bind(&room.subject)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = ?")
            .bind(&room.name)
            .execute(&mut *tx)
            .await?;
        for (jid, aff) in &room.affiliations {
            sqlx::query("INSERT INTO muc_affiliations (room, jid, affiliation) VALUES (?, ?, ?)")
                .bind(&room.name)
                .bind(jid)
                .bind(aff)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_muc_room(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM muc_rooms WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM room_archive WHERE room = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn archive_query(&self, user: &str, query: &ArchiveQuery) -> StoreResult<ArchivePage> {
        self.query_archive(archive_sql::Archive::Account, user, query)
            .await
    }

    async fn archive_prefs(&self, user: &str) -> StoreResult<Option<ArchivePrefs>> {
        let row =
            sqlx::query("SELECT default_mode, always, never FROM archive_prefs WHERE username = ?")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let list = |s: String| -> Vec<String> {
            s.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(Some(ArchivePrefs {
            default: row.try_get(0)?,
            always: list(row.try_get(1)?),
            never: list(row.try_get(2)?),
        }))
    }

    async fn set_archive_prefs(&self, user: &str, prefs: &ArchivePrefs) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO archive_prefs (username, default_mode, always, never) \
             VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET \
             default_mode = excluded.default_mode, always = excluded.always, \
             never = excluded.never",
        )
        .bind(user)
        .bind(&prefs.default)
        .bind(prefs.always.join("\n"))
        .bind(prefs.never.join("\n"))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn archive_expire(&self, before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM archive WHERE stamp_ms < ?")
            .bind(before_ms)
            .execute(&self.writer)
            .await?;
        let rooms = sqlx::query("DELETE FROM room_archive WHERE stamp_ms < ?")
            .bind(before_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() + rooms.rows_affected())
    }

    async fn vcard(&self, user: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT vcard FROM vcards WHERE username = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn set_vcard(&self, user: &str, vcard: &str, photo_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO vcards (username, vcard, photo_hash) VALUES (?, ?, ?) \
             ON CONFLICT (username) DO UPDATE SET vcard = excluded.vcard, photo_hash = excluded.photo_hash",
        )
        .bind(user)
        .bind(vcard)
        .bind(photo_hash)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn vcard_photo_hash(&self, user: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT photo_hash FROM vcards WHERE username = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten())
    }

    async fn private_data(
        &self,
        user: &str,
        namespace: &str,
        name: &str,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "SELECT xml FROM private_data WHERE username = ? AND namespace = ? AND name = ?",
        )
        .bind(user)
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn set_private_data(&self, user: &str, fragments: &[PrivateFragment]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        for f in fragments {
            match &f.xml {
                Some(xml) => {
                    sqlx::query(
                        "INSERT INTO private_data (username, namespace, name, xml) \
                         VALUES (?, ?, ?, ?) \
                         ON CONFLICT (username, namespace, name) DO UPDATE SET xml = excluded.xml",
                    )
                    .bind(user)
                    .bind(&f.namespace)
                    .bind(&f.name)
                    .bind(xml)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "DELETE FROM private_data \
                         WHERE username = ? AND namespace = ? AND name = ?",
                    )
                    .bind(user)
                    .bind(&f.namespace)
                    .bind(&f.name)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn private_data_count(&self, user: &str) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM private_data WHERE username = ?")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn rest_create_app(&self, name: &str, token: &str) -> StoreResult<RestApp> {
        let row = sqlx::query(concat!(
            "INSERT INTO rest_apps (name, token, created_ms) VALUES (?, ?, ?) RETURNING ",
            rest_app_columns!()
        ))
        .bind(name)
        .bind(token)
        .bind(chrono::Utc::now().timestamp_millis())
        .fetch_one(&self.writer)
        .await?;
        super::from_row(&row)
    }

    async fn rest_apps(&self, offset: i64, limit: i64) -> StoreResult<(Vec<RestApp>, i64)> {
        // Negative bounds read as 0 on both engines (PostgreSQL refuses them, SQLite reads a
        // negative LIMIT as none); the same holds for every page below.
        let rows = sqlx::query(concat!(
            "SELECT ",
            rest_app_columns!(),
            " FROM rest_apps ORDER BY id LIMIT ? OFFSET ?"
        ))
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM rest_apps")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let apps = rows
            .iter()
            .map(super::from_row)
            .collect::<StoreResult<_>>()?;
        Ok((apps, total))
    }

    async fn rest_app(&self, token: &str) -> StoreResult<Option<RestApp>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rest_app_columns!(),
            " FROM rest_apps WHERE token = ?"
        ))
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_rename_app(&self, token: &str, name: &str) -> StoreResult<Option<RestApp>> {
        let row = sqlx::query(concat!(
            "UPDATE rest_apps SET name = ? WHERE token = ? RETURNING ",
            rest_app_columns!()
        ))
        .bind(name)
        .bind(token)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_create_chat(&self, app_id: i64, room: &str) -> StoreResult<RestChat> {
        let mut tx = self.writer.begin().await?;
        // No such application: `RowNotFound`, and the transaction rolls back on drop.
        let number: i64 = sqlx::query(
            "UPDATE rest_apps SET chats_count = chats_count + 1 WHERE id = ? \
             RETURNING chats_count",
        )
        .bind(app_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let row = sqlx::query(concat!(
            "INSERT INTO rest_chats (app_id, number, room, created_ms) VALUES (?, ?, ?, ?) \
             RETURNING ",
            rest_chat_columns!()
        ))
        .bind(app_id)
        .bind(number)
        .bind(room)
        .bind(chrono::Utc::now().timestamp_millis())
        .fetch_one(&mut *tx)
        .await?;
        let chat = super::from_row(&row)?;
        tx.commit().await?;
        Ok(chat)
    }

    async fn rest_chats(&self, app_id: i64, offset: i64, limit: i64) -> StoreResult<Vec<RestChat>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rest_chat_columns!(),
            " FROM rest_chats WHERE app_id = ? ORDER BY number LIMIT ? OFFSET ?"
        ))
        .bind(app_id)
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::from_row).collect()
    }

    async fn rest_chat(&self, app_id: i64, number: i64) -> StoreResult<Option<RestChat>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rest_chat_columns!(),
            " FROM rest_chats WHERE app_id = ? AND number = ?"
        ))
        .bind(app_id)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_chat_by_room(&self, room: &str) -> StoreResult<Option<RestChat>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rest_chat_columns!(),
            " FROM rest_chats WHERE room = ?"
        ))
        .bind(room)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_add_message(
        &self,
        app_id: i64,
        chat: i64,
        msg: &NewRestMessage<'_>,
    ) -> StoreResult<Option<RestMessage>> {
        // One statement: the message takes the chat's next number and revision, and the
        // `rest_messages_counters` trigger raises the chat's counters to them, atomically.
        // (Each statement is a round trip to SQLite's thread; a transaction of four was the
        // REST bridge's bottleneck.)
        let row = sqlx::query(concat!(
            "INSERT INTO rest_messages (app_id, chat, number, body, sender, created_ms, \
             updated_ms, revision, xmpp_id, via_api) \
             SELECT app_id, number, messages_count + 1, ?, ?, ?, ?, revision + 1, ?, ? \
             FROM rest_chats WHERE app_id = ? AND number = ? RETURNING ",
            rest_message_columns!()
        ))
        .bind(msg.body)
        .bind(msg.sender)
        .bind(msg.now_ms)
        .bind(msg.now_ms)
        .bind(msg.xmpp_id)
        .bind(msg.via_api)
        .bind(app_id)
        .bind(chat)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_messages(
        &self,
        app_id: i64,
        chat: i64,
        after: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rest_message_columns!(),
            " FROM rest_messages WHERE app_id = ? AND chat = ? AND number > ? \
             ORDER BY number LIMIT ? OFFSET ?"
        ))
        .bind(app_id)
        .bind(chat)
        .bind(after)
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::from_row).collect()
    }

    async fn rest_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
    ) -> StoreResult<Option<RestMessage>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rest_message_columns!(),
            " FROM rest_messages WHERE app_id = ? AND chat = ? AND number = ?"
        ))
        .bind(app_id)
        .bind(chat)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_message_by_xmpp_id(
        &self,
        app_id: i64,
        chat: i64,
        xmpp_id: &str,
    ) -> StoreResult<Option<RestMessage>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rest_message_columns!(),
            " FROM rest_messages WHERE app_id = ? AND chat = ? AND xmpp_id = ? \
             ORDER BY number DESC LIMIT 1"
        ))
        .bind(app_id)
        .bind(chat)
        .bind(xmpp_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_edit_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
        body: &str,
        now_ms: i64,
    ) -> StoreResult<Option<RestMessage>> {
        let mut tx = self.writer.begin().await?;
        // The chat's counter first, as `rest_add_message` does; a missing message rolls the
        // raise back when the transaction is dropped.
        let revision = sqlx::query(
            "UPDATE rest_chats SET revision = revision + 1 WHERE app_id = ? AND number = ? \
             RETURNING revision",
        )
        .bind(app_id)
        .bind(chat)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(revision) = revision else {
            return Ok(None);
        };
        let revision: i64 = revision.try_get(0)?;
        let row = sqlx::query(concat!(
            "UPDATE rest_messages SET body = ?, updated_ms = ?, revision = ? \
             WHERE app_id = ? AND chat = ? AND number = ? RETURNING ",
            rest_message_columns!()
        ))
        .bind(body)
        .bind(now_ms)
        .bind(revision)
        .bind(app_id)
        .bind(chat)
        .bind(number)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let message = super::from_row(&row)?;
        tx.commit().await?;
        Ok(Some(message))
    }

    async fn rest_changes(
        &self,
        app_id: i64,
        chat: i64,
        revision: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rest_message_columns!(),
            " FROM rest_messages WHERE app_id = ? AND chat = ? AND revision > ? \
             ORDER BY revision LIMIT ?"
        ))
        .bind(app_id)
        .bind(chat)
        .bind(revision)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::from_row).collect()
    }

    async fn rest_search(
        &self,
        app_id: i64,
        chat: i64,
        text: &str,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        let words = search_words(text);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Each word quoted, so FTS5 reads none of them as syntax; OR: any of them matches.
        let expr = words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" OR ");
        let rows = sqlx::query(
            "SELECT m.number, m.body, m.sender, m.created_ms, m.updated_ms, m.revision, \
             m.xmpp_id, m.via_api FROM rest_messages_fts JOIN rest_messages m \
             ON m.id = rest_messages_fts.rowid \
             WHERE rest_messages_fts MATCH ? AND m.app_id = ? AND m.chat = ? \
             ORDER BY rest_messages_fts.rank, m.number DESC LIMIT ?",
        )
        .bind(expr)
        .bind(app_id)
        .bind(chat)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::from_row).collect()
    }

    async fn rest_members(&self, app_id: i64, chat: i64) -> StoreResult<Vec<String>> {
        let rows =
            sqlx::query("SELECT jid FROM rest_members WHERE app_id = ? AND chat = ? ORDER BY jid")
                .bind(app_id)
                .bind(chat)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    async fn rest_add_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO rest_members (app_id, chat, jid) VALUES (?, ?, ?) \
             ON CONFLICT (app_id, chat, jid) DO NOTHING",
        )
        .bind(app_id)
        .bind(chat)
        .bind(jid)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rest_remove_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM rest_members WHERE app_id = ? AND chat = ? AND jid = ?")
                .bind(app_id)
                .bind(chat)
                .bind(jid)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn item_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<RosterItem> {
    let subscription: String = row.try_get("subscription")?;
    Ok(RosterItem {
        jid: row.try_get("contact")?,
        name: row.try_get("name")?,
        // The CHECK constraint keeps other values out; `none` is the safe reading regardless.
        subscription: Subscription::parse(&subscription).unwrap_or(Subscription::None),
        ask: row.try_get("ask")?,
        groups: Vec::new(),
    })
}

impl SqliteStore {
    /// Archive ids are reserved in `sqlite_sequence` (AUTOINCREMENT's record of the highest id
    /// handed out) before they are handed out, so that ids a crash left unwritten are not
    /// handed out again after it. A write transaction: callers take ids in blocks, ahead of
    /// need (`modules::mam`).
    async fn new_ids(&self, archive: archive_sql::Archive, n: usize) -> StoreResult<Vec<i64>> {
        // IMMEDIATE: takes the write lock before reading, where a deferred transaction could
        // fail to upgrade its read once another connection has written.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let last: i64 = sqlx::query_scalar(archive_sql::sqlite_last_id(archive))
            .fetch_one(&mut *tx)
            .await?;
        // A block of a few thousand at most.
        let end = last + n as i64;
        let (update, insert) = archive_sql::sqlite_reserve(archive);
        let updated = sqlx::query(update).bind(end).execute(&mut *tx).await?;
        if updated.rows_affected() == 0 {
            sqlx::query(insert).bind(end).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok((last + 1..=end).collect())
    }

    /// Archives a batch in one transaction (group commit), with one multi-row INSERT per
    /// [`archive_sql::INSERT_CHUNK`] rows: each statement is a round trip, and the writer's
    /// batches are what keep archiving cheap.
    async fn append_batch(
        &self,
        archive: archive_sql::Archive,
        messages: &[NewArchived<'_>],
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        for chunk in messages.chunks(archive_sql::INSERT_CHUNK) {
            archive_sql::insert::<sqlx::Sqlite>(archive, chunk)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query_archive(
        &self,
        archive: archive_sql::Archive,
        owner: &str,
        query: &ArchiveQuery,
    ) -> StoreResult<ArchivePage> {
        let mut qb =
            archive_sql::page::<sqlx::Sqlite>(archive, owner, query, archive_sql::FullText::Fts5);
        let rows = qb.build().fetch_all(&self.pool).await?;
        let mut messages = Vec::with_capacity(rows.len());
        for r in &rows {
            messages.push(ArchivedMessage {
                id: r.try_get(0)?,
                stamp_ms: r.try_get(1)?,
                stanza: r.try_get(2)?,
            });
        }
        Ok(archive_sql::finish(messages, query))
    }
}
