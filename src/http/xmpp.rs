//! XMPP over HTTP: the WebSocket endpoint (RFC 7395) and how clients find it (XEP-0156
//! host-meta).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::api::ApiError;
use crate::server::Server;
use crate::session::c2s;
use crate::transport::websocket;

pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";
const ALT_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";

pub fn router() -> Router<Arc<Server>> {
    Router::new()
        .route(WEBSOCKET_PATH, get(upgrade))
        .route("/.well-known/host-meta", get(host_meta_xml))
        .route("/.well-known/host-meta.json", get(host_meta_json))
}

/// RFC 7395 §3.2: the upgrade must ask for the `xmpp` subprotocol. The HTTP listener speaks no
/// TLS, so plain WebSocket is only taken from this machine: from a TLS-terminating proxy in
/// front of it, or a local client; from elsewhere the password would cross the network in the
/// clear.
async fn upgrade(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    if !peer.ip().is_loopback() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "tls_required",
            "XMPP over WebSocket needs TLS: connect through a TLS-terminating proxy on this machine",
        )
        .into_response();
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
        .on_upgrade(move |socket| c2s::serve_websocket(server, websocket::bridge(socket), peer))
}

/// The WebSocket URL as the client reached us (a proxy sets Host and X-Forwarded-Proto).
fn websocket_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if secure { "wss" } else { "ws" };
    format!("{scheme}://{host}{WEBSOCKET_PATH}")
}

async fn host_meta_xml(headers: HeaderMap) -> impl IntoResponse {
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  \
         <Link rel='{ALT_WEBSOCKET}' href='{}'/>\n</XRD>\n",
        crate::stream::writer::escape(&websocket_url(&headers))
    );
    (
        [
            (header::CONTENT_TYPE, "application/xrd+xml"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
}

async fn host_meta_json(headers: HeaderMap) -> impl IntoResponse {
    let body = serde_json::json!({
        "links": [{ "rel": ALT_WEBSOCKET, "href": websocket_url(&headers) }]
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.to_string(),
    )
}
