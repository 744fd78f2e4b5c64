//! Authentication: SASL mechanisms (SCRAM, PLAIN) and password credentials.

pub mod cache;
pub mod plain;
pub mod scram;

/// Why an authentication failed, as an RFC 6120 §6.5 SASL failure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed SASL request")]
    MalformedRequest,
    #[error("SASL data is not valid base64 or UTF-8")]
    IncorrectEncoding,
    #[error("not authorized")]
    NotAuthorized,
    #[error("the authorization identity is not allowed")]
    InvalidAuthzid,
    #[error("the password cannot be prepared (SASLprep)")]
    BadPassword,
    /// The client asked for a channel-binding type this server does not provide.
    #[error("unsupported channel-binding type")]
    UnsupportedChannelBinding,
}

impl AuthError {
    pub fn condition(&self) -> &'static str {
        match self {
            AuthError::MalformedRequest | AuthError::BadPassword => "malformed-request",
            AuthError::IncorrectEncoding => "incorrect-encoding",
            AuthError::NotAuthorized | AuthError::UnsupportedChannelBinding => "not-authorized",
            AuthError::InvalidAuthzid => "invalid-authzid",
        }
    }
}
