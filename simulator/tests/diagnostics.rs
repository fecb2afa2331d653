//! Overlay diagnostics in the simulator (proto/SPEC.md 4.1): a PathTrack walk from a
//! client crosses the peers a routed request crosses and ends at the responsible peer, for
//! each algorithm; a diagnostic Ping answers every kind asked to an operator and refuses
//! the operators' kinds to anyone else.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::kademlia::KademliaConfig;
use p2psip_algorithms::path_walk::{End, PathWalk, Step};
use p2psip_algorithms::{AlgorithmParams, Event, HostInfo, Id};
use p2psip_proto::diagnostics as kinds;
use p2psip_proto::{pb, Body};
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

fn path_track(sim: &mut Sim, c: usize, at: Option<Id>, target: Id) -> pb::PathTrackAns {
    let ask = kinds::PATH_TRACK_DEFAULT.to_vec();
    let e = sim
        .op(c, move |n, t| n.path_track(t, at, target, ask))
        .unwrap();
    match e {
        Event::Completed {
            outcome: Ok(Body::PathTrackAns(a)),
            ..
        } => a,
        other => panic!("path track at {at:?}: {other:?}"),
    }
}

/// Walks the path to `target` from client `c` and checks it against the via list the
/// responsible peer saw and against the ring.
fn check_walks(sim: &mut Sim, c: usize, targets: usize) -> usize {
    let admitting = sim.node(c).unwrap().routing_table().successors[0];
    let members: std::collections::BTreeSet<Id> = sim.live_ring().into_iter().collect();
    let algo = sim.algorithm.clone();
    let mut longest = 0;
    for k in 0..targets {
        let target = Id::hash_of(format!("target-{k}").as_bytes());
        let (mut walk, mut step) = PathWalk::new(target, admitting, 32);
        while let Step::Ask(n) = step {
            let ans = path_track(sim, c, Some(n), target);
            step = walk.on_answer(ans);
        }
        assert_eq!(walk.end(), Some(&End::Responsible), "walk to {target}");
        let hops: Vec<Id> = walk.hops.iter().map(|h| h.node).collect();
        // Ends at the peer the ring says is responsible.
        assert_eq!(
            hops.last().copied(),
            algo.responsible(&members, target),
            "path {hops:?}"
        );
        // The same peers as a request routed to the target crossed: the responsible
        // peer's via list (the client first) and then the responsible peer itself.
        let routed = path_track(sim, c, None, target);
        let mut via: Vec<Id> = routed
            .via
            .iter()
            .map(|b| Id::from_slice(b).unwrap())
            .collect();
        assert_eq!(via.first().copied(), Some(sim.id(c)));
        via.remove(0);
        via.push(Id::from_slice(&routed.next_hop).unwrap());
        assert!(routed.responsible);
        assert_eq!(hops, via, "walk vs routed path to {target}");
        // Each hop answered the default kinds: its addresses, uptime and load.
        for h in &walk.hops {
            let got: Vec<u32> = h.diagnostics.iter().map(|d| d.kind).collect();
            assert_eq!(got, kinds::PATH_TRACK_DEFAULT, "{}", h.node);
        }
        longest = longest.max(hops.len());
    }
    longest
}

#[test]
fn path_track_follows_the_routed_path_to_the_responsible_peer() {
    let kad = AlgorithmParams::Kademlia(KademliaConfig::default());
    let onehop = AlgorithmParams::default_for("onehop").unwrap();
    for (seed, algo) in [(71, chord()), (72, kad), (73, onehop)] {
        let name = algo.name();
        let mut sim = overlay(seed, 40, algo, NetConfig::default());
        let c = sim.add_node();
        let peer = random_live(&mut sim);
        let pid = sim.id(peer);
        sim.start_client(c, pid);
        sim.run_for(Duration::from_secs(1));
        let longest = check_walks(&mut sim, c, 20);
        println!("{name}: 20 walks, longest {longest} hops");
        if name != "onehop" {
            assert!(longest >= 3, "{name}: no walk crossed several peers");
        }
    }
}

#[test]
fn a_diagnostic_ping_answers_operators_and_refuses_the_others() {
    let mut sim = overlay(74, 20, chord(), NetConfig::default());
    let (op_client, other) = (sim.add_node(), sim.add_node());
    let target = random_live(&mut sim);
    let tid = sim.id(target);
    let gate = random_live(&mut sim);
    let admitting = sim.id(gate);
    sim.start_client(op_client, admitting);
    sim.start_client(other, admitting);
    sim.run_for(Duration::from_secs(1));
    store_user_value(&mut sim, op_client, 3, 600);
    let operator = sim.id(op_client);
    let now = sim.now();
    let n = sim.node_mut(target).unwrap();
    n.set_diagnostics_access(false, vec![operator]);
    n.set_host_info(
        now,
        HostInfo {
            software: "p2psip test".into(),
            addresses: vec!["192.0.2.7:4000".into()],
            memory_bytes: 12 << 20,
            nat_state: "public".into(),
            ..Default::default()
        },
    );
    let every: Vec<u32> = kinds::KINDS.iter().map(|k| k.0).collect();
    let ask = |sim: &mut Sim, who: usize, what: Vec<u32>| {
        sim.op(who, move |n, t| n.diagnose(t, tid, what)).unwrap()
    };
    // The operator gets an answer for every kind, in the order asked.
    let Event::Completed {
        outcome: Ok(Body::PingAns(p)),
        responder,
        ..
    } = ask(&mut sim, op_client, every.clone())
    else {
        panic!("the operator's diagnostic ping failed")
    };
    assert_eq!(responder, Some(tid));
    let got: Vec<u32> = p.diagnostics.iter().map(|d| d.kind).collect();
    assert_eq!(got, every);
    let value = |k: u32| {
        p.diagnostics
            .iter()
            .find(|d| d.kind == k)
            .and_then(|d| d.value.clone())
    };
    use pb::diagnostic_info::Value;
    assert_eq!(
        value(kinds::SOFTWARE_VERSION),
        Some(Value::Text("p2psip test".into()))
    );
    assert_eq!(
        value(kinds::MEMORY_FOOTPRINT),
        Some(Value::Number(12 << 20))
    );
    let Some(Value::RoutingTable(rt)) = value(kinds::ROUTING_TABLE) else {
        panic!("no routing table")
    };
    let truth = sim.node(target).unwrap().routing_table();
    assert_eq!(rt.successors.len(), truth.successors.len());
    assert_eq!(rt.algorithm, "chord");
    let Some(Value::Storage(st)) = value(kinds::STORAGE) else {
        panic!("no storage")
    };
    let held = sim.node(target).unwrap().storage().value_count() as u64;
    assert_eq!(st.values, held);
    // Anyone else: Forbidden for an operators' kind, answered for the public ones.
    let e = ask(
        &mut sim,
        other,
        vec![kinds::APP_UPTIME, kinds::ROUTING_TABLE],
    );
    let Event::Completed {
        outcome: Err(err), ..
    } = e
    else {
        panic!("an operators' kind was answered to a non-operator: {e:?}")
    };
    assert_eq!(err.code, pb::ErrorCode::Forbidden);
    let e = ask(
        &mut sim,
        other,
        vec![kinds::APP_UPTIME, kinds::SOFTWARE_VERSION],
    );
    let Event::Completed {
        outcome: Ok(Body::PingAns(p)),
        ..
    } = e
    else {
        panic!("public kinds refused: {e:?}")
    };
    assert_eq!(p.diagnostics.len(), 2);
    // More kinds than allowed in one request: Invalid_Message.
    let many: Vec<u32> = (1..=40).map(|k| 0x9000 + k).collect();
    let e = ask(&mut sim, op_client, many);
    let Event::Completed {
        outcome: Err(err), ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(err.code, pb::ErrorCode::InvalidMessage);
}
