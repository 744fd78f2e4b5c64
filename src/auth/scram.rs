//! SCRAM (RFC 5802, RFC 7677) server side, with channel binding (RFC 5056, RFC 5929, RFC 9266).
//!
//! Written here because the `sasl` crate's server rejects the ordinary `n,,` GS2 header and
//! every channel binding, and `scram-rs` cannot do tls-exporter. Only StoredKey and ServerKey
//! are kept: enough to check a proof, never enough to log in as the user.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use crate::store::{Credentials, ScramKeys};

/// RFC 7677 §4 asks for at least 4096 iterations.
pub const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
const NONCE_RANDOM_LEN: usize = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length, so construction cannot fail.
        match self {
            ScramHash::Sha1 => match hmac::Hmac::<Sha1>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
            ScramHash::Sha256 => match hmac::Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
            ScramHash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
        }
    }

    fn keys(self, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = self.salted_password(password, salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        ScramKeys {
            stored_key: self.hash(&client_key),
            server_key: self.hmac(&salted, b"Server Key"),
        }
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS random source failing is not something a server can continue from safely; an
    // all-zero salt or nonce would be, so fall back to a time-seeded hash rather than zeros.
    if getrandom::fill(&mut buf).is_err() {
        let seed = format!(
            "{:?}{:?}",
            std::time::SystemTime::now(),
            std::thread::current().id()
        );
        let mut h = Sha256::digest(seed.as_bytes()).to_vec();
        h.resize(n, 0);
        buf = h;
    }
    buf
}

fn saslprep(password: &str) -> Result<String, AuthError> {
    stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .map_err(|_| AuthError::BadPassword)
}

/// Derives the stored keys for a new password.
pub fn derive_credentials(password: &str, iterations: u32) -> Result<Credentials, AuthError> {
    credentials_with_salt(password, &random_bytes(SALT_LEN), iterations)
}

fn credentials_with_salt(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<Credentials, AuthError> {
    let prepped = saslprep(password)?;
    Ok(Credentials {
        salt: salt.to_vec(),
        iterations,
        sha1: ScramHash::Sha1.keys(&prepped, salt, iterations),
        sha256: ScramHash::Sha256.keys(&prepped, salt, iterations),
    })
}

/// Checks a clear-text password (SASL PLAIN) against the stored SHA-256 keys in constant time.
pub fn verify_password(creds: &Credentials, password: &str) -> bool {
    let Ok(prepped) = saslprep(password) else {
        return false;
    };
    let keys = ScramHash::Sha256.keys(&prepped, &creds.salt, creds.iterations);
    keys.stored_key.ct_eq(&creds.sha256.stored_key).into()
}

/// Channel-binding data the current connection can provide.
#[derive(Debug, Clone, Default)]
pub struct ChannelBindingData {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

/// The client-first-message (RFC 5802 §7).
#[derive(Debug)]
pub struct ClientFirst {
    /// The authentication identity, with `=2C` and `=3D` decoded.
    pub username: String,
    pub authzid: Option<String>,
    gs2_header: String,
    bare: String,
    nonce: String,
    cb_name: Option<String>,
}

fn unescape_saslname(s: &str) -> Result<String, AuthError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(AuthError::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ClientFirst {
    /// `plus`: the client chose a -PLUS mechanism; `server_offers_plus`: we advertised some.
    pub fn parse(
        msg: &[u8],
        plus: bool,
        server_offers_plus: bool,
    ) -> Result<ClientFirst, AuthError> {
        let text = std::str::from_utf8(msg).map_err(|_| AuthError::IncorrectEncoding)?;
        let mut parts = text.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedRequest);
        };
        let cb_name = match (flag, plus) {
            ("n", false) => None,
            // RFC 5802 §6: the client thinks we cannot bind, but we offered to: a downgrade.
            ("y", false) if server_offers_plus => return Err(AuthError::NotAuthorized),
            ("y", false) => None,
            (f, true) if f.starts_with("p=") => Some(f[2..].to_owned()),
            _ => return Err(AuthError::MalformedRequest),
        };
        if let Some(name) = &cb_name
            && name != "tls-exporter"
            && name != "tls-server-end-point"
        {
            // tls-unique, for example, which TLS 1.3 does not define.
            return Err(AuthError::UnsupportedChannelBinding);
        }
        let authzid = match authzid {
            "" => None,
            a if a.starts_with("a=") => Some(unescape_saslname(&a[2..])?),
            _ => return Err(AuthError::MalformedRequest),
        };
        let mut attrs = bare.split(',');
        let username = match attrs.next() {
            Some(n) if n.starts_with("n=") => unescape_saslname(&n[2..])?,
            // Mandatory extensions (`m=`) are not supported (RFC 5802 §5.1).
            _ => return Err(AuthError::MalformedRequest),
        };
        let nonce = match attrs.next() {
            Some(r) if r.starts_with("r=") && r.len() > 2 => r[2..].to_owned(),
            _ => return Err(AuthError::MalformedRequest),
        };
        if username.is_empty() || !nonce.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            return Err(AuthError::MalformedRequest);
        }
        Ok(ClientFirst {
            username,
            authzid,
            gs2_header: text[..text.len() - bare.len()].to_owned(),
            bare: bare.to_owned(),
            nonce,
            cb_name,
        })
    }
}

/// Keys used when the user does not exist, derived from the username with a per-process
/// secret so that a probe sees the same salt each time and cannot tell real accounts apart.
fn decoy(username: &str) -> (Vec<u8>, ScramKeys) {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    let secret = SECRET.get_or_init(|| random_bytes(32));
    let salt = ScramHash::Sha256.hmac(secret, username.as_bytes())[..SALT_LEN].to_vec();
    let keys = ScramKeys {
        stored_key: random_bytes(32),
        server_key: random_bytes(32),
    };
    (salt, keys)
}

/// A SCRAM exchange after the server-first-message.
pub struct ScramServer {
    hash: ScramHash,
    client_first: ClientFirst,
    server_first: String,
    nonce: String,
    keys: ScramKeys,
    user_exists: bool,
}

impl ScramServer {
    /// Answers the client-first-message. `creds` is None when the user does not exist: the
    /// exchange then goes on with decoy values and fails at the proof.
    pub fn server_first(
        hash: ScramHash,
        client_first: ClientFirst,
        creds: Option<&Credentials>,
    ) -> (ScramServer, Vec<u8>) {
        let suffix = BASE64.encode(random_bytes(NONCE_RANDOM_LEN));
        Self::with_nonce_suffix(hash, client_first, creds, &suffix)
    }

    fn with_nonce_suffix(
        hash: ScramHash,
        client_first: ClientFirst,
        creds: Option<&Credentials>,
        suffix: &str,
    ) -> (ScramServer, Vec<u8>) {
        let (salt, iterations, keys) = match creds {
            Some(c) => {
                let keys = match hash {
                    ScramHash::Sha1 => c.sha1.clone(),
                    ScramHash::Sha256 => c.sha256.clone(),
                };
                (c.salt.clone(), c.iterations, keys)
            }
            None => {
                let (salt, keys) = decoy(&client_first.username);
                (salt, DEFAULT_ITERATIONS, keys)
            }
        };
        let nonce = format!("{}{suffix}", client_first.nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
        let out = server_first.clone().into_bytes();
        (
            ScramServer {
                hash,
                client_first,
                server_first,
                nonce,
                keys,
                user_exists: creds.is_some(),
            },
            out,
        )
    }

    pub fn username(&self) -> &str {
        &self.client_first.username
    }

    /// Checks the client-final-message; returns the server-final-message (`v=…`).
    pub fn client_final(self, msg: &[u8], cb: &ChannelBindingData) -> Result<Vec<u8>, AuthError> {
        let text = std::str::from_utf8(msg).map_err(|_| AuthError::IncorrectEncoding)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(AuthError::MalformedRequest)?;
        let mut attrs = without_proof.split(',');
        let binding = match attrs.next() {
            Some(c) if c.starts_with("c=") => BASE64
                .decode(&c[2..])
                .map_err(|_| AuthError::IncorrectEncoding)?,
            _ => return Err(AuthError::MalformedRequest),
        };
        match attrs.next() {
            Some(r) if r.starts_with("r=") && r[2..] == self.nonce => {}
            Some(r) if r.starts_with("r=") => return Err(AuthError::NotAuthorized),
            _ => return Err(AuthError::MalformedRequest),
        }
        let mut expected = self.client_first.gs2_header.as_bytes().to_vec();
        match self.client_first.cb_name.as_deref() {
            None => {}
            Some(name) => {
                let data = match name {
                    "tls-exporter" => cb.tls_exporter.as_ref(),
                    _ => cb.tls_server_end_point.as_ref(),
                };
                // A binding type this connection cannot provide cannot be verified.
                let data = data.ok_or(AuthError::NotAuthorized)?;
                expected.extend_from_slice(data);
            }
        }
        if !bool::from(binding.ct_eq(&expected)) {
            return Err(AuthError::NotAuthorized);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| AuthError::IncorrectEncoding)?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first.bare, self.server_first
        );
        let client_signature = self
            .hash
            .hmac(&self.keys.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(AuthError::NotAuthorized);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let matches: bool = self
            .hash
            .hash(&client_key)
            .ct_eq(&self.keys.stored_key)
            .into();
        if !matches || !self.user_exists {
            return Err(AuthError::NotAuthorized);
        }
        let server_signature = self
            .hash
            .hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal SCRAM client, to drive the server in tests.
    fn client_final(
        hash: ScramHash,
        password: &str,
        gs2: &str,
        cb_data: &[u8],
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let mut salt = None;
        let mut iters = 0;
        let mut nonce = "";
        for a in server_first.split(',') {
            match a.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = Some(BASE64.decode(v).unwrap()),
                ("i=", v) => iters = v.parse().unwrap(),
                _ => {}
            }
        }
        let salted = hash.salted_password(password, &salt.unwrap(), iters);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored = hash.hash(&client_key);
        let mut c = gs2.as_bytes().to_vec();
        c.extend_from_slice(cb_data);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&c));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hash.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    fn exchange(
        hash: ScramHash,
        creds: Option<&Credentials>,
        password: &str,
        gs2: &str,
        plus: bool,
        client_cb: &[u8],
        server_cb: &ChannelBindingData,
    ) -> Result<Vec<u8>, AuthError> {
        let bare = "n=user,r=abcdefghijkl";
        let cf = ClientFirst::parse(format!("{gs2}{bare}").as_bytes(), plus, true)?;
        let (server, sf) = ScramServer::server_first(hash, cf, creds);
        let sf = String::from_utf8(sf).unwrap();
        let fin = client_final(hash, password, gs2, client_cb, bare, &sf);
        server.client_final(fin.as_bytes(), server_cb)
    }

    #[test]
    fn rfc5802_sha1_vector() {
        let salt = BASE64.decode("QSXCR+Q6sek8bf92").unwrap();
        let creds = credentials_with_salt("pencil", &salt, 4096).unwrap();
        let cf = ClientFirst::parse(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", false, false).unwrap();
        let (server, sf) =
            ScramServer::with_nonce_suffix(ScramHash::Sha1, cf, Some(&creds), "3rfcNHYJY1ZVvWVs7j");
        assert_eq!(
            sf,
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let fin = server
            .client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                &ChannelBindingData::default(),
            )
            .unwrap();
        assert_eq!(fin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn rfc7677_sha256_vector() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = credentials_with_salt("pencil", &salt, 4096).unwrap();
        let cf = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", false, false).unwrap();
        let (server, _) = ScramServer::with_nonce_suffix(
            ScramHash::Sha256,
            cf,
            Some(&creds),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        let fin = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &ChannelBindingData::default(),
            )
            .unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn passwords_verify_and_wrong_ones_do_not() {
        let creds = derive_credentials("secret", 4096).unwrap();
        assert!(verify_password(&creds, "secret"));
        assert!(!verify_password(&creds, "Secret"));
        let none = ChannelBindingData::default();
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            assert!(exchange(hash, Some(&creds), "secret", "n,,", false, b"", &none).is_ok());
            assert_eq!(
                exchange(hash, Some(&creds), "wrong", "n,,", false, b"", &none),
                Err(AuthError::NotAuthorized)
            );
            assert_eq!(
                exchange(hash, None, "secret", "n,,", false, b"", &none),
                Err(AuthError::NotAuthorized)
            );
        }
    }

    #[test]
    fn channel_binding_is_checked() {
        let creds = derive_credentials("secret", 4096).unwrap();
        let cb = ChannelBindingData {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: Some(vec![9; 32]),
        };
        let h = ScramHash::Sha256;
        assert!(
            exchange(
                h,
                Some(&creds),
                "secret",
                "p=tls-exporter,,",
                true,
                &[7; 32],
                &cb
            )
            .is_ok()
        );
        assert!(
            exchange(
                h,
                Some(&creds),
                "secret",
                "p=tls-server-end-point,,",
                true,
                &[9; 32],
                &cb
            )
            .is_ok()
        );
        assert_eq!(
            exchange(
                h,
                Some(&creds),
                "secret",
                "p=tls-exporter,,",
                true,
                &[8; 32],
                &cb
            ),
            Err(AuthError::NotAuthorized)
        );
        let no_exporter = ChannelBindingData {
            tls_exporter: None,
            ..cb.clone()
        };
        assert_eq!(
            exchange(
                h,
                Some(&creds),
                "secret",
                "p=tls-exporter,,",
                true,
                &[7; 32],
                &no_exporter
            ),
            Err(AuthError::NotAuthorized)
        );
    }

    #[test]
    fn downgrades_and_malformed_input_are_refused() {
        // y: the client could bind but believes we cannot, though we offered -PLUS.
        assert_eq!(
            ClientFirst::parse(b"y,,n=user,r=abc", false, true).unwrap_err(),
            AuthError::NotAuthorized
        );
        assert!(ClientFirst::parse(b"y,,n=user,r=abc", false, false).is_ok());
        // A -PLUS mechanism without binding, and binding without -PLUS.
        assert!(ClientFirst::parse(b"n,,n=user,r=abc", true, true).is_err());
        assert!(ClientFirst::parse(b"p=tls-exporter,,n=user,r=abc", false, true).is_err());
        assert_eq!(
            ClientFirst::parse(b"p=tls-unique,,n=user,r=abc", true, true).unwrap_err(),
            AuthError::UnsupportedChannelBinding
        );
        for bad in [
            &b"n,,m=ext,n=user,r=abc"[..],
            b"n,,n=user",
            b"n,,r=abc",
            b"x,,n=user,r=abc",
            b"n,,n=us=er,r=abc",
            b"",
        ] {
            assert_eq!(
                ClientFirst::parse(bad, false, false).unwrap_err(),
                AuthError::MalformedRequest
            );
        }
        assert_eq!(
            ClientFirst::parse(b"n,,n=\xff,r=abc", false, false).unwrap_err(),
            AuthError::IncorrectEncoding
        );
        let cf = ClientFirst::parse(b"n,a=us=2Cer,n=us=3Der,r=abc", false, false).unwrap();
        assert_eq!(cf.username, "us=er");
        assert_eq!(cf.authzid.as_deref(), Some("us,er"));

        let creds = derive_credentials("secret", 4096).unwrap();
        let cf = ClientFirst::parse(b"n,,n=user,r=abc", false, false).unwrap();
        let (server, _) = ScramServer::server_first(ScramHash::Sha256, cf, Some(&creds));
        assert_eq!(
            server
                .client_final(
                    b"c=biws,r=abcTAMPERED,p=AAAA",
                    &ChannelBindingData::default()
                )
                .unwrap_err(),
            AuthError::NotAuthorized
        );
        for bad in [&b"garbage"[..], b"c=!!!,r=x,p=AAAA", b"r=x,p=AAAA"] {
            let cf = ClientFirst::parse(b"n,,n=user,r=abc", false, false).unwrap();
            let (server, _) = ScramServer::server_first(ScramHash::Sha256, cf, Some(&creds));
            assert!(
                server
                    .client_final(bad, &ChannelBindingData::default())
                    .is_err()
            );
        }
    }
}
