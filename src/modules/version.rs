//! Software Version (XEP-0092).

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, IqTarget, Module, text_el};
use crate::server::Server;
use crate::stanza::StanzaError;

pub const NS: &str = "jabber:iq:version";

pub struct Version;

#[async_trait]
impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if req.is_set {
            return Err(StanzaError::not_allowed());
        }
        if req.target != IqTarget::Server {
            return Err(StanzaError::service_unavailable());
        }
        Ok(Some(
            Element::builder("query", NS)
                .append(text_el("name", NS, "rookery"))
                .append(text_el("version", NS, env!("CARGO_PKG_VERSION")))
                .build(),
        ))
    }
}
