//! The on-disk half of the node's storage: one redb database (`store.redb` in the data
//! directory). ACID transactions: a commit that returned is on disk (with
//! `Durability::Immediate`), a crash leaves the last commit, and every page is checksummed,
//! so a damaged file is detected when it is opened instead of being served in part.
//!
//! Tables: `data` ((Resource-ID, kind) -> `StoreKindData`), `meta` (the overlay
//! configuration document and the bootstrap cache).

use super::{kind_data_of, StoreKey};
use crate::security::private_files::{self, PrivateFileError};
use p2psip_algorithms::storage::{KindData, StorageError};
use p2psip_algorithms::Id;
use p2psip_proto::pb;
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// When a commit reaches the disk (`[storage] sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every store its own durable commit, answered after it.
    Always,
    /// Stores that arrive together share one durable commit (group commit), each answered
    /// after it. The default.
    Batch,
    /// Commits reach the disk once a second; a crash loses up to a second of acknowledged
    /// stores. For throughput tests, not for registrations people depend on.
    None,
}

impl SyncMode {
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s {
            "always" => Some(SyncMode::Always),
            "batch" => Some(SyncMode::Batch),
            "none" => Some(SyncMode::None),
            _ => None,
        }
    }
}

/// What to do with a database that fails its integrity check (`[storage] on_corruption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// Refuse to start, naming the file and the damage. The default.
    Refuse,
    /// Move the file aside (`<name>.corrupt-<unix time>`), start empty, log an ERROR.
    Quarantine,
}

impl OnCorruption {
    pub fn parse(s: &str) -> Option<OnCorruption> {
        match s {
            "refuse" => Some(OnCorruption::Refuse),
            "quarantine" => Some(OnCorruption::Quarantine),
            _ => None,
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path}: the database is damaged ({detail}). Refusing to start so that nothing more \
         is lost: keep the file for inspection and move it aside to start empty (replicas \
         refill it), or set storage.on_corruption = \"quarantine\" to have the node do that"
    )]
    Damaged { path: String, detail: String },
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error("{path}: {detail}")]
    Database { path: String, detail: String },
}

/// An open database.
pub struct Db {
    db: Database,
}

/// What an open found: the stored data, and whether a damaged file was moved aside.
pub struct Opened {
    pub db: Db,
    pub records: Vec<(StoreKey, KindData)>,
    pub quarantined: Option<PathBuf>,
}

impl Db {
    /// Opens (or creates) the database at `path` and reads all it holds.
    pub fn open(path: &Path, on_corruption: OnCorruption) -> Result<Opened, OpenError> {
        match Self::try_open(path) {
            Ok((db, records)) => Ok(Opened {
                db,
                records,
                quarantined: None,
            }),
            Err(OpenError::Damaged { path: p, detail })
                if on_corruption == OnCorruption::Quarantine =>
            {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let aside = path.with_file_name(format!("{name}.corrupt-{secs}"));
                std::fs::rename(path, &aside).map_err(|e| OpenError::Database {
                    path: p.clone(),
                    detail: format!("damaged ({detail}), and moving it aside failed: {e}"),
                })?;
                tracing::error!(
                    path = %p,
                    kept = %aside.display(),
                    "the database is damaged ({detail}): moved to quarantine; starting empty (replicas refill it)"
                );
                let (db, records) = Self::try_open(path)?;
                Ok(Opened {
                    db,
                    records,
                    quarantined: Some(aside),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(path: &Path) -> Result<(Db, Vec<(StoreKey, KindData)>), OpenError> {
        let shown = path.display().to_string();
        let damaged = |detail: String| OpenError::Damaged {
            path: shown.clone(),
            detail,
        };
        let file = private_files::open_rw(path)?;
        // redb checks every page's checksum on this open; it documents that a plain open of
        // a file altered outside redb may panic, so a panic is taken as damage too.
        let opened = std::panic::catch_unwind(|| {
            let backend = redb::backends::FileBackend::new(file)?;
            redb::Builder::new()
                .set_check_integrity_on_open(true)
                .create_with_backend(backend)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(classify_open(&shown, e)),
            Err(_) => return Err(damaged("the database library failed reading it".into())),
        };
        let mut records = Vec::new();
        let tx = db.begin_read().map_err(|e| damaged(e.to_string()))?;
        match tx.open_table(DATA) {
            Ok(t) => {
                for row in t.iter().map_err(|e| damaged(e.to_string()))? {
                    let (k, v) = row.map_err(|e| damaged(e.to_string()))?;
                    let key = key_of(k.value())
                        .ok_or_else(|| damaged("a record with a malformed key".into()))?;
                    let kd = pb::StoreKindData::decode(v.value())
                        .map_err(|e| damaged(format!("a record that does not decode: {e}")))?;
                    if kd.kind != key.1 {
                        return Err(damaged("a record filed under another kind".into()));
                    }
                    records.push((key, kind_data_of(kd)));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(damaged(e.to_string())),
        }
        drop(tx);
        Ok((Db { db }, records))
    }

    /// Writes `batch` (None: delete) in one transaction; durable on return unless
    /// `durable` is false.
    pub fn write<'a>(
        &self,
        batch: impl Iterator<Item = (&'a StoreKey, Option<&'a KindData>)>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(commit_error)?;
        if !durable {
            tx.set_durability(redb::Durability::None)
                .map_err(commit_error)?;
        }
        {
            let mut t = tx.open_table(DATA).map_err(commit_error)?;
            for ((res, kind), data) in batch {
                let k = key_bytes(*res, *kind);
                match data {
                    Some(d) => {
                        let v = encode(*kind, d);
                        t.insert(k.as_slice(), v.as_slice()).map_err(commit_error)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(commit_error)?;
                    }
                }
            }
        }
        tx.commit().map_err(commit_error)
    }

    /// Makes earlier non-durable commits durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db
            .begin_write()
            .map_err(commit_error)?
            .commit()
            .map_err(commit_error)
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().ok()?;
        let t = tx.open_table(META).ok()?;
        let v = t.get(key).ok()??;
        Some(v.value().to_vec())
    }

    /// Sets a value of the `meta` table (durably).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(commit_error)?;
        {
            let mut t = tx.open_table(META).map_err(commit_error)?;
            t.insert(key, value).map_err(commit_error)?;
        }
        tx.commit().map_err(commit_error)
    }
}

fn classify_open(path: &str, e: redb::DatabaseError) -> OpenError {
    let damaged = |detail: String| OpenError::Damaged {
        path: path.to_string(),
        detail,
    };
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => damaged(m),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            damaged(format!("not a database: {io}"))
        }
        redb::DatabaseError::RepairAborted => damaged("the repair after a crash failed".into()),
        other => OpenError::Database {
            path: path.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A failed write: no room (Out_Of_Space) or anything else.
fn commit_error(e: impl Into<redb::Error>) -> StorageError {
    let e: redb::Error = e.into();
    if let redb::Error::Io(io) = &e {
        if is_no_space(io) {
            return StorageError::OutOfSpace(io.to_string());
        }
    }
    StorageError::Failed(e.to_string())
}

fn is_no_space(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::FileTooLarge {
        return true;
    }
    #[cfg(unix)]
    if matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT)
    ) {
        return true;
    }
    false
}

fn key_bytes(res: Id, kind: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&res.to_bytes());
    k[16..].copy_from_slice(&kind.to_be_bytes());
    k
}

fn key_of(b: &[u8]) -> Option<StoreKey> {
    let (res, kind) = b.split_at_checked(16)?;
    let kind: [u8; 4] = kind.try_into().ok()?;
    Some((Id::from_slice(res)?, u32::from_be_bytes(kind)))
}

fn encode(kind: u32, d: &KindData) -> Vec<u8> {
    pb::StoreKindData {
        kind,
        generation_counter: d.generation,
        values: d.values.values().cloned().collect(),
    }
    .encode_to_vec()
}
