//! Nodes behind NATs at scale: the core's reachability decisions (the NAT verdict from
//! peers' reports, candidates, direct or relayed connections) over the simulator's NAT
//! model, asserting what the NAT lab (node/tests/natlab.rs) asserts on real routers.
#![allow(clippy::unwrap_used)]

use p2psip_simulator::nat::{self, NatKind};
use p2psip_simulator::Scenario;

fn scenario(nodes: usize, connections: usize) -> Scenario {
    let mut sc = Scenario {
        name: "nat".into(),
        nodes,
        seed: 11,
        ..Scenario::default()
    };
    sc.nat.behind = 0.3;
    sc.nat.symmetric = 0.5;
    sc.nat.connections = connections;
    sc
}

#[test]
fn two_thousand_nodes_thirty_percent_behind_nats_connect_directly_punched_or_relayed() {
    use NatKind::*;
    let r = nat::run(&scenario(2000, 1500)).unwrap();
    println!("{}\n{}", r.summary(), r.table());
    let natted = r.kinds["cone"] + r.kinds["symmetric"];
    assert!((500..700).contains(&natted), "{:?}", r.kinds);
    // Every node found out what it is behind, and no node behind a NAT routes.
    assert_eq!(r.verdicts.get("cone as nat"), Some(&r.kinds["cone"]));
    assert_eq!(
        r.verdicts.get("symmetric as symmetric-nat"),
        Some(&r.kinds["symmetric"])
    );
    // The node that formed the overlay dialled nobody: nobody told it what it is.
    assert_eq!(r.verdicts.get("open as unknown"), Some(&1));
    assert_eq!(
        r.verdicts.get("open as public"),
        Some(&(r.kinds["open"] - 1))
    );
    assert_eq!(r.natted_routing, 0);
    assert_eq!(r.open_not_routing, 0);
    // Every client joined through a bootstrap peer, found the peer responsible for its
    // Node-ID and moved there (that peer is where requests to it are routed).
    assert_eq!(r.clients, natted);
    assert_eq!(r.clients_located, r.clients);
    assert!(r.moves as usize >= r.clients * 9 / 10, "{} moves", r.moves);
    let all: u64 = r.paths.values().map(|p| p.attempted).sum();
    assert!(all >= 1400, "{all} connections attempted");
    for (k, p) in &r.paths {
        assert_eq!(p.failed, 0, "{k}: {p:?}");
        assert_eq!(
            p.punch_failed, 0,
            "{k}: no direct attempt where it cannot work"
        );
        assert_eq!(p.direct + p.punched + p.relayed, p.attempted, "{k}");
    }
    // An open callee is reached directly from anywhere.
    for caller in [Open, Cone, Symmetric] {
        let p = r.row(caller, Open);
        assert!(
            p.attempted > 0 && p.direct == p.attempted,
            "{caller:?}: {p:?}"
        );
    }
    // Behind a cone NAT: punched from an open node or from behind another cone NAT.
    for caller in [Open, Cone] {
        let p = r.row(caller, Cone);
        assert!(
            p.attempted > 0 && p.punched == p.attempted,
            "{caller:?}: {p:?}"
        );
    }
    // Symmetric on either side of a NATed pair: relayed.
    for (caller, callee) in [
        (Symmetric, Cone),
        (Open, Symmetric),
        (Cone, Symmetric),
        (Symmetric, Symmetric),
    ] {
        let p = r.row(caller, callee);
        assert!(
            p.attempted > 0 && p.relayed == p.attempted,
            "{caller:?} -> {callee:?}: {p:?}"
        );
    }
}
