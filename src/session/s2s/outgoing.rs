//! An outgoing link to a peer server: finding it, opening the stream, STARTTLS, authenticating
//! our domain (SASL EXTERNAL when the peer accepts our certificate, else Server Dialback), then
//! writing the stanzas routed to the peer until the link is idle.

use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};

use super::{Pair, Pending, VerifyRequest, resolve};
use crate::router;
use crate::server::Server;
use crate::session::conn::{Failure, Socket, XmlConn};
use crate::stanza;
use crate::stream::parser::{ParserLimits, StreamEvent};
use crate::stream::{ns, writer};

/// Opening the stream through authentication must finish in this time.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts before what is queued is bounced.
const ATTEMPTS: u32 = 3;
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("no address found")]
    NoAddress,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Stream(#[from] Failure),
    #[error("the peer does not offer TLS, and s2s.require_tls is on")]
    NoTls,
    #[error("the peer's certificate does not verify, and s2s.dialback is off")]
    Untrusted,
    #[error("the peer refused us: {0}")]
    Refused(String),
    #[error("the server is shutting down")]
    Shutdown,
}

impl LinkError {
    /// The stanza error the local senders get (RFC 6120 §8.3.3.17, §8.3.3.18).
    fn condition(&self) -> &'static str {
        match self {
            LinkError::Timeout => "remote-server-timeout",
            _ => "remote-server-not-found",
        }
    }
}

/// What a link's task receives.
pub struct Queues {
    pub stanzas: mpsc::Receiver<Box<Element>>,
    pub verify: mpsc::Receiver<VerifyRequest>,
}

/// An authenticated stream to the peer.
struct Link {
    conn: XmlConn,
    pending: Pending,
    /// The peer may send to us over it too (XEP-0288).
    bidi: bool,
}

/// What becomes of the stanzas still queued when a link's task ends.
#[derive(Clone, Copy)]
enum Leftovers {
    /// They arrived while an idle link was closing: through the router again, to a new link.
    Reroute,
    /// The peer cannot be reached, or the server stops.
    Bounce(&'static str),
}

/// Why an established link ended.
enum Ended {
    Idle,
    Shutdown,
    Lost(String),
}

/// The task of one link: connects (with retries), writes, and bounces what it could not send.
pub async fn run(server: Arc<Server>, pair: Pair, id: u64, mut queues: Queues) {
    let span = info_span!("s2s_out", local = %pair.local, remote = %pair.remote);
    async move {
        let _counted = crate::metrics::connection("s2s_out");
        let Some(federation) = server.federation.as_ref() else {
            return;
        };
        let mut shutdown = server.shutdown_signal();
        let mut failures = 0;
        let leftovers = loop {
            let attempt = tokio::select! {
                r = connect(&server, &pair, &mut queues.verify) => r,
                _ = shutdown.changed() => Err(LinkError::Shutdown),
            };
            match attempt {
                Ok(link) => {
                    failures = 0;
                    federation.mark_reachable(&pair.remote);
                    info!("link up");
                    match established(&server, &pair, link, &mut queues).await {
                        Ended::Idle => debug!("link idle"),
                        Ended::Shutdown => break Leftovers::Bounce("remote-server-timeout"),
                        Ended::Lost(reason) => {
                            info!(%reason, "link lost");
                            if !queues.stanzas.is_empty() {
                                continue;
                            }
                        }
                    }
                    break Leftovers::Reroute;
                }
                Err(e) => {
                    failures += 1;
                    info!(error = %e, attempt = failures, "cannot reach the peer");
                    if matches!(e, LinkError::Shutdown) {
                        break Leftovers::Bounce(e.condition());
                    }
                    if failures >= ATTEMPTS {
                        federation.mark_unreachable(&pair.remote, e.condition());
                        break Leftovers::Bounce(e.condition());
                    }
                    tokio::time::sleep(Duration::from_secs(1 << (failures - 1))).await;
                }
            }
        };
        federation.remove_link(&pair, id);
        queues.stanzas.close();
        while let Ok(s) = queues.stanzas.try_recv() {
            match leftovers {
                Leftovers::Reroute => router::route(&server, *s).await,
                Leftovers::Bounce(condition) => super::bounce(&server, &s, condition).await,
            }
        }
    }
    .instrument(span)
    .await
}

/// Tries each place the peer may be, in order.
async fn connect(
    server: &Server,
    pair: &Pair,
    verify: &mut mpsc::Receiver<VerifyRequest>,
) -> Result<Link, LinkError> {
    let Some(federation) = server.federation.as_ref() else {
        return Err(LinkError::NoAddress);
    };
    let resolver = federation.resolver();
    let mut last = LinkError::NoAddress;
    for target in resolve::targets(resolver, &server.config.s2s.routes, &pair.remote).await {
        for addr in resolve::addresses(resolver, &target).await {
            debug!(%addr, direct_tls = target.direct_tls, "connecting");
            let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    last = LinkError::Connect(e);
                    continue;
                }
                Err(_) => {
                    last = LinkError::Timeout;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let negotiation = negotiate(server, pair, tcp, target.direct_tls, verify);
            match tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiation).await {
                Ok(Ok(link)) => return Ok(link),
                Ok(Err(e)) => last = e,
                Err(_) => last = LinkError::Timeout,
            }
        }
    }
    Err(last)
}

async fn tls_connect(
    server: &Server,
    pair: &Pair,
    tcp: TcpStream,
    direct: bool,
) -> Result<XmlConn, LinkError> {
    let Some(federation) = server.federation.as_ref() else {
        return Err(LinkError::NoTls);
    };
    let config = if direct {
        let mut c = (*federation.tls.connector).clone();
        c.alpn_protocols = vec![b"xmpp-server".to_vec()];
        Arc::new(c)
    } else {
        federation.tls.connector.clone()
    };
    let name = rustls::pki_types::ServerName::try_from(pair.remote.clone())
        .map_err(|_| LinkError::Refused("not a DNS name".into()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| LinkError::Stream(Failure::Io(e)))?;
    Ok(XmlConn::new(
        Socket::TlsClient(Box::new(tls)),
        limits(server),
    ))
}

fn limits(server: &Server) -> ParserLimits {
    ParserLimits {
        max_stanza_bytes: server.config.limits.max_stanza_bytes,
        max_depth: MAX_DEPTH,
    }
}

/// Opens the stream and authenticates (RFC 6120 §5, §6; XEP-0178; XEP-0220).
async fn negotiate(
    server: &Server,
    pair: &Pair,
    tcp: TcpStream,
    direct_tls: bool,
    verify: &mut mpsc::Receiver<VerifyRequest>,
) -> Result<Link, LinkError> {
    let Some(federation) = server.federation.as_ref() else {
        return Err(LinkError::NoAddress);
    };
    let s2s = &server.config.s2s;
    let mut conn = if direct_tls {
        tls_connect(server, pair, tcp, true).await?
    } else {
        XmlConn::new(Socket::Plain(tcp), limits(server))
    };
    let mut authenticated = false;
    let mut bidi = false;
    loop {
        let header = writer::server_stream_header(&pair.local, &pair.remote, None);
        conn.send_bytes(header.as_bytes()).await?;
        conn.header_sent = true;
        let stream_id = match conn.next_event().await? {
            StreamEvent::Open(h) => h.id.unwrap_or_default(),
            _ => return Err(Failure::stream("bad-format", "expected a stream header").into()),
        };
        let features = conn.next_stanza().await?;
        refused_by_stream_error(&features)?;
        if !features.is("features", ns::STREAM) {
            return Err(Failure::stream("bad-format", "expected stream features").into());
        }
        if authenticated {
            return Ok(Link {
                conn,
                pending: Pending::default(),
                bidi,
            });
        }
        if !conn.is_tls() {
            if features.has_child("starttls", ns::TLS) {
                conn.send(&Element::bare("starttls", ns::TLS)).await?;
                let answer = conn.next_stanza().await?;
                if !answer.is("proceed", ns::TLS) {
                    return Err(LinkError::Refused("STARTTLS failed".into()));
                }
                let Socket::Plain(tcp) = conn.socket else {
                    return Err(LinkError::NoTls);
                };
                conn = tls_connect(server, pair, tcp, false).await?;
                continue;
            }
            if s2s.require_tls {
                return Err(LinkError::NoTls);
            }
        }
        let certificate_ok = conn.is_tls()
            && federation
                .tls
                .verifies(conn.socket.peer_certificates(), &pair.remote);
        if !certificate_ok && !s2s.dialback {
            return Err(LinkError::Untrusted);
        }
        if !bidi && features.has_child("bidi", ns::BIDI_FEATURE) {
            // XEP-0288: one stream for both directions, asked for before authentication.
            conn.queue(&Element::bare("bidi", ns::BIDI));
            bidi = true;
        }
        if offers_external(&features) {
            let mut auth = Element::bare("auth", ns::SASL);
            stanza::set_attr(&mut auth, "mechanism", "EXTERNAL");
            // XEP-0178 §3: "=" asks for the identity in our certificate.
            auth.append_text("=");
            conn.send(&auth).await?;
            let answer = conn.next_stanza().await?;
            refused_by_stream_error(&answer)?;
            if answer.is("success", ns::SASL) {
                debug!("authenticated by SASL EXTERNAL");
                conn.restart();
                authenticated = true;
                continue;
            }
            debug!("SASL EXTERNAL refused; trying dialback");
        }
        if !s2s.dialback {
            return Err(LinkError::Refused("SASL EXTERNAL failed".into()));
        }
        let pending = dialback(server, pair, &mut conn, &stream_id, verify).await?;
        return Ok(Link {
            conn,
            pending,
            bidi,
        });
    }
}

fn offers_external(features: &Element) -> bool {
    features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
    })
}

fn refused_by_stream_error(el: &Element) -> Result<(), LinkError> {
    if el.is("error", ns::STREAM) {
        let condition = el
            .children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        return Err(LinkError::Refused(format!("stream error {condition}")));
    }
    Ok(())
}

/// XEP-0220 §2.1: sends our key and waits for the peer's verdict, meanwhile sending the
/// verifications other streams ask of the peer.
async fn dialback(
    server: &Server,
    pair: &Pair,
    conn: &mut XmlConn,
    stream_id: &str,
    verify: &mut mpsc::Receiver<VerifyRequest>,
) -> Result<Pending, LinkError> {
    let Some(federation) = server.federation.as_ref() else {
        return Err(LinkError::NoAddress);
    };
    if stream_id.is_empty() {
        return Err(LinkError::Refused("no stream id for dialback".into()));
    }
    let mut result = Element::bare("result", ns::DIALBACK);
    stanza::set_attr(&mut result, "from", &pair.local);
    stanza::set_attr(&mut result, "to", &pair.remote);
    result.append_text(federation.secret.key(&pair.remote, &pair.local, stream_id));
    conn.queue_dialback(&result);
    let mut pending = Pending::default();
    loop {
        conn.flush().await?;
        tokio::select! {
            Some(request) = verify.recv() => pending.send(conn, pair, request),
            r = conn.read_and_parse() => {
                r?;
                while let Some(ev) = conn.take_event() {
                    let el = match ev {
                        StreamEvent::Stanza(el) => el,
                        // Only a client's stream reads messages without their trees.
                        StreamEvent::Message(m) => m.into_element().map_err(Failure::from)?,
                        StreamEvent::Close => return Err(Failure::Closed.into()),
                        StreamEvent::Open(_) => {
                            return Err(Failure::stream("invalid-xml", "unexpected stream header").into());
                        }
                    };
                    refused_by_stream_error(&el)?;
                    if el.is("verify", ns::DIALBACK) {
                        pending.answer(&el);
                    } else if el.is("result", ns::DIALBACK) {
                        return match stanza::stanza_type(&el) {
                            "valid" => {
                                debug!("authenticated by dialback");
                                Ok(pending)
                            }
                            other => Err(LinkError::Refused(format!("dialback {other}"))),
                        };
                    } else {
                        debug!(name = el.name(), "ignoring while waiting for dialback");
                    }
                }
            }
        }
    }
}

/// Writes what is routed to the peer, and the dialback verifications other streams ask of it,
/// until the link is idle, lost, or the server stops.
async fn established(server: &Server, pair: &Pair, link: Link, queues: &mut Queues) -> Ended {
    let Link {
        mut conn,
        mut pending,
        bidi,
    } = link;
    let idle = Duration::from_secs(server.config.s2s.idle_seconds);
    let mut shutdown = server.shutdown_signal();
    let mut last_activity = Instant::now();
    loop {
        tokio::select! {
            s = queues.stanzas.recv() => {
                let Some(mut s) = s else { return Ended::Idle };
                last_activity = Instant::now();
                // A burst is written at once, up to a bound so that reading is not starved.
                for _ in 0..256 {
                    conn.queue(&stanza::renamespace(*s, ns::CLIENT, ns::SERVER));
                    s = match queues.stanzas.try_recv() {
                        Ok(next) => next,
                        Err(_) => break,
                    };
                }
            }
            Some(request) = queues.verify.recv() => {
                last_activity = Instant::now();
                pending.send(&mut conn, pair, request);
            }
            r = conn.read_and_parse() => {
                if let Err(f) = r {
                    return Ended::Lost(f.to_string());
                }
                last_activity = Instant::now();
                while let Some(ev) = conn.take_event() {
                    match ev {
                        StreamEvent::Stanza(el) if el.is("verify", ns::DIALBACK) => {
                            if el.attr("type").is_some() {
                                pending.answer(&el);
                            } else {
                                conn.queue_dialback(&super::verify_answer(server, &el));
                            }
                        }
                        StreamEvent::Stanza(el)
                            if bidi && matches!(el.name(), "message" | "presence" | "iq") =>
                        {
                            // The peer's stanzas over our stream: only from the domain we
                            // connected to and authenticated.
                            if let Err(f) = super::receive(server, |d| d == pair.remote, el).await {
                                if let Failure::Stream { condition, text } = &f {
                                    conn.close_with_error(condition, text.as_deref()).await;
                                }
                                return Ended::Lost(f.to_string());
                            }
                        }
                        StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                            let condition = el.children().next().map(|c| c.name().to_owned());
                            return Ended::Lost(format!("stream error {}", condition.unwrap_or_default()));
                        }
                        StreamEvent::Stanza(el) => {
                            debug!(name = el.name(), "ignoring an element on an outgoing stream");
                        }
                        // Only a client's stream reads messages without their trees: a
                        // server's never gives one.
                        StreamEvent::Message(_) => {
                            debug!("ignoring a message read without its tree");
                        }
                        StreamEvent::Close => {
                            conn.close().await;
                            return Ended::Lost("closed by the peer".into());
                        }
                        StreamEvent::Open(_) => {
                            conn.close_with_error("invalid-xml", None).await;
                            return Ended::Lost("unexpected stream header".into());
                        }
                    }
                }
            }
            _ = shutdown.changed() => {
                conn.close().await;
                return Ended::Shutdown;
            }
            _ = tokio::time::sleep_until(last_activity + idle) => {
                if pending.is_empty() {
                    conn.close().await;
                    return Ended::Idle;
                }
                last_activity = Instant::now();
            }
        }
        if let Err(f) = conn.flush().await {
            return Ended::Lost(f.to_string());
        }
    }
}
