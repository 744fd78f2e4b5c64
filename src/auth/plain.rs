//! SASL PLAIN (RFC 4616), offered only over TLS.

use super::AuthError;

pub struct PlainRequest {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

// Written by hand so that the password never reaches a log line.
impl std::fmt::Debug for PlainRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainRequest")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Parses `[authzid] NUL authcid NUL passwd`.
pub fn parse(msg: &[u8]) -> Result<PlainRequest, AuthError> {
    let text = std::str::from_utf8(msg).map_err(|_| AuthError::IncorrectEncoding)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(AuthError::MalformedRequest);
    }
    Ok(PlainRequest {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let r = parse(b"\0alice\0secret").unwrap();
        assert_eq!(r.authcid, "alice");
        assert_eq!(r.authzid, None);
        assert!(!format!("{r:?}").contains("secret"));
        let r = parse(b"alice@x\0alice\0secret").unwrap();
        assert_eq!(r.authzid.as_deref(), Some("alice@x"));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            parse(b"alice\0secret").unwrap_err(),
            AuthError::MalformedRequest
        );
        assert_eq!(
            parse(b"\0\0secret").unwrap_err(),
            AuthError::MalformedRequest
        );
        assert_eq!(
            parse(b"\0a\0b\0c").unwrap_err(),
            AuthError::MalformedRequest
        );
        assert_eq!(
            parse(b"\0a\0\xff").unwrap_err(),
            AuthError::IncorrectEncoding
        );
    }
}
