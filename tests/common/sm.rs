//! Stream management (XEP-0198) from a raw client's side: enabling, reading counts and
//! bodies, and an authenticated connection ready to resume.

use super::*;

pub const SM: &str = "urn:xmpp:sm:3";

/// The value of attribute `name` in the first `<tag` of `text`.
pub fn attr(text: &str, tag: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}"))?;
    let rest = &text[start..];
    let end = rest.find('>')?;
    let tag_text = &rest[..end];
    for quote in ['\'', '"'] {
        let key = format!("{name}={quote}");
        if let Some(i) = tag_text.find(&key) {
            let value = &tag_text[i + key.len()..];
            return value.find(quote).map(|j| value[..j].to_owned());
        }
    }
    None
}

/// Bodies "m1", "m2" … in the order they appear in `text`.
pub fn bodies(text: &str) -> Vec<String> {
    text.split("<body>")
        .skip(1)
        .filter_map(|b| b.split("</body>").next())
        .map(str::to_owned)
        .collect()
}

/// A phone logged in as alice/phone with stream management enabled; the resumption id.
pub async fn phone(server: &TestServer, password: &str) -> (Raw, String) {
    let mut phone = Raw::login(server, "alice", password, "phone").await;
    phone
        .send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = phone.read_until("/>").await;
    let id = attr(&enabled, "enabled", "id").expect("a resumption id");
    assert_eq!(attr(&enabled, "enabled", "resume").as_deref(), Some("true"));
    phone.send("<presence/>").await;
    (phone, id)
}

/// Authenticates a new connection as alice without binding, ready for `<resume/>`.
pub async fn authenticated(server: &TestServer, password: &str) -> Raw {
    let mut raw = Raw::tls(server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", password)
    ))
    .await;
    raw.read_until("<success").await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(
        features.contains(SM),
        "stream management is offered: {features}"
    );
    raw
}

pub async fn send_bodies(bob: &mut XmppClient, range: std::ops::RangeInclusive<u32>) {
    for n in range {
        bob.send(&format!(
            "<message to='alice@localhost/phone' type='chat'><body>m{n}</body></message>"
        ))
        .await;
    }
}
