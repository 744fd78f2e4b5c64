//! TCP listeners: accept connections and hand each to its own session task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::server::Server;
use crate::session::{c2s, component, s2s};

/// Which protocol an accepted connection speaks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain TCP with STARTTLS (RFC 6120 §5).
    C2sStartTls,
    /// TLS from the first byte (XEP-0368).
    C2sDirectTls,
    /// Server-to-server streams (RFC 6120), STARTTLS.
    S2s,
    /// Server-to-server streams over TLS from the first byte (XEP-0368).
    S2sDirectTls,
    /// External components (XEP-0114).
    Component,
}

/// Binds a listener; a bind failure is a start-up error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until the server shuts down.
pub async fn accept_loop(server: Arc<Server>, listener: TcpListener, kind: ListenerKind) {
    let mut shutdown = server.shutdown_signal();
    if let Ok(addr) = listener.local_addr() {
        info!(?kind, %addr, "listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let server = server.clone();
                    match kind {
                        ListenerKind::C2sStartTls => {
                            tokio::spawn(c2s::serve(server, tcp, peer, false));
                        }
                        ListenerKind::C2sDirectTls => {
                            tokio::spawn(c2s::serve(server, tcp, peer, true));
                        }
                        ListenerKind::S2s => {
                            tokio::spawn(s2s::incoming::serve(server, tcp, peer, false));
                        }
                        ListenerKind::S2sDirectTls => {
                            tokio::spawn(s2s::incoming::serve(server, tcp, peer, true));
                        }
                        ListenerKind::Component => {
                            tokio::spawn(component::serve(server, tcp, peer));
                        }
                    }
                }
                // Running out of file descriptors is transient; back off instead of spinning.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
