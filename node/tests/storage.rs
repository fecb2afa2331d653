//! Storage that loses nothing (docs/security.md, proto/SPEC.md section 6): black-box tests
//! against real `p2psip node` processes on 127.0.0.1 with a data directory.
//!
//! - an acknowledged store survives SIGKILL of a lone node (no replica to refill it);
//! - a damaged database is refused with a clear message, or quarantined when configured,
//!   never served in part and overwritten;
//! - a data directory written before the database (store.pb) is converted at first start;
//! - a full disk answers stores with Out_Of_Space while reads go on;
//! - files are created with their final modes and symlinks are not followed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const OVERLAY: &str = "durable.test";

/// `p2psip client store-many` or `check-many`: (exit code, stdout and stderr).
fn many(n: &NodeProc, op: &str, count: usize, prefix: &str) -> (i32, String) {
    let count = count.to_string();
    let (code, out, err) = client(
        n.addr,
        OVERLAY,
        &[op, "--count", &count, "--prefix", prefix],
    );
    (code, format!("{out}{err}"))
}

fn store_many(n: &NodeProc, count: usize, prefix: &str) -> (i32, String) {
    many(n, "store-many", count, prefix)
}

fn check_many(n: &NodeProc, count: usize, prefix: &str) -> (i32, String) {
    many(n, "check-many", count, prefix)
}

/// A lone node (it forms the overlay itself) on an ephemeral port with its data in `dir`.
fn lone_node(dir: &Path) -> NodeProc {
    let n = start_node(dir, OVERLAY, &[], "127.0.0.1:0");
    assert!(
        eventually(Duration::from_secs(20), || joined_alone(&n).then_some(())).is_some(),
        "the lone node never formed its overlay: {}",
        std::fs::read_to_string(&n.stderr_log).unwrap_or_default()
    );
    n
}

/// Restarts a node on the address it had (so its identity and data dir are the same).
fn restart(n: &NodeProc) -> NodeProc {
    let text = std::fs::read_to_string(&n.config).unwrap();
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", n.addr),
    );
    std::fs::write(&n.config, text).unwrap();
    let m = spawn_node(&n.data_dir, n.config.clone());
    assert!(
        eventually(Duration::from_secs(20), || joined_alone(&m).then_some(())).is_some(),
        "the restarted node never formed its overlay: {}",
        std::fs::read_to_string(&m.stderr_log).unwrap_or_default()
    );
    m
}

fn sigkill(mut n: NodeProc) -> NodeProc {
    n.child.kill().unwrap();
    n.child.wait().unwrap();
    n
}

#[test]
fn acknowledged_stores_survive_sigkill_of_a_lone_node() {
    let dir = TempDir::new("durable");
    let mut n = lone_node(&dir.0);
    for round in 0..5 {
        let prefix = format!("r{round}-");
        let (code, out) = store_many(&n, 500, &prefix);
        assert_eq!(code, 0, "round {round}: stores failed: {out}");
        // SIGKILL as soon as the client has its acknowledgements: no graceful save.
        let killed = sigkill(n);
        n = restart(&killed);
        drop(killed);
        for earlier in 0..=round {
            let (code, out) = check_many(&n, 500, &format!("r{earlier}-"));
            assert_eq!(
                code, 0,
                "round {round}: values of round {earlier} lost after SIGKILL: {out}"
            );
            assert!(out.contains("found intact 500/500"), "{out}");
        }
    }
}

/// Stores, stops the node, flips bytes in the middle of its database.
fn damaged_data_dir(tag: &str) -> (TempDir, NodeProc) {
    let dir = TempDir::new(tag);
    let n = lone_node(&dir.0);
    let (code, out) = store_many(&n, 200, "dmg-");
    assert_eq!(code, 0, "{out}");
    let n = sigkill(n);
    let db = dir.0.join("store.redb");
    let mut bytes = std::fs::read(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    // Flip a byte inside every copy of stored values on disk, so live data is damaged
    // (damage in free pages would harm nothing and need not be refused).
    let needle = b"value-of-dmg-1";
    let mut flipped = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + 3] ^= 0x5a;
            flipped += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(flipped > 0, "no stored value found in {}", db.display());
    std::fs::write(&db, &bytes).unwrap();
    (dir, n)
}

#[test]
fn a_damaged_database_is_refused_with_the_file_named() {
    let (dir, n) = damaged_data_dir("damaged");
    let before = std::fs::read(dir.0.join("store.redb")).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&n.config)
        .arg("--data-dir")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a damaged database was served: {err}"
    );
    assert!(
        err.contains("store.redb") && err.contains("damaged"),
        "the refusal does not name the file and the damage: {err}"
    );
    assert_eq!(
        std::fs::read(dir.0.join("store.redb")).unwrap(),
        before,
        "the damaged file was changed"
    );
}

#[test]
fn a_damaged_database_is_quarantined_when_configured() {
    let (dir, n) = damaged_data_dir("quarantine");
    let before = std::fs::read(dir.0.join("store.redb")).unwrap();
    let mut text = std::fs::read_to_string(&n.config).unwrap();
    text.push_str("[storage]\non_corruption = \"quarantine\"\n");
    std::fs::write(&n.config, &text).unwrap();
    let m = restart(&n);
    // Started empty: nothing of the damaged file is served.
    let (code, out) = check_many(&m, 200, "dmg-");
    assert_ne!(code, 0, "values served from a damaged file: {out}");
    assert!(out.contains("found intact 0/200"), "{out}");
    let kept: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.redb.corrupt-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file was not kept aside");
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), before);
    let log = std::fs::read_to_string(&m.stderr_log).unwrap();
    assert!(log.contains("ERROR") && log.contains("quarantine"), "{log}");
    let s = parse_prometheus(&scrape(m.metrics).unwrap());
    assert_eq!(
        metric_sum(&s, "p2psip_storage_corruption_events_total", &[]),
        1.0
    );
    // New stores are durable in the fresh database.
    let (code, out) = store_many(&m, 20, "fresh-");
    assert_eq!(code, 0, "{out}");
}

/// `tests/data/store-v0.pb`: a snapshot written by the snapshot code this database
/// replaced (`client store mig-<i> value-of-mig-<i> --lifetime 3153600000` for i in 0..50 to
/// a lone node of overlay "durable.test", stopped with SIGTERM).
#[test]
fn a_snapshot_data_dir_is_converted_at_first_start() {
    let dir = TempDir::new("migrate");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v0.pb");
    std::fs::copy(&fixture, dir.0.join("store.pb")).unwrap();
    let n = lone_node(&dir.0);
    let (code, out) = check_many(&n, 50, "mig-");
    assert_eq!(code, 0, "migrated values missing: {out}");
    assert!(!dir.0.join("store.pb").exists(), "store.pb left in place");
    assert!(dir.0.join("store.pb.migrated").exists());
    // The converted values are in the database itself: they survive SIGKILL.
    let n = sigkill(n);
    let m = restart(&n);
    let (code, out) = check_many(&m, 50, "mig-");
    assert_eq!(code, 0, "migrated values lost after SIGKILL: {out}");
}

#[cfg(unix)]
#[test]
fn files_have_their_final_modes_and_symlinks_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let data = dir.0.join("data");
    let n = lone_node(&data);
    let (code, out) = store_many(&n, 5, "mode-");
    assert_eq!(code, 0, "{out}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("store.redb")), 0o600, "database");
    assert_eq!(mode(&data.join("node.key")), 0o600, "key");
    let n = sigkill(n);
    // A database path that is a symlink (to a file an attacker wants overwritten) is refused.
    let target = dir.0.join("elsewhere");
    std::fs::write(&target, b"not yours").unwrap();
    std::fs::remove_file(data.join("store.redb")).unwrap();
    std::os::unix::fs::symlink(&target, data.join("store.redb")).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&n.config)
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "followed a symlink: {err}");
    assert!(err.contains("store.redb"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"not yours");
}

/// A filesystem of 4 MiB (tmpfs, mounted by this test; needs root as CI has): stores that
/// cannot be committed are answered Out_Of_Space, reads and routing go on.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_refuses_stores_and_keeps_serving_reads() {
    let dir = TempDir::new("full");
    let mnt = dir.0.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test mounts a 4 MiB tmpfs and needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let n = lone_node(&mnt.join("data"));
    let (code, out) = store_many(&n, 50, "before-");
    assert_eq!(code, 0, "{out}");
    // Fill the filesystem, leaving nothing for the database to grow into.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    // Values near the kind's 16 KiB limit: they cannot be committed.
    let big = "x".repeat(15_000);
    let mut refused = 0;
    for i in 0..20 {
        let (code, out, err) = client(n.addr, OVERLAY, &["store", &format!("big{i}"), &big]);
        if code != 0 {
            assert!(
                format!("{out}{err}").contains("OUT_OF_SPACE"),
                "a failed store does not say Out_Of_Space: {out}{err}; node log: {}",
                std::fs::read_to_string(&n.stderr_log).unwrap_or_default()
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "every store succeeded on a full filesystem");
    // Reads go on, and what was acknowledged before is there.
    let (code, out) = check_many(&n, 50, "before-");
    assert_eq!(code, 0, "reads failed on a full disk: {out}");
    let s = parse_prometheus(&scrape(n.metrics).unwrap());
    assert!(metric_sum(&s, "p2psip_storage_commit_failures_total", &[]) >= 1.0);
    // Space again: stores succeed (after the node's one-second back-off from the last
    // failed commit).
    std::fs::remove_file(&filler).unwrap();
    let ok = eventually(Duration::from_secs(10), || {
        (store_many(&n, 10, "after-").0 == 0).then_some(())
    });
    assert!(ok.is_some(), "stores still refused once space is back");
}
