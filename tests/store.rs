//! The store contract, run against every engine: SQLite in memory, an SQLite file reopened,
//! and a real PostgreSQL server.

mod common;

use common::services::Postgres;
use std::sync::Arc;

use rookery::store::{
    self, ArchivePrefs, ArchiveQuery, Credentials, NewArchived, NewRestMessage, RestChat,
    RestMessage, Roster, RosterItem, ScramKeys, Store, StoreError, Subscription,
    SubscriptionRequest,
};

fn creds(tag: u8) -> Credentials {
    let k = |b: u8| ScramKeys {
        stored_key: vec![b; 32],
        server_key: vec![b + 1; 32],
    };
    Credentials {
        salt: vec![tag; 16],
        iterations: 4096,
        sha1: k(tag),
        sha256: k(tag + 2),
    }
}

fn item(jid: &str, groups: &[&str]) -> RosterItem {
    RosterItem {
        jid: jid.into(),
        name: Some("Name".into()),
        subscription: Subscription::To,
        ask: true,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

async fn every_method(store: &dyn Store) {
    let version = store.credentials_version().await.unwrap();
    store.create_account("alice", &creds(1)).await.unwrap();
    store.create_account("bob", &creds(5)).await.unwrap();
    // A new account changes no one's credentials.
    assert_eq!(store.credentials_version().await.unwrap(), version);
    assert!(matches!(
        store.create_account("alice", &creds(9)).await,
        Err(StoreError::AccountExists)
    ));
    assert_eq!(store.credentials("alice").await.unwrap(), Some(creds(1)));
    store.set_credentials("alice", &creds(20)).await.unwrap();
    assert_eq!(store.credentials("alice").await.unwrap(), Some(creds(20)));
    let version_after_passwd = store.credentials_version().await.unwrap();
    assert_ne!(version_after_passwd, version);
    assert!(matches!(
        store.set_credentials("nobody", &creds(1)).await,
        Err(StoreError::NoSuchAccount)
    ));
    assert_eq!(store.credentials("nobody").await.unwrap(), None);
    assert_eq!(store.list_accounts().await.unwrap(), ["alice", "bob"]);

    assert_eq!(store.roster("alice").await.unwrap(), Roster::default());
    let v1 = store
        .put_roster_item("alice", &item("carol@x", &["Friends, old", "Ünïcode"]))
        .await
        .unwrap();
    let v2 = store
        .put_roster_item("alice", &item("bob@x", &[]))
        .await
        .unwrap();
    assert_eq!((v1, v2), (1, 2));
    let roster = store.roster("alice").await.unwrap();
    assert_eq!(roster.version, 2);
    assert_eq!(roster.items[0].jid, "bob@x");
    assert_eq!(roster.items[1].groups, ["Friends, old", "Ünïcode"]);
    assert_eq!(
        store.roster_item("alice", "carol@x").await.unwrap(),
        Some(item("carol@x", &["Friends, old", "Ünïcode"]))
    );
    assert_eq!(
        store.remove_roster_item("alice", "bob@x").await.unwrap(),
        Some(3)
    );
    assert_eq!(
        store.remove_roster_item("alice", "bob@x").await.unwrap(),
        None
    );
    assert_eq!(store.roster("alice").await.unwrap().version, 3);

    let req = |c: &str| SubscriptionRequest {
        contact: c.into(),
        stanza: format!("<presence type='subscribe' from='{c}'/>"),
    };
    store
        .put_subscription_request("alice", &req("dave@x"))
        .await
        .unwrap();
    store
        .put_subscription_request("alice", &req("dave@x"))
        .await
        .unwrap();
    assert!(
        store
            .has_subscription_request("alice", "dave@x")
            .await
            .unwrap()
    );
    assert_eq!(
        store.subscription_requests("alice").await.unwrap(),
        [req("dave@x")]
    );
    assert!(
        store
            .remove_subscription_request("alice", "dave@x")
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_subscription_request("alice", "dave@x")
            .await
            .unwrap()
    );

    let mut ids = Vec::new();
    for i in 0..4 {
        let id = store
            .push_offline("alice", &format!("<m{i}/>"), i)
            .await
            .unwrap();
        ids.push(id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(store.offline_count("alice").await.unwrap(), 4);
    let bobs = store.push_offline("bob", "<b/>", 0).await.unwrap();
    assert_eq!(store.offline_total().await.unwrap(), 5, "every account's");
    // A claim takes exactly its own message, once, and only for its account.
    assert!(!store.claim_offline("alice", bobs).await.unwrap());
    assert!(store.claim_offline("alice", ids[3]).await.unwrap());
    assert!(!store.claim_offline("alice", ids[3]).await.unwrap());
    assert_eq!(store.offline_total().await.unwrap(), 4);
    let msgs = store.take_offline("alice").await.unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.stanza.as_str()).collect::<Vec<_>>(),
        ["<m0/>", "<m1/>", "<m2/>"]
    );
    assert_eq!(
        msgs.iter().map(|m| m.stamp_ms).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(msgs[0].id, ids[0]);
    assert!(
        store.take_offline("alice").await.unwrap().is_empty(),
        "taken once"
    );
    assert!(!store.claim_offline("alice", ids[0]).await.unwrap());
    assert_eq!(store.offline_total().await.unwrap(), 1, "bob's is left");
    // Two takers at once (two resources coming online together) share the messages: none is
    // lost and none is given to both.
    for i in 0..50 {
        store
            .push_offline("bob", &format!("<c{i}/>"), i)
            .await
            .unwrap();
    }
    let (first, second) = tokio::join!(store.take_offline("bob"), store.take_offline("bob"));
    let mut taken: Vec<i64> = first
        .unwrap()
        .into_iter()
        .chain(second.unwrap())
        .map(|m| m.id)
        .collect();
    let handed_out = taken.len();
    taken.sort_unstable();
    taken.dedup();
    assert_eq!((handed_out, taken.len()), (51, 51));
    assert_eq!(store.offline_total().await.unwrap(), 0);
    // One stays, for reopening and deletion.
    store.push_offline("alice", "<kept/>", 9).await.unwrap();

    store
        .block("alice", &["x@y".into(), "z".into(), "x@y".into()])
        .await
        .unwrap();
    assert_eq!(store.blocklist("alice").await.unwrap(), ["x@y", "z"]);
    store.unblock("alice", &["z".into()]).await.unwrap();
    assert_eq!(store.blocklist("alice").await.unwrap(), ["x@y"]);
    store.unblock("alice", &[]).await.unwrap();
    assert!(store.blocklist("alice").await.unwrap().is_empty());
    store.block("alice", &["x@y".into()]).await.unwrap();

    assert_eq!(store.vcard("alice").await.unwrap(), None);
    store.set_vcard("alice", "<vCard/>", "").await.unwrap();
    assert_eq!(
        store.vcard_photo_hash("alice").await.unwrap().as_deref(),
        Some("")
    );
    store
        .set_vcard("alice", "<vCard><FN>A</FN></vCard>", "")
        .await
        .unwrap();
    assert_eq!(
        store.vcard("alice").await.unwrap().as_deref(),
        Some("<vCard><FN>A</FN></vCard>")
    );

    private_fragments(store).await;
}

/// Private XML storage: fragments keyed by namespace and name, set together, removed by None.
async fn private_fragments(store: &dyn Store) {
    let fragment =
        |namespace: &str, name: &str, xml: Option<&str>| rookery::store::PrivateFragment {
            namespace: namespace.into(),
            name: name.into(),
            xml: xml.map(Into::into),
        };
    assert_eq!(store.private_data("alice", "x:a", "p").await.unwrap(), None);
    store
        .set_private_data(
            "alice",
            &[
                fragment("x:a", "p", Some("<p xmlns='x:a'>1</p>")),
                fragment("x:b", "p", Some("<p xmlns='x:b'>2</p>")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.private_data_count("alice").await.unwrap(), 2);
    assert_eq!(store.private_data_count("bob").await.unwrap(), 0);
    store
        .set_private_data(
            "alice",
            &[
                fragment("x:a", "p", Some("<p xmlns='x:a'>3</p>")),
                fragment("x:b", "p", None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .private_data("alice", "x:a", "p")
            .await
            .unwrap()
            .as_deref(),
        Some("<p xmlns='x:a'>3</p>")
    );
    assert_eq!(store.private_data("alice", "x:b", "p").await.unwrap(), None);
    assert_eq!(store.private_data("bob", "x:a", "p").await.unwrap(), None);
    assert_eq!(store.private_data_count("alice").await.unwrap(), 1);
}

/// PEP nodes and items: newest first, pruned to the node's limit, an id published again
/// becomes the newest, retract and purge.
async fn pep_nodes_and_items(store: &dyn Store) {
    let node = rookery::store::PepNode {
        node: "urn:test".into(),
        config: "{}".into(),
    };
    store.pep_set_node("alice", &node).await.unwrap();
    assert_eq!(
        store.pep_node("alice", "urn:test").await.unwrap(),
        Some(node.clone())
    );
    let item = |id: &str, ms: i64| rookery::store::PepItem {
        item_id: id.into(),
        published_ms: ms,
        payload: format!("<x xmlns='urn:test'>{id}</x>"),
    };
    for (i, id) in ["a", "b", "c", "a"].iter().enumerate() {
        store
            .pep_publish("alice", "urn:test", &item(id, i as i64), 2)
            .await
            .unwrap();
    }
    let ids = |items: Vec<rookery::store::PepItem>| -> Vec<String> {
        items.into_iter().map(|i| i.item_id).collect()
    };
    let all = store.pep_items("alice", "urn:test", &[], 10).await.unwrap();
    assert_eq!(ids(all), ["a", "c"], "newest first, two kept");
    let named = store
        .pep_items("alice", "urn:test", &["c".into(), "b".into()], 10)
        .await
        .unwrap();
    assert_eq!(ids(named), ["c"]);
    assert!(store.pep_retract("alice", "urn:test", "c").await.unwrap());
    assert!(!store.pep_retract("alice", "urn:test", "c").await.unwrap());
    store.pep_purge("alice", "urn:test").await.unwrap();
    assert!(
        store
            .pep_items("alice", "urn:test", &[], 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .pep_publish("alice", "urn:test", &item("d", 9), 1)
        .await
        .unwrap();
    assert_eq!(store.pep_nodes("alice").await.unwrap().len(), 1);
    let other = rookery::store::PepNode {
        node: "urn:other".into(),
        config: "{}".into(),
    };
    store.pep_set_node("alice", &other).await.unwrap();
    assert!(store.pep_delete_node("alice", "urn:other").await.unwrap());
    assert!(!store.pep_delete_node("alice", "urn:other").await.unwrap());
}

async fn deleted_without_a_trace(store: &dyn Store) {
    pep_nodes_and_items(store).await;
    store
        .put_subscription_request(
            "alice",
            &SubscriptionRequest {
                contact: "e@x".into(),
                stanza: "<p/>".into(),
            },
        )
        .await
        .unwrap();
    let version = store.credentials_version().await.unwrap();
    assert!(store.delete_account("alice").await.unwrap());
    assert_ne!(store.credentials_version().await.unwrap(), version);
    assert!(!store.delete_account("alice").await.unwrap());
    assert_eq!(store.roster("alice").await.unwrap(), Roster::default());
    assert_eq!(store.offline_count("alice").await.unwrap(), 0);
    assert!(store.blocklist("alice").await.unwrap().is_empty());
    assert!(
        store
            .subscription_requests("alice")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.vcard("alice").await.unwrap(), None);
    assert_eq!(store.private_data_count("alice").await.unwrap(), 0);
    assert!(store.pep_nodes("alice").await.unwrap().is_empty());
    assert!(
        store
            .pep_items("alice", "urn:test", &[], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_accounts().await.unwrap(), ["bob"]);
}

#[tokio::test]
async fn sqlite_in_memory() {
    let store = store::open("sqlite::memory:").await.unwrap();
    every_method(store.as_ref()).await;
    deleted_without_a_trace(store.as_ref()).await;
}

async fn survives_reopening(url: &str) {
    {
        let store = store::open(url).await.unwrap();
        every_method(store.as_ref()).await;
    }
    let store = store::open(url).await.unwrap();
    assert_eq!(store.roster("alice").await.unwrap().version, 3);
    assert_eq!(store.offline_count("alice").await.unwrap(), 1);
    assert_eq!(store.credentials("alice").await.unwrap(), Some(creds(20)));
    deleted_without_a_trace(store.as_ref()).await;
}

#[tokio::test]
async fn sqlite_file_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    survives_reopening(&format!(
        "sqlite://{}/sub/dir/rookery.db",
        dir.path().display()
    ))
    .await;
}

#[tokio::test]
async fn postgres_survives_reopening() {
    let url = Postgres::shared().fresh_database().await;
    survives_reopening(&url).await;
}

#[tokio::test]
async fn postgres_numbers_roster_versions_under_concurrency() {
    let url = Postgres::shared().fresh_database().await;
    let store = store::open(&url).await.unwrap();
    store.create_account("alice", &creds(1)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_roster_item("alice", &item(&format!("c{i}@x"), &["g"]))
                .await
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=20).collect::<Vec<i64>>());
}

#[tokio::test]
async fn unsupported_url_is_refused_by_name() {
    let err = store::open("mysql://x").await.err().unwrap();
    assert!(err.to_string().contains("mysql://x"), "{err}");
}

async fn archive_contract(store: &dyn Store) {
    store.create_account("ann", &creds(3)).await.unwrap();
    let rows = [
        ("bob@x/phone", "Café au lait"),
        ("carol@y/pc", "nothing here"),
        ("bob@x/pc", "more coffee please"),
    ];
    let stanzas: Vec<String> = rows
        .iter()
        .map(|(_, body)| format!("<message xmlns='jabber:client'><body>{body}</body></message>"))
        .collect();
    // Ids come before the rows: increasing, in the order taken.
    let ids = store.archive_new_ids(3).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let batch: Vec<NewArchived> = rows
        .iter()
        .zip(&stanzas)
        .enumerate()
        .map(|(i, ((with, body), stanza))| NewArchived {
            id: ids[i],
            user: "ann",
            with_bare: with.split('/').next().unwrap(),
            with_full: with,
            stamp_ms: 1000 * (i as i64 + 1),
            body,
            stanza,
        })
        .collect();
    // One group commit.
    store.archive_append_batch(&batch).await.unwrap();
    let q = |f: fn(&mut ArchiveQuery)| {
        let mut q = ArchiveQuery {
            max: 10,
            ..ArchiveQuery::default()
        };
        f(&mut q);
        q
    };
    let bodies = |p: store::ArchivePage| {
        p.messages
            .iter()
            .map(|m| m.stanza.contains("coffee") as u8 + 2 * m.stanza.contains("Café") as u8)
            .collect::<Vec<_>>()
    };
    let all = store.archive_query("ann", &q(|_| {})).await.unwrap();
    assert_eq!(all.messages.len(), 3);
    assert!(all.complete);
    let bob = store
        .archive_query("ann", &q(|q| q.with = Some("bob@x".into())))
        .await
        .unwrap();
    assert_eq!(bodies(bob), [2, 1]);
    let phone = store
        .archive_query("ann", &q(|q| q.with = Some("bob@x/phone".into())))
        .await
        .unwrap();
    assert_eq!(phone.messages.len(), 1);
    let time = store
        .archive_query(
            "ann",
            &q(|q| {
                q.start_ms = Some(2000);
                q.end_ms = Some(2000)
            }),
        )
        .await
        .unwrap();
    assert_eq!(time.messages.len(), 1);
    let last = store
        .archive_query(
            "ann",
            &q(|q| {
                q.max = 1;
                q.from_end = true
            }),
        )
        .await
        .unwrap();
    assert_eq!(last.messages[0].id, ids[2]);
    assert!(!last.complete);
    let words = store
        .archive_query("ann", &q(|q| q.text = Some("COFFEE".into())))
        .await
        .unwrap();
    assert_eq!(bodies(words), [1]);
    let none = store
        .archive_query("ann", &q(|q| q.text = Some("tea".into())))
        .await
        .unwrap();
    assert!(none.messages.is_empty());

    assert_eq!(store.archive_prefs("ann").await.unwrap(), None);
    let prefs = ArchivePrefs {
        default: "roster".into(),
        always: vec!["a@x".into(), "b@y".into()],
        never: vec![],
    };
    store.set_archive_prefs("ann", &prefs).await.unwrap();
    assert_eq!(store.archive_prefs("ann").await.unwrap(), Some(prefs));

    assert_eq!(store.archive_expire(2500).await.unwrap(), 2);
    assert_eq!(
        store
            .archive_query("ann", &q(|_| {}))
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    assert!(store.delete_account("ann").await.unwrap());
    assert!(
        store
            .archive_query("ann", &q(|_| {}))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn archive_on_sqlite() {
    let store = store::open("sqlite::memory:").await.unwrap();
    archive_contract(store.as_ref()).await;
}

/// The WAL's last frame and how far it has been copied back into the database, from the
/// WAL index (the `-shm` file: <https://sqlite.org/walformat.html>, native byte order).
fn wal_frames_and_backfill(db: &std::path::Path) -> (u32, u32) {
    let shm = std::fs::read(db.with_extension("db-shm")).unwrap_or_default();
    let word = |at: usize| {
        shm.get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    (word(16), word(96))
}

#[tokio::test]
async fn sqlite_checkpoints_the_wal_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rookery.db");
    let store = store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    store.create_account("ann", &creds(1)).await.unwrap();
    let stanza = "<message/>".to_string();
    let ids = store.archive_new_ids(200).await.unwrap();
    let rows: Vec<NewArchived> = (0..200)
        .map(|i| NewArchived {
            id: ids[i],
            user: "ann",
            with_bare: "bob@x",
            with_full: "bob@x/r",
            stamp_ms: i as i64,
            body: "words to index",
            stanza: &stanza,
        })
        .collect();
    store.archive_append_batch(&rows).await.unwrap();
    let (frames, _) = wal_frames_and_backfill(&db);
    // Far below the automatic checkpoint's 40,000 frames: only the store's own task copies
    // these back.
    assert!(frames > 0 && frames < 40_000, "{frames} frames in the WAL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (frames, backfilled) = wal_frames_and_backfill(&db);
        if backfilled == frames {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{backfilled} of {frames} frames copied back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Writes one row under each id `store` hands out for the account and the room archive.
async fn archive_one_each(store: &dyn Store) -> (i64, i64) {
    let id = store.archive_new_ids(1).await.unwrap()[0];
    let room_id = store.room_archive_new_ids(1).await.unwrap()[0];
    let row = |id| NewArchived {
        id,
        user: "ann",
        with_bare: "bob@x",
        with_full: "bob@x/r",
        stamp_ms: 1,
        body: "hello",
        stanza: "<message/>",
    };
    store.archive_append_batch(&[row(id)]).await.unwrap();
    let mut in_room = row(room_id);
    in_room.user = "lobby";
    store.room_archive_append_batch(&[in_room]).await.unwrap();
    (id, room_id)
}

/// A stanza id names one message for good: ids are not handed out again once their rows are
/// expired or deleted, nor after the server restarts, nor by another node of a cluster.
async fn archive_ids_are_never_reused(url: &str) {
    let first = {
        let store = store::open(url).await.unwrap();
        store.create_account("ann", &creds(1)).await.unwrap();
        let first = archive_one_each(store.as_ref()).await;
        assert_eq!(store.archive_expire(i64::MAX).await.unwrap(), 2);
        first
    };
    // Taken, perhaps handed out, and never written: a crash between the two.
    let unwritten = {
        let store = store::open(url).await.unwrap();
        store.archive_new_ids(10).await.unwrap()
    };
    assert!(unwritten[0] > first.0);
    let store = store::open(url).await.unwrap();
    let second = archive_one_each(store.as_ref()).await;
    assert!(
        second.0 > first.0 && second.1 > first.1,
        "{first:?} then {second:?}"
    );
    assert!(second.0 > unwritten[9], "{unwritten:?} then {second:?}");
    // Taken side by side, as two nodes (or two processes) would: no id twice.
    let other = store::open(url).await.unwrap();
    let (a, b) = tokio::join!(store.archive_new_ids(500), other.archive_new_ids(500));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1000);
    assert!(a.iter().all(|id| *id > second.0));
}

#[tokio::test]
async fn archive_ids_on_sqlite_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    archive_ids_are_never_reused(&format!("sqlite://{}/rookery.db", dir.path().display())).await;
}

#[tokio::test]
async fn archive_ids_on_postgres_are_never_reused() {
    archive_ids_are_never_reused(&Postgres::shared().fresh_database().await).await;
}

#[tokio::test]
async fn archive_on_postgres() {
    let store = store::open(&Postgres::shared().fresh_database().await)
        .await
        .unwrap();
    archive_contract(store.as_ref()).await;
}

fn rest_msg<'a>(body: &'a str, now_ms: i64) -> NewRestMessage<'a> {
    NewRestMessage {
        body,
        sender: "App",
        xmpp_id: "x1",
        via_api: true,
        now_ms,
    }
}

fn numbers(messages: &[RestMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.number).collect()
}

async fn rest_contract(store: &dyn Store) {
    // Applications.
    let one = store.rest_create_app("One", "tok1").await.unwrap();
    let two = store.rest_create_app("Two", "tok2").await.unwrap();
    assert_eq!(
        (one.name.as_str(), one.token.as_str(), one.chats_count),
        ("One", "tok1", 0)
    );
    assert!(one.id < two.id);
    assert!(matches!(
        store.rest_create_app("Dup", "tok1").await,
        Err(StoreError::Database(_))
    ));
    assert_eq!(
        store.rest_apps(0, 10).await.unwrap(),
        (vec![one.clone(), two.clone()], 2)
    );
    assert_eq!(store.rest_apps(1, 1).await.unwrap(), (vec![two.clone()], 2));
    assert_eq!(store.rest_apps(5, 10).await.unwrap(), (vec![], 2));
    assert_eq!(store.rest_app("tok2").await.unwrap(), Some(two.clone()));
    assert_eq!(store.rest_app("nope").await.unwrap(), None);
    let renamed = store.rest_rename_app("tok1", "Uno").await.unwrap().unwrap();
    assert_eq!((renamed.id, renamed.name.as_str()), (one.id, "Uno"));
    assert_eq!(store.rest_rename_app("nope", "X").await.unwrap(), None);

    // Chats: numbered per application.
    let c1 = store.rest_create_chat(one.id, "room1").await.unwrap();
    let c2 = store.rest_create_chat(one.id, "room2").await.unwrap();
    let other = store.rest_create_chat(two.id, "room3").await.unwrap();
    assert_eq!(
        c1,
        RestChat {
            app_id: one.id,
            number: 1,
            messages_count: 0,
            revision: 0,
            room: "room1".into()
        }
    );
    assert_eq!((c2.number, other.number), (2, 1));
    // A failed creation takes no number: the count is raised in the insert's transaction.
    assert!(store.rest_create_chat(one.id, "room1").await.is_err());
    assert!(store.rest_create_chat(two.id + 100, "room9").await.is_err());
    assert_eq!(
        store.rest_app("tok1").await.unwrap().unwrap().chats_count,
        2
    );
    assert_eq!(
        store.rest_chats(one.id, 0, 10).await.unwrap(),
        [c1.clone(), c2.clone()]
    );
    assert_eq!(
        store.rest_chats(one.id, 1, 10).await.unwrap(),
        std::slice::from_ref(&c2)
    );
    assert!(
        store
            .rest_chats(two.id + 100, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.rest_chat(one.id, 2).await.unwrap(), Some(c2.clone()));
    assert_eq!(store.rest_chat(one.id, 3).await.unwrap(), None);
    assert_eq!(store.rest_chat_by_room("room3").await.unwrap(), Some(other));
    assert_eq!(store.rest_chat_by_room("room9").await.unwrap(), None);

    // Messages: numbered per chat, each create and edit a new revision of the chat.
    let first = store
        .rest_add_message(one.id, 1, &rest_msg("hello world", 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        RestMessage {
            number: 1,
            body: "hello world".into(),
            sender: "App".into(),
            created_ms: 1000,
            updated_ms: 1000,
            revision: 1,
            xmpp_id: "x1".into(),
            via_api: true,
        }
    );
    let from_room = NewRestMessage {
        body: "Café au lait",
        sender: "room1@muc.localhost/bob",
        xmpp_id: "abc",
        via_api: false,
        now_ms: 2000,
    };
    let second = store
        .rest_add_message(one.id, 1, &from_room)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.number, second.revision, second.via_api),
        (2, 2, false)
    );
    let by_id = store
        .rest_message_by_xmpp_id(one.id, 1, "abc")
        .await
        .unwrap();
    assert_eq!(by_id, Some(second.clone()));
    assert_eq!(
        store
            .rest_message_by_xmpp_id(one.id, 2, "abc")
            .await
            .unwrap(),
        None,
        "ids are looked up within their chat"
    );
    for (i, body) in ["goodbye world", "peace now", "peace now"]
        .iter()
        .enumerate()
    {
        let m = store
            .rest_add_message(one.id, 1, &rest_msg(body, 3000 + i as i64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((m.number, m.revision), (3 + i as i64, 3 + i as i64));
    }
    let elsewhere = store
        .rest_add_message(one.id, 2, &rest_msg("hello there", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((elsewhere.number, elsewhere.revision), (1, 1));
    store
        .rest_add_message(two.id, 1, &rest_msg("world hello", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .rest_add_message(one.id, 9, &rest_msg("lost", 1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.rest_message(one.id, 1, 2).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.rest_message(one.id, 1, 6).await.unwrap(), None);
    assert_eq!(
        store
            .rest_chat(one.id, 1)
            .await
            .unwrap()
            .unwrap()
            .messages_count,
        5
    );
    let page = |after, offset, limit| store.rest_messages(one.id, 1, after, offset, limit);
    assert_eq!(numbers(&page(0, 0, 10).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(numbers(&page(2, 0, 10).await.unwrap()), [3, 4, 5]);
    assert_eq!(numbers(&page(2, 1, 1).await.unwrap()), [4]);
    assert!(page(5, 0, 10).await.unwrap().is_empty());

    let edited = store
        .rest_edit_message(one.id, 1, 1, "world world world", 9000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            edited.body.as_str(),
            edited.created_ms,
            edited.updated_ms,
            edited.revision
        ),
        ("world world world", 1000, 9000, 6)
    );
    assert_eq!(
        store.rest_message(one.id, 1, 1).await.unwrap(),
        Some(edited)
    );
    // Editing nothing changes nothing, not even the chat's revision.
    assert_eq!(
        store
            .rest_edit_message(one.id, 1, 99, "x", 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.rest_edit_message(one.id, 9, 1, "x", 1).await.unwrap(),
        None
    );
    let recoloured = store
        .rest_edit_message(one.id, 1, 2, "café crème", 9500)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recoloured.revision, 7);
    assert_eq!(
        store
            .rest_chat(one.id, 1)
            .await
            .unwrap()
            .unwrap()
            .messages_count,
        5
    );
    let changes = |revision, limit| store.rest_changes(one.id, 1, revision, limit);
    assert_eq!(numbers(&changes(0, 10).await.unwrap()), [3, 4, 5, 1, 2]);
    assert_eq!(numbers(&changes(5, 10).await.unwrap()), [1, 2]);
    assert_eq!(numbers(&changes(0, 2).await.unwrap()), [3, 4]);
    assert!(changes(7, 10).await.unwrap().is_empty());
    assert_eq!(
        numbers(&store.rest_changes(one.id, 2, 0, 10).await.unwrap()),
        [1]
    );

    // Full-text search: any word, best first, ties newest first, inside the one chat.
    let search = |chat, text: &'static str, limit| store.rest_search(one.id, chat, text, limit);
    // The older message matches better: rank comes before age.
    assert_eq!(numbers(&search(1, "WORLD", 10).await.unwrap()), [1, 3]);
    assert_eq!(numbers(&search(1, "peace", 10).await.unwrap()), [5, 4]);
    let mut any = numbers(&search(1, "world, peace!", 10).await.unwrap());
    any.sort();
    assert_eq!(any, [1, 3, 4, 5]);
    assert_eq!(search(1, "world peace", 2).await.unwrap().len(), 2);
    // Edits are indexed; the old body is forgotten.
    assert_eq!(numbers(&search(1, "CAFÉ", 10).await.unwrap()), [2]);
    assert!(search(1, "lait", 10).await.unwrap().is_empty());
    assert!(search(1, "hello", 10).await.unwrap().is_empty());
    assert_eq!(numbers(&search(2, "hello", 10).await.unwrap()), [1]);
    assert!(search(1, "tea", 10).await.unwrap().is_empty());
    assert!(search(1, "\"*&|!:", 10).await.unwrap().is_empty());
    assert!(search(1, "", 10).await.unwrap().is_empty());
    // Alphanumeric to Rust, but no word to either engine's tokenizer.
    assert!(search(1, "²", 10).await.unwrap().is_empty());
    assert_eq!(numbers(&search(1, "² world", 10).await.unwrap()), [1, 3]);
    assert_eq!(
        store.rest_search(two.id, 1, "hello", 10).await.unwrap()[0].body,
        "world hello"
    );

    // Members.
    assert!(store.rest_members(one.id, 1).await.unwrap().is_empty());
    assert!(store.rest_add_member(one.id, 1, "b@x").await.unwrap());
    assert!(store.rest_add_member(one.id, 1, "a@x").await.unwrap());
    assert!(!store.rest_add_member(one.id, 1, "b@x").await.unwrap());
    assert!(store.rest_add_member(one.id, 2, "c@x").await.unwrap());
    assert_eq!(store.rest_members(one.id, 1).await.unwrap(), ["a@x", "b@x"]);
    assert!(store.rest_remove_member(one.id, 1, "a@x").await.unwrap());
    assert!(!store.rest_remove_member(one.id, 1, "a@x").await.unwrap());
    assert_eq!(store.rest_members(one.id, 1).await.unwrap(), ["b@x"]);
    assert_eq!(store.rest_members(one.id, 2).await.unwrap(), ["c@x"]);
}

#[tokio::test]
async fn rest_on_sqlite() {
    let store = store::open("sqlite::memory:").await.unwrap();
    rest_contract(store.as_ref()).await;
}

#[tokio::test]
async fn rest_on_postgres() {
    let store = store::open(&Postgres::shared().fresh_database().await)
        .await
        .unwrap();
    rest_contract(store.as_ref()).await;
}

/// 50 concurrent posts to one chat, spread over `stores` (one per node), get the numbers and
/// revisions 1..=50; 10 concurrent chat creations get 1..=10.
async fn rest_numbers_under_concurrency(stores: &[Arc<dyn Store>]) {
    let app = stores[0].rest_create_app("App", "tok").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            store
                .rest_create_chat(app.id, &format!("room{i}"))
                .await
                .unwrap()
                .number
        }));
    }
    let mut chats = Vec::new();
    for t in tasks {
        chats.push(t.await.unwrap());
    }
    chats.sort();
    assert_eq!(chats, (1..=10).collect::<Vec<i64>>());

    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("message {i}");
            let m = store
                .rest_add_message(app.id, 3, &rest_msg(&body, i as i64))
                .await
                .unwrap()
                .unwrap();
            (m.number, m.revision)
        }));
    }
    let (mut numbers_seen, mut revisions): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for t in tasks {
        let (n, r) = t.await.unwrap();
        assert_eq!(n, r, "no edits: a message's revision is its number");
        numbers_seen.push(n);
        revisions.push(r);
    }
    numbers_seen.sort();
    assert_eq!(numbers_seen, (1..=50).collect::<Vec<i64>>());
    let chat = stores[0].rest_chat(app.id, 3).await.unwrap().unwrap();
    assert_eq!(chat.messages_count, 50);
    let stored = stores[0].rest_messages(app.id, 3, 0, 0, 100).await.unwrap();
    assert_eq!(numbers(&stored), (1..=50).collect::<Vec<i64>>());
    assert_eq!(
        stores[0]
            .rest_app("tok")
            .await
            .unwrap()
            .unwrap()
            .chats_count,
        10
    );
}

#[tokio::test]
async fn rest_numbers_under_concurrency_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&format!("sqlite://{}/rookery.db", dir.path().display()))
        .await
        .unwrap();
    rest_numbers_under_concurrency(&[store]).await;
}

#[tokio::test]
async fn rest_numbers_under_concurrency_on_postgres() {
    // Two stores, two connection pools: two nodes of a cluster on one database.
    let url = Postgres::shared().fresh_database().await;
    let node1 = store::open(&url).await.unwrap();
    let node2 = store::open(&url).await.unwrap();
    rest_numbers_under_concurrency(&[node1, node2]).await;
}
