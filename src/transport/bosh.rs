//! BOSH (XEP-0124, XEP-0206): XMPP over HTTP long polling, for web clients behind proxies that
//! break WebSocket. Each BOSH session feeds a c2s session through a pipe, like WebSocket: the
//! payloads of the client's `<body/>` requests go in (with a stream header at the start and on
//! `xmpp:restart`), and the elements the session writes wait here, cut into frames by the same
//! splitter, until a held request takes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minidom::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::websocket::Splitter;
use crate::stream::{ns, writer};

pub const NS: &str = "http://jabber.org/protocol/httpbind";
const XBOSH: &str = "urn:xmpp:xbosh";
/// The longest a request is held (`wait`), and how long a session may go without one.
const MAX_WAIT: u64 = 60;
const INACTIVITY: Duration = Duration::from_secs(60);
/// Requests the client may have open at once; one is held, the other carries new payloads.
const REQUESTS: u32 = 2;
/// Elements waiting for the client beyond this end the session: it does not poll.
const MAX_PENDING: usize = 1000;
/// BOSH sessions one server keeps at most.
const MAX_SESSIONS: usize = 10_000;

/// Why a request gets no ordinary answer (XEP-0124 §17): the condition of a terminal body, or
/// a bad request.
#[derive(Debug, thiserror::Error)]
pub enum BoshError {
    #[error("{0}")]
    BadRequest(&'static str),
    /// Ends the BOSH session with this `condition`.
    #[error("terminate: {0}")]
    Terminate(&'static str),
}

/// What the session wrote and the client has not fetched, and the client's request state.
struct Shared {
    out: VecDeque<String>,
    /// The session's stream ended (`<close/>` from the splitter, or the pipe closed).
    ended: bool,
    /// The stream id of the current stream, once the session answered the header.
    stream_id: Option<String>,
    /// The next rid expected, and the last answers by rid (for retransmission, §14.3).
    next_rid: u64,
    answers: VecDeque<(u64, String)>,
    /// Increases with every request: a held request that sees a newer one answers at once.
    generation: u64,
    /// Requests being held, and when the last one came or was answered (§7 inactivity).
    held: u32,
    last_activity: Instant,
}

pub struct Session {
    pub sid: String,
    pub wait: u64,
    input: tokio::sync::Mutex<WriteHalf<DuplexStream>>,
    shared: Mutex<Shared>,
    changed: Notify,
}

/// The BOSH sessions of this node, by sid.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Arc<Session>>>);

impl Sessions {
    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(sid);
    }

    /// Starts a BOSH session whose stream runs through `pipe` (the other end goes to the c2s
    /// session). `rid` is the creation request's.
    pub fn create(
        self: &Arc<Self>,
        pipe: DuplexStream,
        rid: u64,
        wait: u64,
    ) -> Result<Arc<Session>, BoshError> {
        let (mut reader, writer_half) = tokio::io::split(pipe);
        let session = Arc::new(Session {
            sid: uuid::Uuid::new_v4().simple().to_string(),
            wait: wait.clamp(1, MAX_WAIT),
            input: tokio::sync::Mutex::new(writer_half),
            shared: Mutex::new(Shared {
                out: VecDeque::new(),
                ended: false,
                stream_id: None,
                next_rid: rid.wrapping_add(1),
                answers: VecDeque::new(),
                generation: 0,
                held: 0,
                last_activity: Instant::now(),
            }),
            changed: Notify::new(),
        });
        {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_SESSIONS {
                return Err(BoshError::Terminate("resource-constraint"));
            }
            map.insert(session.sid.clone(), session.clone());
        }
        // The session's output, cut into elements for the next answer.
        let out = session.clone();
        tokio::spawn(async move {
            let mut splitter = Splitter::default();
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                splitter.push(&buf[..n]);
                while let Some(frame) = splitter.next_frame() {
                    out.output(frame);
                }
            }
            out.end();
        });
        // Inactivity (§7): a client that stops polling loses its session.
        let (sessions, watched) = (self.clone(), session.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let idle = {
                    let s = watched.lock();
                    s.ended || (s.held == 0 && s.last_activity.elapsed() > INACTIVITY)
                };
                if idle {
                    watched.end();
                    let _ = watched.input.lock().await.shutdown().await;
                    sessions.remove(&watched.sid);
                    return;
                }
            }
        });
        Ok(session)
    }
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn output(&self, frame: String) {
        {
            let mut s = self.lock();
            if frame.starts_with("<open ") {
                // A stream header answers ours: its id is the BOSH authid.
                s.stream_id = frame
                    .parse::<Element>()
                    .ok()
                    .and_then(|e| e.attr("id").map(str::to_owned));
            } else if frame.starts_with("<close ") || s.out.len() >= MAX_PENDING {
                // The stream ended, or the client stopped fetching what it is sent.
                s.ended = true;
            } else {
                s.out.push_back(frame);
            }
        }
        self.changed.notify_waiters();
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_waiters();
    }

    /// The stream header the session's parser expects (at creation and on restart).
    pub async fn open_stream(&self, to: &str) -> Result<(), BoshError> {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}' \
             version='1.0'>",
            ns::CLIENT,
            ns::STREAM,
            writer::escape(to)
        );
        self.send(header.as_bytes()).await
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), BoshError> {
        let mut input = self.input.lock().await;
        input
            .write_all(bytes)
            .await
            .map_err(|_| BoshError::Terminate("remote-connection-failed"))
    }

    /// Checks a request's rid (§14): the next one, or a retransmission answered as before.
    pub fn accept_rid(&self, rid: u64) -> Result<Option<String>, BoshError> {
        let mut s = self.lock();
        s.last_activity = Instant::now();
        if rid == s.next_rid {
            s.next_rid = rid.wrapping_add(1);
            s.generation += 1;
            return Ok(None);
        }
        if let Some((_, answer)) = s.answers.iter().find(|(r, _)| *r == rid) {
            return Ok(Some(answer.clone()));
        }
        Err(BoshError::Terminate("item-not-found"))
    }

    /// Hands the payload of a request to the session, as sent: the session's parser checks it.
    pub async fn deliver(&self, payload: &str) -> Result<(), BoshError> {
        if payload.trim().is_empty() {
            return Ok(());
        }
        self.send(payload.as_bytes()).await
    }

    /// The client ends the session (§13): the stream closes.
    pub async fn terminate(&self) {
        let _ = self.send(writer::STREAM_CLOSE).await;
    }

    /// Waits up to `wait` for something to send (or a newer request, which takes over), then
    /// answers: the pending elements, or a terminal body once the stream ended.
    pub async fn answer(&self, rid: u64) -> String {
        let generation = {
            let mut s = self.lock();
            s.held += 1;
            s.generation
        };
        // Counted as held until answered, or until the client gives up the request.
        let _held = Holding(self);
        let deadline = Instant::now() + Duration::from_secs(self.wait);
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                let ready = !s.out.is_empty() || s.ended || s.generation != generation;
                if ready || Instant::now() >= deadline {
                    let body = if s.ended && s.out.is_empty() {
                        terminal("")
                    } else {
                        let items: Vec<String> = s.out.drain(..).collect();
                        body(&items.concat())
                    };
                    s.answers.push_back((rid, body.clone()));
                    while s.answers.len() > REQUESTS as usize {
                        s.answers.pop_front();
                    }
                    return body;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The session creation answer (§7.1): the BOSH parameters and the stream's first
    /// features; waits for the c2s session to answer the stream header.
    pub async fn creation_answer(&self, rid: u64, domain: &str) -> Result<String, BoshError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if s.ended {
                    return Err(BoshError::Terminate("remote-connection-failed"));
                }
                if let Some(id) = s.stream_id.clone()
                    && !s.out.is_empty()
                {
                    let items: Vec<String> = s.out.drain(..).collect();
                    let body = format!(
                        "<body xmlns='{NS}' xmlns:xmpp='{XBOSH}' xmlns:stream='{}' sid='{}' \
                         wait='{}' requests='{REQUESTS}' hold='1' inactivity='{}' polling='2' \
                         ver='1.11' from='{}' authid='{}' xmpp:version='1.0' \
                         xmpp:restartlogic='true'>{}</body>",
                        ns::STREAM,
                        self.sid,
                        self.wait,
                        INACTIVITY.as_secs(),
                        writer::escape(domain),
                        writer::escape(&id),
                        items.concat()
                    );
                    s.answers.push_back((rid, body.clone()));
                    return Ok(body);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(BoshError::Terminate("remote-connection-failed"));
            }
        }
    }
}

/// A request split into its `<body/>` element (attributes only) and its payload, unparsed.
/// The payload is left to the session's parser, which bounds size and depth; minidom's tree
/// builder recurses, so it only ever sees the lone start tag.
pub fn split_request(text: &str) -> Result<(Element, &str), BoshError> {
    let bad = BoshError::BadRequest("the request is not one BOSH <body/>");
    let mut rest = text.trim_start();
    if rest.starts_with("<?") {
        let end = rest
            .find("?>")
            .ok_or(BoshError::BadRequest("unfinished declaration"))?;
        rest = rest[end + 2..].trim_start();
    }
    if !rest.starts_with('<') {
        return Err(bad);
    }
    let mut quote = None;
    let mut tag_end = None;
    for (i, b) in rest.bytes().enumerate() {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'>') => {
                tag_end = Some(i);
                break;
            }
            (None, b'<') if i > 0 => return Err(bad),
            _ => {}
        }
    }
    let tag_end = tag_end.ok_or(BoshError::BadRequest("unfinished <body> tag"))?;
    let tag = &rest[..=tag_end];
    let (start, payload) = if tag.ends_with("/>") {
        if !rest[tag_end + 1..].trim().is_empty() {
            return Err(bad);
        }
        (tag.to_owned(), "")
    } else {
        let inner = &rest[tag_end + 1..];
        let close = inner.trim_end();
        let close_at = close
            .rfind("</")
            .ok_or(BoshError::BadRequest("no </body>"))?;
        if !close[close_at..].starts_with("</body") {
            return Err(bad);
        }
        (format!("{}/>", &tag[..tag.len() - 1]), &inner[..close_at])
    };
    let body = start.parse::<Element>().map_err(|_| bad)?;
    if !body.is("body", NS) {
        return Err(BoshError::BadRequest(
            "expected <body xmlns='http://jabber.org/protocol/httpbind'/>",
        ));
    }
    Ok((body, payload))
}

/// A request being held; inactivity is counted from when none is.
struct Holding<'a>(&'a Session);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.held = s.held.saturating_sub(1);
        s.last_activity = Instant::now();
    }
}

/// An ordinary answer with these elements (the `stream` prefix is declared once here).
fn body(items: &str) -> String {
    format!(
        "<body xmlns='{NS}' xmlns:stream='{}'>{items}</body>",
        ns::STREAM
    )
}

/// A terminal answer (§13, §17.2); an empty condition for a clean end.
pub fn terminal(condition: &str) -> String {
    let condition = if condition.is_empty() {
        String::new()
    } else {
        format!(" condition='{condition}'")
    };
    format!("<body xmlns='{NS}' type='terminate'{condition}/>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_splits_into_its_body_attributes_and_raw_payload() {
        let request = format!(
            "<?xml version='1.0'?><body xmlns='{NS}' rid='5' sid='a>b'>\
             <message xmlns='jabber:client'><body>hi</body></message></body>"
        );
        let (body, payload) = split_request(&request).unwrap();
        assert_eq!(body.attr("rid"), Some("5"));
        assert_eq!(body.attr("sid"), Some("a>b"));
        assert_eq!(
            payload,
            "<message xmlns='jabber:client'><body>hi</body></message>"
        );
        let empty = format!("<body xmlns='{NS}' rid='6'/>");
        let (_, payload) = split_request(&empty).unwrap();
        assert_eq!(payload, "");
        // Deep nesting never reaches the tree builder.
        let deep = format!(
            "<body xmlns='{NS}' rid='7'>{}</body>",
            "<a>".repeat(100_000)
        );
        assert!(split_request(&deep).is_ok());
        assert!(split_request("<message/>").is_err());
        assert!(split_request("<body").is_err());
        assert!(split_request(&format!("<body xmlns='{NS}'/><extra/>")).is_err());
    }
}
