//! JID helpers on top of the `jid` crate: normalisation at the edge of the server.
//!
//! The `jid` crate applies stringprep but leaves domains as written (a trailing dot, mixed
//! case of IDNA labels), so every domain that enters the server passes through here first.

pub use jid::{BareJid, FullJid, Jid};

#[derive(Debug, thiserror::Error)]
pub enum JidError {
    #[error("invalid JID: {0}")]
    Invalid(#[from] jid::Error),
    #[error("invalid domain `{0}`")]
    InvalidDomain(String),
}

/// Whether a domain without its trailing dot has the labels a server's name may have.
fn valid_labels(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 1023
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Lowercases a domain and strips one trailing dot (RFC 7622 §3.2).
pub fn normalize_domain(domain: &str) -> Result<String, JidError> {
    let d = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
    if valid_labels(&d) {
        // Round-trip through the jid crate so that the domain is also what it would produce.
        let parsed = BareJid::new(&d).map_err(|_| JidError::InvalidDomain(domain.into()))?;
        Ok(parsed.domain().as_str().to_owned())
    } else {
        Err(JidError::InvalidDomain(domain.into()))
    }
}

/// Parses a JID coming from a peer and normalises its domain.
pub fn parse(s: &str) -> Result<Jid, JidError> {
    let jid = Jid::new(s)?;
    let domain = jid.domain().as_str();
    // The common case, a lowercase ASCII domain as the jid crate gave it back, is normal
    // already: a second pass through the crate (IDNA included) would return it unchanged.
    if !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        && valid_labels(domain)
    {
        return Ok(jid);
    }
    let normal = normalize_domain(domain)?;
    if normal == domain {
        return Ok(jid);
    }
    let node = jid
        .node()
        .map(|n| format!("{}@", n.as_str()))
        .unwrap_or_default();
    let res = jid
        .resource()
        .map(|r| format!("/{}", r.as_str()))
        .unwrap_or_default();
    Ok(Jid::new(&format!("{node}{normal}{res}"))?)
}

/// Parses a bare JID (a resource is rejected).
pub fn parse_bare(s: &str) -> Result<BareJid, JidError> {
    match parse(s)?.try_into_full() {
        Ok(full) => Err(JidError::InvalidDomain(full.to_string())),
        Err(bare) => Ok(bare),
    }
}

/// Normalises a username the way the `jid` crate normalises localparts (nodeprep).
pub fn normalize_user(user: &str) -> Result<String, JidError> {
    let bare = BareJid::new(&format!("{user}@localhost"))?;
    match bare.node() {
        Some(n) => Ok(n.as_str().to_owned()),
        None => Err(JidError::InvalidDomain(user.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalised() {
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        assert!(normalize_domain("bad domain").is_err());
        assert!(normalize_domain("").is_err());
        assert_eq!(
            parse("a@Example.com./r").unwrap().to_string(),
            "a@example.com/r"
        );
        // Already normal: returned as parsed.
        assert_eq!(
            parse("a@example.com/R").unwrap().to_string(),
            "a@example.com/R"
        );
        assert!(parse("a@bad domain").is_err());
        assert!(parse("a@exa_mple.com").is_ok());
        assert!(parse("a@Bücher.example").is_ok());
    }

    #[test]
    fn users_are_nodeprepped() {
        assert_eq!(normalize_user("Alice").unwrap(), "alice");
        assert!(normalize_user("a@b").is_err());
    }
}
