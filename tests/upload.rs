//! HTTP File Upload (XEP-0363): a tokio-xmpp client asks upload.localhost for a slot, PUTs the
//! file over HTTP and GETs it back; limits, quotas and misused slots get clear errors.

mod common;

use common::*;

const UPLOAD: &str = "urn:xmpp:http:upload:0";

fn slot_request(id: &str, filename: &str, size: usize) -> String {
    format!(
        "<iq type='get' id='{id}' to='upload.localhost'><request xmlns='{UPLOAD}' \
         filename='{filename}' size='{size}' content-type='text/plain'/></iq>"
    )
}

/// The PUT URL of a slot answer (the GET URL is the same).
fn put_url(slot: &tokio_xmpp::minidom::Element) -> String {
    let s = child(slot, "slot").expect("a slot");
    let put = child(s, "put")
        .and_then(|p| p.attr("url"))
        .expect("put url");
    let get = child(s, "get")
        .and_then(|g| g.attr("url"))
        .expect("get url");
    assert_eq!(put, get);
    put.to_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn a_slot_a_put_and_a_get() {
    let server = TestServer::start_with(|c| {
        c.upload.max_file_bytes = 1000;
        c.upload.quota_bytes = 1500;
    })
    .await;
    server.add_user("alice", "secret").await;
    let mut alice = XmppClient::connect(&server, "alice@localhost/a", "secret").await;

    // Discovery: the server lists the service, which says what it is and its size limit.
    let items = alice
        .iq(
            "d1",
            "<iq type='get' id='d1' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    assert!(String::from(&items).contains("upload.localhost"));
    let info = alice
        .iq(
            "d2",
            "<iq type='get' id='d2' to='upload.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    let info = String::from(&info);
    assert!(
        info.contains("category=\"store\"") || info.contains("category='store'"),
        "{info}"
    );
    assert!(info.contains(UPLOAD) && info.contains("max-file-size") && info.contains("1000"));

    let slot = alice
        .iq("s1", &slot_request("s1", "notes one.txt", 11))
        .await;
    assert_eq!(slot.attr("type"), Some("result"), "{}", String::from(&slot));
    let url = put_url(&slot);
    assert!(url.ends_with("/notes%20one.txt"), "{url}");
    let http = reqwest::Client::new();
    let put = http
        .put(&url)
        .header("content-type", "text/plain")
        .body("hello world")
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);
    // A slot is used once.
    let again = http
        .put(&url)
        .header("content-type", "text/plain")
        .body("hello again")
        .send()
        .await
        .expect("PUT");
    assert_eq!(again.status(), 403);
    let body: serde_json::Value = again.json().await.expect("JSON");
    assert_eq!(body["code"], "slot_unknown");

    let get = reqwest::get(&url).await.expect("GET");
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["content-type"], "text/plain");
    assert!(
        get.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(get.text().await.expect("body"), "hello world");

    // Too large for the limit: not-acceptable, with the limit.
    let e = alice.iq("s2", &slot_request("s2", "big.bin", 1001)).await;
    let e = String::from(&e);
    assert!(
        e.contains("not-acceptable") && e.contains("file-too-large"),
        "{e}"
    );
    assert!(e.contains("<max-file-size>1000</max-file-size>"), "{e}");
    // A name with a path in it: bad-request.
    let e = alice.iq("s3", &slot_request("s3", "../x", 10)).await;
    assert!(String::from(&e).contains("bad-request"));

    // A PUT of the wrong size uses up the slot and stores nothing.
    let slot = alice.iq("s4", &slot_request("s4", "short.txt", 10)).await;
    let url = put_url(&slot);
    let wrong = http
        .put(&url)
        .header("content-type", "text/plain")
        .body("abc")
        .send()
        .await
        .expect("PUT");
    assert_eq!(wrong.status(), 400);
    let body: serde_json::Value = wrong.json().await.expect("JSON");
    assert_eq!(body["code"], "size_mismatch");
    assert_eq!(reqwest::get(&url).await.expect("GET").status(), 404);

    // The quota: 1500 bytes in all; after 11 and 1000 more, 600 do not fit.
    let slot = alice.iq("s5", &slot_request("s5", "a.txt", 1000)).await;
    let url = put_url(&slot);
    let ok = http
        .put(&url)
        .header("content-type", "text/plain")
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("PUT");
    assert_eq!(ok.status(), 201);
    let e = alice.iq("s6", &slot_request("s6", "b.txt", 600)).await;
    assert!(
        String::from(&e).contains("resource-constraint"),
        "{}",
        String::from(&e)
    );
    alice.close().await;
    server.shutdown().await;
}
