//! The store contract, run against every engine: SQLite in memory, an SQLite file reopened,
//! and a real PostgreSQL server.

mod common;

use common::services::Postgres;
use rookery::store::{
    self, ArchivePrefs, ArchiveQuery, Credentials, NewArchived, Roster, RosterItem, ScramKeys,
    Store, StoreError, Subscription, SubscriptionRequest,
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
    store.create_account("alice", &creds(1)).await.unwrap();
    store.create_account("bob", &creds(5)).await.unwrap();
    assert!(matches!(
        store.create_account("alice", &creds(9)).await,
        Err(StoreError::AccountExists)
    ));
    assert_eq!(store.credentials("alice").await.unwrap(), Some(creds(1)));
    store.set_credentials("alice", &creds(20)).await.unwrap();
    assert_eq!(store.credentials("alice").await.unwrap(), Some(creds(20)));
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

    for i in 0..3 {
        store
            .push_offline("alice", &format!("<m{i}/>"), i)
            .await
            .unwrap();
    }
    assert_eq!(store.offline_count("alice").await.unwrap(), 3);
    let msgs = store.offline_messages("alice").await.unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.stanza.as_str()).collect::<Vec<_>>(),
        ["<m0/>", "<m1/>", "<m2/>"]
    );
    store.remove_offline("alice", msgs[1].id).await.unwrap();
    assert_eq!(
        store.offline_messages("alice").await.unwrap()[0].stanza,
        "<m2/>"
    );

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
    store.set_vcard("alice", "<vCard/>").await.unwrap();
    store
        .set_vcard("alice", "<vCard><FN>A</FN></vCard>")
        .await
        .unwrap();
    assert_eq!(
        store.vcard("alice").await.unwrap().as_deref(),
        Some("<vCard><FN>A</FN></vCard>")
    );
}

async fn deleted_without_a_trace(store: &dyn Store) {
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
    assert!(store.delete_account("alice").await.unwrap());
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
    let batch: Vec<NewArchived> = rows
        .iter()
        .zip(&stanzas)
        .enumerate()
        .map(|(i, ((with, body), stanza))| NewArchived {
            user: "ann",
            with_bare: with.split('/').next().unwrap(),
            with_full: with,
            stamp_ms: 1000 * (i as i64 + 1),
            body,
            stanza,
        })
        .collect();
    // One group commit: ids in the order given.
    let ids = store.archive_append_batch(&batch).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
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

#[tokio::test]
async fn archive_on_postgres() {
    let store = store::open(&Postgres::shared().fresh_database().await)
        .await
        .unwrap();
    archive_contract(store.as_ref()).await;
}
