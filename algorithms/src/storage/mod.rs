//! Storage: a narrow map trait ([`Storage`]) with an in-memory implementation, and the
//! storage rules of the protocol (kinds, data models, lifetimes, generation counters,
//! access policies) that every peer applies the same way.

mod access;
mod kinds;
mod memory;
mod rules;

pub use access::{check_policy, node_multiple_resource};
pub use kinds::{Kind, KindRegistry, KIND_NODE_MULTIPLE, KIND_NODE_VALUE, KIND_SIP_REGISTRATION};
pub use kinds::{KIND_REDIR, KIND_SIP_FRONT_END, KIND_USER_ARRAY, KIND_USER_VALUE};
pub use memory::MemoryStore;
pub use rules::{
    apply_store, check_signed, check_signed_with, fetch, find_closest, holds_as_is, is_expired,
    stat, too_large, Budget, StoreMode, Verify, VerifyMode,
};

use crate::id::Id;
use p2psip_proto::pb;
use std::collections::BTreeMap;

/// Where a value sits inside a kind's data: the single slot, an array index or a
/// dictionary key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    Single,
    Index(u32),
    Key(Vec<u8>),
}

/// The values of one kind at one resource, with its generation counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindData {
    pub generation: u64,
    pub values: BTreeMap<SlotKey, pb::StoredData>,
}

impl KindData {
    /// Bytes of stored value payloads.
    pub fn payload_bytes(&self) -> usize {
        self.values.values().map(value_len).sum()
    }
}

/// Bytes a stored value takes in all: payload, signature, signer identity (user name,
/// certificate), times. What quotas count.
pub fn stored_len(d: &pb::StoredData) -> u64 {
    prost::Message::encoded_len(d) as u64
}

/// What a value may carry besides its payload (signature, signer identity with a
/// certificate, times); a value whose encoding passes `max_size` by more is refused.
pub const METADATA_ALLOWANCE: usize = 4096;

/// Length of a stored value's payload.
pub fn value_len(d: &pb::StoredData) -> usize {
    use pb::stored_data_value::Model;
    match d.value.as_ref().and_then(|v| v.model.as_ref()) {
        Some(Model::Single(v)) => v.value.len(),
        Some(Model::Array(e)) => e.value.as_ref().map_or(0, |v| v.value.len()),
        Some(Model::Dictionary(e)) => e.key.len() + e.value.as_ref().map_or(0, |v| v.value.len()),
        None => 0,
    }
}

/// Why writes could not be made durable ([`Storage::commit`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The disk (or the file-size limit) has no room for the writes.
    #[error("no space to commit the store: {0}")]
    OutOfSpace(String),
    /// Any other failure of the backing store (I/O error, database error).
    #[error("the store could not be committed: {0}")]
    Failed(String),
}

/// A store of (Resource-ID, kind) -> values. Kept narrow so the daemon can back it with a
/// concurrent map and a database, and the simulator with a plain map.
///
/// Writes are visible to `get` at once. A backend that persists them may hold them until
/// [`Storage::commit`]; the core then answers the stores that made them only after the
/// commit succeeds, and with Error_Out_Of_Space when it fails.
pub trait Storage: Send {
    /// A copy of the data of one kind at one resource.
    fn get(&self, resource: Id, kind: u32) -> Option<KindData>;
    /// Replaces the data of one kind at one resource.
    fn put(&mut self, resource: Id, kind: u32, data: KindData);
    /// Removes the data of one kind at one resource.
    fn remove(&mut self, resource: Id, kind: u32) -> Option<KindData>;
    /// Every (resource, kind) pair held, in id order.
    fn keys(&self) -> Vec<(Id, u32)>;
    /// Number of stored values (all kinds, all resources).
    fn value_count(&self) -> usize;
    /// Whether writes since the last commit wait to be made durable.
    fn uncommitted(&self) -> bool {
        false
    }
    /// Makes every write since the last commit durable. On an error the backend has undone
    /// them: `get` answers what the last successful commit left.
    fn commit(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}
