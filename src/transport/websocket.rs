//! XMPP over WebSocket (RFC 7395). Each WebSocket message carries one complete element, and
//! `<open/>` / `<close/>` in the framing namespace stand for the stream's opening and closing
//! tags. A task per connection translates between the two forms, so that the session reads and
//! writes an ordinary XML stream over a pipe and never knows the transport.

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use minidom::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::stream::{ns, writer};

pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The pipe between the translating task and the session: a few stanzas in flight.
const PIPE: usize = 64 * 1024;

/// Starts translating `ws`; the session reads and writes the returned end.
pub fn bridge(ws: WebSocket) -> DuplexStream {
    let (session_end, bridge_end) = tokio::io::duplex(PIPE);
    tokio::spawn(translate(ws, bridge_end));
    session_end
}

async fn translate(ws: WebSocket, pipe: DuplexStream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut from_session, mut to_session) = tokio::io::split(pipe);
    let inbound = async move {
        while let Some(Ok(message)) = ws_rx.next().await {
            let bytes = match message {
                Message::Text(text) => inbound_frame(text.as_str()),
                // RFC 7395 §3.3.3: XMPP frames are text; anything else ends the stream the way
                // malformed XML would.
                Message::Binary(_) => b"<binary-frame/>".to_vec(),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if to_session.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async move {
        let mut splitter = Splitter::default();
        let mut buf = vec![0u8; 8192];
        'read: loop {
            let n = match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            splitter.push(&buf[..n]);
            while let Some(frame) = splitter.next_frame() {
                if ws_tx.send(Message::Text(frame.into())).await.is_err() {
                    break 'read;
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::join!(inbound, outbound);
}

/// What the session's parser gets for one client frame: a stream header for `<open/>`, the
/// closing tag for `<close/>`, the element itself otherwise.
fn inbound_frame(frame: &str) -> Vec<u8> {
    let trimmed = frame.trim();
    // Only a lone empty tag is parsed here (minidom's tree builder recurses, so nested input
    // from a peer must only ever reach the session's bounded parser).
    let lone_tag = trimmed.ends_with("/>") && trimmed.matches('<').count() == 1;
    if lone_tag
        && (trimmed.starts_with("<open") || trimmed.starts_with("<close"))
        && let Ok(el) = trimmed.parse::<Element>()
        && el.ns() == FRAMING
    {
        if el.name() == "close" {
            return writer::STREAM_CLOSE.to_vec();
        }
        if el.name() == "open" {
            let header = format!(
                "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}'{}>",
                ns::CLIENT,
                ns::STREAM,
                attributes(&el)
            );
            return header.into_bytes();
        }
    }
    frame.as_bytes().to_vec()
}

/// Cuts the byte stream the session writes into frames: the stream header becomes `<open/>`,
/// each top-level element one frame (stream-level ones with the `stream` prefix declared, since
/// no stream element is around them), the closing tag `<close/>`. The input is the server's own
/// writer output: no comments, CDATA or processing instructions besides the XML declaration,
/// which starts a new stream (after SASL).
#[derive(Default)]
pub(crate) struct Splitter {
    buf: Vec<u8>,
    /// Bytes before this are scanned.
    pos: usize,
    /// Element depth below the stream root; 0 outside a stream.
    depth: usize,
    /// Where the top-level element being read starts.
    element_start: usize,
    /// Inside a tag since this offset, and in a quoted attribute value with this quote.
    tag_start: Option<usize>,
    quote: Option<u8>,
    ready: std::collections::VecDeque<String>,
}

impl Splitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.scan();
    }

    pub(crate) fn next_frame(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    fn scan(&mut self) {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            match (self.tag_start, self.quote) {
                (None, _) => {
                    if b == b'<' {
                        self.tag_start = Some(self.pos);
                    }
                }
                (Some(_), Some(q)) => {
                    if b == q {
                        self.quote = None;
                    }
                }
                (Some(start), None) => match b {
                    b'\'' | b'"' => self.quote = Some(b),
                    b'>' => {
                        self.tag_start = None;
                        self.tag(start, self.pos + 1);
                    }
                    _ => {}
                },
            }
            self.pos += 1;
        }
        // Keep only what a frame still needs.
        let keep_from = match (self.tag_start, self.depth) {
            (Some(t), d) if d < 2 => t,
            (_, d) if d >= 2 => self.element_start,
            _ => self.pos,
        };
        let keep_from = keep_from.min(self.pos);
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from;
            self.element_start = self.element_start.saturating_sub(keep_from);
            if let Some(t) = self.tag_start.as_mut() {
                *t -= keep_from;
            }
        }
    }

    /// A complete tag at `buf[start..end]`.
    fn tag(&mut self, start: usize, end: usize) {
        let tag = &self.buf[start..end];
        if tag.starts_with(b"<?") {
            // An XML declaration: a new stream follows (the first, or a restart).
            self.depth = 0;
            return;
        }
        if tag.starts_with(b"</") {
            match self.depth {
                0 => {}
                1 => {
                    self.ready.push_back(format!("<close xmlns='{FRAMING}'/>"));
                    self.depth = 0;
                }
                d => {
                    self.depth = d - 1;
                    if self.depth == 1 {
                        self.emit(self.element_start, end);
                    }
                }
            }
            return;
        }
        let self_closing = tag.ends_with(b"/>");
        match self.depth {
            0 => {
                let header = String::from_utf8_lossy(tag).into_owned();
                self.ready.push_back(open_frame(&header));
                if !self_closing {
                    self.depth = 1;
                }
            }
            1 if self_closing => self.emit(start, end),
            1 => {
                self.element_start = start;
                self.depth = 2;
            }
            d if !self_closing => self.depth = d + 1,
            _ => {}
        }
    }

    fn emit(&mut self, start: usize, end: usize) {
        let element = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
        // Stream-level elements (features, errors) use the prefix the stream header declared.
        let element = match element.strip_prefix("<stream:") {
            Some(rest) => {
                let name_end = rest
                    .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                    .unwrap_or(rest.len());
                format!(
                    "<stream:{} xmlns:stream='{}'{}",
                    &rest[..name_end],
                    ns::STREAM,
                    &rest[name_end..]
                )
            }
            None => element,
        };
        self.ready.push_back(element);
    }
}

/// `<open/>` with the attributes of our stream header, minus its namespace declarations.
fn open_frame(header: &str) -> String {
    let attrs = format!("{header}</stream:stream>")
        .parse::<Element>()
        .map(|el| attributes(&el))
        .unwrap_or_default();
    format!("<open xmlns='{FRAMING}'{attrs}/>")
}

/// An element's unqualified and `xml:` attributes, written out (namespace declarations are
/// not attributes to minidom).
fn attributes(el: &Element) -> String {
    let mut out = String::new();
    for ((namespace, name), value) in el.attrs() {
        let qualified = if namespace.is_none() {
            name.to_string()
        } else if namespace.as_str() == "http://www.w3.org/XML/1998/namespace" {
            format!("xml:{name}")
        } else {
            continue;
        };
        out.push_str(&format!(" {qualified}='{}'", writer::escape(value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(output: &[&str]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for chunk in output {
            s.push(chunk.as_bytes());
            while let Some(f) = s.next_frame() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn the_servers_stream_becomes_frames() {
        let header = writer::stream_header("localhost", None, "abc", ns::CLIENT);
        let out = frames(&[
            &header[..20],
            &header[20..],
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
            "<mechanism>PLAIN</mechanism></mechanisms></stream:features>",
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            &header,
            "<message xmlns='jabber:client' to='a@b' id='x&gt;'><body a='1>2'>hi &lt;3</body></message> ",
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        ]);
        assert_eq!(out.len(), 7, "{out:#?}");
        assert!(
            out[0].starts_with(&format!("<open xmlns='{FRAMING}'")),
            "{}",
            out[0]
        );
        assert!(out[0].contains("id='abc'") && out[0].contains("from='localhost'"));
        assert!(out[0].contains("version='1.0'") && !out[0].contains("jabber:client"));
        assert!(
            out[1].starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>")
        );
        assert!(out[1].ends_with("</stream:features>"));
        assert_eq!(
            out[2],
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
        assert!(out[3].starts_with("<open "));
        assert!(out[4].starts_with("<message") && out[4].ends_with("</message>"));
        assert!(out[5].starts_with("<stream:error xmlns:stream="));
        assert_eq!(out[6], format!("<close xmlns='{FRAMING}'/>"));
        // Every frame parses on its own, as RFC 7395 requires.
        for f in &out {
            assert!(f.parse::<Element>().is_ok(), "{f}");
        }
    }

    #[test]
    fn client_frames_become_a_stream() {
        let open = inbound_frame(&format!(
            "<open xmlns='{FRAMING}' to='localhost' version='1.0' xml:lang='en'/>"
        ));
        let open = String::from_utf8(open).unwrap();
        assert!(open.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"));
        assert!(open.contains("to='localhost'") && open.contains("xml:lang='en'"));
        assert!(open.ends_with('>') && !open.ends_with("/>"));
        assert_eq!(
            inbound_frame(&format!("<close xmlns='{FRAMING}'/>")),
            b"</stream:stream>"
        );
        let msg = "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>";
        assert_eq!(inbound_frame(msg), msg.as_bytes());
        // An <open/> in another namespace is not a stream header: the parser refuses it.
        assert_eq!(inbound_frame("<open xmlns='x'/>"), b"<open xmlns='x'/>");
    }
}
