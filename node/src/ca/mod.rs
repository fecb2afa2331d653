//! The overlay CA (proto/SPEC.md section 5.2), an offline tool: it issues certificates
//! binding a user name and a Node-ID it chose at random to a node's Ed25519 key, revokes
//! them, and (`enrollment`) serves the enrollment endpoint nodes get their certificate
//! from. The rules every node applies to certificates are `crate::security::trust`.
//!
//! A certificate of the overlay CA names its Node-ID in a subjectAltName URI
//! `p2psip://<32 hex digits>@<overlay>` (RELOAD's `reload://` URI, our scheme) and its user
//! name in the subject's common name.

pub mod enrollment;

use crate::identity::key_pair;
use crate::identity::IdentityError;
use crate::security::trust::CertFileError;
use crate::security::trust::{normalize_serial, overlay_of_ca, read_revoked, SCHEME};
use p2psip_algorithms::NodeId;
use rand::Rng;
use std::path::{Path, PathBuf};

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this prefix, then the 32 bytes.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key written as 64 hex digits.
pub fn parse_public_key(hex_key: &str) -> Option<[u8; 32]> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

/// The files of a CA directory.
pub struct CaFiles {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub revoked: PathBuf,
}

impl CaFiles {
    pub fn new(dir: &Path) -> CaFiles {
        CaFiles {
            key: dir.join("ca.key"),
            cert: dir.join("ca.pem"),
            revoked: dir.join("revoked.txt"),
        }
    }
}

fn days(d: u32) -> ::time::Duration {
    ::time::Duration::days(i64::from(d))
}

/// Why the CA tool could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path} (run `p2psip ca init` first): {error}")]
    NoCa { path: String, error: std::io::Error },
    #[error("{0} already holds a CA; refusing to overwrite it")]
    Exists(String),
    #[error("writing {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("a user name is required (printable, not empty)")]
    NoUser,
    /// The certificate library refused: what was being made, and why.
    #[error("{what}: {why}")]
    Certificate { what: &'static str, why: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    File(#[from] CertFileError),
}

fn refused(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |e| CaError::Certificate {
        what,
        why: e.to_string(),
    }
}

fn write(path: &Path, text: &str) -> Result<(), CaError> {
    std::fs::write(path, text).map_err(|error| CaError::Write {
        path: path.display().to_string(),
        error,
    })
}

/// The URI a certificate names a Node-ID with.
pub fn node_uri(id: NodeId, overlay: &str) -> String {
    format!("{SCHEME}{id:#}@{overlay}")
}

/// The CA of `dir` as an rcgen issuer, and its certificate (PEM).
pub(crate) fn ca_issuer(
    dir: &Path,
) -> Result<(rcgen::Issuer<'static, rcgen::KeyPair>, String), CaError> {
    let f = CaFiles::new(dir);
    let ca_pem = std::fs::read_to_string(&f.cert).map_err(|error| CaError::NoCa {
        path: f.cert.display().to_string(),
        error,
    })?;
    let ca_key = key_pair(&crate::identity::read_seed(&f.key)?)?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(refused("the CA certificate"))?;
    Ok((issuer, ca_pem))
}

/// Makes a new overlay CA in `dir`: `ca.key` (its secret key, mode 0600) and `ca.pem` (its
/// certificate, valid `valid_days`). Refuses to overwrite an existing CA.
pub fn ca_init(dir: &Path, overlay: &str, valid_days: u32) -> Result<PathBuf, CaError> {
    let f = CaFiles::new(dir);
    if f.cert.exists() || f.key.exists() {
        return Err(CaError::Exists(dir.display().to_string()));
    }
    let seed = crate::identity::generate_seed();
    let key = key_pair(&seed)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("p2psip CA {overlay}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = ::time::OffsetDateTime::now_utc();
    p.not_before = now - ::time::Duration::hours(1);
    p.not_after = now + days(valid_days);
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key).map_err(refused("CA certificate"))?;
    crate::identity::write_seed(&f.key, &seed)?;
    write(&f.cert, &cert.pem())?;
    Ok(f.cert)
}

fn random_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::rng().random();
    b[0] &= 0x7f; // a positive DER integer
    b[0] |= 0x01; // and no leading zero byte
    rcgen::SerialNumber::from_slice(&b)
}

/// What [`ca_issue`] made.
pub struct Issued {
    pub pem: String,
    pub node_id: NodeId,
    pub serial: String,
    pub not_after: String,
}

/// Issues a certificate binding `user` and a random Node-ID (or `node_id`, when the operator
/// assigns one) to the Ed25519 public key `public_key`, valid `valid_days` from now (or, for
/// tests of expiry, from `valid_from_days_ago` days in the past).
pub fn ca_issue(
    dir: &Path,
    user: &str,
    public_key: &[u8; 32],
    node_id: Option<NodeId>,
    valid_days: u32,
    valid_from_days_ago: u32,
) -> Result<Issued, CaError> {
    if user.is_empty() || user.chars().any(|c| c.is_control()) {
        return Err(CaError::NoUser);
    }
    let (issuer, ca_pem) = ca_issuer(dir)?;
    let overlay = overlay_of_ca(&ca_pem)?;
    let id = node_id.unwrap_or_else(|| p2psip_algorithms::Id(rand::rng().random()));
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, user);
    p.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(node_uri(id, &overlay)).map_err(refused("node URI"))?,
    )];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let start = ::time::OffsetDateTime::now_utc() - days(valid_from_days_ago);
    p.not_before = start - ::time::Duration::hours(1);
    p.not_after = start + days(valid_days);
    let serial = random_serial();
    let serial_hex = hex::encode(serial.as_ref());
    p.serial_number = Some(serial);
    let mut spki = SPKI_ED25519_PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki).map_err(refused("public key"))?;
    let cert = p
        .signed_by(&spki, &issuer)
        .map_err(refused("signing the certificate"))?;
    Ok(Issued {
        pem: cert.pem(),
        node_id: id,
        serial: serial_hex,
        not_after: format!(
            "{} {:02}:{:02} UTC",
            p.not_after.date(),
            p.not_after.hour(),
            p.not_after.minute()
        ),
    })
}

/// Adds a serial number to the CA's revocation list (`revoked.txt`).
pub fn ca_revoke(dir: &Path, serial: &str) -> Result<PathBuf, CaError> {
    let serial = normalize_serial(serial)?;
    let f = CaFiles::new(dir);
    let mut list = read_revoked(&f.revoked)?;
    if list.insert(serial.clone()) {
        let mut v: Vec<_> = list.into_iter().collect();
        v.sort();
        write(&f.revoked, &(v.join("\n") + "\n"))?;
    }
    Ok(f.revoked)
}
