//! Both recovery mechanisms of Chord work on their own: periodic stabilisation only, and
//! reactive recovery only (RFC 6940 warns the latter is unstable past ~1000 nodes under
//! churn; here it must at least repair a 150-node ring after crashes).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::chord::ChordConfig;
use p2psip_algorithms::AlgorithmParams;
use p2psip_simulator::NetConfig;
use std::time::Duration;

fn crash_and_repair(cfg: ChordConfig, net: NetConfig, seed: u64) -> Duration {
    let n = 150;
    let mut sim = overlay(seed, n, AlgorithmParams::Chord(cfg), net);
    let ring = sim.live_ring();
    assert_eq!(sim.ring_errors(&ring).0, 0, "converged before the crashes");
    for _ in 0..n / 10 {
        let k = random_live(&mut sim);
        sim.crash(k);
    }
    let ring = sim.live_ring();
    let start = sim.elapsed();
    for _ in 0..120 {
        sim.run_for(Duration::from_secs(5));
        if sim.ring_errors(&ring).0 == 0 {
            return sim.elapsed() - start;
        }
    }
    let (wrong, notes) = sim.ring_errors(&ring);
    panic!("{wrong} nodes still wrong 10 min after the crashes: {notes:?}");
}

#[test]
fn periodic_stabilisation_alone_repairs_the_ring() {
    let t = crash_and_repair(
        ChordConfig {
            reactive_recovery: false,
            ..ChordConfig::default()
        },
        // No link-level failure reports either: only stabilisation timeouts find the dead.
        NetConfig {
            link_failure_after: None,
            ..NetConfig::default()
        },
        41,
    );
    eprintln!("periodic only: ring repaired within {t:?}");
}

#[test]
fn reactive_recovery_alone_repairs_the_ring() {
    let t = crash_and_repair(
        ChordConfig {
            stabilize_interval: None,
            ..ChordConfig::default()
        },
        NetConfig::default(),
        43,
    );
    eprintln!("reactive only: ring repaired within {t:?}");
}
