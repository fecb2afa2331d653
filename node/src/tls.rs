//! TLS 1.3 with mutual authentication for QUIC. A certificate is accepted when the overlay's
//! trust rules accept it (`enroll::Trust`: in a self-signed overlay any Ed25519 key, the
//! Node-ID the hash of the key; in an enrolled overlay a certificate of its CA, not expired
//! nor revoked, the Node-ID the one the CA chose) and the handshake signature proves the
//! peer holds its key.

use crate::security::trust::Trust;
use p2psip_algorithms::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

/// ALPN of the peer protocol.
pub const ALPN: &[u8] = b"p2psip/1";
/// ALPN of application connections (AppAttach).
pub const ALPN_APP: &[u8] = b"p2psip-app/1";

/// The Node-ID a certificate the handshake accepted binds: the one its CA chose, or for a
/// self-signed certificate SHA-256 of its Ed25519 public key, first 128 bits.
pub fn node_id_of_cert(cert: &CertificateDer<'_>) -> Result<NodeId, Error> {
    crate::security::trust::node_id_of_cert(cert.as_ref()).map_err(Error::General)
}

#[derive(Debug)]
struct NodeCertVerifier {
    algs: WebPkiSupportedAlgorithms,
    trust: Arc<Trust>,
    /// The node label of this node's metrics.
    label: String,
}

impl NodeCertVerifier {
    fn new(trust: Arc<Trust>, label: String) -> Self {
        NodeCertVerifier {
            algs: ring::default_provider().signature_verification_algorithms,
            trust,
            label,
        }
    }

    fn accept(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        self.trust.check(cert.as_ref()).map(|_| ()).map_err(|why| {
            crate::remote_log!(
                warn,
                "certificate_refused",
                "peer certificate refused: {why}"
            );
            crate::metrics::cert_refused(&self.label, &why);
            Error::General(why.to_string())
        })
    }

    /// The handshake signature, checked with the key of the certificate (both directions).
    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

/// Identity keys are Ed25519, the only scheme offered or accepted.
const SCHEMES: [SignatureScheme; 1] = [SignatureScheme::ED25519];

fn no_tls12() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::General("TLS 1.2 is not supported".into()))
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.accept(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.accept(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// rustls configurations for both directions of the QUIC endpoint.
pub fn configs(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust: Arc<Trust>,
    label: String,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), Error> {
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(NodeCertVerifier::new(trust, label));
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec(), ALPN_APP.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}
