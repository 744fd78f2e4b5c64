//! The REST bridge over real HTTP (reqwest), live with the group chat rooms behind its chats
//! (tokio-xmpp occupants).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_xmpp::minidom::Element;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{}/api/v1", server.http),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}"))
        };
        (status, value)
    }

    async fn raw(&self, method: &str, path: &str, body: &'static str) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let value = resp.json::<Value>().await.expect("a JSON error body");
        (status, value)
    }

    async fn new_app(&self, name: &str) -> String {
        let (status, app) = self
            .call("POST", "/applications", Some(json!({ "name": name })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        app["token"].as_str().expect("token").to_owned()
    }
}

/// Asserts the error shape: the status and `{"code","title","message"}`.
fn assert_error(got: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["title"].is_string() && got.1["message"].is_string(),
        "{}",
        got.1
    );
}

fn numbers(list: &Value) -> Vec<i64> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|m| m["number"].as_i64().expect("number"))
        .collect()
}

/// Reads server-sent events until `want` of them have come: (id, data) each.
async fn read_events(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    want: usize,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        while events.len() < want {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !data.is_empty() {
                    events.push((id, serde_json::from_str(&data).expect("JSON data")));
                }
            }
            if events.len() >= want {
                break;
            }
            let chunk = stream.next().await.expect("more events").expect("chunk");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("events in time");
    events
}

/// Sends initial presence and joins `room` as `nick`; the room's answer for that nickname.
async fn join(client: &mut XmppClient, room: &str, nick: &str) -> Element {
    client.send("<presence/>").await;
    client
        .send(&format!(
            "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    let occupant = format!("{room}/{nick}");
    client
        .expect("the join", |e| {
            e.name() == "presence" && e.attr("from") == Some(occupant.as_str())
        })
        .await
}

#[tokio::test(flavor = "current_thread")]
async fn applications_chats_and_messages_live_with_the_room() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let api = Api::new(&server);

    let (status, app) = api
        .call("POST", "/applications", Some(json!({"name": "app1"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app["name"], "app1");
    assert_eq!(app["chats_count"], 0);
    let token = app["token"].as_str().expect("token").to_owned();
    assert!(token.len() >= 22, "at least 128 bits: {token}");
    let (status, shown) = api
        .call("GET", &format!("/applications/{token}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, app);
    let (status, renamed) = api
        .call(
            "PUT",
            &format!("/applications/{token}"),
            Some(json!({"name": "Helpdesk"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "Helpdesk");
    assert_eq!(renamed["token"], token.as_str());

    // Chats are numbered per application.
    let chats = format!("/applications/{token}/chats");
    let (status, c1) = api.call("POST", &chats, None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(c1["number"], 1);
    let (_, c2) = api.call("POST", &chats, None).await;
    assert_eq!(c2["number"], 2);
    let room = c1["jid"].as_str().expect("the room's JID").to_owned();
    assert!(
        !room.contains(&token),
        "the room JID does not reveal the token"
    );
    assert!(room.ends_with("@conference.localhost"), "{room}");
    let (status, list) = api.call("GET", &chats, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(numbers(&list), [1, 2]);
    let (_, app_now) = api
        .call("GET", &format!("/applications/{token}"), None)
        .await;
    assert_eq!(app_now["chats_count"], 2);
    let (status, chat) = api.call("GET", &format!("{chats}/1"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat["messages_count"], 0);
    assert_eq!(chat["jid"], room.as_str());

    // Members may join the room; others may not.
    let (status, _) = api
        .call(
            "POST",
            &format!("{chats}/1/members"),
            Some(json!({"jid": "alice@localhost"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, members) = api.call("GET", &format!("{chats}/1/members"), None).await;
    assert_eq!(members, json!([{"jid": "alice@localhost"}]));
    let mut alice = XmppClient::connect(&server, "alice@localhost/r", "pw").await;
    let joined = join(&mut alice, &room, "alice").await;
    assert_eq!(joined.attr("type"), None, "{}", String::from(&joined));
    // No occupant may speak as the application.
    alice
        .send(&format!("<presence to='{room}/Helpdesk'/>"))
        .await;
    let refused = alice
        .expect("the refused nickname", |e| {
            e.name() == "presence" && e.attr("type") == Some("error")
        })
        .await;
    assert!(
        String::from(&refused).contains("conflict"),
        "{}",
        String::from(&refused)
    );

    // REST → room.
    let messages = format!("{chats}/1/messages");
    let (status, created) = api
        .call(
            "POST",
            &messages,
            Some(json!({"body": "hello from the app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["number"], 1);
    let live = alice
        .expect(
            "the app's message",
            is_message_with_body("hello from the app"),
        )
        .await;
    assert_eq!(live.attr("from"), Some(format!("{room}/Helpdesk").as_str()));
    assert_eq!(live.attr("type"), Some("groupchat"));
    let live_id = live.attr("id").expect("an id").to_owned();
    // It is in the room's archive too.
    alice
        .send(&format!(
            "<iq type='set' id='mam' to='{room}'><query xmlns='urn:xmpp:mam:2' queryid='m'/></iq>"
        ))
        .await;
    let archived = alice
        .expect("the archived copy", |e| {
            e.name() == "message" && child(e, "result").is_some()
        })
        .await;
    assert!(String::from(&archived).contains("hello from the app"));
    alice
        .expect("the archive query's end", |e| {
            e.name() == "iq" && e.attr("id") == Some("mam")
        })
        .await;

    // The live feed from the start: message 1, then what comes.
    let resp = api
        .http
        .get(format!("{}{messages}/stream", api.base))
        .header("last-event-id", "0")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let mut sse = resp.bytes_stream();
    let mut buffer = String::new();
    let first = read_events(&mut sse, &mut buffer, 1).await;
    assert_eq!(first[0].1["number"], 1);
    assert_eq!(first[0].1["event"], "created");
    let first_id = first[0].0.clone();

    // Room → REST: the occupant's message gets the next number, in the listing, feed, search.
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat' id='a1'><body>a pineapple question</body></message>"
        ))
        .await;
    let second = read_events(&mut sse, &mut buffer, 1).await;
    assert_eq!(second[0].1["number"], 2);
    assert_eq!(second[0].1["body"], "a pineapple question");
    assert_eq!(second[0].1["sender"], format!("{room}/alice").as_str());
    let (_, listed) = api.call("GET", &messages, None).await;
    assert_eq!(numbers(&listed), [1, 2]);
    assert_eq!(listed[0]["body"], "hello from the app");
    assert_eq!(listed[0]["sender"], "Helpdesk");
    let (_, after) = api.call("GET", &format!("{messages}?after=1"), None).await;
    assert_eq!(numbers(&after), [2]);
    let (status, found) = api
        .call(
            "POST",
            &format!("{messages}/search"),
            Some(json!({"body": "pineapple"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(numbers(&found), [2]);
    let (_, one) = api.call("GET", &format!("{messages}/2"), None).await;
    assert_eq!(one["body"], "a pineapple question");
    let (_, chat) = api.call("GET", &format!("{chats}/1"), None).await;
    assert_eq!(chat["messages_count"], 2);

    // An edit reaches the room as a correction and the feed as an edit.
    let (status, edited) = api
        .call(
            "PUT",
            &format!("{messages}/1"),
            Some(json!({"body": "hello, corrected"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(edited["body"], "hello, corrected");
    let correction = alice
        .expect("the correction", is_message_with_body("hello, corrected"))
        .await;
    let replace = child(&correction, "replace").expect("a XEP-0308 replace");
    assert_eq!(replace.ns(), "urn:xmpp:message-correct:0");
    assert_eq!(replace.attr("id"), Some(live_id.as_str()));
    let third = read_events(&mut sse, &mut buffer, 1).await;
    assert_eq!(third[0].1["number"], 1);
    assert_eq!(third[0].1["event"], "edited");
    // A message written in the room stays its author's.
    let (status, refused) = api
        .call(
            "PUT",
            &format!("{messages}/2"),
            Some(json!({"body": "rewritten"})),
        )
        .await;
    assert_error((status, refused), StatusCode::CONFLICT, "not_editable");

    // Resuming after the first event gives what came after it.
    drop(sse);
    let resp = api
        .http
        .get(format!("{}{messages}/stream", api.base))
        .header("last-event-id", first_id)
        .send()
        .await
        .expect("stream");
    let mut sse = resp.bytes_stream();
    let mut buffer = String::new();
    let resumed = read_events(&mut sse, &mut buffer, 2).await;
    let resumed: Vec<i64> = resumed
        .iter()
        .map(|(_, e)| e["number"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(resumed, [2, 1], "message 2, then the edit of 1");

    // An occupant's correction of its own message is an edit of that message.
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat' id='a2'><body>a mango question</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='a1'/></message>"
        ))
        .await;
    let corrected = read_events(&mut sse, &mut buffer, 1).await;
    assert_eq!(corrected[0].1["number"], 2);
    assert_eq!(corrected[0].1["event"], "edited");
    assert_eq!(corrected[0].1["body"], "a mango question");
    let (_, chat) = api.call("GET", &format!("{chats}/1"), None).await;
    assert_eq!(chat["messages_count"], 2, "a correction is no new message");

    // Paging with a Link header.
    let resp = api
        .http
        .get(format!("{}{messages}?per_page=1", api.base))
        .send()
        .await
        .expect("page");
    let link = resp.headers()["link"].to_str().expect("link").to_owned();
    assert!(
        link.contains("rel=\"next\"") && link.contains("page=2"),
        "{link}"
    );
    let page: Value = resp.json().await.expect("json");
    assert_eq!(numbers(&page), [1]);

    // One application's token reaches only its own chats.
    let other = api.new_app("other").await;
    let (status, _) = api
        .call("POST", &format!("/applications/{other}/chats"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, theirs) = api
        .call(
            "GET",
            &format!("/applications/{other}/chats/1/messages"),
            None,
        )
        .await;
    assert_eq!(theirs, json!([]));
    let (status, none) = api
        .call("GET", &format!("/applications/{other}/chats/2"), None)
        .await;
    assert_error((status, none), StatusCode::NOT_FOUND, "not_found");

    // A member taken off leaves the room (321).
    let (status, _) = api
        .call(
            "DELETE",
            &format!("{chats}/1/members/alice@localhost"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let out = alice
        .expect("alice's removal", |e| {
            e.name() == "presence" && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(String::from(&out).contains("321"), "{}", String::from(&out));
    alice.close().await;

    // The OpenAPI document names every path.
    let (status, doc) = api.call("GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/v1/applications",
        "/api/v1/applications/{token}/chats/{chat}/messages/search",
        "/api/v1/applications/{token}/chats/{chat}/messages/stream",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} in the OpenAPI document"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_get_json_errors() {
    let server = TestServer::start_with(|c| {
        c.api.admin_key = "s3cret-admin".into();
        c.limits.max_body_chars = 100;
    })
    .await;
    let api = Api::new(&server);
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret-admin");

    // The admin key guards creating and listing.
    assert_error(
        api.call("POST", "/applications", Some(json!({"name": "x"})))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let resp = api
        .http
        .post(format!("{}/applications", api.base))
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_error(
        api.call("GET", "/applications", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let resp = admin(api.http.post(format!("{}/applications", api.base)))
        .json(&json!({"name": "app"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let resp = admin(api.http.get(format!("{}/applications", api.base)))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let apps: Value = resp.json().await.expect("json");
    assert_eq!(apps.as_array().map(Vec::len), Some(1));

    // Bad bodies.
    let create_app = |body: &'static str| {
        admin(api.http.post(format!("{}/applications", api.base)))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status, code) in [
        ("{not json", StatusCode::BAD_REQUEST, "malformed_json"),
        ("", StatusCode::BAD_REQUEST, "missing_body"),
        ("[1, 2]", StatusCode::BAD_REQUEST, "malformed_json"),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "missing_field"),
        (
            "{\"name\": \"  \"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_field",
        ),
        (
            "{\"name\": 7}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_type",
        ),
    ] {
        let resp = create_app(body).await.expect("request");
        let got = (resp.status(), resp.json::<Value>().await.expect("json"));
        assert_error(got, status, code);
    }

    let chats = format!("/applications/{token}/chats");
    api.call("POST", &chats, None).await;
    let messages = format!("{chats}/1/messages");
    assert_error(
        api.raw("POST", &messages, "{\"body\": \"\"}").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty_field",
    );
    assert_error(
        api.call("POST", &messages, Some(json!({"body": "x".repeat(101)})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_long",
    );
    assert_error(
        api.raw("POST", &messages, "{\"body\": ").await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        api.raw("POST", &format!("{messages}/search"), "{}").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_field",
    );
    assert_error(
        api.call(
            "POST",
            &format!("{chats}/1/members"),
            Some(json!({"jid": "@@"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_jid",
    );
    assert_error(
        api.call(
            "POST",
            &format!("{chats}/1/members"),
            Some(json!({"jid": "localhost"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_jid",
    );

    // Unknown tokens, numbers and paths.
    for path in [
        "/applications/not-a-token".to_owned(),
        "/applications/not-a-token/chats".to_owned(),
        format!("{chats}/2"),
        format!("{chats}/abc"),
        format!("{chats}/-1/messages"),
        format!("{messages}/1"),
        format!("{messages}/x"),
        format!("{chats}/1/members/bob@localhost"),
        "/nothing/here".to_owned(),
    ] {
        let method = if path.contains("members/") {
            "DELETE"
        } else {
            "GET"
        };
        assert_error(
            api.call(method, &path, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_error(
        api.call(
            "POST",
            &format!("{chats}/9/messages"),
            Some(json!({"body": "x"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        api.call("DELETE", &format!("/applications/{token}"), None)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        api.call("GET", &format!("{messages}?per_page=abc"), None)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_query",
    );
    assert_error(
        api.call("GET", &format!("{messages}?after=-3"), None).await,
        StatusCode::BAD_REQUEST,
        "bad_query",
    );
    let resp = api
        .http
        .get(format!("{}{messages}/stream", api.base))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("request");
    let got = (resp.status(), resp.json::<Value>().await.expect("json"));
    assert_error(got, StatusCode::BAD_REQUEST, "bad_last_event_id");

    // Nothing above changed anything.
    let (_, chat) = api.call("GET", &format!("{chats}/1"), None).await;
    assert_eq!(chat["messages_count"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_posts_get_numbers_one_to_two_hundred() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let token = api.new_app("load").await;
    let chats = format!("/applications/{token}/chats");
    api.call("POST", &chats, None).await;
    let url = format!("{}{chats}/1/messages", api.base);
    let posts = (0..200).map(|i| {
        let (http, url) = (api.http.clone(), url.clone());
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"body": format!("message {i}")}))
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status(), StatusCode::CREATED);
            resp.json::<Value>().await.expect("json")["number"]
                .as_i64()
                .expect("number")
        })
    });
    let mut got: Vec<i64> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    got.sort();
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    let (_, chat) = api.call("GET", &format!("{chats}/1"), None).await;
    assert_eq!(chat["messages_count"], 200);
    let (_, all) = api
        .call("GET", &format!("{chats}/1/messages?per_page=500"), None)
        .await;
    assert_eq!(numbers(&all), (1..=200).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
}

/// Text XML cannot carry (a control character, U+FFFF) is stored as posted, and reaches the
/// room's occupants as U+FFFD: their stream stays well-formed and nothing else is lost.
#[tokio::test(flavor = "current_thread")]
async fn characters_xml_cannot_carry_reach_the_room_replaced() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let api = Api::new(&server);
    let token = api.new_app("bell").await;
    let chats = format!("/applications/{token}/chats");
    let (_, chat) = api.call("POST", &chats, None).await;
    let room = chat["jid"].as_str().expect("the room's JID").to_owned();
    api.call(
        "POST",
        &format!("{chats}/1/members"),
        Some(json!({"jid": "alice@localhost"})),
    )
    .await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/r", "pw").await;
    join(&mut alice, &room, "alice").await;

    let messages = format!("{chats}/1/messages");
    let (status, created) = api
        .call(
            "POST",
            &messages,
            Some(json!({"body": "ring \u{7} the \u{FFFF} bell"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let live = alice
        .expect(
            "the message, its characters replaced",
            is_message_with_body("ring \u{FFFD} the \u{FFFD} bell"),
        )
        .await;
    assert_eq!(live.attr("type"), Some("groupchat"));
    // The stream goes on: the next message arrives too.
    api.call("POST", &messages, Some(json!({"body": "after"})))
        .await;
    alice
        .expect("the next message", is_message_with_body("after"))
        .await;
    let (_, listed) = api.call("GET", &messages, None).await;
    assert_eq!(numbers(&listed), [1, 2]);
    server.shutdown().await;
}
