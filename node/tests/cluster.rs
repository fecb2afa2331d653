//! Ten real `p2psip node` processes on 127.0.0.1: values stored through one are fetched
//! through every other with `p2psip client`; three SIGKILLed peers lose no value; a
//! restarted peer comes back with its data dir; every /metrics parses and moves.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const OVERLAY: &str = "cluster.test";

/// The Chord peer among `nodes` responsible for the value stored under `name` (the
/// successor of its Resource-ID on the ring).
fn responsible<'a>(nodes: &'a [NodeProc], name: &str) -> &'a NodeProc {
    let key = p2psip_algorithms::Id::hash_of(name.as_bytes()).0;
    let id = |n: &NodeProc| u128::from_str_radix(&n.id, 16).unwrap();
    nodes
        .iter()
        .filter(|n| id(n) >= key)
        .min_by_key(|n| id(n))
        .or_else(|| nodes.iter().min_by_key(|n| id(n)))
        .unwrap()
}

/// The first `count` names `user0`, `user1`, ... whose responsible peer is (or, with
/// `held` false, is not) `peer`.
fn names_held(nodes: &[NodeProc], peer: &NodeProc, held: bool, count: usize) -> Vec<String> {
    (0..)
        .map(|v| format!("user{v}"))
        .filter(|name| (responsible(nodes, name).id == peer.id) == held)
        .take(count)
        .collect()
}

fn fetch(peer: &NodeProc, name: &str) -> Option<String> {
    let (code, out, _) = client(peer.addr, OVERLAY, &["fetch", name]);
    (code == 0).then(|| out.trim().to_string())
}

#[test]
fn ten_processes_store_fetch_survive_kills_and_restart() {
    let root = TempDir::new("cluster");
    let mut nodes: Vec<NodeProc> = Vec::new();
    let first = start_node(&root.0.join("n0"), OVERLAY, &[], "127.0.0.1:0");
    let boot = first.addr;
    nodes.push(first);
    for i in 1..10 {
        nodes.push(start_node(
            &root.0.join(format!("n{i}")),
            OVERLAY,
            &[boot],
            "127.0.0.1:0",
        ));
    }
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(30), || joined(n).then_some(())).is_some(),
            "node {} did not join; stderr:\n{}",
            n.id,
            std::fs::read_to_string(&n.stderr_log).unwrap_or_default()
        );
    }

    // One value stored through node 0 is fetched through every other node.
    let (code, out, err) = client(
        nodes[0].addr,
        OVERLAY,
        &["store", "alice", "sip:alice@192.0.2.1"],
    );
    assert_eq!(code, 0, "store failed: {out} {err}");
    // (Right after the joins the ring may still be settling: each fetch may be retried for
    // a bounded time until the peers agree who is responsible.)
    for n in &nodes[1..] {
        let got = eventually(Duration::from_secs(20), || {
            fetch(n, "alice").filter(|v| v == "sip:alice@192.0.2.1")
        });
        assert!(got.is_some(), "alice not fetchable through {}", n.id);
    }
    // More values, each through a different node.
    for v in 0..20 {
        let name = format!("user{v}");
        let (code, out, err) = client(
            nodes[v % 10].addr,
            OVERLAY,
            &["store", &name, &format!("value-{v}")],
        );
        assert_eq!(code, 0, "store {name}: {out} {err}");
    }

    // Every /metrics parses, and the counters moved.
    for n in &nodes {
        let text = scrape(n.metrics).expect("metrics answer");
        let s = parse_prometheus(&text);
        assert!(
            metric_sum(&s, "p2psip_messages_total", &[("direction", "in")]) > 0.0,
            "{}",
            n.id
        );
        assert!(metric_sum(&s, "p2psip_messages_total", &[("direction", "out")]) > 0.0);
        assert!(metric_sum(&s, "p2psip_transport_connections_open", &[]) >= 1.0);
        assert!(metric_sum(&s, "p2psip_uptime_seconds", &[]) > 0.0);
        for name in [
            "p2psip_routing_fingers",
            "p2psip_messages_forwarded_total",
            "p2psip_replication_stores_total",
            "p2psip_overlay_events_total",
        ] {
            assert!(
                s.iter().any(|(m, _, _)| m == name),
                "{name} missing on {}",
                n.id
            );
        }
    }
    // Three copies of each of the 21 values, as the storage gauges report them (they are
    // exported every second, replication runs in the background).
    let copies = eventually(Duration::from_secs(10), || {
        let total: f64 = nodes
            .iter()
            .map(|n| {
                scrape(n.metrics).map_or(0.0, |t| {
                    metric_sum(&parse_prometheus(&t), "p2psip_storage_values", &[])
                })
            })
            .sum();
        (total >= 21.0 * 3.0).then_some(total)
    });
    assert!(copies.is_some(), "21 values x 3 copies not reached");

    // SIGKILL three peers: not node 0 (the bootstrap), and no two of them adjacent on the
    // ring. (Three copies on consecutive peers cannot survive the loss of all three; with
    // three random kills among ten that happens about one run in twelve.)
    let mut ring: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    ring.sort();
    let pos = |id: &str| ring.iter().position(|x| x == id).unwrap();
    let mut victims: Vec<String> = Vec::new();
    // Candidates holding the most copies first: the first victim is restarted later and
    // must have had data to come back with.
    let held = |n: &NodeProc| {
        scrape(n.metrics).map_or(0.0, |t| {
            metric_sum(&parse_prometheus(&t), "p2psip_storage_values", &[])
        })
    };
    let mut candidates: Vec<(f64, &NodeProc)> = nodes[1..].iter().map(|n| (held(n), n)).collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, n) in candidates {
        let p = pos(&n.id);
        let near = |v: &String| {
            let q = pos(v);
            (p + 10 - q) % 10 <= 1 || (q + 10 - p) % 10 <= 1
        };
        if victims.len() < 3 && !victims.iter().any(near) {
            victims.push(n.id.clone());
        }
    }
    assert_eq!(victims.len(), 3);
    // The victim to restart holds its copies in its database: each was committed before
    // it was acknowledged, so no wait for a snapshot is needed before the kill.
    for v in &victims[..1] {
        let dir = nodes.iter().find(|n| &n.id == v).unwrap().data_dir.clone();
        assert!(
            dir.join("store.redb").exists(),
            "no database in {}",
            dir.display()
        );
    }
    let mut killed: Vec<NodeProc> = Vec::new();
    for v in &victims {
        let k = nodes.iter().position(|n| &n.id == v).unwrap();
        killed.push(nodes.remove(k));
    }
    let restart_dir = killed[0].data_dir.clone();
    let restart_id = killed[0].id.clone();
    let restart_cfg = killed[0].config.clone();
    drop(killed); // Drop sends SIGKILL and reaps.
    for v in 0..20 {
        let name = format!("user{v}");
        let want = format!("value-{v}");
        let via = &nodes[v % nodes.len()];
        let got = eventually(Duration::from_secs(30), || {
            fetch(via, &name).filter(|g| *g == want)
        });
        if got.is_none() {
            let (code, out, err) = client(via.addr, OVERLAY, &["fetch", &name]);
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| std::fs::read_to_string(&n.stderr_log).unwrap_or_default())
                .collect();
            panic!(
                "{name} lost after 3 SIGKILLs (via {}): {code} {out} {err}\nlogs of the survivors:\n{}",
                via.id,
                logs.join("\n----\n")
            );
        }
    }
    let alice = eventually(Duration::from_secs(20), || {
        fetch(&nodes[1], "alice").filter(|v| v == "sip:alice@192.0.2.1")
    });
    assert!(alice.is_some(), "alice lost after 3 SIGKILLs");

    // Restart one killed peer with its data dir: same identity, back in the ring.
    let back = spawn_node(&restart_dir, restart_cfg);
    assert_eq!(back.id, restart_id, "the data dir keeps the identity");
    assert!(
        eventually(Duration::from_secs(30), || joined(&back).then_some(())).is_some(),
        "restarted node did not rejoin; stderr:\n{}",
        std::fs::read_to_string(&back.stderr_log).unwrap_or_default()
    );
    assert!(
        eventually(Duration::from_secs(20), || fetch(&back, "user7")
            .filter(|v| v == "value-7"))
        .is_some(),
        "user7 not fetchable through the restarted node"
    );
    // It came back with its data: the snapshot was restored at start.
    let log = std::fs::read_to_string(&back.stderr_log).unwrap();
    let restored: usize = log
        .lines()
        .find(|l| l.contains("restored stored data"))
        .and_then(|l| l.split("values=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or(0);
    assert!(restored > 0, "restarted node restored no data; log:\n{log}");

    // SIGTERM: the node leaves gracefully (hands its data over, tells its neighbours) and
    // exits 0; nothing is lost.
    let mut leaving = nodes.remove(2);
    let pid = leaving.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = eventually(Duration::from_secs(15), || {
        leaving.child.try_wait().ok().flatten()
    });
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not end the node cleanly: {status:?}"
    );
    let log = std::fs::read_to_string(&leaving.stderr_log).unwrap();
    assert!(
        log.contains("leaving the overlay") && log.contains("left the overlay"),
        "{log}"
    );
    for v in 0..20 {
        let name = format!("user{v}");
        let want = format!("value-{v}");
        let via = &nodes[v % nodes.len()];
        assert!(
            eventually(Duration::from_secs(20), || fetch(via, &name)
                .filter(|g| *g == want))
            .is_some(),
            "{name} lost after a graceful leave"
        );
    }
}

/// Links the given nodes closed as unacknowledged (`p2psip_links_unacknowledged_total`).
fn unacknowledged_links<'a>(nodes: impl Iterator<Item = &'a NodeProc>) -> f64 {
    nodes
        .filter_map(|n| scrape(n.metrics))
        .map(|t| {
            metric_sum(
                &parse_prometheus(&t),
                "p2psip_links_unacknowledged_total",
                &[],
            )
        })
        .sum()
}

/// `n` peer processes under `root` with the daemon's own transport timers (not the fast
/// ones of `common::write_config`) plus the configuration `tables` (TOML tables), joined:
/// the first forms the overlay, the others join through it.
fn daemon_fleet(root: &TempDir, n: usize, tables: &str) -> Vec<NodeProc> {
    let config = |dir: &std::path::Path, boot: &[std::net::SocketAddr]| {
        std::fs::create_dir_all(dir).unwrap();
        let boot: Vec<String> = boot.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "overlay = \"{OVERLAY}\"\nlisten = \"127.0.0.1:0\"\nbootstrap = [{}]\n\
             {tables}[log]\nlevel = \"info\"\n",
            boot.join(", ")
        );
        let p = dir.join("p2psip.toml");
        std::fs::write(&p, text).unwrap();
        spawn_node(dir, p)
    };
    let mut nodes = vec![config(&root.0.join("n0"), &[])];
    let boot = nodes[0].addr;
    for i in 1..n {
        nodes.push(config(&root.0.join(format!("n{i}")), &[boot]));
    }
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(30), || joined(n).then_some(())).is_some(),
            "node {} did not join",
            n.id
        );
    }
    nodes
}

/// A peer that stops answering without closing anything (frozen with SIGSTOP, as a host
/// that lost power or its network would): the peers that send to it notice within the hop
/// acknowledgement (proto/SPEC.md 2.6), not the QUIC idle timeout (45 s by default), and
/// every value it held is fetched from its replicas at once. Here with the 300 ms slack the
/// simulator models.
#[test]
fn a_frozen_peer_is_routed_around_within_the_hop_acknowledgement() {
    frozen_peer_is_routed_around(
        "frozen",
        "[timers]\nhop_ack_slack_ms = 300\n",
        Duration::from_secs(5),
    );
}

/// The same with the daemon's default timers: with the hop acknowledgement off by default
/// (until 2026-12-07), fetches whose route crossed the frozen peer waited for the QUIC idle
/// timeout (45 s) or for their retransmissions; the fleet test saw fetches through a killed
/// peer time out 40 s after the kill.
#[test]
fn a_frozen_peer_is_routed_around_with_the_default_timers() {
    frozen_peer_is_routed_around("frozen-defaults", "", Duration::from_secs(8));
}

/// Five peers (`timers` added to their configuration, fast stabilisation) hold 20 values;
/// one is frozen; fetching every value through two others must succeed, each within
/// `bound`, and some peer must have closed its link to the frozen one as unacknowledged.
fn frozen_peer_is_routed_around(tag: &str, timers: &str, bound: Duration) {
    let root = TempDir::new(tag);
    // Fast stabilisation only, so the five peers settle quickly; the transport timers are
    // the daemon's defaults (25 s keep-alive, 45 s idle timeout) unless `timers` says.
    let nodes = daemon_fleet(
        &root,
        5,
        &format!("{timers}[chord]\nstabilize_interval_s = 1\nfinger_interval_s = 2\n"),
    );
    // Five values the frozen peer is responsible for (so that fetches must reach it
    // first, whatever the random ring), fifteen it is not.
    let frozen = &nodes[3];
    let mut names = names_held(&nodes, frozen, true, 5);
    names.extend(names_held(&nodes, frozen, false, 15));
    for (v, name) in names.iter().enumerate() {
        let (code, out, err) = client(nodes[v % 5].addr, OVERLAY, &["store", name, "x"]);
        assert_eq!(code, 0, "store {name}: {out} {err}");
    }
    // Every node has sent to every other (links are up in both directions) before the
    // freeze: wait until all 20 are fetched through node 0.
    for name in &names {
        assert!(
            eventually(Duration::from_secs(20), || fetch(&nodes[0], name)).is_some(),
            "{name} before the freeze"
        );
    }
    let pid = frozen.child.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let start = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let mut failed = Vec::new();
    for (v, name) in names.iter().enumerate() {
        let t = std::time::Instant::now();
        if fetch(&nodes[(v % 2) * 4], name).as_deref() != Some("x") {
            failed.push(name.clone());
        }
        slowest = slowest.max(t.elapsed());
    }
    let took = start.elapsed();
    let unacked = unacknowledged_links(nodes.iter().filter(|n| n.id != nodes[3].id));
    signal("-CONT");
    eprintln!("20 fetches with one peer frozen: {took:?}, slowest {slowest:?}, {unacked} links closed unacknowledged");
    assert!(
        failed.is_empty(),
        "fetches failed with a peer frozen: {failed:?}"
    );
    assert!(
        slowest < bound,
        "a fetch waited {slowest:?}: the frozen peer was not routed around within {bound:?}"
    );
    assert!(unacked >= 1.0, "the hop acknowledgement closed no link");
}

/// A fleet under load is slow, not dead: 20 peers with the daemon's defaults, 64
/// operations in flight and 8 copies of every value (the OpenDHT bench's settings). With
/// the hop acknowledgement on by default (commit 5cae9ef) its peers' acknowledgements came
/// late, it closed links of live peers and the fleet failed operations: 719 of them and
/// 358 links here, 622 of 1,000 puts and every get in the bench. Now it is off by default.
#[test]
fn a_loaded_fleet_closes_no_link_of_a_live_peer() {
    let root = TempDir::new("loaded");
    let nodes = daemon_fleet(&root, 20, "[chord]\nsuccessors = 8\nreplicas = 7\n");
    let boot = nodes[0].addr;
    let last = nodes[nodes.len() - 1].addr.to_string();
    // The bench's own client timeout (2 s), not the tests' 10 s.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_p2psip"))
        .args([
            "client",
            "--peer",
            &last,
            "--overlay",
            OVERLAY,
            "--timeout",
            "2s",
        ])
        .args([
            "bench",
            "--count",
            "300",
            "--duration",
            "8s",
            "--window",
            "64",
        ])
        .args(["--check-peer", &boot.to_string()])
        .output()
        .unwrap();
    let code = run.status.code().unwrap_or(-1);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(code, 0, "bench through {last}: {err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("the bench's JSON");
    let unacked = unacknowledged_links(nodes.iter());
    eprintln!(
        "  puts failed {}, found {} of 300, {} ops/s with {} failed, {unacked} links closed unacknowledged",
        r["put"]["failed"], r["get"]["found"], r["throughput"]["ops_per_s"], r["throughput"]["failed"]
    );
    assert_eq!(r["put"]["failed"], 0, "puts failed");
    assert_eq!(r["get"]["found"], 300, "values not found");
    // The throughput phase's operations time out at 2 s: on a machine that runs other
    // tests beside this one a few may, whatever the links do (before: 15% of them).
    let (ops, failed) = (
        r["throughput"]["ops_per_s"].as_f64().unwrap_or(0.0) * 8.0,
        r["throughput"]["failed"].as_f64().unwrap_or(f64::MAX),
    );
    assert!(
        failed <= ops / 100.0,
        "{failed} operations under load failed of about {ops}"
    );
    assert_eq!(unacked, 0.0, "links of live peers closed as unacknowledged");
}

/// An overlay whose peers run with message signatures off (`security.sign_messages =
/// false`, which every member must share) can be used from the command line: `client
/// --unsigned-messages` stores and fetches through it, and a client that signs gets no
/// answer that came through another peer (unsigned, so not taken). An answer straight
/// from its admitting peer, over their link, would be taken (link-authenticated,
/// proto/SPEC.md 5.4): the value is chosen so that the other peer is responsible.
/// (Before: the client always signed and took only signed answers, so nothing worked, and
/// the OpenDHT bench could not compare signatures on and off.)
#[test]
fn the_client_speaks_to_an_overlay_without_message_signatures() {
    let root = TempDir::new("unsigned");
    let nodes = daemon_fleet(&root, 2, "[security]\nsign_messages = false\n");
    let peer = nodes[1].addr;
    let (code, out, err) = client(peer, OVERLAY, &["--unsigned-messages", "store", "bob", "x"]);
    assert_eq!(code, 0, "unsigned store: {out} {err}");
    let (code, out, err) = client(peer, OVERLAY, &["--unsigned-messages", "fetch", "bob"]);
    assert_eq!(code, 0, "unsigned fetch: {out} {err}");
    assert!(out.contains('x'), "{out}");
    let elsewhere = names_held(&nodes, &nodes[1], false, 1).remove(0);
    let signed = std::process::Command::new(env!("CARGO_BIN_EXE_p2psip"))
        .args(["client", "--peer", &peer.to_string(), "--overlay", OVERLAY])
        .args(["--timeout", "3s", "store", &elsewhere, "y"])
        .output()
        .unwrap();
    assert_ne!(
        signed.status.code(),
        Some(0),
        "a signing client's store went through an unsigned overlay"
    );
}
