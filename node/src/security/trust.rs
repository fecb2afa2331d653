//! The trust rules every node applies (proto/SPEC.md section 5.2) to the certificates of
//! its peers and of value signers: self-signed identities, whose Node-ID is the hash of
//! their key, or certificates of the overlay CA naming their Node-ID in a subjectAltName
//! URI `p2psip://<32 hex digits>@<overlay>`; revocation; and the certificate parsing both
//! this and the CA tool (the `ca` module) use.

use anyhow::{anyhow, bail, Context};
use p2psip_algorithms::NodeId;
use p2psip_proto::security::{node_id_of_key, CertBinding, CertificateCheck};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use x509_parser::prelude::*;

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

pub(crate) fn normalize_serial(s: &str) -> anyhow::Result<String> {
    let t = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_lowercase();
    if t.is_empty() || hex::decode(&t).is_err() {
        bail!("{s:?} is not a serial number (hex digits)");
    }
    Ok(t)
}

/// Reads a revocation list: one hex serial number per line, `#` comments; a missing file is
/// an empty list.
pub fn read_revoked(path: &Path) -> anyhow::Result<HashSet<String>> {
    if !path.exists() {
        return Ok(HashSet::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(normalize_serial)
        .collect()
}

/// The overlay a CA certificate was made for (from its common name).
pub(crate) fn overlay_of_ca(ca_pem: &str) -> anyhow::Result<String> {
    let der = pem_to_der(ca_pem.as_bytes())?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| anyhow!("CA certificate: {e}"))?;
    let cn = common_name(&x).ok_or_else(|| anyhow!("CA certificate has no common name"))?;
    cn.strip_prefix("p2psip CA ")
        .map(str::to_string)
        .ok_or_else(|| anyhow!("not a p2psip CA certificate (common name {cn:?})"))
}

/// The DER of the first certificate of a PEM file.
pub fn pem_to_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| anyhow!("not PEM: {e}"))?;
    if p.label != "CERTIFICATE" {
        bail!("PEM block is a {}, not a CERTIFICATE", p.label);
    }
    Ok(p.contents)
}

/// Reads a PEM certificate file.
pub fn read_cert(path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    pem_to_der(&pem).with_context(|| format!("{}", path.display()))
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
    ) -> anyhow::Result<Trust> {
        let (_, x) =
            X509Certificate::from_der(&ca_der).map_err(|e| anyhow!("CA certificate: {e}"))?;
        if !x.is_ca() {
            bail!("the CA certificate is not a CA certificate");
        }
        let key = ed25519_key(&x).map_err(|e| anyhow!("CA certificate: {e}"))?;
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

    /// Checks a certificate and returns what it binds, or why it is refused.
    pub fn check(&self, der: &[u8]) -> Result<CertBinding, String> {
        let (_, x) = X509Certificate::from_der(der).map_err(|_| "certificate does not parse")?;
        let key = ed25519_key(&x)?;
        let Some((node_id, overlay)) = node_id_uri(&x)? else {
            return match &self.ca {
                Some(ca) if !ca.allow_self_signed.load(Ordering::Relaxed) => {
                    Err("not enrolled: this overlay accepts only certificates of its CA".into())
                }
                _ => Ok(CertBinding {
                    node_id: node_id_of_key(&key),
                    user: String::new(),
                    key,
                }),
            };
        };
        let Some(ca) = &self.ca else {
            return Err("certificate of an overlay CA, but this overlay is self-signed".into());
        };
        let (_, cax) = X509Certificate::from_der(&ca.der).map_err(|_| "CA does not parse")?;
        if x.issuer().as_raw() != cax.subject().as_raw() {
            return Err(format!(
                "issued by {}, not by this overlay's CA",
                x.issuer()
            ));
        }
        x.verify_signature(Some(cax.public_key()))
            .map_err(|_| "not signed by this overlay's CA".to_string())?;
        let now = ASN1Time::now();
        let v = x.validity();
        if now > v.not_after {
            return Err(format!("certificate expired on {}", v.not_after));
        }
        if now < v.not_before {
            return Err(format!("certificate not valid before {}", v.not_before));
        }
        let serial = canonical_serial(&hex::encode(x.raw_serial()));
        if ca
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&serial)
        {
            return Err(format!("certificate {serial} is revoked"));
        }
        if overlay != self.overlay {
            return Err(format!(
                "certificate is for overlay {overlay:?}, not {:?}",
                self.overlay
            ));
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
    fn check_remembered(&self, der: &[u8]) -> Result<CertBinding, String> {
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
            if ASN1Time::now().timestamp() > v.not_after {
                return Err("certificate expired".into());
            }
            if ca
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&v.serial)
            {
                return Err(format!("certificate {} is revoked", v.serial));
            }
            return Ok(v.binding);
        }
        let binding = self.check(der)?;
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
        self.check_remembered(der)
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
