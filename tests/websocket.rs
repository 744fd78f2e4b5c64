//! XMPP over WebSocket (RFC 7395) on the HTTP listener, and its announcement (XEP-0156): a
//! tokio-tungstenite client logs in with SCRAM (the `sasl` crate's client) and exchanges
//! messages with a tokio-xmpp client on TCP; bad upgrades and bad frames get clear errors.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use futures::{SinkExt, StreamExt};
use rookery::config::ArchiveDefault;
use sasl::client::Mechanism;
use sasl::client::mechanisms::Scram;
use sasl::common::ChannelBinding;
use sasl::common::scram::Sha256;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_xmpp::minidom::Element;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    async fn connect(server: &TestServer, subprotocol: Option<&str>) -> Result<WsClient, String> {
        let url = format!("ws://{}/xmpp-websocket", server.http);
        Self::connect_to(&url, subprotocol, None).await
    }

    /// wss on `listen.https`, trusting the server's certificate, which names `localhost`.
    async fn connect_tls(server: &TestServer) -> Result<WsClient, String> {
        let port = server
            .running
            .as_ref()
            .and_then(|r| r.https_addr)
            .expect("listen.https")
            .port();
        let url = format!("wss://localhost:{port}/xmpp-websocket");
        Self::connect_to(&url, Some("xmpp"), Some(server.tls())).await
    }

    async fn connect_to(
        url: &str,
        subprotocol: Option<&str>,
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Result<WsClient, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(p) = subprotocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        match tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
        {
            Ok((ws, response)) => {
                let protocol = response.headers().get("sec-websocket-protocol");
                assert_eq!(protocol.and_then(|p| p.to_str().ok()), Some("xmpp"));
                Ok(WsClient { ws })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(format!(
                "{} {}",
                response.status(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn send(&mut self, frame: &str) {
        self.ws
            .send(Message::Text(frame.into()))
            .await
            .expect("send");
    }

    /// The next text frame, parsed: every frame is one complete element (RFC 7395 §3.3.3).
    async fn next(&mut self) -> Option<Element> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")?;
            match message.ok()? {
                Message::Text(text) => {
                    return Some(
                        text.as_str()
                            .parse()
                            .unwrap_or_else(|e| panic!("frame {text} is not one element: {e}")),
                    );
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        loop {
            let el = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {what}"));
            if pred(&el) {
                return el;
            }
        }
    }

    /// `<open/>`, then the server's `<open/>` and features.
    async fn open(&mut self) -> Element {
        self.send(&format!(
            "<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
        ))
        .await;
        let open = self.expect("<open/>", |e| e.is("open", FRAMING)).await;
        assert_eq!(open.attr("from"), Some("localhost"));
        assert!(open.attr("id").is_some());
        self.expect("features", |e| e.name() == "features").await
    }

    /// SCRAM-SHA-256, the restarted stream, and resource binding: the full JID.
    async fn login(&mut self, user: &str, password: &str) -> String {
        let features = self.open().await;
        let text = String::from(&features);
        assert!(text.contains("SCRAM-SHA-256"), "{text}");
        assert!(
            !text.contains("starttls"),
            "no STARTTLS inside WebSocket: {text}"
        );
        let mut scram =
            Scram::<Sha256>::new(user, password, ChannelBinding::None).expect("scram client");
        let initial = BASE64.encode(scram.initial());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{initial}</auth>"
        ))
        .await;
        let challenge = self.expect("challenge", |e| e.name() == "challenge").await;
        let challenge = BASE64.decode(challenge.text()).expect("base64");
        let response = BASE64.encode(scram.response(&challenge).expect("server first"));
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{response}</response>"
        ))
        .await;
        let success = self.expect("success", |e| e.name() == "success").await;
        let data = BASE64.decode(success.text()).expect("base64");
        scram
            .success(&data)
            .expect("the server proves it knows the password");
        let features = String::from(&self.open().await);
        assert!(features.contains("bind"), "{features}");
        assert!(
            features.contains("urn:xmpp:csi:0"),
            "CSI is offered: {features}"
        );
        self.send(
            "<iq xmlns='jabber:client' type='set' id='b1'>\
             <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>",
        )
        .await;
        let bound = self
            .expect("bind result", |e| e.attr("id") == Some("b1"))
            .await;
        child(&bound, "bind")
            .and_then(|b| child(b, "jid"))
            .map(|j| j.text())
            .expect("bound JID")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_websocket_client_logs_in_with_scram_and_chats_with_a_tcp_client() {
    a_websocket_client_logs_in_with_scram_and_chats_with_a_tcp_client_with(ArchiveDefault::Always)
        .await;
}

/// With archiving off, messages between the two go on as their clients wrote them.
#[tokio::test(flavor = "current_thread")]
async fn a_websocket_client_logs_in_with_scram_and_chats_with_a_tcp_client_with_archiving_off() {
    a_websocket_client_logs_in_with_scram_and_chats_with_a_tcp_client_with(ArchiveDefault::Never)
        .await;
}

async fn a_websocket_client_logs_in_with_scram_and_chats_with_a_tcp_client_with(
    archive: ArchiveDefault,
) {
    let server = TestServer::start_with(|c| c.archive.default = archive).await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;

    let mut web = WsClient::connect(&server, Some("xmpp"))
        .await
        .expect("upgrade");
    let jid = web.login("alice", "secret").await;
    assert_eq!(jid, "alice@localhost/web");
    web.send("<presence xmlns='jabber:client'/>").await;

    let mut bob = XmppClient::connect(&server, "bob@localhost/tcp", "secret").await;
    bob.send("<presence/>").await;
    // Enough rounds that, where archiving is off, messages go on as their clients wrote them
    // once the accounts' features have been asked; each still makes a frame of its own.
    for round in 0..20 {
        let to_web = format!("to the browser {round}: a > b, 'q'");
        bob.send(&format!(
            "<message\n to='alice@localhost/web' type='chat'><body>{}</body></message >",
            to_web.replace('\'', "&apos;")
        ))
        .await;
        let m = web
            .expect("bob's message", |e| {
                e.name() == "message" && child(e, "body").is_some_and(|b| b.text() == to_web)
            })
            .await;
        assert_eq!(m.attr("from"), Some("bob@localhost/tcp"));
        assert_eq!(m.ns(), "jabber:client");
        let from_web = format!("from the browser {round}");
        web.send(&format!(
            "<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'>\
             <body>{from_web}</body></message>"
        ))
        .await;
        let m = bob
            .expect("alice's message", |e| {
                e.name() == "message" && child(e, "body").is_some_and(|b| b.text() == from_web)
            })
            .await;
        assert_eq!(m.attr("from"), Some("alice@localhost/web"));
    }

    // RFC 7395 §3.6: <close/> is answered with <close/>, then the connection ends.
    web.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    web.expect("<close/>", |e| e.is("close", FRAMING)).await;
    assert!(
        web.next().await.is_none(),
        "the connection ends after <close/>"
    );
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn websocket_bad_input_gets_clear_errors_and_discovery_names_the_endpoint() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;

    // Without the xmpp subprotocol: refused before the upgrade, with a JSON body.
    let err = WsClient::connect(&server, None)
        .await
        .err()
        .expect("refused");
    assert!(err.starts_with("400"), "{err}");
    assert!(err.contains("subprotocol_required"), "{err}");

    // A first frame that is not <open/>: a stream error, then <close/>.
    let mut web = WsClient::connect(&server, Some("xmpp"))
        .await
        .expect("upgrade");
    web.send("<message xmlns='jabber:client'/>").await;
    let error = web.expect("a stream error", |e| e.name() == "error").await;
    assert!(
        String::from(&error).contains("invalid-namespace"),
        "{}",
        String::from(&error)
    );
    web.expect("<close/>", |e| e.is("close", FRAMING)).await;

    // A frame that is not XML: not-well-formed.
    let mut web = WsClient::connect(&server, Some("xmpp"))
        .await
        .expect("upgrade");
    web.open().await;
    web.send("<message to='bob@localhost'><body>unclosed").await;
    web.send("</nope>").await;
    let error = web.expect("a stream error", |e| e.name() == "error").await;
    assert!(
        String::from(&error).contains("not-well-formed"),
        "{}",
        String::from(&error)
    );

    // A wrong password: a SASL failure, as over TCP.
    let mut web = WsClient::connect(&server, Some("xmpp"))
        .await
        .expect("upgrade");
    web.open().await;
    web.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", "wrong")
    ))
    .await;
    let failure = web.expect("failure", |e| e.name() == "failure").await;
    assert!(String::from(&failure).contains("not-authorized"));

    // XEP-0156: both host-meta forms name the endpoint.
    let base = format!("http://{}", server.http);
    let json: serde_json::Value = reqwest::get(format!("{base}/.well-known/host-meta.json"))
        .await
        .expect("host-meta.json")
        .json()
        .await
        .expect("JSON");
    let expected = format!("ws://{}/xmpp-websocket", server.http);
    assert_eq!(
        json["links"][0]["rel"],
        "urn:xmpp:alt-connections:websocket"
    );
    assert_eq!(json["links"][0]["href"], expected.as_str());
    let xrd = reqwest::get(format!("{base}/.well-known/host-meta"))
        .await
        .expect("host-meta")
        .text()
        .await
        .expect("text");
    assert!(xrd.contains(&format!("href='{expected}'")), "{xrd}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn wss_and_https_on_the_tls_listener() {
    let server = TestServer::start_with(|c| {
        c.listen.https = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    server.add_user("alice", "secret").await;
    server.add_user("bob", "secret").await;
    let mut web = WsClient::connect_tls(&server).await.expect("wss upgrade");
    assert_eq!(web.login("alice", "secret").await, "alice@localhost/web");
    web.send("<presence xmlns='jabber:client'/>").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/tcp", "secret").await;
    bob.send("<message to='alice@localhost/web' type='chat'><body>over wss</body></message>")
        .await;
    web.expect("bob's message", |e| {
        child(e, "body").is_some_and(|b| b.text() == "over wss")
    })
    .await;

    // Discovery over HTTPS names the secure endpoints.
    let port = server
        .running
        .as_ref()
        .and_then(|r| r.https_addr)
        .expect("https")
        .port();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(server.tls())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(
        b"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut response))
        .await
        .expect("response in time")
        .ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("wss://localhost/xmpp-websocket")
            && response.contains("https://localhost/http-bind"),
        "{response}"
    );
    bob.close().await;
    server.shutdown().await;
}
