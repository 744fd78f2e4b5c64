//! Message Archive Management (XEP-0313) with result set paging (XEP-0059), stanza ids
//! (XEP-0359), full-text search (XEP-0431) and preferences (XEP-0441), driven by tokio-xmpp.

mod common;

use std::time::Duration;

use common::*;
use tokio_xmpp::minidom::Element;

const MAM: &str = "urn:xmpp:mam:2";

/// One archive page: (archive id, body) per result, in the order received, and the `fin`.
#[derive(Debug)]
struct Page {
    results: Vec<(String, String)>,
    fin: Element,
}

impl Page {
    fn ids(&self) -> Vec<i64> {
        self.results
            .iter()
            .map(|(id, _)| id.parse().expect("numeric id"))
            .collect()
    }

    fn bodies(&self) -> Vec<&str> {
        self.results.iter().map(|(_, b)| b.as_str()).collect()
    }

    fn complete(&self) -> bool {
        self.fin.attr("complete") == Some("true")
    }

    fn rsm(&self, name: &str) -> Option<String> {
        child(&self.fin, "set")
            .and_then(|s| child(s, name))
            .map(|e| e.text())
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>urn:xmpp:mam:2</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>")
}

/// Sends a MAM query and collects its results up to the iq result.
async fn query(client: &mut XmppClient, id: &str, inner: &str) -> Result<Page, Element> {
    client
        .send(&format!(
            "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q-{id}'>{inner}</query></iq>"
        ))
        .await;
    let mut results = Vec::new();
    loop {
        let e = client
            .expect("archive results", |e| {
                (e.name() == "iq" && e.attr("id") == Some(id))
                    || (e.name() == "message" && e.children().any(|c| c.is("result", MAM)))
            })
            .await;
        if e.name() == "iq" {
            if e.attr("type") == Some("error") {
                return Err(e);
            }
            let fin = child(&e, "fin").expect("fin").clone();
            return Ok(Page { results, fin });
        }
        let result = e.children().find(|c| c.is("result", MAM)).expect("result");
        assert_eq!(result.attr("queryid"), Some(format!("q-{id}").as_str()));
        let forwarded = child(result, "forwarded").expect("forwarded");
        assert!(child(forwarded, "delay").is_some(), "a delay stamp");
        let original = child(forwarded, "message").expect("the archived message");
        let body = child(original, "body")
            .map(|b| b.text())
            .unwrap_or_default();
        results.push((result.attr("id").expect("id").to_owned(), body));
    }
}

async fn two_users() -> (TestServer, XmppClient, XmppClient) {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/b", "pw").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    (server, alice, bob)
}

#[tokio::test]
async fn both_directions_are_archived_with_stanza_ids() {
    let (server, mut alice, mut bob) = two_users().await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>hello bob</body></message>")
        .await;
    let got = bob
        .expect("alice's message", is_message_with_body("hello bob"))
        .await;
    // The recipient's archive id arrives on the message (XEP-0359).
    let sid = got
        .children()
        .find(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
        .expect("a stanza id");
    assert_eq!(sid.attr("by"), Some("bob@localhost"));
    bob.send("<message to='alice@localhost/a' type='chat'><body>hi alice</body></message>")
        .await;
    alice
        .expect("bob's answer", is_message_with_body("hi alice"))
        .await;
    // Not archived: a message the sender marked no-store, and a chat state alone.
    alice
        .send(
            "<message to='bob@localhost' type='chat'><body>secret</body>\
             <no-store xmlns='urn:xmpp:hints'/></message>",
        )
        .await;
    alice
        .send(
            "<message to='bob@localhost' type='chat'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    bob.expect("the no-store message", is_message_with_body("secret"))
        .await;

    let page = query(&mut alice, "a1", "").await.expect("alice's archive");
    assert_eq!(page.bodies(), ["hello bob", "hi alice"]);
    assert!(page.complete());
    let page = query(&mut bob, "b1", "").await.expect("bob's archive");
    assert_eq!(page.bodies(), ["hello bob", "hi alice"]);
    assert_eq!(page.results[0].0, sid.attr("id").expect("id"));
    let ids = page.ids();
    assert!(ids[0] < ids[1], "ids increase: {ids:?}");

    // A forged stanza id naming bob's archive is removed before bob sees the message.
    alice
        .send(
            "<message to='bob@localhost' type='chat'><body>forged</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='1'/></message>",
        )
        .await;
    let got = bob
        .expect("the forged one", is_message_with_body("forged"))
        .await;
    let ids: Vec<_> = got
        .children()
        .filter(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
        .filter_map(|c| c.attr("id"))
        .collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "1");

    // A sender's next stanza is handled once its copy is in its archive: a query right
    // behind a message finds it.
    alice
        .send("<message to='bob@localhost' type='chat'><body>right behind</body></message>")
        .await;
    let page = query(&mut alice, "a2", "").await.expect("alice's archive");
    assert_eq!(page.bodies().last().copied(), Some("right behind"));

    // Disco of one's own account lists MAM.
    let info = alice
        .iq(
            "d",
            "<iq type='get' id='d' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    let features: Vec<_> = child(&info, "query")
        .expect("query")
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [MAM, "urn:xmpp:sid:0", "urn:xmpp:fulltext:0"] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

/// A connection to the server's database that keeps it from writing archive rows (readers
/// go on) until [`ArchiveLock::release`].
enum ArchiveLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl ArchiveLock {
    async fn take(server: &TestServer) -> ArchiveLock {
        use sqlx::Connection;
        let url = server.config.storage_url();
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::raw_sql("BEGIN; LOCK TABLE archive IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .expect("lock");
            ArchiveLock::Postgres(c)
        } else {
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .expect("lock");
            ArchiveLock::Sqlite(c)
        }
    }

    async fn release(self) {
        match self {
            ArchiveLock::Sqlite(mut c) => {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut c)
                    .await
                    .expect("unlock");
            }
            ArchiveLock::Postgres(mut c) => {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut c)
                    .await
                    .expect("unlock");
            }
        }
    }
}

fn stanza_id(msg: &Element) -> String {
    msg.children()
        .find(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
        .and_then(|s| s.attr("id"))
        .expect("a stanza id")
        .to_owned()
}

/// A message goes out with its archive id before its row is written, and a query waits for
/// the rows of the messages delivered before it.
#[tokio::test]
async fn delivery_does_not_wait_for_the_archive_and_queries_do() {
    let (server, mut alice, mut bob) = two_users().await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>before</body></message>")
        .await;
    bob.expect("the first message", is_message_with_body("before"))
        .await;
    let lock = ArchiveLock::take(&server).await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>while locked</body></message>")
        .await;
    // Delivered, with its id, while its row cannot be written.
    let got = bob
        .expect("the second message", is_message_with_body("while locked"))
        .await;
    let id = stanza_id(&got);
    let unlock = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lock.release().await;
    });
    // Sent while the archive is locked: answered once the row is there.
    let page = query(&mut bob, "q", &rsm("<max>1</max><before/>"))
        .await
        .expect("bob's archive");
    assert_eq!(page.bodies(), ["while locked"]);
    assert_eq!(page.results[0].0, id);
    unlock.await.expect("unlocked");
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn paging_forward_and_backward_over_500_messages() {
    let (server, mut alice, mut bob) = two_users().await;
    for i in 0..500 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
            ))
            .await;
    }
    bob.expect("the last message", is_message_with_body("m499"))
        .await;
    let everything: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();

    // Forward, 50 at a time, each page after the last one's last id.
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let set = if after.is_empty() {
            rsm("<max>50</max>")
        } else {
            rsm(&format!("<max>50</max><after>{after}</after>"))
        };
        let page = query(&mut bob, &format!("f{pages}"), &set)
            .await
            .expect("a page");
        pages += 1;
        seen.extend(page.bodies().iter().map(|b| b.to_string()));
        if page.complete() {
            break;
        }
        after = page.rsm("last").expect("rsm last");
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(seen, everything, "forward: gaps or duplicates");

    // Backward from the end: <before/>, then before the first id of each page.
    let mut pages_back: Vec<Vec<String>> = Vec::new();
    let mut before = String::new();
    loop {
        let set = rsm(&format!("<max>70</max><before>{before}</before>"));
        let page = query(&mut bob, &format!("b{}", pages_back.len()), &set)
            .await
            .expect("a page");
        let ids = page.ids();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "oldest first in a page"
        );
        pages_back.push(page.bodies().iter().map(|b| b.to_string()).collect());
        if page.complete() {
            break;
        }
        before = page.rsm("first").expect("rsm first");
        assert!(pages_back.len() < 20, "paging does not end");
    }
    let seen: Vec<String> = pages_back.into_iter().rev().flatten().collect();
    assert_eq!(seen, everything, "backward: gaps or duplicates");

    // after-id / before-id (urn:xmpp:mam:2#extended) and flip-page.
    let all = query(&mut bob, "all", &rsm("<max>250</max>"))
        .await
        .expect("page");
    let ids = all.ids();
    let page = query(
        &mut bob,
        "range",
        &format!(
            "{}<flip-page/>",
            form(&[
                ("after-id", &ids[9].to_string()),
                ("before-id", &ids[15].to_string())
            ])
        ),
    )
    .await
    .expect("range");
    assert_eq!(page.bodies(), ["m14", "m13", "m12", "m11", "m10"]);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn filters_and_full_text_search() {
    let (server, mut alice, mut bob) = two_users().await;
    server.add_user("carol", "pw").await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/c", "pw").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>the quick brown fox</body></message>")
        .await;
    bob.expect("fox", is_message_with_body("the quick brown fox"))
        .await;
    let before_carol = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    carol
        .send("<message to='bob@localhost' type='chat'><body>lazy dogs sleep</body></message>")
        .await;
    bob.expect("dogs", is_message_with_body("lazy dogs sleep"))
        .await;
    for i in 0..20 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat'><body>filler {i}</body></message>"
            ))
            .await;
    }
    bob.expect("the last filler", is_message_with_body("filler 19"))
        .await;

    let with_carol = query(&mut bob, "w", &form(&[("with", "carol@localhost")]))
        .await
        .expect("with");
    assert_eq!(with_carol.bodies(), ["lazy dogs sleep"]);
    let full = query(&mut bob, "wf", &form(&[("with", "carol@localhost/c")]))
        .await
        .expect("with full JID");
    assert_eq!(full.bodies(), ["lazy dogs sleep"]);
    let stamp = before_carol.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let until = query(&mut bob, "e", &form(&[("end", &stamp)]))
        .await
        .expect("end");
    assert_eq!(until.bodies(), ["the quick brown fox"]);
    let since = query(&mut bob, "s", &form(&[("start", &stamp)]))
        .await
        .expect("start");
    assert_eq!(since.results.len(), 21);

    // XEP-0431: words from an old message are found, other words are not.
    let found = query(
        &mut bob,
        "t1",
        &form(&[("{urn:xmpp:fulltext:0}fulltext", "Brown FOX")]),
    )
    .await
    .expect("search");
    assert_eq!(found.bodies(), ["the quick brown fox"]);
    let none = query(
        &mut bob,
        "t2",
        &form(&[("{urn:xmpp:fulltext:0}fulltext", "giraffe")]),
    )
    .await
    .expect("search");
    assert!(none.results.is_empty() && none.complete());
    // Search syntax is not passed through.
    let odd = query(
        &mut bob,
        "t3",
        &form(&[("{urn:xmpp:fulltext:0}fulltext", "\"fox\" OR * NEAR(")]),
    )
    .await
    .expect("search with odd characters");
    assert!(odd.results.is_empty());
    for c in [alice, bob, carol] {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn preferences_decide_what_is_archived() {
    let (server, mut alice, mut bob) = two_users().await;
    let prefs = alice
        .iq(
            "p0",
            "<iq type='get' id='p0'><prefs xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    assert_eq!(
        child(&prefs, "prefs").and_then(|p| p.attr("default")),
        Some("always")
    );
    let set = alice
        .iq(
            "p1",
            "<iq type='set' id='p1'><prefs xmlns='urn:xmpp:mam:2' default='never'>\
             <always><jid>carol@localhost</jid></always><never/></prefs></iq>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    alice
        .send("<message to='bob@localhost' type='chat'><body>off the record</body></message>")
        .await;
    bob.expect(
        "it is still delivered",
        is_message_with_body("off the record"),
    )
    .await;
    let page = query(&mut alice, "q", "").await.expect("archive");
    assert!(page.results.is_empty(), "never means never");
    // Bob's own default still archives it on his side.
    let page = query(&mut bob, "qb", "").await.expect("archive");
    assert_eq!(page.bodies(), ["off the record"]);
    // The always list beats the default.
    alice
        .send("<message to='carol@localhost' type='chat'><body>for the record</body></message>")
        .await;
    let page = query(&mut alice, "qc", "").await.expect("archive");
    assert_eq!(page.bodies(), ["for the record"], "always beats never");

    let bad = alice
        .iq(
            "p2",
            "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/></iq>",
        )
        .await;
    assert_eq!(error_condition(&bad), "bad-request");
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

/// The router answers "archives nothing" from a note in the account's session-table entry
/// once the preferences are cached; changing them while messages flow must clear it at once.
#[tokio::test]
async fn preferences_changed_while_messages_flow_take_effect_at_once() {
    let (server, mut alice, mut bob) = two_users().await;
    alice
        .iq(
            "p1",
            "<iq type='set' id='p1'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>",
        )
        .await;
    exchange(&mut alice, &mut bob, 3).await;
    let sessions = &server.running.as_ref().expect("running").server.sessions;
    let alice_bare = rookery::jid::BareJid::new("alice@localhost").expect("jid");
    assert!(
        sessions.summary(&alice_bare).hints.archives_nothing,
        "the preferences are noted by now"
    );
    assert!(
        query(&mut alice, "q0", "")
            .await
            .expect("archive")
            .results
            .is_empty()
    );

    alice
        .iq(
            "p2",
            "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='always'/></iq>",
        )
        .await;
    assert!(!sessions.summary(&alice_bare).hints.archives_nothing);
    alice
        .send("<message to='bob@localhost/b' type='chat'><body>kept out</body></message>")
        .await;
    bob.expect("alice's message", is_message_with_body("kept out"))
        .await;
    bob.send("<message to='alice@localhost/a' type='chat'><body>kept in</body></message>")
        .await;
    alice
        .expect("bob's message", is_message_with_body("kept in"))
        .await;
    let page = query(&mut alice, "q1", "").await.expect("archive");
    assert_eq!(page.bodies(), ["kept out", "kept in"]);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_queries_get_errors_and_archives_stay_private() {
    let (server, mut alice, bob) = two_users().await;
    let bad_date = query(&mut alice, "x1", &form(&[("start", "yesterday")]))
        .await
        .expect_err("an error");
    assert_eq!(error_condition(&bad_date), "bad-request");
    let bad_id = query(&mut alice, "x2", &rsm("<after>no-such-id</after>"))
        .await
        .expect_err("an error");
    assert_eq!(error_condition(&bad_id), "item-not-found");
    let bad_field = query(&mut alice, "x3", &form(&[("colour", "red")]))
        .await
        .expect_err("an error");
    assert_eq!(error_condition(&bad_field), "feature-not-implemented");
    let bad_jid = query(&mut alice, "x4", &form(&[("with", "@@")]))
        .await
        .expect_err("an error");
    assert_eq!(error_condition(&bad_jid), "jid-malformed");
    // Someone else's archive.
    let other = alice
        .iq(
            "x5",
            "<iq type='set' id='x5' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    assert_eq!(other.attr("type"), Some("error"));
    // The form.
    let f = alice
        .iq(
            "x6",
            "<iq type='get' id='x6'><query xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    let fields: Vec<_> = child(&f, "query")
        .and_then(|q| child(q, "x"))
        .expect("form")
        .children()
        .filter_map(|c| c.attr("var"))
        .collect();
    assert!(fields.contains(&"with") && fields.contains(&"{urn:xmpp:fulltext:0}fulltext"));
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn chat_payloads_pass_through_and_chat_states_stay_out_of_the_archive() {
    let (server, mut alice, mut bob) = two_users().await;
    alice
        .send(
            "<message id='m1' to='bob@localhost/b' type='chat'><body>first</body>\
             <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>",
        )
        .await;
    let m = bob
        .expect("the message", is_message_with_body("first"))
        .await;
    assert!(m.children().any(|c| c.is("request", "urn:xmpp:receipts")));
    assert!(
        m.children()
            .any(|c| c.is("markable", "urn:xmpp:chat-markers:0"))
    );
    // XEP-0184 receipt, XEP-0333 marker, XEP-0085 chat state and XEP-0308 correction.
    for payload in [
        "<received xmlns='urn:xmpp:receipts' id='m1'/>",
        "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>",
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
    ] {
        bob.send(&format!(
            "<message to='alice@localhost/a' type='chat'>{payload}</message>"
        ))
        .await;
    }
    for ns in [
        "urn:xmpp:receipts",
        "urn:xmpp:chat-markers:0",
        "http://jabber.org/protocol/chatstates",
    ] {
        alice
            .expect("a payload from bob", move |e| {
                e.name() == "message" && e.children().any(|c| c.ns() == ns)
            })
            .await;
    }
    alice
        .send(
            "<message id='m2' to='bob@localhost/b' type='chat'><body>first, corrected</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='m1'/></message>",
        )
        .await;
    let c = bob
        .expect("the correction", is_message_with_body("first, corrected"))
        .await;
    assert!(
        c.children()
            .any(|r| r.is("replace", "urn:xmpp:message-correct:0"))
    );
    // Only the two messages with a body are archived.
    let page = query(&mut alice, "pt", "").await.expect("archive");
    assert_eq!(page.bodies(), ["first", "first, corrected"]);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_and_messages_by_id() {
    let (server, mut alice, mut bob) = two_users().await;
    // An empty archive has empty metadata.
    let empty = bob
        .iq(
            "md0",
            &format!("<iq type='get' id='md0'><metadata xmlns='{MAM}'/></iq>"),
        )
        .await;
    let md = child(&empty, "metadata").expect("metadata");
    assert!(md.children().next().is_none(), "{}", String::from(&empty));

    for i in 0..5 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
            ))
            .await;
    }
    bob.expect("the last", is_message_with_body("m4")).await;
    let all = query(&mut bob, "all", "").await.expect("all");
    let ids = all.ids();
    assert_eq!(ids.len(), 5);

    // The oldest and newest message, with their ids and times.
    let full = bob
        .iq(
            "md1",
            &format!("<iq type='get' id='md1'><metadata xmlns='{MAM}'/></iq>"),
        )
        .await;
    let md = child(&full, "metadata").expect("metadata");
    let start = child(md, "start").expect("start");
    let end = child(md, "end").expect("end");
    assert_eq!(start.attr("id"), Some(ids[0].to_string().as_str()));
    assert_eq!(end.attr("id"), Some(ids[4].to_string().as_str()));
    assert!(start.attr("timestamp").is_some() && end.attr("timestamp").is_some());

    // The `ids` field fetches exactly the messages named, in archive order.
    let picked = query(
        &mut bob,
        "ids",
        &format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{MAM}</value></field><field var='ids'><value>{}</value><value>{}</value>\
             </field></x>",
            ids[3], ids[1]
        ),
    )
    .await
    .expect("ids");
    assert_eq!(picked.bodies(), ["m1", "m3"]);
    // The query form lists it.
    let form_reply = bob
        .iq(
            "f",
            &format!("<iq type='get' id='f'><query xmlns='{MAM}'/></iq>"),
        )
        .await;
    let fields: Vec<String> = child(&form_reply, "query")
        .and_then(|q| child(q, "x"))
        .map(|x| {
            x.children()
                .filter_map(|f| f.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(fields.contains(&"ids".to_owned()), "{fields:?}");
    // An id the server never handed out names nothing.
    let bad = query(
        &mut bob,
        "bad",
        "<x xmlns='jabber:x:data' type='submit'><field var='ids'><value>abc</value></field></x>",
    )
    .await
    .expect_err("a bad id");
    assert_eq!(error_condition(&bad), "item-not-found");
    for c in [alice, bob] {
        c.close().await;
    }
    server.shutdown().await;
}
