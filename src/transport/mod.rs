//! Transports: TCP listeners and TLS.
pub mod bosh;
pub mod listener;
pub mod peer_tls;
pub mod tls;
pub mod websocket;
