//! TLS between servers: our certificate on both ends of a server-to-server connection, and the
//! peer's certificate checked against the system's roots plus `s2s.trust`, for the identities
//! RFC 6120 §13.7.1.2 names: a DNS-ID, an SRV-ID for `_xmpp-server` (RFC 4985), or an
//! XmppAddr (kept for backward compatibility).
//!
//! rustls normally fails the handshake when a certificate does not verify. Here the check is
//! made after the handshake instead, because a peer whose certificate cannot be verified (a
//! self-signed one, say) may still authenticate by Server Dialback over the encrypted stream
//! (XEP-0220, RFC 7590). The handshake itself still proves that the peer holds the key of the
//! certificate it presented: the signatures are verified as usual.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::extensions::GeneralName;

use super::tls::{TlsError, TlsSetup, load_certs};

/// The TLS configurations of both directions and the verifier applied after the handshake.
pub struct PeerTls {
    /// For incoming connections: asks the peer for its certificate, without requiring one.
    pub acceptor: Arc<ServerConfig>,
    /// The same for connections that start with TLS (XEP-0368), which name their protocol
    /// by ALPN.
    pub direct_acceptor: Arc<ServerConfig>,
    /// For outgoing connections: presents our certificate as the client certificate, which is
    /// what SASL EXTERNAL on the peer's side looks at.
    pub connector: Arc<ClientConfig>,
    /// None when no trust anchor could be loaded: then no certificate verifies.
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
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
        let mut direct_acceptor = acceptor.clone();
        direct_acceptor.alpn_protocols = vec![b"xmpp-server".to_vec()];
        let connector = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(deferred)
            .with_client_auth_cert(ours.chain.clone(), ours.key.clone_key())?;
        let roots = Some(trust_anchors(trust)?).filter(|r| !r.is_empty());
        if roots.is_none() {
            tracing::warn!("no trust anchors for peer certificates: only dialback can work");
        }
        Ok(PeerTls {
            direct_acceptor: Arc::new(direct_acceptor),
            acceptor: Arc::new(acceptor),
            connector: Arc::new(connector),
            roots,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// Whether `chain` is a valid certificate chain from a trusted root, for `domain`.
    pub fn verifies(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let (Some(roots), Some((leaf, intermediates))) = (&self.roots, chain.split_first()) else {
            return false;
        };
        let signed = ParsedCertificate::try_from(leaf).and_then(|parsed| {
            let now = UnixTime::now();
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            Ok(parsed)
        });
        let parsed = match signed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(domain, error = %e, "peer certificate does not verify");
                return false;
            }
        };
        let by_dns_id = ServerName::try_from(domain.to_owned())
            .is_ok_and(|name| verify_server_name(&parsed, &name).is_ok());
        let named = by_dns_id || names_by_xmpp_identity(leaf, domain);
        if !named {
            tracing::debug!(domain, "peer certificate is not for this domain");
        }
        named
    }
}

/// id-on-xmppAddr (RFC 6120 §13.7.1.4) and id-on-dnsSRV (RFC 4985).
const XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
const DNS_SRV: &str = "1.3.6.1.5.5.7.8.7";

/// Whether the certificate's subjectAltName has an XmppAddr that is `domain`, or an SRV-ID
/// for XMPP server-to-server service (`_xmpp-server`, or `_xmpps-server` of XEP-0368) at
/// `domain`. Neither form has wildcards. Parsed with x509-parser because rustls (webpki) looks
/// at DNS names only.
fn names_by_xmpp_identity(leaf: &CertificateDer<'_>, domain: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        let GeneralName::OtherName(oid, value) = name else {
            return false;
        };
        let Some(text) = other_name_text(value) else {
            return false;
        };
        match oid.to_id_string().as_str() {
            XMPP_ADDR => text.eq_ignore_ascii_case(domain),
            DNS_SRV => text
                .strip_prefix("_xmpp-server.")
                .or_else(|| text.strip_prefix("_xmpps-server."))
                .is_some_and(|name| name.eq_ignore_ascii_case(domain)),
            _ => false,
        }
    })
}

/// The string in an otherName's value (`[0] EXPLICIT`, holding a UTF8String for XmppAddr and
/// an IA5String for an SRV-ID).
fn other_name_text(value: &[u8]) -> Option<&str> {
    let (_, explicit) = Any::from_der(value).ok()?;
    let (_, inner) = Any::from_der(explicit.data).ok()?;
    let utf8 = inner.tag() == x509_parser::asn1_rs::Tag::Utf8String;
    let ia5 = inner.tag() == x509_parser::asn1_rs::Tag::Ia5String;
    if !(utf8 || ia5) {
        return None;
    }
    std::str::from_utf8(inner.data).ok()
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

    /// A DER element with a short or long length.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=127 => out.push(n as u8),
            n => {
                let bytes: Vec<u8> = n
                    .to_be_bytes()
                    .into_iter()
                    .skip_while(|b| *b == 0)
                    .collect();
                out.push(0x80 | bytes.len() as u8);
                out.extend(bytes);
            }
        }
        out.extend_from_slice(content);
        out
    }

    /// A subjectAltName holding one otherName: `oid` (DER body) with a string of `string_tag`.
    fn other_name_san(oid: &[u8], string_tag: u8, value: &str) -> rcgen::CustomExtension {
        let inner = der(string_tag, value.as_bytes());
        let other_name = der(0xa0, &[der(0x06, oid), der(0xa0, &inner)].concat());
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], der(0x30, &other_name))
    }

    const XMPP_ADDR_OID: [u8; 8] = [0x2b, 6, 1, 5, 5, 7, 8, 5];
    const DNS_SRV_OID: [u8; 8] = [0x2b, 6, 1, 5, 5, 7, 8, 7];
    const UTF8: u8 = 0x0c;
    const IA5: u8 = 0x16;

    #[test]
    fn xmpp_addr_and_srv_id_name_a_peer_too() {
        let mut ca_params = params(&[]);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.as_ref().pem()).unwrap();
        let chain_with = |san: rcgen::CustomExtension| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = params(&[]);
            p.custom_extensions.push(san);
            setup(&p.signed_by(&key, &ca).unwrap(), &key)
        };
        let ours = chain_with(other_name_san(&XMPP_ADDR_OID, UTF8, "ours.test"));
        let peer = PeerTls::new(&ours, std::slice::from_ref(&ca_file)).unwrap();

        let xmpp_addr = chain_with(other_name_san(&XMPP_ADDR_OID, UTF8, "peer.test"));
        assert!(peer.verifies(&xmpp_addr.chain, "peer.test"));
        assert!(peer.verifies(&xmpp_addr.chain, "PEER.test"));
        assert!(!peer.verifies(&xmpp_addr.chain, "other.test"));
        assert!(!peer.verifies(&xmpp_addr.chain, "sub.peer.test"));

        let srv_id = chain_with(other_name_san(&DNS_SRV_OID, IA5, "_xmpp-server.peer.test"));
        assert!(peer.verifies(&srv_id.chain, "peer.test"));
        assert!(!peer.verifies(&srv_id.chain, "other.test"));
        // An SRV-ID for another service, or a service name without its name, names nobody.
        let client_srv = chain_with(other_name_san(&DNS_SRV_OID, IA5, "_xmpp-client.peer.test"));
        assert!(!peer.verifies(&client_srv.chain, "peer.test"));
        let bare_srv = chain_with(other_name_san(&DNS_SRV_OID, IA5, "peer.test"));
        assert!(!peer.verifies(&bare_srv.chain, "peer.test"));
        // Another otherName type, or a value that is not a string, names nobody either.
        let other_oid = chain_with(other_name_san(&[0x2a, 3, 4], UTF8, "peer.test"));
        assert!(!peer.verifies(&other_oid.chain, "peer.test"));
        let integer = chain_with(other_name_san(&XMPP_ADDR_OID, 0x02, "peer.test"));
        assert!(!peer.verifies(&integer.chain, "peer.test"));

        // The identity counts only on a chain from a trusted root.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = params(&[]);
        p.custom_extensions
            .push(other_name_san(&XMPP_ADDR_OID, UTF8, "peer.test"));
        let self_signed = setup(&p.self_signed(&key).unwrap(), &key);
        assert!(!peer.verifies(&self_signed.chain, "peer.test"));
    }
}
