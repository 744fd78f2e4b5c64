//! Test harness: a real rookery server on ephemeral loopback ports in a temporary directory,
//! tokio-xmpp clients that trust its generated certificate, and a raw TLS client for feeding
//! it bad input byte for byte.
//!
//! With `ROOKERY_TEST_STORE=postgres` every test server stores into its own database on a real
//! PostgreSQL server instead of SQLite, so the same suite proves both stores.

#![allow(dead_code)]

pub mod caps;
pub mod services;
pub mod sm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rookery::app::{self, Running};
use rookery::auth::scram;
use rookery::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::jid::{FullJid, Jid};
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::xmlstream::{
    PendingFeaturesRecv, StreamHeader, Timeouts, XmppStreamElement, initiate_stream,
};
use tokio_xmpp::{Client, Event, Stanza};

pub const WAIT: Duration = Duration::from_secs(10);
pub const DOMAIN: &str = "localhost";

pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    pub http: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.listen.c2s = "127.0.0.1:0".parse().expect("addr");
        config.listen.c2s_tls = "127.0.0.1:0".parse().expect("addr");
        config.listen.http = "127.0.0.1:0".parse().expect("addr");
        config.listen.s2s = "127.0.0.1:0".parse().expect("addr");
        if std::env::var("ROOKERY_TEST_STORE").as_deref() == Ok("postgres") {
            config.storage.url = services::Postgres::shared().fresh_database().await;
        }
        adjust(&mut config);
        Self::run(dir, config).await
    }

    async fn run(dir: tempfile::TempDir, config: Config) -> TestServer {
        let running = app::start(config.clone()).await.expect("server starts");
        TestServer {
            c2s: running.c2s_addr,
            c2s_tls: running.c2s_tls_addr,
            http: running.http_addr,
            running: Some(running),
            dir,
            config,
        }
    }

    /// Shuts down and starts a new server on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        Self::run(self.dir, self.config).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        let creds = scram::derive_credentials(password, scram::DEFAULT_ITERATIONS).expect("creds");
        let server = &self.running.as_ref().expect("running").server;
        server
            .store
            .create_account(user, &creds)
            .await
            .expect("account created");
    }

    /// A client configuration that trusts exactly this server's certificate: the one it
    /// generated, or for a configured one the test CA in certs/test.
    pub fn tls(&self) -> Arc<ClientConfig> {
        if self.config.tls.cert.is_empty() {
            trust(self.dir.path())
        } else {
            trust_file(&test_certs().join("ca.pem"))
        }
    }
}

/// The test-only CA and certificates (certs/make-test-certs.sh).
pub fn test_certs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test")
}

/// A client configuration that trusts exactly the certificate a server generated into `dir`.
pub fn trust(dir: &std::path::Path) -> Arc<ClientConfig> {
    trust_file(&dir.join("cert.pem"))
}

/// A client configuration that trusts the certificates in one PEM file.
pub fn trust_file(path: &std::path::Path) -> Arc<ClientConfig> {
    let pem = std::fs::read(path).expect("PEM file");
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn exporter(conn: &rustls::ClientConnection) -> sasl::common::ChannelBinding {
    match conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None) {
        Ok(v) => sasl::common::ChannelBinding::TlsExporter(v),
        Err(_) => sasl::common::ChannelBinding::None,
    }
}

/// tokio-xmpp's connectors cannot take a custom CA, so the tests bring their own: STARTTLS or
/// direct TLS to a fixed address, trusting the test server's certificate.
#[derive(Clone)]
pub struct Connector {
    pub addr: SocketAddr,
    pub tls: Arc<ClientConfig>,
    pub direct_tls: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Connector({}, direct_tls={})",
            self.addr, self.direct_tls
        )
    }
}

type TlsIo = BufStream<tokio_rustls::client::TlsStream<TcpStream>>;

fn header(domain: &str) -> StreamHeader<'_> {
    StreamHeader {
        to: Some(std::borrow::Cow::Borrowed(domain)),
        from: None,
        id: None,
    }
}

impl ServerConnector for Connector {
    type Stream = TlsIo;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<TlsIo>, sasl::common::ChannelBinding), tokio_xmpp::Error> {
        let domain = jid.domain().as_str().to_owned();
        let mut tcp = TcpStream::connect(self.addr).await?;
        if !self.direct_tls {
            let stream =
                initiate_stream(BufStream::new(tcp), ns, header(&domain), timeouts).await?;
            let (_features, mut stream) = stream.recv_features().await?;
            futures::SinkExt::send(
                &mut stream,
                &XmppStreamElement::Starttls(starttls::Nonza::Request(starttls::Request)),
            )
            .await?;
            loop {
                match stream.next().await {
                    Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                    Some(_) => continue,
                    None => return Err(tokio_xmpp::Error::Disconnected),
                }
            }
            tcp = stream.into_inner().into_inner();
        }
        let name = ServerName::try_from(domain.clone()).map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let binding = exporter(tls.get_ref().1);
        let stream = initiate_stream(BufStream::new(tls), ns, header(&domain), timeouts).await?;
        Ok((stream, binding))
    }
}

/// A logged-in tokio-xmpp client.
pub struct XmppClient {
    pub client: Client,
    pub jid: FullJid,
}

impl XmppClient {
    pub async fn connect(server: &TestServer, jid: &str, password: &str) -> XmppClient {
        Self::connect_via(server, jid, password, false).await
    }

    pub async fn connect_via(
        server: &TestServer,
        jid: &str,
        password: &str,
        direct_tls: bool,
    ) -> XmppClient {
        let connector = Connector {
            addr: if direct_tls {
                server.c2s_tls
            } else {
                server.c2s
            },
            tls: server.tls(),
            direct_tls,
        };
        Self::connect_with(connector, jid, password).await
    }

    pub async fn connect_with(connector: Connector, jid: &str, password: &str) -> XmppClient {
        let jid = Jid::new(jid).expect("jid");
        let mut client =
            Client::new_with_connector(jid, password.to_owned(), connector, Timeouts::tight());
        let bound = tokio::time::timeout(WAIT, async {
            loop {
                match client.next().await {
                    Some(Event::Online { bound_jid, .. }) => return bound_jid,
                    Some(Event::Disconnected(e)) => panic!("disconnected before online: {e}"),
                    Some(_) => continue,
                    None => panic!("client stream ended before online"),
                }
            }
        })
        .await
        .expect("online in time");
        let jid = bound.try_into_full().expect("bound to a full JID");
        XmppClient { client, jid }
    }

    pub async fn send(&mut self, xml: &str) {
        // Wrapped so that the test XML can leave out the stream's default namespace.
        let wrapped: Element = format!("<w xmlns='jabber:client'>{xml}</w>")
            .parse()
            .expect("valid test XML");
        let el = wrapped.children().next().expect("one stanza").clone();
        let stanza = Stanza::try_from(el).expect("a stanza");
        self.client.send_stanza(stanza).await.expect("send");
    }

    /// Waits for a stanza matching `pred`, skipping others.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                match self.client.next().await {
                    Some(Event::Stanza(s)) => {
                        let el: Element = s.into();
                        if pred(&el) {
                            return el;
                        }
                    }
                    Some(Event::Disconnected(e)) => panic!("{}: disconnected: {e}", self.jid),
                    Some(_) => {}
                    None => panic!("{}: stream ended", self.jid),
                }
            }
        })
        .await;
        match found {
            Ok(el) => el,
            Err(_) => panic!("{}: timed out waiting for {what}", self.jid),
        }
    }

    /// Asserts that no stanza matching `pred` arrives within `wait`.
    pub async fn expect_none(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Element) -> bool,
    ) {
        let r = tokio::time::timeout(wait, async {
            loop {
                if let Some(Event::Stanza(s)) = self.client.next().await {
                    let el: Element = s.into();
                    if pred(&el) {
                        return el;
                    }
                }
            }
        })
        .await;
        if let Ok(el) = r {
            panic!("{}: unexpected {what}: {}", self.jid, String::from(&el));
        }
    }

    /// Sends an iq and returns the response with the same id.
    pub async fn iq(&mut self, id: &str, xml: &str) -> Element {
        self.send(xml).await;
        self.expect(&format!("response to iq {id}"), |e| {
            e.name() == "iq"
                && e.attr("id") == Some(id)
                && matches!(e.attr("type"), Some("result") | Some("error"))
        })
        .await
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.client.send_end()).await;
    }
}

/// Mutual subscriptions straight in the store, so a test starts from a settled roster.
pub async fn befriend(server: &TestServer, a: &str, b: &str) {
    let store = &server.running.as_ref().expect("running").server.store;
    for (user, contact) in [(a, b), (b, a)] {
        let item = rookery::store::RosterItem {
            jid: format!("{contact}@localhost"),
            name: None,
            subscription: rookery::store::Subscription::Both,
            ask: false,
            groups: Vec::new(),
        };
        store.put_roster_item(user, &item).await.expect("roster");
    }
}

/// `rounds` chat messages from alice@localhost/a to bob@localhost/b, each answered, every one
/// waited for: enough traffic for the server to have cached what routing asks of both accounts.
pub async fn exchange(alice: &mut XmppClient, bob: &mut XmppClient, rounds: usize) {
    for round in 0..rounds {
        pass(alice, bob, "bob@localhost/b", format!("ping {round}")).await;
        pass(bob, alice, "alice@localhost/a", format!("pong {round}")).await;
    }
}

/// One chat message from `from` to `to` (whose JID is `jid`), waited for.
async fn pass(from: &mut XmppClient, to: &mut XmppClient, jid: &str, body: String) {
    from.send(&format!(
        "<message to='{jid}' type='chat'><body>{body}</body></message>"
    ))
    .await;
    to.expect("the message", |e| {
        e.name() == "message" && child(e, "body").is_some_and(|b| b.text() == body)
    })
    .await;
}

pub fn is_message_with_body(body: &'static str) -> impl Fn(&Element) -> bool {
    move |e| e.name() == "message" && e.children().any(|c| c.name() == "body" && c.text() == body)
}

pub fn child<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    e.children().find(|c| c.name() == name)
}

/// The defined condition of an error reply ("" when there is none).
pub fn error_condition(e: &Element) -> String {
    child(e, "error")
        .and_then(|err| err.children().next())
        .map(|c| c.name().to_owned())
        .unwrap_or_default()
}

/// A raw client that speaks XML as text, for protocol edge cases and bad input.
pub struct Raw {
    io: RawIo,
    buf: String,
}

enum RawIo {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub fn stream_header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
    )
}

pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Raw {
            io: RawIo::Tcp(tcp),
            buf: String::new(),
        }
    }

    /// Connects, opens the stream and completes STARTTLS; the next step is a new header.
    pub async fn tls(server: &TestServer) -> Raw {
        let mut raw = Raw::tcp(server.c2s).await;
        raw.send(&stream_header(DOMAIN)).await;
        raw.read_until("</stream:features>").await;
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        raw.read_until("<proceed").await;
        let RawIo::Tcp(tcp) = raw.io else {
            panic!("TLS twice");
        };
        let name = ServerName::try_from(DOMAIN).expect("name");
        let tls = tokio_rustls::TlsConnector::from(server.tls())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Raw {
            io: RawIo::Tls(Box::new(tls)),
            buf: String::new(),
        }
    }

    /// Opens a TLS stream and authenticates with PLAIN: the stream, and the server's answer
    /// (a `<success/>`, or a `<failure>` up to its first empty element).
    async fn plain_auth(server: &TestServer, user: &str, password: &str) -> (Raw, String) {
        let mut raw = Raw::tls(server).await;
        raw.send(&stream_header(DOMAIN)).await;
        raw.read_until("</stream:features>").await;
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            plain(user, password)
        ))
        .await;
        let answer = raw.read_until("/>").await;
        (raw, answer)
    }

    /// Whether `user` can log in with `password` (PLAIN over TLS) right now.
    pub async fn password_works(server: &TestServer, user: &str, password: &str) -> bool {
        let (_, answer) = Raw::plain_auth(server, user, password).await;
        assert!(
            answer.contains("<success") || answer.contains("<failure"),
            "{answer}"
        );
        answer.contains("<success")
    }

    /// A raw client authenticated with PLAIN over TLS and bound to `resource`.
    pub async fn login(server: &TestServer, user: &str, password: &str, resource: &str) -> Raw {
        let (mut raw, answer) = Raw::plain_auth(server, user, password).await;
        assert!(answer.contains("<success"), "{answer}");
        raw.send(&stream_header(DOMAIN)).await;
        raw.read_until("</stream:features>").await;
        raw.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
        raw.read_until("</iq>").await;
        raw
    }

    pub async fn send(&mut self, s: &str) {
        let r = match &mut self.io {
            RawIo::Tcp(t) => t.write_all(s.as_bytes()).await,
            RawIo::Tls(t) => match t.write_all(s.as_bytes()).await {
                Ok(()) => t.flush().await,
                Err(e) => Err(e),
            },
        };
        r.expect("write");
    }

    async fn read_chunk(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let r = match &mut self.io {
            RawIo::Tcp(t) => t.read(&mut chunk).await,
            RawIo::Tls(t) => t.read(&mut chunk).await,
        };
        let n = r.unwrap_or(0);
        self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        n
    }

    /// An external component (XEP-0114) for `domain`, connected and past the handshake.
    pub async fn component(addr: SocketAddr, domain: &str, secret: &str) -> Raw {
        let mut raw = Raw::tcp(addr).await;
        raw.send(&format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await;
        raw.read_until("<stream:stream").await;
        let header = raw.read_until(">").await;
        let id = header
            .split("id='")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .expect("a stream id");
        let digest = <sha1::Sha1 as sha1::Digest>::digest(format!("{id}{secret}").as_bytes());
        let proof: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        raw.send(&format!(
            "<handshake xmlns='jabber:component:accept'>{proof}</handshake>"
        ))
        .await;
        raw.read_until("<handshake").await;
        raw
    }

    /// Everything that arrives within `wait` (nothing is an answer too).
    pub async fn read_for(&mut self, wait: Duration) -> String {
        let _ = tokio::time::timeout(wait, async { while self.read_chunk().await > 0 {} }).await;
        std::mem::take(&mut self.buf)
    }

    /// Reads until `needle` has arrived; returns everything up to and including it.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let r = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = self.buf.find(needle) {
                    let end = i + needle.len();
                    let out = self.buf[..end].to_owned();
                    self.buf.drain(..end);
                    return Some(out);
                }
                if self.read_chunk().await == 0 {
                    return None;
                }
            }
        })
        .await;
        match r {
            Ok(Some(s)) => s,
            Ok(None) => panic!("connection closed before {needle:?}; got {:?}", self.buf),
            Err(_) => panic!("timed out waiting for {needle:?}; got {:?}", self.buf),
        }
    }

    /// Reads the `<iq/>` with this id, whether it is self-closing or has children.
    pub async fn read_iq(&mut self, id: &str) -> String {
        let marker = format!("id='{id}'");
        let r = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(at) = self.buf.find(&marker)
                    && let Some(start) = self.buf[..at].rfind("<iq")
                    && let Some(tag_end) = self.buf[at..].find('>').map(|i| at + i)
                {
                    let end = if self.buf[..tag_end].ends_with('/') {
                        Some(tag_end + 1)
                    } else {
                        self.buf[tag_end..].find("</iq>").map(|i| tag_end + i + 5)
                    };
                    if let Some(end) = end {
                        let out = self.buf[start..end].to_owned();
                        self.buf.drain(..end);
                        return Some(out);
                    }
                }
                if self.read_chunk().await == 0 {
                    return None;
                }
            }
        })
        .await;
        match r {
            Ok(Some(s)) => s,
            Ok(None) => panic!("connection closed before iq {id}; got {:?}", self.buf),
            Err(_) => panic!("timed out waiting for iq {id}; got {:?}", self.buf),
        }
    }

    /// Reads until the server closes the connection; returns all that arrived.
    /// Reads until a TLS stream ends with the server's close_notify alert, not a bare TCP close.
    pub async fn read_to_tls_close(&mut self) -> String {
        let RawIo::Tls(t) = &mut self.io else {
            panic!("not a TLS connection");
        };
        let mut chunk = [0u8; 8192];
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                match t.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match ended {
            Ok(Ok(())) => std::mem::take(&mut self.buf),
            Ok(Err(e)) => panic!("TLS did not end cleanly ({e}); got {:?}", self.buf),
            Err(_) => panic!("server did not close; got {:?}", self.buf),
        }
    }

    pub async fn read_to_close(&mut self) -> String {
        let r = tokio::time::timeout(WAIT, async { while self.read_chunk().await > 0 {} }).await;
        assert!(r.is_ok(), "server did not close; got {:?}", self.buf);
        std::mem::take(&mut self.buf)
    }
}
