//! A 200-node Chord overlay built by sequential joins converges, and lookups reach the
//! responsible node in fewer than log2(N) hops on average.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::core::CoreConfig;
use p2psip_algorithms::{Event, Id};
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

#[test]
fn two_hundred_nodes_converge_and_route() {
    let n = 200;
    let mut sim = Sim::new(1, CoreConfig::default(), chord(), NetConfig::default());
    for i in 0..n {
        sim.add_node();
        let boot: Vec<_> = if i == 0 {
            vec![]
        } else {
            let b = sim.random_below(i);
            vec![sim.id(b)]
        };
        sim.start(i, &boot);
        sim.run_for(Duration::from_millis(500));
    }
    let last_join = sim.elapsed();
    let mut converged = None;
    for _ in 0..60 {
        let ring = sim.live_ring();
        if ring.len() == n && sim.ring_errors(&ring).0 == 0 {
            converged = Some(sim.elapsed() - last_join);
            break;
        }
        sim.run_for(Duration::from_secs(2));
    }
    let ring = sim.live_ring();
    assert_eq!(ring.len(), n, "every node joined");
    let (wrong, notes) = sim.ring_errors(&ring);
    assert_eq!(
        wrong, 0,
        "nodes with a wrong successor/predecessor: {notes:?}"
    );
    // Let the finger tables fill before measuring hops.
    sim.run_for(Duration::from_secs(120));

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
        "200 nodes: ring consistent {converged:?} after the last join; mean hops {mean:.2} \
         (log2 N = {log2n:.2}, max {})",
        hops.iter().cloned().fold(0.0, f64::max),
    );
    assert!(mean < log2n, "mean hops {mean} not below log2(N) = {log2n}");
}
