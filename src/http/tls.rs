//! HTTPS: the HTTP listener's routes over TLS with the server's certificate (`listen.https`),
//! so browsers reach WebSocket (wss), BOSH and file upload without a proxy in front.
//!
//! axum accepts connections one at a time from a [`Listener`]; TLS handshakes run in their
//! own tasks and hand finished streams over a bounded channel, so a client that stalls its
//! handshake holds up nobody else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const READY_QUEUE: usize = 64;

/// Marks a request that arrived over this listener's TLS.
#[derive(Debug, Clone, Copy)]
pub struct Secure;

pub struct HttpsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// The TLS configuration for HTTPS: the server's certificate, with HTTP/1.1 as the ALPN
/// protocol instead of XMPP's.
pub fn config(xmpp: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = xmpp.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl HttpsListener {
    /// Starts accepting on `tcp`; the accepting task ends when the listener is dropped.
    pub fn start(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<HttpsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(HttpsListener { ready, local })
    }
}

impl Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task is gone: nothing will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The peer of an HTTPS connection, as axum's connect-info.
#[derive(Debug, Clone, Copy)]
pub struct HttpsPeer(pub SocketAddr);

impl Connected<IncomingStream<'_, HttpsListener>> for HttpsPeer {
    fn connect_info(stream: IncomingStream<'_, HttpsListener>) -> Self {
        HttpsPeer(*stream.remote_addr())
    }
}

/// Gives handlers the same `ConnectInfo<SocketAddr>` as on plain HTTP, plus [`Secure`].
pub async fn mark_secure(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(ConnectInfo(HttpsPeer(peer))) = request
        .extensions()
        .get::<ConnectInfo<HttpsPeer>>()
        .copied()
    {
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    request.extensions_mut().insert(Secure);
    next.run(request).await
}
