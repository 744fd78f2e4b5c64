//! Server Dialback keys (XEP-0220 §2.1.1, XEP-0185): a key proves to a receiving server, through
//! a callback to the originating domain's authoritative server, that a stream was opened by
//! that domain. Keys are made from a secret, so the authoritative server keeps no per-stream
//! state and, in a cluster sharing the secret, any node can answer for any other.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key secret, hashed once as XEP-0185 recommends.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret(Sha256::digest(secret).into())
    }

    /// A fresh random secret, for a single node.
    pub fn random() -> Secret {
        let mut bytes = [0u8; 32];
        let _ = getrandom::fill(&mut bytes);
        Secret::new(&bytes)
    }

    /// HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' stream-id), in hex.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; this cannot happen.
            return String::new();
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `key` is the one we would have made, compared in constant time.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        expected.len() == key.len() && bool::from(expected.as_bytes().ct_eq(key.trim().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_for_the_same_inputs_and_secret() {
        let secret = Secret::new(b"s3cr3tf0rd14lb4ck");
        let key = secret.key("example.net", "example.org", "D60000229F");
        assert_eq!(key.len(), 64);
        assert!(secret.verify("example.net", "example.org", "D60000229F", &key));
        assert!(!secret.verify("example.org", "example.net", "D60000229F", &key));
        assert!(!secret.verify("example.net", "example.org", "other", &key));
        assert!(!secret.verify("example.net", "example.org", "D60000229F", "37c6"));
        assert!(!Secret::random().verify("example.net", "example.org", "D60000229F", &key));
    }
}
