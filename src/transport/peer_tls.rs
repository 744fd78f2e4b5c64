//! TLS between servers: our certificate on both ends of a server-to-server connection, and the
//! peer's certificate checked against the system's roots plus `s2s.trust`.
//!
//! rustls normally fails the handshake when a certificate does not verify. Here the check is
//! made after the handshake instead, because a peer whose certificate cannot be verified (a
//! self-signed one, say) may still authenticate by Server Dialback over the encrypted stream
//! (XEP-0220, RFC 7590). The handshake itself still proves that the peer holds the key of the
//! certificate it presented: the signatures are verified as usual.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

use super::tls::{TlsError, TlsSetup, load_certs};

/// The TLS configurations of both directions and the verifier applied after the handshake.
pub struct PeerTls {
    /// For incoming connections: asks the peer for its certificate, without requiring one.
    pub acceptor: Arc<ServerConfig>,
    /// For outgoing connections: presents our certificate as the client certificate, which is
    /// what SASL EXTERNAL on the peer's side looks at.
    pub connector: Arc<ClientConfig>,
    /// None when no trust anchor could be loaded: then no certificate verifies.
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl PeerTls {
    pub fn new(ours: &TlsSetup, trust: &[PathBuf]) -> Result<PeerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let deferred = Arc::new(Deferred {
            algorithms: provider.signature_verification_algorithms,
        });
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let acceptor = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(deferred.clone())
            .with_single_cert(ours.chain.clone(), ours.key.clone_key())?;
        let connector = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(deferred)
            .with_client_auth_cert(ours.chain.clone(), ours.key.clone_key())?;
        let roots = trust_anchors(trust)?;
        let verifier = if roots.is_empty() {
            tracing::warn!("no trust anchors for peer certificates: only dialback can work");
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .ok()
        };
        Ok(PeerTls {
            acceptor: Arc::new(acceptor),
            connector: Arc::new(connector),
            verifier,
        })
    }

    /// Whether `chain` is a valid certificate chain for `domain` (RFC 6125 DNS-ID), from a
    /// trusted root.
    pub fn verifies(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let (Some(verifier), Some((leaf, intermediates))) = (&self.verifier, chain.split_first())
        else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        match verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(domain, error = %e, "peer certificate does not verify");
                false
            }
        }
    }
}

/// The system's roots plus the configured CA files. A configured file that cannot be read is
/// a start-up error; the system store is best effort.
fn trust_anchors(trust: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in trust {
        let (added, _) = roots.add_parsable_certificates(load_certs(path)?);
        if added == 0 {
            return Err(TlsError::NoCertificate { path: path.clone() });
        }
    }
    Ok(roots)
}

/// Accepts any certificate in the handshake (see the module comment) but checks the handshake
/// signatures, so the peer must hold the certificate's key.
#[derive(Debug)]
struct Deferred {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Deferred {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> TlsSetup {
        let der = cert.der().clone();
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], pkcs8.clone_key().into())
        .unwrap();
        TlsSetup {
            config: Arc::new(config),
            leaf_der: der.to_vec(),
            chain: vec![der],
            key: Arc::new(pkcs8.into()),
        }
    }

    fn params(names: &[&str]) -> rcgen::CertificateParams {
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
    }

    #[test]
    fn only_a_chain_from_a_trusted_root_for_the_domain_verifies() {
        let mut ca_params = params(&[]);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.as_ref().pem()).unwrap();

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params(&["peer.test", "*.peer.test"])
            .signed_by(&key, &ca)
            .unwrap();
        let leaf = setup(&cert, &key);
        let peer = PeerTls::new(&leaf, std::slice::from_ref(&ca_file)).unwrap();
        assert!(peer.verifies(&leaf.chain, "peer.test"));
        assert!(peer.verifies(&leaf.chain, "conference.peer.test"));
        assert!(!peer.verifies(&leaf.chain, "other.test"));

        let key = rcgen::KeyPair::generate().unwrap();
        let self_signed = params(&["peer.test"]).self_signed(&key).unwrap();
        assert!(!peer.verifies(&setup(&self_signed, &key).chain, "peer.test"));
        assert!(!peer.verifies(&[], "peer.test"));
    }
}
