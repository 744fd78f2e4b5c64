//! An external component (XEP-0114): a gateway or bot that serves a domain of its own through
//! `listen.component`, after a handshake on a shared secret from `[components]`. It is bound
//! in the session table as `<domain>/component`, so the router reaches it from any node of a
//! cluster like any session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span};

use super::conn::{Failure, Socket, XmlConn};
use crate::jid::{self, BareJid, FullJid};
use crate::router::{self, table::SessionCommand, table::SessionSender};
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::stream::parser::{ParserLimits, StreamEvent};
use crate::stream::{ns, writer};

/// The resource a component is bound under in the session table.
pub const RESOURCE: &str = "component";
const QUEUE_DEPTH: usize = 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_DEPTH: usize = 32;

/// Whether `domain` is a configured component's.
pub fn is_component(server: &Server, domain: &str) -> bool {
    server.config.components.contains_key(domain)
}

/// Hands a stanza to the component serving its `to` domain, or bounces it when none is
/// connected (as Prosody does: `service-unavailable`).
pub async fn deliver(server: &Server, domain: &str, stanza: Element) {
    let bare = jid::parse_bare(domain).ok();
    let session = bare
        .as_ref()
        .and_then(|b| server.sessions.resources(b).into_iter().next());
    let stanza = match session {
        Some(r) => match r.sender.deliver(stanza) {
            Ok(()) => return,
            Err(
                router::table::DeliveryError::Full(s) | router::table::DeliveryError::Closed(s),
            ) => s,
        },
        None => stanza,
    };
    router::bounce(
        server,
        &stanza,
        StanzaError::service_unavailable().with_text("the component is not connected"),
    )
    .await;
}

/// Serves one accepted connection on `listen.component` until it ends.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let conn_id = server.next_conn_id();
    let span = info_span!("component", conn = conn_id, %peer, domain = tracing::field::Empty);
    async move {
        let _counted = crate::metrics::connection("component");
        let _ = tcp.set_nodelay(true);
        let limits = ParserLimits {
            max_stanza_bytes: server.config.limits.max_stanza_bytes,
            max_depth: MAX_DEPTH,
        };
        let mut conn = XmlConn::new(Socket::Plain(tcp), limits);
        let handshake =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&server, &mut conn)).await;
        let domain = match handshake {
            Ok(Ok(domain)) => domain,
            Ok(Err(f)) => return finish(&server, &mut conn, f).await,
            Err(_) => {
                return finish(
                    &server,
                    &mut conn,
                    Failure::stream("connection-timeout", "no handshake"),
                )
                .await;
            }
        };
        tracing::Span::current().record("domain", tracing::field::display(&domain));
        let result = established(&server, &mut conn, conn_id, domain).await;
        finish(&server, &mut conn, result).await;
    }
    .instrument(span)
    .await
}

/// XEP-0114 §3: the component names its domain in the stream header and proves the secret
/// with SHA-1(stream id + secret).
async fn handshake(server: &Server, conn: &mut XmlConn) -> Result<BareJid, Failure> {
    let header = match conn.next_event().await? {
        StreamEvent::Open(h) => h,
        _ => return Err(Failure::stream("bad-format", "expected a stream header")),
    };
    let domain = header
        .to
        .as_deref()
        .and_then(|t| jid::normalize_domain(t).ok())
        .unwrap_or_default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    conn.queue_bytes(writer::component_stream_header(&domain, &id).as_bytes());
    conn.header_sent = true;
    let Some(component) = server.config.components.get(&domain) else {
        return Err(Failure::stream("host-unknown", "no such component"));
    };
    conn.flush().await?;
    let proof = conn.next_stanza().await?;
    if !proof.is("handshake", ns::COMPONENT) {
        return Err(Failure::stream("not-authorized", "expected a handshake"));
    }
    let expected: String = Sha1::digest(format!("{id}{}", component.secret).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let given = proof.text().trim().to_ascii_lowercase();
    if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(Failure::stream("not-authorized", "wrong secret"));
    }
    jid::parse_bare(&domain).map_err(|_| Failure::stream("host-unknown", "not a domain"))
}

async fn established(
    server: &Server,
    conn: &mut XmlConn,
    conn_id: u64,
    domain: BareJid,
) -> Failure {
    let Ok(full) = FullJid::new(&format!("{domain}/{RESOURCE}")) else {
        return Failure::stream("internal-server-error", "cannot name the component");
    };
    if server.sessions.is_bound(&domain) {
        return Failure::stream("conflict", "this component is already connected");
    }
    let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
    if let Err(e) = server
        .sessions
        .bind(full.clone(), SessionSender::new(conn_id, tx))
        .await
    {
        tracing::warn!(error = %e, "cannot bind the component");
        return Failure::stream("internal-server-error", "cannot bind");
    }
    conn.queue(&Element::bare("handshake", ns::COMPONENT));
    info!("component connected");
    let result = match conn.flush().await {
        Ok(()) => run(server, conn, &domain, &mut rx).await,
        Err(f) => f,
    };
    if let Err(e) = server.sessions.unbind(&full, conn_id).await {
        tracing::warn!(error = %e, "cannot unbind the component");
    }
    rx.close();
    // Messages that were on their way to the component go back to their senders.
    while let Ok(SessionCommand::Stanza(el)) = rx.try_recv() {
        router::bounce(
            server,
            &el.into_element(),
            StanzaError::service_unavailable(),
        )
        .await;
    }
    info!("component disconnected");
    result
}

async fn run(
    server: &Server,
    conn: &mut XmlConn,
    domain: &BareJid,
    rx: &mut mpsc::Receiver<SessionCommand>,
) -> Failure {
    let mut shutdown = server.shutdown_signal();
    loop {
        let step = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(SessionCommand::Stanza(el)) => {
                    conn.queue(&stanza::renamespace(el.into_element(), ns::CLIENT, ns::COMPONENT));
                    Ok(())
                }
                Some(SessionCommand::Replaced) => Err(Failure::stream("conflict", "replaced")),
                Some(SessionCommand::Close(reason)) => Err(Failure::Stream { condition: reason.condition(), text: None }),
                None => Err(Failure::stream("internal-server-error", "session removed")),
            },
            r = conn.read_and_parse() => match r {
                Ok(()) => on_read(server, conn, domain).await,
                Err(f) => Err(f),
            },
            _ = shutdown.changed() => Err(Failure::stream("system-shutdown", "the server is shutting down")),
        };
        if let Err(f) = step {
            return f;
        }
        if let Err(f) = conn.flush().await {
            return f;
        }
    }
}

async fn on_read(server: &Server, conn: &mut XmlConn, domain: &BareJid) -> Result<(), Failure> {
    while let Some(ev) = conn.take_event() {
        match ev {
            StreamEvent::Stanza(el) => on_stanza(server, conn, domain, el).await?,
            // Only a client's stream reads messages without their trees.
            StreamEvent::Message(m) => on_stanza(server, conn, domain, m.into_element()?).await?,
            StreamEvent::Close => return Err(Failure::Closed),
            StreamEvent::Open(_) => {
                return Err(Failure::stream("invalid-xml", "unexpected stream header"));
            }
        }
    }
    Ok(())
}

/// A component may send from any address on its domain, to anyone.
async fn on_stanza(
    server: &Server,
    conn: &mut XmlConn,
    domain: &BareJid,
    el: Element,
) -> Result<(), Failure> {
    crate::metrics::stanza_in(el.name());
    if !matches!(el.name(), "message" | "presence" | "iq") {
        return Err(Failure::stream(
            "unsupported-stanza-type",
            format!("<{}/> is not a stanza", el.name()),
        ));
    }
    if !el.has_ns(ns::COMPONENT) {
        return Err(Failure::stream(
            "invalid-namespace",
            "stanzas must be in jabber:component:accept",
        ));
    }
    let from_ok = el
        .attr("from")
        .and_then(|f| jid::parse(f).ok())
        .is_some_and(|f| f.domain() == domain.domain());
    if !from_ok {
        return Err(Failure::stream(
            "invalid-from",
            "stanzas must come from the component's domain",
        ));
    }
    let el = stanza::renamespace(el, ns::COMPONENT, ns::CLIENT);
    match el.attr("to").map(jid::parse) {
        Some(Ok(_)) => router::route(server, el).await,
        Some(Err(_)) => reply_error(conn, &el, StanzaError::jid_malformed()),
        None => reply_error(
            conn,
            &el,
            StanzaError::bad_request().with_text("a component's stanza needs a 'to'"),
        ),
    }
    Ok(())
}

fn reply_error(conn: &mut XmlConn, el: &Element, err: StanzaError) {
    if let Some(reply) = stanza::error_reply(el, &err) {
        conn.queue(&stanza::renamespace(reply, ns::CLIENT, ns::COMPONENT));
    }
}

async fn finish(server: &Server, conn: &mut XmlConn, failure: Failure) {
    match failure {
        Failure::Stream { condition, text } => {
            if !conn.header_sent {
                let id = uuid::Uuid::new_v4().simple().to_string();
                conn.queue_bytes(writer::component_stream_header(&server.domain, &id).as_bytes());
            }
            debug!(condition, "closing with stream error");
            conn.close_with_error(condition, text.as_deref()).await
        }
        Failure::Closed => conn.close().await,
        other => debug!(reason = %other, "connection ended"),
    }
}
