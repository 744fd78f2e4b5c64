//! XMPP over HTTP: the WebSocket endpoint (RFC 7395), BOSH (XEP-0124, XEP-0206), and how
//! clients find them (XEP-0156 host-meta).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::api::ApiError;
use super::tls::Secure;
use crate::server::Server;
use crate::session::c2s;
use crate::transport::{bosh, websocket};

pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";
pub const BOSH_PATH: &str = "/http-bind";
const ALT_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
const ALT_BOSH: &str = "urn:xmpp:alt-connections:xbosh";

pub fn router() -> Router<Arc<Server>> {
    Router::new()
        .route(WEBSOCKET_PATH, get(upgrade))
        .route(BOSH_PATH, post(bind).options(preflight))
        .route("/.well-known/host-meta", get(host_meta_xml))
        .route("/.well-known/host-meta.json", get(host_meta_json))
}

/// Plain HTTP XMPP is only taken from this machine (a TLS-terminating proxy in front, or a
/// local client): from elsewhere the password would cross the network in the clear. Over
/// `listen.https` anyone may connect.
fn tls_required(peer: &SocketAddr, secure: Option<Extension<Secure>>) -> Option<Response> {
    (secure.is_none() && !peer.ip().is_loopback()).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "tls_required",
            "XMPP over HTTP needs TLS: connect through a TLS-terminating proxy on this machine",
        )
        .into_response()
    })
}

/// RFC 7395 §3.2: the upgrade must ask for the `xmpp` subprotocol.
async fn upgrade(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<Extension<Secure>>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = tls_required(&peer, secure) {
        return refused;
    }
    let ws = ws.protocols(["xmpp"]);
    if ws.selected_protocol().is_none() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "subprotocol_required",
            "ask for the WebSocket subprotocol \"xmpp\" (RFC 7395)",
        )
        .into_response();
    }
    let max = server.config.limits.max_stanza_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            c2s::serve_framed(server, websocket::bridge(socket), peer, "websocket")
        })
}

/// One BOSH request (XEP-0124 §7–§14): session creation, payloads, restarts, termination; the
/// answer is held until the session has something to send or `wait` passes.
async fn bind(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<Extension<Secure>>,
    text: String,
) -> Response {
    if let Some(refused) = tls_required(&peer, secure) {
        return refused;
    }
    let (request, payload) = match bosh::split_request(&text) {
        Ok(split) => split,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_xml", e.to_string())
                .into_response();
        }
    };
    let Some(rid) = request.attr("rid").and_then(|r| r.parse::<u64>().ok()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "rid_required",
            "a numeric rid is required",
        )
        .into_response();
    };
    let answer = match request.attr("sid") {
        None => create(&server, peer, &request, rid).await,
        Some(sid) => continue_session(&server, sid, &request, payload, rid).await,
    };
    match answer {
        Ok(xml) => xml_response(StatusCode::OK, xml),
        Err(bosh::BoshError::BadRequest(why)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", why).into_response()
        }
        Err(bosh::BoshError::Terminate(condition)) => {
            let status = if condition == "item-not-found" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            xml_response(status, bosh::terminal(condition))
        }
    }
}

async fn create(
    server: &Arc<Server>,
    peer: SocketAddr,
    request: &minidom::Element,
    rid: u64,
) -> Result<String, bosh::BoshError> {
    let to = request
        .attr("to")
        .and_then(|t| crate::jid::normalize_domain(t).ok());
    if to.as_deref() != Some(server.domain.as_str()) {
        return Err(bosh::BoshError::Terminate("host-unknown"));
    }
    let wait = request
        .attr("wait")
        .and_then(|w| w.parse().ok())
        .unwrap_or(60);
    let (session_end, bosh_end) = tokio::io::duplex(64 * 1024);
    let session = server.bosh.create(bosh_end, rid, wait)?;
    tokio::spawn(c2s::serve_framed(server.clone(), session_end, peer, "bosh"));
    session.open_stream(&server.domain).await?;
    session.creation_answer(rid, &server.domain).await
}

async fn continue_session(
    server: &Arc<Server>,
    sid: &str,
    request: &minidom::Element,
    payload: &str,
    rid: u64,
) -> Result<String, bosh::BoshError> {
    let session = server
        .bosh
        .get(sid)
        .ok_or(bosh::BoshError::Terminate("item-not-found"))?;
    if let Some(earlier) = session.accept_rid(rid)? {
        return Ok(earlier);
    }
    if request.attr("type") == Some("terminate") {
        session.deliver(payload).await?;
        session.terminate().await;
        server.bosh.remove(sid);
        return Ok(bosh::terminal(""));
    }
    if request.attr_ns("urn:xmpp:xbosh", "restart") == Some("true") {
        session.open_stream(&server.domain).await?;
    } else {
        session.deliver(payload).await?;
    }
    Ok(session.answer(rid).await)
}

fn xml_response(status: StatusCode, xml: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/xml; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        xml,
    )
        .into_response()
}

/// CORS preflight for web clients served from another origin.
async fn preflight() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
}

/// The WebSocket and BOSH URLs as the client reached us (a proxy sets Host and
/// X-Forwarded-Proto).
fn urls(headers: &HeaderMap, secure: Option<Extension<Secure>>) -> (String, String) {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    let secure = secure.is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let (ws, http) = if secure {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    (
        format!("{ws}://{host}{WEBSOCKET_PATH}"),
        format!("{http}://{host}{BOSH_PATH}"),
    )
}

async fn host_meta_xml(secure: Option<Extension<Secure>>, headers: HeaderMap) -> impl IntoResponse {
    let (websocket, bosh) = urls(&headers, secure);
    let escape = crate::stream::writer::escape;
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  \
         <Link rel='{ALT_WEBSOCKET}' href='{}'/>\n  \
         <Link rel='{ALT_BOSH}' href='{}'/>\n</XRD>\n",
        escape(&websocket),
        escape(&bosh)
    );
    (
        [
            (header::CONTENT_TYPE, "application/xrd+xml"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
}

async fn host_meta_json(
    secure: Option<Extension<Secure>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let (websocket, bosh) = urls(&headers, secure);
    let body = serde_json::json!({
        "links": [
            { "rel": ALT_WEBSOCKET, "href": websocket },
            { "rel": ALT_BOSH, "href": bosh },
        ]
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_xmpp_is_for_loopback_and_https_for_anyone() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let refused = tls_required(&remote, None).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(tls_required(&local, None).is_none());
        assert!(tls_required(&remote, Some(Extension(Secure))).is_none());
    }
}
