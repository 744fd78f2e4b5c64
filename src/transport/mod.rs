//! Transports: TCP listeners and TLS.
