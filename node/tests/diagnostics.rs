//! Operator diagnostics on a 10-peer loopback overlay of real processes (proto/SPEC.md
//! 4.1): `client path-track` names the peers a request crosses (the same as the via list
//! the responsible peer saw) and ends at the responsible peer; `client diag` returns every
//! kind asked to an operator and is refused (Forbidden, exit status 3) to anyone else;
//! `client routing-table` and `client storage` show the admitting peer's tables.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const OVERLAY: &str = "diag.test";

fn json_of(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn path_track_diag_routing_table_and_storage_on_ten_processes() {
    let root = TempDir::new("diag");
    // The operator's identity, named in every peer's [diagnostics] operators.
    let key = root.0.join("operator.key");
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let operator = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(operator.len(), 32, "keygen printed {operator:?}");
    let start = |i: usize, boot: &[std::net::SocketAddr]| {
        let dir = root.0.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = write_config(&dir, OVERLAY, boot, "127.0.0.1:0");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("[diagnostics]\noperators = [\"{operator}\"]\n"));
        if i == 9 {
            // One peer that relays for nobody (doctor below).
            text.push_str("[nat]\nrelay = false\n");
        }
        std::fs::write(&config, text).unwrap();
        spawn_node(&dir, config)
    };
    let mut nodes = vec![start(0, &[])];
    let boot = nodes[0].addr;
    for i in 1..10 {
        nodes.push(start(i, &[boot]));
    }
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(30), || joined(n).then_some(())).is_some(),
            "node {} did not join",
            n.id
        );
    }
    let ring: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let key_s = key.to_str().unwrap();

    // path-track: for several names, through different peers.
    let mut longest = 0;
    for k in 0..12 {
        let name = format!("user-{k}");
        let via = &nodes[k % 10];
        // Right after the joins the ring may still settle: retry for a bounded time until
        // the walk and a routed request agree.
        let j = eventually(Duration::from_secs(20), || {
            let (code, out, _) = client(via.addr, OVERLAY, &["--json", "path-track", &name]);
            let j = json_of(&out);
            (code == 0 && j["routed_matches"] == Value::Bool(true)).then_some(j)
        })
        .unwrap_or_else(|| panic!("path-track {name} never reached the responsible peer"));
        let hops: Vec<String> = j["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["node"].as_str().unwrap().to_string())
            .collect();
        let routed: Vec<String> = j["routed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        assert_eq!(hops, routed, "{name}: walk vs via list");
        assert_eq!(
            hops[0], via.id,
            "{name}: the walk starts at the admitting peer"
        );
        // The responsible peer: the first Node-ID at or after hash(name) on the ring.
        let target = j["target"].as_str().unwrap().to_string();
        let want = ring
            .range(target.clone()..)
            .next()
            .or_else(|| ring.iter().next())
            .unwrap();
        assert_eq!(
            hops.last(),
            Some(want),
            "{name}: ends at the responsible peer"
        );
        let last = j["hops"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["responsible"], Value::Bool(true));
        // Each hop told its address (the node's own listening address), uptime and load.
        for h in j["hops"].as_array().unwrap() {
            let id = h["node"].as_str().unwrap();
            let n = nodes.iter().find(|n| n.id == id).unwrap();
            let addrs: Vec<&str> = h["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert!(
                addrs.contains(&n.addr.to_string().as_str()),
                "{addrs:?} vs {}",
                n.addr
            );
            assert!(h["uptime"].as_u64().is_some() && h["status"].as_u64().is_some());
        }
        longest = longest.max(hops.len());
    }
    println!("path-track: 12 names, longest path {longest} hops");
    // The text form names every hop and the end.
    let (code, out, err) = client(nodes[3].addr, OVERLAY, &["path-track", "user-1"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("responsible") && out.contains("end: responsible"),
        "{out}"
    );
    println!("{out}");

    // diag: every kind, to the operator.
    let target = &nodes[5];
    let (code, out, err) = client(
        nodes[2].addr,
        OVERLAY,
        &["--identity", key_s, "--json", "diag", &target.id],
    );
    assert_eq!(code, 0, "{out} {err}");
    let j = json_of(&out);
    for name in [
        "status",
        "routing-table-size",
        "software-version",
        "machine-uptime",
        "uptime",
        "memory",
        "stored-bytes",
        "stored-values",
        "messages",
        "routing-table",
        "storage",
        "neighbor-rtt",
        "nat",
        "addresses",
    ] {
        assert!(!j[name].is_null(), "kind {name} missing: {out}");
    }
    assert!(j["memory"].as_u64().unwrap() > 1 << 20, "{out}");
    assert_eq!(j["nat"]["state"], "public");
    assert!(j["software-version"]
        .as_str()
        .unwrap()
        .starts_with("p2psip "));
    // Some kinds only.
    let (code, out, _) = client(
        nodes[2].addr,
        OVERLAY,
        &[
            "--identity",
            key_s,
            "--json",
            "diag",
            &target.id,
            "--kinds",
            "uptime,memory",
        ],
    );
    assert_eq!(code, 0);
    let j = json_of(&out);
    assert!(j["uptime"].is_u64() && j["memory"].is_u64() && j["routing-table"].is_null());

    // Anyone else: Forbidden for the operators' kinds (exit status 3), the public ones
    // are answered.
    let (code, out, err) = client(nodes[2].addr, OVERLAY, &["diag", &target.id]);
    assert_eq!(
        code, 3,
        "a non-operator's diag was not refused: {out} {err}"
    );
    assert!(
        err.contains("FORBIDDEN") || err.contains("Forbidden"),
        "{err}"
    );
    let (code, out, err) = client(
        nodes[2].addr,
        OVERLAY,
        &["diag", &target.id, "--kinds", "uptime,software-version"],
    );
    assert_eq!(code, 0, "{out} {err}");
    let (code, _, err) = client(
        nodes[2].addr,
        OVERLAY,
        &["diag", &target.id, "--kinds", "bogus"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown diagnostic kind"), "{err}");

    // routing-table and storage: the admitting peer's view.
    for i in 0..5 {
        let (code, out, err) = client(nodes[0].addr, OVERLAY, &["store", &format!("v{i}"), "x"]);
        assert_eq!(code, 0, "{out} {err}");
    }
    let (code, out, err) = client(
        nodes[4].addr,
        OVERLAY,
        &["--identity", key_s, "routing-table"],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("successors") && out.contains("rtt"), "{out}");
    println!("{out}");
    let (code, out, _) = client(
        nodes[4].addr,
        OVERLAY,
        &["--identity", key_s, "--json", "routing-table"],
    );
    assert_eq!(code, 0);
    let j = json_of(&out);
    let succ = j["routing-table"]["successors"].as_array().unwrap();
    assert!(!succ.is_empty());
    for s in succ {
        assert!(ring.contains(s.as_str().unwrap()), "unknown successor {s}");
    }
    let total: u64 = nodes
        .iter()
        .map(|n| {
            let (code, out, _) =
                client(n.addr, OVERLAY, &["--identity", key_s, "--json", "storage"]);
            assert_eq!(code, 0);
            json_of(&out)["storage"]["values"].as_u64().unwrap()
        })
        .sum();
    // Five values, three copies each (once replication has run).
    assert!(total >= 5, "{total} values in all");
    let (code, out, _) = client(nodes[4].addr, OVERLAY, &["--identity", key_s, "storage"]);
    assert_eq!(code, 0);
    assert!(out.contains("resources") && out.contains("values"), "{out}");
    println!("{out}");
    let (code, _, _) = client(nodes[4].addr, OVERLAY, &["storage"]);
    assert_eq!(code, 3, "storage shown to a non-operator");

    // doctor against two peers: both reached over UDP, this host public (exit status 0);
    // a stream relayed back through node 8 comes back, node 9 relays for nobody.
    let out = std::process::Command::new(BIN)
        .args(["doctor", "--json", "--overlay", OVERLAY, "--peer"])
        .arg(nodes[8].addr.to_string())
        .arg("--peer")
        .arg(nodes[9].addr.to_string())
        .output()
        .unwrap();
    let j = json_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{j}");
    assert_eq!(
        (j["nat"].as_str(), j["reached"].as_u64()),
        (Some("public"), Some(2)),
        "{j}"
    );
    assert_eq!(j["relays"], 1, "{j}");
    let peer = |a: std::net::SocketAddr| {
        j["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == a.to_string())
            .unwrap()
            .clone()
    };
    assert!(peer(nodes[8].addr)["relay_ms"].is_number(), "{j}");
    assert!(peer(nodes[9].addr)["relay_error"].is_string(), "{j}");
    println!("doctor: {j}");
}
