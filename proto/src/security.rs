//! Signatures over messages and stored data (proto/SPEC.md section 5).
//!
//! Ed25519 throughout. In self-signed mode a Node-ID is the hash of the node's public key,
//! so a signer's claimed Node-ID can be checked against the key it carries.

use crate::id::Id;
use crate::pb;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use prost::Message as _;
use thiserror::Error;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("no signature")]
    Missing,
    #[error("unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(i32),
    #[error("signer carries no usable public key")]
    NoPublicKey,
    #[error("signer Node-ID does not match the hash of its public key")]
    NodeIdMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signer certificate refused: {0}")]
    Certificate(String),
    #[error("signer Node-ID or user name is not the one its certificate binds")]
    NotBound,
    #[error("the security block is not a valid SecurityBlock")]
    Malformed,
}

/// What an overlay CA's certificate binds: a Node-ID, a user name and an Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBinding {
    pub node_id: Id,
    pub user: String,
    pub key: [u8; 32],
}

/// Checks certificates of an enrolled overlay (issuer, validity, revocation) and reads
/// what they bind. Implemented by the daemon, which holds the overlay's CA.
pub trait CertificateCheck: Send + Sync + std::fmt::Debug {
    /// The binding of a DER certificate, if the overlay accepts it now.
    fn binding(&self, der: &[u8]) -> Result<CertBinding, String>;
    /// Whether self-signed identities (Node-ID = hash of the key) are accepted as well.
    fn allows_self_signed(&self) -> bool;
}

/// The Node-ID of a self-signed identity: the first 128 bits of SHA-256(public key).
pub fn node_id_of_key(public_key: &[u8; 32]) -> Id {
    Id::hash_of(public_key)
}

/// A signing identity: key, Node-ID and user name, and in enrolled overlays the CA's
/// certificate that binds them.
#[derive(Clone)]
pub struct Identity {
    pub key: SigningKey,
    pub node_id: Id,
    pub user: String,
    pub certificate: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A self-signed identity from a 32-byte secret seed; Node-ID = hash of the public key.
    pub fn from_seed(seed: [u8; 32], user: impl Into<String>) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let node_id = node_id_of_key(key.verifying_key().as_bytes());
        Identity {
            key,
            node_id,
            user: user.into(),
            certificate: None,
        }
    }

    /// An enrolled identity: the Node-ID and user name the CA's certificate `der` binds to
    /// the key of `seed` (the caller has checked that binding).
    pub fn enrolled(seed: [u8; 32], binding: &CertBinding, der: Vec<u8>) -> Self {
        Identity {
            key: SigningKey::from_bytes(&seed),
            node_id: binding.node_id,
            user: binding.user.clone(),
            certificate: Some(der),
        }
    }

    /// The signer identity carried beside signatures.
    pub fn signer(&self) -> pb::SignerIdentity {
        pb::SignerIdentity {
            node_id: self.node_id.to_bytes().to_vec(),
            user: self.user.clone(),
            key: Some(match &self.certificate {
                Some(c) => pb::signer_identity::Key::Certificate(c.clone()),
                None => pb::signer_identity::Key::PublicKey(
                    self.key.verifying_key().as_bytes().to_vec(),
                ),
            }),
        }
    }

    /// Signs `input` and wraps the result with the signer identity.
    pub fn sign(&self, input: &[u8]) -> pb::Signature {
        pb::Signature {
            algorithm: pb::SignatureAlgorithm::Ed25519 as i32,
            signer: Some(self.signer()),
            value: self.key.sign(input).to_bytes().to_vec(),
        }
    }
}

/// What a message signature covers: overlay id, transaction id, message code and body.
pub fn message_signing_input(overlay: u32, transaction_id: u64, code: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + body.len());
    v.extend_from_slice(&overlay.to_be_bytes());
    v.extend_from_slice(&transaction_id.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The encoded security block of a message signed by `identity` (proto/SPEC.md 5): what
/// follows `sec_len` on the wire.
pub fn sign_message(
    identity: &Identity,
    overlay: u32,
    transaction_id: u64,
    code: u16,
    body: &[u8],
) -> Vec<u8> {
    let signature = identity.sign(&message_signing_input(overlay, transaction_id, code, body));
    pb::SecurityBlock {
        certificates: Vec::new(),
        signature: Some(signature),
    }
    .encode_to_vec()
}

/// Verifies the security block `security` of a message (its encoded bytes, as received)
/// with the signer bound to its key as `how` says. Returns the Node-ID of the verified
/// signer; the caller compares it with the originator (or responder) the message names.
pub fn verify_message(
    security: &[u8],
    overlay: u32,
    transaction_id: u64,
    code: u16,
    body: &[u8],
    how: Binding<'_>,
) -> Result<Id, SignatureError> {
    let mut keys = KeyCache::default();
    verify_message_memo(
        security,
        overlay,
        transaction_id,
        code,
        body,
        how,
        &mut keys,
        None,
    )
}

/// [`verify_message`] with decoded keys taken from (and added to) `keys`, that takes a
/// signature `known` holds (a batch check,
/// [`verify_batch`], verified it) without verifying it again; the signer binding is
/// checked all the same. Nothing is added to `known`: messages are each new.
#[allow(clippy::too_many_arguments)]
pub fn verify_message_memo(
    security: &[u8],
    overlay: u32,
    transaction_id: u64,
    code: u16,
    body: &[u8],
    how: Binding<'_>,
    keys: &mut KeyCache,
    known: Option<&VerifiedMemo>,
) -> Result<Id, SignatureError> {
    if security.is_empty() {
        return Err(SignatureError::Missing);
    }
    let block = pb::SecurityBlock::decode(security).map_err(|_| SignatureError::Malformed)?;
    let sig = block.signature.as_ref().ok_or(SignatureError::Missing)?;
    let input = message_signing_input(overlay, transaction_id, code, body);
    let signer = verify_bound_memo(
        sig,
        &input,
        how,
        keys,
        known.map_or(Memo::None, Memo::Lookup),
    )?;
    Id::from_slice(&signer.node_id).ok_or(SignatureError::NodeIdMismatch)
}

/// One signature to check in a batch: the signer's public key, the signature and what it
/// covers, and its key in a [`VerifiedMemo`].
pub struct Pending {
    key: [u8; 32],
    sig: [u8; 64],
    input: Vec<u8>,
    digest: [u8; 32],
}

impl Pending {
    /// Its key in a [`VerifiedMemo`].
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The Ed25519 part of checking `sig` over `input`, with the key its signer is bound
    /// to as `how` says (the same rules as a check alone); None when the signer is not
    /// bound or anything is malformed: the check of that signature alone will say why.
    pub fn of(
        sig: &pb::Signature,
        input: Vec<u8>,
        how: Binding<'_>,
        keys: &mut KeyCache,
    ) -> Option<Pending> {
        let (_, key) = bound_key(sig, how, keys).ok()?;
        let sig: [u8; 64] = sig.value.as_slice().try_into().ok()?;
        let digest = VerifiedMemo::digest(&key, &sig, &input);
        Some(Pending {
            key,
            sig,
            input,
            digest,
        })
    }

    /// The message signature of a security block (its encoded bytes, as received).
    pub fn of_message(
        security: &[u8],
        overlay: u32,
        transaction_id: u64,
        code: u16,
        body: &[u8],
        how: Binding<'_>,
        keys: &mut KeyCache,
    ) -> Option<Pending> {
        if security.is_empty() {
            return None;
        }
        let block = pb::SecurityBlock::decode(security).ok()?;
        let input = message_signing_input(overlay, transaction_id, code, body);
        Pending::of(block.signature.as_ref()?, input, how, keys)
    }
}

/// Fewest signatures worth a batch: below it, checking each alone costs no more.
pub const BATCH_MIN: usize = 3;

/// Verifies `pending` together: one Ed25519 batch equation, about 0.6 of the cost of
/// checking each alone from 8 signatures on. Returns how many Ed25519 checks were made
/// (the batch counts as one) and, for each of `pending`, whether it verified. When the
/// batch fails, each is checked alone: a bad signature among good ones costs its sender
/// a second check, not them. Fewer than [`BATCH_MIN`]: nothing is checked (0, all false),
/// the checks one by one will do it.
///
/// A batch is a random linear combination of the verification equations: a signature
/// that verifies alone verifies in a batch; one its own signer crafted with a small-order
/// component may pass a batch and fail alone (proto/SPEC.md 5.4).
pub fn verify_batch(pending: &[Pending], keys: &mut KeyCache) -> (usize, Vec<bool>) {
    let mut good = vec![false; pending.len()];
    let mut todo: Vec<(usize, VerifyingKey)> = Vec::with_capacity(pending.len());
    for (i, p) in pending.iter().enumerate() {
        if let Ok((vk, _)) = keys.get(&p.key) {
            todo.push((i, vk));
        }
    }
    if todo.len() < BATCH_MIN {
        return (0, good);
    }
    let msgs: Vec<&[u8]> = todo.iter().map(|t| pending[t.0].input.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = todo
        .iter()
        .map(|t| ed25519_dalek::Signature::from_bytes(&pending[t.0].sig))
        .collect();
    let vks: Vec<VerifyingKey> = todo.iter().map(|t| t.1).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &vks).is_ok() {
        for t in &todo {
            good[t.0] = true;
        }
        return (1, good);
    }
    for ((i, vk), sig) in todo.iter().zip(&sigs) {
        good[*i] = vk.verify(&pending[*i].input, sig).is_ok();
    }
    (1 + todo.len(), good)
}

/// What a stored-data signature covers: resource, kind, storage time and the encoded value.
pub fn stored_data_signing_input(
    resource: Id,
    kind: u32,
    storage_time: u64,
    value: &pb::StoredDataValue,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + value.encoded_len());
    v.extend_from_slice(&resource.to_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&storage_time.to_be_bytes());
    value.encode(&mut v).unwrap_or_default();
    v
}

/// How a signer's Node-ID and user name are tied to its key.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// Self-signed: the Node-ID must be the hash of the public key the signer carries.
    SelfSigned,
    /// Enrolled: the signer carries a certificate the check accepts, and its Node-ID and
    /// user name are the certificate's (self-signed signers only if the check allows them).
    Certified(&'a dyn CertificateCheck),
    /// Whatever the signer claims (tests, and tools that only read).
    Claimed,
}

/// Verifies `sig` over `input`. With `self_signed`, the signer's Node-ID must also be the
/// hash of the public key it carries. Returns the verified signer.
pub fn verify<'s>(
    sig: &'s pb::Signature,
    input: &[u8],
    self_signed: bool,
) -> Result<&'s pb::SignerIdentity, SignatureError> {
    let how = if self_signed {
        Binding::SelfSigned
    } else {
        Binding::Claimed
    };
    verify_bound(sig, input, how)
}

/// Verifies `sig` over `input` with the signer bound to its key as `how` says. Returns the
/// verified signer.
pub fn verify_bound<'s>(
    sig: &'s pb::Signature,
    input: &[u8],
    how: Binding<'_>,
) -> Result<&'s pb::SignerIdentity, SignatureError> {
    verify_bound_with(sig, input, how, &mut KeyCache::default())
}

/// Public keys already decoded (an Ed25519 point decompression each) with the Node-ID
/// their hash gives, by their 32 bytes; at most [`KeyCache::CAP`], emptied when full. A
/// receiver keeps one so that a signer's key is decoded once, not with every message.
#[derive(Default)]
pub struct KeyCache {
    keys: std::collections::HashMap<[u8; 32], (VerifyingKey, Id)>,
}

impl KeyCache {
    /// Keys kept at most.
    pub const CAP: usize = 4096;

    fn get(&mut self, pk: &[u8; 32]) -> Result<(VerifyingKey, Id), SignatureError> {
        if let Some(k) = self.keys.get(pk) {
            return Ok(*k);
        }
        let vk = VerifyingKey::from_bytes(pk).map_err(|_| SignatureError::NoPublicKey)?;
        if self.keys.len() >= Self::CAP {
            self.keys.clear();
        }
        let entry = (vk, node_id_of_key(pk));
        self.keys.insert(*pk, entry);
        Ok(entry)
    }
}

/// Signatures already verified, by SHA-256 of (public key, signature, signed input): a value
/// fetched or copied again is not verified again (its signer's certificate still is, on
/// every use). At most [`VerifiedMemo::CAP`], emptied when full. For stored values, which
/// come back unchanged; messages are each new.
#[derive(Default)]
pub struct VerifiedMemo {
    seen: std::collections::HashSet<[u8; 32]>,
}

impl VerifiedMemo {
    /// Signatures remembered at most.
    pub const CAP: usize = 16_384;

    /// Whether the signature of this digest ([`Pending::digest`]) is known to verify.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.seen.contains(digest)
    }

    /// Remembers a signature known to verify (by a batch, [`verify_batch`]).
    pub fn insert(&mut self, digest: [u8; 32]) {
        if self.seen.len() >= Self::CAP {
            self.seen.clear();
        }
        self.seen.insert(digest);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    fn digest(pk: &[u8; 32], sig: &[u8; 64], input: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(pk);
        h.update(sig);
        h.update(input);
        h.finalize().into()
    }
}

/// [`verify_bound`] with decoded keys taken from (and added to) `keys`.
pub fn verify_bound_with<'s>(
    sig: &'s pb::Signature,
    input: &[u8],
    how: Binding<'_>,
    keys: &mut KeyCache,
) -> Result<&'s pb::SignerIdentity, SignatureError> {
    verify_bound_memo(sig, input, how, keys, Memo::None)
}

/// [`verify_bound_with`] that skips the Ed25519 verification of a signature `memo` has
/// seen verify (the signer binding is checked all the same), and remembers new ones.
pub fn verify_bound_memo<'s>(
    sig: &'s pb::Signature,
    input: &[u8],
    how: Binding<'_>,
    keys: &mut KeyCache,
    memo: Memo<'_>,
) -> Result<&'s pb::SignerIdentity, SignatureError> {
    let (signer, pk) = bound_key(sig, how, keys)?;
    let vk = keys.get(&pk)?.0;
    let s: [u8; 64] = sig
        .value
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::BadSignature)?;
    let known = match &memo {
        Memo::None => None,
        Memo::Lookup(m) => Some(&**m),
        Memo::Remember(m) => Some(&**m),
    };
    let digest = known.map(|_| VerifiedMemo::digest(&pk, &s, input));
    if let (Some(m), Some(d)) = (known, &digest) {
        if m.seen.contains(d) {
            return Ok(signer);
        }
    }
    vk.verify(input, &ed25519_dalek::Signature::from_bytes(&s))
        .map_err(|_| SignatureError::BadSignature)?;
    if let (Memo::Remember(m), Some(d)) = (memo, digest) {
        m.insert(d);
    }
    Ok(signer)
}

/// How a check uses a [`VerifiedMemo`].
pub enum Memo<'m> {
    None,
    /// Takes what it holds; remembers nothing (messages, each new; stores, whose values
    /// come once: a batch check put what it verified there).
    Lookup(&'m VerifiedMemo),
    /// Takes what it holds and remembers what verifies (a fetcher's: the same values come
    /// back fetch after fetch).
    Remember(&'m mut VerifiedMemo),
}

impl Memo<'_> {
    /// The same memo, for one more check.
    pub fn reborrow(&mut self) -> Memo<'_> {
        match self {
            Memo::None => Memo::None,
            Memo::Lookup(m) => Memo::Lookup(m),
            Memo::Remember(m) => Memo::Remember(m),
        }
    }
}

/// The signer of `sig` and the public key it is bound to as `how` says: the key it
/// carries (self-signed: its Node-ID must be the key's hash) or the one its certificate
/// binds (its Node-ID and user name must be the certificate's). The one place these rules
/// are applied, for a check alone and for a batch ([`Pending::of`]).
fn bound_key<'s>(
    sig: &'s pb::Signature,
    how: Binding<'_>,
    keys: &mut KeyCache,
) -> Result<(&'s pb::SignerIdentity, [u8; 32]), SignatureError> {
    if sig.algorithm != pb::SignatureAlgorithm::Ed25519 as i32 {
        return Err(SignatureError::UnsupportedAlgorithm(sig.algorithm));
    }
    let signer = sig.signer.as_ref().ok_or(SignatureError::Missing)?;
    let pk: [u8; 32] = match (&signer.key, how) {
        (Some(pb::signer_identity::Key::Certificate(der)), Binding::Certified(check)) => {
            let b = check.binding(der).map_err(SignatureError::Certificate)?;
            if Id::from_slice(&signer.node_id) != Some(b.node_id) || signer.user != b.user {
                return Err(SignatureError::NotBound);
            }
            b.key
        }
        (Some(pb::signer_identity::Key::PublicKey(k)), how) => {
            let pk: [u8; 32] = k
                .as_slice()
                .try_into()
                .map_err(|_| SignatureError::NoPublicKey)?;
            let self_signed = match how {
                Binding::SelfSigned => true,
                Binding::Certified(check) if check.allows_self_signed() => true,
                Binding::Certified(_) => {
                    return Err(SignatureError::Certificate(
                        "this overlay accepts enrolled signers only".into(),
                    ))
                }
                Binding::Claimed => false,
            };
            if self_signed && Id::from_slice(&signer.node_id) != Some(keys.get(&pk)?.1) {
                return Err(SignatureError::NodeIdMismatch);
            }
            pk
        }
        _ => return Err(SignatureError::NoPublicKey),
    };
    Ok((signer, pk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_signature_is_taken_only_for_the_same_input() {
        let id = Identity::from_seed([7; 32], "alice");
        let input = b"resource|kind|time|value".to_vec();
        let sig = id.sign(&input);
        let (mut keys, mut memo) = (KeyCache::default(), VerifiedMemo::default());
        for _ in 0..2 {
            verify_bound_memo(
                &sig,
                &input,
                Binding::SelfSigned,
                &mut keys,
                Memo::Remember(&mut memo),
            )
            .unwrap();
        }
        assert_eq!(memo.seen.len(), 1);
        let mut other = input.clone();
        other[0] ^= 1;
        assert!(
            verify_bound_memo(
                &sig,
                &other,
                Binding::SelfSigned,
                &mut keys,
                Memo::Remember(&mut memo)
            )
            .is_err(),
            "a remembered signature vouched for another input"
        );
        let mut forged = sig.clone();
        forged.value[0] ^= 1;
        assert!(verify_bound_memo(
            &forged,
            &input,
            Binding::SelfSigned,
            &mut keys,
            Memo::Remember(&mut memo)
        )
        .is_err());
        // The signer binding is checked even for a remembered signature.
        let mut renamed = sig.clone();
        if let Some(s) = renamed.signer.as_mut() {
            s.node_id = vec![0; 16];
        }
        assert!(verify_bound_memo(
            &renamed,
            &input,
            Binding::SelfSigned,
            &mut keys,
            Memo::Remember(&mut memo)
        )
        .is_err());
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let id = Identity::from_seed([7; 32], "alice");
        let input = message_signing_input(1, 2, 7, b"body");
        let sig = id.sign(&input);
        let signer = verify(&sig, &input, true).expect("verifies");
        assert_eq!(signer.user, "alice");
        let tampered = message_signing_input(1, 2, 7, b"bodY");
        assert_eq!(
            verify(&sig, &tampered, true),
            Err(SignatureError::BadSignature)
        );
        let mut forged = sig.clone();
        if let Some(s) = forged.signer.as_mut() {
            s.node_id = vec![0; 16];
        }
        assert_eq!(
            verify(&forged, &input, true),
            Err(SignatureError::NodeIdMismatch)
        );
        // Without the self-signed rule the Node-ID is not tied to the key.
        assert!(verify(&forged, &input, false).is_ok());
    }

    #[test]
    fn message_blocks_verify_and_name_their_signer() {
        let id = Identity::from_seed([9; 32], "");
        let block = sign_message(&id, 1, 2, 23, b"ping");
        assert_eq!(
            verify_message(&block, 1, 2, 23, b"ping", Binding::SelfSigned),
            Ok(id.node_id)
        );
        // Any covered field changed: refused.
        for (o, t, c, b) in [
            (2, 2, 23, &b"ping"[..]),
            (1, 3, 23, b"ping"),
            (1, 2, 24, b"ping"),
            (1, 2, 23, b"pinG"),
        ] {
            assert_eq!(
                verify_message(&block, o, t, c, b, Binding::SelfSigned),
                Err(SignatureError::BadSignature)
            );
        }
        assert_eq!(
            verify_message(&[], 1, 2, 23, b"ping", Binding::SelfSigned),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_message(&[0xff, 0xff], 1, 2, 23, b"ping", Binding::SelfSigned),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_batch_remembers_only_the_signatures_that_verify() {
        let signers: Vec<Identity> = (0..6u8)
            .map(|i| Identity::from_seed([i + 1; 32], format!("u{i}")))
            .collect();
        let blocks: Vec<Vec<u8>> = signers
            .iter()
            .enumerate()
            .map(|(i, id)| sign_message(id, 1, i as u64, 23, b"ping"))
            .collect();
        let pending = |blocks: &[Vec<u8>]| -> Vec<Pending> {
            blocks
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let keys = &mut KeyCache::default();
                    Pending::of_message(b, 1, i as u64, 23, b"ping", Binding::SelfSigned, keys)
                })
                .collect()
        };
        let check = |memo: &mut VerifiedMemo, keys: &mut KeyCache, i: usize, b: &[u8]| {
            verify_message_memo(
                b,
                1,
                i as u64,
                23,
                b"ping",
                Binding::SelfSigned,
                keys,
                Some(memo),
            )
        };
        let batch = |keys: &mut KeyCache, memo: &mut VerifiedMemo, p: Vec<Pending>| {
            let (checks, good) = verify_batch(&p, keys);
            for (p, g) in p.iter().zip(good) {
                if g {
                    memo.insert(p.digest());
                }
            }
            checks
        };
        // All good: one batch check, and each is then taken from the memo.
        let (mut keys, mut memo) = (KeyCache::default(), VerifiedMemo::default());
        assert_eq!(batch(&mut keys, &mut memo, pending(&blocks)), 1);
        assert_eq!(memo.seen.len(), 6);
        for (i, b) in blocks.iter().enumerate() {
            assert!(check(&mut memo, &mut keys, i, b).is_ok());
        }
        // One tampered signature among them: the batch fails, each is checked alone, the
        // five good ones are remembered and the bad one is refused when checked itself.
        let mut bad = blocks.clone();
        let mut block = pb::SecurityBlock::decode(bad[2].as_slice()).unwrap();
        block.signature.as_mut().unwrap().value[5] ^= 1;
        bad[2] = block.encode_to_vec();
        let (mut keys, mut memo) = (KeyCache::default(), VerifiedMemo::default());
        assert_eq!(batch(&mut keys, &mut memo, pending(&bad)), 7);
        assert_eq!(memo.seen.len(), 5);
        for (i, b) in bad.iter().enumerate() {
            let r = check(&mut memo, &mut keys, i, b);
            assert_eq!(r.is_ok(), i != 2, "message {i}: {r:?}");
        }
        // A remembered signature is not taken for another message (another transaction).
        assert_eq!(
            check(&mut memo, &mut keys, 9, &bad[0]),
            Err(SignatureError::BadSignature)
        );
        // Too few for a batch: left to the checks one by one.
        let (mut keys, mut memo) = (KeyCache::default(), VerifiedMemo::default());
        assert_eq!(batch(&mut keys, &mut memo, pending(&blocks[..2])), 0);
        assert!(memo.seen.is_empty());
    }
}
