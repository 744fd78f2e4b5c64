//! XMPP Ping (XEP-0199): answers pings. The server's own pings of silent clients live in the
//! session, which owns the connection's timers.

use async_trait::async_trait;

use super::{IqRequest, IqResult, Module};
use crate::server::Server;
use crate::stanza::StanzaError;

pub const NS: &str = "urn:xmpp:ping";

pub struct Ping;

#[async_trait]
impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        if req.is_set {
            Err(StanzaError::service_unavailable())
        } else {
            Ok(None)
        }
    }
}
