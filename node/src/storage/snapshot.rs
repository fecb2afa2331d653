//! The snapshot file (`store.pb`) that data directories held before the database: read
//! once, at the first start with the database, to convert it (then renamed
//! `store.pb.migrated`). Length-prefixed `StoreReq` records, one per (resource, kind).

use super::{kind_data_of, StoreKey};
use p2psip_algorithms::storage::KindData;
use p2psip_algorithms::Id;
use p2psip_proto::pb;
use prost::Message as _;
use std::path::Path;

/// Why a snapshot could not be read; nothing of it is taken then.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: damaged at byte {at}: {what}")]
    Damaged {
        path: String,
        at: usize,
        what: String,
    },
}

/// Every record of the snapshot at `path`. A damaged snapshot is an error as a whole.
pub fn read(path: &Path) -> Result<Vec<(StoreKey, KindData)>, SnapshotError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: shown.clone(),
        source,
    })?;
    let damaged = |at: usize, what: &str| SnapshotError::Damaged {
        path: shown.clone(),
        at,
        what: what.to_string(),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len_bytes: [u8; 4] = data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| damaged(at, "truncated length"))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let body = at
            .checked_add(4 + len)
            .and_then(|end| data.get(at + 4..end))
            .ok_or_else(|| damaged(at, "truncated record"))?;
        let rec = pb::StoreReq::decode(body).map_err(|e| damaged(at, &e.to_string()))?;
        let res = Id::from_slice(&rec.resource).ok_or_else(|| damaged(at, "bad resource id"))?;
        for kd in rec.kind_data {
            let kind = kd.kind;
            out.push(((res, kind), kind_data_of(kd)));
        }
        at += 4 + len;
    }
    Ok(out)
}
