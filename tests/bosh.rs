//! BOSH (XEP-0124, XEP-0206) at /http-bind: an HTTP client (reqwest) logs in with SCRAM (the
//! `sasl` crate's client), restarts the stream, binds, and exchanges messages with a tokio-xmpp
//! client on TCP by long polling; retransmitted requests get the same answer; bad sessions,
//! rids and bodies get clear errors.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use sasl::client::Mechanism;
use sasl::client::mechanisms::Scram;
use sasl::common::ChannelBinding;
use sasl::common::scram::Sha256;
use tokio_xmpp::minidom::Element;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// The creation answer, as text (it declares the `stream` prefix twice, which minidom cannot
/// write back).
struct Created {
    text: String,
}

struct Bosh {
    http: reqwest::Client,
    url: String,
    sid: String,
    rid: u64,
}

async fn post(http: &reqwest::Client, url: &str, xml: String) -> (u16, String) {
    let r = http
        .post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .body(xml)
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn parse(text: &str) -> Element {
    text.parse()
        .unwrap_or_else(|e| panic!("not one element ({e}): {text}"))
}

impl Bosh {
    /// Creates a session (XEP-0206 §5); the answer carries the first stream features.
    async fn create(server: &TestServer) -> (Bosh, Created) {
        let http = reqwest::Client::new();
        let url = format!("http://{}/http-bind", server.http);
        let (status, text) = post(
            &http,
            &url,
            format!(
                "<body xmlns='{HTTPBIND}' rid='1000' to='localhost' wait='5' hold='1' \
                 ver='1.6' xml:lang='en' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let body = parse(&text);
        let sid = body.attr("sid").expect("sid").to_owned();
        assert!(body.attr("authid").is_some(), "{text}");
        (
            Bosh {
                http,
                url,
                sid,
                rid: 1000,
            },
            Created { text },
        )
    }

    /// Sends one request with `payload`; the answer's body.
    async fn send(&mut self, payload: &str) -> Element {
        self.rid += 1;
        let text = self.send_rid(self.rid, payload).await;
        parse(&text)
    }

    async fn send_rid(&self, rid: u64, payload: &str) -> String {
        let (status, text) = post(
            &self.http,
            &self.url,
            format!(
                "<body xmlns='{HTTPBIND}' rid='{rid}' sid='{}'>{payload}</body>",
                self.sid
            ),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Polls until an element matching `pred` arrives.
    async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        for _ in 0..6 {
            let body = self.send("").await;
            if let Some(el) = body.children().find(|c| pred(c)) {
                return el.clone();
            }
        }
        panic!("no {what}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_bosh_client_logs_in_with_scram_and_chats_with_a_tcp_client() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;

    let (mut bosh, created) = Bosh::create(&server).await;
    let features = created.text;
    assert!(features.contains("SCRAM-SHA-256"), "{features}");
    assert!(!features.contains("starttls"), "{features}");

    let mut scram = Scram::<Sha256>::new("alice", "secret", ChannelBinding::None).expect("scram");
    let initial = BASE64.encode(scram.initial());
    let answer = bosh
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{initial}</auth>"
        ))
        .await;
    let challenge = answer
        .children()
        .find(|c| c.name() == "challenge")
        .expect("challenge")
        .text();
    let response = BASE64.encode(
        scram
            .response(&BASE64.decode(challenge).expect("base64"))
            .expect("server first"),
    );
    let answer = bosh
        .send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{response}</response>"
        ))
        .await;
    let success = answer
        .children()
        .find(|c| c.name() == "success")
        .expect("success");
    scram
        .success(&BASE64.decode(success.text()).expect("base64"))
        .expect("the server knows the password");

    // XEP-0206 §5: the stream restarts by an attribute, and the new features come back.
    bosh.rid += 1;
    let (status, text) = post(
        &bosh.http,
        &bosh.url,
        format!(
            "<body xmlns='{HTTPBIND}' rid='{}' sid='{}' to='localhost' xml:lang='en' \
             xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'/>",
            bosh.rid, bosh.sid
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{text}");
    let bound = bosh
        .send(
            "<iq xmlns='jabber:client' type='set' id='b1'><bind \
             xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>",
        )
        .await;
    assert!(String::from(&bound).contains("alice@localhost/web"));
    bosh.send("<presence xmlns='jabber:client'/>").await;

    let mut bob = XmppClient::connect(&server, "bob@localhost/tcp", "secret").await;
    bob.send("<presence/>").await;
    bob.send("<message to='alice@localhost/web' type='chat'><body>to bosh</body></message>")
        .await;
    let m = bosh
        .expect("bob's message", |e| {
            e.name() == "message" && child(e, "body").is_some_and(|b| b.text() == "to bosh")
        })
        .await;
    assert_eq!(m.attr("from"), Some("bob@localhost/tcp"));
    bosh.send(
        "<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'>\
         <body>from bosh</body></message>",
    )
    .await;
    bob.expect("alice's message", is_message_with_body("from bosh"))
        .await;

    // §14.3: a request sent again (its answer was lost) gets the same answer.
    let again = bosh.send_rid(bosh.rid, "").await;
    let first = bosh.send_rid(bosh.rid, "").await;
    assert_eq!(again, first);

    // §13: the client ends the session; the sid is gone afterwards.
    bosh.rid += 1;
    let (status, text) = post(
        &bosh.http,
        &bosh.url,
        format!(
            "<body xmlns='{HTTPBIND}' rid='{}' sid='{}' type='terminate'>\
             <presence xmlns='jabber:client' type='unavailable'/></body>",
            bosh.rid, bosh.sid
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("terminate"), "{text}");
    let (status, text) = post(
        &bosh.http,
        &bosh.url,
        format!(
            "<body xmlns='{HTTPBIND}' rid='{}' sid='{}'/>",
            bosh.rid + 1,
            bosh.sid
        ),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("item-not-found"), "{text}");
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn bosh_bad_input_gets_clear_errors() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/http-bind", server.http);
    // Not XML, and XML that is not a BOSH body: 400 with a JSON body.
    let (status, text) = post(&http, &url, "<body".into()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("bad_xml"), "{text}");
    let (status, text) = post(&http, &url, "<message/>".into()).await;
    assert_eq!(status, 400, "{text}");
    // An unknown session: 404 and a terminal body.
    let (status, text) = post(
        &http,
        &url,
        format!("<body xmlns='{HTTPBIND}' rid='5' sid='nope'/>"),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("item-not-found"), "{text}");
    // Another domain: host-unknown.
    let (_, text) = post(
        &http,
        &url,
        format!("<body xmlns='{HTTPBIND}' rid='1' to='elsewhere.example' wait='5'/>"),
    )
    .await;
    assert!(text.contains("host-unknown"), "{text}");
    // A rid out of sequence ends the session.
    let (bosh, _) = Bosh::create(&server).await;
    let (status, text) = post(
        &http,
        &url,
        format!(
            "<body xmlns='{HTTPBIND}' rid='{}' sid='{}'/>",
            bosh.rid + 50,
            bosh.sid
        ),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("item-not-found"), "{text}");
    // XEP-0156 names the BOSH endpoint too.
    let meta = reqwest::get(format!("http://{}/.well-known/host-meta.json", server.http))
        .await
        .expect("host-meta")
        .text()
        .await
        .expect("text");
    assert!(meta.contains("urn:xmpp:alt-connections:xbosh"), "{meta}");
    assert!(meta.contains("/http-bind"), "{meta}");
    server.shutdown().await;
}
