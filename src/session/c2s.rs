//! A client-to-server session (RFC 6120): one task per connection, from the first byte
//! through STARTTLS, SASL and resource binding to the established stream, and the clean-up
//! when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use minidom::Element;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};

use super::conn::{Failure, Socket, XmlConn};
use super::sm::{self, Moved, Resumption, Sm};
use crate::auth::{AuthError, plain, scram};
use crate::jid::{self, BareJid, FullJid, Jid};
use crate::modules::{
    self, IqTarget, blocking, carbons, csi, mam, offline, pep, presence, push, register,
};
use crate::router;
use crate::router::table::{QueuedStanza, SessionCommand, SessionSender, TableError};
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::stream::parser::{RawMessage, StreamEvent, StreamHeader};
use crate::stream::{ns, writer};

/// How many messages a session reads as trees after one read raw needed its tree after all.
const TREES_BEFORE_RAW: u32 = 16;

/// Outgoing queue of a session: deep enough for bursts, small enough that a client that stops
/// reading is noticed quickly.
const QUEUE_DEPTH: usize = 1024;
/// A session quiet this long gives back its parser's scratch buffers.
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// A pinged client that stays silent this much longer (at most) is disconnected.
const PING_TIMEOUT: Duration = Duration::from_secs(60);
/// Negotiation must finish in this time, so half-open connections do not pile up.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_AUTH_ATTEMPTS: u32 = 3;
const MAX_DEPTH: usize = 32;
const SASL_CB_NS: &str = "urn:xmpp:sasl-cb:0";

/// Serves one accepted TCP connection until it ends.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let _ = tcp.set_nodelay(true);
    serve_socket(server, Socket::Plain(tcp), peer, direct_tls, "c2s").await
}

/// Serves a client on XMPP over WebSocket (RFC 7395) or BOSH (XEP-0206), its frames already
/// translated to an XML stream (see `transport::websocket`, `transport::bosh`); `kind` names
/// the transport in logs and metrics.
pub async fn serve_framed(
    server: Arc<Server>,
    pipe: tokio::io::DuplexStream,
    peer: SocketAddr,
    kind: &'static str,
) {
    serve_socket(server, Socket::Framed(pipe), peer, false, kind).await
}

async fn serve_socket(
    server: Arc<Server>,
    socket: Socket,
    peer: SocketAddr,
    direct_tls: bool,
    kind: &'static str,
) {
    let conn_id = server.next_conn_id();
    let span =
        info_span!("c2s", conn = conn_id, %peer, transport = kind, jid = tracing::field::Empty);
    async move {
        let _counted = crate::metrics::connection(kind);
        let mut conn = client_conn(&server, socket);
        if direct_tls {
            conn = match Box::pin(tls_accept(&server, conn)).await {
                Ok(c) => c,
                Err(e) => return debug!(error = %e, "TLS handshake failed"),
            };
        }
        // The deadline covers the TLS handshake, authentication and binding, so half-open or
        // stalled connections cannot hold resources.
        let deadline = Instant::now() + NEGOTIATION_TIMEOUT;
        // Each phase is boxed so that an idle session does not keep the negotiation's (much
        // larger) state allocated: the task's future is as large as its largest phase.
        match Box::pin(negotiate(&server, conn, deadline)).await {
            Negotiated::Bound(conn, bound) => {
                tracing::Span::current().record("jid", tracing::field::display(&bound.jid));
                Box::pin(established(&server, conn, conn_id, Start::Bound(bound))).await;
            }
            Negotiated::Moved(conn, moved, h) => {
                tracing::Span::current().record("jid", moved.jid.as_str());
                Box::pin(established(&server, conn, conn_id, Start::Moved(moved, h))).await;
            }
            Negotiated::Resumed => debug!("handed over to the session it resumed"),
            Negotiated::Failed(mut conn, failure) => {
                Box::pin(finish(&server, &mut conn, failure)).await
            }
            Negotiated::Dropped(reason) => debug!(%reason, "connection dropped during negotiation"),
        }
    }
    .instrument(span)
    .await
}

async fn finish(server: &Server, conn: &mut XmlConn, failure: Failure) {
    match failure {
        Failure::Stream { condition, text } => {
            if !conn.header_sent {
                let id = uuid::Uuid::new_v4().simple().to_string();
                conn.queue_bytes(
                    writer::stream_header(&server.domain, None, &id, ns::CLIENT).as_bytes(),
                );
            }
            debug!(
                condition,
                text = text.as_deref().unwrap_or(""),
                "closing with stream error"
            );
            conn.close_with_error(condition, text.as_deref()).await
        }
        Failure::Closed => conn.close().await,
        other => debug!(reason = %other, "connection ended"),
    }
}

/// A client's socket as an XML stream, with the configured limits.
fn client_conn(server: &Server, socket: Socket) -> XmlConn {
    let limits = &server.config.limits;
    XmlConn::limited(
        socket,
        limits,
        MAX_DEPTH,
        ("c2s", limits.c2s_bytes_per_second),
    )
}

async fn tls_accept(server: &Server, conn: XmlConn) -> Result<XmlConn, Failure> {
    let Socket::Plain(tcp) = conn.socket else {
        return Err(Failure::stream("policy-violation", "TLS is already on"));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server.tls.config.clone());
    let tls = tokio::time::timeout(NEGOTIATION_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| Failure::WriteTimeout)??;
    Ok(client_conn(server, Socket::Tls(Box::new(tls))))
}

/// Reads the peer's stream header, answers with ours, and checks it (RFC 6120 §4.7, §4.9.3).
async fn open_stream(server: &Server, conn: &mut XmlConn) -> Result<StreamHeader, Failure> {
    let header = match conn.next_event().await? {
        StreamEvent::Open(h) => h,
        _ => return Err(Failure::stream("bad-format", "expected a stream header")),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    conn.queue_bytes(
        writer::stream_header(&server.domain, header.from.as_deref(), &id, ns::CLIENT).as_bytes(),
    );
    conn.header_sent = true;
    let to_ok = header
        .to
        .as_deref()
        .and_then(|t| jid::normalize_domain(t).ok())
        .is_some_and(|t| t == server.domain);
    if !to_ok {
        return Err(super::conn::host_unknown());
    }
    super::conn::check_version(&header)?;
    Ok(header)
}

fn limits_feature(server: &Server) -> Element {
    let mut limits = Element::bare("limits", ns::STREAM_LIMITS);
    limits.append_child(modules::text_el(
        "max-bytes",
        ns::STREAM_LIMITS,
        &server.config.limits.max_stanza_bytes.to_string(),
    ));
    limits.append_child(modules::text_el(
        "idle-seconds",
        ns::STREAM_LIMITS,
        &server.config.limits.idle_seconds.to_string(),
    ));
    limits
}

/// Silence after which a client is pinged (XEP-0199 §4.2), and the grace it then gets.
fn idle_limits(server: &Server) -> (Duration, Duration) {
    let idle = Duration::from_secs(server.config.limits.idle_seconds);
    (idle, idle.min(PING_TIMEOUT))
}

/// Channel-binding data this TLS connection can offer.
fn channel_binding(server: &Server, conn: &XmlConn) -> scram::ChannelBindingData {
    match &conn.socket {
        Socket::Tls(tls) => scram::ChannelBindingData {
            tls_exporter: crate::transport::tls::tls_exporter(tls.get_ref().1),
            tls_server_end_point: Some(server.tls_server_end_point.clone()),
        },
        Socket::Plain(_) | Socket::TlsClient(_) | Socket::Framed(_) | Socket::Detached => {
            scram::ChannelBindingData::default()
        }
    }
}

fn mechanisms(cb: &scram::ChannelBindingData) -> Vec<&'static str> {
    let mut m = Vec::new();
    if cb.tls_exporter.is_some() || cb.tls_server_end_point.is_some() {
        m.extend(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]);
    }
    m.extend(["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]);
    m
}

enum Negotiated {
    Bound(XmlConn, Bound),
    /// A session from another cluster node, resumed on this connection.
    Moved(XmlConn, Box<Moved>, u32),
    /// The connection went to the stream-managed session it resumed.
    Resumed,
    Failed(XmlConn, Failure),
    Dropped(Failure),
}

/// What follows authentication: a new session, or taking over one (XEP-0198 §5).
enum AfterAuth {
    Bound(Bound),
    Resume(mpsc::Sender<Resumption>, u32),
    /// The session was on another node and moved here.
    Moved(Box<Moved>, u32),
}

/// The outcome of resource binding, before the session enters the session table.
struct Bound {
    jid: FullJid,
    /// The bind request, answered once the resource is in the session table.
    request: Element,
}

/// Runs STARTTLS, SASL and resource binding.
async fn negotiate(server: &Server, mut conn: XmlConn, deadline: Instant) -> Negotiated {
    if !conn.is_tls() {
        match tokio::time::timeout_at(deadline, pre_tls(server, &mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(f)) => return Negotiated::Failed(conn, f),
            Err(_) => return Negotiated::Failed(conn, negotiation_timeout()),
        }
        conn = match tls_accept(server, conn).await {
            Ok(c) => c,
            Err(f) => return Negotiated::Dropped(f),
        };
    }
    match tokio::time::timeout_at(deadline, authenticate_and_bind(server, &mut conn)).await {
        Ok(Ok(AfterAuth::Bound(bound))) => Negotiated::Bound(conn, bound),
        Ok(Ok(AfterAuth::Resume(session, h))) => {
            match session
                .send(Resumption::Here {
                    conn: Box::new(conn),
                    h,
                })
                .await
            {
                Ok(()) => Negotiated::Resumed,
                Err(back) => match back.0 {
                    Resumption::Here { conn, .. } => Negotiated::Failed(
                        *conn,
                        Failure::stream("reset", "the session to resume has ended"),
                    ),
                    Resumption::Elsewhere { .. } => Negotiated::Dropped(Failure::Closed),
                },
            }
        }
        Ok(Ok(AfterAuth::Moved(moved, h))) => Negotiated::Moved(conn, moved, h),
        Ok(Err(f)) => Negotiated::Failed(conn, f),
        Err(_) => Negotiated::Failed(conn, negotiation_timeout()),
    }
}

fn negotiation_timeout() -> Failure {
    Failure::stream("connection-timeout", "negotiation took too long")
}

/// The plain-text stream: only STARTTLS is offered, and required (RFC 6120 §5.3.1).
async fn pre_tls(server: &Server, conn: &mut XmlConn) -> Result<(), Failure> {
    open_stream(server, conn).await?;
    let mut starttls = Element::bare("starttls", ns::TLS);
    starttls.append_child(Element::bare("required", ns::TLS));
    conn.queue_bytes(&writer::features(&[starttls]));
    conn.flush().await?;
    loop {
        let el = conn.next_stanza().await?;
        if el.is("starttls", ns::TLS) {
            conn.send(&Element::bare("proceed", ns::TLS)).await?;
            return Ok(());
        }
        if el.is("auth", ns::SASL) {
            conn.send(&sasl_failure("encryption-required")).await?;
            continue;
        }
        return Err(Failure::stream("policy-violation", "STARTTLS is required"));
    }
}

fn sasl_failure(condition: &str) -> Element {
    let mut f = Element::bare("failure", ns::SASL);
    f.append_child(Element::bare(condition, ns::SASL));
    f
}

async fn authenticate_and_bind(server: &Server, conn: &mut XmlConn) -> Result<AfterAuth, Failure> {
    open_stream(server, conn).await?;
    let cb = channel_binding(server, conn);
    let mut mechs = Element::bare("mechanisms", ns::SASL);
    for m in mechanisms(&cb) {
        mechs.append_child(modules::text_el("mechanism", ns::SASL, m));
    }
    let mut features = vec![mechs];
    // XEP-0440: which channel-binding types the -PLUS mechanisms can use here.
    let mut cb_types = Element::bare("sasl-channel-binding", SASL_CB_NS);
    if cb.tls_exporter.is_some() {
        cb_types.append_child(modules::el(
            "channel-binding",
            SASL_CB_NS,
            &[("type", "tls-exporter")],
        ));
    }
    if cb.tls_server_end_point.is_some() {
        cb_types.append_child(modules::el(
            "channel-binding",
            SASL_CB_NS,
            &[("type", "tls-server-end-point")],
        ));
    }
    features.push(cb_types);
    features.extend(register::stream_feature(server));
    features.push(limits_feature(server));
    conn.queue_bytes(&writer::features(&features));
    conn.flush().await?;

    let mut failures = 0;
    let mut binding_refused = false;
    let user = loop {
        let el = conn.next_stanza().await?;
        if el.is("auth", ns::SASL) {
            match sasl(server, conn, &el, &cb, binding_refused).await? {
                Ok(user) => break user,
                Err(SaslFailure::BindingType) => {
                    // Not a wrong password: the client may retry without channel binding.
                    binding_refused = true;
                    conn.send(&sasl_failure("not-authorized")).await?;
                }
                Err(SaslFailure::Condition(condition)) => {
                    debug!(
                        mechanism = el.attr("mechanism").unwrap_or(""),
                        condition, "SASL failure"
                    );
                    conn.send(&sasl_failure(condition)).await?;
                    failures += 1;
                    if failures >= MAX_AUTH_ATTEMPTS {
                        return Err(Failure::stream(
                            "policy-violation",
                            "too many failed authentication attempts",
                        ));
                    }
                }
            }
        } else if el.is("iq", ns::CLIENT) {
            // Only in-band registration is possible before authentication (XEP-0077 §3.1).
            if let Some(reply) = register::handle_unauthenticated(server, &el).await {
                conn.send(&reply).await?;
            }
        } else {
            return Err(Failure::stream("not-authorized", "authenticate first"));
        }
    };
    info!(user = %user, "authenticated");
    conn.restart();
    open_stream(server, conn).await?;
    let mut bind = Element::bare("bind", ns::BIND);
    bind.append_child(Element::bare("required", ns::BIND));
    let mut session = Element::bare("session", ns::SESSION);
    session.append_child(Element::bare("optional", ns::SESSION));
    let mut features = vec![bind, session, Element::bare("sm", sm::NS)];
    for m in &server.modules {
        features.extend(m.stream_features(server));
    }
    features.push(limits_feature(server));
    conn.queue_bytes(&writer::features(&features));
    conn.flush().await?;

    loop {
        let el = conn.next_stanza().await?;
        if el.is("resume", sm::NS) {
            if let Some(resume) = resumable(server, &user, &el) {
                return Ok(resume);
            }
            if let Some(moved) = resumable_elsewhere(server, &user, &el).await {
                return Ok(moved);
            }
            conn.send(&sm::failed("item-not-found")).await?;
            continue;
        }
        if el.is("enable", sm::NS) {
            conn.send(&sm::failed("unexpected-request")).await?;
            continue;
        }
        if !el.is("iq", ns::CLIENT) {
            return Err(Failure::stream("not-authorized", "bind a resource first"));
        }
        let payload = stanza::iq_payload(&el);
        if payload.is_some_and(|p| p.is("session", ns::SESSION)) {
            conn.send(&stanza::iq_result(&el, None)).await?;
            continue;
        }
        if stanza::stanza_type(&el) != "set" || !payload.is_some_and(|p| p.is("bind", ns::BIND)) {
            let err = stanza::error_reply(
                &el,
                &StanzaError::not_authorized().with_text("bind a resource first"),
            );
            if let Some(err) = err {
                conn.send(&err).await?;
            }
            continue;
        }
        let requested = payload
            .and_then(|p| p.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = requested.unwrap_or_else(|| {
            format!(
                "rookery-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        match FullJid::new(&format!("{user}@{}/{resource}", server.domain)) {
            Ok(jid) => return Ok(AfterAuth::Bound(Bound { jid, request: el })),
            Err(_) => {
                if let Some(err) = stanza::error_reply(
                    &el,
                    &StanzaError::bad_request().with_text("invalid resource"),
                ) {
                    conn.send(&err).await?;
                }
            }
        }
    }
}

/// The session a `<resume/>` names, if `user` may take it over (XEP-0198 §5).
fn resumable(server: &Server, user: &str, resume: &Element) -> Option<AfterAuth> {
    let h = resume.attr("h")?.parse::<u32>().ok()?;
    let owner = jid::parse_bare(&format!("{user}@{}", server.domain)).ok()?;
    let session = server.resumable.find(resume.attr("previd")?, &owner)?;
    Some(AfterAuth::Resume(session, h))
}

/// The session a `<resume/>` names, fetched from the cluster node that holds it.
async fn resumable_elsewhere(server: &Server, user: &str, resume: &Element) -> Option<AfterAuth> {
    let cluster = server.cluster.as_ref()?;
    let h = resume.attr("h")?.parse::<u32>().ok()?;
    let owner = jid::parse_bare(&format!("{user}@{}", server.domain)).ok()?;
    let moved = cluster
        .fetch_session(resume.attr("previd")?, &owner)
        .await?;
    info!(user, "session moved here from another node");
    Some(AfterAuth::Moved(Box::new(moved), h))
}

/// Reads the client's next SASL response; `Ok(None)` when it aborts.
async fn sasl_response(conn: &mut XmlConn) -> Result<Result<Vec<u8>, &'static str>, Failure> {
    let el = conn.next_stanza().await?;
    if el.is("abort", ns::SASL) {
        return Ok(Err("aborted"));
    }
    if !el.is("response", ns::SASL) {
        return Err(Failure::stream(
            "not-authorized",
            "expected a SASL response",
        ));
    }
    Ok(decode_sasl(&el.text())
        .ok_or("incorrect-encoding")
        .map(Option::unwrap_or_default))
}

/// Decodes SASL data: empty text is "no data", `=` is an empty message (RFC 6120 §6.4.2).
fn decode_sasl(text: &str) -> Option<Option<Vec<u8>>> {
    let text = text.trim();
    match text {
        "" => Some(None),
        "=" => Some(Some(Vec::new())),
        t => BASE64.decode(t).ok().map(Some),
    }
}

fn challenge(data: &[u8]) -> Element {
    let mut c = Element::bare("challenge", ns::SASL);
    c.append_text_node(BASE64.encode(data));
    c
}

fn success(data: &[u8]) -> Element {
    let mut s = Element::bare("success", ns::SASL);
    if !data.is_empty() {
        s.append_text_node(BASE64.encode(data));
    }
    s
}

enum SaslFailure {
    Condition(&'static str),
    /// The client chose a channel-binding type we do not provide.
    BindingType,
}

impl From<&'static str> for SaslFailure {
    fn from(condition: &'static str) -> Self {
        SaslFailure::Condition(condition)
    }
}

/// Runs one SASL exchange; returns the authenticated username or why it failed.
///
/// `binding_refused`: an earlier attempt on this stream asked for a binding type we refused,
/// so a `y` GS2 flag is the client's correct conclusion rather than a downgrade (RFC 5802 §6).
async fn sasl(
    server: &Server,
    conn: &mut XmlConn,
    auth: &Element,
    cb: &scram::ChannelBindingData,
    binding_refused: bool,
) -> Result<Result<String, SaslFailure>, Failure> {
    let offered = mechanisms(cb);
    let Some(mech) = auth.attr("mechanism").filter(|m| offered.contains(m)) else {
        return Ok(Err("invalid-mechanism".into()));
    };
    let Some(initial) = decode_sasl(&auth.text()) else {
        return Ok(Err("incorrect-encoding".into()));
    };
    let first = match initial {
        Some(data) => data,
        None => {
            conn.send(&challenge(&[])).await?;
            match sasl_response(conn).await? {
                Ok(data) => data,
                Err(condition) => return Ok(Err(condition.into())),
            }
        }
    };
    let own_jid = |user: &str| format!("{user}@{}", server.domain);
    if mech == "PLAIN" {
        let req = match plain::parse(&first) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.condition().into())),
        };
        let Ok(user) = jid::normalize_user(&req.authcid) else {
            return Ok(Err("not-authorized".into()));
        };
        if req.authzid.as_deref().is_some_and(|z| z != own_jid(&user)) {
            return Ok(Err("invalid-authzid".into()));
        }
        let creds = server.credentials.get(server.store.as_ref(), &user).await;
        let valid = creds
            .as_deref()
            .is_some_and(|c| scram::verify_password(c, &req.password));
        if !valid {
            info!(user = %user, mechanism = mech, "authentication failed");
            return Ok(Err("not-authorized".into()));
        }
        conn.send(&success(&[])).await?;
        return Ok(Ok(user));
    }
    let hash = if mech.starts_with("SCRAM-SHA-256") {
        scram::ScramHash::Sha256
    } else {
        scram::ScramHash::Sha1
    };
    let plus = mech.ends_with("-PLUS");
    let offers_plus = offered.iter().any(|m| m.ends_with("-PLUS")) && !binding_refused;
    let client_first = match scram::ClientFirst::parse(&first, plus, offers_plus) {
        Ok(cf) => cf,
        Err(AuthError::UnsupportedChannelBinding) => return Ok(Err(SaslFailure::BindingType)),
        Err(e) => return Ok(Err(e.condition().into())),
    };
    let user = jid::normalize_user(&client_first.username).ok();
    let authzid_ok = match (&client_first.authzid, &user) {
        (None, _) => true,
        (Some(z), Some(u)) => *z == own_jid(u),
        (Some(_), None) => false,
    };
    let creds = match &user {
        Some(u) => server.credentials.get(server.store.as_ref(), u).await,
        None => None,
    };
    let (scram_server, server_first) =
        scram::ScramServer::server_first(hash, client_first, creds.as_deref());
    conn.send(&challenge(&server_first)).await?;
    let response = match sasl_response(conn).await? {
        Ok(data) => data,
        Err(condition) => return Ok(Err(condition.into())),
    };
    let server_final = match scram_server.client_final(&response, cb) {
        Ok(f) => f,
        Err(e) => {
            info!(
                user = user.as_deref().unwrap_or("?"),
                mechanism = mech,
                "authentication failed"
            );
            return Ok(Err(e.condition().into()));
        }
    };
    let (Some(user), Some(_)) = (user, creds) else {
        return Ok(Err("not-authorized".into()));
    };
    if !authzid_ok {
        return Ok(Err("invalid-authzid".into()));
    }
    conn.send(&success(&server_final)).await?;
    Ok(Ok(user))
}

/// An established session: bound, in the session table, exchanging stanzas.
struct Session<'a> {
    server: &'a Server,
    conn: XmlConn,
    /// The bound JID (as a `&Jid` through `Deref`, the router's sender address; its text is
    /// every stanza's `from`), and its bare form, computed once.
    jid: FullJid,
    bare: BareJid,
    conn_id: u64,
    presence: presence::SessionPresence,
    last_read: Instant,
    /// Id and time of our unanswered ping, if any.
    ping: Option<(String, Instant)>,
    /// The parser's buffers were released since the last read.
    quiet: bool,
    /// The client said it is inactive (XEP-0352): what can wait is held here.
    inactive: Option<csi::Held>,
    /// Stream management (XEP-0198), once the client enabled it.
    sm: Option<Sm>,
    /// New connections resuming this session, when it is resumable.
    resumptions: Option<mpsc::Receiver<Resumption>>,
    /// More stanzas wait for an acknowledgement than a session may hold.
    overflow: bool,
    /// The session went on at another cluster node: nothing is left to end here.
    moved: bool,
    /// Shared with the session's sender: whether stanzas may come written out already.
    writes_through: Arc<AtomicBool>,
    /// Messages still to be read as trees before the next is read raw again: a message that
    /// needed its tree after all was read twice, and a session whose messages all do (its
    /// account or its peers' archive them or have carbons on) should not pay that on every
    /// one.
    trees_before_raw: u32,
}

/// The three stanzas of RFC 6120 §8.
#[derive(Clone, Copy)]
enum StanzaKind {
    Message,
    Presence,
    Iq,
}

/// How a session begins on this node.
enum Start {
    /// A resource bound just now.
    Bound(Bound),
    /// A stream-managed session resumed here after another node held it (XEP-0198 §5).
    Moved(Box<Moved>, u32),
}

/// The next connection that resumes this session; never, for a session that cannot be resumed.
async fn next_resumption(rx: &mut Option<mpsc::Receiver<Resumption>>) -> Option<Resumption> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

enum Wake {
    Command(Option<SessionCommand>),
    Read(Result<(), Failure>),
    Resume(Box<Resumption>),
    Shutdown,
    Timer,
    /// The timer fired at a deadline that has moved on since.
    Early,
}

async fn established(server: &Server, mut conn: XmlConn, conn_id: u64, start: Start) {
    let jid = match &start {
        Start::Bound(bound) => bound.jid.clone(),
        Start::Moved(moved, _) => match FullJid::new(&moved.jid) {
            Ok(jid) => jid,
            Err(_) => return conn.close_with_error("internal-server-error", None).await,
        },
    };
    let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
    let (sender, writes_through) = SessionSender::writing_through(conn_id, tx);
    match server.sessions.bind(jid.clone(), sender).await {
        Ok(Some(old)) => old.command(SessionCommand::Replaced),
        Ok(None) => {}
        Err(TableError::Conflict) => return conn.close_with_error("conflict", None).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot bind");
            return conn.close_with_error("internal-server-error", None).await;
        }
    }
    let mut session = Session {
        server,
        conn,
        bare: jid.to_bare(),
        jid,
        conn_id,
        presence: presence::SessionPresence::default(),
        last_read: Instant::now(),
        ping: None,
        quiet: false,
        inactive: None,
        sm: None,
        resumptions: None,
        overflow: false,
        moved: false,
        writes_through,
        trees_before_raw: 0,
    };
    let arrived = match start {
        Start::Bound(bound) => {
            let mut bind = Element::bare("bind", ns::BIND);
            bind.append_child(modules::text_el("jid", ns::BIND, session.jid.as_str()));
            session
                .conn
                .queue(&stanza::iq_result(&bound.request, Some(bind)));
            info!("session started");
            Ok(())
        }
        Start::Moved(moved, h) => Box::pin(session.arrive(*moved, h)).await,
    };
    let mut result = match arrived {
        Ok(()) => match session.conn.flush().await {
            Ok(()) => session.run(&mut rx).await,
            Err(f) => f,
        },
        Err(f) => f,
    };
    // XEP-0198 §5: a resumable session whose connection dropped waits for the client to come
    // back, still bound and available, queueing what arrives meanwhile.
    while session.resumptions.is_some()
        && matches!(
            result,
            Failure::Eof | Failure::Io(_) | Failure::WriteTimeout
        )
    {
        info!(reason = %result, "connection lost; the session waits to be resumed");
        let Some(resumption) = Box::pin(session.hibernate(&mut rx)).await else {
            break;
        };
        result = match Box::pin(session.take_over(resumption, &mut rx)).await {
            Ok(()) => match session.conn.flush().await {
                Ok(()) => session.run(&mut rx).await,
                Err(f) => f,
            },
            Err(f) => f,
        };
    }
    Box::pin(session.end(&mut rx)).await;
    let Session { mut conn, .. } = session;
    Box::pin(finish(server, &mut conn, result)).await;
    info!("session ended");
}

impl Session<'_> {
    async fn run(&mut self, rx: &mut mpsc::Receiver<SessionCommand>) -> Failure {
        // Every poll of a waiting `changed()` takes the lock that all of the signal's waiters
        // share, and this loop would poll it on every wake: twice per message routed, from
        // every session at once. So it is polled once here, which registers the task to be
        // woken, and after that only once the signal's version has moved (an atomic read).
        let mut shutdown_signal = self.server.shutdown_signal();
        let moved = shutdown_signal.clone();
        let shutdown = shutdown_signal.changed();
        tokio::pin!(shutdown);
        let shutting_down = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())
        })
        .await;
        // One timer for the connection's life. A new one in every pass would be registered
        // with the runtime's timer wheel and taken out again twice per message routed (the
        // sender's pass and the recipient's). It fires at the deadline it was set to, and is
        // set again then if the deadline has moved on.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let (ping_after, ping_timeout) = idle_limits(self.server);
        // Bound now, and after a resumption on a connection of its own: messages can be
        // routed as they were read.
        self.conn.read_messages_raw(true);
        loop {
            let deadline = match &self.ping {
                None if !self.quiet => self.last_read + QUIET_AFTER.min(ping_after),
                None => self.last_read + ping_after,
                Some((_, sent)) => *sent + ping_timeout,
            };
            if timer.is_elapsed() || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            // Unbiased, so a busy queue cannot starve reading and the reverse.
            let wake = if shutting_down {
                Wake::Shutdown
            } else {
                tokio::select! {
                    cmd = rx.recv() => Wake::Command(cmd),
                    r = self.conn.read_and_parse() => Wake::Read(r),
                    Some(res) = next_resumption(&mut self.resumptions) => {
                        Wake::Resume(Box::new(res))
                    }
                    _ = &mut shutdown, if moved.has_changed().unwrap_or(true) => Wake::Shutdown,
                    _ = &mut timer => if Instant::now() >= deadline {
                        Wake::Timer
                    } else {
                        Wake::Early
                    },
                }
            };
            let step = match wake {
                Wake::Command(cmd) => self.on_command(cmd, rx),
                // Boxed, like the other rare or deep steps: a session's future lives as long as
                // the connection, and holding the largest step inline would cost every idle
                // connection kilobytes.
                Wake::Read(r) => match r {
                    Ok(()) => Box::pin(self.on_read()).await,
                    Err(f) => Err(f),
                },
                Wake::Shutdown => {
                    // What was queued before the shutdown (a room's goodbye, say) goes first.
                    self.wake_up();
                    while let Ok(SessionCommand::Stanza(el)) = rx.try_recv() {
                        self.write(&el.into_element());
                    }
                    Err(Failure::stream(
                        "system-shutdown",
                        "the server is shutting down",
                    ))
                }
                Wake::Timer => self.on_timer(),
                Wake::Early => Ok(()),
                // The client came back on a new connection before this one was seen to drop.
                Wake::Resume(res) => Box::pin(self.take_over(*res, rx)).await,
            };
            if let Err(f) = step {
                return f;
            }
            if self.overflow {
                return Failure::stream(
                    "policy-violation",
                    "too many stanzas are waiting for an acknowledgement",
                );
            }
            if let Some(r) = self.sm.as_mut().and_then(Sm::request) {
                self.conn.queue(&r);
            }
            self.note_writing_through();
            if let Err(f) = self.conn.flush().await {
                return f;
            }
        }
    }

    /// Queues what other parts of the server sent, draining a burst before one write.
    fn on_command(
        &mut self,
        mut cmd: Option<SessionCommand>,
        rx: &mut mpsc::Receiver<SessionCommand>,
    ) -> Result<(), Failure> {
        for drained in 1..=256 {
            match cmd {
                Some(SessionCommand::Stanza(el)) => self.deliver(el),
                Some(SessionCommand::Replaced) => {
                    return Err(Failure::stream(
                        "conflict",
                        "replaced by a new connection for the same resource",
                    ));
                }
                Some(SessionCommand::Close(reason)) => {
                    return Err(Failure::Stream {
                        condition: reason.condition(),
                        text: None,
                    });
                }
                None => return Err(Failure::stream("internal-server-error", "session removed")),
            }
            if drained == 256 {
                // The rest waits for the next turn of the loop, after this write.
                break;
            }
            cmd = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(_) => return Ok(()),
            };
        }
        Ok(())
    }

    async fn on_read(&mut self) -> Result<(), Failure> {
        self.last_read = Instant::now();
        self.ping = None;
        self.quiet = false;
        while let Some(ev) = self.conn.take_event() {
            match ev {
                StreamEvent::Stanza(el) => {
                    if self.trees_before_raw > 0 && el.name() == "message" {
                        self.trees_before_raw -= 1;
                        if self.trees_before_raw == 0 {
                            self.conn.read_messages_raw(true);
                        }
                    }
                    self.on_stanza(el).await?
                }
                StreamEvent::Message(m) => self.on_raw_message(m).await?,
                StreamEvent::Close => return Err(Failure::Closed),
                StreamEvent::Open(_) => {
                    return Err(Failure::stream("invalid-xml", "unexpected stream header"));
                }
            }
        }
        Ok(())
    }

    fn on_timer(&mut self) -> Result<(), Failure> {
        if !self.quiet {
            self.quiet = true;
            self.conn.release_buffers();
        }
        let (ping_after, _) = idle_limits(self.server);
        if self.ping.is_none() && self.last_read.elapsed() < ping_after {
            // Woken only to release buffers; the ping is not due yet.
            return Ok(());
        }
        if self.ping.is_some() {
            return Err(Failure::stream("connection-timeout", "no answer to ping"));
        }
        let id = format!("ping-{}", uuid::Uuid::new_v4().simple());
        let mut iq = stanza::build(
            "iq",
            &[
                ("type", "get"),
                ("id", &id),
                ("from", &self.server.domain),
                ("to", self.jid.as_str()),
            ],
        );
        iq.append_child(Element::bare("ping", modules::ping::NS));
        self.write(&iq);
        self.ping = Some((id, Instant::now()));
        Ok(())
    }

    fn reply_error(&mut self, stanza: &Element, err: StanzaError) {
        if let Some(reply) = stanza::error_reply(stanza, &err) {
            self.write(&reply);
        }
    }

    /// Tells the session's sender whether what it gets goes straight to the client: not while
    /// the client is inactive, since what it holds back is chosen by looking into the trees.
    /// (Stream management keeps the written bytes, so it takes stanzas written out as well.)
    fn note_writing_through(&self) {
        let through = self.inactive.is_none();
        // Read first: the flag is read for every stanza routed here, and changes only when
        // the client says it is inactive or active again.
        if self.writes_through.load(Ordering::Relaxed) != through {
            self.writes_through.store(through, Ordering::Relaxed);
        }
    }

    /// Writes a stanza to the client, counting it for stream management.
    fn write(&mut self, el: &Element) {
        let written = self.conn.queue(el);
        if let Some(sm) = self.sm.as_mut() {
            Self::keep(sm, &mut self.overflow, written.to_vec());
        }
    }

    /// Keeps a stanza's bytes until the client acknowledges it; one the writer refused was
    /// not sent and is not counted.
    fn keep(sm: &mut Sm, overflow: &mut bool, written: Vec<u8>) {
        if !written.is_empty() && !sm.sent(written) {
            *overflow = true;
        }
    }

    /// Stream management's own elements (XEP-0198): enabling, ack requests and acks.
    fn on_sm(&mut self, el: &Element) -> Result<(), Failure> {
        match el.name() {
            "enable" if self.sm.is_none() => {
                let resumable = matches!(el.attr("resume"), Some("true" | "1"));
                let sm = Sm::new(resumable);
                if let Some(id) = &sm.id {
                    let (tx, rx) = mpsc::channel(1);
                    self.server.resumable.register(id, self.bare.clone(), tx);
                    self.resumptions = Some(rx);
                }
                self.conn
                    .queue(&sm.enabled(self.server.config.limits.resume_seconds));
                self.sm = Some(sm);
            }
            "enable" => {
                self.conn.queue(&sm::failed("unexpected-request"));
            }
            "r" => {
                if let Some(sm) = &self.sm {
                    self.conn.queue(&sm.ack());
                }
            }
            "a" => {
                let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                if let (Some(sm), Some(h)) = (self.sm.as_mut(), h) {
                    sm.acknowledge(h)
                        .map_err(|e| Failure::stream("undefined-condition", e.to_string()))?;
                }
            }
            other => {
                return Err(Failure::stream(
                    "unsupported-stanza-type",
                    format!("<{other}/> is not a stream management element"),
                ));
            }
        }
        Ok(())
    }

    /// A new connection takes over (XEP-0198 §5): the old one, if still there, is dropped;
    /// the client learns how much we handled and gets what it has not. A resumption on
    /// another node takes the session there.
    async fn take_over(
        &mut self,
        res: Resumption,
        rx: &mut mpsc::Receiver<SessionCommand>,
    ) -> Result<(), Failure> {
        let (conn, h) = match res {
            Resumption::Here { conn, h } => (*conn, h),
            Resumption::Elsewhere { reply } => return Err(self.move_away(reply, rx).await),
        };
        let Some(sm) = self.sm.as_mut() else {
            return Ok(());
        };
        self.conn = conn;
        sm.acknowledge(h)
            .map_err(|e| Failure::stream("undefined-condition", e.to_string()))?;
        self.conn.queue(&sm.resumed());
        for xml in sm.pending() {
            self.conn.queue_written(xml);
        }
        self.last_read = Instant::now();
        self.ping = None;
        info!("session resumed");
        Ok(())
    }

    /// Hands the session's state to the node the client resumed it at, and leaves the session
    /// table without telling contacts: the resource lives on there. What waits for the client
    /// goes along in order: unacknowledged, held back while inactive, not yet written.
    async fn move_away(
        &mut self,
        reply: oneshot::Sender<Moved>,
        rx: &mut mpsc::Receiver<SessionCommand>,
    ) -> Failure {
        let resource = self.server.sessions.resource(&self.jid);
        if let Err(e) = self.server.sessions.unbind(&self.jid, self.conn_id).await {
            tracing::warn!(error = %e, "cannot unbind a session moving away");
        }
        self.moved = true;
        let Some(sm) = self.sm.as_mut() else {
            return Failure::Closed;
        };
        let Some(id) = sm.id.clone() else {
            return Failure::Closed;
        };
        self.server.resumable.forget(&id);
        let (inbound, acked, mut unacked) = sm.export();
        let held = self
            .inactive
            .take()
            .map(|mut h| h.take())
            .unwrap_or_default();
        let mut queued = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            if let SessionCommand::Stanza(el) = cmd {
                queued.push(el.into_element());
            }
        }
        unacked.extend(
            held.into_iter()
                .chain(queued)
                .filter_map(|el| String::from_utf8(writer::element(&el)).ok()),
        );
        let (interested, carbons) = resource
            .as_ref()
            .map_or((false, false), |r| (r.interested, r.carbons));
        let presence = resource.and_then(|r| {
            let p = r.presence?;
            Some((String::from_utf8(writer::element(&p)).ok()?, r.priority))
        });
        let moved = Moved {
            jid: self.jid.to_string(),
            id,
            inbound,
            acked,
            unacked,
            presence,
            initial_done: self.presence.initial_done,
            offline_done: self.presence.offline_done,
            directed: self.presence.directed.drain().collect(),
            interested,
            carbons,
        };
        info!("session moved to another node");
        if let Err(moved) = reply.send(moved) {
            abandon(self.server, moved).await;
        }
        Failure::stream("conflict", "the session was resumed on another connection")
    }

    /// The first steps of a session that moved here (XEP-0198 §5): the state it had, the
    /// client told how much was handled and sent what it has not acknowledged.
    async fn arrive(&mut self, moved: Moved, h: u32) -> Result<(), Failure> {
        let mut sm = Sm::restore(&moved);
        if let Some((xml, priority)) = &moved.presence
            && let Ok(p) = xml.parse::<Element>()
        {
            let _ = self
                .server
                .sessions
                .set_presence(&self.jid, self.conn_id, Some((Arc::new(p), *priority)))
                .await;
        }
        if moved.interested {
            let _ = self
                .server
                .sessions
                .set_interested(&self.jid, self.conn_id)
                .await;
        }
        if moved.carbons {
            let _ = self
                .server
                .sessions
                .set_carbons(&self.jid, self.conn_id, true)
                .await;
        }
        self.presence = presence::SessionPresence {
            available: moved.presence.is_some(),
            initial_done: moved.initial_done,
            offline_done: moved.offline_done,
            directed: moved.directed.into_iter().collect(),
        };
        let (tx, rx) = mpsc::channel(1);
        self.server
            .resumable
            .register(&moved.id, self.bare.clone(), tx);
        self.resumptions = Some(rx);
        let acknowledged = sm.acknowledge(h);
        self.sm = Some(sm);
        acknowledged.map_err(|e| Failure::stream("undefined-condition", e.to_string()))?;
        if let Some(sm) = self.sm.as_mut() {
            self.conn.queue(&sm.resumed());
            for xml in sm.pending() {
                self.conn.queue_written(xml);
            }
        }
        info!("session resumed from another node");
        // Messages that reached the account while no node had the session waited offline.
        if self.presence.offline_done {
            for el in offline::take(
                self.server,
                self.bare.node().map(|n| n.as_str()).unwrap_or_default(),
            )
            .await
            {
                self.write(&el);
            }
        }
        Ok(())
    }

    /// Waits, without a connection, for the client to resume; what arrives meanwhile joins the
    /// unacknowledged queue, to be sent on the new connection. None: it did not come back in
    /// time (or the server stops, or too much arrived).
    async fn hibernate(&mut self, rx: &mut mpsc::Receiver<SessionCommand>) -> Option<Resumption> {
        let wait = Duration::from_secs(self.server.config.limits.resume_seconds);
        let deadline = Instant::now() + wait;
        let mut shutdown = self.server.shutdown_signal();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(SessionCommand::Stanza(out)) => {
                        let mut xml = Vec::new();
                        out.write_into(&mut xml);
                        let el = out.into_element();
                        let sm = self.sm.as_mut()?;
                        if !xml.is_empty() && !sm.sent(xml) {
                            return None;
                        }
                        // The phone may be asleep: its app server can wake it (XEP-0357).
                        push::notify(self.server, &self.bare, &el).await;
                    }
                    _ => return None,
                },
                res = next_resumption(&mut self.resumptions) => return res,
                _ = shutdown.changed() => return None,
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Writes a stanza for the client, or holds it while the client is inactive.
    fn deliver(&mut self, out: QueuedStanza) {
        if self.inactive.is_none() {
            // No tree is needed: a shared stanza is written without a copy of its own, and
            // stream management keeps the bytes (those written out already without a copy).
            let written = self.conn.queue_stanza(&out);
            if let Some(sm) = self.sm.as_mut() {
                let xml = match out {
                    QueuedStanza::Written(xml) => *xml,
                    _ => written.to_vec(),
                };
                Self::keep(sm, &mut self.overflow, xml);
            }
            return;
        }
        let el = out.into_element();
        let Some(held) = self.inactive.as_mut() else {
            return self.write(&el);
        };
        if csi::can_wait(&el) {
            if let Some(flushed) = held.hold(el) {
                for h in &flushed {
                    self.write(h);
                }
            }
            return;
        }
        for h in &held.take() {
            self.write(h);
        }
        self.write(&el);
    }

    /// The client is active again (or going away): what was held goes out.
    fn wake_up(&mut self) {
        if let Some(mut held) = self.inactive.take() {
            for h in &held.take() {
                self.write(h);
            }
        }
    }

    /// A message read without its tree: sent on as its bytes where nothing on its way needs
    /// the tree ([`router::deliver_written`]), and otherwise built and handled as any stanza.
    async fn on_raw_message(&mut self, message: RawMessage) -> Result<(), Failure> {
        let el = match self.deliver_written(&message) {
            router::Written::Delivered => return Ok(()),
            router::Written::NeedsTree => message.into_element()?,
            router::Written::Refused(el) => el,
        };
        self.trees_before_raw = TREES_BEFORE_RAW;
        self.conn.read_messages_raw(false);
        self.on_stanza(el).await
    }

    /// What [`on_stanza`](Self::on_stanza) and [`on_message`](Self::on_message) would check
    /// of a message before routing it, for one that goes as its bytes: the parser has made
    /// sure it has a `to` and no `from`.
    fn deliver_written(&mut self, message: &RawMessage) -> router::Written {
        // No body can have more characters than the message has bytes.
        if message.len() > self.server.config.limits.max_body_chars {
            return router::Written::NeedsTree;
        }
        // Addressed in the normal form of the address, which the tree would be given.
        let to = match jid::parse(message.to()) {
            Ok(to) if to.as_str() == message.to() => to,
            _ => return router::Written::NeedsTree,
        };
        let written = router::deliver_written(self.server, &self.bare, &to, || {
            message.written(self.jid.as_str())
        });
        if matches!(written, router::Written::Delivered) {
            crate::metrics::stanza_in("message");
            if let Some(sm) = self.sm.as_mut() {
                sm.handled();
            }
        }
        written
    }

    async fn on_stanza(&mut self, mut el: Element) -> Result<(), Failure> {
        if el.has_ns(sm::NS) {
            return self.on_sm(&el);
        }
        if el.has_ns(csi::NS) {
            match el.name() {
                "inactive" => {
                    self.inactive.get_or_insert_with(csi::Held::default);
                }
                "active" => self.wake_up(),
                other => {
                    return Err(Failure::stream(
                        "unsupported-stanza-type",
                        format!("<{other}/> is not a client state"),
                    ));
                }
            }
            return Ok(());
        }
        crate::metrics::stanza_in(el.name());
        if let Some(sm) = self.sm.as_mut() {
            sm.handled();
        }
        let kind = match el.name() {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            "iq" => StanzaKind::Iq,
            other => {
                return Err(Failure::stream(
                    "unsupported-stanza-type",
                    format!("<{other}/> is not a stanza"),
                ));
            }
        };
        if !el.has_ns(ns::CLIENT) {
            return Err(Failure::stream(
                "invalid-namespace",
                "stanzas must be in jabber:client",
            ));
        }
        // RFC 6120 §8.1.2.1: a client may only send from its own JID; the server stamps it.
        if let Some(from) = el.attr("from") {
            let own = jid::parse(from).is_ok_and(|f| match f.try_as_full() {
                Ok(full) => *full == self.jid,
                Err(bare) => *bare == self.bare,
            });
            if !own {
                return Err(Failure::stream(
                    "invalid-from",
                    "stanzas must come from your own JID",
                ));
            }
        }
        stanza::set_attr(&mut el, "from", self.jid.as_str());
        let to = match el.attr("to").map(jid::parse) {
            None => None,
            Some(Ok(to)) => Some(to),
            Some(Err(_)) => {
                self.reply_error(&el, StanzaError::jid_malformed());
                return Ok(());
            }
        };
        match kind {
            StanzaKind::Message => self.on_message(el, to).await,
            StanzaKind::Presence => self.on_presence(el, to).await,
            StanzaKind::Iq => self.on_iq(el, to).await,
        }
        Ok(())
    }

    async fn on_message(&mut self, mut el: Element, to: Option<Jid>) {
        let max = self.server.config.limits.max_body_chars;
        if el
            .children()
            .filter(|c| c.is("body", ns::CLIENT))
            .any(|b| b.texts().map(|t| t.chars().count()).sum::<usize>() > max)
        {
            return self.reply_error(
                &el,
                StanzaError::policy_violation()
                    .with_text(format!("message body over {max} characters")),
            );
        }
        // RFC 6121 §8.5.2: a message without 'to' is for the sender's own bare JID.
        let to = to.unwrap_or_else(|| Jid::from(self.bare.clone()));
        // Most clients write the address in its normal form already.
        if el.attr("to") != Some(to.as_str()) {
            stanza::set_attr(&mut el, "to", to.as_str());
        }
        // What the sender's account says of blocking, archiving and carbons, in one lookup.
        let account = self.server.sessions.summary(&self.bare);
        if blocking::blocks_hinted(self.server, &self.bare, account.hints, &to).await {
            return self.reply_error(&el, blocking::blocked_error());
        }
        let archived = mam::archive_sent(self.server, &self.bare, account.hints, &el).await;
        let carbon = carbons::wanted(&account, &el).then(|| el.clone());
        router::route_from_session(self.server, el, to, &self.jid).await;
        // The session's next stanza (a query of its own archive, say) finds this message: a
        // query waits for the rows of every message numbered before it.
        if let Some(pending) = archived {
            pending.id().await;
        }
        if let Some(msg) = carbon {
            carbons::copy(
                self.server,
                &self.bare,
                "sent",
                &msg,
                std::slice::from_ref(&self.jid),
            );
        }
    }

    async fn on_presence(&mut self, el: Element, to: Option<Jid>) {
        if let Some(to) = &to
            && blocking::blocks(self.server, &self.bare, to).await
        {
            // XEP-0191 §3.5: presence to a blocked entity is not sent.
            return;
        }
        let mut to_self = Vec::new();
        let result = presence::outbound(
            self.server,
            &mut self.presence,
            &self.jid,
            self.conn_id,
            el.clone(),
            &mut to_self,
        )
        .await;
        for s in &to_self {
            self.write(s);
        }
        if let Err(e) = result {
            self.reply_error(&el, e);
        }
    }

    async fn on_iq(&mut self, el: Element, to: Option<Jid>) {
        let kind = stanza::stanza_type(&el).to_owned();
        if !matches!(kind.as_str(), "get" | "set" | "result" | "error") || el.attr("id").is_none() {
            return self.reply_error(
                &el,
                StanzaError::bad_request().with_text("iq needs an id and a valid type"),
            );
        }
        let own_bare = self.bare.clone();
        let target = match &to {
            None => Some(IqTarget::Account(own_bare.clone())),
            Some(t)
                if t.node().is_none()
                    && t.resource().is_none()
                    && self.server.is_local_domain(t.domain().as_str()) =>
            {
                Some(IqTarget::Server)
            }
            Some(t) if t.resource().is_none() && t.to_bare() == own_bare => {
                Some(IqTarget::Account(own_bare.clone()))
            }
            Some(_) => None,
        };
        let Some(target) = target else {
            let to = to.unwrap_or_else(|| Jid::from(own_bare.clone()));
            if blocking::blocks(self.server, &own_bare, &to).await {
                return self.reply_error(&el, blocking::blocked_error());
            }
            return router::route_from_session(self.server, el, to, &self.jid).await;
        };
        if kind == "result" || kind == "error" {
            if self
                .ping
                .as_ref()
                .is_some_and(|(id, _)| Some(id.as_str()) == el.attr("id"))
            {
                self.ping = None;
            }
            if target == IqTarget::Server {
                pep::notify::answer(self.server, &self.jid, &el).await;
            }
            return;
        }
        let payload = stanza::iq_payload(&el);
        if payload.is_some_and(|p| p.is("session", ns::SESSION)) {
            return self.write(&stanza::iq_result(&el, None));
        }
        if payload.is_some_and(|p| p.is("bind", ns::BIND)) {
            return self.reply_error(&el, StanzaError::not_allowed().with_text("already bound"));
        }
        let replies = modules::handle_iq(self.server, &self.jid, Some(self.conn_id), target, &el);
        for reply in replies.await {
            self.write(&reply);
        }
    }

    /// Leaves the session table and hands on what was queued for this session but not written,
    /// so that no stanza disappears with the connection.
    async fn end(&mut self, rx: &mut mpsc::Receiver<SessionCommand>) {
        if self.moved {
            return;
        }
        let mut ignored = Vec::new();
        presence::go_unavailable(
            self.server,
            &mut self.presence,
            &self.jid,
            self.conn_id,
            None,
            &mut ignored,
        )
        .await;
        if let Err(e) = self.server.sessions.unbind(&self.jid, self.conn_id).await {
            tracing::warn!(error = %e, "cannot unbind");
        }
        // What the client never acknowledged (XEP-0198 §5: not delivered), then what never
        // reached it, in that order: messages to its other resources or offline storage, iq
        // requests back to their senders with an error.
        let unacked = match self.sm.as_mut() {
            Some(sm) => {
                if let Some(id) = &sm.id {
                    self.server.resumable.forget(id);
                }
                sm.take()
            }
            None => Default::default(),
        };
        rx.close();
        let mut queued = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            if let SessionCommand::Stanza(el) = cmd {
                queued.push(el.into_element());
            }
        }
        for el in unacked.into_iter().chain(queued) {
            router::redeliver(self.server, el).await;
        }
    }
}

/// A moved session that reached nobody: like a session not resumed in time, its contacts
/// learn it is gone and its stanzas are routed again (other resources, offline storage, or an
/// error to the sender).
pub async fn abandon(server: &Server, moved: Moved) {
    if moved.presence.is_some()
        && let Ok(jid) = FullJid::new(&moved.jid)
    {
        presence::vanished(server, &jid).await;
    }
    for xml in moved.unacked {
        if let Ok(el) = xml.parse::<Element>() {
            router::redeliver(server, el).await;
        }
    }
}
