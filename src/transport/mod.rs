//! Transports: TCP listeners and TLS.
pub mod listener;
pub mod tls;
