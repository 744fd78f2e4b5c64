//! Persistent state behind one trait: accounts, rosters, pending subscription requests,
//! offline messages, block lists and vCards.
//!
//! One implementation per database engine; the rest of the server only sees `dyn Store`.
//! Usernames passed in are already nodeprep-normalised localparts; contact JIDs are normalised
//! bare JID strings.

mod archive_sql;
pub mod postgres;
pub mod sqlite;
pub mod timed;

use std::sync::Arc;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoSuchAccount,
    #[error("unsupported storage url `{0}` (expected sqlite://… or postgres://…)")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// SCRAM key pair for one hash function (RFC 5802 §3): enough to verify a client proof and to
/// prove the server's identity, never enough to log in as the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Everything stored about a password: one salt and iteration count shared by the SHA-1 and
/// SHA-256 key pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

/// RFC 6121 subscription state of a roster item, without the pending-in part (kept separately
/// as a [`SubscriptionRequest`] because it also exists for contacts not in the roster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    pub fn with_to(self, on: bool) -> Subscription {
        Self::from_flags(on, self.has_from())
    }

    pub fn with_from(self, on: bool) -> Subscription {
        Self::from_flags(self.has_to(), on)
    }

    fn from_flags(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// Bare JID of the contact.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Pending-out: the user asked to subscribe and the contact has not answered.
    pub ask: bool,
    pub groups: Vec<String>,
}

/// A roster with its version (XEP-0237): the version grows with every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub version: i64,
    pub items: Vec<RosterItem>,
}

/// A pending-in subscription request, kept until the user answers it (RFC 6121 §3.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub contact: String,
    /// The serialized `<presence type="subscribe"/>` as received, redelivered at each login.
    pub stanza: String,
}

/// A fragment of private XML storage (XEP-0049), keyed by its root element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateFragment {
    pub namespace: String,
    pub name: String,
    /// The serialized element; None removes the fragment.
    pub xml: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OfflineMessage {
    pub id: i64,
    /// The serialized `<message/>`.
    pub stanza: String,
    /// When the server accepted it, in Unix milliseconds (for the XEP-0203 delay stamp).
    pub stamp_ms: i64,
}

/// A message to archive (XEP-0313), in the archive of `user`.
#[derive(Debug, Clone)]
pub struct NewArchived<'a> {
    /// From [`Store::archive_new_ids`] (or [`Store::room_archive_new_ids`]).
    pub id: i64,
    pub user: &'a str,
    /// The other party: its bare JID and the full (or bare) JID it used.
    pub with_bare: &'a str,
    pub with_full: &'a str,
    pub stamp_ms: i64,
    /// The text indexed for full-text search.
    pub body: &'a str,
    /// The serialized `<message/>`.
    pub stanza: &'a str,
}

/// The rows of a persistent room (XEP-0045): its configuration and subject as JSON, and its
/// affiliations (bare JID, affiliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub name: String,
    pub config: String,
    pub subject: String,
    pub affiliations: Vec<(String, String)>,
}

/// Where to send push notifications for an account (XEP-0357): an app server's pubsub
/// service and node, and the publish-options form it asked for (as XML), if any.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PushRegistration {
    pub service: String,
    pub node: String,
    pub options: Option<String>,
}

/// A personal eventing node (XEP-0163) of an account, with its configuration as the PEP
/// module serialises it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PepNode {
    pub node: String,
    pub config: String,
}

/// An item published to a PEP node: its id, when it was published, and its payload as XML.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PepItem {
    pub item_id: String,
    pub published_ms: i64,
    pub payload: String,
}

/// An application of the REST bridge: its name, its secret token, and how many chats it has.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RestApp {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub chats_count: i64,
}

/// A chat of an application, numbered from 1 per application, and the room behind it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RestChat {
    pub app_id: i64,
    pub number: i64,
    pub messages_count: i64,
    /// The chat's change counter: raised by every new or edited message.
    pub revision: i64,
    /// The name (localpart) of the group chat room that carries the chat.
    pub room: String,
}

/// A message of a chat, numbered from 1 per chat with no gaps.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RestMessage {
    pub number: i64,
    pub body: String,
    /// The application's name, or the occupant JID (room@service/nick) of an XMPP sender.
    pub sender: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The chat's change counter at the message's last create or edit: the live feed's
    /// event id.
    pub revision: i64,
    /// The `id` attribute the room's occupants saw the message with (for corrections).
    pub xmpp_id: String,
    /// Posted through the API (rather than written in the room).
    pub via_api: bool,
}

/// What a new chat message is made of; the store gives it its number and revision.
#[derive(Debug, Clone)]
pub struct NewRestMessage<'a> {
    pub body: &'a str,
    pub sender: &'a str,
    pub xmpp_id: &'a str,
    pub via_api: bool,
    pub now_ms: i64,
}

/// One archived message. `id` is its archive id (and XEP-0359 stanza id): strictly increasing
/// in the order messages were archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub id: i64,
    pub stamp_ms: i64,
    pub stanza: String,
}

/// What to take from an archive. Filters combine; `from_end` takes the newest page (RSM
/// `<before/>`), otherwise the oldest. Results are always oldest first.
#[derive(Debug, Clone, Default)]
pub struct ArchiveQuery {
    /// A bare JID matches every resource; a full JID only itself.
    pub with: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// Only messages after (before) this archive id.
    pub after_id: Option<i64>,
    pub before_id: Option<i64>,
    /// Only these archive ids (XEP-0313 `ids`), when not empty.
    pub ids: Vec<i64>,
    /// Words that must all occur in the body.
    pub text: Option<String>,
    pub max: usize,
    pub from_end: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// No more messages match beyond this page in the direction of the query.
    pub complete: bool,
}

/// A user's archiving preferences (XEP-0441).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePrefs {
    /// "always", "roster" or "never".
    pub default: String,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

impl ArchivePrefs {
    /// No message can be archived under these preferences.
    pub fn archives_nothing(&self) -> bool {
        self.default == "never" && self.always.is_empty()
    }
}

/// Words for full-text search: letters and digits only, so that no search syntax of either
/// engine leaks through.
pub fn search_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .map(str::to_lowercase)
        .collect()
}

/// Reads a row into one of the store's plain types, by column name (both engines).
pub(crate) fn from_row<'r, R: sqlx::Row, T: sqlx::FromRow<'r, R>>(row: &'r R) -> StoreResult<T> {
    Ok(T::from_row(row)?)
}

/// Rows of `offline_messages` (both engines), oldest first: `DELETE … RETURNING` gives them
/// in no set order.
pub(crate) fn offline_in_order<'r, R>(rows: &'r [R]) -> StoreResult<Vec<OfflineMessage>>
where
    R: sqlx::Row,
    OfflineMessage: sqlx::FromRow<'r, R>,
{
    let mut msgs = rows
        .iter()
        .map(from_row)
        .collect::<StoreResult<Vec<OfflineMessage>>>()?;
    msgs.sort_by_key(|m| m.id);
    Ok(msgs)
}

#[async_trait]
pub trait Store: Send + Sync {
    // Accounts.
    async fn create_account(&self, user: &str, creds: &Credentials) -> StoreResult<()>;
    /// Replaces the credentials; `NoSuchAccount` if the account does not exist.
    async fn set_credentials(&self, user: &str, creds: &Credentials) -> StoreResult<()>;
    async fn credentials(&self, user: &str) -> StoreResult<Option<Credentials>>;
    /// Deletes the account and everything stored for it; false if there was none.
    async fn delete_account(&self, user: &str) -> StoreResult<bool>;
    /// A counter that moves whenever any account's credentials change or an account is
    /// deleted, by whatever wrote the store (see `auth::cache`).
    async fn credentials_version(&self) -> StoreResult<i64>;
    async fn list_accounts(&self) -> StoreResult<Vec<String>>;

    // Roster (RFC 6121 §2) with versioning (XEP-0237).
    async fn roster(&self, user: &str) -> StoreResult<Roster>;
    async fn roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<RosterItem>>;
    /// Inserts or replaces an item; returns the new roster version.
    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> StoreResult<i64>;
    /// Removes an item; returns the new roster version, or None if there was no such item.
    async fn remove_roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<i64>>;

    // Pending-in subscription requests.
    async fn put_subscription_request(
        &self,
        user: &str,
        request: &SubscriptionRequest,
    ) -> StoreResult<()>;
    async fn remove_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool>;
    async fn subscription_requests(&self, user: &str) -> StoreResult<Vec<SubscriptionRequest>>;
    async fn has_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool>;

    // Offline messages (XEP-0160).
    /// Stores a message and returns its id, for [`Store::claim_offline`].
    async fn push_offline(&self, user: &str, stanza: &str, stamp_ms: i64) -> StoreResult<i64>;
    async fn offline_count(&self, user: &str) -> StoreResult<u64>;
    /// Messages waiting in offline storage for all accounts (the `/metrics` queue size).
    async fn offline_total(&self) -> StoreResult<u64>;
    /// Takes all stored messages out of the store, oldest first. Reading and removing are one
    /// statement, so two takers (two resources coming online, or a taker and
    /// [`Store::claim_offline`]) never both get a message.
    async fn take_offline(&self, user: &str) -> StoreResult<Vec<OfflineMessage>>;
    /// Takes one stored message out; false when somebody took it first.
    async fn claim_offline(&self, user: &str, id: i64) -> StoreResult<bool>;

    // Blocking command (XEP-0191).
    async fn blocklist(&self, user: &str) -> StoreResult<Vec<String>>;
    async fn block(&self, user: &str, jids: &[String]) -> StoreResult<()>;
    /// Unblocks the given JIDs, or every JID when `jids` is empty.
    async fn unblock(&self, user: &str, jids: &[String]) -> StoreResult<()>;

    // Push notifications (XEP-0357).
    async fn push_registrations(&self, user: &str) -> StoreResult<Vec<PushRegistration>>;
    /// Adds or replaces the registration for its service and node.
    async fn enable_push(&self, user: &str, registration: &PushRegistration) -> StoreResult<()>;
    /// Removes the registration for `node` of `service`, or every node of it when None.
    async fn disable_push(&self, user: &str, service: &str, node: Option<&str>) -> StoreResult<()>;

    // Message archive (XEP-0313, XEP-0441).
    /// Takes `n` new archive ids, in increasing order, never handed out before. A message
    /// carries its id (its stanza id) before its row is written, so that delivering it does
    /// not wait for a commit.
    async fn archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>>;
    /// Archives several messages, each under its id, in one transaction (group commit).
    async fn archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()>;
    async fn archive_query(&self, user: &str, query: &ArchiveQuery) -> StoreResult<ArchivePage>;
    /// [`Store::archive_new_ids`] for the room archive.
    async fn room_archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>>;
    /// Archives room messages in one transaction; `user` is the room's name, `with_*` the
    /// sender's occupant JID.
    async fn room_archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()>;
    async fn room_archive_query(
        &self,
        room: &str,
        query: &ArchiveQuery,
    ) -> StoreResult<ArchivePage>;
    async fn archive_prefs(&self, user: &str) -> StoreResult<Option<ArchivePrefs>>;
    async fn set_archive_prefs(&self, user: &str, prefs: &ArchivePrefs) -> StoreResult<()>;
    /// Deletes archived messages older than `before_ms`; returns how many.
    async fn archive_expire(&self, before_ms: i64) -> StoreResult<u64>;

    // Persistent rooms (XEP-0045).
    async fn muc_room(&self, name: &str) -> StoreResult<Option<StoredRoom>>;
    /// Every persistent room, without affiliations.
    async fn muc_rooms(&self) -> StoreResult<Vec<StoredRoom>>;
    /// Creates or replaces a room with its affiliations.
    async fn save_muc_room(&self, room: &StoredRoom) -> StoreResult<()>;
    async fn delete_muc_room(&self, name: &str) -> StoreResult<()>;

    // vcard-temp (XEP-0054).
    async fn vcard(&self, user: &str) -> StoreResult<Option<String>>;
    /// Stores a vCard with the SHA-1 of its photo ('' when it has none).
    async fn set_vcard(&self, user: &str, vcard: &str, photo_hash: &str) -> StoreResult<()>;
    /// The photo hash of the stored vCard (XEP-0153); None without a vCard.
    async fn vcard_photo_hash(&self, user: &str) -> StoreResult<Option<String>>;

    // Private XML storage (XEP-0049).
    /// The fragment stored under its element's namespace and name, as XML.
    async fn private_data(
        &self,
        user: &str,
        namespace: &str,
        name: &str,
    ) -> StoreResult<Option<String>>;
    /// Stores fragments together (one transaction); a fragment without XML is removed.
    async fn set_private_data(&self, user: &str, fragments: &[PrivateFragment]) -> StoreResult<()>;
    /// How many fragments the account keeps.
    async fn private_data_count(&self, user: &str) -> StoreResult<u64>;

    // Personal eventing (XEP-0163).
    async fn pep_nodes(&self, user: &str) -> StoreResult<Vec<PepNode>>;
    async fn pep_node(&self, user: &str, node: &str) -> StoreResult<Option<PepNode>>;
    /// Creates a node or replaces its configuration.
    async fn pep_set_node(&self, user: &str, node: &PepNode) -> StoreResult<()>;
    /// Deletes a node with its items; false if there was none.
    async fn pep_delete_node(&self, user: &str, node: &str) -> StoreResult<bool>;
    /// Stores an item as the node's newest (replacing one with the same id), then keeps only
    /// the newest `max_items`.
    async fn pep_publish(
        &self,
        user: &str,
        node: &str,
        item: &PepItem,
        max_items: u32,
    ) -> StoreResult<()>;
    /// The node's items, newest first: those named by `ids`, or else the newest `max`.
    async fn pep_items(
        &self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> StoreResult<Vec<PepItem>>;
    /// Removes one item; false if there was none.
    async fn pep_retract(&self, user: &str, node: &str, item_id: &str) -> StoreResult<bool>;
    /// Removes every item of a node.
    async fn pep_purge(&self, user: &str, node: &str) -> StoreResult<()>;

    // The REST bridge: applications, chats and messages. Numbers are given inside the same
    // transaction that raises the parent's count, so they are unique and gapless under any
    // concurrency and on any number of nodes.
    async fn rest_create_app(&self, name: &str, token: &str) -> StoreResult<RestApp>;
    /// One page of applications, oldest first, and how many there are in all.
    async fn rest_apps(&self, offset: i64, limit: i64) -> StoreResult<(Vec<RestApp>, i64)>;
    async fn rest_app(&self, token: &str) -> StoreResult<Option<RestApp>>;
    async fn rest_rename_app(&self, token: &str, name: &str) -> StoreResult<Option<RestApp>>;
    /// Creates the application's next chat, carried by the room `room`.
    async fn rest_create_chat(&self, app_id: i64, room: &str) -> StoreResult<RestChat>;
    /// One page of an application's chats by number.
    async fn rest_chats(&self, app_id: i64, offset: i64, limit: i64) -> StoreResult<Vec<RestChat>>;
    async fn rest_chat(&self, app_id: i64, number: i64) -> StoreResult<Option<RestChat>>;
    async fn rest_chat_by_room(&self, room: &str) -> StoreResult<Option<RestChat>>;
    /// Adds the chat's next message; None if there is no such chat.
    async fn rest_add_message(
        &self,
        app_id: i64,
        chat: i64,
        msg: &NewRestMessage<'_>,
    ) -> StoreResult<Option<RestMessage>>;
    /// One page of the chat's messages with numbers above `after`, by number.
    async fn rest_messages(
        &self,
        app_id: i64,
        chat: i64,
        after: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>>;
    async fn rest_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
    ) -> StoreResult<Option<RestMessage>>;
    /// The message the room's occupants saw with this `id` attribute (the newest, should an
    /// id repeat).
    async fn rest_message_by_xmpp_id(
        &self,
        app_id: i64,
        chat: i64,
        xmpp_id: &str,
    ) -> StoreResult<Option<RestMessage>>;
    /// Replaces a message's body, with a new revision; None if there is no such message.
    async fn rest_edit_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
        body: &str,
        now_ms: i64,
    ) -> StoreResult<Option<RestMessage>>;
    /// Messages created or edited after `revision`, by revision (the live feed).
    async fn rest_changes(
        &self,
        app_id: i64,
        chat: i64,
        revision: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>>;
    /// Messages with any of the words of `text`, best matches first (then newest first).
    async fn rest_search(
        &self,
        app_id: i64,
        chat: i64,
        text: &str,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>>;
    /// The bare JIDs that may join the chat's room, sorted.
    async fn rest_members(&self, app_id: i64, chat: i64) -> StoreResult<Vec<String>>;
    /// Adds a member; false if it already was one.
    async fn rest_add_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool>;
    /// Removes a member; false if it was none.
    async fn rest_remove_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool>;
}

/// Opens the store the URL names and brings its schema up to date.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(sqlite::SqliteStore::open(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(postgres::PgStore::open(url).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    Ok(Arc::new(timed::Timed(store)))
}

/// The storage URL with any password replaced, fit for logs and messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            super::redacted("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(super::redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redacted("sqlite://./data/x.db"),
            "sqlite://./data/x.db"
        );
    }
}
