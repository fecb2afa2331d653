//! One suite, every algorithm of the slot: convergence, lookups reaching the truly
//! responsible peer, no data loss under crashes and leaves, and a partition that heals.
//! Ground truth (who is responsible, who should hold copies) comes from the algorithm's
//! own rule, so the same assertions hold for Chord, Kademlia and one-hop.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::{AlgorithmParams, Event, Id, ALGORITHMS};
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

fn params(name: &str) -> AlgorithmParams {
    AlgorithmParams::default_for(name).unwrap()
}

/// Every algorithm as a daemon runs it, and one-hop once more with the membership tables
/// the simulator gives it at scale (a shared universe of ids, here holding half the peers).
fn setups() -> Vec<(String, AlgorithmParams, bool)> {
    let mut v: Vec<(String, AlgorithmParams, bool)> = ALGORITHMS
        .iter()
        .map(|n| (n.to_string(), params(n), false))
        .collect();
    v.extend(
        ALGORITHMS
            .iter()
            .map(|n| params(n))
            .filter(AlgorithmParams::keeps_whole_membership)
            .map(|p| (format!("{} (shared tables)", p.name()), p, true)),
    );
    // Chord once more with self-tuning maintenance (SPEC 7.1): the same assertions hold.
    if let AlgorithmParams::Chord(mut c) = params("chord") {
        c.self_tuning = true;
        v.push((
            "chord (self-tuning)".into(),
            AlgorithmParams::Chord(c),
            false,
        ));
    }
    // Kademlia with self-tuning maintenance too.
    if let AlgorithmParams::Kademlia(mut k) = params("kademlia") {
        k.self_tuning = true;
        v.push((
            "kademlia (self-tuning)".into(),
            AlgorithmParams::Kademlia(k),
            false,
        ));
    }
    // Chord and Kademlia with proximity neighbour selection: a faster node may take a
    // finger's or a bucket entry's place; the same assertions hold.
    if let AlgorithmParams::Chord(mut c) = params("chord") {
        c.proximity = true;
        v.push(("chord (proximity)".into(), AlgorithmParams::Chord(c), false));
    }
    if let AlgorithmParams::Kademlia(mut k) = params("kademlia") {
        k.proximity = true;
        v.push((
            "kademlia (proximity)".into(),
            AlgorithmParams::Kademlia(k),
            false,
        ));
    }
    v
}

/// The overlay of `n` peers for a setup.
fn build(seed: u64, n: usize, algo: AlgorithmParams, shared: bool) -> Sim {
    if shared {
        overlay_sharing(seed, n, algo, NetConfig::default(), n / 2)
    } else {
        overlay(seed, n, algo, NetConfig::default())
    }
}

/// Runs until every peer's replica set is right (at most `limit`); panics otherwise.
fn settle(sim: &mut Sim, name: &str, limit: Duration, what: &str) -> Duration {
    let start = sim.elapsed();
    while sim.elapsed() - start < limit {
        if sim.neighbourhood_errors().0 == 0 {
            return sim.elapsed() - start;
        }
        sim.run_for(Duration::from_secs(10));
    }
    let (wrong, notes) = sim.neighbourhood_errors();
    assert_eq!(
        wrong, 0,
        "{name}: {what}: {wrong} peers with a wrong replica set: {notes:?}"
    );
    limit
}

/// `count` lookups of random ids from random peers: how many the truly responsible peer
/// answered.
fn lookups(sim: &mut Sim, count: usize) -> (usize, f64) {
    let mut correct = 0;
    let mut hops = 0u64;
    for _ in 0..count {
        let from = random_live(sim);
        let target = Id(sim.random());
        let want = sim.responsible(target);
        if let Some(Event::Completed {
            outcome: Ok(_),
            responder,
            hops: h,
            ..
        }) = sim.op(from, |n, t| n.lookup(t, target))
        {
            if responder == want {
                correct += 1;
            }
            hops += u64::from(h);
        }
    }
    (correct, hops as f64 / count as f64)
}

#[test]
fn every_algorithm_converges_and_routes_to_the_responsible_peer() {
    for (name, algo, shared) in setups() {
        let mut sim = build(21, 150, algo, shared);
        assert_eq!(sim.joined_set().len(), 150, "{name}: every peer joined");
        let t = settle(&mut sim, &name, Duration::from_secs(600), "after the joins");
        let (correct, hops) = lookups(&mut sim, 300);
        eprintln!("{name}: converged {t:?} after the last join; 300 lookups, {correct} correct, mean hops {hops:.2}");
        assert_eq!(
            correct, 300,
            "{name}: lookups answered by the responsible peer"
        );
    }
}

#[test]
fn every_algorithm_keeps_all_data_through_crashes_and_leaves() {
    const VALUES: usize = 150;
    for (name, algo, shared) in setups() {
        let mut sim = build(23, 100, algo, shared);
        settle(&mut sim, &name, Duration::from_secs(600), "after the joins");
        for i in 0..VALUES {
            let via = random_live(&mut sim);
            store_user_value(&mut sim, via, i, 7200);
        }
        // One in ten crash, one in ten leave, one at a time with time to repair between.
        for round in 0..20 {
            let k = random_live(&mut sim);
            if round % 2 == 0 {
                sim.crash(k);
            } else {
                sim.leave(k);
            }
            sim.run_for(Duration::from_secs(30));
        }
        settle(
            &mut sim,
            &name,
            Duration::from_secs(600),
            "after the departures",
        );
        sim.run_for(Duration::from_secs(60));
        let mut missing = Vec::new();
        for i in 0..VALUES {
            let via = random_live(&mut sim);
            match fetch_user_value(&mut sim, via, i) {
                Ok(Some(v)) if v == value_of(i) => {}
                other => missing.push((i, other)),
            }
        }
        assert!(missing.is_empty(), "{name}: values lost: {missing:?}");
    }
}

#[test]
fn every_algorithm_heals_a_partition() {
    for (name, algo, shared) in setups() {
        let n = 120;
        let mut sim = build(29, n, algo, shared);
        settle(&mut sim, &name, Duration::from_secs(600), "after the joins");
        for i in 0..n {
            let g = u8::from(sim.random::<bool>());
            sim.set_group(i, g);
        }
        sim.run_for(Duration::from_secs(300));
        sim.heal();
        let t = settle(
            &mut sim,
            &name,
            Duration::from_secs(1800),
            "after the partition healed",
        );
        // Long-range entries (fingers, far buckets) heal through maintenance and traffic:
        // lookups must all be right again within 30 minutes.
        let start = sim.elapsed();
        let mut correct = 0;
        while sim.elapsed() - start < Duration::from_secs(1800) {
            correct = lookups(&mut sim, 200).0;
            if correct == 200 {
                break;
            }
            sim.run_for(Duration::from_secs(60));
        }
        let routed = sim.elapsed() - start;
        eprintln!(
            "{name}: replica sets right {t:?} after the heal, all lookups right {routed:?} after that"
        );
        assert_eq!(correct, 200, "{name}: lookups 30 min after the heal");
    }
}
