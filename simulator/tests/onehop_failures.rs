//! One-hop membership failures: a failure event gossiped by a member is applied only after
//! the receiver's own probe of the member fails (proto/SPEC.md 4.3), so a member that makes
//! up another's failure evicts it nowhere, and a real crash still leaves every table.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::{AlgorithmParams, NextHop, NodeId};
use p2psip_proto::{pb, Body, Destination, OwnedHeader};
use p2psip_simulator::{signed_message, NetConfig, Sim};
use prost::Message as _;
use std::time::Duration;

fn onehop() -> AlgorithmParams {
    AlgorithmParams::default_for("onehop").unwrap()
}

/// Live peers (other than `x`) whose membership holds `x`.
fn holding(sim: &Sim, x: NodeId) -> usize {
    (0..sim.len())
        .filter(|i| sim.is_up(*i) && sim.id(*i) != x)
        .filter(|i| {
            sim.node(*i)
                .is_some_and(|n| n.topology().next_hop(x) == NextHop::Forward(x))
        })
        .count()
}

/// An Update from `from` to `to`, over their link, carrying one event "`x` failed" to be
/// passed on at `ttl` levels, signed by `from` (a member can sign only as itself).
fn failure_gossip(sim: &Sim, from: usize, to: usize, x: NodeId, stamp: u64, tx: u64) -> Vec<u8> {
    gossip(sim, from, to, x, false, stamp, tx)
}

/// An Update from `from` to `to` over their link carrying one event about `x`.
fn gossip(
    sim: &Sim,
    from: usize,
    to: usize,
    x: NodeId,
    alive: bool,
    stamp: u64,
    tx: u64,
) -> Vec<u8> {
    let overlay = p2psip_proto::overlay_id(&sim.node(from).unwrap().config().overlay);
    let update = pb::OneHopUpdate {
        events: vec![pb::MembershipEvent {
            node: x.to_bytes().to_vec(),
            alive,
            stamp,
            span: 0,
        }],
        ttl: 10,
        ..Default::default()
    };
    let body: Body = pb::UpdateReq {
        algorithm: "onehop".into(),
        overlay_specific: update.encode_to_vec(),
    }
    .into();
    let header = OwnedHeader {
        via: vec![Destination::Node(sim.id(from))],
        ..OwnedHeader::new(overlay, tx, Destination::Node(sim.id(to)))
    };
    signed_message(sim.identity(from), header, body).unwrap()
}

#[test]
fn a_made_up_failure_of_a_live_member_evicts_it_nowhere() {
    let n = 64;
    let mut sim = overlay(71, n, onehop(), NetConfig::default());
    let (forger, victim) = (3, 7);
    let x = sim.id(20);
    assert_eq!(
        holding(&sim, x),
        n - 1,
        "settled: every peer knows member 20"
    );
    // The forger tells its neighbour, twice a second for 20 s, that member 20 failed (a
    // newer stamp each time, as a refutation would carry).
    let mut fewest = n - 1;
    for k in 0..40u64 {
        let stamp = sim.now().as_millis() + 1_000;
        let bytes = failure_gossip(&sim, forger, victim, x, stamp, 0x00f0_0000 + k);
        let fid = sim.id(forger);
        sim.inject(victim, fid, bytes);
        for _ in 0..5 {
            sim.run_for(Duration::from_millis(100));
            fewest = fewest.min(holding(&sim, x));
        }
    }
    assert_eq!(
        fewest,
        n - 1,
        "peers that dropped live member 20 on the forger's word: {}",
        n - 1 - fewest
    );
}

#[test]
fn a_made_up_arrival_enters_no_table() {
    let n = 64;
    let mut sim = overlay(73, n, onehop(), NetConfig::default());
    let (forger, victim) = (3, 7);
    // An id no peer has, next to a live one: it would take over part of its range.
    let fake = p2psip_algorithms::Id(sim.id(20).0.wrapping_sub(1));
    let stamp = sim.now().as_millis();
    let bytes = gossip(&sim, forger, victim, fake, true, stamp, 0x00f1_0000);
    let fid = sim.id(forger);
    sim.inject(victim, fid, bytes);
    let mut most = 0;
    for _ in 0..100 {
        sim.run_for(Duration::from_millis(100));
        most = most.max(holding(&sim, fake));
    }
    assert_eq!(most, 0, "peers that took the made-up id into their tables");
}

/// Runs until the live peers holding `x` number `want(held)` (at most 120 s); how long
/// that took.
fn until(sim: &mut Sim, x: NodeId, what: &str, want: impl Fn(usize, usize) -> bool) -> Duration {
    let start = sim.elapsed();
    while sim.elapsed() - start < Duration::from_secs(120) {
        sim.run_for(Duration::from_millis(100));
        let live = (0..sim.len())
            .filter(|i| sim.is_up(*i) && sim.id(*i) != x)
            .count();
        if want(holding(sim, x), live) {
            return sim.elapsed() - start;
        }
    }
    panic!(
        "{what}: {} peers hold the member after 120 s",
        holding(sim, x)
    )
}

fn mean_max(v: &[Duration]) -> String {
    let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
    let max = v.iter().max().copied().unwrap_or_default();
    format!("mean {mean:.1?}, max {max:.1?}")
}

#[test]
fn crashes_leaves_and_joins_reach_every_table() {
    let n = 64;
    let mut sim = overlay(72, n, onehop(), NetConfig::default());
    let (mut crash, mut leave, mut join) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..5 {
        let x = sim.id(10 + k);
        sim.crash(10 + k);
        crash.push(until(&mut sim, x, "crash", |held, _| held == 0));
        let y = sim.id(30 + k);
        sim.leave(30 + k);
        leave.push(until(&mut sim, y, "leave", |held, _| held == 0));
        let j = sim.add_node();
        let boot = sim.id(50 + k);
        sim.start(j, &[boot]);
        let z = sim.id(j);
        join.push(until(&mut sim, z, "join", |held, live| held == live));
    }
    // Printed for docs/security.md (cargo test --release -p p2psip-simulator --test
    // onehop_failures -- --nocapture). A crash: the links' failure after 2 s, then up to
    // log2(64) = 6 gossip levels of 1 s, each receiver probing the node first.
    println!(
        "one-hop, {n} peers, 5 of each: crash gone from every table {}; leave {}; join in every table {}",
        mean_max(&crash),
        mean_max(&leave),
        mean_max(&join)
    );
}
