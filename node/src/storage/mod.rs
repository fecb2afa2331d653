//! The node's storage backend: a concurrent map as read cache (metrics read it without
//! stopping the overlay) in front of an embedded transactional database (redb,
//! [`db`]) in the data directory.
//!
//! Durability (proto/SPEC.md section 6.1): writes go to the map at once and wait in a
//! batch; the core commits the batch before it sends anything ([`Storage::commit`]), so a
//! Store is answered only after what it wrote is on disk. A commit that fails (disk full)
//! undoes the batch in the map and the core answers those stores Error_Out_Of_Space.

pub mod db;
mod snapshot;

pub use db::{OnCorruption, OpenError, SyncMode};

use dashmap::DashMap;
use p2psip_algorithms::storage::{KindData, SlotKey, Storage, StorageError};
use p2psip_algorithms::Id;
use p2psip_proto::pb;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (Resource-ID, kind).
pub type StoreKey = (Id, u32);

/// The database file in a data directory.
pub const DB_FILE: &str = "store.redb";
/// The snapshot file of earlier versions, converted at the first start.
pub const SNAPSHOT_FILE: &str = "store.pb";

/// Writes since the last commit: the new data (None: removed) and, to undo them, what
/// each key held before.
#[derive(Default)]
struct Batch {
    new: BTreeMap<StoreKey, Option<KindData>>,
    old: HashMap<StoreKey, Option<KindData>>,
}

struct Disk {
    /// None after a failed commit whose reopen failed too: the next commit reopens first.
    db: Option<db::Db>,
    path: std::path::PathBuf,
    sync: SyncMode,
    batch: Batch,
    /// Non-durable commits not yet synced (sync = "none").
    unsynced: bool,
    /// The last failed commit: for a second after it, batches are refused at once instead
    /// of each trying (and reopening the database) again.
    failed_at: Option<Instant>,
    label: String,
}

impl Disk {
    /// Opens the database again (after a failed commit), keeping the map as it is: the
    /// file holds exactly what the map held at the last successful commit.
    fn reopen(&mut self) {
        self.db = None;
        match db::Db::open(&self.path, OnCorruption::Refuse) {
            Ok(o) => self.db = Some(o.db),
            Err(e) => tracing::error!("reopening the database: {e}"),
        }
    }
}

/// Storage on a `DashMap` and, with a data directory, a database; clones share both.
#[derive(Clone, Default)]
pub struct DashStore {
    map: Arc<DashMap<StoreKey, KindData>>,
    disk: Option<Arc<Mutex<Disk>>>,
    /// A damaged database was moved aside at this start (for metrics).
    quarantined: bool,
}

impl DashStore {
    /// Memory only (no data directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// The store of a data directory: opens (or creates) `store.redb`, converts a
    /// `store.pb` of earlier versions, and loads everything into the map.
    pub fn open(
        dir: &Path,
        sync: SyncMode,
        on_corruption: OnCorruption,
        label: &str,
    ) -> Result<DashStore, OpenError> {
        crate::security::private_files::ensure_dir(dir)?;
        let path = dir.join(DB_FILE);
        let opened = db::Db::open(&path, on_corruption)?;
        let n: usize = opened.records.iter().map(|(_, d)| d.values.len()).sum();
        let map: DashMap<StoreKey, KindData> = opened.records.into_iter().collect();
        let mut store = DashStore {
            map: Arc::new(map),
            quarantined: opened.quarantined.is_some(),
            disk: Some(Arc::new(Mutex::new(Disk {
                db: Some(opened.db),
                path: path.clone(),
                sync,
                batch: Batch::default(),
                unsynced: false,
                failed_at: None,
                label: label.to_string(),
            }))),
        };
        if n > 0 {
            tracing::info!(values = n, path = %path.display(), "restored stored data");
        }
        store.migrate(dir)?;
        Ok(store)
    }

    /// Converts `store.pb` into the database, then renames it `store.pb.migrated`. A
    /// damaged snapshot stops the start (it is the only copy of what it holds).
    fn migrate(&mut self, dir: &Path) -> Result<(), OpenError> {
        let old = dir.join(SNAPSHOT_FILE);
        if !old.exists() {
            return Ok(());
        }
        let shown = old.display().to_string();
        let records = snapshot::read(&old).map_err(|e| OpenError::Damaged {
            path: shown.clone(),
            detail: format!("{e}; it was not converted"),
        })?;
        let n = records.len();
        for (k, d) in records {
            // What the database already holds for a key is newer than the snapshot.
            if !self.map.contains_key(&k) {
                self.put(k.0, k.1, d);
            }
        }
        self.commit().map_err(|e| OpenError::Database {
            path: shown.clone(),
            detail: format!("converting the snapshot: {e}"),
        })?;
        let done = dir.join(format!("{SNAPSHOT_FILE}.migrated"));
        std::fs::rename(&old, &done).map_err(|e| OpenError::Database {
            path: shown.clone(),
            detail: format!("renaming after conversion: {e}"),
        })?;
        tracing::info!(records = n, from = %shown, "converted the snapshot into the database");
        Ok(())
    }

    /// (values, payload bytes) per kind, for metrics.
    pub fn usage_by_kind(&self) -> BTreeMap<u32, (usize, usize)> {
        let mut m = BTreeMap::new();
        for e in self.map.iter() {
            let u: &mut (usize, usize) = m.entry(e.key().1).or_default();
            u.0 += e.value().values.len();
            u.1 += e.value().payload_bytes();
        }
        m
    }

    /// Bytes of the database file (0: memory only), read when asked (metrics, once a
    /// second) rather than after every commit.
    pub fn disk_bytes(&self) -> u64 {
        let Some(disk) = &self.disk else { return 0 };
        disk.lock()
            .map_or(0, |d| std::fs::metadata(&d.path).map_or(0, |m| m.len()))
    }

    /// Damaged databases moved aside at this start (0 or 1).
    pub fn corruption_events(&self) -> u64 {
        u64::from(self.quarantined)
    }

    /// With sync = "none": makes the commits of the last second durable.
    pub fn sync_now(&self) {
        let Some(disk) = &self.disk else { return };
        let Ok(mut d) = disk.lock() else { return };
        if d.unsynced {
            match d.db.as_ref().map(|db| db.sync()) {
                Some(Ok(())) => d.unsynced = false,
                Some(Err(e)) => tracing::warn!("syncing the database: {e}"),
                None => {}
            }
        }
    }

    /// A value of the database's `meta` table (None: memory only or unset).
    pub fn meta(&self, key: &str) -> Option<Vec<u8>> {
        let disk = self.disk.as_ref()?;
        let d = disk.lock().ok()?;
        d.db.as_ref()?.meta(key)
    }

    /// Sets a value of the `meta` table, durably (nothing without a database).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let d = disk
            .lock()
            .map_err(|_| StorageError::Failed("storage lock poisoned".into()))?;
        match &d.db {
            Some(db) => db.set_meta(key, value),
            None => Err(StorageError::Failed("the database is not open".into())),
        }
    }

    fn record(&self, key: StoreKey, new: Option<KindData>, before: Option<KindData>) {
        let Some(disk) = &self.disk else { return };
        let Ok(mut d) = disk.lock() else { return };
        d.batch.old.entry(key).or_insert(before);
        d.batch.new.insert(key, new);
    }
}

/// The stored data of one kind from its values (the slot of each value is in its model).
pub(crate) fn kind_data_of(kd: pb::StoreKindData) -> KindData {
    let mut d = KindData {
        generation: kd.generation_counter,
        ..KindData::default()
    };
    for v in kd.values {
        let key = match v.value.as_ref().and_then(|x| x.model.as_ref()) {
            Some(pb::stored_data_value::Model::Single(_)) => SlotKey::Single,
            Some(pb::stored_data_value::Model::Array(e)) => SlotKey::Index(e.index),
            Some(pb::stored_data_value::Model::Dictionary(e)) => SlotKey::Key(e.key.clone()),
            None => continue,
        };
        d.values.insert(key, v);
    }
    d
}

impl Storage for DashStore {
    fn get(&self, resource: Id, kind: u32) -> Option<KindData> {
        self.map.get(&(resource, kind)).map(|e| e.value().clone())
    }

    fn put(&mut self, resource: Id, kind: u32, data: KindData) {
        let key = (resource, kind);
        let before = self.map.insert(key, data.clone());
        self.record(key, Some(data), before);
    }

    fn remove(&mut self, resource: Id, kind: u32) -> Option<KindData> {
        let key = (resource, kind);
        let before = self.map.remove(&key).map(|(_, v)| v);
        if before.is_some() {
            self.record(key, None, before.clone());
        }
        before
    }

    fn keys(&self) -> Vec<(Id, u32)> {
        let mut v: Vec<(Id, u32)> = self.map.iter().map(|e| *e.key()).collect();
        v.sort();
        v
    }

    fn value_count(&self) -> usize {
        self.map.iter().map(|e| e.value().values.len()).sum()
    }

    fn uncommitted(&self) -> bool {
        self.disk
            .as_ref()
            .and_then(|d| d.lock().ok().map(|d| !d.batch.new.is_empty()))
            .unwrap_or(false)
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let mut d = disk
            .lock()
            .map_err(|_| StorageError::Failed("storage lock poisoned".into()))?;
        if d.batch.new.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut d.batch);
        let durable = d.sync != SyncMode::None;
        let backing_off = d
            .failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if d.db.is_none() && !backing_off {
            d.reopen();
        }
        let r = match &d.db {
            _ if backing_off => Err(StorageError::OutOfSpace(
                "the last commit failed less than a second ago".into(),
            )),
            Some(db) => {
                let started = Instant::now();
                let r = db.write(batch.new.iter().map(|(k, v)| (k, v.as_ref())), durable);
                let took = started.elapsed();
                metrics::histogram!("p2psip_storage_commit_seconds", "node" => d.label.clone())
                    .record(took.as_secs_f64());
                if took > Duration::from_millis(500) {
                    tracing::warn!(ms = took.as_millis() as u64, "slow storage commit");
                }
                r
            }
            None => Err(StorageError::Failed(
                "the database could not be reopened after a failed commit".into(),
            )),
        };
        match r {
            Ok(()) => {
                d.failed_at = None;
                d.unsynced |= !durable;
                Ok(())
            }
            Err(e) => {
                crate::remote_log!(
                    error,
                    "commit_failed",
                    path = %d.path.display(),
                    writes = batch.new.len(),
                    "storage commit failed: {e}; the stores waiting on it are refused"
                );
                // A failed commit leaves redb's allocator state to be rebuilt by an open.
                if !backing_off {
                    d.failed_at = Some(Instant::now());
                    d.reopen();
                }
                for (k, before) in batch.old {
                    match before {
                        Some(v) => self.map.insert(k, v),
                        None => self.map.remove(&k).map(|(_, v)| v),
                    };
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use p2psip_algorithms::{signed_value, Time, ValueModel};
    use p2psip_proto::security::Identity;

    fn data(v: &[u8]) -> (Id, KindData) {
        let who = Identity::from_seed([3; 32], "u");
        let res = Id::hash_of(b"u");
        let val = signed_value(
            &who,
            res,
            2,
            Time(5_000_000),
            60,
            ValueModel::Single(v.to_vec()),
        );
        let mut d = KindData {
            generation: 4,
            ..KindData::default()
        };
        d.values.insert(SlotKey::Single, val);
        (res, d)
    }

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("p2psip-storage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn committed_writes_come_back_and_uncommitted_ones_wait() {
        let d = dir("commit");
        let mut s = DashStore::open(&d, SyncMode::Batch, OnCorruption::Refuse, "t").unwrap();
        let (res, kd) = data(b"hi");
        s.put(res, 2, kd.clone());
        assert!(s.uncommitted());
        assert_eq!(s.get(res, 2), Some(kd.clone()), "visible before the commit");
        s.commit().unwrap();
        assert!(!s.uncommitted());
        drop(s);
        let t = DashStore::open(&d, SyncMode::Batch, OnCorruption::Refuse, "t").unwrap();
        assert_eq!(t.get(res, 2), Some(kd));
        let mut t = t;
        t.remove(res, 2);
        t.commit().unwrap();
        drop(t);
        let u = DashStore::open(&d, SyncMode::Batch, OnCorruption::Refuse, "t").unwrap();
        assert_eq!(u.get(res, 2), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn memory_only_has_nothing_to_commit() {
        let mut s = DashStore::new();
        let (res, kd) = data(b"x");
        s.put(res, 2, kd);
        assert!(!s.uncommitted());
        assert!(s.commit().is_ok());
    }

    #[test]
    fn a_damaged_snapshot_is_not_taken_in_part() {
        let d = dir("snap");
        std::fs::create_dir_all(&d).unwrap();
        let (res, kd) = data(b"hi");
        let rec = pb::StoreReq {
            resource: res.to_bytes().to_vec(),
            replica_number: 0,
            kind_data: vec![pb::StoreKindData {
                kind: 2,
                generation_counter: kd.generation,
                values: kd.values.values().cloned().collect(),
            }],
        };
        use prost::Message as _;
        let b = rec.encode_to_vec();
        let mut file = Vec::new();
        for _ in 0..2 {
            file.extend_from_slice(&(b.len() as u32).to_be_bytes());
            file.extend_from_slice(&b);
        }
        file.truncate(file.len() - 3);
        std::fs::write(d.join(SNAPSHOT_FILE), &file).unwrap();
        let e = DashStore::open(&d, SyncMode::Batch, OnCorruption::Refuse, "t")
            .err()
            .expect("a truncated snapshot must stop the start");
        assert!(e.to_string().contains("store.pb"), "{e}");
        assert!(d.join(SNAPSHOT_FILE).exists(), "the snapshot is kept");
        let _ = std::fs::remove_dir_all(&d);
    }
}
