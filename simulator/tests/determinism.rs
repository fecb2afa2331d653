//! Same seed, same trace: two runs produce identical event logs; another seed does not.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::core::CoreConfig;
use p2psip_simulator::{LogEntry, NetConfig, Sim};
use std::time::Duration;

fn run(seed: u64) -> Vec<LogEntry> {
    let net = NetConfig {
        loss: 0.01,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(seed, CoreConfig::default(), chord(), net);
    sim.log_enabled = true;
    for i in 0..40 {
        sim.add_node();
        let boot: Vec<_> = if i == 0 {
            vec![]
        } else {
            let b = sim_random(&mut sim, i);
            vec![sim.id(b)]
        };
        sim.start(i, &boot);
        sim.run_for(Duration::from_millis(300));
    }
    sim.run_for(Duration::from_secs(60));
    for i in 0..50 {
        let via = random_live(&mut sim);
        store_user_value(&mut sim, via, i, 600);
    }
    sim.crash(3);
    sim.crash(17);
    sim.leave(25);
    sim.run_for(Duration::from_secs(60));
    sim.log().to_vec()
}

fn sim_random(sim: &mut Sim, below: usize) -> usize {
    sim.random_below(below)
}

#[test]
fn same_seed_same_trace() {
    let a = run(99);
    let b = run(99);
    assert!(a.len() > 2_000, "a real trace: {} events", a.len());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "runs with the same seed diverged");
    let c = run(100);
    assert!(a != c, "a different seed gave the same trace");
}
