//! Incremental XML stream parser with hard limits.
//!
//! rxml parses and checks well-formedness but bounds nothing beyond the length of one token:
//! a start tag with a million attributes or a stanza nested ten thousand levels deep would
//! grow memory (and recursion in the tree code) without limit. This driver counts the bytes
//! fed to the parser since the current stanza began, which also catches a start tag that
//! never ends, and the nesting depth, and turns a breach into an error that becomes a stream
//! error. It builds each top-level child of the stream into a `minidom::Element`.

use minidom::Element;
use rxml::{Event, Parse};

use super::ns;

/// The opening `<stream:stream>` tag as the peer sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    pub id: Option<String>,
}

/// What one chunk of input produced.
#[derive(Debug, PartialEq)]
pub enum StreamEvent {
    Open(StreamHeader),
    Stanza(Element),
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("the stream root is not <stream:stream>")]
    InvalidNamespace,
    #[error("stanza exceeds {0} bytes")]
    StanzaTooLarge(usize),
    #[error("elements nested deeper than {0} levels")]
    TooDeep(usize),
}

impl ParseError {
    /// The RFC 6120 §4.9.3 stream error condition for this failure.
    pub fn condition(&self) -> &'static str {
        match self {
            ParseError::NotWellFormed(_) => "not-well-formed",
            ParseError::InvalidNamespace => "invalid-namespace",
            ParseError::StanzaTooLarge(_) | ParseError::TooDeep(_) => "policy-violation",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    /// Bytes of input from the start of a stanza (or of the stream header) to its end.
    pub max_stanza_bytes: usize,
    /// Element depth below the stream root.
    pub max_depth: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_stanza_bytes: 262_144,
            max_depth: 32,
        }
    }
}

pub struct StreamParser {
    parser: rxml::Parser,
    limits: ParserLimits,
    /// Elements under construction; `stack[0]` is the current stanza.
    stack: Vec<Element>,
    opened: bool,
    closed: bool,
    /// Input bytes consumed since the last stanza (or the stream header) completed.
    pending_bytes: usize,
}

impl StreamParser {
    pub fn new(limits: ParserLimits) -> Self {
        StreamParser {
            parser: rxml::Parser::new(),
            limits,
            stack: Vec::new(),
            opened: false,
            closed: false,
            pending_bytes: 0,
        }
    }

    /// Feeds a chunk of bytes; complete events are appended to `out`.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut impl Extend<StreamEvent>,
    ) -> Result<(), ParseError> {
        // The parser may hold finished events (the end of `<a/>`) until it is asked again, so it
        // is called until it wants more input, not until the input is used up.
        while !self.closed {
            let before = data.len();
            let result = self.parser.parse(&mut data, false);
            self.pending_bytes += before - data.len();
            if self.pending_bytes > self.limits.max_stanza_bytes {
                return Err(ParseError::StanzaTooLarge(self.limits.max_stanza_bytes));
            }
            match result {
                Ok(Some(event)) => self.handle(event, out)?,
                Ok(None) => self.closed = true,
                Err(rxml::error::EndOrError::NeedMoreData) => break,
                Err(rxml::error::EndOrError::Error(e)) => {
                    return Err(ParseError::NotWellFormed(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Frees the lexer's scratch buffers (several kB) if no stanza is half-read. For
    /// connections that have gone quiet: doing it after every read costs throughput.
    pub fn release_buffers(&mut self) {
        if self.stack.is_empty() {
            self.parser.release_temporaries();
        }
    }

    fn handle(
        &mut self,
        event: Event,
        out: &mut impl Extend<StreamEvent>,
    ) -> Result<(), ParseError> {
        match event {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (namespace, name), attrs) => {
                if !self.opened {
                    if namespace.as_str() != ns::STREAM || name.as_str() != "stream" {
                        return Err(ParseError::InvalidNamespace);
                    }
                    self.opened = true;
                    self.pending_bytes = 0;
                    out.extend([StreamEvent::Open(header_from(&attrs))]);
                    return Ok(());
                }
                if self.stack.len() >= self.limits.max_depth {
                    return Err(ParseError::TooDeep(self.limits.max_depth));
                }
                let mut el = Element::builder(name.as_str(), namespace.as_str()).build();
                *el.attrs_mut() = attrs;
                self.stack.push(el);
            }
            Event::EndElement(_) => match self.stack.pop() {
                None => {
                    self.closed = true;
                    out.extend([StreamEvent::Close]);
                }
                Some(el) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(el);
                    }
                    None => {
                        self.pending_bytes = 0;
                        out.extend([StreamEvent::Stanza(el)]);
                    }
                },
            },
            Event::Text(_, text) => match self.stack.last_mut() {
                Some(el) => el.append_text(text),
                // Whitespace between stanzas is a keepalive (RFC 6120 §4.6.1); it does not
                // count towards the next stanza's size.
                None => self.pending_bytes = 0,
            },
        }
        Ok(())
    }
}

fn header_from(attrs: &rxml::AttrMap) -> StreamHeader {
    let get = |name: &str| {
        attrs
            .get(&rxml::Namespace::NONE, name)
            .map(|v| v.to_string())
    };
    StreamHeader {
        to: get("to"),
        from: get("from"),
        version: get("version"),
        id: get("id"),
        lang: attrs
            .get(rxml::Namespace::xml(), "lang")
            .map(|v| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

    fn feed_all(p: &mut StreamParser, s: &str) -> Result<Vec<StreamEvent>, ParseError> {
        let mut out = Vec::new();
        p.feed(s.as_bytes(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn parses_header_stanzas_and_close_byte_by_byte() {
        let mut p = StreamParser::new(ParserLimits::default());
        let doc = format!(
            "{OPEN} <message to='a@b'><body>hi &amp; bye</body></message> </stream:stream>"
        );
        let mut out = Vec::new();
        for b in doc.as_bytes() {
            p.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out.len(), 3);
        match &out[0] {
            StreamEvent::Open(h) => {
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert_eq!(h.lang.as_deref(), Some("en"));
            }
            other => panic!("{other:?}"),
        }
        match &out[1] {
            StreamEvent::Stanza(el) => {
                assert!(el.is("message", ns::CLIENT));
                assert_eq!(el.attr("to"), Some("a@b"));
                assert_eq!(el.get_child("body", ns::CLIENT).unwrap().text(), "hi & bye");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out[2], StreamEvent::Close);
    }

    #[test]
    fn rejects_wrong_root() {
        let mut p = StreamParser::new(ParserLimits::default());
        let err = feed_all(&mut p, "<stream xmlns='jabber:client'>").unwrap_err();
        assert_eq!(err.condition(), "invalid-namespace");
    }

    #[test]
    fn rejects_malformed_xml() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let err = feed_all(&mut p, "<message><body></message>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
    }

    #[test]
    fn rejects_entities_and_doctype() {
        let mut p = StreamParser::new(ParserLimits::default());
        let err = feed_all(&mut p, "<!DOCTYPE x [<!ENTITY a 'b'>]>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        assert!(feed_all(&mut p, "<message>&lol;</message>").is_err());
    }

    #[test]
    fn limits_stanza_size_including_unterminated_start_tags() {
        let limits = ParserLimits {
            max_stanza_bytes: 10_000,
            max_depth: 32,
        };
        let mut p = StreamParser::new(limits);
        feed_all(&mut p, OPEN).unwrap();
        let mut tag = String::from("<message");
        for i in 0..2000 {
            tag.push_str(&format!(" a{i}='x'"));
        }
        let err = feed_all(&mut p, &tag).unwrap_err();
        assert_eq!(err, ParseError::StanzaTooLarge(10_000));

        let mut p = StreamParser::new(limits);
        feed_all(&mut p, OPEN).unwrap();
        let big = format!("<message><body>{}</body></message>", "x".repeat(20_000));
        assert_eq!(
            feed_all(&mut p, &big).unwrap_err().condition(),
            "policy-violation"
        );
    }

    #[test]
    fn many_small_stanzas_and_keepalives_do_not_add_up() {
        let limits = ParserLimits {
            max_stanza_bytes: 10_000,
            max_depth: 32,
        };
        let mut p = StreamParser::new(limits);
        feed_all(&mut p, OPEN).unwrap();
        for _ in 0..1000 {
            let out = feed_all(&mut p, " <presence/>\n").unwrap();
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn limits_depth() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let deep = "<a>".repeat(100);
        assert_eq!(
            feed_all(&mut p, &deep).unwrap_err(),
            ParseError::TooDeep(32)
        );
    }

    #[test]
    fn stanza_without_default_namespace_has_empty_namespace() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(
            &mut p,
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .unwrap();
        let out = feed_all(&mut p, "<message/>").unwrap();
        match &out[0] {
            StreamEvent::Stanza(el) => assert_eq!(el.ns(), ""),
            other => panic!("{other:?}"),
        }
    }

    /// Arbitrary bytes, and valid streams with random bytes flipped, cut at random points: the
    /// parser returns events or an error, never panics, and never holds more than the limit.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = format!(
            "{OPEN}<message to='a@b' type='chat'><body>x &amp; y</body><x xmlns='u:1' a='1'/></message>\
             <iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq><presence/></stream:stream>"
        );
        let alphabet = b"<>/='\"&;:!?[]- abcxyz\n\x00\xff\xc3";
        for round in 0..2000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                valid.as_bytes().to_vec()
            } else {
                (0..(next() % 400))
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            };
            for _ in 0..(next() % 4) {
                if !input.is_empty() {
                    let i = (next() % input.len() as u64) as usize;
                    input[i] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
            }
            let limits = ParserLimits {
                max_stanza_bytes: 200,
                max_depth: 4,
            };
            let mut p = StreamParser::new(limits);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let cut = 1 + (next() % rest.len() as u64) as usize;
                if p.feed(&rest[..cut], &mut out).is_err() {
                    break;
                }
                rest = &rest[cut..];
            }
            assert!(p.stack.len() <= limits.max_depth);
        }
    }
}
