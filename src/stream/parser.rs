//! Incremental XML stream parser with hard limits.
//!
//! Each stanza is read in two passes. The framer walks the bytes as they arrive, tracking only
//! tags, attribute quotes and CDATA sections, to find where each top-level child of the stream
//! ends. It enforces the size and depth limits as it goes, so a start tag that never ends or ten
//! thousand nested elements fail before they are held whole, and it refuses what RFC 6120
//! §11.1 restricts: comments, processing instructions and document type declarations. A
//! complete stanza is then read by quick-xml, which borrows from the input instead of copying
//! it, and built into a `minidom::Element` in the namespaces the stream header declared; or,
//! for a client's message that routing may send on as it came, checked by the same walk without
//! building anything and kept as its bytes ([`RawMessage`]).
//!
//! Why not rxml, which checks everything in one incremental pass: it copies every token into
//! buffers of its own, and took 2.5 µs of the 4 µs it cost to parse a small message and build
//! its tree; quick-xml reads the same message in 0.8 µs. quick-xml leaves part of XML's
//! well-formedness to its user, and that part is here: names, characters, references,
//! namespace bindings, unique attributes, and end tags that match their start tags.

use std::borrow::Cow;
use std::ops::Range;

use minidom::Element;
use quick_xml::events::{BytesRef, BytesStart, Event};

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
    /// A message read without its tree, from a parser told to read messages that way
    /// ([`StreamParser::read_messages_raw`]).
    Message(RawMessage),
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("the stream root is not <stream:stream>")]
    InvalidNamespace,
    #[error("{0} is not allowed in an XMPP stream")]
    Restricted(&'static str),
    #[error("character data between stanzas")]
    TextBetweenStanzas,
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
            ParseError::Restricted(_) => "restricted-xml",
            // Well-formed XML, but a stream carries stanzas and whitespace keepalives only.
            ParseError::TextBetweenStanzas => "bad-format",
            ParseError::StanzaTooLarge(_) | ParseError::TooDeep(_) => "policy-violation",
        }
    }
}

fn not_well_formed(what: impl std::fmt::Display) -> ParseError {
    ParseError::NotWellFormed(what.to_string())
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

/// A namespace prefix the stream header bound (empty for the default namespace).
#[derive(Debug, Clone)]
struct Binding {
    prefix: Vec<u8>,
    namespace: String,
}

pub struct StreamParser {
    limits: ParserLimits,
    framer: Framer,
    /// Input held over from earlier chunks: the start of a stanza not yet complete. Empty
    /// between stanzas, which is most of the time, so a chunk is usually framed in place.
    held: Vec<u8>,
    /// The stream header's namespace declarations, which every stanza inherits.
    root: Vec<Binding>,
    closed: bool,
    raw_messages: bool,
    /// Kept from message to message, so that reading one raw allocates only its copy.
    attr_keys: AttrKeys,
}

impl StreamParser {
    pub fn new(limits: ParserLimits) -> Self {
        StreamParser {
            limits,
            framer: Framer::default(),
            held: Vec::new(),
            root: Vec::new(),
            closed: false,
            raw_messages: false,
            attr_keys: AttrKeys::default(),
        }
    }

    /// From now on, gives the messages it can as [`RawMessage`]s, or no longer (a client's
    /// established session routes them; everything before that, and every other stream, wants
    /// trees).
    pub fn read_messages_raw(&mut self, on: bool) {
        self.raw_messages = on;
    }

    /// Feeds a chunk of bytes; complete events are appended to `out`.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut impl Extend<StreamEvent>,
    ) -> Result<(), ParseError> {
        if self.held.is_empty() {
            let used = self.frame(data, out)?;
            self.held.extend_from_slice(&data[used..]);
            self.framer.forget(used);
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.extend_from_slice(data);
            let used = self.frame(&held, out)?;
            held.drain(..used);
            self.framer.forget(used);
            self.held = held;
        }
        Ok(())
    }

    /// Frees the buffer a long stanza left behind if no stanza is half-read. For connections
    /// that have gone quiet: doing it after every read costs throughput.
    pub fn release_buffers(&mut self) {
        if self.held.is_empty() {
            self.held = Vec::new();
        }
    }

    /// Emits the events `input` completes; returns how many of its bytes are done with.
    fn frame(
        &mut self,
        input: &[u8],
        out: &mut impl Extend<StreamEvent>,
    ) -> Result<usize, ParseError> {
        let max = self.limits.max_stanza_bytes;
        loop {
            if self.closed {
                // Whatever follows the end of the stream is not read.
                return Ok(input.len());
            }
            let Some(frame) = self.framer.next(input, &self.limits)? else {
                let used = self.framer.held_from();
                if input.len() - used > max {
                    return Err(ParseError::StanzaTooLarge(max));
                }
                return Ok(used);
            };
            match frame {
                Frame::Declaration(range) => check_declaration(&input[range])?,
                Frame::Header { tag, empty } => {
                    if tag.end > max {
                        return Err(ParseError::StanzaTooLarge(max));
                    }
                    let (header, root) = read_header(&input[tag])?;
                    self.root = root;
                    out.extend([StreamEvent::Open(header)]);
                    if empty {
                        self.closed = true;
                        out.extend([StreamEvent::Close]);
                    }
                }
                Frame::Stanza(range) => {
                    if range.len() > max {
                        return Err(ParseError::StanzaTooLarge(max));
                    }
                    out.extend([self.stanza(&input[range])?]);
                }
                Frame::Close => {
                    self.closed = true;
                    out.extend([StreamEvent::Close]);
                }
            }
        }
    }

    /// The event for one framed stanza.
    fn stanza(&mut self, raw: &[u8]) -> Result<StreamEvent, ParseError> {
        if self.raw_messages
            && RawMessage::may_be(raw)
            && let Some(message) = RawMessage::read(raw, &self.root, &mut self.attr_keys)?
        {
            return Ok(StreamEvent::Message(message));
        }
        Ok(StreamEvent::Stanza(build(raw, &self.root)?))
    }
}

/// A piece of the stream the framer found complete; ranges index the input it was given.
#[derive(Debug, PartialEq)]
enum Frame {
    /// `<?xml …?>` at the very start.
    Declaration(Range<usize>),
    /// The root's start tag; `empty` if it was `<stream:stream/>`.
    Header { tag: Range<usize>, empty: bool },
    /// A top-level child of the root, from its `<` to its last `>`.
    Stanza(Range<usize>),
    /// The root's end tag.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    /// Character data, or whitespace outside a stanza.
    #[default]
    Content,
    /// Inside a start or end tag.
    Tag { end: bool, quote: Quote },
    /// Inside `<![CDATA[ … ]]>`.
    CData,
    /// Inside `<?xml … ?>`.
    Declaration,
}

/// Where a tag's scan is relative to attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Outside,
    /// Inside a value opened with this quote.
    Inside(u8),
    /// Just past a value's closing quote, where XML wants a space or the tag's end.
    Closed,
}

/// Finds the boundaries of the header, the stanzas and the end of the stream in the input,
/// resuming where the previous chunk ended: each byte is looked at once (a few at a markup
/// boundary twice), however slowly a stanza arrives.
#[derive(Debug, Default)]
struct Framer {
    mode: Mode,
    /// The next byte to look at.
    pos: usize,
    /// Where the current markup (`<` of a tag, a CDATA section or the declaration) began.
    markup: usize,
    /// Where the current stanza began, if one is open.
    stanza: Option<usize>,
    /// Bytes already forgotten: `pos + consumed` is the offset in the whole stream.
    consumed: usize,
    /// The root's qualified name, which its end tag must repeat; None before its start tag.
    root_name: Option<Vec<u8>>,
    /// Where the names of the stanza's open elements are in the input, innermost last.
    open: Vec<Range<usize>>,
}

const CDATA_OPEN: &[u8] = b"<![CDATA[";
const COMMENT_OPEN: &[u8] = b"<!--";
const DOCTYPE_OPEN: &[u8] = b"<!DOCTYPE";
const DECLARATION_OPEN: &[u8] = b"<?xml";

/// How `input` at `at` compares with `markup`: all there, a prefix so far, or different.
fn starts(input: &[u8], at: usize, markup: &[u8]) -> Option<bool> {
    let have = &input[at..input.len().min(at + markup.len())];
    if markup.starts_with(have) {
        Some(have.len() == markup.len())
    } else {
        None
    }
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Framer {
    /// 0 before the root's start tag, 1 between stanzas, 2 and more inside one.
    fn depth(&self) -> usize {
        match self.root_name {
            None => 0,
            Some(_) => 1 + self.open.len(),
        }
    }

    /// The earliest byte still needed: the start of an open stanza or markup.
    fn held_from(&self) -> usize {
        match (self.stanza, self.mode) {
            (Some(start), _) => start,
            (None, Mode::Content) => self.pos,
            (None, _) => self.markup,
        }
    }

    /// Drops the first `n` bytes from every position, after the caller discarded them.
    fn forget(&mut self, n: usize) {
        self.pos = self.pos.saturating_sub(n);
        self.markup = self.markup.saturating_sub(n);
        self.stanza = self.stanza.map(|s| s - n);
        for name in &mut self.open {
            *name = name.start - n..name.end - n;
        }
        self.consumed += n;
    }

    fn next(&mut self, input: &[u8], limits: &ParserLimits) -> Result<Option<Frame>, ParseError> {
        loop {
            match self.mode {
                Mode::Content => {
                    let rest = &input[self.pos..];
                    let text_len = memchr::memchr(b'<', rest).unwrap_or(rest.len());
                    if self.depth() < 2 && !rest[..text_len].iter().all(|&b| is_xml_space(b)) {
                        return Err(if self.depth() == 0 {
                            not_well_formed("character data before the stream header")
                        } else {
                            ParseError::TextBetweenStanzas
                        });
                    }
                    self.pos += text_len;
                    if self.pos == input.len() {
                        return Ok(None);
                    }
                    self.markup = self.pos;
                    if !self.open_markup(input)? {
                        return Ok(None);
                    }
                }
                Mode::Tag { end, quote } => {
                    let Some(close) = self.tag_end(input, end, quote)? else {
                        return Ok(None);
                    };
                    self.pos = close + 1;
                    self.mode = Mode::Content;
                    if let Some(frame) = self.tag_done(input, end, close, limits)? {
                        return Ok(Some(frame));
                    }
                }
                Mode::CData => {
                    let from = self
                        .pos
                        .saturating_sub(2)
                        .max(self.markup + CDATA_OPEN.len());
                    match memchr::memmem::find(&input[from..], b"]]>") {
                        Some(i) => {
                            self.pos = from + i + 3;
                            self.mode = Mode::Content;
                        }
                        None => {
                            self.pos = input.len();
                            return Ok(None);
                        }
                    }
                }
                Mode::Declaration => {
                    let from = self.pos.saturating_sub(1).max(self.markup + 2);
                    match memchr::memmem::find(&input[from..], b"?>") {
                        Some(i) => {
                            self.pos = from + i + 2;
                            self.mode = Mode::Content;
                            return Ok(Some(Frame::Declaration(self.markup..self.pos)));
                        }
                        None => {
                            self.pos = input.len();
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Decides what the `<` at `self.markup` opens; false if more bytes are needed to tell.
    fn open_markup(&mut self, input: &[u8]) -> Result<bool, ParseError> {
        let at = self.markup;
        let Some(&second) = input.get(at + 1) else {
            return Ok(false);
        };
        match second {
            b'/' => {
                self.mode = Mode::Tag {
                    end: true,
                    quote: Quote::Outside,
                };
                self.pos = at + 2;
            }
            b'!' => {
                if let Some(all) = starts(input, at, CDATA_OPEN) {
                    if !all {
                        return Ok(false);
                    }
                    if self.depth() < 2 {
                        return Err(ParseError::TextBetweenStanzas);
                    }
                    self.mode = Mode::CData;
                    self.pos = at + CDATA_OPEN.len();
                } else if let Some(all) = starts(input, at, COMMENT_OPEN) {
                    return if all {
                        Err(ParseError::Restricted("a comment"))
                    } else {
                        Ok(false)
                    };
                } else if let Some(all) = starts(input, at, DOCTYPE_OPEN) {
                    return if all {
                        Err(ParseError::Restricted("a document type declaration"))
                    } else {
                        Ok(false)
                    };
                } else {
                    return Err(not_well_formed("unknown markup after '<!'"));
                }
            }
            b'?' => {
                // Only the XML declaration, and only as the stream's first bytes.
                let first = self.consumed + at == 0;
                match starts(input, at, DECLARATION_OPEN) {
                    Some(false) if first => return Ok(false),
                    Some(true) if first => match input.get(at + DECLARATION_OPEN.len()) {
                        None => return Ok(false),
                        Some(&b) if is_xml_space(b) => {
                            self.mode = Mode::Declaration;
                            self.pos = at + DECLARATION_OPEN.len();
                        }
                        Some(_) => return Err(ParseError::Restricted("a processing instruction")),
                    },
                    _ => return Err(ParseError::Restricted("a processing instruction")),
                }
            }
            _ => {
                if self.depth() == 1 {
                    self.stanza = Some(at);
                }
                self.mode = Mode::Tag {
                    end: false,
                    quote: Quote::Outside,
                };
                self.pos = at + 1;
            }
        }
        Ok(true)
    }

    /// Finds the `>` that ends the current tag, skipping quoted attribute values; None if the
    /// input ends first (the quote state is kept for the next chunk).
    fn tag_end(
        &mut self,
        input: &[u8],
        end: bool,
        mut quote: Quote,
    ) -> Result<Option<usize>, ParseError> {
        let mut at = self.pos;
        loop {
            if quote == Quote::Closed {
                match input.get(at) {
                    None => break,
                    Some(&b) if is_xml_space(b) || b == b'/' || b == b'>' => quote = Quote::Outside,
                    Some(_) => return Err(not_well_formed("no space between attributes")),
                }
            }
            let rest = &input[at..];
            let found = match quote {
                Quote::Inside(q) => memchr::memchr(q, rest),
                _ => memchr::memchr3(b'>', b'\'', b'"', rest),
            };
            let outside = quote == Quote::Outside;
            let scanned = &rest[..found.unwrap_or(rest.len())];
            if outside && scanned.contains(&b'<') {
                return Err(not_well_formed("'<' inside a tag"));
            }
            let Some(i) = found else { break };
            let b = rest[i];
            at += i + 1;
            quote = match quote {
                Quote::Inside(_) => Quote::Closed,
                _ if b == b'>' => return Ok(Some(at - 1)),
                _ => Quote::Inside(b),
            };
        }
        self.pos = input.len();
        self.mode = Mode::Tag { end, quote };
        Ok(None)
    }

    /// Accounts for a tag that ended at `close`; a frame if it completed one.
    fn tag_done(
        &mut self,
        input: &[u8],
        end: bool,
        close: usize,
        limits: &ParserLimits,
    ) -> Result<Option<Frame>, ParseError> {
        let tag = self.markup..close + 1;
        if end {
            let name = input[self.markup + 2..close].trim_ascii_end();
            match self.depth() {
                0 => Err(not_well_formed("an end tag before the stream header")),
                1 if self.root_name.as_deref() == Some(name) => Ok(Some(Frame::Close)),
                1 => Err(not_well_formed("the end tag does not match the stream")),
                _ => match self.open.pop() {
                    Some(start) if input[start.clone()] == *name => Ok(self.stanza_done(tag.end)),
                    _ => Err(not_well_formed("an end tag that does not match")),
                },
            }
        } else {
            let empty = input[close - 1] == b'/';
            let body = self.markup + 1..close;
            let name_len = input[body.clone()]
                .iter()
                .position(|&b| is_xml_space(b) || b == b'/')
                .unwrap_or(body.len());
            let name = body.start..body.start + name_len;
            if self.depth() == 0 {
                self.root_name = Some(input[name].to_vec());
                return Ok(Some(Frame::Header { tag, empty }));
            }
            if self.depth() > limits.max_depth {
                return Err(ParseError::TooDeep(limits.max_depth));
            }
            if empty {
                Ok(self.stanza_done(tag.end))
            } else {
                self.open.push(name);
                Ok(None)
            }
        }
    }

    /// The stanza, if the element that just ended was one.
    fn stanza_done(&mut self, end: usize) -> Option<Frame> {
        if self.depth() == 1 {
            self.stanza.take().map(|start| Frame::Stanza(start..end))
        } else {
            None
        }
    }
}

/// `<?xml version='1.0' …?>`: version 1.0, and UTF-8 if an encoding is named (RFC 6120 §11.6).
fn check_declaration(raw: &[u8]) -> Result<(), ParseError> {
    let mut reader = quick_xml::Reader::from_reader(raw);
    let Ok(Event::Decl(decl)) = reader.read_event() else {
        return Err(not_well_formed("a malformed XML declaration"));
    };
    match decl.version() {
        Ok(v) if v.as_ref() == b"1.0" => {}
        _ => return Err(not_well_formed("not XML version 1.0")),
    }
    match decl.encoding() {
        None => Ok(()),
        Some(Ok(e)) if e.eq_ignore_ascii_case(b"utf-8") => Ok(()),
        Some(_) => Err(ParseError::NotWellFormed(
            "an encoding other than UTF-8".into(),
        )),
    }
}

/// A quick-xml reader over one framed piece, whose nesting and end tags the framer checked.
fn reader(text: &str) -> quick_xml::Reader<&[u8]> {
    let mut reader = quick_xml::Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.expand_empty_elements = false;
    config.allow_dangling_amp = false;
    config.allow_unmatched_ends = false;
    config.trim_text(false);
    reader
}

fn utf8(raw: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(raw).map_err(|_| not_well_formed("invalid UTF-8"))
}

/// Reads the root's start tag: its attributes, and the namespaces stanzas inherit.
fn read_header(raw: &[u8]) -> Result<(StreamHeader, Vec<Binding>), ParseError> {
    let mut reader = reader(utf8(raw)?);
    let start = match reader.read_event() {
        Ok(Event::Start(start) | Event::Empty(start)) => start,
        Ok(_) => return Err(not_well_formed("a malformed stream header")),
        Err(e) => return Err(not_well_formed(e)),
    };
    let mut scope = Scope::default();
    let declared = scope.declare(&start)?;
    let root: Vec<Binding> = scope.bindings[..declared]
        .iter()
        .map(|(prefix, namespace)| Binding {
            prefix: prefix.clone(),
            namespace: namespace.to_string(),
        })
        .collect();
    let qname = start.name();
    let (namespace, name, _) = scope.resolve(qname.as_ref(), &[])?;
    if namespace != ns::STREAM || name != "stream" {
        return Err(ParseError::InvalidNamespace);
    }
    let mut header = StreamHeader::default();
    for attr in Attrs::of(&start) {
        let (key, value) = attr?;
        let slot = match key {
            b"to" => &mut header.to,
            b"from" => &mut header.from,
            b"version" => &mut header.version,
            b"id" => &mut header.id,
            b"xml:lang" => &mut header.lang,
            _ => continue,
        };
        *slot = Some(attr_value(value)?);
    }
    Ok((header, root))
}

/// Namespace declarations in force inside a stanza, innermost last.
#[derive(Default)]
struct Scope {
    bindings: Vec<(Vec<u8>, String)>,
}

impl Scope {
    /// Takes in the `xmlns` attributes of `start`; returns how many it declared.
    fn declare(&mut self, start: &BytesStart<'_>) -> Result<usize, ParseError> {
        let before = self.bindings.len();
        for attr in start.attributes().with_checks(false) {
            let attr = attr.map_err(not_well_formed)?;
            let key = attr.key.as_ref();
            let prefix = if key == b"xmlns" {
                &b""[..]
            } else if let Some(prefix) = key.strip_prefix(b"xmlns:") {
                check_name(prefix)?;
                prefix
            } else {
                continue;
            };
            let namespace = attr_value(&attr.value)?;
            check_binding(prefix, &namespace)?;
            if self.bindings[before..].iter().any(|(p, _)| p == prefix) {
                return Err(not_well_formed("a namespace declared twice on one element"));
            }
            self.bindings.push((prefix.to_vec(), namespace));
        }
        Ok(self.bindings.len() - before)
    }

    /// The namespace and local name of a qualified element name, and whether its prefix is
    /// one only the stream header binds.
    fn resolve<'s, 'n>(
        &'s self,
        qname: &'n [u8],
        root: &'s [Binding],
    ) -> Result<(&'s str, &'n str, bool), ParseError> {
        let (prefix, local) = split_qname(qname)?;
        if prefix == b"xml" {
            // Bound, but no element of XMPP's lives there; rxml refuses them too.
            return Err(not_well_formed("an element in the xml namespace"));
        }
        let (namespace, by_stream) = self
            .lookup(prefix, root)
            .ok_or_else(|| not_well_formed("an undeclared namespace prefix"))?;
        Ok((namespace, local, by_stream))
    }

    /// Ends the scope of the last `n` declarations.
    fn pop(&mut self, n: usize) {
        self.bindings.truncate(self.bindings.len() - n);
    }

    /// Whether the last `n` declarations include a default namespace.
    fn declares_default(&self, n: usize) -> bool {
        self.bindings[self.bindings.len() - n..]
            .iter()
            .any(|(prefix, _)| prefix.is_empty())
    }

    /// The namespace `prefix` stands for, and whether only the stream header binds it (the
    /// default namespace aside, which every stanza of a stream shares).
    fn lookup<'s>(&'s self, prefix: &[u8], root: &'s [Binding]) -> Option<(&'s str, bool)> {
        let inner = self.bindings.iter().rev().find(|(p, _)| p == prefix);
        match inner {
            Some((_, namespace)) => Some((namespace, false)),
            None => root
                .iter()
                .rev()
                .find(|b| b.prefix == prefix)
                .map(|b| (b.namespace.as_str(), !prefix.is_empty()))
                // Unprefixed names are in no namespace unless one is declared.
                .or(prefix.is_empty().then_some(("", false))),
        }
    }
}

/// The rules of Namespaces in XML 1.0 §3 for a declaration.
fn check_binding(prefix: &[u8], namespace: &str) -> Result<(), ParseError> {
    let (xml, xmlns) = (rxml::XMLNS_XML, rxml::XMLNS_XMLNS);
    let bad = match prefix {
        b"" => namespace == xml || namespace == xmlns,
        b"xml" => namespace != xml,
        b"xmlns" => true,
        _ => namespace.is_empty() || namespace == xml || namespace == xmlns,
    };
    if bad {
        return Err(not_well_formed("a reserved or empty namespace binding"));
    }
    Ok(())
}

/// Splits `prefix:local`, checking both are names without colons.
fn split_qname(qname: &[u8]) -> Result<(&[u8], &str), ParseError> {
    match memchr::memchr(b':', qname) {
        Some(i) => Ok((
            check_name(&qname[..i])?.as_bytes(),
            check_name(&qname[i + 1..])?,
        )),
        None => Ok((&b""[..], check_name(qname)?)),
    }
}

/// A name without colons (an NCName), as text.
fn check_name(raw: &[u8]) -> Result<&str, ParseError> {
    // XMPP's names are ASCII: those are checked here, the rest by rxml's tables.
    let ascii = match raw.split_first() {
        Some((&first, rest)) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        None => false,
    };
    let name = utf8(raw)?;
    if ascii {
        return Ok(name);
    }
    rxml::strings::validate_ncname(name).map_err(|_| not_well_formed("an invalid name"))?;
    Ok(name)
}

/// The attributes of a start tag other than namespace declarations, raw.
struct Attrs<'e> {
    inner: quick_xml::events::attributes::Attributes<'e>,
}

impl<'e> Attrs<'e> {
    fn of(start: &'e BytesStart<'_>) -> Attrs<'e> {
        let mut inner = start.attributes();
        // Duplicates are found when the attributes go into the element, after their
        // prefixes are resolved (two prefixes can name one namespace).
        inner.with_checks(false);
        Attrs { inner }
    }
}

impl<'e> Iterator for Attrs<'e> {
    type Item = Result<(&'e [u8], Cow<'e, [u8]>), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let attr = match self.inner.next()? {
                Ok(attr) => attr,
                Err(e) => return Some(Err(not_well_formed(e))),
            };
            let key = attr.key.into_inner();
            if key == b"xmlns" || key.starts_with(b"xmlns:") {
                continue;
            }
            return Some(Ok((key, attr.value)));
        }
    }
}

/// An attribute value as the application sees it (XML 1.0 §3.3.3): literal tabs and line
/// ends become spaces, references are replaced, and every character must be legal.
fn attr_value(raw: impl AsRef<[u8]>) -> Result<String, ParseError> {
    attr_text(raw.as_ref()).map(Cow::into_owned)
}

/// [`attr_value`], borrowed where nothing needs replacing.
fn attr_text(raw: &[u8]) -> Result<Cow<'_, str>, ParseError> {
    // Most values have nothing to replace or refuse: one look at each byte.
    if raw
        .iter()
        .all(|&b| b >= 0x20 && !matches!(b, 0xef | b'<' | b'&'))
    {
        return Ok(Cow::Borrowed(utf8(raw)?));
    }
    if raw.contains(&b'<') {
        return Err(not_well_formed("'<' in an attribute value"));
    }
    let text = utf8(raw)?;
    let spaced: Cow<str> = if raw.iter().any(|&b| matches!(b, b'\t' | b'\n' | b'\r')) {
        Cow::Owned(text.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "))
    } else {
        Cow::Borrowed(text)
    };
    let value = quick_xml::escape::unescape(&spaced).map_err(not_well_formed)?;
    check_chars(&value)?;
    Ok(Cow::Owned(value.into_owned()))
}

/// A byte that needs no second look in character data: not a control character (tab and
/// line feed aside) and not the first byte of U+FFFE or U+FFFF, nor a carriage return,
/// which line-end handling replaces.
fn plain(b: u8) -> bool {
    (b >= 0x20 && b != 0xef) || b == b'\t' || b == b'\n'
}

/// XML 1.0 §2.2: no control characters but tab and line ends, and no U+FFFE or U+FFFF.
/// The text is valid UTF-8 already, so there are no surrogates to look for.
fn check_chars(text: &str) -> Result<(), ParseError> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bad = match b {
            b'\t' | b'\n' | b'\r' => false,
            0..0x20 => true,
            0xef => matches!(bytes.get(i + 1..i + 3), Some([0xbf, 0xbe | 0xbf])),
            _ => false,
        };
        if bad {
            return Err(not_well_formed("a character XML does not allow"));
        }
    }
    Ok(())
}

fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xa | 0xd | 0x20..=0xd7ff | 0xe000..=0xfffd | 0x10000..=0x10ffff)
}

/// Builds the tree of one framed stanza.
fn build(raw: &[u8], root: &[Binding]) -> Result<Element, ParseError> {
    let mut tree = Tree::default();
    walk(raw, root, &mut tree)?;
    tree.stanza
        .ok_or_else(|| not_well_formed("an element left open"))
}

/// The tree of a stanza that declares or inherits `jabber:client` as its default namespace
/// and binds every prefix it uses itself: one the server wrote, or a client's message read
/// as a [`RawMessage`].
pub fn read_client_stanza(raw: &[u8]) -> Result<Element, ParseError> {
    let root = [Binding {
        prefix: Vec::new(),
        namespace: ns::CLIENT.to_owned(),
    }];
    build(raw, &root)
}

/// What a walk over one framed stanza does with what it reads: build the tree, or only look
/// at the top element (see [`RawMessage`]). The walk makes every check of well-formedness
/// and namespaces itself, in the same order for both, so a stanza that one sink takes the
/// other takes too, and one they refuse gets the same error from both.
trait Sink {
    /// An element starts in `namespace`; `declares_default` if it has an `xmlns` of its own.
    fn start(&mut self, namespace: &str, name: &str, declares_default: bool);
    /// An attribute of the element that started last.
    fn attr(
        &mut self,
        namespace: AttrNs<'_>,
        name: &str,
        value: Cow<'_, str>,
    ) -> Result<(), ParseError>;
    /// Character data of the innermost open element, its line ends normalised.
    fn text(&mut self, text: &str);
    /// The innermost open element ends.
    fn end(&mut self);
    /// A prefix in the element that started last is one only the stream header binds.
    fn foreign_prefix(&mut self) {}
    /// A CDATA section, whose text follows.
    fn cdata_section(&mut self) {}
    /// Whether the sink has seen all it needs: the walk ends there, unfinished.
    fn stopped(&self) -> bool {
        false
    }
}

/// The namespace of an attribute's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrNs<'a> {
    /// No prefix: no namespace.
    None,
    /// `xml:`, bound in every document.
    Xml,
    Other(&'a str),
}

/// Reads one framed stanza, checking what quick-xml leaves to its user (names, characters,
/// references, namespace bindings), and tells `sink` what it finds.
fn walk(raw: &[u8], root: &[Binding], sink: &mut impl Sink) -> Result<(), ParseError> {
    let mut reader = reader(utf8(raw)?);
    let mut scope = Scope::default();
    // The number of namespaces each open element declared, innermost last.
    let mut open: Vec<usize> = Vec::new();
    let mut ended = false;
    while !sink.stopped() {
        let (start, empty) = match reader.read_event().map_err(not_well_formed)? {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::End(_) => {
                let Some(declared) = open.pop() else {
                    return Err(not_well_formed("an end tag without a start tag"));
                };
                scope.pop(declared);
                sink.end();
                ended = open.is_empty();
                continue;
            }
            Event::Text(raw) => {
                let raw = raw.into_inner();
                if memchr::memmem::find(&raw, b"]]>").is_some() {
                    return Err(not_well_formed("']]>' in character data"));
                }
                sink.text(&char_data(utf8(&raw)?, &open)?);
                continue;
            }
            Event::CData(raw) => {
                sink.cdata_section();
                sink.text(&char_data(utf8(&raw.into_inner())?, &open)?);
                continue;
            }
            Event::GeneralRef(reference) => {
                if open.is_empty() {
                    return Err(not_well_formed("a reference outside the stanza"));
                }
                sink.text(resolve_reference(&reference)?.encode_utf8(&mut [0; 4]));
                continue;
            }
            Event::Eof => break,
            Event::Comment(_) => return Err(ParseError::Restricted("a comment")),
            Event::DocType(_) => return Err(ParseError::Restricted("a document type declaration")),
            Event::PI(_) | Event::Decl(_) => {
                return Err(ParseError::Restricted("a processing instruction"));
            }
        };
        if ended {
            return Err(not_well_formed("two elements where one stanza was framed"));
        }
        let declared = scope.declare(&start)?;
        start_tag(&start, &scope, declared, root, sink)?;
        if empty {
            scope.pop(declared);
            sink.end();
            ended = open.is_empty();
        } else {
            open.push(declared);
        }
    }
    if !sink.stopped() && (!ended || !open.is_empty()) {
        return Err(not_well_formed("an element left open"));
    }
    Ok(())
}

/// Resolves a start tag's names in the namespaces in scope (its own `declared` last) and hands
/// the element and its attributes to `sink`.
fn start_tag(
    start: &BytesStart<'_>,
    scope: &Scope,
    declared: usize,
    root: &[Binding],
    sink: &mut impl Sink,
) -> Result<(), ParseError> {
    let qname = start.name();
    let (namespace, name, by_stream) = scope.resolve(qname.as_ref(), root)?;
    sink.start(namespace, name, scope.declares_default(declared));
    if by_stream {
        sink.foreign_prefix();
    }
    for attr in Attrs::of(start) {
        if sink.stopped() {
            return Ok(());
        }
        let (key, raw) = attr?;
        let (prefix, local) = split_qname(key)?;
        let namespace = match prefix {
            b"" => AttrNs::None,
            b"xml" => AttrNs::Xml,
            _ => match scope.lookup(prefix, root) {
                Some((namespace, by_stream)) => {
                    if by_stream {
                        sink.foreign_prefix();
                    }
                    AttrNs::Other(namespace)
                }
                None => return Err(not_well_formed("an undeclared namespace prefix")),
            },
        };
        sink.attr(namespace, local, attr_text(&raw)?)?;
    }
    Ok(())
}

/// Character data with its characters checked and its line ends normalised (XML 1.0 §2.11).
fn char_data<'t>(raw: &'t str, open: &[usize]) -> Result<Cow<'t, str>, ParseError> {
    if open.is_empty() {
        return Err(not_well_formed("character data outside the stanza"));
    }
    if raw.bytes().all(plain) {
        return Ok(Cow::Borrowed(raw));
    }
    check_chars(raw)?;
    if raw.contains('\r') {
        Ok(Cow::Owned(raw.replace("\r\n", "\n").replace('\r', "\n")))
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Builds the stanza's tree.
#[derive(Default)]
struct Tree {
    /// The open elements, innermost last.
    open: Vec<Element>,
    /// Character data for the innermost open element, gathered across references.
    text: String,
    stanza: Option<Element>,
}

impl Sink for Tree {
    fn start(&mut self, namespace: &str, name: &str, _declares_default: bool) {
        if let Some(parent) = self.open.last_mut()
            && !self.text.is_empty()
        {
            parent.append_text(std::mem::take(&mut self.text));
        }
        self.open.push(Element::builder(name, namespace).build());
    }

    fn attr(
        &mut self,
        namespace: AttrNs<'_>,
        name: &str,
        value: Cow<'_, str>,
    ) -> Result<(), ParseError> {
        let namespace = match namespace {
            AttrNs::None => rxml::Namespace::NONE,
            AttrNs::Xml => rxml::Namespace::XML,
            AttrNs::Other(namespace) => rxml::Namespace::from(namespace.to_owned()),
        };
        let name = rxml::NcName::try_from(name).map_err(not_well_formed)?;
        let Some(element) = self.open.last_mut() else {
            return Err(not_well_formed("an attribute outside an element"));
        };
        if element
            .attrs_mut()
            .insert(namespace, name, value.into_owned())
            .is_some()
        {
            return Err(not_well_formed("an attribute given twice"));
        }
        Ok(())
    }

    fn text(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn end(&mut self) {
        let Some(mut element) = self.open.pop() else {
            return;
        };
        if !self.text.is_empty() {
            element.append_text(std::mem::take(&mut self.text));
        }
        match self.open.last_mut() {
            Some(parent) => {
                parent.append_child(element);
            }
            None => self.stanza = Some(element),
        }
    }
}

/// A `<message/>` from a client, checked as thoroughly as a tree is built but kept as the
/// bytes the client sent, with the little that routing reads from it.
///
/// Building a message's tree, writing it out again for the recipient and freeing it was a
/// fifth of the server's time per message in the `chat` benchmark, and a message between two
/// plain sessions needs none of it: its bytes, with `from` stamped, are what the tree would
/// have been written as. So a client's session gets its messages this way, and builds the
/// tree ([`into_element`](Self::into_element)) for any that routing cannot send as bytes.
///
/// Only a message that binds every prefix it uses itself is read this way, so that its bytes
/// mean the same on another stream; and only one whose top element has a `to` and no `from`,
/// at most [`MAX_ATTRS`] attributes on any element, no `<stanza-id/>` (which the recipient's
/// server strips when it claims to be by the recipient, XEP-0359) and no CDATA section (the
/// WebSocket and BOSH transports cut what a session writes into frames, reading the server's
/// own output, which has none).
#[derive(Debug, PartialEq)]
pub struct RawMessage {
    xml: Vec<u8>,
    to: String,
    /// The top element has an `xmlns` of its own.
    declares_default: bool,
}

/// Elements with more attributes than this are left to the tree to check for duplicates.
const MAX_ATTRS: usize = 16;

impl RawMessage {
    /// Whether a framed stanza starts as an unprefixed message does.
    fn may_be(raw: &[u8]) -> bool {
        raw.strip_prefix(b"<message")
            .and_then(|rest| rest.first())
            .is_some_and(|&b| is_xml_space(b) || b == b'>' || b == b'/')
    }

    /// Reads a framed stanza; `None` for one that has to be built as a tree.
    fn read(
        raw: &[u8],
        root: &[Binding],
        keys: &mut AttrKeys,
    ) -> Result<Option<RawMessage>, ParseError> {
        let mut top = MessageTop {
            depth: 0,
            declares_default: false,
            to: None,
            needs_tree: false,
            keys,
        };
        walk(raw, root, &mut top)?;
        if top.needs_tree {
            return Ok(None);
        }
        Ok(top.to.map(|to| RawMessage {
            xml: raw.to_vec(),
            to,
            declares_default: top.declares_default,
        }))
    }

    /// The `to` attribute's value.
    pub fn to(&self) -> &str {
        &self.to
    }

    /// The message's size in bytes, which no text in it can exceed in characters.
    pub fn len(&self) -> usize {
        self.xml.len()
    }

    pub fn is_empty(&self) -> bool {
        self.xml.is_empty()
    }

    /// The message as a session writes it to its client: `from` stamped, and `jabber:client`
    /// declared on it, as the server writes every stanza.
    pub fn written(&self, from: &str) -> Vec<u8> {
        const NAME: &[u8] = b"<message";
        let mut out = Vec::with_capacity(self.xml.len() + from.len() + 48);
        out.extend_from_slice(NAME);
        if !self.declares_default {
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(ns::CLIENT.as_bytes());
            out.push(b'\'');
        }
        out.extend_from_slice(b" from='");
        super::writer::attr_value_into(from, &mut out);
        out.push(b'\'');
        out.extend_from_slice(&self.xml[NAME.len()..]);
        out
    }

    /// The message's tree, the same as building it when it was read would have given.
    pub fn into_element(self) -> Result<Element, ParseError> {
        read_client_stanza(&self.xml)
    }
}

/// What [`RawMessage::read`] learns from its walk, which it stops as soon as the message
/// turns out to need its tree: the tree is built then, by a walk that makes the same checks.
struct MessageTop<'k> {
    depth: usize,
    declares_default: bool,
    to: Option<String>,
    needs_tree: bool,
    keys: &'k mut AttrKeys,
}

/// The attributes of the element that started last, to find duplicates among: each one's
/// namespace and name with a NUL between them (neither can hold one), ending at the offset
/// listed.
#[derive(Default)]
struct AttrKeys {
    text: String,
    ends: Vec<usize>,
}

impl Sink for MessageTop<'_> {
    fn start(&mut self, namespace: &str, name: &str, declares_default: bool) {
        if self.depth == 0 {
            self.needs_tree |= name != "message" || namespace != ns::CLIENT;
            self.declares_default = declares_default;
        }
        self.needs_tree |= name == "stanza-id";
        self.depth += 1;
        self.keys.text.clear();
        self.keys.ends.clear();
    }

    fn attr(
        &mut self,
        namespace: AttrNs<'_>,
        name: &str,
        value: Cow<'_, str>,
    ) -> Result<(), ParseError> {
        let keys = &mut *self.keys;
        if keys.ends.len() == MAX_ATTRS {
            self.needs_tree = true;
            return Ok(());
        }
        let begin = keys.text.len();
        match namespace {
            AttrNs::None => {}
            AttrNs::Xml => keys.text.push_str(rxml::XMLNS_XML),
            AttrNs::Other(namespace) => keys.text.push_str(namespace),
        }
        keys.text.push('\0');
        keys.text.push_str(name);
        let key = &keys.text[begin..];
        let mut from = 0;
        for &end in &keys.ends {
            if &keys.text[from..end] == key {
                return Err(not_well_formed("an attribute given twice"));
            }
            from = end;
        }
        keys.ends.push(keys.text.len());
        if self.depth == 1 && namespace == AttrNs::None {
            match name {
                "to" => self.to = Some(value.into_owned()),
                "from" => self.needs_tree = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn text(&mut self, _text: &str) {}

    fn end(&mut self) {
        self.depth -= 1;
    }

    fn foreign_prefix(&mut self) {
        self.needs_tree = true;
    }

    fn cdata_section(&mut self) {
        self.needs_tree = true;
    }

    fn stopped(&self) -> bool {
        self.needs_tree
    }
}

/// `&lt;` and the other four predefined entities, or a character reference to a legal
/// character; anything else would need a DTD, which a stream cannot have.
fn resolve_reference(reference: &BytesRef<'_>) -> Result<char, ParseError> {
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(c),
            _ => Err(not_well_formed(
                "a reference to a character XML does not allow",
            )),
        };
    }
    match &reference[..] {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        _ => Err(not_well_formed("a reference to an undeclared entity")),
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
        assert_eq!(err.condition(), "restricted-xml");
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let err = feed_all(&mut p, "<message>&lol;</message>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
    }

    /// The first error a stanza gives on a fresh stream, or its element.
    fn one(stanza: &str) -> Result<Element, ParseError> {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let mut out = feed_all(&mut p, stanza)?;
        match out.pop() {
            Some(StreamEvent::Stanza(el)) if out.is_empty() => Ok(el),
            other => panic!("{stanza}: {other:?}"),
        }
    }

    fn condition(stanza: &str) -> &'static str {
        match one(stanza) {
            Ok(el) => panic!("{stanza} was accepted: {el:?}"),
            Err(e) => e.condition(),
        }
    }

    #[test]
    fn comments_processing_instructions_and_doctypes_are_restricted() {
        for bad in [
            "<message><!-- hi --></message>",
            "<!-- hi -->",
            "<message><?php echo ?></message>",
            "<?xml version='1.0'?>",
            "<message><!DOCTYPE x></message>",
        ] {
            assert_eq!(condition(bad), "restricted-xml", "{bad}");
        }
    }

    #[test]
    fn rejects_what_xml_does_not_allow() {
        for bad in [
            "<message><body></message></body>",
            "<message><body></message>",
            "<message></body>",
            "<message a='1' a='2'/>",
            "<message xmlns:p='u:1' xmlns:q='u:1' p:a='1' q:a='2'/>",
            "<message xmlns='u:1' xmlns='u:2'/>",
            "<p:message/>",
            "<message p:a='1'/>",
            "<message xmlns:p=''/>",
            "<message xmlns:xmlns='u:1'/>",
            "<message xmlns:xml='u:1'/>",
            "<1message/>",
            "<message a:b:c='1'/>",
            "<message a/>",
            "<message a=1/>",
            "<message a='<'/>",
            "<message>]]></message>",
            "<message>&#0;</message>",
            "<message>&#x1;</message>",
            "<message>\u{1}</message>",
            "<message>\u{ffff}</message>",
            "<message a='&#xfffe;'/>",
            "<message>a & b</message>",
            "<message>&amp</message>",
            "<message>& amp;</message>",
            "<message a='x&foo;'/>",
        ] {
            assert_eq!(condition(bad), "not-well-formed", "{bad}");
        }
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let mut out = Vec::new();
        let err = p
            .feed(b"<message>\xff\xfe</message>", &mut out)
            .unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
    }

    #[test]
    fn text_between_stanzas_is_bad_format() {
        assert_eq!(condition("hello<presence/>"), "bad-format");
        assert_eq!(condition("<![CDATA[x]]>"), "bad-format");
        let mut p = StreamParser::new(ParserLimits::default());
        let err = feed_all(&mut p, "x<stream:stream/>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
    }

    #[test]
    fn reads_references_cdata_line_ends_and_attribute_whitespace() {
        let el = one(
            "<message a='x\ty\r\nz&#10;' b=\"'&quot;\"><body>1 &lt;2&gt; &amp;&apos;&quot;&#x263A;&#65;\r\n\
             <![CDATA[<not> &amp;]]>\r</body></message>",
        )
        .unwrap();
        assert_eq!(el.attr("a"), Some("x y z\n"));
        assert_eq!(el.attr("b"), Some("'\""));
        assert_eq!(
            el.get_child("body", ns::CLIENT).unwrap().text(),
            "1 <2> &'\"\u{263a}A\n<not> &amp;\n"
        );
    }

    #[test]
    fn resolves_namespaces_from_the_header_and_the_stanza() {
        let el = one(
            "<message xmlns:e='u:e' xml:lang='de' e:x='1'><e:a><b xmlns='u:b'><c/></b><d/></e:a>\
             <stream:error/></message>",
        )
        .unwrap();
        assert!(el.is("message", ns::CLIENT));
        assert_eq!(el.attr_ns("u:e", "x"), Some("1"));
        assert_eq!(el.attr_ns(rxml::XMLNS_XML, "lang"), Some("de"));
        let a = el.get_child("a", "u:e").unwrap();
        let b = a.get_child("b", "u:b").unwrap();
        assert!(b.get_child("c", "u:b").is_some());
        assert!(a.get_child("d", ns::CLIENT).is_some());
        assert!(el.get_child("error", ns::STREAM).is_some());
        // The stanza's declarations end with it.
        assert_eq!(condition("<e:a/>"), "not-well-formed");
    }

    #[test]
    fn the_end_tag_must_match_the_stream_header() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let err = feed_all(&mut p, "</stream>").unwrap_err();
        assert_eq!(err.condition(), "not-well-formed");
        let mut p = StreamParser::new(ParserLimits::default());
        let out = feed_all(&mut p, &format!("{OPEN}</stream:stream >trailing")).unwrap();
        assert_eq!(out.last(), Some(&StreamEvent::Close));
        let mut p = StreamParser::new(ParserLimits::default());
        let out = feed_all(
            &mut p,
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
        )
        .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn the_declaration_may_only_open_the_stream() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, "<?xml version='1.0' encoding='UTF-8'?>\n").unwrap();
        assert_eq!(feed_all(&mut p, &OPEN[21..]).unwrap().len(), 1);
        let mut p = StreamParser::new(ParserLimits::default());
        let err = feed_all(&mut p, " <?xml version='1.0'?>").unwrap_err();
        assert_eq!(err.condition(), "restricted-xml");
        for bad in [
            "<?xml version='1.1'?>",
            "<?xml version='1.0' encoding='latin1'?>",
        ] {
            let mut p = StreamParser::new(ParserLimits::default());
            let err = feed_all(&mut p, bad).unwrap_err();
            assert_eq!(err.condition(), "not-well-formed", "{bad}");
        }
    }

    /// A stanza fed a byte at a time is looked at about once per byte, not once per byte
    /// for each byte before it: after every chunk the framer stands at the end of what it holds
    /// (or at most a markup opening before it, waiting to tell `<!--` from `<![CDATA[`).
    #[test]
    fn a_stanza_arriving_slowly_is_framed_in_linear_time() {
        let mut p = StreamParser::new(ParserLimits::default());
        feed_all(&mut p, OPEN).unwrap();
        let stanza = format!(
            "<message><body a='{}'>{}<![CDATA[{}]]></body></message>",
            "v".repeat(50_000),
            "t".repeat(50_000),
            "c".repeat(50_000)
        );
        let mut out = Vec::new();
        for b in stanza.as_bytes() {
            p.feed(std::slice::from_ref(b), &mut out).unwrap();
            if out.is_empty() {
                assert!(p.framer.pos + CDATA_OPEN.len() >= p.held.len());
            }
        }
        assert_eq!(out.len(), 1);
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
            assert!(p.framer.depth() <= limits.max_depth + 1);
            assert!(p.held.len() <= limits.max_stanza_bytes);
        }
    }

    const NAMES: &[&str] = &["a", "body", "x:y", "p:q", "xml:lang", "_1", "é", "1", ""];
    const TEXTS: &[&str] = &[
        "hi",
        " ",
        "&amp;",
        "&lt;&gt;",
        "&#65;",
        "&#x263A;",
        "&#0;",
        "&foo;",
        "a&b",
        "]]>",
        "]]",
        ">",
        "\r\n",
        "\r",
        "\t",
        "<![CDATA[ <&> ]]>",
        "\u{1}",
        "\u{fffe}",
        "é",
    ];
    const VALUES: &[&str] = &["v", "", "&quot;'", "a\tb\nc", "&#10;", "<", "&", "u:1"];
    /// Appends a random element, often broken, to `out` (see `agrees_with_rxml_on_random_stanzas`).
    fn element(next: &mut dyn FnMut(usize) -> usize, depth: usize, out: &mut String) {
        let name = NAMES[next(NAMES.len())];
        out.push('<');
        out.push_str(name);
        for _ in 0..next(4) {
            let attr = match next(6) {
                0 => "xmlns:p",
                1 => "xmlns",
                _ => NAMES[next(NAMES.len())],
            };
            let quote = if next(2) == 0 { '\'' } else { '"' };
            out.push_str(&format!(
                " {attr}={quote}{}{quote}",
                VALUES[next(VALUES.len())]
            ));
        }
        if depth > 2 || next(3) == 0 {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for _ in 0..next(4) {
            if next(2) == 0 {
                out.push_str(TEXTS[next(TEXTS.len())]);
            } else {
                element(next, depth + 1, out);
            }
        }
        out.push_str(&format!("</{name}>"));
    }

    /// Pseudo-random numbers below the bound asked for (xorshift), the same on every run.
    fn numbers(mut state: u64) -> impl FnMut(usize) -> usize {
        move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        }
    }

    /// `stanza`, one time in three with a byte changed to one of markup; None if that left it
    /// no longer UTF-8.
    fn edited(stanza: String, next: &mut impl FnMut(usize) -> usize) -> Option<String> {
        let mut bytes = stanza.into_bytes();
        if next(3) == 0 && !bytes.is_empty() {
            let i = next(bytes.len());
            let edits = b"<>/='\"&;: x";
            bytes[i] = edits[next(edits.len())];
        }
        String::from_utf8(bytes).ok()
    }

    /// Random stanzas, many of them broken by small edits, read by this parser and by minidom's
    /// own (rxml, which checks all of XML in one pass): both accept and build the same tree, or
    /// both refuse.
    #[test]
    fn agrees_with_rxml_on_random_stanzas() {
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        let mut checked = [0usize; 2];
        for _ in 0..20_000 {
            let mut stanza = String::new();
            element(&mut next, 0, &mut stanza);
            let Some(stanza) = edited(stanza, &mut next) else {
                continue;
            };
            let ours = {
                let mut p = StreamParser::new(ParserLimits::default());
                feed_all(&mut p, OPEN).unwrap();
                // In three pieces, cut anywhere, to exercise resuming.
                let input = format!("{stanza}<presence/>").into_bytes();
                let mut cuts = [next(input.len() + 1), next(input.len() + 1)];
                cuts.sort();
                let mut events = Vec::new();
                let fed = [
                    &input[..cuts[0]],
                    &input[cuts[0]..cuts[1]],
                    &input[cuts[1]..],
                ]
                .into_iter()
                .try_for_each(|piece| p.feed(piece, &mut events))
                .map(|()| events);
                match fed {
                    Ok(mut events) if events.len() == 2 => match events.remove(0) {
                        StreamEvent::Stanza(el) => Ok(el),
                        other => panic!("{other:?}"),
                    },
                    Ok(events) => Err(format!("{} events", events.len())),
                    Err(e) => Err(e.to_string()),
                }
            };
            let theirs = format!("{OPEN}{stanza}</stream:stream>")
                .parse::<Element>()
                .map_err(|e| e.to_string())
                .and_then(|root| root.children().next().cloned().ok_or("no child".into()));
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{stanza}"),
                (Err(_), Err(_)) => {}
                // rxml takes a second declaration of a prefix, or a second xml:lang, on one
                // element; XML does not (well-formedness constraint "Unique Att Spec").
                (Err(e), Ok(_))
                    if e.ends_with("a namespace declared twice on one element")
                        || e.ends_with("an attribute given twice") => {}
                _ => panic!("{stanza}: ours {ours:?}, rxml {theirs:?}"),
            }
            checked[ours.is_ok() as usize] += 1;
        }
        // Both kinds are well represented.
        assert!(checked[0] > 1_000 && checked[1] > 1_000, "{checked:?}");
    }

    /// A fresh stream's events for `stanza`, from a parser that reads messages raw or not.
    fn events(raw: bool, stanza: &str) -> Result<Vec<StreamEvent>, ParseError> {
        let mut p = StreamParser::new(ParserLimits::default());
        if raw {
            p.read_messages_raw(true);
        }
        feed_all(&mut p, OPEN).unwrap();
        feed_all(&mut p, stanza)
    }

    fn one_raw(stanza: &str) -> Result<StreamEvent, ParseError> {
        let mut out = events(true, stanza)?;
        assert_eq!(out.len(), 1, "{stanza}");
        Ok(out.remove(0))
    }

    /// What a raw message gives against the tree read the usual way: the same tree, and
    /// written with `from` stamped, that tree with `from`.
    fn assert_same(message: RawMessage, tree: &Element, stanza: &str) {
        let from = "alice@localhost/it's <&>";
        let mut stamped = tree.clone();
        crate::stanza::set_attr(&mut stamped, "from", from);
        let written = message.written(from);
        assert_eq!(
            read_client_stanza(&written).as_ref(),
            Ok(&stamped),
            "{stanza}"
        );
        assert_eq!(message.into_element().as_ref(), Ok(tree), "{stanza}");
    }

    #[test]
    fn plain_messages_are_read_raw_and_give_the_same_tree() {
        for stanza in [
            "<message to='bob@localhost/b' type='chat' id='1' xml:lang='en'>\
             <body>h&#xe9;llo &lt;b&gt; &amp;\r\n ]] > \u{1F600}</body>\
             <x xmlns='urn:x' a='1'><y/></x><p:z xmlns:p='urn:p' p:q='&apos;\t'/></message>",
            // One that declares jabber:client itself is not given a second declaration.
            "<message xmlns='jabber:client' to='a@b/c'><body>x</body></message>",
            "<message\n  to=\"a@b/c\"/>",
        ] {
            let Ok(StreamEvent::Message(message)) = one_raw(stanza) else {
                panic!("{stanza} was not read raw");
            };
            assert_eq!(Some(message.to()), one(stanza).unwrap().attr("to"));
            assert_same(message, &one(stanza).unwrap(), stanza);
        }
    }

    #[test]
    fn messages_that_need_their_tree_are_built() {
        let many_attrs: String = (0..=MAX_ATTRS).map(|i| format!(" a{i}=''")).collect();
        for stanza in [
            "<message type='chat'><body>no to</body></message>",
            "<message to='a@b/c' from='x@y/z'/>",
            // A prefix only the stream header binds.
            "<message to='a@b/c'><stream:error/></message>",
            "<message to='a@b/c'><x stream:a='1'/></message>",
            "<message to='a@b/c'><stanza-id xmlns='urn:xmpp:sid:0' by='a@b' id='1'/></message>",
            "<message to='a@b/c'><body><![CDATA[<b>]]></body></message>",
            "<c:message xmlns:c='jabber:client' to='a@b/c'/>",
            "<message xmlns='urn:other' to='a@b/c'/>",
            &format!("<message to='a@b/c'><x{many_attrs}/></message>"),
            "<iq type='get' id='1' to='a@b/c'/>",
            "<messages to='a@b/c'/>",
        ] {
            match one_raw(stanza) {
                Ok(StreamEvent::Stanza(el)) => assert_eq!(el, one(stanza).unwrap(), "{stanza}"),
                other => panic!("{stanza}: {other:?}"),
            }
        }
    }

    #[test]
    fn raw_messages_are_refused_as_trees_are() {
        for stanza in [
            "<message to='a@b/c' to='d@e/f'/>",
            "<message to='a@b/c' xmlns:p='u:1' xmlns:q='u:1' p:a='1' q:a='2'/>",
            "<message to='a@b/c'><x:y/></message>",
            "<message to='a@b/c' x:y='1'/>",
            "<message to='a@b/c'>&#0;</message>",
            "<message to='a@b/c'>&lol;</message>",
            "<message to='a@b/c'>]]></message>",
            "<message to='a@b/c'>\u{1}</message>",
            "<message to='a@b/c'><body a='&lt;&#1;'/></message>",
            "<message to='a@b/c'><xml:x/></message>",
            "<message to='a@b/c' xmlns:p=''/>",
            "<message to='a@b/c\u{fffe}'/>",
        ] {
            assert_eq!(one_raw(stanza).err(), one(stanza).err(), "{stanza}");
            assert!(one_raw(stanza).is_err(), "{stanza}");
        }
    }

    /// Random messages, many of them broken by small edits: read raw or as trees, both are
    /// refused with the same error, or both read, to the same tree.
    #[test]
    fn raw_and_tree_reading_agree_on_random_messages() {
        let mut next = numbers(0x6a09_e667_f3bc_c908);
        let mut raw_read = 0;
        for _ in 0..20_000 {
            let mut stanza = String::from("<message to='b@c/d'");
            if next(8) == 0 {
                stanza.push_str(" from='x@y/z'");
            }
            stanza.push('>');
            for _ in 0..next(4) {
                if next(2) == 0 {
                    stanza.push_str(TEXTS[next(TEXTS.len())]);
                } else {
                    element(&mut next, 1, &mut stanza);
                }
            }
            stanza.push_str("</message>");
            let Some(stanza) = edited(stanza, &mut next) else {
                continue;
            };
            match (events(true, &stanza), events(false, &stanza)) {
                (Err(a), Err(b)) => assert_eq!(a, b, "{stanza}"),
                (Ok(raw), Ok(trees)) => {
                    assert_eq!(raw.len(), trees.len(), "{stanza}");
                    for (r, t) in raw.into_iter().zip(trees) {
                        match (r, t) {
                            (StreamEvent::Message(m), StreamEvent::Stanza(t)) => {
                                raw_read += 1;
                                assert_same(m, &t, &stanza);
                            }
                            (r, t) => assert_eq!(r, t, "{stanza}"),
                        }
                    }
                }
                (a, b) => panic!("{stanza}: raw {a:?}, trees {b:?}"),
            }
        }
        assert!(raw_read > 1_000, "{raw_read}");
    }
}
