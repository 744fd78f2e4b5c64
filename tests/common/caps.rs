//! Entity capabilities (XEP-0115) from a test client's side, and the personal eventing
//! notifications they bring.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::*;

pub const CAPS: &str = "http://jabber.org/protocol/caps";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const CAPS_NODE: &str = "https://rookery.test/client";

/// The features of a test client: `+notify` for each node.
pub fn client_features(notify: &[&str]) -> Vec<String> {
    let mut features = vec![DISCO_INFO.to_owned(), CAPS.to_owned()];
    for n in notify {
        // Both the node and its +notify, as real clients announce them: the order of the two
        // in the hash input is where careless implementations go wrong.
        features.push(n.to_string());
        features.push(format!("{n}+notify"));
    }
    features
}

/// The client's disco#info answer.
pub fn client_info(notify: &[&str]) -> String {
    let features: String = client_features(notify)
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    format!(
        "<query xmlns='{DISCO_INFO}'><identity category='client' type='pc' name='test'/>\
         {features}</query>"
    )
}

/// The XEP-0115 §5.1 verification string's SHA-1, computed from the spec's steps.
pub fn ver_of(notify: &[&str]) -> String {
    use sha1::Digest;
    let mut features = client_features(notify);
    features.sort();
    let mut input = "client/pc//test<".to_owned();
    for f in features {
        input.push_str(&f);
        input.push('<');
    }
    BASE64.encode(sha1::Sha1::digest(input.as_bytes()))
}

/// Logs in and sends presence with capabilities; answers the server's question about them
/// when `asked` (the first client with these capabilities).
pub async fn online_with_caps(
    server: &TestServer,
    jid: &str,
    notify: &[&str],
    asked: bool,
) -> XmppClient {
    let mut client = XmppClient::connect(server, jid, "pw").await;
    announce_caps(&mut client, notify, usize::from(asked)).await;
    client
}

/// Sends presence with capabilities and answers `questions` questions about them (one from
/// each server that does not know them yet).
pub async fn announce_caps(client: &mut XmppClient, notify: &[&str], questions: usize) {
    let info = client_info(notify);
    let ver = ver_of(notify);
    client
        .send(&format!(
            "<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
        ))
        .await;
    let node = format!("{CAPS_NODE}#{ver}");
    for _ in 0..questions {
        let question = client
            .expect("a capabilities question", |e| {
                e.name() == "iq"
                    && e.attr("type") == Some("get")
                    && e.get_child("query", DISCO_INFO)
                        .and_then(|q| q.attr("node"))
                        == Some(node.as_str())
            })
            .await;
        let answer = info.replacen("<query ", &format!("<query node='{node}' "), 1);
        client
            .send(&format!(
                "<iq type='result' to='{}' id='{}'>{answer}</iq>",
                question.attr("from").expect("from"),
                question.attr("id").expect("id"),
            ))
            .await;
    }
}

pub fn is_items_event(from: &'static str, node: &'static str) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "message"
            && e.attr("from") == Some(from)
            && e.get_child("event", EVENT)
                .and_then(|ev| ev.get_child("items", EVENT))
                .is_some_and(|i| i.attr("node") == Some(node))
    }
}
