//! TLS for client connections: the rustls server configuration, the self-signed certificate
//! of the embedded default, and the channel-binding values SCRAM-PLUS needs.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A ready TLS server configuration and the leaf certificate it presents.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    pub leaf_der: Vec<u8>,
    /// Our certificate chain and key, for the server-to-server configurations.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

/// Loads the configured certificate, or the embedded default's self-signed one from
/// `data_dir` (creating it on first start).
pub fn server_config(
    cert_path: &str,
    key_path: &str,
    data_dir: &Path,
    domain: &str,
    post_quantum: bool,
) -> Result<TlsSetup, TlsError> {
    let (cert, key) = if cert_path.is_empty() {
        self_signed(data_dir, domain)?
    } else {
        (PathBuf::from(cert_path), PathBuf::from(key_path))
    };
    let chain = load_certs(&cert)?;
    let key = load_key(&key)?;
    let leaf_der = chain[0].as_ref().to_vec();
    let mut config = ServerConfig::builder_with_provider(Arc::new(server_provider(post_quantum)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())?;
    // Our order of cipher suites, not the client's (see `server_provider`).
    config.ignore_client_order = true;
    // XEP-0368 clients send ALPN "xmpp-client"; clients that send no ALPN are still accepted.
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        leaf_der,
        chain,
        key: Arc::new(key),
    })
}

/// aws-lc-rs, named explicitly so that no process-wide default has to be installed, with the
/// server's preferences:
/// - AES-128-GCM with SHA-256 first. Clients commonly ask for AES-256-GCM with SHA-384 first,
///   and SHA-384, which runs the key schedule, has no instructions of its own on x86 CPUs: it
///   was a tenth of the CPU time of a TLS login, and AES-256 costs 40% more per byte. Both are
///   in every TLS 1.3 profile; ChaCha20 stays for clients without AES.
/// - The hybrid post-quantum key exchange only when `post_quantum`; rustls takes the client's
///   order of groups, so the only way to decline it is not to offer it.
fn server_provider(post_quantum: bool) -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::{self, cipher_suite::*, kx_group};
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    if !post_quantum {
        provider
            .kx_groups
            .retain(|g| g.name() != kx_group::X25519MLKEM768.name());
    }
    provider
}

/// The paths of the embedded default's certificate, generated if missing.
fn self_signed(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = data_dir.join("cert.pem");
    let key = data_dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(data_dir).map_err(|source| TlsError::Write {
        path: data_dir.to_owned(),
        source,
    })?;
    let generated =
        rcgen::generate_simple_self_signed(vec![domain.to_owned(), format!("*.{domain}")])?;
    write_file(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    write_file(
        &key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    tracing::info!(path = %cert.display(), "generated a self-signed certificate for {domain}");
    Ok((cert, key))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

/// RFC 5929 §4.1 tls-server-end-point: the certificate's hash under its signature's hash
/// function, SHA-256 for MD5 and SHA-1. Rather than parse the certificate, the signature
/// algorithm's OID is looked for in the DER: SHA-384 and SHA-512 based algorithms are the only
/// ones that change the answer, and every other one (the ECDSA P-256 and RSA SHA-256
/// certificates in practice) hashes with SHA-256.
pub fn tls_server_end_point(leaf_der: &[u8]) -> Vec<u8> {
    // ecdsa-with-SHA384 1.2.840.10045.4.3.3, sha384WithRSAEncryption 1.2.840.113549.1.1.12
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    ];
    // ecdsa-with-SHA512 1.2.840.10045.4.3.4, sha512WithRSAEncryption 1.2.840.113549.1.1.13
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    ];
    let contains = |oids: &[&[u8]]| {
        oids.iter()
            .any(|oid| leaf_der.windows(oid.len()).any(|w| w == *oid))
    };
    if contains(&SHA512) {
        sha2::Sha512::digest(leaf_der).to_vec()
    } else if contains(&SHA384) {
        sha2::Sha384::digest(leaf_der).to_vec()
    } else {
        sha2::Sha256::digest(leaf_der).to_vec()
    }
}

/// RFC 9266 tls-exporter, offered only on TLS 1.3 where it is safe without the extended master
/// secret check.
pub fn tls_exporter<C>(conn: &rustls::ConnectionCommon<C>) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = server_config("", "", dir.path(), "example.test", true).unwrap();
        let b = server_config("", "", dir.path(), "example.test", true).unwrap();
        assert_eq!(a.leaf_der, b.leaf_der);
        assert_eq!(tls_server_end_point(&a.leaf_der).len(), 32);
    }

    #[test]
    fn missing_and_garbage_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = server_config(missing.to_str().unwrap(), "k.pem", dir.path(), "x", true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = server_config(
            garbage.to_str().unwrap(),
            garbage.to_str().unwrap(),
            dir.path(),
            "x",
            true,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }

    /// A default rustls client (hybrid key exchange and AES-256 first) connected to a server
    /// configured with `post_quantum`, after one write: the client's stream and the server's
    /// exporter value.
    async fn handshake(
        post_quantum: bool,
    ) -> (
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        Vec<u8>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let setup = server_config("", "", dir.path(), "localhost", post_quantum).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(setup.leaf_der.clone()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(setup.config.clone());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server = tokio::spawn(async move {
            let mut s = acceptor.accept(a).await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            tls_exporter(s.get_ref().1).unwrap()
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = connector.connect(name, b).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let exported = server.await.unwrap();
        (c, exported)
    }

    #[tokio::test]
    async fn handshake_and_exporter_agree() {
        let (client, server_value) = handshake(true).await;
        assert_eq!(tls_exporter(client.get_ref().1).unwrap(), server_value);
    }

    async fn negotiated(post_quantum: bool) -> (rustls::NamedGroup, rustls::CipherSuite) {
        let (client, _) = handshake(post_quantum).await;
        let conn = client.get_ref().1;
        (
            conn.negotiated_key_exchange_group().unwrap().name(),
            conn.negotiated_cipher_suite().unwrap().suite(),
        )
    }

    #[tokio::test]
    async fn the_server_chooses_aes_128_and_the_key_exchange_it_is_configured_for() {
        assert_eq!(
            negotiated(true).await,
            (
                rustls::NamedGroup::X25519MLKEM768,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            )
        );
        assert_eq!(
            negotiated(false).await,
            (
                rustls::NamedGroup::X25519,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            )
        );
    }
}
