//! An incoming server-to-server stream: STARTTLS, then the peer authenticates each domain it
//! sends from, by SASL EXTERNAL with its certificate (RFC 6120 §6, XEP-0178) or by Server
//! Dialback (XEP-0220), several domains over one stream if it likes (piggybacking). Only
//! stanzas from an authenticated domain to a domain we host are routed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use minidom::Element;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};

use super::{Pair, Pending, hosts, outgoing};
use crate::jid;
use crate::router;
use crate::server::Server;
use crate::session::conn::{self, Failure, Socket, XmlConn};
use crate::stanza::{self, StanzaError};
use crate::stream::parser::{StreamEvent, StreamHeader};
use crate::stream::{ns, writer};

/// A peer must authenticate a domain within this time of connecting.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_DEPTH: usize = 32;
/// Dialback verifications one stream may have in flight.
const MAX_PENDING: usize = 16;

/// The outcome of asking a domain's authoritative server about a key.
struct Verdict {
    remote: String,
    local: String,
    valid: bool,
}

struct Incoming<'a> {
    server: &'a Server,
    federation: &'a super::Federation,
    conn: XmlConn,
    /// Our id of the current stream, which dialback keys are bound to.
    stream_id: String,
    header: StreamHeader,
    /// The domain of ours the peer addressed.
    local: String,
    /// Peer domains allowed as `from`.
    authenticated: HashSet<String>,
    sasl_done: bool,
    /// Dialback verifications we are waiting for on the peer's behalf.
    verifying: usize,
    verdicts: (mpsc::Sender<Verdict>, mpsc::Receiver<Verdict>),
    /// The peer asked to use this stream both ways (XEP-0288).
    bidi: bool,
    /// With `bidi`: this stream is our link to the peer, and these its queues.
    link: Option<(Pair, u64, outgoing::Queues)>,
    /// Verifications we sent over this stream as a link.
    pending: Pending,
}

/// A peer server's socket as an XML stream, with the configured limits.
fn peer_conn(server: &Server, socket: Socket) -> XmlConn {
    let limits = &server.config.limits;
    XmlConn::limited(
        socket,
        limits,
        MAX_DEPTH,
        ("s2s", limits.s2s_bytes_per_second),
    )
}

/// Serves one accepted connection on `listen.s2s` (or, `direct_tls`, on `listen.s2s_tls`)
/// until it ends.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let conn_id = server.next_conn_id();
    let span = info_span!("s2s_in", conn = conn_id, %peer, remote = tracing::field::Empty);
    async move {
        let _counted = crate::metrics::connection("s2s_in");
        let Some(federation) = server.federation.as_ref() else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let socket = if direct_tls {
            let acceptor = tokio_rustls::TlsAcceptor::from(federation.tls.direct_acceptor.clone());
            match tokio::time::timeout(NEGOTIATION_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Socket::Tls(Box::new(tls)),
                Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                Err(_) => return debug!("TLS handshake timed out"),
            }
        } else {
            Socket::Plain(tcp)
        };
        let mut session = Incoming {
            server: &server,
            federation,
            conn: peer_conn(&server, socket),
            stream_id: String::new(),
            header: StreamHeader::default(),
            local: server.domain.clone(),
            authenticated: HashSet::new(),
            sasl_done: false,
            verifying: 0,
            verdicts: mpsc::channel(MAX_PENDING),
            bidi: false,
            link: None,
            pending: Pending::default(),
        };
        let result = match session.open().await {
            Ok(()) => session.run().await,
            Err(f) => f,
        };
        session.finish(result).await;
    }
    .instrument(span)
    .await
}

impl Incoming<'_> {
    /// Reads the peer's stream header and answers with ours and the features (RFC 6120 §4.7).
    async fn open(&mut self) -> Result<(), Failure> {
        let header = match self.conn.next_event().await? {
            StreamEvent::Open(h) => h,
            _ => return Err(Failure::stream("bad-format", "expected a stream header")),
        };
        self.stream_id = uuid::Uuid::new_v4().simple().to_string();
        let to = header
            .to
            .as_deref()
            .and_then(|t| jid::normalize_domain(t).ok())
            .unwrap_or_else(|| self.server.domain.clone());
        let from = header
            .from
            .as_deref()
            .and_then(|f| jid::normalize_domain(f).ok());
        let reply =
            writer::server_stream_header(&to, from.as_deref().unwrap_or(""), Some(&self.stream_id));
        // A header without 'to' attribute: ours is still a well-formed answer.
        self.conn.queue_bytes(reply.as_bytes());
        self.conn.header_sent = true;
        if !hosts(self.server, &to) {
            return Err(conn::host_unknown());
        }
        conn::check_version(&header)?;
        self.local = to;
        self.header = header;
        let features = self.features();
        self.conn.queue_bytes(&writer::features(&features));
        self.conn.flush().await
    }

    fn features(&self) -> Vec<Element> {
        let s2s = &self.server.config.s2s;
        let mut features = Vec::new();
        if !self.conn.is_tls() {
            let mut starttls = Element::bare("starttls", ns::TLS);
            if s2s.require_tls {
                starttls.append_child(Element::bare("required", ns::TLS));
            }
            features.push(starttls);
            if s2s.require_tls {
                return features;
            }
        }
        if self.sasl_done {
            return features;
        }
        features.push(Element::bare("bidi", ns::BIDI_FEATURE));
        if self.peer_certificate_ok() {
            let mut mechanisms = Element::bare("mechanisms", ns::SASL);
            mechanisms.append_child(crate::modules::text_el("mechanism", ns::SASL, "EXTERNAL"));
            features.push(mechanisms);
        }
        if s2s.dialback {
            let mut dialback = Element::bare("dialback", ns::DIALBACK_FEATURE);
            dialback.append_child(Element::bare("errors", ns::DIALBACK_FEATURE));
            features.push(dialback);
        }
        features
    }

    /// The peer's header named a domain its certificate is valid for.
    fn peer_certificate_ok(&self) -> bool {
        let from = self
            .header
            .from
            .as_deref()
            .and_then(|f| jid::normalize_domain(f).ok());
        from.is_some_and(|from| self.certificate_covers(&from))
    }

    fn certificate_covers(&self, domain: &str) -> bool {
        self.conn.is_tls()
            && self
                .federation
                .tls
                .verifies(self.conn.socket.peer_certificates(), domain)
    }

    async fn run(&mut self) -> Failure {
        let mut shutdown = self.server.shutdown_signal();
        let idle = Duration::from_secs(self.server.config.s2s.idle_seconds.saturating_mul(2));
        let started = Instant::now();
        let mut last_read = Instant::now();
        loop {
            let deadline = if self.authenticated.is_empty() {
                started + NEGOTIATION_TIMEOUT
            } else {
                last_read + idle
            };
            let step = tokio::select! {
                r = self.conn.read_and_parse() => match r {
                    Ok(()) => {
                        last_read = Instant::now();
                        self.on_read().await
                    }
                    Err(f) => Err(f),
                },
                Some(verdict) = self.verdicts.1.recv() => {
                    self.on_verdict(verdict);
                    Ok(())
                }
                Some(out) = for_peer(&mut self.link) => {
                    match out {
                        ForPeer::Stanza(s) => {
                            self.conn.queue(&stanza::renamespace(*s, ns::CLIENT, ns::SERVER));
                        }
                        ForPeer::Verify(request) => {
                            if let Some((pair, _, _)) = &self.link {
                                self.pending.send(&mut self.conn, pair, request);
                            }
                        }
                    }
                    Ok(())
                }
                _ = shutdown.changed() => Err(Failure::stream("system-shutdown", "the server is shutting down")),
                _ = tokio::time::sleep_until(deadline) => Err(Failure::stream("connection-timeout", "idle")),
            };
            if let Err(f) = step {
                return f;
            }
            if let Err(f) = self.conn.flush().await {
                return f;
            }
        }
    }

    async fn on_read(&mut self) -> Result<(), Failure> {
        while let Some(ev) = self.conn.take_event() {
            match ev {
                StreamEvent::Stanza(el) => self.on_element(el).await?,
                // Only a client's stream reads messages without their trees.
                StreamEvent::Message(m) => self.on_element(m.into_element()?).await?,
                StreamEvent::Close => return Err(Failure::Closed),
                StreamEvent::Open(_) => {
                    return Err(Failure::stream("invalid-xml", "unexpected stream header"));
                }
            }
        }
        Ok(())
    }

    async fn on_element(&mut self, el: Element) -> Result<(), Failure> {
        if el.is("starttls", ns::TLS) {
            return self.starttls().await;
        }
        if el.is("auth", ns::SASL) {
            return self.sasl_external(&el).await;
        }
        if el.is("result", ns::DIALBACK) {
            return self.dialback_result(&el);
        }
        if el.is("verify", ns::DIALBACK) {
            // With a type it answers a request we made over this stream as a link.
            if el.attr("type").is_some() {
                self.pending.answer(&el);
            } else {
                self.conn
                    .queue_dialback(&super::verify_answer(self.server, &el));
            }
            return Ok(());
        }
        if el.is("bidi", ns::BIDI) {
            debug!("the peer uses this stream both ways");
            self.bidi = true;
            return Ok(());
        }
        if el.is("error", ns::STREAM) {
            debug!(
                condition = el.children().next().map(|c| c.name()),
                "stream error from the peer"
            );
            return Err(Failure::Closed);
        }
        if matches!(el.name(), "message" | "presence" | "iq") {
            return self.on_stanza(el).await;
        }
        Err(Failure::stream(
            "unsupported-stanza-type",
            format!("<{}/> is not expected here", el.name()),
        ))
    }

    async fn starttls(&mut self) -> Result<(), Failure> {
        if self.conn.is_tls() {
            return Err(Failure::stream("policy-violation", "TLS is already on"));
        }
        self.conn.send(&Element::bare("proceed", ns::TLS)).await?;
        let Some(tcp) = self.conn.take_plain() else {
            return Err(Failure::stream("policy-violation", "TLS is already on"));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.federation.tls.acceptor.clone());
        let tls = tokio::time::timeout(NEGOTIATION_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| Failure::WriteTimeout)??;
        self.conn = peer_conn(self.server, Socket::Tls(Box::new(tls)));
        self.open().await
    }

    /// XEP-0178: the peer's certificate names the domain it authenticates as.
    async fn sasl_external(&mut self, auth: &Element) -> Result<(), Failure> {
        let from = self
            .header
            .from
            .as_deref()
            .and_then(|f| jid::normalize_domain(f).ok());
        let authzid = match auth.text().trim() {
            "" | "=" => from.clone(),
            text => BASE64
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|d| jid::normalize_domain(&d).ok()),
        };
        let ok = auth.attr("mechanism") == Some("EXTERNAL")
            && !self.sasl_done
            && authzid.is_some()
            && authzid == from
            && from.as_deref().is_some_and(|d| self.certificate_covers(d));
        let Some(domain) = authzid.filter(|_| ok) else {
            let mut failure = Element::bare("failure", ns::SASL);
            failure.append_child(Element::bare("not-authorized", ns::SASL));
            return self.conn.send(&failure).await;
        };
        self.conn.send(&Element::bare("success", ns::SASL)).await?;
        info!(%domain, "peer authenticated by certificate");
        self.authenticated_as(self.local.clone(), domain);
        self.sasl_done = true;
        self.conn.restart();
        self.open().await
    }

    /// XEP-0220 §2.1.2: a peer asks to send from a domain; the domain's authoritative server
    /// must confirm the key, unless the peer's certificate already covers the domain.
    fn dialback_result(&mut self, el: &Element) -> Result<(), Failure> {
        let remote = el.attr("from").and_then(|f| jid::normalize_domain(f).ok());
        let local = el.attr("to").and_then(|t| jid::normalize_domain(t).ok());
        let (Some(remote), Some(local)) = (remote, local) else {
            return Err(Failure::stream(
                "improper-addressing",
                "dialback needs from and to",
            ));
        };
        let s2s = &self.server.config.s2s;
        if !hosts(self.server, &local) {
            self.dialback_error(&local, &remote, StanzaError::item_not_found());
            return Ok(());
        }
        if s2s.require_tls && !self.conn.is_tls() {
            self.dialback_error(&local, &remote, StanzaError::policy_violation());
            return Ok(());
        }
        if self.certificate_covers(&remote) {
            self.on_verdict(Verdict {
                remote,
                local,
                valid: true,
            });
            return Ok(());
        }
        if !s2s.dialback || self.verifying >= MAX_PENDING {
            self.dialback_error(&local, &remote, StanzaError::not_acceptable());
            return Ok(());
        }
        let key = el.text();
        let stream_id = self.stream_id.clone();
        let verdicts = self.verdicts.0.clone();
        let pair = Pair {
            local: local.clone(),
            remote: remote.clone(),
        };
        let Some(server) = self.federation.server.get().and_then(|w| w.upgrade()) else {
            self.dialback_error(&local, &remote, StanzaError::internal());
            return Ok(());
        };
        self.verifying += 1;
        tokio::spawn(async move {
            let valid = match &server.federation {
                Some(f) => f.verify(&pair, &stream_id, &key).await,
                None => false,
            };
            let _ = verdicts
                .send(Verdict {
                    remote: pair.remote,
                    local: pair.local,
                    valid,
                })
                .await;
        });
        Ok(())
    }

    fn on_verdict(&mut self, verdict: Verdict) {
        self.verifying = self.verifying.saturating_sub(1);
        let mut result = Element::bare("result", ns::DIALBACK);
        stanza::set_attr(&mut result, "from", &verdict.local);
        stanza::set_attr(&mut result, "to", &verdict.remote);
        stanza::set_attr(
            &mut result,
            "type",
            if verdict.valid { "valid" } else { "invalid" },
        );
        self.conn.queue_dialback(&result);
        if verdict.valid {
            info!(remote = %verdict.remote, "peer authenticated by dialback");
            self.authenticated_as(verdict.local, verdict.remote);
        } else {
            info!(remote = %verdict.remote, "dialback key not confirmed");
        }
    }

    /// XEP-0220 §2.4: a dialback request we cannot take.
    fn dialback_error(&mut self, local: &str, remote: &str, err: StanzaError) {
        let mut result = Element::bare("result", ns::DIALBACK);
        stanza::set_attr(&mut result, "from", local);
        stanza::set_attr(&mut result, "to", remote);
        stanza::set_attr(&mut result, "type", "error");
        result.append_child(err.to_element());
        self.conn.queue_dialback(&result);
    }

    /// RFC 6120 §4.9.3, §8.1.1: only authenticated senders, only to our domains.
    async fn on_stanza(&mut self, el: Element) -> Result<(), Failure> {
        if self.authenticated.is_empty() {
            return Err(Failure::stream(
                "not-authorized",
                "authenticate before sending stanzas",
            ));
        }
        let authenticated = &self.authenticated;
        super::receive(self.server, |d| authenticated.contains(d), el).await
    }

    /// Stops being a link; what was queued for the peer goes through the router again.
    async fn release_link(&mut self) {
        let Some((pair, id, mut queues)) = self.link.take() else {
            return;
        };
        self.federation.remove_link(&pair, id);
        queues.stanzas.close();
        while let Ok(s) = queues.stanzas.try_recv() {
            router::route(self.server, *s).await;
        }
    }

    /// A peer domain is authenticated on this stream; with XEP-0288 the stream becomes our
    /// link to it, unless we already have one.
    fn authenticated_as(&mut self, local: String, remote: String) {
        tracing::Span::current().record("remote", tracing::field::display(&remote));
        if self.bidi && self.link.is_none() {
            let pair = Pair {
                local,
                remote: remote.clone(),
            };
            if let Some((id, queues)) = self.federation.adopt(&pair) {
                debug!("this stream is now our link to the peer too");
                self.link = Some((pair, id, queues));
            }
        }
        self.authenticated.insert(remote);
    }

    async fn finish(&mut self, failure: Failure) {
        self.release_link().await;
        match failure {
            Failure::Stream { condition, text } => {
                if !self.conn.header_sent {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    let header = writer::server_stream_header(&self.local, "", Some(&id));
                    self.conn.queue_bytes(header.as_bytes());
                }
                debug!(
                    condition,
                    text = text.as_deref().unwrap_or(""),
                    "closing with stream error"
                );
                self.conn.close_with_error(condition, text.as_deref()).await
            }
            Failure::Closed => self.conn.close().await,
            other => debug!(reason = %other, "connection ended"),
        }
    }
}

/// What a stream that is also our link has to write.
enum ForPeer {
    Stanza(Box<Element>),
    Verify(super::VerifyRequest),
}

/// The next thing to write to the peer when the stream is a link; never, otherwise.
async fn for_peer(link: &mut Option<(Pair, u64, outgoing::Queues)>) -> Option<ForPeer> {
    let Some((_, _, queues)) = link else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some(s) = queues.stanzas.recv() => Some(ForPeer::Stanza(s)),
        Some(v) = queues.verify.recv() => Some(ForPeer::Verify(v)),
        else => None,
    }
}
