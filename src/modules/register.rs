//! In-band registration (XEP-0077): account creation before authentication when
//! `registration.open` is set, and password change and account removal for logged-in users.

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module, text_el};
use crate::auth::scram;
use crate::jid;
use crate::router::table::SessionCommand;
use crate::server::Server;
use crate::stanza::{self, StanzaError};
use crate::store::StoreError;

pub const NS: &str = "jabber:iq:register";
pub const FEATURE_NS: &str = "http://jabber.org/features/iq-register";
const MAX_PASSWORD_BYTES: usize = 1024;

pub struct Register;

/// The stream feature offered before authentication when registration is open.
pub fn stream_feature(server: &Server) -> Option<Element> {
    server
        .config
        .registration
        .open
        .then(|| Element::bare("register", FEATURE_NS))
}

fn fields(query: &Element) -> (Option<String>, Option<String>) {
    let get = |name: &str| query.get_child(name, NS).map(|c| c.text());
    (get("username"), get("password"))
}

fn check_password(password: &str) -> Result<(), StanzaError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(StanzaError::not_acceptable().with_text("password must be 1 to 1024 bytes"));
    }
    Ok(())
}

async fn set_password(server: &Server, user: &str, password: &str) -> Result<(), StanzaError> {
    check_password(password)?;
    let creds = scram::derive_credentials(password, scram::DEFAULT_ITERATIONS)
        .map_err(|_| StanzaError::not_acceptable().with_text("password not acceptable"))?;
    let result = server.store.set_credentials(user, &creds).await;
    server.credentials.forget(user);
    result.map_err(|_| StanzaError::internal())
}

/// Answers a registration iq on a stream that has not authenticated yet.
pub async fn handle_unauthenticated(server: &Server, iq: &Element) -> Option<Element> {
    let payload = stanza::iq_payload(iq).filter(|p| p.is("query", NS));
    let result = match (server.config.registration.open, payload) {
        (false, _) | (_, None) => Err(StanzaError::service_unavailable()),
        (true, Some(query)) => match stanza::stanza_type(iq) {
            "get" => {
                let mut q = Element::bare("query", NS);
                q.append_child(text_el(
                    "instructions",
                    NS,
                    "Choose a username and password for use with this service.",
                ));
                q.append_child(Element::bare("username", NS));
                q.append_child(Element::bare("password", NS));
                Ok(Some(q))
            }
            "set" => create(server, query).await.map(|()| None),
            _ => return None,
        },
    };
    match result {
        Ok(payload) => Some(stanza::iq_result(iq, payload)),
        Err(e) => stanza::error_reply(iq, &e),
    }
}

async fn create(server: &Server, query: &Element) -> Result<(), StanzaError> {
    let (Some(username), Some(password)) = fields(query) else {
        return Err(StanzaError::not_acceptable().with_text("username and password are required"));
    };
    let user = jid::normalize_user(&username)
        .map_err(|_| StanzaError::jid_malformed().with_text("invalid username"))?;
    check_password(&password)?;
    let creds = scram::derive_credentials(&password, scram::DEFAULT_ITERATIONS)
        .map_err(|_| StanzaError::not_acceptable().with_text("password not acceptable"))?;
    match server.store.create_account(&user, &creds).await {
        Ok(()) => {
            tracing::info!(user = %user, "account registered in-band");
            Ok(())
        }
        Err(StoreError::AccountExists) => Err(StanzaError::conflict()),
        Err(_) => Err(StanzaError::internal()),
    }
}

#[async_trait]
impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        let Some(user) = req.local_user().map(str::to_owned) else {
            return Err(StanzaError::forbidden());
        };
        if req.target != super::IqTarget::Server && !req.is_own_account() {
            return Err(StanzaError::forbidden());
        }
        if !req.payload.is("query", NS) {
            return Err(StanzaError::bad_request());
        }
        if !req.is_set {
            let mut q = Element::bare("query", NS);
            q.append_child(Element::bare("registered", NS));
            q.append_child(text_el("username", NS, &user));
            q.append_child(Element::bare("password", NS));
            return Ok(Some(q));
        }
        if req.payload.has_child("remove", NS) {
            req.server
                .store
                .delete_account(&user)
                .await
                .map_err(|_| StanzaError::internal())?;
            req.server.credentials.forget(&user);
            tracing::info!(user = %user, "account removed in-band");
            // XEP-0077 §3.2: the result goes out first, then every stream of the account closes.
            for r in req.server.sessions.resources(&req.from.to_bare()) {
                r.sender.command(SessionCommand::Close(
                    crate::router::table::CloseReason::NotAuthorized,
                ));
            }
            return Ok(None);
        }
        let (username, password) = fields(req.payload);
        if username
            .as_deref()
            .is_some_and(|u| jid::normalize_user(u).ok().as_deref() != Some(&user))
        {
            return Err(StanzaError::bad_request().with_text("username does not match"));
        }
        let Some(password) = password else {
            return Err(StanzaError::bad_request().with_text("password required"));
        };
        set_password(req.server, &user, &password).await?;
        Ok(None)
    }
}
