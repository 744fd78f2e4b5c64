//! A store wrapper that records how long every call takes (`rookery_store_seconds`), whatever
//! the engine behind it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    ArchivePage, ArchivePrefs, ArchiveQuery, Credentials, NewArchived, NewRestMessage,
    OfflineMessage, PepItem, PepNode, PrivateFragment, PushRegistration, RestApp, RestChat,
    RestMessage, Roster, RosterItem, Store, StoreResult, StoredRoom, SubscriptionRequest,
};

pub struct Timed(pub Arc<dyn Store>);

macro_rules! timed {
    ($op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        crate::metrics::store_call($op, started);
        result
    }};
}

#[async_trait]
impl Store for Timed {
    async fn create_account(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        timed!("create_account", self.0.create_account(user, creds))
    }
    async fn set_credentials(&self, user: &str, creds: &Credentials) -> StoreResult<()> {
        timed!("set_credentials", self.0.set_credentials(user, creds))
    }
    async fn credentials(&self, user: &str) -> StoreResult<Option<Credentials>> {
        timed!("credentials", self.0.credentials(user))
    }
    async fn delete_account(&self, user: &str) -> StoreResult<bool> {
        timed!("delete_account", self.0.delete_account(user))
    }
    async fn credentials_version(&self) -> StoreResult<i64> {
        timed!("credentials_version", self.0.credentials_version())
    }
    async fn list_accounts(&self) -> StoreResult<Vec<String>> {
        timed!("list_accounts", self.0.list_accounts())
    }
    async fn roster(&self, user: &str) -> StoreResult<Roster> {
        timed!("roster", self.0.roster(user))
    }
    async fn roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<RosterItem>> {
        timed!("roster_item", self.0.roster_item(user, contact))
    }
    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> StoreResult<i64> {
        timed!("put_roster_item", self.0.put_roster_item(user, item))
    }
    async fn remove_roster_item(&self, user: &str, contact: &str) -> StoreResult<Option<i64>> {
        timed!(
            "remove_roster_item",
            self.0.remove_roster_item(user, contact)
        )
    }
    async fn put_subscription_request(
        &self,
        user: &str,
        request: &SubscriptionRequest,
    ) -> StoreResult<()> {
        timed!(
            "put_subscription_request",
            self.0.put_subscription_request(user, request)
        )
    }
    async fn remove_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool> {
        timed!(
            "remove_subscription_request",
            self.0.remove_subscription_request(user, contact)
        )
    }
    async fn subscription_requests(&self, user: &str) -> StoreResult<Vec<SubscriptionRequest>> {
        timed!("subscription_requests", self.0.subscription_requests(user))
    }
    async fn has_subscription_request(&self, user: &str, contact: &str) -> StoreResult<bool> {
        timed!(
            "has_subscription_request",
            self.0.has_subscription_request(user, contact)
        )
    }
    async fn push_offline(&self, user: &str, stanza: &str, stamp_ms: i64) -> StoreResult<i64> {
        timed!("push_offline", self.0.push_offline(user, stanza, stamp_ms))
    }
    async fn offline_count(&self, user: &str) -> StoreResult<u64> {
        timed!("offline_count", self.0.offline_count(user))
    }
    async fn offline_total(&self) -> StoreResult<u64> {
        timed!("offline_total", self.0.offline_total())
    }
    async fn take_offline(&self, user: &str) -> StoreResult<Vec<OfflineMessage>> {
        timed!("take_offline", self.0.take_offline(user))
    }
    async fn claim_offline(&self, user: &str, id: i64) -> StoreResult<bool> {
        timed!("claim_offline", self.0.claim_offline(user, id))
    }
    async fn push_registrations(&self, user: &str) -> StoreResult<Vec<PushRegistration>> {
        timed!("push_registrations", self.0.push_registrations(user))
    }
    async fn enable_push(&self, user: &str, registration: &PushRegistration) -> StoreResult<()> {
        timed!("enable_push", self.0.enable_push(user, registration))
    }
    async fn disable_push(&self, user: &str, service: &str, node: Option<&str>) -> StoreResult<()> {
        timed!("disable_push", self.0.disable_push(user, service, node))
    }
    async fn blocklist(&self, user: &str) -> StoreResult<Vec<String>> {
        timed!("blocklist", self.0.blocklist(user))
    }
    async fn block(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        timed!("block", self.0.block(user, jids))
    }
    async fn unblock(&self, user: &str, jids: &[String]) -> StoreResult<()> {
        timed!("unblock", self.0.unblock(user, jids))
    }
    async fn archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>> {
        timed!("archive_new_ids", self.0.archive_new_ids(n))
    }
    async fn archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()> {
        timed!(
            "archive_append_batch",
            self.0.archive_append_batch(messages)
        )
    }
    async fn room_archive_new_ids(&self, n: usize) -> StoreResult<Vec<i64>> {
        timed!("room_archive_new_ids", self.0.room_archive_new_ids(n))
    }
    async fn room_archive_append_batch(&self, messages: &[NewArchived<'_>]) -> StoreResult<()> {
        timed!(
            "room_archive_append_batch",
            self.0.room_archive_append_batch(messages)
        )
    }
    async fn room_archive_query(
        &self,
        room: &str,
        query: &ArchiveQuery,
    ) -> StoreResult<ArchivePage> {
        timed!("room_archive_query", self.0.room_archive_query(room, query))
    }
    async fn muc_room(&self, name: &str) -> StoreResult<Option<StoredRoom>> {
        timed!("muc_room", self.0.muc_room(name))
    }
    async fn muc_rooms(&self) -> StoreResult<Vec<StoredRoom>> {
        timed!("muc_rooms", self.0.muc_rooms())
    }
    async fn save_muc_room(&self, room: &StoredRoom) -> StoreResult<()> {
        timed!("save_muc_room", self.0.save_muc_room(room))
    }
    async fn delete_muc_room(&self, name: &str) -> StoreResult<()> {
        timed!("delete_muc_room", self.0.delete_muc_room(name))
    }
    async fn archive_query(&self, user: &str, query: &ArchiveQuery) -> StoreResult<ArchivePage> {
        timed!("archive_query", self.0.archive_query(user, query))
    }
    async fn archive_prefs(&self, user: &str) -> StoreResult<Option<ArchivePrefs>> {
        timed!("archive_prefs", self.0.archive_prefs(user))
    }
    async fn set_archive_prefs(&self, user: &str, prefs: &ArchivePrefs) -> StoreResult<()> {
        timed!("set_archive_prefs", self.0.set_archive_prefs(user, prefs))
    }
    async fn archive_expire(&self, before_ms: i64) -> StoreResult<u64> {
        timed!("archive_expire", self.0.archive_expire(before_ms))
    }
    async fn vcard(&self, user: &str) -> StoreResult<Option<String>> {
        timed!("vcard", self.0.vcard(user))
    }
    async fn set_vcard(&self, user: &str, vcard: &str, photo_hash: &str) -> StoreResult<()> {
        timed!("set_vcard", self.0.set_vcard(user, vcard, photo_hash))
    }
    async fn vcard_photo_hash(&self, user: &str) -> StoreResult<Option<String>> {
        timed!("vcard_photo_hash", self.0.vcard_photo_hash(user))
    }
    async fn private_data(
        &self,
        user: &str,
        namespace: &str,
        name: &str,
    ) -> StoreResult<Option<String>> {
        timed!("private_data", self.0.private_data(user, namespace, name))
    }
    async fn set_private_data(&self, user: &str, fragments: &[PrivateFragment]) -> StoreResult<()> {
        timed!("set_private_data", self.0.set_private_data(user, fragments))
    }
    async fn private_data_count(&self, user: &str) -> StoreResult<u64> {
        timed!("private_data_count", self.0.private_data_count(user))
    }
    async fn pep_nodes(&self, user: &str) -> StoreResult<Vec<PepNode>> {
        timed!("pep_nodes", self.0.pep_nodes(user))
    }
    async fn pep_node(&self, user: &str, node: &str) -> StoreResult<Option<PepNode>> {
        timed!("pep_node", self.0.pep_node(user, node))
    }
    async fn pep_set_node(&self, user: &str, node: &PepNode) -> StoreResult<()> {
        timed!("pep_set_node", self.0.pep_set_node(user, node))
    }
    async fn pep_delete_node(&self, user: &str, node: &str) -> StoreResult<bool> {
        timed!("pep_delete_node", self.0.pep_delete_node(user, node))
    }
    async fn pep_publish(
        &self,
        user: &str,
        node: &str,
        item: &PepItem,
        max_items: u32,
    ) -> StoreResult<()> {
        timed!(
            "pep_publish",
            self.0.pep_publish(user, node, item, max_items)
        )
    }
    async fn pep_items(
        &self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> StoreResult<Vec<PepItem>> {
        timed!("pep_items", self.0.pep_items(user, node, ids, max))
    }
    async fn pep_retract(&self, user: &str, node: &str, item_id: &str) -> StoreResult<bool> {
        timed!("pep_retract", self.0.pep_retract(user, node, item_id))
    }
    async fn pep_purge(&self, user: &str, node: &str) -> StoreResult<()> {
        timed!("pep_purge", self.0.pep_purge(user, node))
    }
    async fn rest_create_app(&self, name: &str, token: &str) -> StoreResult<RestApp> {
        timed!("rest_create_app", self.0.rest_create_app(name, token))
    }
    async fn rest_apps(&self, offset: i64, limit: i64) -> StoreResult<(Vec<RestApp>, i64)> {
        timed!("rest_apps", self.0.rest_apps(offset, limit))
    }
    async fn rest_app(&self, token: &str) -> StoreResult<Option<RestApp>> {
        timed!("rest_app", self.0.rest_app(token))
    }
    async fn rest_rename_app(&self, token: &str, name: &str) -> StoreResult<Option<RestApp>> {
        timed!("rest_rename_app", self.0.rest_rename_app(token, name))
    }
    async fn rest_create_chat(&self, app_id: i64, room: &str) -> StoreResult<RestChat> {
        timed!("rest_create_chat", self.0.rest_create_chat(app_id, room))
    }
    async fn rest_chats(&self, app_id: i64, offset: i64, limit: i64) -> StoreResult<Vec<RestChat>> {
        timed!("rest_chats", self.0.rest_chats(app_id, offset, limit))
    }
    async fn rest_chat(&self, app_id: i64, number: i64) -> StoreResult<Option<RestChat>> {
        timed!("rest_chat", self.0.rest_chat(app_id, number))
    }
    async fn rest_chat_by_room(&self, room: &str) -> StoreResult<Option<RestChat>> {
        timed!("rest_chat_by_room", self.0.rest_chat_by_room(room))
    }
    async fn rest_add_message(
        &self,
        app_id: i64,
        chat: i64,
        msg: &NewRestMessage<'_>,
    ) -> StoreResult<Option<RestMessage>> {
        timed!(
            "rest_add_message",
            self.0.rest_add_message(app_id, chat, msg)
        )
    }
    async fn rest_messages(
        &self,
        app_id: i64,
        chat: i64,
        after: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        timed!(
            "rest_messages",
            self.0.rest_messages(app_id, chat, after, offset, limit)
        )
    }
    async fn rest_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
    ) -> StoreResult<Option<RestMessage>> {
        timed!("rest_message", self.0.rest_message(app_id, chat, number))
    }
    async fn rest_message_by_xmpp_id(
        &self,
        app_id: i64,
        chat: i64,
        xmpp_id: &str,
    ) -> StoreResult<Option<RestMessage>> {
        timed!(
            "rest_message_by_xmpp_id",
            self.0.rest_message_by_xmpp_id(app_id, chat, xmpp_id)
        )
    }
    async fn rest_edit_message(
        &self,
        app_id: i64,
        chat: i64,
        number: i64,
        body: &str,
        now_ms: i64,
    ) -> StoreResult<Option<RestMessage>> {
        timed!(
            "rest_edit_message",
            self.0.rest_edit_message(app_id, chat, number, body, now_ms)
        )
    }
    async fn rest_changes(
        &self,
        app_id: i64,
        chat: i64,
        revision: i64,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        timed!(
            "rest_changes",
            self.0.rest_changes(app_id, chat, revision, limit)
        )
    }
    async fn rest_search(
        &self,
        app_id: i64,
        chat: i64,
        text: &str,
        limit: i64,
    ) -> StoreResult<Vec<RestMessage>> {
        timed!("rest_search", self.0.rest_search(app_id, chat, text, limit))
    }
    async fn rest_members(&self, app_id: i64, chat: i64) -> StoreResult<Vec<String>> {
        timed!("rest_members", self.0.rest_members(app_id, chat))
    }
    async fn rest_add_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool> {
        timed!("rest_add_member", self.0.rest_add_member(app_id, chat, jid))
    }
    async fn rest_remove_member(&self, app_id: i64, chat: i64, jid: &str) -> StoreResult<bool> {
        timed!(
            "rest_remove_member",
            self.0.rest_remove_member(app_id, chat, jid)
        )
    }
}
