//! vcard-temp (XEP-0054): each account stores one vCard, which anyone may read and only its
//! owner may change.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, IqTarget, Module};
use crate::server::Server;
use crate::stanza::StanzaError;
use crate::stream::writer;

pub const NS: &str = "vcard-temp";
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
                .set_vcard(&user, &xml)
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
