//! A media relay located through the overlay (ReDiR, proto/SPEC.md 6.2): coturn runs on
//! 127.0.0.1 with a user; one peer registers it as the `turn` service (`[[services]]`);
//! from another peer `p2psip client services turn` finds it, and coturn's own client
//! (`turnutils_uclient`) allocates a relay at the address found and sends data through it.
//! Needs coturn (`.ci/run` installs it).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OVERLAY: &str = "services.test";

/// coturn, killed on drop.
struct Turn(Child);

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now (coturn listens on both).
fn free_port() -> u16 {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn uclient(port: u16, password: &str) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", "turnutils_uclient", "-u", "alice", "-w", password])
        .args([
            "-p",
            &port.to_string(),
            "-y",
            "-n",
            "2",
            "-m",
            "1",
            "-l",
            "100",
        ])
        .arg("127.0.0.1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn a_turn_server_registered_by_one_peer_is_found_and_used_from_another() {
    for tool in ["turnserver", "turnutils_uclient"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} is missing: install coturn (.ci/run does)");
    }
    let root = TempDir::new("services");
    let port = free_port();
    let turn = Turn(
        Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
            ])
            .args(["--listening-port", &port.to_string()])
            .args([
                "--lt-cred-mech",
                "--user",
                "alice:secret",
                "--realm",
                "p2psip.test",
            ])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .args(["--log-file", "stdout", "--simple-log", "--pidfile"])
            .arg(root.0.join("turnserver.pid"))
            .stdout(std::fs::File::create(root.0.join("turnserver.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let turn_addr = format!("127.0.0.1:{port}");

    let n0 = start_node(&root.0.join("n0"), OVERLAY, &[], "127.0.0.1:0");
    let dir1 = root.0.join("n1");
    std::fs::create_dir_all(&dir1).unwrap();
    let config = write_config(&dir1, OVERLAY, &[n0.addr], "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[[services]]\nname = \"turn\"\naddress = \"{turn_addr}\"\n\
         attributes = [\"transport=udp\", \"realm=p2psip.test\"]\nlifetime_s = 60\n"
    ));
    std::fs::write(&config, text).unwrap();
    let n1 = spawn_node(&dir1, config);
    let n2 = start_node(&root.0.join("n2"), OVERLAY, &[n0.addr], "127.0.0.1:0");
    for n in [&n0, &n1, &n2] {
        assert!(
            eventually(Duration::from_secs(30), || joined(n).then_some(())).is_some(),
            "node {} did not join",
            n.id
        );
    }

    // Found from another peer: the registered address, provider n1, its attributes.
    let found = eventually(Duration::from_secs(30), || {
        let (code, out, _) = client(n2.addr, OVERLAY, &["--json", "services", "turn"]);
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        (code == 0).then_some(v)
    })
    .expect("the turn service was never found");
    let p = &found["provider"];
    assert_eq!(p["address"], turn_addr.as_str(), "{found}");
    assert_eq!(p["node"], n1.id.as_str(), "{found}");
    assert_eq!(p["attributes"][0], "transport=udp");
    let left = p["remaining_s"].as_u64().unwrap();
    assert!(left > 0 && left <= 60, "{found}");
    println!("found: {found}");
    let (code, out, _) = client(n0.addr, OVERLAY, &["services", "turn"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("turn: {turn_addr} (provider {}", n1.id)),
        "{out}"
    );
    // Nobody offers voicemail: exit status 4.
    let (code, out, _) = client(n2.addr, OVERLAY, &["services", "voicemail"]);
    assert_eq!(code, 4, "{out}");

    // coturn's client allocates a relay at the address found and sends through it.
    let host_port: Vec<&str> = p["address"].as_str().unwrap().split(':').collect();
    assert_eq!(host_port[0], "127.0.0.1");
    let used: u16 = host_port[1].parse().unwrap();
    let ok = eventually(Duration::from_secs(10), || {
        let (code, out) = uclient(used, "secret");
        (code == Some(0)).then_some(out)
    })
    .expect("turnutils_uclient could not use the TURN server found");
    assert!(ok.contains("tot_recv_msgs=8"), "{ok}");
    assert!(ok.contains("Total lost packets 0"), "{ok}");
    // The allocation needs the user's password: a wrong one is refused.
    let (code, out) = uclient(used, "wrong");
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");

    // The registering peer counts its registrations.
    let m = parse_prometheus(&scrape(n1.metrics).unwrap());
    assert!(
        metric_sum(
            &m,
            "p2psip_service_registrations_total",
            &[("outcome", "ok")]
        ) >= 1.0,
        "registrations not counted"
    );
    drop(turn);
}
