//! TLS 1.3 with raw public keys (RFC 7250): each node presents its Ed25519 node key, nothing
//! else. There are no certificates, no names and no certificate authorities.
//!
//! ```text
//!   dialer (client)                                   listener (server)
//!   ServerKeyVerifier: key == pinned? (members)       ClientKeyVerifier: PeerPolicy::allow_inbound(key)?
//!                      any key        (joiner → seed)  (joiners are allowed; the core decides)
//!   both: CertificateVerify checked against the raw key (proof of possession of the node key)
//! ```
//!
//! What TLS proves is only "the peer holds the secret half of this node key". Who that key is
//! (a member with a valid credential, or the seed of the cluster a token pins) is decided by the
//! core in the first frames (`ClusterInfoRequest` / `ClusterInfo`, DESIGN.md "Cluster
//! identity"), because the credential is not part of a raw-public-key handshake and the same
//! check must run unchanged in the simulator, which has no TLS.

use std::fmt;
use std::sync::Arc;

use portcullis_core::crypto::{PublicKey, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

/// ALPN protocol id of portcullis peer connections.
pub const ALPN: &[u8] = b"portcullis/1";

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): the 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32 seed bytes follow.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Decides which keys may connect to this node (checked inside the TLS handshake).
///
/// A member knows its cluster's members from the core; a joiner is, by definition, not yet
/// known, so a listener that admits nodes must let unknown keys in and leave the decision to
/// the core (which answers them only `ClusterInfo` and join replies). A policy can still shut
/// out keys it knows to be unwanted.
pub trait PeerPolicy: Send + Sync + fmt::Debug {
    /// Whether an inbound connection authenticated as `key` is accepted.
    fn allow_inbound(&self, key: &PublicKey) -> bool;
}

/// Accepts every key that proves possession; the core decides what each key may do.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreDecides;

impl PeerPolicy for CoreDecides {
    fn allow_inbound(&self, _key: &PublicKey) -> bool {
        true
    }
}

/// The `SubjectPublicKeyInfo` DER of an Ed25519 node key.
pub fn spki_der(key: &PublicKey) -> Vec<u8> {
    let mut der = Vec::with_capacity(SPKI_ED25519_PREFIX.len() + 32);
    der.extend_from_slice(&SPKI_ED25519_PREFIX);
    der.extend_from_slice(&key.0);
    der
}

/// The node key inside an Ed25519 `SubjectPublicKeyInfo`, or `None` for anything else.
pub fn key_from_spki(der: &[u8]) -> Option<PublicKey> {
    let rest = der.strip_prefix(&SPKI_ED25519_PREFIX[..])?;
    let bytes: [u8; 32] = rest.try_into().ok()?;
    Some(PublicKey(bytes))
}

/// The provider every config uses: ring, TLS 1.3 only.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Our raw public key and its signer.
pub fn certified_key(key: &SecretKey) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let mut pkcs8 = Zeroizing::new(Vec::with_capacity(PKCS8_ED25519_PREFIX.len() + 32));
    pkcs8.extend_from_slice(&PKCS8_ED25519_PREFIX);
    pkcs8.extend_from_slice(&key.secret_bytes()[..]);
    // ring copies the seed into its own key pair; our buffer is wiped on drop.
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&der)?;
    let spki = CertificateDer::from(spki_der(&key.public()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if key_from_spki(cert.as_ref()).is_none() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algs,
    )
}

fn refused(reason: &'static str) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(reason)),
    )))
}

/// Why a verifier refused a key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(&'static str);

/// The dialer's check of the listener: exactly the pinned key, or (joiner dialing a seed) any
/// Ed25519 key.
#[derive(Debug)]
pub struct ServerKeyVerifier {
    pinned: Option<PublicKey>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerKeyVerifier {
    /// A verifier that accepts only `pinned`, or any key when `None`.
    pub fn new(pinned: Option<PublicKey>) -> Self {
        ServerKeyVerifier {
            pinned,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(refused("raw public keys have no chain"));
        }
        let key = key_from_spki(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        match self.pinned {
            Some(pinned) if pinned != key => Err(refused("server key is not the pinned key")),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The listener's check of a dialer: an Ed25519 raw key the [`PeerPolicy`] allows.
#[derive(Debug)]
pub struct ClientKeyVerifier {
    policy: Arc<dyn PeerPolicy>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientKeyVerifier {
    /// A verifier that asks `policy` about every key.
    pub fn new(policy: Arc<dyn PeerPolicy>) -> Self {
        ClientKeyVerifier {
            policy,
            algs: algorithms(),
        }
    }
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(refused("raw public keys have no chain"));
        }
        let key = key_from_spki(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.policy.allow_inbound(&key) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused("client key refused by policy"))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The rustls server config of a node.
pub fn server_config(
    key: &SecretKey,
    policy: Arc<dyn PeerPolicy>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientKeyVerifier::new(policy)))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(key)?),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls client config for one dial: the server must prove `pinned` (or any key).
pub fn client_config(
    key: &SecretKey,
    pinned: Option<PublicKey>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_for(certified_key(key)?, pinned)
}

/// [`client_config`] with the key already made into a signer ([`certified_key`]): a node
/// dialing under its own key builds that once, not once per dial.
pub fn client_config_for(
    certified: Arc<CertifiedKey>,
    pinned: Option<PublicKey>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier::new(pinned)))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::rng::SeededRng;

    #[test]
    fn spki_round_trips_and_rejects_other_encodings() {
        let key = SecretKey::generate(&mut SeededRng::from_u64(1)).public();
        let der = spki_der(&key);
        assert_eq!(key_from_spki(&der), Some(key));
        assert_eq!(key_from_spki(&der[..der.len() - 1]), None);
        let mut other = der.clone();
        other[8] = 0x71; // Ed448's OID.
        assert_eq!(key_from_spki(&other), None);
    }

    #[test]
    fn certified_key_signs_for_its_own_public_key() {
        let key = SecretKey::generate(&mut SeededRng::from_u64(2));
        let certified = certified_key(&key).expect("a valid Ed25519 seed always parses");
        assert_eq!(
            key_from_spki(certified.cert[0].as_ref()),
            Some(key.public())
        );
        let signer = certified
            .key
            .choose_scheme(&[SignatureScheme::ED25519])
            .expect("an Ed25519 key offers the Ed25519 scheme");
        let signature = signer.sign(b"hello").expect("ed25519 signing cannot fail");
        assert_eq!(signature.len(), 64);
    }
}
