//! HTTP File Upload (XEP-0363): a service on `upload.<domain>` hands local users a slot (a PUT
//! and a GET URL on the HTTP listener) for a file within the size limit and their quota; the
//! HTTP side (`http::upload`) takes the file for a slot once and serves it afterwards.
//!
//! Files live in `<data_dir>/uploads/<slot>/<filename>`, with the owner and content type next
//! to them; the slot id is random, so a GET URL is as private as the chat it was shared in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use minidom::Element;

use super::{Module, disco};
use crate::jid::{self, Jid};
use crate::router;
use crate::server::Server;
use crate::stanza::{self, StanzaError};

pub const NS: &str = "urn:xmpp:http:upload:0";
/// A slot must be used this soon.
const SLOT_LIFETIME: Duration = Duration::from_secs(300);
/// Unused slots the service keeps at most (all users).
const MAX_PENDING: usize = 10_000;
const DATA: &str = "jabber:x:data";

/// A slot handed out and not used yet.
#[derive(Debug, Clone)]
pub struct Slot {
    pub user: String,
    pub filename: String,
    pub size: u64,
    pub content_type: Option<String>,
    expires: Instant,
}

/// The upload service's state: pending slots and how much each user stores.
#[derive(Default)]
pub struct Upload {
    pending: Mutex<HashMap<String, Slot>>,
    /// Bytes stored per user; read from disk on first use.
    usage: Mutex<Option<HashMap<String, u64>>>,
}

#[async_trait]
impl Module for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }
}

impl Upload {
    /// Takes the slot for a PUT: it can be used once, and only before it expires.
    pub fn take(&self, id: &str) -> Option<Slot> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(id).filter(|s| s.expires > Instant::now())
    }

    /// Counts a stored file against its owner's quota.
    pub fn stored(&self, server: &Server, user: &str, bytes: u64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let map = usage.get_or_insert_with(|| scan(&root(server)));
        *map.entry(user.to_owned()).or_default() += bytes;
    }

    fn used(&self, server: &Server, user: &str) -> u64 {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let map = usage.get_or_insert_with(|| scan(&root(server)));
        map.get(user).copied().unwrap_or_default()
    }

    fn add(&self, id: String, slot: Slot) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            let now = Instant::now();
            pending.retain(|_, s| s.expires > now);
            if pending.len() >= MAX_PENDING {
                return false;
            }
        }
        pending.insert(id, slot);
        true
    }
}

/// Where uploaded files are kept.
pub fn root(server: &Server) -> PathBuf {
    server.config.data_dir.join("uploads")
}

/// The directory of one slot's file.
pub fn slot_dir(server: &Server, id: &str) -> PathBuf {
    root(server).join(id)
}

/// Bytes per owner of what is on disk: each slot directory has an `.owner` file.
fn scan(root: &Path) -> HashMap<String, u64> {
    let mut usage = HashMap::new();
    let Ok(slots) = std::fs::read_dir(root) else {
        return usage;
    };
    for slot in slots.flatten() {
        let dir = slot.path();
        let Ok(owner) = std::fs::read_to_string(dir.join(".owner")) else {
            continue;
        };
        let bytes: u64 = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        *usage.entry(owner).or_default() += bytes;
    }
    usage
}

/// Used by the router for `to` addresses on the service's domain.
pub fn is_service(server: &Server, to: &Jid) -> bool {
    to.domain().as_str() == server.upload_domain
}

/// Stanzas for the upload service: disco and slot requests; messages bounce.
pub async fn route(server: &Server, stanza: Element) {
    let kind = stanza::stanza_type(&stanza);
    if stanza.name() != "iq" || !matches!(kind, "get" | "set") {
        if stanza.name() == "message" {
            router::bounce(server, &stanza, StanzaError::service_unavailable()).await;
        }
        return;
    }
    let answer = match stanza::iq_payload(&stanza) {
        Some(p) if p.is("query", disco::INFO) && kind == "get" => Ok(Some(info(server))),
        Some(p) if p.is("query", disco::ITEMS) && kind == "get" => {
            Ok(Some(Element::bare("query", disco::ITEMS)))
        }
        Some(p) if p.is("request", NS) && kind == "get" => request(server, &stanza, p),
        Some(_) => Err(StanzaError::feature_not_implemented()),
        None => Err(StanzaError::bad_request()),
    };
    let reply = match answer {
        Ok(payload) => Some(stanza::iq_result(&stanza, payload)),
        Err(e) => stanza::error_reply(&stanza, &e),
    };
    if let Some(reply) = reply {
        router::route(server, reply).await;
    }
}

fn info(server: &Server) -> Element {
    let mut q = Element::bare("query", disco::INFO);
    q.append_child(super::el(
        "identity",
        disco::INFO,
        &[
            ("category", "store"),
            ("type", "file"),
            ("name", "HTTP File Upload"),
        ],
    ));
    for var in [disco::INFO, NS] {
        q.append_child(super::el("feature", disco::INFO, &[("var", var)]));
    }
    let mut form = Element::bare("x", DATA);
    stanza::set_attr(&mut form, "type", "result");
    for (var, value) in [
        ("FORM_TYPE", NS.to_owned()),
        (
            "max-file-size",
            server.config.upload.max_file_bytes.to_string(),
        ),
    ] {
        let mut field = Element::bare("field", DATA);
        stanza::set_attr(&mut field, "var", var);
        if var == "FORM_TYPE" {
            // XEP-0068 §4.3: FORM_TYPE counts only when hidden.
            stanza::set_attr(&mut field, "type", "hidden");
        }
        field.append_child(super::text_el("value", DATA, &value));
        form.append_child(field);
    }
    q.append_child(form);
    q
}

/// XEP-0363 §4: a slot for a local user's file, within the limits.
fn request(server: &Server, iq: &Element, req: &Element) -> Result<Option<Element>, StanzaError> {
    let from = iq.attr("from").and_then(|f| jid::parse(f).ok());
    let user = from
        .as_ref()
        .filter(|f| server.is_local_domain(f.domain().as_str()))
        .and_then(|f| f.node().map(|n| n.as_str().to_owned()))
        .ok_or_else(|| StanzaError::not_allowed().with_text("only local users may upload"))?;
    let filename = req.attr("filename").unwrap_or_default();
    let name_ok = !filename.is_empty()
        && filename.len() <= 255
        && !filename.starts_with('.')
        && !filename.contains(['/', '\\', '\0']);
    if !name_ok {
        return Err(StanzaError::bad_request().with_text("a plain file name is required"));
    }
    let size: u64 = req
        .attr("size")
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| StanzaError::bad_request().with_text("a size in bytes is required"))?;
    let max = server.config.upload.max_file_bytes;
    if size > max {
        let mut too_large = Element::bare("file-too-large", NS);
        too_large.append_child(super::text_el("max-file-size", NS, &max.to_string()));
        return Err(StanzaError::not_acceptable()
            .with_text(format!("the file is larger than {max} bytes"))
            .with_app(too_large));
    }
    let Some(upload) = server.module::<Upload>() else {
        return Err(StanzaError::service_unavailable());
    };
    if upload.used(server, &user) + size > server.config.upload.quota_bytes {
        return Err(StanzaError::resource_constraint().with_text("upload quota reached"));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let slot = Slot {
        user,
        filename: filename.to_owned(),
        size,
        content_type: req.attr("content-type").map(str::to_owned),
        expires: Instant::now() + SLOT_LIFETIME,
    };
    if !upload.add(id.clone(), slot) {
        return Err(StanzaError::resource_constraint().with_text("too many uploads under way"));
    }
    let url = format!(
        "{}/upload/{id}/{}",
        base_url(server),
        percent_encode(filename)
    );
    let mut slot = Element::bare("slot", NS);
    slot.append_child(super::el("put", NS, &[("url", &url)]));
    slot.append_child(super::el("get", NS, &[("url", &url)]));
    Ok(Some(slot))
}

fn base_url(server: &Server) -> String {
    let configured = &server.config.upload.public_url;
    if !configured.is_empty() {
        return configured.clone();
    }
    // Over HTTPS the URL names the domain, which the certificate is for.
    match server.config.listen.https {
        Some(https) => format!("https://{}:{}", server.domain, https.port()),
        None => format!("http://{}", server.config.listen.http),
    }
}

/// RFC 3986 percent-encoding of a path segment: everything but unreserved characters.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(percent_encode("a b&c.jpg"), "a%20b%26c.jpg");
        assert_eq!(percent_encode("été.png"), "%C3%A9t%C3%A9.png");
    }
}
