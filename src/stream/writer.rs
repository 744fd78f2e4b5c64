//! Serialising what the server sends: stream headers, features, stream errors and stanzas.
//!
//! Stream-level elements are written by hand with the conventional `stream:` prefix because
//! some older clients match on the prefixed name rather than on the namespace.

use minidom::Element;

use super::ns;

/// Escapes text for use inside an attribute value or character data (see [`escape_into`]).
pub fn escape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    escape_into(s, ATTR, &mut out);
    // Only ASCII references and U+FFFD replace whole characters, so this stays UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `s` escaped for an attribute value in either kind of quotes.
pub fn attr_value_into(s: &str, out: &mut Vec<u8>) {
    escape_into(s, ATTR, out);
}

/// The response stream header (RFC 6120 §4.7).
pub fn stream_header(from: &str, to: Option<&str>, id: &str, content_ns: &str) -> String {
    let to = to
        .map(|t| format!(" to='{}'", escape(t)))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{content_ns}' xmlns:stream='{}' \
         id='{}' from='{}'{to} version='1.0' xml:lang='en'>",
        ns::STREAM,
        escape(id),
        escape(from),
    )
}

/// A server-to-server stream header (RFC 6120 §4.7) with the dialback namespace declared
/// (XEP-0220 §2.1); `id` only on the responding side.
pub fn server_stream_header(from: &str, to: &str, id: Option<&str>) -> String {
    let id = id
        .map(|i| format!(" id='{}'", escape(i)))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' \
         from='{}' to='{}'{id} version='1.0' xml:lang='en'>",
        ns::SERVER,
        ns::STREAM,
        ns::DIALBACK,
        escape(from),
        escape(to),
    )
}

/// The header answering an external component (XEP-0114 §3): no version, since the
/// handshake comes instead of stream features.
pub fn component_stream_header(from: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' from='{}' id='{}'>",
        ns::COMPONENT,
        ns::STREAM,
        escape(from),
        escape(id),
    )
}

/// Serialises an element (see [`element_into`]).
pub fn element(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    element_into(el, &mut out);
    out
}

/// Appends an element's XML to `out`, declaring each namespace where it changes as the
/// default namespace. Written here rather than with minidom's writer, which validates every
/// name again and tracks prefixes through rxml for each element written: a third of the
/// server's CPU in a group chat fan-out, where one message is written once per occupant.
///
/// The tree comes from the parser (names validated there) or from the server's own code; a
/// name that could still break the markup makes the whole element come out empty, as
/// minidom's writer did on a name it rejected.
pub fn element_into(el: &Element, out: &mut Vec<u8>) {
    let start = out.len();
    if write_element(el, None, None, out).is_err() {
        out.truncate(start);
    }
}

/// [`element_into`] with the element's `to` attribute replaced by `to`: one stanza written for
/// each of many recipients without a copy for each.
pub fn element_to_into(el: &Element, to: &str, out: &mut Vec<u8>) {
    let start = out.len();
    if write_element(el, None, Some(to), out).is_err() {
        out.truncate(start);
    }
}

/// A name that is not safe to write as is.
struct BadName;

fn write_element(
    el: &Element,
    parent_ns: Option<&str>,
    to: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), BadName> {
    let name = el.name();
    check_name(name)?;
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    // Only a namespace that differs from the parent's is declared (and an empty one at the
    // top, where the stream's default applies).
    let ns = match parent_ns {
        Some(p) if el.has_ns(p) => None,
        None if el.has_ns("") => None,
        _ => Some(namespace_of(el)),
    };
    if let Some(ns) = &ns {
        out.extend_from_slice(b" xmlns='");
        escape_into(ns, ATTR, out);
        out.push(b'\'');
    }
    if let Some(to) = to {
        out.extend_from_slice(b" to='");
        escape_into(to, ATTR, out);
        out.push(b'\'');
    }
    let mut prefixes = 0usize;
    for ((attr_ns, attr), value) in el.attrs() {
        let attr: &str = attr;
        if to.is_some() && attr == "to" && attr_ns.is_none() {
            continue;
        }
        check_name(attr)?;
        out.push(b' ');
        if attr_ns.as_str() == rxml::Namespace::XML.as_str() {
            out.extend_from_slice(b"xml:");
        } else if !attr_ns.is_none() {
            // Namespaced attributes are rare in XMPP; each gets a prefix of its own.
            let prefix = format!("a{prefixes}");
            prefixes += 1;
            out.extend_from_slice(format!("xmlns:{prefix}='").as_bytes());
            escape_into(attr_ns.as_str(), ATTR, out);
            out.extend_from_slice(format!("' {prefix}:").as_bytes());
        }
        out.extend_from_slice(attr.as_bytes());
        out.extend_from_slice(b"='");
        escape_into(value, ATTR, out);
        out.push(b'\'');
    }
    if el.nodes().next().is_none() {
        out.extend_from_slice(b"/>");
        return Ok(());
    }
    out.push(b'>');
    // The children's parent namespace: this element's, whether declared here or inherited.
    let own_ns = match (&ns, parent_ns) {
        (Some(ns), _) => ns.as_ref(),
        (None, Some(p)) => p,
        (None, None) => "",
    };
    for node in el.nodes() {
        match node {
            minidom::Node::Element(child) => write_element(child, Some(own_ns), None, out)?,
            minidom::Node::Text(text) => escape_into(text, TEXT, out),
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

/// An element's namespace. Every stanza's top element declares its own, so the stream
/// namespaces are matched without the copy minidom's `ns()` makes.
fn namespace_of(el: &Element) -> std::borrow::Cow<'static, str> {
    [ns::CLIENT, ns::SERVER, ns::COMPONENT]
        .into_iter()
        .find(|known| el.has_ns(*known))
        .map_or_else(|| el.ns().into(), Into::into)
}

/// Bytes that cannot be part of an element or attribute name as written here.
fn check_name(name: &str) -> Result<(), BadName> {
    let bad = name.is_empty()
        || name
            .bytes()
            .any(|b| matches!(b, b'<' | b'>' | b'&' | b'\'' | b'"' | b'=' | b'/') || b <= b' ');
    if bad { Err(BadName) } else { Ok(()) }
}

/// Which bytes need a reference in character data, and in a single-quoted attribute value
/// (there also quotes and the whitespace that attribute normalisation would turn into spaces).
const TEXT: u8 = 1;
const ATTR: u8 = 2;
/// Control characters XML 1.0 does not allow, not even as references.
const INVALID: u8 = 4;
/// The last byte of U+FFFE and U+FFFF (EF BF BE, EF BF BF), which XML does not allow either.
const NONCHARACTER_END: u8 = 8;
const ESCAPED: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = INVALID;
        b += 1;
    }
    t[b'&' as usize] = TEXT | ATTR;
    t[b'<' as usize] = TEXT | ATTR;
    t[b'>' as usize] = TEXT | ATTR;
    t[b'\r' as usize] = TEXT | ATTR;
    t[b'\'' as usize] = ATTR;
    t[b'"' as usize] = ATTR;
    t[b'\n' as usize] = ATTR;
    t[b'\t' as usize] = ATTR;
    t[0xBE] = NONCHARACTER_END;
    t[0xBF] = NONCHARACTER_END;
    t
};

/// U+FFFD, written in place of a character XML cannot carry (text from the REST bridge, say),
/// so that the stanza still goes out and the stream stays well-formed.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

fn escape_into(s: &str, context: u8, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let class = ESCAPED[b as usize];
        if class & (context | INVALID | NONCHARACTER_END) == 0 {
            continue;
        }
        let (start, replacement): (usize, &[u8]) = if class & NONCHARACTER_END != 0 {
            if i >= 2 && bytes[i - 2] == 0xEF && bytes[i - 1] == 0xBF {
                (i - 2, REPLACEMENT)
            } else {
                continue;
            }
        } else if class & INVALID != 0 {
            (i, REPLACEMENT)
        } else {
            let reference: &[u8] = match b {
                b'&' => b"&amp;",
                b'<' => b"&lt;",
                b'>' => b"&gt;",
                b'\'' => b"&apos;",
                b'"' => b"&quot;",
                b'\r' => b"&#xD;",
                b'\n' => b"&#xA;",
                _ => b"&#x9;",
            };
            (i, reference)
        };
        out.extend_from_slice(&bytes[plain..start]);
        out.extend_from_slice(replacement);
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// A dialback element (`jabber:server:dialback`) with the `db:` prefix our stream header
/// declares. Some servers (ejabberd) match these elements by their prefixed name and ignore a
/// `<result xmlns='jabber:server:dialback'>`, as some clients do with `stream:`.
pub fn dialback(el: &Element) -> Vec<u8> {
    let mut out = format!("<db:{}", el.name());
    // Dialback elements carry only unqualified attributes (from, to, id, type).
    for ((namespace, name), value) in el.attrs() {
        if namespace.is_none() {
            out.push_str(&format!(" {name}='{}'", escape(value)));
        }
    }
    if el.nodes().next().is_none() {
        out.push_str("/>");
        return out.into_bytes();
    }
    out.push('>');
    let mut bytes = out.into_bytes();
    for node in el.nodes() {
        match node {
            minidom::Node::Element(child) => bytes.extend_from_slice(&element(child)),
            minidom::Node::Text(text) => bytes.extend_from_slice(escape(text).as_bytes()),
        }
    }
    bytes.extend_from_slice(format!("</db:{}>", el.name()).as_bytes());
    bytes
}

pub fn features(children: &[Element]) -> Vec<u8> {
    let mut out = b"<stream:features>".to_vec();
    for child in children {
        out.extend_from_slice(&element(child));
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

/// A stream error (RFC 6120 §4.9) followed by the closing tag.
pub fn stream_error(condition: &str, text: Option<&str>) -> Vec<u8> {
    let text = text
        .map(|t| {
            format!(
                "<text xmlns='{}' xml:lang='en'>{}</text>",
                ns::STREAM_ERRORS,
                escape(t)
            )
        })
        .unwrap_or_default();
    format!(
        "<stream:error><{condition} xmlns='{}'/>{text}</stream:error></stream:stream>",
        ns::STREAM_ERRORS
    )
    .into_bytes()
}

pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;

    /// Elements written and parsed again are the same tree, and minidom reads the same tree
    /// from its own writer's output.
    #[test]
    fn elements_survive_a_round_trip() {
        let cases = [
            "<message xmlns='jabber:client' to='a@b/c' type='chat' id='x&apos;&quot;&lt;&gt;&amp;'>\
             <body>hi &lt;there&gt; &amp; a]]&gt;b\r\nline</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='r@c' id='1'/>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item jid='u@d' role='x'/></x>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<iq xmlns='jabber:client' type='result' id='1'><query xmlns='jabber:iq:roster'>\
             <item jid='a@b' name='tab\there'><group>Friends</group></item></query></iq>",
            "<presence xmlns='jabber:client' xml:lang='en'><status xml:lang='de'>da</status>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>",
            "<a xmlns='urn:a'><b xmlns=''><c/></b><d xmlns:p='urn:p' p:attr='1'/>text</a>",
            "<r xmlns='urn:r' v='new&#xA;line&#x9;tab'/>",
        ];
        for xml in cases {
            let el: Element = xml.parse().expect("test input parses");
            let ours = String::from_utf8(element(&el)).expect("utf-8");
            let back: Element = ours.parse().expect("our output parses");
            assert_eq!(back, el, "{ours}");
            let mut theirs = Vec::new();
            el.write_to(&mut theirs).expect("minidom writes it");
            let theirs: Element = String::from_utf8(theirs)
                .expect("utf-8")
                .parse()
                .expect("minidom's output parses");
            assert_eq!(back, theirs);
        }
    }

    #[test]
    fn namespaces_are_declared_where_they_change() {
        let el: Element = "<message xmlns='jabber:client' to='x'><body>b</body>\
                           <x xmlns='urn:x'><y/></x></message>"
            .parse()
            .expect("parses");
        assert_eq!(
            String::from_utf8(element(&el)).expect("utf-8"),
            "<message xmlns='jabber:client' to='x'><body>b</body><x xmlns='urn:x'><y/></x></message>"
        );
    }

    #[test]
    fn a_shared_stanza_is_written_to_each_recipient() {
        let el: Element = "<message xmlns='jabber:client' from='r@c/n' to='old' type='groupchat'>\
                           <body>b</body></message>"
            .parse()
            .expect("parses");
        let mut out = Vec::new();
        element_to_into(&el, "u@d/r'1", &mut out);
        let written: Element = String::from_utf8(out)
            .expect("utf-8")
            .parse()
            .expect("parses");
        let mut expected = el.clone();
        expected.set_attr(
            rxml::Namespace::NONE,
            "to".try_into().expect("name"),
            "u@d/r'1",
        );
        assert_eq!(written, expected);
        let bare: Element = "<message xmlns='jabber:client'/>".parse().expect("parses");
        assert_eq!(
            String::from_utf8(element_to(&bare, "x@y")).expect("utf-8"),
            "<message xmlns='jabber:client' to='x@y'/>"
        );
    }

    fn element_to(el: &Element, to: &str) -> Vec<u8> {
        let mut out = Vec::new();
        element_to_into(el, to, &mut out);
        out
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let el = Element::builder("body", "jabber:client")
            .attr("id".try_into().expect("name"), "a\u{1}b")
            .append("x\u{0}y\u{b}z\u{FFFF}\u{FFFE}\u{FFFD}\u{FFBF}\ttab\nline")
            .build();
        let written = String::from_utf8(element(&el)).expect("utf-8");
        assert_eq!(
            written,
            "<body xmlns='jabber:client' id='a\u{FFFD}b'>\
             x\u{FFFD}y\u{FFFD}z\u{FFFD}\u{FFFD}\u{FFFD}\u{FFBF}\ttab\nline</body>"
        );
        let back: Element = written.parse().expect("parses");
        assert_eq!(back.attr("id"), Some("a\u{FFFD}b"));
    }

    #[test]
    fn a_name_that_would_break_the_markup_writes_nothing() {
        let mut out = b"before".to_vec();
        let el = Element::builder("message", "jabber:client")
            .append(Element::bare("x y='1'", "urn:x"))
            .build();
        element_into(&el, &mut out);
        assert_eq!(out, b"before");
    }

    #[test]
    fn header_escapes_attributes() {
        let h = stream_header("a'b", Some("<x>"), "id1", ns::CLIENT);
        assert!(h.contains("from='a&apos;b'"));
        assert!(h.contains("to='&lt;x&gt;'"));
    }

    #[test]
    fn dialback_elements_carry_the_db_prefix() {
        let mut result = Element::bare("result", ns::DIALBACK);
        result.set_attr(
            rxml::Namespace::NONE,
            rxml::NcName::try_from("to").unwrap(),
            "a'b",
        );
        result.append_text_node("k<1>");
        let text = String::from_utf8(dialback(&result)).unwrap();
        assert_eq!(text, "<db:result to='a&apos;b'>k&lt;1&gt;</db:result>");
        let verdict = Element::bare("result", ns::DIALBACK);
        assert_eq!(dialback(&verdict), b"<db:result/>");
    }

    #[test]
    fn stream_error_has_condition_and_text() {
        let e = String::from_utf8(stream_error("host-unknown", Some("no such host"))).unwrap();
        assert!(e.starts_with("<stream:error><host-unknown xmlns="));
        assert!(e.ends_with("</stream:stream>"));
    }
}
