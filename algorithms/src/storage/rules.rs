//! The storage rules: how a Store changes a kind's data, and what Fetch, Stat and Find
//! return (proto/SPEC.md section 6).

use super::{check_policy, value_len, Kind, KindData, SlotKey};
use crate::id::{distance, Id};
use p2psip_proto::pb::{self, stored_data_value::Model, DataModel, ErrorCode};
use p2psip_proto::security::{
    stored_data_signing_input, verify_bound_memo, Binding, CertificateCheck, KeyCache, Memo,
    VerifiedMemo,
};
use sha2::{Digest, Sha256};

/// How a store is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// A writer's store at the responsible peer: generation counters are compare-and-swap
    /// and a value older than the stored one is refused (Data_Too_Old).
    Primary,
    /// A replica copy or a handover between peers: values are merged (the newer one wins,
    /// older ones are skipped) and the generation counter becomes the larger of the two.
    Merge,
}

/// How signatures on values are checked.
#[derive(Debug, Clone)]
pub enum VerifyMode {
    /// Verify each value's signature; in self-signed overlays the signer's Node-ID must be
    /// the hash of its key.
    SelfSigned,
    /// Verify each value's signature; the signer carries a certificate of the overlay's CA
    /// that binds its Node-ID and user name to the key (enrolled overlays).
    Certificates(std::sync::Arc<dyn CertificateCheck>),
    /// Trust the signer identity without verifying (simulations that model CPU elsewhere).
    Skip,
}

impl VerifyMode {
    /// How a signer is tied to its key under this mode (messages and values alike);
    /// `Skip` trusts the claimed signer.
    pub fn binding(&self) -> Binding<'_> {
        match self {
            VerifyMode::SelfSigned => Binding::SelfSigned,
            VerifyMode::Certificates(c) => Binding::Certified(c.as_ref()),
            VerifyMode::Skip => Binding::Claimed,
        }
    }
}

/// Whether a value's lifetime has run out at `now_ms`.
pub fn is_expired(d: &pb::StoredData, now_ms: u64) -> bool {
    d.storage_time
        .saturating_add(u64::from(d.lifetime).saturating_mul(1000))
        <= now_ms
}

/// Whether `data` holds `sd` byte for byte, in the slot it names: a copy of it changes
/// nothing, and its signature was checked when it was stored.
pub fn holds_as_is(data: &KindData, kind: &Kind, sd: &pb::StoredData) -> bool {
    sd.value
        .as_ref()
        .and_then(|v| slot_of(kind, v).ok())
        .is_some_and(|slot| data.values.get(&slot) == Some(sd))
}

fn slot_of(kind: &Kind, v: &pb::StoredDataValue) -> Result<SlotKey, (ErrorCode, String)> {
    let bad = |what: &str| {
        Err((
            ErrorCode::InvalidMessage,
            format!("kind {} stores {what} values", kind.name),
        ))
    };
    match (&v.model, kind.model) {
        (Some(Model::Single(_)), DataModel::Single) => Ok(SlotKey::Single),
        (Some(Model::Array(e)), DataModel::Array) => Ok(SlotKey::Index(e.index)),
        (Some(Model::Dictionary(e)), DataModel::Dictionary) => Ok(SlotKey::Key(e.key.clone())),
        (_, DataModel::Single) => bad("single"),
        (_, DataModel::Array) => bad("array"),
        (_, DataModel::Dictionary) => bad("dictionary"),
        (_, DataModel::Unspecified) => bad("no"),
    }
}

/// Checks that a value is signed, that the signature verifies over (resource, kind,
/// storage time, value), and that the signer may write it under the kind's access policy.
/// Storing peers check this on every store (replication and handover included); fetchers
/// check it on every value they receive.
pub fn check_signed(
    kind: &Kind,
    resource: Id,
    sd: &pb::StoredData,
    verify_mode: &VerifyMode,
) -> Result<(), (ErrorCode, String)> {
    check_signed_with(
        kind,
        resource,
        sd,
        verify_mode,
        &mut KeyCache::default(),
        Memo::None,
    )
}

/// [`check_signed`] with the caller's decoded keys and memo of verified signatures (a
/// fetcher's: the same values come back fetch after fetch).
pub fn check_signed_with(
    kind: &Kind,
    resource: Id,
    sd: &pb::StoredData,
    verify_mode: &VerifyMode,
    keys: &mut KeyCache,
    mut memo: Memo<'_>,
) -> Result<(), (ErrorCode, String)> {
    let Some(value) = sd.value.as_ref() else {
        return Err((
            ErrorCode::InvalidMessage,
            "stored data without a value".into(),
        ));
    };
    let Some(sig) = sd.signature.as_ref() else {
        return Err((ErrorCode::Forbidden, "value is not signed".into()));
    };
    let signer = match verify_mode {
        VerifyMode::Skip => sig
            .signer
            .as_ref()
            .ok_or((ErrorCode::Forbidden, "no signer".to_string()))?,
        m => {
            let how = m.binding();
            let input = stored_data_signing_input(resource, kind.id, sd.storage_time, value);
            match verify_bound_memo(sig, &input, how, keys, memo.reborrow()) {
                Ok(s) => s,
                // An appended array entry was signed with index 0xFFFFFFFF and is stored
                // under the index the responsible peer gave it (SPEC 6.2).
                Err(e) => appended_form(value)
                    .and_then(|v| {
                        let input =
                            stored_data_signing_input(resource, kind.id, sd.storage_time, &v);
                        verify_bound_memo(sig, &input, how, keys, memo).ok()
                    })
                    .ok_or_else(|| (ErrorCode::Forbidden, format!("value signature: {e}")))?,
            }
        }
    };
    check_policy(kind.policy, resource, signer, value, kind.max_node_multiple)
        .map_err(|e| (ErrorCode::Forbidden, e))
}

/// An array entry as its writer signed it when appending (index 0xFFFFFFFF); None for
/// other values and for entries already in that form.
fn appended_form(v: &pb::StoredDataValue) -> Option<pb::StoredDataValue> {
    match &v.model {
        Some(Model::Array(e)) if e.index != u32::MAX => {
            let mut a = v.clone();
            if let Some(Model::Array(e)) = a.model.as_mut() {
                e.index = u32::MAX;
            }
            Some(a)
        }
        _ => None,
    }
}

/// How a store checks value signatures: the mode, the node's decoded keys, and the
/// signatures a batch check of the messages that came with it verified (looked up only:
/// a stored value comes once).
pub struct Verify<'a> {
    pub mode: &'a VerifyMode,
    pub keys: &'a mut KeyCache,
    pub known: &'a VerifiedMemo,
}

/// Applies one kind's part of a Store to `data`. Nothing changes unless every value is
/// accepted. Returns whether the data changed.
#[allow(clippy::too_many_arguments)]
pub fn apply_store(
    data: &mut KindData,
    kind: &Kind,
    resource: Id,
    req: &pb::StoreKindData,
    mode: StoreMode,
    verify: Verify<'_>,
    now_ms: u64,
) -> Result<bool, (ErrorCode, String)> {
    if mode == StoreMode::Primary
        && req.generation_counter != 0
        && req.generation_counter != data.generation
    {
        return Err((
            ErrorCode::GenerationCounterTooLow,
            format!(
                "generation counter {} but the stored one is {}",
                req.generation_counter, data.generation
            ),
        ));
    }
    let mut next = data.clone();
    let mut changed = false;
    for sd in &req.values {
        let Some(value) = sd.value.as_ref() else {
            return Err((
                ErrorCode::InvalidMessage,
                "stored data without a value".into(),
            ));
        };
        if value_len(sd) > kind.max_size as usize {
            return Err((
                ErrorCode::DataTooLarge,
                format!(
                    "value of {} bytes, kind {} allows {}",
                    value_len(sd),
                    kind.name,
                    kind.max_size
                ),
            ));
        }
        let whole = prost::Message::encoded_len(sd);
        if whole > (kind.max_size as usize).saturating_add(super::METADATA_ALLOWANCE) {
            return Err((
                ErrorCode::DataTooLarge,
                format!(
                    "stored data of {whole} bytes: kind {} allows {} of value and {} of signature, identity and metadata",
                    kind.name,
                    kind.max_size,
                    super::METADATA_ALLOWANCE
                ),
            ));
        }
        if mode == StoreMode::Merge && holds_as_is(&next, kind, sd) {
            // A copy of what is held (the periodic re-push): its signature was checked
            // when it was stored.
            continue;
        }
        let mut slot = slot_of(kind, value)?;
        check_signed_with(
            kind,
            resource,
            sd,
            verify.mode,
            verify.keys,
            Memo::Lookup(verify.known),
        )?;
        if slot == SlotKey::Index(u32::MAX) {
            // Append: the index after the last one.
            let last = next.values.keys().rev().find_map(|k| match k {
                SlotKey::Index(i) => Some(*i),
                _ => None,
            });
            slot = SlotKey::Index(last.map_or(0, |i| i.saturating_add(1)));
        }
        match next.values.get(&slot) {
            Some(old) if old.storage_time > sd.storage_time => match mode {
                StoreMode::Primary => {
                    return Err((
                        ErrorCode::DataTooOld,
                        format!(
                            "stored value is newer ({} > {} ms)",
                            old.storage_time, sd.storage_time
                        ),
                    ))
                }
                StoreMode::Merge => continue,
            },
            Some(old) if old == sd => continue,
            _ => {}
        }
        if is_expired(sd, now_ms) {
            // Already dead on arrival: nothing to keep.
            continue;
        }
        let mut stored = sd.clone();
        if let (SlotKey::Index(i), Some(Model::Array(e))) =
            (&slot, stored.value.as_mut().and_then(|v| v.model.as_mut()))
        {
            e.index = *i;
        }
        next.values.insert(slot, stored);
        changed = true;
    }
    if next.values.len() > kind.max_count as usize {
        return Err((
            ErrorCode::DataTooLarge,
            format!(
                "kind {} allows {} values per resource",
                kind.name, kind.max_count
            ),
        ));
    }
    match mode {
        StoreMode::Primary => {
            next.generation = data.generation.checked_add(1).ok_or((
                ErrorCode::GenerationCounterTooLow,
                "the generation counter is at its maximum".to_string(),
            ))?
        }
        StoreMode::Merge => {
            next.generation = data.generation.max(req.generation_counter);
            changed |= next.generation != data.generation;
        }
    }
    *data = next;
    Ok(changed)
}

fn selected<'a>(
    data: &'a KindData,
    spec: &'a pb::StoredDataSpecifier,
) -> impl Iterator<Item = (&'a SlotKey, &'a pb::StoredData)> + 'a {
    use pb::stored_data_specifier::Model as M;
    data.values
        .iter()
        .filter(move |(k, _)| match (&spec.model, k) {
            (None | Some(M::Single(_)), _) => true,
            (Some(M::Indices(r)), SlotKey::Index(i)) => {
                r.ranges.is_empty() || r.ranges.iter().any(|r| *i >= r.first && *i <= r.last)
            }
            (Some(M::Keys(keys)), SlotKey::Key(key)) => {
                keys.keys.is_empty() || keys.keys.contains(key)
            }
            _ => false,
        })
}

fn live(d: &pb::StoredData, now_ms: u64) -> bool {
    !is_expired(d, now_ms) && exists(d)
}

fn exists(d: &pb::StoredData) -> bool {
    match d.value.as_ref().and_then(|v| v.model.as_ref()) {
        Some(Model::Single(v)) => v.exists,
        Some(Model::Array(e)) => e.value.as_ref().is_some_and(|v| v.exists),
        Some(Model::Dictionary(e)) => e.value.as_ref().is_some_and(|v| v.exists),
        None => false,
    }
}

/// What an answer may still grow by, in encoded bytes; building stops when it runs out
/// (Error_Response_Too_Large), so no answer is ever assembled beyond its bound.
#[derive(Debug, Clone, Copy)]
pub struct Budget(pub usize);

impl Budget {
    /// Takes `n` bytes; false (and nothing taken) when fewer are left.
    pub fn take(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

/// The refusal when an answer would outgrow its budget.
pub fn too_large() -> (ErrorCode, String) {
    (
        ErrorCode::ResponseTooLarge,
        "the answer would exceed the size the requester accepts (or the message limit)".into(),
    )
}

/// The Fetch answer for one specifier: live values only (no tombstones, nothing expired);
/// no values when the fetcher already has the current generation. Each value is counted
/// against `budget` before it is copied.
pub fn fetch(
    data: Option<&KindData>,
    spec: &pb::StoredDataSpecifier,
    now_ms: u64,
    budget: &mut Budget,
) -> Result<pb::FetchKindResponse, (ErrorCode, String)> {
    let mut r = pb::FetchKindResponse {
        kind: spec.kind,
        generation: data.map_or(0, |d| d.generation),
        values: Vec::new(),
    };
    if !budget.take(24) {
        return Err(too_large());
    }
    if let Some(d) = data {
        if spec.generation == 0 || spec.generation != d.generation {
            for (_, v) in selected(d, spec).filter(|(_, v)| live(v, now_ms)) {
                if !budget.take(prost::Message::encoded_len(v) + 4) {
                    return Err(too_large());
                }
                r.values.push(v.clone());
            }
        }
    }
    Ok(r)
}

/// The Stat answer for one specifier: metadata of the live values, each counted against
/// `budget` before it is built.
pub fn stat(
    data: Option<&KindData>,
    spec: &pb::StoredDataSpecifier,
    now_ms: u64,
    budget: &mut Budget,
) -> Result<pb::StatKindResponse, (ErrorCode, String)> {
    let mut r = pb::StatKindResponse {
        kind: spec.kind,
        generation: data.map_or(0, |d| d.generation),
        values: Vec::new(),
    };
    if !budget.take(24) {
        return Err(too_large());
    }
    if let Some(d) = data {
        for (k, v) in selected(d, spec).filter(|(_, v)| live(v, now_ms)) {
            // Length, 32-byte hash, times, index; the key is as long as it is.
            let key_len = match k {
                SlotKey::Key(key) => key.len(),
                _ => 0,
            };
            if !budget.take(72 + key_len) {
                return Err(too_large());
            }
            r.values.push({
                let payload = match v.value.as_ref().and_then(|x| x.model.as_ref()) {
                    Some(Model::Single(x)) => x.value.clone(),
                    Some(Model::Array(e)) => e
                        .value
                        .as_ref()
                        .map(|x| x.value.clone())
                        .unwrap_or_default(),
                    Some(Model::Dictionary(e)) => e
                        .value
                        .as_ref()
                        .map(|x| x.value.clone())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                pb::StoredMetaData {
                    value_length: payload.len() as u32,
                    hash: Sha256::digest(&payload).to_vec(),
                    storage_time: v.storage_time,
                    lifetime: v.lifetime,
                    exists: true,
                    index: match k {
                        SlotKey::Index(i) => *i,
                        _ => 0,
                    },
                    key: match k {
                        SlotKey::Key(key) => key.clone(),
                        _ => Vec::new(),
                    },
                }
            });
        }
    }
    Ok(r)
}

/// Find: of the resources holding `kind` (given as ids), the closest one at or after
/// `target` on the ring.
pub fn find_closest(target: Id, candidates: impl Iterator<Item = Id>) -> Option<Id> {
    candidates.min_by_key(|c| distance(target, *c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::{KindRegistry, KIND_USER_VALUE};
    use crate::{signed_value, Time, ValueModel};
    use p2psip_proto::security::Identity;

    /// User `name`'s resource and a value "x" it signed at 1 s, for 60 s.
    fn single(name: &str) -> (Id, pb::StoredData) {
        let who = Identity::from_seed([5; 32], name);
        let res = Id::hash_of(name.as_bytes());
        let v = signed_value(
            &who,
            res,
            KIND_USER_VALUE,
            Time(1_000),
            60,
            ValueModel::Single(b"x".to_vec()),
        );
        (res, v)
    }

    /// `sd` stored at 2 s into `data` (a user value of `res`), self-signed checks.
    fn store_one(
        data: &mut KindData,
        res: Id,
        sd: &pb::StoredData,
        generation_counter: u64,
        mode: StoreMode,
    ) -> Result<bool, (ErrorCode, String)> {
        let kinds = KindRegistry::default();
        let kind = kinds.get(KIND_USER_VALUE).unwrap();
        let req = pb::StoreKindData {
            kind: KIND_USER_VALUE,
            generation_counter,
            values: vec![sd.clone()],
        };
        apply_store(
            data,
            kind,
            res,
            &req,
            mode,
            Verify {
                mode: &VerifyMode::SelfSigned,
                keys: &mut KeyCache::default(),
                known: &VerifiedMemo::default(),
            },
            2_000,
        )
    }

    #[test]
    fn a_generation_counter_at_its_maximum_refuses_instead_of_wrapping() {
        let (res, v) = single("g");
        let mut data = KindData {
            generation: u64::MAX,
            ..KindData::default()
        };
        let r = store_one(&mut data, res, &v, 0, StoreMode::Primary);
        assert_eq!(
            r.err().map(|e| e.0),
            Some(ErrorCode::GenerationCounterTooLow)
        );
        assert_eq!(data.generation, u64::MAX, "nothing changed");
    }

    /// The periodic re-push sends every replica what it holds: a copy identical to the
    /// held value is taken without checking its signature again (it was checked when it
    /// was stored; here the held one carries a signature that would fail, so a check
    /// would show), while a writer's store and a changed copy are checked as before.
    #[test]
    fn a_copy_of_what_is_held_is_not_checked_again() {
        let kinds = KindRegistry::default();
        let kind = kinds.get(KIND_USER_VALUE).unwrap();
        let (res, mut v) = single("c");
        if let Some(sig) = v.signature.as_mut() {
            sig.value[0] ^= 1;
        }
        let mut held = KindData {
            generation: 3,
            ..KindData::default()
        };
        let slot = slot_of(kind, v.value.as_ref().unwrap()).unwrap();
        held.values.insert(slot, v.clone());
        let store =
            |data: &mut KindData, sd: &pb::StoredData, mode| store_one(data, res, sd, 3, mode);
        let mut data = held.clone();
        assert_eq!(store(&mut data, &v, StoreMode::Merge), Ok(false));
        assert_eq!(data, held);
        let refused = store(&mut held.clone(), &v, StoreMode::Primary);
        assert_eq!(refused.err().map(|e| e.0), Some(ErrorCode::Forbidden));
        let mut newer = v.clone();
        newer.storage_time += 1;
        let refused = store(&mut held.clone(), &newer, StoreMode::Merge);
        assert_eq!(refused.err().map(|e| e.0), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn answers_stop_at_their_budget() {
        let who = Identity::from_seed([6; 32], "b");
        let res = Id::hash_of(b"b");
        let mut d = KindData::default();
        for i in 0..10u32 {
            let v = signed_value(
                &who,
                res,
                3,
                Time(1_000),
                60,
                ValueModel::Array(i, vec![0; 1000]),
            );
            d.values.insert(SlotKey::Index(i), v);
        }
        let spec = pb::StoredDataSpecifier {
            kind: 3,
            generation: 0,
            model: None,
        };
        let mut roomy = Budget(1 << 20);
        assert_eq!(
            fetch(Some(&d), &spec, 2_000, &mut roomy)
                .unwrap()
                .values
                .len(),
            10
        );
        let mut tight = Budget(5_000);
        assert_eq!(
            fetch(Some(&d), &spec, 2_000, &mut tight).err(),
            Some(too_large())
        );
        let mut tiny = Budget(10);
        assert_eq!(
            stat(Some(&d), &spec, 2_000, &mut tiny).err(),
            Some(too_large())
        );
    }
}
