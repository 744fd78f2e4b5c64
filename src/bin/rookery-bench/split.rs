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
    let start = stanza
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(stanza.len());
    let stanza = &stanza[start..];
    let is_message = stanza.starts_with(b"<message")
        && matches!(
            stanza.get(8),
            Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n')
        );
    if !is_message {
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
}
