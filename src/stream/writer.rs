//! Serialising what the server sends: stream headers, features, stream errors and stanzas.
//!
//! Stream-level elements are written by hand with the conventional `stream:` prefix because
//! some older clients match on the prefixed name rather than on the namespace.

use minidom::Element;

use super::ns;

/// Escapes text for use inside an attribute value or character data.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
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

/// Serialises an element; `minidom` declares the namespaces it needs.
pub fn element(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail for I/O reasons, and a tree built by the server or
    // parsed by rxml only holds valid names.
    if el.write_to(&mut out).is_err() {
        out.clear();
    }
    out
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
