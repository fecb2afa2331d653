//! A 200-node Chord overlay built by sequential joins converges, and lookups reach the
//! responsible node in fewer than log2(N) hops on average.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::{Event, Id};
use p2psip_simulator::{NetConfig, Sim};

#[test]
fn two_hundred_nodes_converge_and_route() {
    let n = 200;
    let mut sim = overlay(1, n, chord(), NetConfig::default());
    let ring = sim.live_ring();
    assert_eq!(ring.len(), n, "every node joined");
    let (wrong, notes) = sim.ring_errors(&ring);
    assert_eq!(
        wrong, 0,
        "nodes with a wrong successor/predecessor: {notes:?}"
    );

    let mut hops = Vec::new();
    for _ in 0..1000 {
        let from = random_live(&mut sim);
        let target = Id(sim.random());
        let e = sim.op(from, |node, t| node.lookup(t, target)).unwrap();
        let Event::Completed {
            outcome,
            hops: h,
            responder,
            ..
        } = e
        else {
            panic!("unexpected event")
        };
        outcome.unwrap();
        let want = Sim::responsible_in(&ring, target).unwrap();
        assert_eq!(
            responder,
            Some(want),
            "lookup of {target:?} from node {from}"
        );
        hops.push(h as f64);
    }
    let mean = hops.iter().sum::<f64>() / hops.len() as f64;
    let log2n = (n as f64).log2();
    eprintln!(
        "200 nodes: mean hops {mean:.2} (log2 N = {log2n:.2}, max {}), joined by {:?} of virtual time",
        hops.iter().cloned().fold(0.0, f64::max),
        sim.elapsed()
    );
    assert!(mean < log2n, "mean hops {mean} not below log2(N) = {log2n}");
}
