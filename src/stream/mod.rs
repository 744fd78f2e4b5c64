//! XML streams: parsing with limits, writing, stream errors, and the namespaces they use.

pub mod parser;
pub mod writer;

/// Namespaces the core speaks; feature modules keep their own.
pub mod ns {
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const CLIENT: &str = "jabber:client";
    pub const SERVER: &str = "jabber:server";
    pub const COMPONENT: &str = "jabber:component:accept";
    pub const DIALBACK: &str = "jabber:server:dialback";
    /// The stream feature that says dialback is offered (XEP-0220 §2.4).
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    /// Bidirectional server-to-server streams (XEP-0288): the feature, and the request.
    pub const BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
    pub const BIDI: &str = "urn:xmpp:bidi";
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
    pub const DELAY: &str = "urn:xmpp:delay";
}
