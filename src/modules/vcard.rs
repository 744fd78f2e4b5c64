//! vcard-temp (XEP-0054): each account stores one vCard, which anyone may read and only its
//! owner may change; and vCard-based avatars (XEP-0153): the photo's hash goes out in the
//! account's presence, so contacts know when to fetch the vCard again.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, IqTarget, Module};
use crate::server::Server;
use crate::stanza::StanzaError;
use crate::stream::writer;

pub const NS: &str = "vcard-temp";
pub const UPDATE_NS: &str = "vcard-temp:x:update";
/// A stored vCard larger than this is refused; avatars belong in PEP or HTTP upload.
const MAX_VCARD_BYTES: usize = 128 * 1024;

pub struct VCard;

#[async_trait]
impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if req.payload.name() != "vCard" {
            return Err(StanzaError::bad_request());
        }
        let owner = match &req.target {
            IqTarget::Account(bare) => bare.clone(),
            // A client asking the server with no `to` means its own vCard.
            IqTarget::Server => match req.from.node() {
                Some(_) if req.local_user().is_some() => req.from.to_bare(),
                _ => return Err(StanzaError::item_not_found()),
            },
        };
        let Some(user) = owner.node().map(|n| n.as_str().to_owned()) else {
            return Err(StanzaError::item_not_found());
        };
        let own = owner == req.from.to_bare();
        if req.is_set {
            if !own {
                return Err(StanzaError::forbidden());
            }
            let xml = String::from_utf8(writer::element(req.payload))
                .map_err(|_| StanzaError::bad_request())?;
            if xml.len() > MAX_VCARD_BYTES {
                return Err(StanzaError::not_acceptable().with_text("vCard too large"));
            }
            req.server
                .store
                .set_vcard(&user, &xml, &photo_hash(req.payload))
                .await
                .map_err(|_| StanzaError::internal())?;
            return Ok(None);
        }
        let stored = req
            .server
            .store
            .vcard(&user)
            .await
            .map_err(|_| StanzaError::internal())?;
        match stored.and_then(|xml| xml.parse::<Element>().ok()) {
            Some(vcard) => Ok(Some(vcard)),
            None if own => Ok(Some(Element::bare("vCard", NS))),
            None => Err(StanzaError::item_not_found()),
        }
    }
}

/// XEP-0153 §2: the lowercase hex SHA-1 of the photo's binary data; '' for a vCard without
/// a (readable) embedded photo, which tells contacts there is no avatar.
pub fn photo_hash(vcard: &Element) -> String {
    use base64::Engine;
    use sha1::Digest;
    let binval = vcard
        .get_child("PHOTO", NS)
        .and_then(|p| p.get_child("BINVAL", NS))
        .map(|b| b.text());
    let Some(text) = binval else {
        return String::new();
    };
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(compact) {
        Ok(bytes) if !bytes.is_empty() => hex(&sha1::Sha1::digest(&bytes)),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the avatar hash to an available presence the client sent without one (XEP-0153
/// §3.2 leaves it to whoever knows the vCard; a client that says `<x/>` itself is not ready
/// and keeps its word). Accounts without a stored vCard are left alone.
pub async fn stamp_presence(server: &Server, user: &str, presence: &mut Element) {
    if presence.get_child("x", UPDATE_NS).is_some() {
        return;
    }
    let hash = match server.store.vcard_photo_hash(user).await {
        Ok(Some(hash)) => hash,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the vCard photo hash");
            return;
        }
    };
    let mut photo = Element::bare("photo", UPDATE_NS);
    if !hash.is_empty() {
        photo.append_text_node(hash);
    }
    let mut x = Element::bare("x", UPDATE_NS);
    x.append_child(photo);
    presence.append_child(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_photo_hash_is_the_sha1_of_the_decoded_binval() {
        // "abc" in base64, split over lines as vCards often are.
        let vcard: Element = "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>\
            <BINVAL>YW\n Jj</BINVAL></PHOTO></vCard>"
            .parse()
            .expect("vcard");
        assert_eq!(
            photo_hash(&vcard),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let without: Element = "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>"
            .parse()
            .expect("vcard");
        assert_eq!(photo_hash(&without), "");
        let broken: Element =
            "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>!!</BINVAL></PHOTO></vCard>"
                .parse()
                .expect("vcard");
        assert_eq!(photo_hash(&broken), "");
    }
}
