//! The README's main command: `p2psip devnet` starts a local overlay, registers and finds
//! every sample SIP user, and stops cleanly after --duration.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;

#[test]
fn devnet_registers_and_finds_every_user() {
    devnet_with("chord");
}

#[test]
fn devnet_runs_every_optional_algorithm() {
    for a in ["kademlia", "onehop"] {
        devnet_with(a);
    }
}

/// Runs `p2psip devnet ARGS --duration 1s --metrics 127.0.0.1:0`, asserting success;
/// returns its standard output and the metrics address it printed (the port the kernel
/// picked: never one a second run could collide on).
fn run_devnet(args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .arg("devnet")
        .args(args)
        .args(["--duration", "1s", "--metrics", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "devnet {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics: http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics line: {stdout}"))
        .to_string();
    let addr: std::net::SocketAddr = metrics.parse().unwrap();
    assert_ne!(
        addr.port(),
        0,
        "the port it listens on, not the one asked for"
    );
    (stdout, metrics)
}

fn devnet_with(algorithm: &str) {
    let (stdout, metrics) =
        run_devnet(&["--algorithm", algorithm, "--nodes", "5", "--users", "30"]);
    assert!(
        stdout.contains("5 peers joined, ring consistent"),
        "{stdout}"
    );
    assert!(stdout.contains("registered 30/30 SIP users"), "{stdout}");
    assert!(
        stdout.contains("found 30/30 through other peers"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("http://{metrics}/metrics")),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_explained() {
    let out = Command::new(BIN)
        .args(["devnet", "--algorithm", "pastry"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pastry") && err.contains("chord"), "{err}");
    let out = Command::new(BIN)
        .args([
            "client",
            "--peer",
            "127.0.0.1:1",
            "store",
            "a",
            "b",
            "--kind",
            "nonsense",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown kind") && err.contains("sip-registration"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["node", "--config", "/nonexistent/p2psip.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/p2psip.toml"), "{err}");
}

/// With front-ends, devnet's sample users are real registrations: calling one through a
/// front-end that does not hold its binding reaches the stand-in phone, which answers 486
/// (issue 23 item 8: they were raw strings in the overlay, and a call got 404).
#[test]
fn devnet_sample_users_are_callable_registrations() {
    let (stdout, _) = run_devnet(&["--nodes", "3", "--users", "10", "--sip", "0"]);
    assert!(stdout.contains("registered 10/10 SIP users"), "{stdout}");
    assert!(
        stdout.contains("found 10/10 through other peers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("call sip:sample0@p2psip through") && stdout.contains(": 486 Busy Here"),
        "{stdout}"
    );
    assert!(stdout.contains("cargo run --release"), "{stdout}");
}

/// A bad configuration stops `p2psip node` with one line that names the file and says
/// what is wrong, each cause once (it printed the OS error twice, as the message and as
/// its "Caused by", and with RUST_BACKTRACE set a stack trace), and exit code 1.
#[test]
fn a_bad_configuration_is_refused_in_one_clear_line() {
    let dir = TempDir::new("cli-errors");
    let missing = dir.0.join("missing.toml");
    let typo = dir.0.join("typo.toml");
    std::fs::write(&typo, "overlay = \"x\"\nlisten_addr = \"127.0.0.1:0\"\n").unwrap();
    let invalid = dir.0.join("invalid.toml");
    std::fs::write(
        &invalid,
        "overlay = \"x\"\n[storage]\nsync = \"sometimes\"\n",
    )
    .unwrap();
    for (path, says) in [
        (&missing, "No such file or directory"),
        (&typo, "unknown field `listen_addr`"),
        (&invalid, "storage.sync"),
    ] {
        let out = Command::new(BIN)
            .args(["node", "--config"])
            .arg(path)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(says), "{err}");
        assert_eq!(err.matches(says).count(), 1, "a cause said twice:\n{err}");
        assert!(
            !err.contains("Caused by") && !err.contains("backtrace"),
            "{err}"
        );
        if path == &missing {
            assert!(err.contains("missing.toml"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
}
