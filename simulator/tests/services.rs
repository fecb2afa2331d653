//! ReDiR service discovery (RFC 7374, proto/SPEC.md 6.2) in the simulator: 1,000 Chord
//! peers, 50 of them providers of "turn" that register and refresh; other peers crash and
//! new ones join meanwhile. Every lookup finds the provider whose Node-ID is the closest
//! successor of the key among the live providers; ten providers that stop are no longer
//! returned once their records' lifetime has run out.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::core::all_of_kind;
use p2psip_algorithms::redir::{entries_of, Lookup, Registration, Step};
use p2psip_algorithms::storage::KIND_REDIR;
use p2psip_algorithms::{Event, Id};

use p2psip_proto::Body;
use p2psip_simulator::{NetConfig, Sim};
use std::collections::BTreeSet;
use std::time::Duration;

const SERVICE: &str = "turn";
const LIFETIME_S: u32 = 60;

/// One walk in progress on node `node`: a registration or a lookup.
enum Walk {
    Reg(Box<Registration>),
    Look(Lookup),
}

/// Runs every walk to its end at once (each waits for its own requests only), so that a
/// round of 50 registrations takes the virtual time of one. Returns the walks and the
/// requests each took.
fn drive(sim: &mut Sim, mut walks: Vec<(usize, Walk, Step)>) -> Vec<(usize, Walk, usize)> {
    // (index into walks, op)
    let mut pending: Vec<(usize, p2psip_algorithms::OpId, usize)> = Vec::new();
    let mut counts = vec![0usize; walks.len()];
    let launch = |sim: &mut Sim, node: usize, step: &Step| -> Option<p2psip_algorithms::OpId> {
        match step {
            Step::Fetch { resource, .. } => {
                let r = *resource;
                sim.start_op(node, move |n, t| {
                    n.fetch(t, r, vec![all_of_kind(KIND_REDIR)])
                })
            }
            Step::Store {
                resource, value, ..
            } => {
                let (r, v) = (*resource, (**value).clone());
                sim.start_op(node, move |n, t| n.store(t, r, KIND_REDIR, vec![v], 0))
            }
            Step::Done => None,
        }
    };
    for (k, (node, _, step)) in walks.iter().enumerate() {
        if let Some(op) = launch(sim, *node, step) {
            pending.push((k, op, *node));
        }
    }
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds < 100_000, "walks do not end");
        sim.run_for(Duration::from_millis(50));
        let mut still = Vec::new();
        for (k, op, node) in pending {
            let Some(e) = sim.take_done(node, op) else {
                if sim.node(node).is_some() {
                    still.push((k, op, node));
                }
                continue;
            };
            counts[k] += 1;
            let now = sim.now();
            let (_, walk, step) = &mut walks[k];
            let next = match (walk, &*step) {
                (Walk::Reg(r), Step::Fetch { .. }) => r.on_fetched(&entries(&e, now), now),
                (Walk::Reg(r), Step::Store { .. }) => {
                    r.on_stored(matches!(e, Event::Completed { outcome: Ok(_), .. }))
                }
                (Walk::Look(l), Step::Fetch { .. }) => l.on_fetched(&entries(&e, now)),
                _ => Step::Done,
            };
            *step = next;
            if let Some(op) = launch(sim, node, step) {
                still.push((k, op, node));
            }
        }
        pending = still;
    }
    let mut out = Vec::new();
    for (k, (node, walk, _)) in walks.into_iter().enumerate() {
        out.push((node, walk, counts[k]));
    }
    out
}

fn entries(e: &Event, now: p2psip_algorithms::Time) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
    match e {
        Event::Completed {
            outcome: Ok(Body::FetchAns(f)),
            ..
        } => entries_of(f, now),
        _ => Vec::new(),
    }
}

/// Registers (or refreshes) every provider in `who` at once; the most requests one took.
fn register(sim: &mut Sim, who: &[usize]) -> usize {
    let walks = who
        .iter()
        .map(|&i| {
            let (reg, step) = Registration::new(
                SERVICE,
                sim.identity(i).clone(),
                &format!("192.0.2.{}:3478", i % 250),
                vec!["transport=udp".into()],
                LIFETIME_S,
            );
            (i, Walk::Reg(Box::new(reg)), step)
        })
        .collect();
    drive(sim, walks).iter().map(|w| w.2).max().unwrap_or(0)
}

/// Lookups for `keys` from random peers at once: what each found.
fn lookups(sim: &mut Sim, keys: &[Id]) -> Vec<Option<Id>> {
    let walks = keys
        .iter()
        .map(|&k| {
            let via = random_live(sim);
            let (l, step) = Lookup::new(SERVICE, k);
            (via, Walk::Look(l), step)
        })
        .collect();
    drive(sim, walks)
        .into_iter()
        .map(|(_, w, _)| match w {
            Walk::Look(l) => l.found.map(|p| p.key),
            Walk::Reg(_) => None,
        })
        .collect()
}

fn successor(providers: &BTreeSet<Id>, key: Id) -> Option<Id> {
    providers
        .range(key..)
        .next()
        .or_else(|| providers.iter().next())
        .copied()
}

#[test]
fn lookups_find_the_closest_live_provider_under_churn_and_departed_ones_expire() {
    let mut sim = overlay(81, 1000, chord(), NetConfig::default());
    let providers: Vec<usize> = (0..50).map(|k| k * 20).collect();
    let mut live: BTreeSet<Id> = providers.iter().map(|i| sim.id(*i)).collect();
    let t0 = sim.now();
    let most = register(&mut sim, &providers);
    println!(
        "50 providers registered in {:?} of virtual time; the longest registration took {most} requests",
        sim.now().since(t0)
    );
    assert!(most <= 2 * p2psip_algorithms::redir::MAX_STEPS);
    let mut stopped: Vec<usize> = Vec::new();
    let (mut asked, mut stop_round) = (0usize, usize::MAX);
    // Rounds of 20 s: churn among the other peers (ten crash, ten join), the providers
    // refresh (ten stop at round 3), 40 lookups from random peers for random keys.
    for round in 0..9 {
        for _ in 0..10 {
            let victim = random_live(&mut sim);
            if !providers.contains(&victim) {
                sim.crash(victim);
            }
            let n = sim.add_node();
            let gate = random_live(&mut sim);
            let boot = sim.id(gate);
            sim.start(n, &[boot]);
        }
        if round == 3 {
            stopped = providers[..10].to_vec();
            for &p in &stopped {
                live.remove(&sim.id(p));
            }
            stop_round = round;
        }
        sim.run_for(Duration::from_secs(20));
        let refreshing: Vec<usize> = providers
            .iter()
            .copied()
            .filter(|p| !stopped.contains(p))
            .collect();
        register(&mut sim, &refreshing);
        // The stopped providers refreshed last at the end of round 2: until LIFETIME_S
        // after that their records live on, and a lookup may find them or the closest
        // live provider; from round 6 on (80 s later) only live providers are found.
        let expired = round >= stop_round.saturating_add(3);
        let everyone: BTreeSet<Id> = providers.iter().map(|i| sim.id(*i)).collect();
        let keys: Vec<Id> = (0..40).map(|_| Id(sim.random())).collect();
        let found = lookups(&mut sim, &keys);
        let departed: BTreeSet<Id> = stopped.iter().map(|i| sim.id(*i)).collect();
        for (key, got) in keys.iter().zip(found) {
            asked += 1;
            let live_one = successor(&live, *key);
            if round < 3 || expired {
                assert_eq!(got, live_one, "round {round}: lookup for {key}");
            } else {
                let any_one = successor(&everyone, *key);
                assert!(
                    got == live_one || got == any_one,
                    "round {round}: lookup for {key} found {got:?}: neither {live_one:?} nor {any_one:?}"
                );
            }
            if expired {
                assert!(
                    !departed.contains(&got.unwrap()),
                    "a departed provider returned"
                );
            }
        }
        println!("round {round}: 40 lookups right (departed ones expired: {expired})");
    }
    println!("{asked} lookups: each found the closest live provider (in rounds 3-5 a stopped one whose record still lived was allowed)");
}
