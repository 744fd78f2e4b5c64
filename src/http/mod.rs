//! The HTTP listener: health, Prometheus metrics, the REST bridge (`api`) and XMPP over
//! WebSocket and BOSH (`xmpp`), file upload (`upload`); the same routes over TLS on
//! `listen.https` (`tls`).

pub mod api;
pub mod tls;
pub mod upload;
pub mod xmpp;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics;
use crate::server::Server;

pub fn router(server: Arc<Server>) -> Router {
    let max_file_bytes = server.config.upload.max_file_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .merge(api::router())
        .merge(xmpp::router())
        .merge(upload::router(max_file_bytes))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(server)
}

/// Serves HTTP until the server shuts down.
pub async fn serve(server: Arc<Server>, listener: TcpListener) {
    let mut stop = server.shutdown_signal();
    let app = router(server);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    // The peer's address tells the API whether a request comes from this machine.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "HTTP listener failed");
    }
}

/// Serves the same routes over TLS until the server shuts down.
pub async fn serve_tls(server: Arc<Server>, listener: tls::HttpsListener) {
    let mut stop = server.shutdown_signal();
    let app = router(server).layer(axum::middleware::from_fn(tls::mark_secure));
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    let app = app.into_make_service_with_connect_info::<tls::HttpsPeer>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "HTTPS listener failed");
    }
}

async fn health(State(server): State<Arc<Server>>) -> impl IntoResponse {
    let body = format!(
        "{{\"status\":\"ok\",\"domain\":\"{}\",\"sessions\":{}}}",
        server.domain,
        server.sessions.count()
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// How long a scrape waits for the store to count the messages waiting offline.
const OFFLINE_COUNT_WAIT: Duration = Duration::from_secs(2);

async fn prometheus(State(server): State<Arc<Server>>) -> impl IntoResponse {
    metrics::set_sessions(server.sessions.count());
    // Counting a large table takes a while on a busy store: a scrape waits for it only so long,
    // and otherwise (or on an error) answers with everything else and the gauge's last value.
    match tokio::time::timeout(OFFLINE_COUNT_WAIT, server.store.offline_total()).await {
        Ok(Ok(n)) => metrics::set_offline_messages(n),
        Ok(Err(e)) => tracing::warn!(error = %e, "counting offline messages for /metrics"),
        Err(_) => tracing::warn!("counting offline messages for /metrics took too long"),
    }
    match metrics::render() {
        Some(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"code\":\"metrics_unavailable\",\"title\":\"Metrics unavailable\",\
             \"message\":\"another metrics recorder is installed in this process\"}"
                .to_owned(),
        ),
    }
}
