//! The PostgreSQL store, for the cluster shape: every node of a cluster shares one database, so
//! everything here is safe under concurrent writers (single statements or transactions, never
//! read-then-write in the application).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

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

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database the URL names and applies the migrations. Migrations take an
    /// advisory lock, so nodes starting together apply them once.
    pub async fn open(url: &str) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        migrate(&pool).await?;
        Ok(PgStore { pool })
    }

    /// Bumps the roster version inside a transaction that changes the roster.
    async fn bump_version(tx: &mut Transaction<'_, Postgres>, user: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO roster_versions (username, version) VALUES ($1, 1) \
             ON CONFLICT (username) DO UPDATE SET version = roster_versions.version + 1 \
             RETURNING version",
        )
        .bind(user)
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get(0)?)
    }
}

/// Brings the schema up to date (start-up and `rookery migrate`).
pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    sqlx::migrate!("./migrations/postgres").run(pool).await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn keys(row: &sqlx::postgres::PgRow, stored: &str, server: &str) -> StoreResult<ScramKeys> {
    Ok(ScramKeys {
        stored_key: row.try_get(stored)?,
        server_key: row.try_get(server)?,
    })
}

#[async_trait]
impl Store for PgStore {
    async fn create_account(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO accounts (username, salt, iterations, sha1_stored_key, sha1_server_key, \
             sha256_stored_key, sha256_server_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(user)
        .bind(&creds.salt)
        .bind(creds.iterations as i64)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AccountExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_credentials(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE accounts SET salt = $1, iterations = $2, sha1_stored_key = $3, \
             sha1_server_key = $4, sha256_stored_key = $5, sha256_server_key = $6 WHERE username = $7",
        )
        .bind(&creds.salt)
        .bind(creds.iterations as i64)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(user)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchAccount);
        }
        Ok(())
    }

    async fn credentials(&self, user: &str) -> StoreResult<Option<Credentials>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE username = $1")
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
        let mut tx = self.pool.begin().await?;
        // The foreign keys cascade, but every table is named so nothing depends on them.
        for statement in [
            "DELETE FROM roster_groups WHERE username = $1",
            "DELETE FROM roster_items WHERE username = $1",
            "DELETE FROM roster_versions WHERE username = $1",
            "DELETE FROM subscription_requests WHERE username = $1",
            "DELETE FROM offline_messages WHERE username = $1",
            "DELETE FROM blocklist WHERE username = $1",
            "DELETE FROM vcards WHERE username = $1",
            "DELETE FROM private_data WHERE username = $1",
            "DELETE FROM archive WHERE username = $1",
            "DELETE FROM archive_prefs WHERE username = $1",
        ] {
            sqlx::query(statement).bind(user).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM accounts WHERE username = $1")
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
        let version: i64 = sqlx::query("SELECT version FROM roster_versions WHERE username = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let rows = sqlx::query(
            "SELECT contact, name, subscription, ask FROM roster_items WHERE username = $1 \
             ORDER BY contact",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let groups = sqlx::query(
            "SELECT contact, grp FROM roster_groups WHERE username = $1 ORDER BY contact, grp",
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
             WHERE username = $1 AND contact = $2",
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
            "SELECT grp FROM roster_groups WHERE username = $1 AND contact = $2 ORDER BY grp",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO roster_items (username, contact, name, subscription, ask) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username, contact) DO UPDATE SET \
             name = excluded.name, subscription = excluded.subscription, ask = excluded.ask",
        )
        .bind(user)
        .bind(&item.jid)
        .bind(&item.name)
        .bind(item.subscription.as_str())
        .bind(item.ask)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM roster_groups WHERE username = $1 AND contact = $2")
            .bind(user)
            .bind(&item.jid)
            .execute(&mut *tx)
            .await?;
        for g in &item.groups {
            sqlx::query(
                "INSERT INTO roster_groups (username, contact, grp) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM roster_groups WHERE username = $1 AND contact = $2")
            .bind(user)
            .bind(contact)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM roster_items WHERE username = $1 AND contact = $2")
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
            "INSERT INTO subscription_requests (username, contact, stanza) VALUES ($1, $2, $3) \
             ON CONFLICT (username, contact) DO UPDATE SET stanza = excluded.stanza",
        )
        .bind(user)
        .bind(&request.contact)
        .bind(&request.stanza)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM subscription_requests WHERE username = $1 AND contact = $2")
                .bind(user)
                .bind(contact)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn subscription_requests(&self, user: &str) -> StoreResult<Vec<SubscriptionRequest>> {
        let rows = sqlx::query(
            "SELECT contact, stanza FROM subscription_requests WHERE username = $1 ORDER BY contact",
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
            sqlx::query("SELECT 1 FROM subscription_requests WHERE username = $1 AND contact = $2")
                .bind(user)
                .bind(contact)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn push_offline(&self, user: &str, stanza: &str, stamp_ms: i64) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO offline_messages (username, stanza, stamp_ms) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(user)
        .bind(stanza)
        .bind(stamp_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn offline_count(&self, user: &str) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM offline_messages WHERE username = $1")
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
            "DELETE FROM offline_messages WHERE username = $1 RETURNING id, stanza, stamp_ms",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        offline_in_order(&rows)
    }

    async fn claim_offline(&self, user: &str, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM offline_messages WHERE username = $1 AND id = $2")
            .bind(user)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn push_registrations(&self, user: &str) -> StoreResult<Vec<PushRegistration>> {
        let rows = sqlx::query_as::<_, PushRegistration>(
            "SELECT service, node, options FROM push_registrations WHERE username = $1 ORDER BY service, node",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn enable_push(&self, user: &str, registration: &PushRegistration) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO push_registrations (username, service, node, options) VALUES ($1, $2, $3, $4) ON CONFLICT (username, service, node) DO UPDATE SET options = excluded.options",
        )
        .bind(user)
        .bind(&registration.service)
        .bind(&registration.node)
        .bind(&registration.options)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn disable_push(&self, user: &str, service: &str, node: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM push_registrations WHERE username = $1 AND service = $2 AND ($3 IS NULL OR node = $3)",
        )
        .bind(user)
        .bind(service)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn blocklist(&self, user: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT jid FROM blocklist WHERE username = $1 ORDER BY jid")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    async fn block(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for jid in jids {
            sqlx::query(
                "INSERT INTO blocklist (username, jid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(jid)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unblock(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocklist WHERE username = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        for jid in jids {
            sqlx::query("DELETE FROM blocklist WHERE username = $1 AND jid = $2")
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
        let row = sqlx::query("SELECT config, subject FROM muc_rooms WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let affs = sqlx::query(
            "SELECT jid, affiliation FROM muc_affiliations WHERE room = $1 ORDER BY jid",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO muc_rooms (name, config, subject) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET config = excluded.config, \
             subject = excluded.subject",
        )
        .bind(&room.name)
        .bind(&room.config)
        .bind(&room.subject)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1")
            .bind(&room.name)
            .execute(&mut *tx)
            .await?;
        for (jid, aff) in &room.affiliations {
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES ($1, $2, $3)",
            )
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM muc_rooms WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM room_archive WHERE room = $1")
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
        let row = sqlx::query(
            "SELECT default_mode, always, never FROM archive_prefs WHERE username = $1",
        )
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
             VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO UPDATE SET \
             default_mode = excluded.default_mode, always = excluded.always, \
             never = excluded.never",
        )
        .bind(user)
        .bind(&prefs.default)
        .bind(prefs.always.join("\n"))
        .bind(prefs.never.join("\n"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn archive_expire(&self, before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM archive WHERE stamp_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        let rooms = sqlx::query("DELETE FROM room_archive WHERE stamp_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() + rooms.rows_affected())
    }

    async fn pep_nodes(&self, user: &str) -> StoreResult<Vec<PepNode>> {
        let rows = sqlx::query_as::<_, PepNode>(
            "SELECT node, config FROM pep_nodes WHERE username = $1 ORDER BY node",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn pep_node(&self, user: &str, node: &str) -> StoreResult<Option<PepNode>> {
        let row = sqlx::query_as::<_, PepNode>(
            "SELECT node, config FROM pep_nodes WHERE username = $1 AND node = $2",
        )
        .bind(user)
        .bind(node)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    async fn pep_set_node(&self, user: &str, node: &PepNode) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pep_nodes (username, node, config) VALUES ($1, $2, $3) \
             ON CONFLICT (username, node) DO UPDATE SET config = excluded.config",
        )
        .bind(user)
        .bind(&node.node)
        .bind(&node.config)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pep_delete_node(&self, user: &str, node: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM pep_nodes WHERE username = $1 AND node = $2")
            .bind(user)
            .bind(node)
            .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pep_items (username, node, item_id, seq, published_ms, payload) \
             VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items \
             WHERE username = $1 AND node = $2), $4, $5) \
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
            "DELETE FROM pep_items WHERE username = $1 AND node = $2 AND seq NOT IN \
             (SELECT seq FROM pep_items WHERE username = $1 AND node = $2 \
             ORDER BY seq DESC LIMIT $3)",
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
             WHERE username = $1 AND node = $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(user)
        .bind(node)
        .bind(ids.is_empty().then_some(i64::from(max)))
        .fetch_all(&self.pool)
        .await?;
        if !ids.is_empty() {
            rows.retain(|r| ids.contains(&r.item_id));
        }
        Ok(rows)
    }

    async fn pep_retract(&self, user: &str, node: &str, item_id: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM pep_items WHERE username = $1 AND node = $2 AND item_id = $3")
                .bind(user)
                .bind(node)
                .bind(item_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn pep_purge(&self, user: &str, node: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM pep_items WHERE username = $1 AND node = $2")
            .bind(user)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn vcard(&self, user: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT vcard FROM vcards WHERE username = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn set_vcard(&self, user: &str, vcard: &str, photo_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO vcards (username, vcard, photo_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO UPDATE SET vcard = excluded.vcard, photo_hash = excluded.photo_hash",
        )
        .bind(user)
        .bind(vcard)
        .bind(photo_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn vcard_photo_hash(&self, user: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT photo_hash FROM vcards WHERE username = $1")
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
            "SELECT xml FROM private_data WHERE username = $1 AND namespace = $2 AND name = $3",
        )
        .bind(user)
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn set_private_data(&self, user: &str, fragments: &[PrivateFragment]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for f in fragments {
            match &f.xml {
                Some(xml) => {
                    sqlx::query(
                        "INSERT INTO private_data (username, namespace, name, xml) \
                         VALUES ($1, $2, $3, $4) \
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
                         WHERE username = $1 AND namespace = $2 AND name = $3",
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
        let row = sqlx::query("SELECT COUNT(*) FROM private_data WHERE username = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn rest_create_app(&self, name: &str, token: &str) -> StoreResult<RestApp> {
        let row = sqlx::query(concat!(
            "INSERT INTO rest_apps (name, token, created_ms) VALUES ($1, $2, $3) RETURNING ",
            rest_app_columns!()
        ))
        .bind(name)
        .bind(token)
        .bind(chrono::Utc::now().timestamp_millis())
        .fetch_one(&self.pool)
        .await?;
        super::from_row(&row)
    }

    async fn rest_apps(&self, offset: i64, limit: i64) -> StoreResult<(Vec<RestApp>, i64)> {
        // Negative bounds read as 0 on both engines (PostgreSQL refuses them, SQLite reads a
        // negative LIMIT as none); the same holds for every page below.
        let rows = sqlx::query(concat!(
            "SELECT ",
            rest_app_columns!(),
            " FROM rest_apps ORDER BY id LIMIT $1 OFFSET $2"
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
            " FROM rest_apps WHERE token = $1"
        ))
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_rename_app(&self, token: &str, name: &str) -> StoreResult<Option<RestApp>> {
        let row = sqlx::query(concat!(
            "UPDATE rest_apps SET name = $1 WHERE token = $2 RETURNING ",
            rest_app_columns!()
        ))
        .bind(name)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::from_row).transpose()
    }

    async fn rest_create_chat(&self, app_id: i64, room: &str) -> StoreResult<RestChat> {
        let mut tx = self.pool.begin().await?;
        // The UPDATE's row lock, held to commit, queues every other chat creation of the
        // application on any node: the number is the next one, and nobody else's.
        // No such application: `RowNotFound`, and the transaction rolls back on drop.
        let number: i64 = sqlx::query(
            "UPDATE rest_apps SET chats_count = chats_count + 1 WHERE id = $1 \
             RETURNING chats_count",
        )
        .bind(app_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let row = sqlx::query(concat!(
            "INSERT INTO rest_chats (app_id, number, room, created_ms) VALUES ($1, $2, $3, $4) \
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
            " FROM rest_chats WHERE app_id = $1 ORDER BY number LIMIT $2 OFFSET $3"
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
            " FROM rest_chats WHERE app_id = $1 AND number = $2"
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
            " FROM rest_chats WHERE room = $1"
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
        // One statement, so one round trip: its UPDATE takes the chat's row lock, which holds
        // the chat's other writers (on any node) until it commits, so numbers and revisions
        // are gapless and a reader that sees a revision sees every lower one.
        let row = sqlx::query(concat!(
            "WITH c AS (UPDATE rest_chats SET messages_count = messages_count + 1, \
             revision = revision + 1 WHERE app_id = $1 AND number = $2 \
             RETURNING app_id, number, messages_count, revision) \
             INSERT INTO rest_messages (app_id, chat, number, body, sender, created_ms, \
             updated_ms, revision, xmpp_id, via_api) \
             SELECT app_id, number, messages_count, $3, $4, $5, $5, revision, $6, $7 FROM c \
             RETURNING ",
            rest_message_columns!()
        ))
        .bind(app_id)
        .bind(chat)
        .bind(msg.body)
        .bind(msg.sender)
        .bind(msg.now_ms)
        .bind(msg.xmpp_id)
        .bind(msg.via_api)
        .fetch_optional(&self.pool)
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
            " FROM rest_messages WHERE app_id = $1 AND chat = $2 AND number > $3 \
             ORDER BY number LIMIT $4 OFFSET $5"
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
            " FROM rest_messages WHERE app_id = $1 AND chat = $2 AND number = $3"
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
            " FROM rest_messages WHERE app_id = $1 AND chat = $2 AND xmpp_id = $3 \
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
        let mut tx = self.pool.begin().await?;
        // The chat's row first, as `rest_add_message` locks it, so the two never deadlock; a
        // missing message rolls the raise back when the transaction is dropped.
        let revision = sqlx::query(
            "UPDATE rest_chats SET revision = revision + 1 WHERE app_id = $1 AND number = $2 \
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
            "UPDATE rest_messages SET body = $1, updated_ms = $2, revision = $3 \
             WHERE app_id = $4 AND chat = $5 AND number = $6 RETURNING ",
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
            " FROM rest_messages WHERE app_id = $1 AND chat = $2 AND revision > $3 \
             ORDER BY revision LIMIT $4"
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
        // The words are letters and digits only, so joining them with `|` (any of them) makes
        // a tsquery with no syntax of the caller's.
        let rows = sqlx::query(
            "SELECT number, body, sender, created_ms, updated_ms, revision, xmpp_id, via_api \
             FROM rest_messages, to_tsquery('simple', $1) AS q \
             WHERE app_id = $2 AND chat = $3 AND body_tsv @@ q \
             ORDER BY ts_rank(body_tsv, q) DESC, number DESC LIMIT $4",
        )
        .bind(words.join(" | "))
        .bind(app_id)
        .bind(chat)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::from_row).collect()
    }

    async fn rest_members(&self, app_id: i64, chat: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT jid FROM rest_members WHERE app_id = $1 AND chat = $2 ORDER BY jid",
        )
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
            "INSERT INTO rest_members (app_id, chat, jid) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id, chat, jid) DO NOTHING",
        )
        .bind(app_id)
        .bind(chat)
        .bind(jid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rest_remove_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM rest_members WHERE app_id = $1 AND chat = $2 AND jid = $3")
                .bind(app_id)
                .bind(chat)
                .bind(jid)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn item_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<RosterItem> {
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

impl PgStore {
    /// Archive ids from the archive's sequence, shared by every node of a cluster.
    async fn new_ids(&self, archive: archive_sql::Archive, n: usize) -> StoreResult<Vec<i64>> {
        // A writer's batch: a few thousand at most.
        let n = n as i64;
        let mut ids: Vec<i64> = sqlx::query_scalar(archive_sql::postgres_new_ids(archive))
            .bind(n)
            .fetch_all(&self.pool)
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Archives a batch in one transaction (group commit), with one multi-row INSERT per
    /// [`archive_sql::INSERT_CHUNK`] rows: each statement is a round trip, and the writer's
    /// batches are what keep archiving cheap.
    async fn append_batch(
        &self,
        archive: archive_sql::Archive,
        messages: &[NewArchived<'_>],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in messages.chunks(archive_sql::INSERT_CHUNK) {
            archive_sql::insert::<sqlx::Postgres>(archive, chunk)
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
        let mut qb = archive_sql::page::<sqlx::Postgres>(
            archive,
            owner,
            query,
            archive_sql::FullText::TsVector,
        );
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
