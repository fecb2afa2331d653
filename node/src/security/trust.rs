//! The trust rules every node applies (proto/SPEC.md section 5.2) to the certificates of
//! its peers and of value signers: self-signed identities, whose Node-ID is the hash of
//! their key, or certificates of the overlay CA naming their Node-ID in a subjectAltName
//! URI `p2psip://<32 hex digits>@<overlay>`; revocation; and the certificate parsing both
//! this and the CA tool (the `ca` module) use.

use p2psip_algorithms::NodeId;
use p2psip_proto::security::{node_id_of_key, CertBinding, CertificateCheck};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use x509_parser::prelude::*;

/// Why a certificate file, a CA certificate or a revocation list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// What is wrong with the contents of the file at `path`.
    #[error("{path}: {source}")]
    In {
        path: String,
        source: Box<CertFileError>,
    },
    #[error("{0:?} is not a serial number (hex digits)")]
    Serial(String),
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("PEM block is a {0}, not a CERTIFICATE")]
    NotCertificate(String),
    #[error("CA certificate: {0}")]
    CaCertificate(String),
    #[error("CA certificate has no common name")]
    NoCommonName,
    #[error("not a p2psip CA certificate (common name {0:?})")]
    NotOurCa(String),
    #[error("the CA certificate is not a CA certificate")]
    NotCa,
}

fn read_file(path: &Path) -> Result<Vec<u8>, CertFileError> {
    std::fs::read(path).map_err(|source| CertFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Why a certificate is refused. Its `reason` is the `reason` label of
/// `p2psip_certificates_refused_total`, so a reworded message changes no metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("certificate does not parse")]
    Unparsable,
    /// Its key, or its Node-ID URI, is not what a certificate of this overlay carries.
    #[error("{0}")]
    Malformed(String),
    #[error("not enrolled: this overlay accepts only certificates of its CA")]
    NotEnrolled,
    #[error("certificate of an overlay CA, but this overlay is self-signed")]
    CaInSelfSigned,
    #[error("CA does not parse")]
    CaUnparsable,
    #[error("issued by {0}, not by this overlay's CA")]
    OtherIssuer(String),
    #[error("not signed by this overlay's CA")]
    BadSignature,
    #[error("certificate expired on {0}")]
    Expired(String),
    #[error("certificate not valid before {0}")]
    NotYetValid(String),
    #[error("certificate {0} is revoked")]
    Revoked(String),
    #[error("certificate is for overlay {got:?}, not {want:?}")]
    OtherOverlay { got: String, want: String },
}

impl TrustError {
    /// The refusal's `reason` label: not_enrolled, expired, revoked, not_yet_valid or
    /// invalid.
    pub fn reason(&self) -> &'static str {
        match self {
            TrustError::NotEnrolled => "not_enrolled",
            TrustError::Expired(_) => "expired",
            TrustError::Revoked(_) => "revoked",
            TrustError::NotYetValid(_) => "not_yet_valid",
            _ => "invalid",
        }
    }
}

impl From<String> for TrustError {
    fn from(s: String) -> TrustError {
        TrustError::Malformed(s)
    }
}

/// id-Ed25519.
pub(crate) const OID_ED25519: &str = "1.3.101.112";

/// The URI scheme of a Node-ID in a certificate.
pub(crate) const SCHEME: &str = "p2psip://";

/// A serial number as compared: lowercase hex without leading zero bytes.
pub(crate) fn canonical_serial(s: &str) -> String {
    let mut t = s.trim().to_lowercase();
    while t.len() > 2 && t.starts_with("00") {
        t = t[2..].to_string();
    }
    t
}

pub(crate) fn normalize_serial(s: &str) -> Result<String, CertFileError> {
    let t = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_lowercase();
    if t.is_empty() || hex::decode(&t).is_err() {
        return Err(CertFileError::Serial(s.into()));
    }
    Ok(t)
}

/// Reads a revocation list: one hex serial number per line, `#` comments; a missing file is
/// an empty list.
pub fn read_revoked(path: &Path) -> Result<HashSet<String>, CertFileError> {
    if !path.exists() {
        return Ok(HashSet::new());
    }
    let text = String::from_utf8_lossy(&read_file(path)?).into_owned();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(normalize_serial)
        .collect()
}

/// The overlay a CA certificate was made for (from its common name).
pub(crate) fn overlay_of_ca(ca_pem: &str) -> Result<String, CertFileError> {
    let der = pem_to_der(ca_pem.as_bytes())?;
    let (_, x) =
        X509Certificate::from_der(&der).map_err(|e| CertFileError::CaCertificate(e.to_string()))?;
    let cn = common_name(&x).ok_or(CertFileError::NoCommonName)?;
    match cn.strip_prefix("p2psip CA ") {
        Some(o) => Ok(o.to_string()),
        None => Err(CertFileError::NotOurCa(cn)),
    }
}

/// The DER of the first certificate of a PEM file.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, CertFileError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| CertFileError::NotPem(e.to_string()))?;
    if p.label != "CERTIFICATE" {
        return Err(CertFileError::NotCertificate(p.label));
    }
    Ok(p.contents)
}

/// Reads a PEM certificate file.
pub fn read_cert(path: &Path) -> Result<Vec<u8>, CertFileError> {
    pem_to_der(&read_file(path)?).map_err(|e| CertFileError::In {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

pub(crate) fn common_name(x: &X509Certificate<'_>) -> Option<String> {
    x.subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_string)
}

pub(crate) fn ed25519_key(x: &X509Certificate<'_>) -> Result<[u8; 32], String> {
    let spki = x.public_key();
    if spki.algorithm.algorithm.to_id_string() != OID_ED25519 {
        return Err("certificate key is not Ed25519".into());
    }
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "bad Ed25519 key length".to_string())
}

/// The Node-ID URI of a certificate, if it has one: (Node-ID, overlay).
pub(crate) fn node_id_uri(x: &X509Certificate<'_>) -> Result<Option<(NodeId, String)>, String> {
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return Ok(None);
    };
    for n in &san.value.general_names {
        if let GeneralName::URI(u) = n {
            if let Some(rest) = u.strip_prefix(SCHEME) {
                let (id, overlay) = rest
                    .split_once('@')
                    .ok_or_else(|| format!("malformed node URI {u:?}"))?;
                let id = u128::from_str_radix(id, 16)
                    .ok()
                    .filter(|_| id.len() == 32)
                    .ok_or_else(|| format!("malformed Node-ID in {u:?}"))?;
                return Ok(Some((
                    p2psip_algorithms::Id(id),
                    overlay.trim_end_matches('/').to_string(),
                )));
            }
        }
    }
    Ok(None)
}

/// The Node-ID a certificate binds, without checking who issued it: the one its node URI
/// names, else the hash of its key. Only for certificates [`Trust`] accepted.
pub fn node_id_of_cert(der: &[u8]) -> Result<NodeId, String> {
    let (_, x) = X509Certificate::from_der(der).map_err(|_| "certificate does not parse")?;
    match node_id_uri(&x)? {
        Some((id, _)) => Ok(id),
        None => Ok(node_id_of_key(&ed25519_key(&x)?)),
    }
}

/// Which certificates this node accepts from peers and value signers.
#[derive(Debug)]
pub struct Trust {
    overlay: String,
    ca: Option<Ca>,
    /// CA-issued certificates already checked for a signature (by SHA-256 of the DER):
    /// what they bind, their serial and end of validity, so that a signer's certificate is
    /// parsed and its CA signature verified once, not with every message it signs.
    /// Revocation and expiry are still checked on every use.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

impl Trust {
    /// A self-signed overlay: any Ed25519 key, Node-ID = hash of the key.
    pub fn self_signed(overlay: &str) -> Trust {
        Trust {
            overlay: overlay.into(),
            ca: None,
            verified: Default::default(),
        }
    }

    /// An enrolled overlay: certificates of the CA `ca_der`, not expired, not revoked, for
    /// this overlay; self-signed identities as well only if `allow_self_signed`.
    pub fn enrolled(
        overlay: &str,
        ca_der: Vec<u8>,
        revoked: HashSet<String>,
        allow_self_signed: bool,
    ) -> Result<Trust, CertFileError> {
        let (_, x) = X509Certificate::from_der(&ca_der)
            .map_err(|e| CertFileError::CaCertificate(e.to_string()))?;
        if !x.is_ca() {
            return Err(CertFileError::NotCa);
        }
        let key = ed25519_key(&x).map_err(|e| CertFileError::CaCertificate(e.to_string()))?;
        Ok(Trust {
            overlay: overlay.into(),
            ca: Some(Ca {
                der: ca_der,
                key,
                revoked: RwLock::new(revoked.iter().map(|s| canonical_serial(s)).collect()),
                allow_self_signed: AtomicBool::new(allow_self_signed),
            }),
            verified: Default::default(),
        })
    }

    /// The CA's certificate (DER; empty in a self-signed overlay).
    pub fn ca_der(&self) -> &[u8] {
        self.ca.as_ref().map_or(&[], |c| c.der.as_slice())
    }

    /// The CA's public key (it signs the overlay configuration document).
    pub fn ca_key(&self) -> Option<[u8; 32]> {
        self.ca.as_ref().map(|c| c.key)
    }

    /// Adds serial numbers (hex) to the revocation list; returns how many were new.
    pub fn revoke(&self, serials: &[String]) -> usize {
        let Some(ca) = &self.ca else { return 0 };
        let mut r = ca.revoked.write().unwrap_or_else(|e| e.into_inner());
        serials
            .iter()
            .filter(|s| r.insert(canonical_serial(s)))
            .count()
    }

    /// Sets whether self-signed identities are admitted besides the CA's.
    pub fn set_allow_self_signed(&self, allow: bool) {
        if let Some(ca) = &self.ca {
            ca.allow_self_signed.store(allow, Ordering::Relaxed);
        }
    }

    /// Whether only CA certificates are accepted.
    pub fn is_enrolled(&self) -> bool {
        self.ca.is_some()
    }

    /// Checks a certificate and returns what it binds, or why it is refused, now.
    pub fn check(&self, der: &[u8]) -> Result<CertBinding, TrustError> {
        self.check_at(der, ASN1Time::now())
    }

    /// [`Trust::check`] at time `now` (validity is judged against it).
    pub fn check_at(&self, der: &[u8], now: ASN1Time) -> Result<CertBinding, TrustError> {
        let (_, x) = X509Certificate::from_der(der).map_err(|_| TrustError::Unparsable)?;
        let key = ed25519_key(&x)?;
        let Some((node_id, overlay)) = node_id_uri(&x)? else {
            return match &self.ca {
                Some(ca) if !ca.allow_self_signed.load(Ordering::Relaxed) => {
                    Err(TrustError::NotEnrolled)
                }
                _ => Ok(CertBinding {
                    node_id: node_id_of_key(&key),
                    user: String::new(),
                    key,
                }),
            };
        };
        let Some(ca) = &self.ca else {
            return Err(TrustError::CaInSelfSigned);
        };
        let (_, cax) = X509Certificate::from_der(&ca.der).map_err(|_| TrustError::CaUnparsable)?;
        if x.issuer().as_raw() != cax.subject().as_raw() {
            return Err(TrustError::OtherIssuer(x.issuer().to_string()));
        }
        x.verify_signature(Some(cax.public_key()))
            .map_err(|_| TrustError::BadSignature)?;
        let v = x.validity();
        if now > v.not_after {
            return Err(TrustError::Expired(v.not_after.to_string()));
        }
        if now < v.not_before {
            return Err(TrustError::NotYetValid(v.not_before.to_string()));
        }
        let serial = canonical_serial(&hex::encode(x.raw_serial()));
        if ca
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&serial)
        {
            return Err(TrustError::Revoked(serial));
        }
        if overlay != self.overlay {
            return Err(TrustError::OtherOverlay {
                got: overlay,
                want: self.overlay.clone(),
            });
        }
        Ok(CertBinding {
            node_id,
            user: common_name(&x).unwrap_or_default(),
            key,
        })
    }
}

impl Trust {
    /// [`Trust::check`] through the memory of certificates already checked.
    fn check_remembered(&self, der: &[u8]) -> Result<CertBinding, TrustError> {
        use sha2::Digest as _;
        let Some(ca) = &self.ca else {
            return self.check(der);
        };
        let digest: [u8; 32] = sha2::Sha256::digest(der).into();
        let seen = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some(v) = seen {
            let now = ASN1Time::now();
            if now.timestamp() > v.not_after {
                return Err(TrustError::Expired(
                    ASN1Time::from_timestamp(v.not_after)
                        .map_or_else(|_| v.not_after.to_string(), |t| t.to_string()),
                ));
            }
            if ca
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&v.serial)
            {
                return Err(TrustError::Revoked(v.serial));
            }
            return Ok(v.binding);
        }
        let binding = self.check_at(der, ASN1Time::now())?;
        // Only CA-issued certificates are remembered (a self-signed one's acceptance
        // depends on a setting that may change).
        if let Ok((_, x)) = X509Certificate::from_der(der) {
            if matches!(node_id_uri(&x), Ok(Some(_))) {
                let mut m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= VERIFIED_CAP {
                    m.clear();
                }
                m.insert(
                    digest,
                    Verified {
                        binding: binding.clone(),
                        serial: canonical_serial(&hex::encode(x.raw_serial())),
                        not_after: x.validity().not_after.timestamp(),
                    },
                );
            }
        }
        Ok(binding)
    }
}

impl CertificateCheck for Trust {
    fn binding(&self, der: &[u8]) -> Result<CertBinding, String> {
        self.check_remembered(der).map_err(|e| e.to_string())
    }

    fn allows_self_signed(&self) -> bool {
        self.ca
            .as_ref()
            .is_none_or(|c| c.allow_self_signed.load(Ordering::Relaxed))
    }
}

/// Certificates remembered at most; the memory is emptied when it is full.
pub(crate) const VERIFIED_CAP: usize = 4096;

/// The overlay's CA as peers hold it. The revocation list and the self-signed rule may
/// change while the node runs (a newer overlay configuration document).
#[derive(Debug)]
pub(crate) struct Ca {
    der: Vec<u8>,
    key: [u8; 32],
    revoked: RwLock<HashSet<String>>,
    allow_self_signed: AtomicBool,
}

/// A CA-issued certificate that passed [`Trust::check`].
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    binding: CertBinding,
    serial: String,
    not_after: i64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every refusal has its own error, and its metric label follows from the kind of
    /// refusal, not from the message's words.
    #[test]
    fn each_refusal_is_its_own_error_with_its_metric_reason() {
        let dir = std::env::temp_dir().join(format!("p2psip-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca_pem = crate::ca::ca_init(&dir, "trust.test", 30).unwrap();
        let ca_der = read_cert(&ca_pem).unwrap();
        let seed = crate::identity::generate_seed();
        let key = *p2psip_proto::security::Identity::from_seed(seed, "")
            .key
            .verifying_key()
            .as_bytes();
        let issued = crate::ca::ca_issue(&dir, "alice", &key, None, 10, 0).unwrap();
        let der = pem_to_der(issued.pem.as_bytes()).unwrap();
        let trust = Trust::enrolled("trust.test", ca_der.clone(), HashSet::new(), false).unwrap();
        let now = ASN1Time::now();
        let b = trust.check_at(&der, now).unwrap();
        assert_eq!(b.node_id, issued.node_id);
        let day = 86_400;
        let later = ASN1Time::from_timestamp(now.timestamp() + 11 * day).unwrap();
        let earlier = ASN1Time::from_timestamp(now.timestamp() - day).unwrap();
        let cases = [
            (trust.check_at(&der, later), "expired"),
            (trust.check_at(&der, earlier), "not_yet_valid"),
            (trust.check_at(b"junk", now), "invalid"),
        ];
        for (r, reason) in cases {
            assert_eq!(r.unwrap_err().reason(), reason);
        }
        assert!(matches!(
            trust.check_at(&der, later),
            Err(TrustError::Expired(_))
        ));
        let self_signed = crate::identity::tls_credentials(&seed).unwrap().0[0].to_vec();
        assert_eq!(
            trust.check_at(&self_signed, now),
            Err(TrustError::NotEnrolled)
        );
        assert_eq!(
            Trust::self_signed("trust.test").check_at(&der, now),
            Err(TrustError::CaInSelfSigned)
        );
        let other = Trust::enrolled("other.test", ca_der.clone(), HashSet::new(), false).unwrap();
        assert!(matches!(
            other.check_at(&der, now),
            Err(TrustError::OtherOverlay { .. })
        ));
        trust.revoke(std::slice::from_ref(&issued.serial));
        let e = trust.check_at(&der, now).unwrap_err();
        assert_eq!(
            (e.reason(), matches!(e, TrustError::Revoked(_))),
            ("revoked", true)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
