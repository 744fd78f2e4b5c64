//! Server-to-server streams (RFC 6120): federation with other XMPP servers.
//!
//! Outgoing, one connection ("link") per pair of our domain and a peer domain carries all our
//! traffic to that peer; it is opened on the first stanza, queues (bounded) while it is being
//! set up, reconnects with backoff, closes when idle, and bounces what it cannot deliver to the
//! local sender. Incoming, a peer authenticates each domain it sends from (SASL EXTERNAL with
//! its certificate, or Server Dialback), and may only send from those domains to ours.
//!
//! In a cluster every node opens its own links: the node that routes a stanza to a peer carries
//! it, and a peer's incoming stream may land on any node, which routes what it receives like
//! any local stanza. The dialback secret is shared through Redis so that any node can answer a
//! peer's verification of a key another node made.

pub mod dialback;
pub mod incoming;
pub mod outgoing;
pub mod resolve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use minidom::Element;
use tokio::sync::{mpsc, oneshot};

use crate::jid;
use crate::router;
use crate::server::Server;
use crate::session::conn::{Failure, XmlConn};
use crate::stanza::{self, StanzaError};
use crate::stream::ns;
use crate::transport::peer_tls::PeerTls;

/// Stanzas waiting for a link to be set up (or written): beyond this the sender gets
/// `resource-constraint` instead of the server buffering without bound.
const LINK_QUEUE: usize = 1024;
/// Dialback verifications waiting on one link.
const MAX_VERIFICATIONS: usize = 64;
/// Failed links are not retried for this long at first, doubling up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Our domain and a peer's: the key of an outgoing link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pair {
    pub local: String,
    pub remote: String,
}

/// A request to ask the peer, as the authoritative server of its domain, whether a dialback
/// key is one it made for a stream it opened to us (XEP-0220 §2.1.3). These travel apart from
/// stanzas because they must go out before the link is authenticated: a peer that verifies our
/// own key only once its stream to us is accepted would otherwise wait for us forever.
#[derive(Debug)]
pub struct VerifyRequest {
    pub stream_id: String,
    pub key: String,
    pub reply: oneshot::Sender<bool>,
}

/// The two queues of a link's task.
#[derive(Clone)]
struct LinkHandle {
    id: u64,
    stanzas: mpsc::Sender<Box<Element>>,
    verify: mpsc::Sender<VerifyRequest>,
}

/// A peer domain that could not be reached recently.
struct Unreachable {
    until: Instant,
    backoff: Duration,
    condition: &'static str,
}

/// The federation state of a server: TLS for peers, the dialback secret, and the links.
pub struct Federation {
    pub tls: PeerTls,
    pub secret: dialback::Secret,
    resolver: Option<hickory_resolver::TokioResolver>,
    links: Mutex<HashMap<Pair, LinkHandle>>,
    unreachable: Mutex<HashMap<String, Unreachable>>,
    next_link: AtomicU64,
    /// The server, for spawning link tasks from the router (which only has `&Server`).
    server: OnceLock<Weak<Server>>,
}

impl Federation {
    pub fn new(tls: PeerTls, secret: dialback::Secret) -> Federation {
        Federation {
            tls,
            secret,
            resolver: resolve::resolver(),
            links: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            server: OnceLock::new(),
        }
    }

    /// Called once the server is in its `Arc`.
    pub fn attach(&self, server: &Arc<Server>) {
        let _ = self.server.set(Arc::downgrade(server));
    }

    pub fn resolver(&self) -> Option<&hickory_resolver::TokioResolver> {
        self.resolver.as_ref()
    }

    /// The domain pairs that have a link up or being set up.
    pub fn links(&self) -> Vec<Pair> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|(_, h)| !h.stanzas.is_closed())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The link for `pair`, started if there is none.
    fn link(&self, pair: &Pair) -> Option<LinkHandle> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = links.get(pair)
            && !h.stanzas.is_closed()
        {
            return Some(h.clone());
        }
        let server = self.server.get()?.upgrade()?;
        let (handle, queues) = self.new_link(&mut links, pair);
        tokio::spawn(outgoing::run(server, pair.clone(), handle.id, queues));
        Some(handle)
    }

    fn new_link(
        &self,
        links: &mut HashMap<Pair, LinkHandle>,
        pair: &Pair,
    ) -> (LinkHandle, outgoing::Queues) {
        let (stanzas, stanza_rx) = mpsc::channel(LINK_QUEUE);
        let (verify, verify_rx) = mpsc::channel(MAX_VERIFICATIONS);
        let handle = LinkHandle {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            stanzas,
            verify,
        };
        links.insert(pair.clone(), handle.clone());
        let queues = outgoing::Queues {
            stanzas: stanza_rx,
            verify: verify_rx,
        };
        (handle, queues)
    }

    /// Makes an incoming stream the link for `pair` (XEP-0288 bidirectional streams), unless a
    /// link is already up; the stream's task then serves the returned queues.
    pub(crate) fn adopt(&self, pair: &Pair) -> Option<(u64, outgoing::Queues)> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(pair).is_some_and(|h| !h.stanzas.is_closed()) {
            return None;
        }
        let (handle, queues) = self.new_link(&mut links, pair);
        Some((handle.id, queues))
    }

    /// Forgets a link whose task is ending (unless a newer one took its place).
    pub(crate) fn remove_link(&self, pair: &Pair, id: u64) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(pair).is_some_and(|h| h.id == id) {
            links.remove(pair);
        }
    }

    /// The condition to bounce with while `domain` is in its backoff period.
    fn backing_off(&self, domain: &str) -> Option<&'static str> {
        let map = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        map.get(domain)
            .filter(|u| u.until > Instant::now())
            .map(|u| u.condition)
    }

    fn mark_unreachable(&self, domain: &str, condition: &'static str) {
        let mut map = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = map
            .get(domain)
            .map(|u| (u.backoff * 2).min(MAX_BACKOFF))
            .unwrap_or(FIRST_BACKOFF);
        map.insert(
            domain.to_owned(),
            Unreachable {
                until: Instant::now() + backoff,
                backoff,
                condition,
            },
        );
    }

    fn mark_reachable(&self, domain: &str) {
        let mut map = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(domain);
    }

    /// Asks `remote`'s authoritative server whether `key` is valid for a stream it opened to
    /// our `local` domain with id `stream_id`. False when it cannot be asked.
    pub async fn verify(&self, pair: &Pair, stream_id: &str, key: &str) -> bool {
        let Some(link) = self.link(pair) else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        let request = VerifyRequest {
            stream_id: stream_id.to_owned(),
            key: key.to_owned(),
            reply,
        };
        if link.verify.try_send(request).is_err() {
            return false;
        }
        tokio::time::timeout(outgoing::NEGOTIATION_TIMEOUT, answer)
            .await
            .is_ok_and(|r| r.unwrap_or(false))
    }
}

/// Dialback verifications sent to the peer and not answered yet, by stream id.
#[derive(Default)]
pub(crate) struct Pending(HashMap<String, Vec<oneshot::Sender<bool>>>);

impl Pending {
    /// Writes a verification request (XEP-0220 §2.1.3) and remembers who waits for it.
    pub(crate) fn send(&mut self, conn: &mut XmlConn, pair: &Pair, request: VerifyRequest) {
        let mut verify = Element::bare("verify", ns::DIALBACK);
        stanza::set_attr(&mut verify, "from", &pair.local);
        stanza::set_attr(&mut verify, "to", &pair.remote);
        stanza::set_attr(&mut verify, "id", &request.stream_id);
        verify.append_text(request.key);
        conn.queue_dialback(&verify);
        self.0
            .entry(request.stream_id)
            .or_default()
            .push(request.reply);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The peer's answer to one of our requests.
    pub(crate) fn answer(&mut self, el: &Element) {
        let valid = stanza::stanza_type(el) == "valid";
        let id = el.attr("id").unwrap_or_default();
        for reply in self.0.remove(id).unwrap_or_default() {
            let _ = reply.send(valid);
        }
    }
}

/// XEP-0220 §2.1.3: as the authoritative server, says whether we made the key in a
/// `<db:verify/>` request.
pub(crate) fn verify_answer(server: &Server, request: &Element) -> Element {
    let receiving = request.attr("from").unwrap_or_default();
    let originating = request.attr("to").unwrap_or_default();
    let id = request.attr("id").unwrap_or_default();
    let valid = hosts(server, originating)
        && server
            .federation
            .as_ref()
            .is_some_and(|f| f.secret.verify(receiving, originating, id, &request.text()));
    let mut answer = Element::bare("verify", ns::DIALBACK);
    stanza::set_attr(&mut answer, "from", originating);
    stanza::set_attr(&mut answer, "to", receiving);
    stanza::set_attr(&mut answer, "id", id);
    stanza::set_attr(&mut answer, "type", if valid { "valid" } else { "invalid" });
    answer
}

/// Routes a stanza a peer sent (RFC 6120 §4.9.3, §8.1.1): only from a domain the stream
/// authenticated, only to a domain we serve; anything else ends the stream.
pub(crate) async fn receive(
    server: &Server,
    authenticated: impl Fn(&str) -> bool,
    el: Element,
) -> Result<(), Failure> {
    crate::metrics::stanza_in(el.name());
    if el.ns() != ns::SERVER {
        return Err(Failure::stream(
            "invalid-namespace",
            "stanzas must be in jabber:server",
        ));
    }
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return Err(Failure::stream(
            "improper-addressing",
            "stanzas need from and to",
        ));
    };
    if !jid::parse(from).is_ok_and(|f| authenticated(f.domain().as_str())) {
        return Err(Failure::stream(
            "invalid-from",
            "not a domain this stream authenticated",
        ));
    }
    let to = match jid::parse(to) {
        Ok(to) => to,
        Err(_) => {
            let el = stanza::renamespace(el, ns::SERVER, ns::CLIENT);
            router::bounce(server, &el, StanzaError::jid_malformed()).await;
            return Ok(());
        }
    };
    if !hosts(server, to.domain().as_str()) {
        return Err(crate::session::conn::host_unknown());
    }
    router::route(server, stanza::renamespace(el, ns::SERVER, ns::CLIENT)).await;
    Ok(())
}

/// The domains this server answers for: its own, the group chat service's and its components'.
pub fn hosts(server: &Server, domain: &str) -> bool {
    server.is_local_domain(domain)
        || domain == server.muc_domain
        || domain == server.upload_domain
        || server.config.components.contains_key(domain)
}

/// Sends a stanza to a peer server: called by the router for every `to` on a domain we do not
/// host.
pub async fn send(server: &Server, stanza: Element) {
    let domain_of = |attr| {
        stanza
            .attr(attr)
            .and_then(|a| jid::parse(a).ok())
            .map(|j| j.domain().as_str().to_owned())
    };
    let (Some(local), Some(remote)) = (domain_of("from"), domain_of("to")) else {
        return tracing::debug!("dropping a stanza for a peer without from or to");
    };
    if !hosts(server, &local) {
        // Only our own entities send to peers; anything else would make us an open relay.
        return tracing::debug!(%local, "not relaying a stanza from a domain we do not host");
    }
    let Some(federation) = &server.federation else {
        return bounce(server, &stanza, "remote-server-not-found").await;
    };
    if let Some(condition) = federation.backing_off(&remote) {
        return bounce(server, &stanza, condition).await;
    }
    let pair = Pair { local, remote };
    let Some(link) = federation.link(&pair) else {
        return bounce(server, &stanza, "remote-server-not-found").await;
    };
    match link.stanzas.try_send(Box::new(stanza)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(s)) => {
            router::bounce(
                server,
                &s,
                StanzaError::resource_constraint()
                    .with_text("too many stanzas queued for this peer"),
            )
            .await
        }
        Err(mpsc::error::TrySendError::Closed(s)) => {
            bounce(server, &s, "remote-server-not-found").await
        }
    }
}

/// Tells the local sender that a peer could not be reached (RFC 6120 §8.3.3.17, §8.3.3.18).
/// Presence broadcasts and probes are not bounced: an error for each would help no one.
pub async fn bounce(server: &Server, stanza: &Element, condition: &'static str) {
    let kind = stanza::stanza_type(stanza);
    let bounced = match stanza.name() {
        "message" => kind != "error",
        "iq" => matches!(kind, "get" | "set"),
        "presence" => matches!(
            kind,
            "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"
        ),
        _ => false,
    };
    if bounced {
        let text = match condition {
            "remote-server-timeout" => "the peer server did not answer in time",
            _ => "the peer server cannot be reached",
        };
        router::bounce(server, stanza, StanzaError::new(condition).with_text(text)).await;
    } else {
        tracing::debug!(name = stanza.name(), condition, "not bouncing to a peer");
    }
}
