//! Multi-User Chat (XEP-0045) on conference.localhost, driven by tokio-xmpp clients.

mod common;

use std::time::Duration;

use common::*;
use tokio_xmpp::minidom::Element;

const ROOM: &str = "room@conference.localhost";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

fn codes(e: &Element) -> Vec<String> {
    e.children()
        .filter(|c| c.is("x", MUC_USER))
        .flat_map(|x| x.children().filter(|c| c.name() == "status"))
        .filter_map(|s| s.attr("code").map(str::to_owned))
        .collect()
}

fn item(e: &Element) -> Option<&Element> {
    e.children()
        .find(|c| c.is("x", MUC_USER))
        .and_then(|x| x.children().find(|c| c.name() == "item"))
}

fn presence_from(from: String, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "presence" && e.attr("from") == Some(from.as_str()) && e.attr("type") == kind
    }
}

/// Joins `room` as `nick`; returns the self-presence (status 110).
async fn join(c: &mut XmppClient, room: &str, nick: &str, extra: &str) -> Element {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>{extra}</x></presence>"
    ))
    .await;
    c.expect("the join's outcome", move |e| {
        e.name() == "presence"
            && (e.attr("type") == Some("error") || codes(e).iter().any(|c| c == "110"))
    })
    .await
}

async fn configure(c: &mut XmppClient, room: &str, fields: &[(&str, &str)]) -> Element {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
         <value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    c.iq(
        "cfg",
        &format!(
            "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>{x}</query></iq>"
        ),
    )
    .await
}

async fn users(server: &TestServer, names: &[&str]) -> Vec<XmppClient> {
    let mut out = Vec::new();
    for n in names {
        server.add_user(n, "pw").await;
        let mut c = XmppClient::connect(server, &format!("{n}@localhost/r"), "pw").await;
        c.send("<presence/>").await;
        out.push(c);
    }
    out
}

#[tokio::test]
async fn create_configure_chat_history_and_nick_change() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol", "dave"]).await;
    let [alice, bob, carol, dave] = &mut cs[..] else {
        unreachable!()
    };

    // The first occupant creates the room: owner, status 201, and the room stays locked.
    let own = join(alice, ROOM, "Alice", "").await;
    let c = codes(&own);
    assert!(
        c.contains(&"110".into()) && c.contains(&"201".into()),
        "{c:?}"
    );
    assert_eq!(
        item(&own).and_then(|i| i.attr("affiliation")),
        Some("owner")
    );
    assert_eq!(item(&own).and_then(|i| i.attr("role")), Some("moderator"));
    let locked = join(bob, ROOM, "Bob", "").await;
    assert_eq!(error_condition(&locked), "item-not-found");

    let form = alice
        .iq(
            "f",
            &format!("<iq type='get' id='f' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"),
        )
        .await;
    assert!(child(&form, "query").and_then(|q| child(q, "x")).is_some());
    let done = configure(
        alice,
        ROOM,
        &[
            ("muc#roomconfig_roomname", "The Room"),
            ("muc#roomconfig_persistentroom", "1"),
        ],
    )
    .await;
    assert_eq!(done.attr("type"), Some("result"));

    let bob_self = join(bob, ROOM, "Bob", "").await;
    assert_eq!(
        item(&bob_self).and_then(|i| i.attr("role")),
        Some("participant")
    );
    alice
        .expect("bob joining", presence_from(format!("{ROOM}/Bob"), None))
        .await;
    join(carol, ROOM, "Carol", "").await;

    // Subject and groupchat reach every occupant, from the sender's room JID.
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>"
        ))
        .await;
    for c in [&mut *bob, &mut *carol] {
        c.expect("the subject", |e| {
            e.name() == "message" && child(e, "subject").is_some_and(|s| s.text() == "Plans")
        })
        .await;
    }
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><body>msg {i}</body></message>"
            ))
            .await;
    }
    for c in [&mut *alice, &mut *bob, &mut *carol] {
        let m = c
            .expect("the last message", is_message_with_body("msg 2"))
            .await;
        assert_eq!(m.attr("from"), Some(format!("{ROOM}/Alice").as_str()));
        let sid = m
            .children()
            .find(|c| c.name() == "stanza-id")
            .expect("stanza id");
        assert_eq!(sid.attr("by"), Some(ROOM));
    }
    // A visitor's message is refused only in moderated rooms; an outsider's always.
    dave.send(&format!(
        "<message id='out' to='{ROOM}' type='groupchat'><body>hi</body></message>"
    ))
    .await;
    let err = dave
        .expect("an error for an outsider", |e| {
            e.name() == "message" && e.attr("id") == Some("out")
        })
        .await;
    assert_eq!(error_condition(&err), "not-acceptable");

    // History on join: the last two messages, delayed, then the subject.
    dave.send(&format!(
        "<presence to='{ROOM}/Dave'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='2'/></x></presence>"
    ))
    .await;
    let h1 = dave
        .expect("history", |e| {
            e.name() == "message" && child(e, "body").is_some()
        })
        .await;
    assert_eq!(
        child(&h1, "body").map(|b| b.text()).as_deref(),
        Some("msg 1")
    );
    assert!(child(&h1, "delay").is_some());
    let h2 = dave
        .expect("history", |e| {
            e.name() == "message" && child(e, "body").is_some()
        })
        .await;
    assert_eq!(
        child(&h2, "body").map(|b| b.text()).as_deref(),
        Some("msg 2")
    );
    dave.expect("the subject on join", |e| {
        e.name() == "message" && child(e, "subject").is_some_and(|s| s.text() == "Plans")
    })
    .await;

    // A private message between occupants.
    bob.send(&format!(
        "<message to='{ROOM}/Carol' type='chat'><body>psst</body></message>"
    ))
    .await;
    let pm = carol
        .expect("the private message", is_message_with_body("psst"))
        .await;
    assert_eq!(pm.attr("from"), Some(format!("{ROOM}/Bob").as_str()));

    // Nick change: unavailable with 303 and the new nick, then the new presence.
    bob.send(&format!("<presence to='{ROOM}/Robert'/>")).await;
    let gone = carol
        .expect(
            "bob's old nick leaving",
            presence_from(format!("{ROOM}/Bob"), Some("unavailable")),
        )
        .await;
    assert!(codes(&gone).contains(&"303".into()));
    assert_eq!(item(&gone).and_then(|i| i.attr("nick")), Some("Robert"));
    carol
        .expect(
            "bob's new nick",
            presence_from(format!("{ROOM}/Robert"), None),
        )
        .await;
    // A nick someone else holds.
    let taken = join(dave, ROOM, "Alice", "").await;
    assert_eq!(error_condition(&taken), "conflict");
    for c in cs {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn kick_ban_members_only_and_restart() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol", "dave"]).await;
    {
        let [alice, bob, carol, dave] = &mut cs[..] else {
            unreachable!()
        };
        join(alice, ROOM, "Alice", "").await;
        configure(alice, ROOM, &[("muc#roomconfig_persistentroom", "1")]).await;
        join(bob, ROOM, "Bob", "").await;
        join(carol, ROOM, "Carol", "").await;

        // Kick: status 307 to the kicked occupant and to the others.
        let kick = alice
            .iq(
                "k",
                &format!(
                    "<iq type='set' id='k' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item nick='Bob' role='none'><reason>calm down</reason></item></query></iq>"
                ),
            )
            .await;
        assert_eq!(kick.attr("type"), Some("result"));
        let kicked = bob
            .expect(
                "being kicked",
                presence_from(format!("{ROOM}/Bob"), Some("unavailable")),
            )
            .await;
        let c = codes(&kicked);
        assert!(
            c.contains(&"307".into()) && c.contains(&"110".into()),
            "{c:?}"
        );
        let seen = carol
            .expect(
                "bob kicked",
                presence_from(format!("{ROOM}/Bob"), Some("unavailable")),
            )
            .await;
        assert!(codes(&seen).contains(&"307".into()));

        // A participant may not kick.
        let denied = carol
            .iq(
                "k2",
                &format!(
                    "<iq type='set' id='k2' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item nick='Alice' role='none'/></query></iq>"
                ),
            )
            .await;
        assert_eq!(error_condition(&denied), "forbidden");

        // Ban: 301, and the banned user cannot come back.
        alice
            .iq(
                "b",
                &format!(
                    "<iq type='set' id='b' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item jid='carol@localhost' affiliation='outcast'/></query></iq>"
                ),
            )
            .await;
        let banned = carol
            .expect(
                "being banned",
                presence_from(format!("{ROOM}/Carol"), Some("unavailable")),
            )
            .await;
        assert!(codes(&banned).contains(&"301".into()));
        let again = join(carol, ROOM, "Carol", "").await;
        assert_eq!(error_condition(&again), "forbidden");

        // Members-only: a non-member is refused until made a member.
        configure(alice, ROOM, &[("muc#roomconfig_membersonly", "1")]).await;
        let refused = join(dave, ROOM, "Dave", "").await;
        assert_eq!(error_condition(&refused), "registration-required");
        alice
            .iq(
                "m",
                &format!(
                    "<iq type='set' id='m' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item jid='dave@localhost' affiliation='member'/></query></iq>"
                ),
            )
            .await;
        let ok = join(dave, ROOM, "Dave", "").await;
        assert_eq!(
            item(&ok).and_then(|i| i.attr("affiliation")),
            Some("member")
        );
        let list = alice
            .iq(
                "l",
                &format!(
                    "<iq type='get' id='l' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item affiliation='member'/></query></iq>"
                ),
            )
            .await;
        let members: Vec<_> = child(&list, "query")
            .expect("query")
            .children()
            .filter_map(|i| i.attr("jid"))
            .collect();
        assert_eq!(members, ["dave@localhost"]);
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><subject>Kept</subject></message>"
            ))
            .await;
        dave.expect("the subject", |e| {
            child(e, "subject").is_some_and(|s| s.text() == "Kept")
        })
        .await;
    }
    let mut dave_before = cs.pop().expect("dave");
    for c in cs.drain(..) {
        c.close().await;
    }

    // After a restart the room, its configuration, affiliations and subject are still there.
    // An occupant still there at shutdown hears why it is out (status 332).
    let server = server.restart().await;
    let goodbye = dave_before
        .expect(
            "the shutdown's presence",
            presence_from(format!("{ROOM}/Dave"), Some("unavailable")),
        )
        .await;
    let c = codes(&goodbye);
    assert!(
        c.contains(&"332".into()) && c.contains(&"110".into()),
        "{c:?}"
    );
    drop(dave_before);
    let mut dave = XmppClient::connect(&server, "dave@localhost/r", "pw").await;
    let mut carol = XmppClient::connect(&server, "carol@localhost/r", "pw").await;
    let info = dave
        .iq(
            "i",
            &format!("<iq type='get' id='i' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
        )
        .await;
    let features: Vec<_> = child(&info, "query")
        .expect("query")
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(features.contains(&"muc_persistent") && features.contains(&"muc_membersonly"));
    let back = join(&mut dave, ROOM, "Dave", "").await;
    assert_eq!(
        item(&back).and_then(|i| i.attr("affiliation")),
        Some("member")
    );
    dave.expect("the kept subject", |e| {
        child(e, "subject").is_some_and(|s| s.text() == "Kept")
    })
    .await;
    let still_banned = join(&mut carol, ROOM, "Carol", "").await;
    assert_eq!(error_condition(&still_banned), "forbidden");
    dave.close().await;
    carol.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn discovery_invitations_destroy_and_bad_input() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let [alice, bob] = &mut cs[..] else {
        unreachable!()
    };
    let items = alice
        .iq(
            "s",
            "<iq type='get' id='s' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    let jids: Vec<_> = child(&items, "query")
        .expect("query")
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert!(jids.contains(&"conference.localhost"), "{jids:?}");

    join(alice, ROOM, "Alice", "").await;
    configure(alice, ROOM, &[("muc#roomconfig_roomname", "Listed")]).await;
    let rooms = alice
        .iq(
            "r",
            "<iq type='get' id='r' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    let names: Vec<_> = child(&rooms, "query")
        .expect("query")
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(names, [ROOM]);

    // A mediated invitation arrives from the room.
    alice
        .send(&format!(
            "<message to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='bob@localhost'><reason>join us</reason></invite></x></message>"
        ))
        .await;
    let inv = bob
        .expect("the invitation", |e| {
            e.name() == "message" && e.attr("from") == Some(ROOM)
        })
        .await;
    let invite = inv
        .children()
        .find(|c| c.is("x", MUC_USER))
        .and_then(|x| x.children().find(|c| c.name() == "invite"))
        .expect("invite");
    assert_eq!(invite.attr("from"), Some("alice@localhost"));

    // Self-ping (XEP-0410).
    let pong = alice
        .iq(
            "p",
            &format!("<iq type='get' id='p' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let not_joined = bob
        .iq(
            "p2",
            &format!("<iq type='get' id='p2' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
    assert_eq!(error_condition(&not_joined), "not-acceptable");

    // Bad input, each with its own error.
    let long = "n".repeat(100);
    let too_long = join(bob, ROOM, &long, "").await;
    assert_eq!(error_condition(&too_long), "jid-malformed");
    let unknown = configure(alice, ROOM, &[("muc#roomconfig_colour", "red")]).await;
    assert_eq!(error_condition(&unknown), "not-acceptable");
    let not_owner = configure(bob, ROOM, &[("muc#roomconfig_roomname", "Mine")]).await;
    assert_eq!(error_condition(&not_owner), "forbidden");
    bob.send("<message id='nr' to='nosuchroom@conference.localhost' type='groupchat'><body>x</body></message>")
        .await;
    let err = bob
        .expect("no such room", |e| {
            e.name() == "message" && e.attr("id") == Some("nr")
        })
        .await;
    assert_eq!(error_condition(&err), "item-not-found");

    // Destroy: occupants leave with the destroy element.
    let gone = alice
        .iq(
            "d",
            &format!(
                "<iq type='set' id='d' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <destroy><reason>done</reason></destroy></query></iq>"
            ),
        )
        .await;
    assert_eq!(gone.attr("type"), Some("result"));
    let rooms = alice
        .iq(
            "r2",
            "<iq type='get' id='r2' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    assert!(
        child(&rooms, "query")
            .expect("query")
            .children()
            .next()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    for c in cs {
        c.close().await;
    }
    server.shutdown().await;
}

/// Queries a room's archive; (archive id, body) per result, and the fin.
async fn room_archive(
    c: &mut XmppClient,
    id: &str,
    inner: &str,
) -> (Vec<(String, String)>, Element) {
    c.send(&format!(
        "<iq type='set' id='{id}' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>{inner}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let e = c
            .expect("room archive results", |e| {
                (e.name() == "iq" && e.attr("id") == Some(id))
                    || (e.name() == "message" && e.children().any(|r| r.name() == "result"))
            })
            .await;
        if e.name() == "iq" {
            return (results, e);
        }
        assert_eq!(e.attr("from"), Some(ROOM));
        let r = e.children().find(|r| r.name() == "result").expect("result");
        let fwd = child(r, "forwarded").expect("forwarded");
        let m = child(fwd, "message").expect("message");
        assert!(m.attr("from").is_some_and(|f| f.starts_with(ROOM)));
        results.push((
            r.attr("id").expect("id").to_owned(),
            child(m, "body").map(|b| b.text()).unwrap_or_default(),
        ));
    }
}

#[tokio::test]
async fn room_archive_pages_and_search() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &mut cs[..] else {
        unreachable!()
    };
    join(alice, ROOM, "Alice", "").await;
    configure(alice, ROOM, &[("muc#roomconfig_persistentroom", "1")]).await;
    let own = join(bob, ROOM, "Bob", "").await;
    assert!(codes(&own).contains(&"170".into()), "logging announced");
    // 20 messages: an occupant's burst allowance (5 a second after that).
    for i in 0..20 {
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><body>line {i} {}</body></message>",
                if i == 3 { "pineapple" } else { "plain" }
            ))
            .await;
    }
    let last = bob
        .expect("the last line", is_message_with_body("line 19 plain"))
        .await;
    let live_id = last
        .children()
        .find(|c| c.name() == "stanza-id")
        .and_then(|s| s.attr("id"))
        .expect("stanza id")
        .to_owned();

    let mut seen = Vec::new();
    let mut after = String::new();
    for page in 0.. {
        let set = if after.is_empty() {
            "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max></set>".to_owned()
        } else {
            format!(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>{after}</after></set>"
            )
        };
        let (results, fin) = room_archive(bob, &format!("ra{page}"), &set).await;
        let fin = child(&fin, "fin").expect("fin");
        seen.extend(results.iter().cloned());
        if fin.attr("complete") == Some("true") {
            break;
        }
        after = results.last().expect("a page").0.clone();
        assert!(page < 10);
    }
    let bodies: Vec<String> = seen.iter().map(|(_, b)| b.clone()).collect();
    let want: Vec<String> = (0..20)
        .map(|i| format!("line {i} {}", if i == 3 { "pineapple" } else { "plain" }))
        .collect();
    assert_eq!(bodies, want);
    assert_eq!(
        seen.last().expect("last").0,
        live_id,
        "live stanza id is the archive id"
    );

    let (found, _) = room_archive(
        bob,
        "rs",
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
         <field var='{urn:xmpp:fulltext:0}fulltext'><value>pineapple</value></field></x>",
    )
    .await;
    assert_eq!(found.len(), 1);

    // The room's archive metadata and query form.
    let md = bob
        .iq(
            "rmd",
            &format!("<iq type='get' id='rmd' to='{ROOM}'><metadata xmlns='urn:xmpp:mam:2'/></iq>"),
        )
        .await;
    let end = child(&md, "metadata").and_then(|m| child(m, "end"));
    assert_eq!(end.and_then(|e| e.attr("id")), Some(live_id.as_str()));
    let form = bob
        .iq(
            "rf",
            &format!("<iq type='get' id='rf' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"),
        )
        .await;
    assert_eq!(form.attr("type"), Some("result"));
    assert!(child(&form, "query").and_then(|q| child(q, "x")).is_some());

    // Members-only rooms keep their archive from outsiders.
    configure(alice, ROOM, &[("muc#roomconfig_membersonly", "1")]).await;
    let (none, denied) = room_archive(carol, "rc", "").await;
    assert!(none.is_empty());
    assert_eq!(error_condition(&denied), "forbidden");
    for c in cs {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_flooding_occupant_is_slowed_down_and_a_members_only_switch_removes_outsiders() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let [alice, bob] = &mut cs[..] else {
        unreachable!()
    };
    join(alice, ROOM, "Alice", "").await;
    configure(alice, ROOM, &[]).await;
    join(bob, ROOM, "Bob", "").await;
    for i in 0..30 {
        bob.send(&format!(
            "<message id='f{i}' to='{ROOM}' type='groupchat'><body>flood {i}</body></message>"
        ))
        .await;
    }
    let err = bob
        .expect("a refusal", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    assert_eq!(error_condition(&err), "resource-constraint");

    // Becoming members-only removes occupants without membership, with status 322.
    configure(alice, ROOM, &[("muc#roomconfig_membersonly", "1")]).await;
    let removed = bob
        .expect(
            "removal",
            presence_from(format!("{ROOM}/Bob"), Some("unavailable")),
        )
        .await;
    assert!(
        codes(&removed).contains(&"322".into()),
        "{:?}",
        codes(&removed)
    );
    for c in cs {
        c.close().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn occupants_exchange_iqs_and_a_visitor_asks_for_voice() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &mut cs[..] else {
        unreachable!()
    };
    join(alice, ROOM, "Alice", "").await;
    let done = configure(alice, ROOM, &[("muc#roomconfig_moderatedroom", "1")]).await;
    assert_eq!(done.attr("type"), Some("result"));
    let bob_self = join(bob, ROOM, "Bob", "").await;
    assert_eq!(
        item(&bob_self).and_then(|i| i.attr("role")),
        Some("visitor")
    );

    // An iq to an occupant reaches its client from the asker's room JID, with an id of the
    // room's; the answer goes back to the asker with the asker's own id.
    bob.send(&format!(
        "<iq type='get' id='v1' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>"
    ))
    .await;
    let asked = alice
        .expect("the forwarded iq", |e| {
            e.name() == "iq" && e.attr("type") == Some("get")
        })
        .await;
    assert_eq!(asked.attr("from"), Some(format!("{ROOM}/Bob").as_str()));
    assert_ne!(asked.attr("id"), Some("v1"));
    let forwarded_id = asked.attr("id").unwrap_or_default().to_owned();
    alice
        .send(&format!(
            "<iq type='result' id='{forwarded_id}' to='{ROOM}/Bob'>\
             <query xmlns='jabber:iq:version'><name>a client</name></query></iq>"
        ))
        .await;
    let answer = bob
        .expect("the answer", |e| {
            e.name() == "iq" && e.attr("id") == Some("v1")
        })
        .await;
    assert_eq!(answer.attr("type"), Some("result"));
    assert_eq!(answer.attr("from"), Some(format!("{ROOM}/Alice").as_str()));
    assert_eq!(
        child(&answer, "query")
            .and_then(|q| child(q, "name"))
            .map(|n| n.text()),
        Some("a client".to_owned())
    );

    // A vCard request goes to the occupant's account, which the server answers.
    let set = alice
        .iq(
            "vs",
            "<iq type='set' id='vs'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    let vcard = bob
        .iq(
            "vc",
            &format!("<iq type='get' id='vc' to='{ROOM}/Alice'><vCard xmlns='vcard-temp'/></iq>"),
        )
        .await;
    assert_eq!(
        vcard.attr("type"),
        Some("result"),
        "{}",
        String::from(&vcard)
    );
    assert_eq!(vcard.attr("from"), Some(format!("{ROOM}/Alice").as_str()));
    assert_eq!(
        child(&vcard, "vCard")
            .and_then(|v| child(v, "FN"))
            .map(|n| n.text()),
        Some("Alice A.".to_owned())
    );

    // Bad input: no such occupant, and an outsider asking.
    let missing = bob
        .iq(
            "m",
            &format!("<iq type='get' id='m' to='{ROOM}/Nobody'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
    assert_eq!(error_condition(&missing), "item-not-found");
    let outsider = carol
        .iq(
            "o",
            &format!("<iq type='get' id='o' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
    assert_eq!(error_condition(&outsider), "not-acceptable");
    // An answer the room never asked for goes nowhere.
    carol
        .send(&format!("<iq type='result' id='forged' to='{ROOM}/Bob'/>"))
        .await;

    // Voice (§7.13, §8.6): the visitor asks, the moderator gets the form and approves.
    bob.send(&format!(
        "<message id='g' to='{ROOM}' type='groupchat'><body>hi</body></message>"
    ))
    .await;
    let refused = bob
        .expect("the visitor's refused message", |e| {
            e.name() == "message" && e.attr("id") == Some("g")
        })
        .await;
    assert_eq!(error_condition(&refused), "forbidden");
    bob.send(&format!(
        "<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>\
         <field var='muc#role' type='list-single'><value>participant</value></field></x></message>"
    ))
    .await;
    let request = alice
        .expect("the voice request", |e| {
            e.name() == "message" && child(e, "x").is_some_and(|x| x.attr("type") == Some("form"))
        })
        .await;
    assert_eq!(request.attr("from"), Some(ROOM));
    let fields: Vec<(String, String)> = child(&request, "x")
        .map(|x| {
            x.children()
                .filter(|f| f.name() == "field")
                .map(|f| {
                    (
                        f.attr("var").unwrap_or_default().to_owned(),
                        child(f, "value").map(|v| v.text()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        fields.contains(&("muc#roomnick".into(), "Bob".into())),
        "{fields:?}"
    );
    assert!(fields.contains(&("muc#request_allow".into(), "false".into())));

    // An approval that names nobody is refused.
    alice
        .send(&format!(
            "<message id='bad' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>\
             <field var='muc#request_allow'><value>true</value></field></x></message>"
        ))
        .await;
    let bad = alice
        .expect("the refused approval", |e| {
            e.name() == "message" && e.attr("id") == Some("bad")
        })
        .await;
    assert_eq!(error_condition(&bad), "bad-request");

    alice
        .send(&format!(
            "<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>\
             <field var='muc#role'><value>participant</value></field>\
             <field var='muc#jid'><value>bob@localhost/r</value></field>\
             <field var='muc#roomnick'><value>Bob</value></field>\
             <field var='muc#request_allow'><value>true</value></field></x></message>"
        ))
        .await;
    let voiced = bob
        .expect("bob's new role", presence_from(format!("{ROOM}/Bob"), None))
        .await;
    assert_eq!(
        item(&voiced).and_then(|i| i.attr("role")),
        Some("participant")
    );
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat'><body>now I speak</body></message>"
    ))
    .await;
    alice
        .expect("bob's message", is_message_with_body("now I speak"))
        .await;

    // A direct invitation (XEP-0249) goes from user to user untouched.
    alice
        .send(&format!(
            "<message to='carol@localhost'><x xmlns='jabber:x:conference' jid='{ROOM}' reason='join us'/></message>"
        ))
        .await;
    let invite = carol
        .expect("the direct invitation", |e| {
            e.name() == "message" && child(e, "x").is_some_and(|x| x.ns() == "jabber:x:conference")
        })
        .await;
    assert_eq!(invite.attr("from"), Some("alice@localhost/r"));
    assert_eq!(child(&invite, "x").and_then(|x| x.attr("jid")), Some(ROOM));
}
