//! The container fleet, for real (deploy/test-fleet.sh): the static image, 10 peers and
//! Prometheus under compose, 500 values stored and fetched, 2 peers killed with
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

/// The alert rules are valid Prometheus rules (when promtool is installed), and every
/// metric the rules and the Grafana dashboard use is one a running node exports.
#[test]
fn alert_rules_and_dashboard_use_real_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("deploy/prometheus/alerts.yml");
    match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("promtool not installed: rule syntax not checked"),
    }
    let used: std::collections::BTreeSet<String> = [
        std::fs::read_to_string(&rules).unwrap(),
        std::fs::read_to_string(root.join("deploy/grafana/p2psip.json")).unwrap(),
    ]
    .iter()
    .flat_map(|t| {
        t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("p2psip_"))
            .map(|w| {
                w.trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .to_string()
            })
            .collect::<Vec<_>>()
    })
    .collect();
    // A devnet's peers export every metric of a node.
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2psip"))
        .args([
            "devnet",
            "--nodes",
            "3",
            "--users",
            "5",
            "--duration",
            "20s",
        ])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its "metrics: http://ADDR/metrics" line names the port the kernel gave it.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut port = 0;
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).is_ok_and(|n| n > 0) {
        if let Some(a) = line
            .trim()
            .strip_prefix("metrics: http://")
            .and_then(|l| l.strip_suffix("/metrics"))
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        {
            port = a.port();
            break;
        }
        line.clear();
    }
    assert_ne!(port, 0, "devnet printed no metrics address");
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            text.clear();
            let _ = s.read_to_string(&mut text);
            if text.contains("p2psip_storage_values") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Created with the first failed request, so absent from a healthy devnet.
    let lazy = ["p2psip_transaction_failures_total"];
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !lazy.contains(&m.as_str()))
        .filter(|m| !text.lines().any(|l| l.starts_with(m.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ but not exported: {missing:?}"
    );
    assert!(used.len() >= 10, "found the metric names: {used:?}");
}
