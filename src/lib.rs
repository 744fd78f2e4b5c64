//! rookery: an XMPP server.
//!
//! The modules mirror the path of a stanza through the server:
//! transport (bytes) → stream (XML, negotiation) → session (one task per connection)
//! → router (RFC 6121 delivery) → modules (protocol features) → store (persistence).

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod jid;
pub mod metrics;
pub mod modules;
pub mod router;
pub mod server;
pub mod session;
pub mod stanza;
pub mod store;
pub mod stream;
pub mod transport;
