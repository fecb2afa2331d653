//! The node's storage backend: a concurrent map (so metrics read it without stopping the
//! overlay), with snapshots to the data directory so a restarted node comes back with its
//! data.

use anyhow::Context;
use dashmap::DashMap;
use p2psip_algorithms::storage::{KindData, SlotKey, Storage};
use p2psip_algorithms::Id;
use p2psip_proto::pb;
use prost::Message as _;
use std::path::Path;
use std::sync::Arc;

/// Storage on a `DashMap`, shareable between the overlay task and readers.
#[derive(Clone, Default)]
pub struct DashStore {
    map: Arc<DashMap<(Id, u32), KindData>>,
    /// Bumped on every write, so snapshots are taken only when something changed.
    version: Arc<std::sync::atomic::AtomicU64>,
}

impl DashStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A number that changes whenever the stored data does.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bump(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (values, payload bytes) per kind, for metrics.
    pub fn usage_by_kind(&self) -> std::collections::BTreeMap<u32, (usize, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.map.iter() {
            let u: &mut (usize, usize) = m.entry(e.key().1).or_default();
            u.0 += e.value().values.len();
            u.1 += e.value().payload_bytes();
        }
        m
    }

    /// Writes every stored value to `path` (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<usize> {
        let mut out = Vec::new();
        let mut n = 0;
        for e in self.map.iter() {
            let (res, kind) = *e.key();
            let rec = pb::StoreReq {
                resource: res.to_bytes().to_vec(),
                replica_number: 0,
                kind_data: vec![pb::StoreKindData {
                    kind,
                    generation_counter: e.value().generation,
                    values: e.value().values.values().cloned().collect(),
                }],
            };
            n += e.value().values.len();
            let b = rec.encode_to_vec();
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(n)
    }

    /// Reads a snapshot written by [`DashStore::save`]. A damaged file is an error, never a
    /// panic; what was read before the damage is kept.
    pub fn load(&self, path: &Path) -> anyhow::Result<usize> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut rest = data.as_slice();
        let mut n = 0;
        while !rest.is_empty() {
            anyhow::ensure!(rest.len() >= 4, "{}: truncated record", path.display());
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            anyhow::ensure!(
                rest.len() >= 4 + len,
                "{}: truncated record",
                path.display()
            );
            let rec = pb::StoreReq::decode(&rest[4..4 + len])
                .with_context(|| format!("{}: bad record", path.display()))?;
            rest = &rest[4 + len..];
            let Some(res) = Id::from_slice(&rec.resource) else {
                continue;
            };
            for kd in rec.kind_data {
                let mut d = KindData {
                    generation: kd.generation_counter,
                    ..KindData::default()
                };
                for v in kd.values {
                    let key = match v.value.as_ref().and_then(|x| x.model.as_ref()) {
                        Some(pb::stored_data_value::Model::Single(_)) => SlotKey::Single,
                        Some(pb::stored_data_value::Model::Array(e)) => SlotKey::Index(e.index),
                        Some(pb::stored_data_value::Model::Dictionary(e)) => {
                            SlotKey::Key(e.key.clone())
                        }
                        None => continue,
                    };
                    d.values.insert(key, v);
                    n += 1;
                }
                self.map.insert((res, kd.kind), d);
            }
        }
        Ok(n)
    }
}

impl Storage for DashStore {
    fn get(&self, resource: Id, kind: u32) -> Option<KindData> {
        self.map.get(&(resource, kind)).map(|e| e.value().clone())
    }

    fn put(&mut self, resource: Id, kind: u32, data: KindData) {
        self.map.insert((resource, kind), data);
        self.bump();
    }

    fn remove(&mut self, resource: Id, kind: u32) -> Option<KindData> {
        self.bump();
        self.map.remove(&(resource, kind)).map(|(_, v)| v)
    }

    fn keys(&self) -> Vec<(Id, u32)> {
        let mut v: Vec<(Id, u32)> = self.map.iter().map(|e| *e.key()).collect();
        v.sort();
        v
    }

    fn value_count(&self) -> usize {
        self.map.iter().map(|e| e.value().values.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2psip_algorithms::{signed_value, Time, ValueModel};
    use p2psip_proto::security::Identity;

    #[test]
    fn snapshot_round_trip_and_damage() {
        let mut s = DashStore::new();
        let who = Identity::from_seed([3; 32], "u");
        let res = Id::hash_of(b"u");
        let v = signed_value(
            &who,
            res,
            2,
            Time(5_000_000),
            60,
            ValueModel::Single(b"hi".to_vec()),
        );
        let mut d = KindData {
            generation: 4,
            ..KindData::default()
        };
        d.values.insert(SlotKey::Single, v);
        s.put(res, 2, d.clone());
        let dir = std::env::temp_dir().join(format!("p2psip-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("store.pb");
        assert_eq!(s.save(&p).unwrap(), 1);
        let t = DashStore::new();
        assert_eq!(t.load(&p).unwrap(), 1);
        assert_eq!(t.get(res, 2), Some(d));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, &bytes).unwrap();
        assert!(DashStore::new().load(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
