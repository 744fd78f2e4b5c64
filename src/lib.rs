//! rookery: an XMPP server.
//!
//! The modules mirror the path of a stanza through the server:
//! transport (bytes) → stream (XML, negotiation) → session (one task per connection)
//! → router (RFC 6121 delivery) → modules (protocol features) → store (persistence).

pub mod auth;
pub mod config;
pub mod jid;
pub mod store;
pub mod transport;
