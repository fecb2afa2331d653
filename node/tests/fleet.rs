//! The container fleet, for real (deploy/test-fleet.sh): the static image, 10 peers and
//! Prometheus under compose, 500 values stored and fetched, 3 peers killed with
//! `docker kill`, every value still there, Prometheus reporting the live peers up. Skipped,
//! with a message, when no Docker engine answers.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn compose_fleet_keeps_every_value_when_peers_are_killed() {
    let docker = Command::new("docker").arg("info").output();
    if !docker.is_ok_and(|o| o.status.success()) {
        eprintln!("fleet test skipped: no Docker engine answers (docker info failed)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/test-fleet.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "deploy/test-fleet.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("fleet test passed"), "{stdout}");
    assert!(stdout.contains("found intact 500/500"), "{stdout}");
}
