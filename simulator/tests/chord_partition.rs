//! A partition into two halves: each half repairs into its own ring; once the network
//! heals, self-lookups find the other half and the overlay is one ring again.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_simulator::NetConfig;
use std::time::Duration;

#[test]
fn partition_heals_into_one_ring() {
    let n = 200;
    let mut sim = overlay(31, n, chord(), NetConfig::default());
    for i in 0..n {
        let g = u8::from(sim.random::<bool>());
        sim.set_group(i, g);
    }
    sim.run_for(Duration::from_secs(300));
    for g in [0, 1] {
        let ring = sim.live_ring_of(g);
        let (wrong, notes) = sim.ring_errors(&ring);
        assert_eq!(
            wrong,
            0,
            "half {g} ({} nodes) did not form a ring: {notes:?}",
            ring.len()
        );
    }
    sim.heal();
    let ring = sim.live_ring();
    let start = sim.elapsed();
    let mut healed = None;
    for _ in 0..40 {
        sim.run_for(Duration::from_secs(30));
        if sim.ring_errors(&ring).0 == 0 {
            healed = Some(sim.elapsed() - start);
            break;
        }
    }
    let (wrong, notes) = sim.ring_errors(&ring);
    assert_eq!(
        wrong, 0,
        "still {wrong} nodes off the single ring after 20 min: {notes:?}"
    );
    eprintln!("partition healed into one ring within {healed:?} of virtual time");
}
