//! Node identities: an Ed25519 key kept as a hex seed file, the self-signed Node-ID derived
//! from it, and the TLS certificate that carries it on every QUIC connection.

use crate::security::private_files::{self, PrivateFileError};
use p2psip_proto::security::Identity;
use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): this prefix, then the 32 bytes.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why an identity or its credentials could not be read, made or checked.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} exists; refusing to overwrite an identity")]
    Exists(String),
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    #[error("reading identity {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not hex")]
    NotHex(String),
    #[error("{0}: a key is 64 hex digits")]
    BadLength(String),
    /// The key or certificate library refused (`what` says which step).
    #[error("{what}: {why}")]
    Key { what: &'static str, why: String },
    #[error("security.ca {path}: {why}")]
    Ca { path: String, why: String },
    #[error("security.certificate {path}: {why}")]
    Certificate { path: String, why: String },
    #[error("security.certificate {0} was issued for another key than this node's identity")]
    OtherKey(String),
    /// A certificate or revocation file could not be read or parsed (the message names
    /// the file).
    #[error(transparent)]
    File(#[from] crate::security::trust::CertFileError),
}

/// A fresh random secret seed.
pub fn generate_seed() -> [u8; 32] {
    rand::rng().random()
}

/// Writes a seed as 64 hex digits in a new file of mode 0600 (never a window with the
/// umask's mode, never through a symlink). Refuses to overwrite.
pub fn write_seed(path: &Path, seed: &[u8; 32]) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_files::create_dir(dir)?;
    }
    match private_files::write_new(path, format!("{}\n", hex::encode(seed)).as_bytes()) {
        Err(PrivateFileError::Exists(_)) => Err(IdentityError::Exists(path.display().to_string())),
        r => Ok(r?),
    }
}

/// Reads a seed written by [`write_seed`].
pub fn read_seed(path: &Path) -> Result<[u8; 32], IdentityError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: shown(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| IdentityError::NotHex(shown()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| IdentityError::BadLength(shown()))
}

/// Loads the identity at `path`, creating it first if `create` and it does not exist.
pub fn load_or_create(path: &Path, user: &str, create: bool) -> Result<Identity, IdentityError> {
    if create && !path.exists() {
        write_seed(path, &generate_seed())?;
    }
    Ok(Identity::from_seed(read_seed(path)?, user))
}

/// The PKCS#8 form of an Ed25519 seed, as TLS and certificate tools take keys.
pub fn pkcs8_of(seed: &[u8; 32]) -> Vec<u8> {
    let mut v = PKCS8_ED25519_PREFIX.to_vec();
    v.extend_from_slice(seed);
    v
}

/// The TLS private key of a seed.
pub(crate) fn key_der(seed: &[u8; 32]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_of(seed)))
}

/// The rcgen key pair of a seed (to sign or be named in certificates).
pub(crate) fn key_pair(seed: &[u8; 32]) -> Result<rcgen::KeyPair, IdentityError> {
    rcgen::KeyPair::try_from(pkcs8_of(seed).as_slice()).map_err(|e| IdentityError::Key {
        what: "Ed25519 key",
        why: e.to_string(),
    })
}

/// The TLS certificate and key of an identity: a self-signed X.509 certificate over the
/// identity's own Ed25519 key, so the peer derives the Node-ID from the key it verifies.
pub fn tls_credentials(
    seed: &[u8; 32],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
    let key = key_pair(seed)?;
    let failed = |e: rcgen::Error| IdentityError::Key {
        what: "self-signed certificate",
        why: e.to_string(),
    };
    let params = rcgen::CertificateParams::new(vec!["p2psip".to_string()]).map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((vec![cert.der().clone()], key_der(seed)))
}

/// Everything a node proves itself with and checks others against.
pub struct Credentials {
    pub seed: [u8; 32],
    /// The signing identity (in enrolled overlays the Node-ID and user of the certificate).
    pub identity: Identity,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub trust: std::sync::Arc<crate::security::trust::Trust>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            seed: self.seed,
            identity: self.identity.clone(),
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            trust: self.trust.clone(),
        }
    }
}

/// The credentials of key `seed` under `cfg.security`: self-signed, or enrolled with the
/// certificate the overlay's CA issued for this key (checked here as peers will check it).
pub fn credentials(
    cfg: &crate::config::Config,
    seed: [u8; 32],
) -> Result<Credentials, IdentityError> {
    use crate::security::trust::{read_cert, read_revoked, Trust};
    let sec = &cfg.security;
    let (Some(ca), Some(cert)) = (&sec.ca, &sec.certificate) else {
        let (certs, key) = tls_credentials(&seed)?;
        return Ok(Credentials {
            seed,
            identity: Identity::from_seed(seed, cfg.user.clone()),
            certs,
            key,
            trust: std::sync::Arc::new(Trust::self_signed(&cfg.overlay)),
        });
    };
    // The file readers' messages name the file already.
    let revoked = match &sec.revoked {
        Some(p) => read_revoked(p)?,
        None => Default::default(),
    };
    let trust = Trust::enrolled(&cfg.overlay, read_cert(ca)?, revoked, sec.allow_self_signed)
        .map_err(|e| IdentityError::Ca {
            path: ca.display().to_string(),
            why: e.to_string(),
        })?;
    let der = read_cert(cert)?;
    let binding = trust.check(&der).map_err(|e| IdentityError::Certificate {
        path: cert.display().to_string(),
        why: e.to_string(),
    })?;
    let own = Identity::from_seed(seed, "");
    if binding.key != *own.key.verifying_key().as_bytes() {
        return Err(IdentityError::OtherKey(cert.display().to_string()));
    }
    Ok(Credentials {
        seed,
        identity: Identity::enrolled(seed, &binding, der.clone()),
        certs: vec![CertificateDer::from(der)],
        key: key_der(&seed),
        trust: std::sync::Arc::new(trust),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_binds_the_node_id() {
        let seed = [9u8; 32];
        let (certs, _) = tls_credentials(&seed).unwrap();
        let id = Identity::from_seed(seed, "");
        assert_eq!(crate::tls::node_id_of_cert(&certs[0]).unwrap(), id.node_id);
    }

    #[test]
    fn seed_files_round_trip_and_are_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("p2psip-id-{}", std::process::id()));
        let p = dir.join("key");
        let _ = std::fs::remove_dir_all(&dir);
        let s = generate_seed();
        write_seed(&p, &s).unwrap();
        assert_eq!(read_seed(&p).unwrap(), s);
        assert!(write_seed(&p, &s).is_err());
        std::fs::write(&p, "zz").unwrap();
        assert!(read_seed(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
