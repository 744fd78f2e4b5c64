//! Cuts a server's XMPP stream into its top-level pieces (the stream header, each stanza, the
//! stream's end) by scanning for tags, without parsing. During a measured run the client only
//! needs to know which pieces are messages and find the time stamp in them; building an XML
//! tree for each of tens of thousands of messages a second took half of the load generator's
//! CPU, which it then took from the server under test on the same cores.

/// One complete top-level piece at the start of the buffer, and how many bytes it spans.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Piece {
    /// The `<stream:stream …>` start tag, with any XML declaration and whitespace before it.
    Header(usize),
    /// A complete stanza or other top-level element.
    Stanza(usize),
    /// `</stream:stream>`.
    Close(usize),
}

impl Piece {
    pub fn len(self) -> usize {
        match self {
            Piece::Header(n) | Piece::Stanza(n) | Piece::Close(n) => n,
        }
    }
}

/// Finds the first complete piece of `buf`, given whether the stream header was seen; `None`
/// when more bytes are needed. Whitespace between stanzas belongs to the piece after it.
pub fn next_piece(buf: &[u8], open: bool) -> Option<Piece> {
    let mut i = buf.iter().position(|b| !b.is_ascii_whitespace())?;
    if !open {
        // The XML declaration, then the stream's start tag.
        if buf[i..].starts_with(b"<?") {
            i += find(&buf[i..], b"?>")? + 2;
            i += buf[i..].iter().position(|b| !b.is_ascii_whitespace())?;
        }
        let (end, _) = tag_end(buf, i)?;
        return Some(Piece::Header(end));
    }
    if buf[i..].starts_with(b"</") {
        return Some(Piece::Close(i + find(&buf[i..], b">")? + 1));
    }
    let mut depth = 0usize;
    loop {
        if buf[i..].starts_with(b"<![CDATA[") {
            i += find(&buf[i..], b"]]>")? + 3;
        } else if buf[i..].starts_with(b"</") {
            i += find(&buf[i..], b">")? + 1;
            depth = depth.saturating_sub(1);
        } else {
            let (end, empty) = tag_end(buf, i)?;
            i = end;
            if !empty {
                depth += 1;
            }
        }
        if depth == 0 {
            return Some(Piece::Stanza(i));
        }
        // Character data up to the next tag.
        i += buf[i..].iter().position(|&b| b == b'<')?;
    }
}

/// The end of the start tag at `start` (just past its `>`), and whether it is an empty-element
/// tag. A `>` inside a quoted attribute value does not end the tag.
fn tag_end(buf: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut quote = None;
    for (i, &b) in buf.iter().enumerate().skip(start + 1) {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'>') => return Some((i + 1, buf[i - 1] == b'/')),
            _ => {}
        }
    }
    None
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What stream management (XEP-0198) counts a top-level element as.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Counted {
    /// A message, presence or iq: one more handled.
    Stanza,
    /// The server's `<r/>`: it wants to know how many were handled.
    AckRequest,
    /// Anything else (an `<a/>`, say).
    Neither,
}

/// A piece without the whitespace before it.
fn trimmed(piece: &[u8]) -> &[u8] {
    let start = piece
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(piece.len());
    &piece[start..]
}

/// Whether a trimmed piece starts with an element of this (unprefixed) name.
fn named(piece: &[u8], name: &[u8]) -> bool {
    piece.first() == Some(&b'<')
        && piece.get(1..=name.len()) == Some(name)
        && matches!(
            piece.get(name.len() + 1),
            Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n')
        )
}

/// Counts a complete top-level element (with any leading whitespace) for stream management.
pub fn counted(piece: &[u8]) -> Counted {
    let piece = trimmed(piece);
    if named(piece, b"message") || named(piece, b"presence") || named(piece, b"iq") {
        Counted::Stanza
    } else if named(piece, b"r") {
        Counted::AckRequest
    } else {
        Counted::Neither
    }
}

/// What the load needs from a stanza, read from its bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A message whose body is one of the load's stamps: when it was sent (µs since the run's
    /// epoch).
    Stamped(u64),
    /// A message of type error.
    Error,
    /// Anything else.
    Other,
}

/// Classifies a complete stanza (with any leading whitespace).
pub fn classify(stanza: &[u8]) -> Seen {
    let stanza = trimmed(stanza);
    if !named(stanza, b"message") {
        return Seen::Other;
    }
    let Some((head_end, _)) = tag_end(stanza, 0) else {
        return Seen::Other;
    };
    let head = &stanza[..head_end];
    if find(head, b"type='error'").is_some() || find(head, b"type=\"error\"").is_some() {
        return Seen::Error;
    }
    let Some(body) = find(stanza, b"<body") else {
        return Seen::Other;
    };
    let Some((text, _)) = tag_end(stanza, body + 1) else {
        return Seen::Other;
    };
    let rest = &stanza[text..];
    let Some(digits) = rest.strip_prefix(b"b:") else {
        return Seen::Other;
    };
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n])
        .ok()
        .and_then(|d| d.parse().ok())
        .map_or(Seen::Other, Seen::Stamped)
}

/// A complete stanza seen through its bytes: what a login needs to read from the server's
/// answers (the root's name, an attribute, its text, whether a child is there) without
/// building a tree. Logins are measured too, and a tree per answer was a sixth of the load
/// generator's CPU during them.
#[derive(Debug, Clone, Copy)]
pub struct Top<'a> {
    /// The stanza without leading whitespace.
    bytes: &'a [u8],
    /// Just past the root's start tag.
    head_end: usize,
    /// Whether the root is an empty-element tag.
    empty: bool,
}

impl<'a> Top<'a> {
    pub fn new(piece: &'a [u8]) -> Option<Top<'a>> {
        let start = piece.iter().position(|b| !b.is_ascii_whitespace())?;
        let bytes = &piece[start..];
        if bytes.first() != Some(&b'<') {
            return None;
        }
        let (head_end, empty) = tag_end(bytes, 0)?;
        Some(Top {
            bytes,
            head_end,
            empty,
        })
    }

    /// The root's local name (without a namespace prefix).
    pub fn name(&self) -> &'a str {
        local(qualified_name(&self.bytes[1..self.head_end]))
    }

    /// The value of one of the root's attributes, as written (entities are not expanded).
    pub fn attr(&self, wanted: &str) -> Option<&'a str> {
        let head = &self.bytes[1..self.head_end];
        let mut rest = &head[qualified_name(head).len()..];
        loop {
            let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
            rest = &rest[start..];
            let eq = rest.iter().position(|&b| b == b'=')?;
            let name = std::str::from_utf8(&rest[..eq]).ok()?.trim_end();
            rest = &rest[eq + 1..];
            let open = rest.iter().position(|b| !b.is_ascii_whitespace())?;
            let quote = *rest.get(open).filter(|q| matches!(q, b'\'' | b'"'))?;
            rest = &rest[open + 1..];
            let close = rest.iter().position(|&b| b == quote)?;
            if name == wanted {
                return std::str::from_utf8(&rest[..close]).ok();
            }
            rest = &rest[close + 1..];
        }
    }

    /// The character data at the start of the root's content (up to its first child or end).
    pub fn text(&self) -> &'a str {
        if self.empty {
            return "";
        }
        let content = &self.bytes[self.head_end..];
        let end = content
            .iter()
            .position(|&b| b == b'<')
            .unwrap_or(content.len());
        std::str::from_utf8(&content[..end]).unwrap_or("")
    }

    /// Whether an element with this local name is anywhere inside the root.
    pub fn has_child(&self, wanted: &str) -> bool {
        let mut rest = &self.bytes[self.head_end..];
        while let Some(at) = rest.iter().position(|&b| b == b'<') {
            rest = &rest[at + 1..];
            if !rest.starts_with(b"/") && local(qualified_name(rest)) == wanted {
                return true;
            }
        }
        false
    }
}

/// The qualified name at the start of a tag's bytes (after its `<`).
fn qualified_name(tag: &[u8]) -> &[u8] {
    let end = tag
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(tag.len());
    &tag[..end]
}

fn local(qualified: &[u8]) -> &str {
    let name = std::str::from_utf8(qualified).unwrap_or("");
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(mut buf: &[u8]) -> Vec<(Piece, String)> {
        let mut out = Vec::new();
        let mut open = false;
        while let Some(p) = next_piece(buf, open) {
            open |= matches!(p, Piece::Header(_));
            out.push((
                p,
                String::from_utf8_lossy(&buf[..p.len()]).trim().to_owned(),
            ));
            buf = &buf[p.len()..];
        }
        out
    }

    #[test]
    fn a_stream_is_cut_into_header_stanzas_and_end() {
        let stream = b"<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' id='a>b'>\
            <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features> \
            <message to='a@b' title=\"x>y\"><body>b:12</body><x/></message>\
            <presence/><iq><![CDATA[</iq>]]></iq></stream:stream>";
        let got = pieces(stream);
        let kinds: Vec<_> = got.iter().map(|(p, _)| std::mem::discriminant(p)).collect();
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(got[0].1.ends_with("id='a>b'>"));
        assert!(got[1].1.starts_with("<stream:features>"));
        assert!(got[2].1.ends_with("</message>"));
        assert_eq!(got[3].1, "<presence/>");
        assert_eq!(got[4].1, "<iq><![CDATA[</iq>]]></iq>");
        assert_eq!(kinds[5], std::mem::discriminant(&Piece::Close(0)));
    }

    #[test]
    fn an_incomplete_piece_waits_for_more_bytes() {
        let stanza = b"<message to='a'><body>b:1</body></message>";
        for cut in 1..stanza.len() {
            assert_eq!(next_piece(&stanza[..cut], true), None, "cut at {cut}");
        }
        assert_eq!(next_piece(stanza, true), Some(Piece::Stanza(stanza.len())));
        assert_eq!(next_piece(b"<stream:stream x='>", false), None);
        assert_eq!(next_piece(b"  \n", true), None);
    }

    #[test]
    fn stanzas_and_ack_requests_are_counted_by_their_bytes() {
        for (piece, want) in [
            ("<message to='a'><body>x</body></message>", Counted::Stanza),
            ("\n<presence/>", Counted::Stanza),
            ("<iq type='result' id='1'/>", Counted::Stanza),
            ("<r xmlns='urn:xmpp:sm:3'/>", Counted::AckRequest),
            ("<a xmlns='urn:xmpp:sm:3' h='3'/>", Counted::Neither),
            ("<iqx/>", Counted::Neither),
            ("<rr/>", Counted::Neither),
            ("<enabled xmlns='urn:xmpp:sm:3'/>", Counted::Neither),
        ] {
            assert_eq!(counted(piece.as_bytes()), want, "{piece}");
        }
    }

    #[test]
    fn messages_are_classified_by_their_bytes() {
        assert_eq!(
            classify(b"\n<message from='r@c/n' type='groupchat'><body>b:1234</body></message>"),
            Seen::Stamped(1234)
        );
        assert_eq!(
            classify(b"<message type=\"error\"><body>b:1</body><error/></message>"),
            Seen::Error
        );
        assert_eq!(
            classify(b"<message><body xml:lang='en'>b:77</body></message>"),
            Seen::Stamped(77)
        );
        assert_eq!(
            classify(b"<message><body>hello</body></message>"),
            Seen::Other
        );
        assert_eq!(classify(b"<messages/>"), Seen::Other);
        assert_eq!(classify(b"<presence type='error'/>"), Seen::Other);
    }

    #[test]
    fn a_login_reads_names_attributes_text_and_children_from_bytes() {
        let features = Top::new(
            b"\n<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
              <required/></starttls><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
              <mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>",
        )
        .unwrap();
        assert_eq!(features.name(), "features");
        assert!(features.has_child("starttls"));
        assert!(features.has_child("mechanism"));
        assert!(!features.has_child("bind"));

        let challenge =
            Top::new(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cj1h</challenge>")
                .unwrap();
        assert_eq!(challenge.name(), "challenge");
        assert_eq!(challenge.text(), "cj1h");
        assert_eq!(
            challenge.attr("xmlns"),
            Some("urn:ietf:params:xml:ns:xmpp-sasl")
        );

        let bound = Top::new(b"<iq id = \"bind\" type=\"result\" to='a@b/r'><bind/></iq>").unwrap();
        assert_eq!(bound.name(), "iq");
        assert_eq!(bound.attr("type"), Some("result"));
        assert_eq!(bound.attr("id"), Some("bind"));
        assert_eq!(bound.attr("from"), None);

        let success = Top::new(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").unwrap();
        assert_eq!(success.name(), "success");
        assert_eq!(success.text(), "");
        assert!(!success.has_child("success"));

        let prefixed = Top::new(b"<sasl:failure><sasl:not-authorized/></sasl:failure>").unwrap();
        assert_eq!(prefixed.name(), "failure");
        assert!(prefixed.has_child("not-authorized"));
        assert!(Top::new(b"  text").is_none());
        assert!(Top::new(b"<iq type='result'").is_none());
    }
}
