//! The storage rules: how a Store changes a kind's data, and what Fetch, Stat and Find
//! return (proto/SPEC.md section 6).

use super::{check_policy, value_len, Kind, KindData, SlotKey};
use crate::id::{distance, Id};
use p2psip_proto::pb::{self, stored_data_value::Model, DataModel, ErrorCode};
use p2psip_proto::security::{stored_data_signing_input, verify_bound, Binding, CertificateCheck};
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

/// Whether a value's lifetime has run out at `now_ms`.
pub fn is_expired(d: &pb::StoredData, now_ms: u64) -> bool {
    d.storage_time
        .saturating_add(u64::from(d.lifetime).saturating_mul(1000))
        <= now_ms
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
            let how = match m {
                VerifyMode::Certificates(c) => Binding::Certified(c.as_ref()),
                _ => Binding::SelfSigned,
            };
            let input = stored_data_signing_input(resource, kind.id, sd.storage_time, value);
            match verify_bound(sig, &input, how) {
                Ok(s) => s,
                // An appended array entry was signed with index 0xFFFFFFFF and is stored
                // under the index the responsible peer gave it (SPEC 6.2).
                Err(e) => appended_form(value)
                    .and_then(|v| {
                        let input =
                            stored_data_signing_input(resource, kind.id, sd.storage_time, &v);
                        verify_bound(sig, &input, how).ok()
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

/// Applies one kind's part of a Store to `data`. Nothing changes unless every value is
/// accepted. Returns whether the data changed.
#[allow(clippy::too_many_arguments)]
pub fn apply_store(
    data: &mut KindData,
    kind: &Kind,
    resource: Id,
    req: &pb::StoreKindData,
    mode: StoreMode,
    verify_mode: &VerifyMode,
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
        let mut slot = slot_of(kind, value)?;
        check_signed(kind, resource, sd, verify_mode)?;
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
        StoreMode::Primary => next.generation = data.generation + 1,
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

/// The Fetch answer for one specifier: live values only (no tombstones, nothing expired);
/// no values when the fetcher already has the current generation.
pub fn fetch(
    data: Option<&KindData>,
    spec: &pb::StoredDataSpecifier,
    now_ms: u64,
) -> pb::FetchKindResponse {
    let mut r = pb::FetchKindResponse {
        kind: spec.kind,
        generation: data.map_or(0, |d| d.generation),
        values: Vec::new(),
    };
    if let Some(d) = data {
        if spec.generation == 0 || spec.generation != d.generation {
            r.values = selected(d, spec)
                .filter(|(_, v)| live(v, now_ms))
                .map(|(_, v)| v.clone())
                .collect();
        }
    }
    r
}

/// The Stat answer for one specifier: metadata of the live values.
pub fn stat(
    data: Option<&KindData>,
    spec: &pb::StoredDataSpecifier,
    now_ms: u64,
) -> pb::StatKindResponse {
    let mut r = pb::StatKindResponse {
        kind: spec.kind,
        generation: data.map_or(0, |d| d.generation),
        values: Vec::new(),
    };
    if let Some(d) = data {
        r.values = selected(d, spec)
            .filter(|(_, v)| live(v, now_ms))
            .map(|(k, v)| {
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
            })
            .collect();
    }
    r
}

/// Find: of the resources holding `kind` (given as ids), the closest one at or after
/// `target` on the ring.
pub fn find_closest(target: Id, candidates: impl Iterator<Item = Id>) -> Option<Id> {
    candidates.min_by_key(|c| distance(target, *c))
}
