//! A lean XMPP client for load: one task per connection, no worker tasks, no typed stanzas.
//! It does STARTTLS, SCRAM-SHA-1 (the mechanism Prosody, ejabberd and rookery all offer),
//! binds a resource and then only sends and reads raw stanzas.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use minidom::Element;
use rookery::stream::parser::{ParserLimits, StreamEvent, StreamParser};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

use crate::split::{self, Piece, Seen, Top};

const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("xml: {0}")]
    Xml(#[from] rookery::stream::parser::ParseError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

fn protocol(s: impl Into<String>) -> ClientError {
    ClientError::Protocol(s.into())
}

/// user → (salt, SaltedPassword).
pub type SaltedCache = Arc<Mutex<HashMap<String, (Vec<u8>, Vec<u8>)>>>;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Target {
    /// The server's c2s addresses: one, or every node of a cluster (connection n goes to
    /// address n mod their number).
    pub addrs: Vec<SocketAddr>,
    pub domain: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Source addresses to spread connections over when one runs out of ephemeral ports.
    pub sources: Vec<IpAddr>,
    /// SaltedPassword per user, so repeated logins do not spend client CPU on PBKDF2.
    pub salted: SaltedCache,
    /// Enable stream management (XEP-0198) after binding, as mobile and desktop clients do.
    pub sm: bool,
}

/// A rustls verifier that accepts any certificate and any handshake signature: the load only
/// ever talks to servers on loopback that this run started with throwaway certificates. Every
/// server still signs its handshake; not checking the signature spares the generator a P-256
/// verification per login (an eighth of its CPU in the `login` scenario), on the cores the
/// server being measured shares with it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The load's TLS: full handshakes, X25519 only and AES-128-GCM first, the handshake and
/// cipher every server compared here agrees to (their OpenSSL 3.0 has no post-quantum key
/// exchange). Offering the hybrid group as well would cost the generator a key pair it never
/// uses on every login.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    use rustls::crypto::aws_lc_rs::{self, cipher_suite::*, kx_group};
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..aws_lc_rs::default_provider()
    });
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(mut c) => {
            // Every login is a full handshake on every server: a server whose tickets the
            // generator could resume would do less work per login than one whose it could not.
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        }
        // The default protocol versions always exist for the aws-lc-rs provider.
        Err(e) => panic!("TLS client configuration: {e}"),
    }
}

/// A logged-in connection.
pub struct Conn<S> {
    io: S,
    /// Built only when a stanza must be read as a tree (after the login, which reads bytes).
    parser: Option<StreamParser>,
    /// This stream's header, for a parser built after it was read.
    header: Vec<u8>,
    /// Bytes read and not yet cut into pieces (see [`split`]).
    unread: Vec<u8>,
    /// Whether this stream's header was read.
    open: bool,
    /// Stanzas read as trees and not yet handed out.
    pending: VecDeque<Element>,
    /// Stanzas cut out and not yet handed out.
    raw: VecDeque<Vec<u8>>,
    pub jid: String,
    /// Stream management's count, once the client enabled it.
    acks: Option<Acks>,
}

/// The client's side of stream management (XEP-0198): stanzas read since it was enabled, and
/// whether the server asked for that count since it was last given.
#[derive(Debug, Default)]
struct Acks {
    handled: u32,
    asked: bool,
}

impl Acks {
    /// Counts a piece as it is read, so that every stanza counts once, however it is handed out.
    fn count(acks: &mut Option<Acks>, piece: &[u8]) {
        if let Some(acks) = acks {
            match split::counted(piece) {
                split::Counted::Stanza => acks.handled = acks.handled.wrapping_add(1),
                split::Counted::AckRequest => acks.asked = true,
                split::Counted::Neither => {}
            }
        }
    }
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

fn limits() -> ParserLimits {
    ParserLimits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Self {
        Conn {
            io,
            parser: None,
            header: Vec::new(),
            unread: Vec::new(),
            open: false,
            pending: VecDeque::new(),
            raw: VecDeque::new(),
            jid: String::new(),
            acks: None,
        }
    }

    pub async fn send(&mut self, data: &str) -> Result<(), ClientError> {
        self.io.write_all(data.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads some bytes and returns the complete stanzas they finished, as trees.
    pub async fn read_stanzas(&mut self, out: &mut Vec<Element>) -> Result<(), ClientError> {
        out.extend(self.pending.drain(..));
        let mut events = Vec::new();
        let parser = match &mut self.parser {
            Some(parser) => parser,
            None => {
                let mut parser = StreamParser::new(limits());
                if self.open {
                    parser.feed(&self.header, &mut events)?;
                }
                self.parser.insert(parser)
            }
        };
        for piece in self.raw.drain(..) {
            parser.feed(&piece, &mut events)?;
        }
        if out.is_empty() && events.iter().all(|e| matches!(e, StreamEvent::Open(_))) {
            let mut parsed = Ok(());
            Self::read_pieces(
                &mut self.io,
                &mut self.unread,
                &mut self.open,
                &mut self.acks,
                |_, bytes| {
                    if parsed.is_ok() {
                        parsed = parser.feed(bytes, &mut events);
                    }
                },
            )
            .await?;
            parsed?;
        }
        for ev in events {
            match ev {
                StreamEvent::Stanza(el) => out.push(el),
                // The client's parser reads every stanza as a tree.
                StreamEvent::Message(m) => out.push(m.into_element()?),
                StreamEvent::Close => return Err(ClientError::Closed),
                StreamEvent::Open(_) => {}
            }
        }
        Ok(())
    }

    /// Reads some bytes and tells `seen` what each stanza they finished is, without parsing
    /// them (the measured part of a run).
    pub async fn read_seen(&mut self, mut seen: impl FnMut(Seen)) -> Result<(), ClientError> {
        if !self.pending.is_empty() || !self.raw.is_empty() {
            for el in self.pending.drain(..) {
                seen(seen_element(&el));
            }
            for piece in self.raw.drain(..) {
                seen(split::classify(&piece));
            }
            return Ok(());
        }
        Self::read_pieces(
            &mut self.io,
            &mut self.unread,
            &mut self.open,
            &mut self.acks,
            |_, bytes| seen(split::classify(bytes)),
        )
        .await
    }

    /// One read, and each complete piece it finished handed to `each`; the stream's end is
    /// [`ClientError::Closed`].
    async fn read_pieces(
        io: &mut S,
        unread: &mut Vec<u8>,
        open: &mut bool,
        acks: &mut Option<Acks>,
        mut each: impl FnMut(Piece, &[u8]),
    ) -> Result<(), ClientError> {
        unread.reserve(16 * 1024);
        if io.read_buf(unread).await? == 0 {
            return Err(ClientError::Closed);
        }
        let mut used = 0;
        while let Some(piece) = split::next_piece(&unread[used..], *open) {
            let bytes = &unread[used..used + piece.len()];
            used += piece.len();
            match piece {
                Piece::Close(_) => return Err(ClientError::Closed),
                Piece::Header(_) => *open = true,
                Piece::Stanza(_) => Acks::count(acks, bytes),
            }
            each(piece, bytes);
        }
        unread.drain(..used);
        // A burst can grow the buffer; a quiet connection should not keep it.
        if unread.is_empty() && unread.capacity() > 64 * 1024 {
            *unread = Vec::new();
        }
        Ok(())
    }

    /// The next stanza's bytes (read them with [`split::Top`]).
    async fn next_raw(&mut self) -> Result<Vec<u8>, ClientError> {
        if self.parser.is_some() || !self.pending.is_empty() {
            return Err(protocol("a stanza was read as a tree already"));
        }
        loop {
            if let Some(piece) = self.raw.pop_front() {
                return Ok(piece);
            }
            let (header, raw) = (&mut self.header, &mut self.raw);
            Self::read_pieces(
                &mut self.io,
                &mut self.unread,
                &mut self.open,
                &mut self.acks,
                |piece, bytes| match piece {
                    Piece::Header(_) => *header = bytes.to_vec(),
                    _ => raw.push_back(bytes.to_vec()),
                },
            )
            .await?;
            self.answer_acks().await?;
        }
    }

    /// Enables stream management (XEP-0198), without resumption: from now on the client
    /// counts the stanzas it reads and answers the server's requests for that count.
    pub async fn enable_acks(&mut self) -> Result<(), ClientError> {
        self.send("<enable xmlns='urn:xmpp:sm:3'/>").await?;
        self.acks = Some(Acks::default());
        loop {
            let piece = self.next_raw().await?;
            match Top::new(&piece).map(|t| t.name()) {
                Some("enabled") => return Ok(()),
                Some("failed") => return Err(protocol("stream management refused")),
                _ => {}
            }
        }
    }

    /// Gives the server the count it asked for, if it asked. Not part of a read: a read may
    /// be dropped for something else (a message to send), and a write must not be.
    pub async fn answer_acks(&mut self) -> Result<(), ClientError> {
        let Some(acks) = self.acks.as_mut().filter(|a| a.asked) else {
            return Ok(());
        };
        acks.asked = false;
        let answer = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", acks.handled);
        self.send(&answer).await
    }

    fn restart(&mut self) {
        self.parser = None;
        self.header.clear();
        self.open = false;
        self.pending.clear();
        self.raw.clear();
    }

    /// Pings the server and reads until the answer (a result or an error, whichever the server
    /// gives). A server handles one stream's stanzas in order, so once the answer is back,
    /// everything sent before the ping (the initial presence, say) has been handled. What
    /// arrives before the answer is dropped: call it before anything is measured.
    pub async fn round_trip(&mut self) -> Result<(), ClientError> {
        let domain = self.jid.split(['@', '/']).nth(1).unwrap_or_default();
        self.send(&format!(
            "<iq type='get' id='bench-rt' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await?;
        loop {
            let piece = self.next_raw().await?;
            if let Some(top) = Top::new(&piece)
                && top.name() == "iq"
                && top.attr("id") == Some("bench-rt")
            {
                return Ok(());
            }
        }
    }

    /// Opens a new stream and returns the bytes of its features.
    async fn open(&mut self, domain: &str) -> Result<Vec<u8>, ClientError> {
        self.restart();
        self.send(&header(domain)).await?;
        let features = self.next_raw().await?;
        match Top::new(&features) {
            Some(top) if top.name() == "features" => Ok(features),
            other => Err(protocol(format!(
                "expected features, got <{}>",
                other.map_or("", |t| t.name())
            ))),
        }
    }

    pub async fn close(mut self) {
        let _ = self.send("</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

/// A view of the stanza `bytes` hold; a protocol error if they hold none.
fn top(bytes: &[u8]) -> Result<Top<'_>, ClientError> {
    Top::new(bytes).ok_or_else(|| protocol("not a stanza"))
}

async fn tcp(target: &Target, n: usize) -> Result<TcpStream, ClientError> {
    let addr = target.addrs[n % target.addrs.len()];
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !target.sources.is_empty() {
        let src = target.sources[n % target.sources.len()];
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects, authenticates with SCRAM-SHA-1 and binds `resource`.
pub async fn login(
    target: &Target,
    n: usize,
    user: &str,
    password: &str,
    resource: &str,
) -> Result<Conn<TlsStream<TcpStream>>, ClientError> {
    let mut plain = Conn::new(tcp(target, n).await?);
    let features = plain.open(&target.domain).await?;
    if !top(&features)?.has_child("starttls") {
        return Err(protocol("no STARTTLS offered"));
    }
    plain
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    let proceed = plain.next_raw().await?;
    if top(&proceed)?.name() != "proceed" {
        return Err(protocol("STARTTLS refused"));
    }
    let name = rustls::pki_types::ServerName::try_from(target.domain.clone())
        .map_err(|e| protocol(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, plain.io)
        .await?;
    let mut conn = Conn::new(tls);
    conn.open(&target.domain).await?;
    scram_sha1(&mut conn, target, user, password).await?;
    let features = conn.open(&target.domain).await?;
    if !top(&features)?.has_child("bind") {
        return Err(protocol("no resource binding offered"));
    }
    conn.send(&format!(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{resource}</resource></bind></iq>"
    ))
    .await?;
    let bound = conn.next_raw().await?;
    if top(&bound)?.attr("type") != Some("result") {
        return Err(protocol("bind failed"));
    }
    // Older servers still want the session request before they route.
    conn.send(
        "<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    )
    .await?;
    let _ = conn.next_raw().await?;
    if target.sm {
        conn.enable_acks().await?;
    }
    conn.jid = format!("{user}@{}/{resource}", target.domain);
    Ok(conn)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    match hmac::Hmac::<Sha1>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

async fn scram_sha1<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    target: &Target,
    user: &str,
    password: &str,
) -> Result<(), ClientError> {
    let mut nonce_bytes = [0u8; 18];
    getrandom::fill(&mut nonce_bytes).map_err(|e| protocol(e.to_string()))?;
    let cnonce = BASE64.encode(nonce_bytes);
    let first_bare = format!("n={user},r={cnonce}");
    conn.send(&format!(
        "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{}</auth>",
        BASE64.encode(format!("n,,{first_bare}"))
    ))
    .await?;
    let challenge = conn.next_raw().await?;
    let challenge = top(&challenge)?;
    if challenge.name() != "challenge" {
        return Err(protocol(format!("SASL: got <{}>", challenge.name())));
    }
    let server_first = String::from_utf8(
        BASE64
            .decode(challenge.text().trim())
            .map_err(|e| protocol(e.to_string()))?,
    )
    .map_err(|e| protocol(e.to_string()))?;
    let (mut nonce, mut salt, mut iterations) = ("", Vec::new(), 0u32);
    for attr in server_first.split(',') {
        match attr.split_at_checked(2) {
            Some(("r=", v)) => nonce = v,
            Some(("s=", v)) => salt = BASE64.decode(v).map_err(|e| protocol(e.to_string()))?,
            Some(("i=", v)) => iterations = v.parse().map_err(|_| protocol("bad i="))?,
            _ => {}
        }
    }
    let salted = {
        let cached = target.salted.lock().ok().and_then(|m| {
            m.get(user)
                .filter(|(s, _)| *s == salt)
                .map(|(_, p)| p.clone())
        });
        match cached {
            Some(p) => p,
            None => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), &salt, iterations, &mut out);
                if let Ok(mut m) = target.salted.lock() {
                    m.insert(user.to_owned(), (salt.clone(), out.clone()));
                }
                out
            }
        }
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha1::digest(&client_key).to_vec();
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    conn.send(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        BASE64.encode(format!("{without_proof},p={}", BASE64.encode(proof)))
    ))
    .await?;
    let outcome = conn.next_raw().await?;
    if top(&outcome)?.name() != "success" {
        return Err(protocol(format!("authentication failed for {user}")));
    }
    Ok(())
}

/// [`split::classify`] for a stanza that was parsed already.
fn seen_element(el: &Element) -> Seen {
    if el.name() != "message" {
        return Seen::Other;
    }
    if el.attr("type") == Some("error") {
        return Seen::Error;
    }
    el.children()
        .find(|c| c.name() == "body")
        .and_then(|b| b.text().strip_prefix("b:").and_then(|t| t.parse().ok()))
        .map_or(Seen::Other, Seen::Stamped)
}
