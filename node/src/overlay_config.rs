//! The signed overlay configuration document (proto/SPEC.md 5.3): what every peer of an
//! enrolled overlay must agree on (algorithm, limits, bootstrap peers, the CA, revoked
//! certificates), signed by the overlay CA, numbered by `sequence`, and spread peer to peer
//! with ConfigUpdate. A peer applies a document only when the CA's signature verifies and
//! its sequence number is higher than the one it holds.
//!
//! The signed form is the TOML document followed by one line
//! `# p2psip-signature ed25519 <128 hex digits>`: the Ed25519 signature of the CA key over
//! every byte before that line. It stays readable (and diffable) as a text file.

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Deserialize;
use std::path::Path;

const MARK: &str = "# p2psip-signature ed25519 ";

/// Why a document was not taken, or a node cannot start with one.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("overlay configuration document: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("overlay configuration document: `overlay` must not be empty")]
    NoOverlay,
    #[error("overlay configuration document: `sequence` starts at 1")]
    ZeroSequence,
    #[error("kind {id}: model {model:?} (single, array or dictionary)")]
    Model { id: u32, model: String },
    #[error("kind {id}: policy {policy:?} (user-match, node-match, user-node-match, node-multiple, node-id-match)")]
    Policy { id: u32, policy: String },
    #[error("operators: {0}")]
    Operator(String),
    #[error("document is not UTF-8")]
    NotUtf8,
    #[error("document is not signed (no `{}` line: `p2psip ca sign-config` signs it)", MARK.trim())]
    Unsigned,
    #[error("malformed signature line")]
    SignatureLine,
    #[error("bad CA key")]
    CaKey,
    #[error("signature does not verify with the overlay CA's key")]
    BadSignature,
    #[error("the CA key: {0}")]
    CaSeed(#[from] crate::identity::IdentityError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("security.overlay_config needs security.ca: the CA signs the document")]
    NoCa,
    /// A document from `from` that is bad or another overlay's, algorithm's or CA's.
    #[error("{from}: {why}")]
    Refused { from: String, why: String },
    #[error("keeping the overlay configuration in the database: {0}")]
    Persist(#[from] p2psip_algorithms::storage::StorageError),
}

/// The document's fields. Only `overlay` and `sequence` are required; a field left out
/// leaves the node's own setting as it is.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct OverlayDoc {
    /// The overlay it configures; a node of another overlay refuses it.
    pub overlay: String,
    /// Higher numbers replace lower ones; a document is never replaced by an older one.
    pub sequence: u32,
    /// The overlay's algorithm: a node running another one refuses the document (and will
    /// not start with it).
    pub algorithm: Option<String>,
    /// Peers a starting node joins through when it names none itself.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// The CA certificate (PEM) the document is signed by; must be the node's CA.
    pub ca: Option<String>,
    /// Serial numbers (hex) of revoked certificates, added to the node's list.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Whether self-signed identities are admitted besides the CA's.
    pub allow_self_signed: Option<bool>,
    /// Abuse limits (the `[limits]` fields of the node's configuration).
    pub limits: Option<DocLimits>,
    /// Kinds the overlay defines or redefines (`[[kinds]]`); kinds not listed keep their
    /// built-in definition.
    #[serde(default)]
    pub kinds: Vec<DocKind>,
    /// Node-IDs (32 hex digits) that may ask every peer for the operators' diagnostic
    /// kinds (proto/SPEC.md 4.1). Left out: nobody but each node itself.
    pub operators: Option<Vec<String>>,
}

impl OverlayDoc {
    /// The Node-IDs of `operators` (an id that is not one makes the document invalid).
    pub fn operator_ids(&self) -> Result<Vec<p2psip_algorithms::NodeId>, DocError> {
        self.operators
            .iter()
            .flatten()
            .map(|s| crate::ops::parse_node_id(s).map_err(|e| DocError::Operator(e.to_string())))
            .collect()
    }
}

/// A kind and its policy as a document defines it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocKind {
    pub id: u32,
    pub name: String,
    /// "single", "array" or "dictionary".
    pub model: String,
    /// "user-match", "node-match", "user-node-match" or "node-multiple".
    pub policy: String,
    /// Most values per resource.
    pub max_count: u32,
    /// Largest value, bytes.
    pub max_size: u32,
    /// For node-multiple: how many resources one node may write.
    #[serde(default)]
    pub max_node_multiple: u32,
}

impl DocKind {
    /// The kind the core enforces.
    pub fn to_kind(&self) -> Result<p2psip_algorithms::storage::Kind, DocError> {
        use p2psip_proto::pb::{AccessPolicy, DataModel};
        let model = match self.model.as_str() {
            "single" => DataModel::Single,
            "array" => DataModel::Array,
            "dictionary" => DataModel::Dictionary,
            m => {
                return Err(DocError::Model {
                    id: self.id,
                    model: m.into(),
                })
            }
        };
        let policy = match self.policy.as_str() {
            "user-match" => AccessPolicy::UserMatch,
            "node-match" => AccessPolicy::NodeMatch,
            "user-node-match" => AccessPolicy::UserNodeMatch,
            "node-multiple" => AccessPolicy::NodeMultiple,
            "node-id-match" => AccessPolicy::NodeIdMatch,
            p => {
                return Err(DocError::Policy {
                    id: self.id,
                    policy: p.into(),
                })
            }
        };
        Ok(p2psip_algorithms::storage::Kind {
            id: self.id,
            name: self.name.clone(),
            model,
            policy,
            max_count: self.max_count,
            max_size: self.max_size,
            max_node_multiple: self.max_node_multiple,
        })
    }
}

/// The limits a document may set.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DocLimits {
    pub origin_requests_per_s: Option<u32>,
    pub origin_burst: Option<u32>,
    pub origin_max_in_flight: Option<usize>,
    pub writer_kind_bytes: Option<u64>,
}

/// Parses an unsigned document and checks its required fields.
pub fn parse(text: &str) -> Result<OverlayDoc, DocError> {
    let doc: OverlayDoc = toml::from_str(text)?;
    if doc.overlay.is_empty() {
        return Err(DocError::NoOverlay);
    }
    if doc.sequence == 0 {
        return Err(DocError::ZeroSequence);
    }
    for k in &doc.kinds {
        k.to_kind()?;
    }
    doc.operator_ids()?;
    Ok(doc)
}

/// Signs the document `text` with the CA key of `ca_dir`; returns the signed form.
pub fn sign(ca_dir: &Path, text: &str) -> Result<String, DocError> {
    parse(text)?;
    let files = crate::ca::CaFiles::new(ca_dir);
    let key = SigningKey::from_bytes(&crate::identity::read_seed(&files.key)?);
    let mut body = text.trim_end().to_string();
    body.push('\n');
    let sig = key.sign(body.as_bytes());
    Ok(format!("{body}{MARK}{}\n", hex::encode(sig.to_bytes())))
}

/// Checks the signed form `signed` against the CA key `ca_key`; returns the document.
pub fn verify(signed: &[u8], ca_key: &[u8; 32]) -> Result<OverlayDoc, DocError> {
    let (body, line) = split_signed(signed)?;
    let sig: [u8; 64] = hex::decode(line[MARK.len()..].trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(DocError::SignatureLine)?;
    let vk = VerifyingKey::from_bytes(ca_key).map_err(|_| DocError::CaKey)?;
    vk.verify(body.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| DocError::BadSignature)?;
    parse(body)
}

/// A signed document as (the TOML, its signature line).
fn split_signed(signed: &[u8]) -> Result<(&str, &str), DocError> {
    let text = std::str::from_utf8(signed).map_err(|_| DocError::NotUtf8)?;
    let at = text.rfind(MARK).ok_or(DocError::Unsigned)?;
    Ok(text.split_at(at))
}

/// The sequence number of a signed document, read without checking the signature (the
/// peers check it).
pub fn sequence_of(signed: &[u8]) -> Result<u32, DocError> {
    Ok(parse(split_signed(signed)?.0)?.sequence)
}

/// The ConfigUpdate request that carries a signed document.
pub fn update_req(sequence: u32, signed: Vec<u8>) -> p2psip_proto::pb::ConfigUpdateReq {
    use p2psip_proto::pb::{config_update_req::Type, ConfigUpdateReq};
    ConfigUpdateReq {
        r#type: Type::Config as i32,
        sequence,
        config_data: signed,
        kinds: Vec::new(),
    }
}

/// A signed document file as (where it came from, its bytes), checked later.
fn read_document(path: &Path) -> Result<(String, Vec<u8>), DocError> {
    let bytes = std::fs::read(path).map_err(|source| DocError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok((path.display().to_string(), bytes))
}

/// Why a node cannot take `doc` at all (another overlay, algorithm or CA).
pub fn incompatible(
    doc: &OverlayDoc,
    overlay: &str,
    algorithm: &str,
    ca_der: &[u8],
) -> Option<String> {
    if doc.overlay != overlay {
        return Some(format!(
            "document for overlay {:?}, this is {overlay:?}",
            doc.overlay
        ));
    }
    if let Some(a) = doc.algorithm.as_deref().filter(|a| *a != algorithm) {
        return Some(format!(
            "document sets algorithm {a:?}, this node runs {algorithm:?}"
        ));
    }
    if let Some(pem) = &doc.ca {
        match crate::security::trust::pem_to_der(pem.as_bytes()) {
            Ok(d) if d == ca_der => {}
            Ok(_) => return Some("document names another CA than this node's".into()),
            Err(e) => return Some(format!("document's CA: {e}")),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_documents_verify_and_tampered_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("p2psip-doc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::ca::ca_init(&dir, "doc.test", 30).unwrap();
        let text = "overlay = \"doc.test\"\nsequence = 2\nrevoked = [\"0a0b\"]\n\
                    [limits]\nwriter_kind_bytes = 4096\n\
                    [[kinds]]\nid = 40\nname = \"PRESENCE\"\nmodel = \"dictionary\"\n\
                    policy = \"user-node-match\"\nmax_count = 8\nmax_size = 512\n";
        let signed = sign(&dir, text).unwrap();
        let seed = crate::identity::read_seed(&dir.join("ca.key")).unwrap();
        let key = *SigningKey::from_bytes(&seed).verifying_key().as_bytes();
        let doc = verify(signed.as_bytes(), &key).unwrap();
        assert_eq!(doc.sequence, 2);
        assert_eq!(doc.revoked, vec!["0a0b".to_string()]);
        assert_eq!(doc.limits.unwrap().writer_kind_bytes, Some(4096));
        let k = doc.kinds[0].to_kind().unwrap();
        assert_eq!((k.id, k.max_size, k.max_count), (40, 512, 8));
        let bad = text.replace("dictionary", "tree");
        assert!(sign(&dir, &bad).is_err(), "an unknown data model");
        let tampered = signed.replace("sequence = 2", "sequence = 9");
        assert!(verify(tampered.as_bytes(), &key).is_err());
        assert!(verify(text.as_bytes(), &key).is_err(), "unsigned");
        assert!(verify(signed.as_bytes(), &[7; 32]).is_err(), "another key");
        assert!(sign(&dir, "overlay = \"x\"\nsequence = 0\n").is_err());
        assert!(sign(&dir, "overlay = \"x\"\nsequence = 1\ntypo = 1\n").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn operators_are_node_ids() {
        let doc = parse(
            "overlay = \"x\"\nsequence = 1\noperators = [\"000102030405060708090a0b0c0d0e0f\"]\n",
        )
        .unwrap();
        assert_eq!(doc.operator_ids().unwrap().len(), 1);
        assert!(parse("overlay = \"x\"\nsequence = 1\noperators = [\"nope\"]\n").is_err());
        assert_eq!(
            parse("overlay = \"x\"\nsequence = 1\n").unwrap().operators,
            None
        );
    }
}

/// What became of a document offered by a peer.
#[derive(Debug)]
pub enum Offer {
    /// Newer than ours, verified and taken: apply its limits, pass it on.
    Taken(OverlayDoc),
    /// Not newer than ours: nothing to do.
    Old,
    /// Refused (bad signature, another overlay, ...): counted and logged.
    Refused(String),
}

/// The largest overlay configuration document a node reads from a peer (a real one is a
/// few kilobytes; a megabyte of TOML would cost the runtime task its parse).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The key of the taken document in the database's `meta` table.
const META_KEY: &str = "overlay-config";

/// The document a node holds and the rules to replace it.
pub struct DocState {
    trust: std::sync::Arc<crate::security::trust::Trust>,
    overlay: String,
    algorithm: String,
    /// The signed form of the current document and its sequence number.
    pub current: Option<(u32, Vec<u8>)>,
    /// Where a taken document is kept (the database's `meta` table, so a restart does
    /// not fall back to an older one).
    persist: Option<crate::storage::DashStore>,
    /// The kinds of the document taken at start (the core is built with them).
    pub kinds: Vec<p2psip_algorithms::storage::Kind>,
    /// The operators of the document taken at start, if it names them.
    pub operators: Option<Vec<p2psip_algorithms::NodeId>>,
}

impl DocState {
    /// Loads the document of `cfg.security.overlay_config` and the one kept in the data
    /// directory, takes the newer, and applies it to `cfg` (bootstrap peers when `cfg` has
    /// none, limits) and to the trust rules. Fails when a document is bad or incompatible:
    /// a node must not start against its overlay's configuration.
    pub fn startup(
        cfg: &mut crate::config::Config,
        trust: std::sync::Arc<crate::security::trust::Trust>,
        store: &crate::storage::DashStore,
    ) -> Result<DocState, DocError> {
        let persist = cfg.data_dir.as_ref().map(|_| store.clone());
        let mut st = DocState {
            trust: trust.clone(),
            overlay: cfg.overlay.clone(),
            algorithm: cfg.algorithm.clone(),
            current: None,
            persist,
            kinds: Vec::new(),
            operators: None,
        };
        // (where it came from, its signed bytes)
        let mut candidates: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(p) = &cfg.security.overlay_config {
            candidates.push(read_document(p)?);
        }
        if let Some(b) = store.meta(META_KEY) {
            candidates.push((
                format!("the document kept in {}", crate::storage::DB_FILE),
                b,
            ));
        }
        // Data directories of earlier versions kept it in a file of its own.
        if let Some(p) = cfg
            .data_dir
            .as_ref()
            .map(|d| d.join("overlay-config.signed"))
            .filter(|p| p.exists())
        {
            candidates.push(read_document(&p)?);
        }
        if candidates.is_empty() {
            return Ok(st);
        }
        let Some(key) = trust.ca_key() else {
            return Err(DocError::NoCa);
        };
        let mut best: Option<(OverlayDoc, Vec<u8>)> = None;
        for (from, bytes) in candidates {
            let doc = verify(&bytes, &key).map_err(|e| DocError::Refused {
                from: from.clone(),
                why: e.to_string(),
            })?;
            if let Some(why) = incompatible(&doc, &cfg.overlay, &cfg.algorithm, trust.ca_der()) {
                return Err(DocError::Refused { from, why });
            }
            if best.as_ref().is_none_or(|(b, _)| doc.sequence > b.sequence) {
                best = Some((doc, bytes));
            }
        }
        if let Some((doc, bytes)) = best {
            if cfg.bootstrap.is_empty() {
                cfg.bootstrap = doc.bootstrap.clone();
            }
            if let Some(l) = &doc.limits {
                apply_limits(&mut cfg.limits, l);
            }
            st.operators = doc
                .operators
                .is_some()
                .then(|| doc.operator_ids())
                .transpose()?;
            st.apply_trust(&doc);
            st.kinds = doc.kinds.iter().filter_map(|k| k.to_kind().ok()).collect();
            tracing::info!(sequence = doc.sequence, "overlay configuration document");
            if let Some(store) = &st.persist {
                if store.meta(META_KEY).as_deref() != Some(bytes.as_slice()) {
                    store.set_meta(META_KEY, &bytes)?;
                }
            }
            st.current = Some((doc.sequence, bytes));
        }
        Ok(st)
    }

    fn apply_trust(&self, doc: &OverlayDoc) {
        self.trust.revoke(&doc.revoked);
        if let Some(a) = doc.allow_self_signed {
            self.trust.set_allow_self_signed(a);
        }
    }

    /// The sequence number of the current document (0: none).
    pub fn sequence(&self) -> u32 {
        self.current.as_ref().map_or(0, |c| c.0)
    }

    /// A document a peer sent with ConfigUpdate.
    pub fn offer(&mut self, sequence: u32, signed: &[u8]) -> Offer {
        if sequence <= self.sequence() {
            return Offer::Old;
        }
        if signed.len() > MAX_DOCUMENT_BYTES {
            return Offer::Refused(format!(
                "a document of {} bytes; at most {MAX_DOCUMENT_BYTES} are read",
                signed.len()
            ));
        }
        let Some(key) = self.trust.ca_key() else {
            return Offer::Refused("this overlay is self-signed: no CA to check it".into());
        };
        let doc = match verify(signed, &key) {
            Ok(d) => d,
            Err(e) => return Offer::Refused(e.to_string()),
        };
        if doc.sequence != sequence {
            return Offer::Refused(format!(
                "ConfigUpdate says sequence {sequence}, the document {}",
                doc.sequence
            ));
        }
        if let Some(why) = incompatible(&doc, &self.overlay, &self.algorithm, self.trust.ca_der()) {
            return Offer::Refused(why);
        }
        self.apply_trust(&doc);
        if let Some(store) = &self.persist {
            if let Err(e) = store.set_meta(META_KEY, signed) {
                tracing::warn!("could not keep the overlay configuration in the database: {e}");
            }
        }
        self.current = Some((sequence, signed.to_vec()));
        Offer::Taken(doc)
    }
}

/// Overrides the limits a document sets.
pub fn apply_limits(limits: &mut crate::config::Limits, l: &DocLimits) {
    if let Some(v) = l.origin_requests_per_s {
        limits.origin_requests_per_s = v;
    }
    if let Some(v) = l.origin_burst {
        limits.origin_burst = v;
    }
    if let Some(v) = l.origin_max_in_flight {
        limits.origin_max_in_flight = v;
    }
    if let Some(v) = l.writer_kind_bytes {
        limits.writer_kind_bytes = v;
    }
}
