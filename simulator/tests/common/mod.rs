//! Shared helpers of the multi-node tests.
#![allow(dead_code, clippy::unwrap_used)]

use p2psip_algorithms::chord::ChordConfig;
use p2psip_algorithms::core::CoreConfig;
use p2psip_algorithms::storage::KIND_USER_VALUE;
use p2psip_algorithms::{signed_value, AlgorithmParams, Event, Id, ValueModel};
use p2psip_proto::pb;
use p2psip_proto::security::Identity;
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

pub fn chord() -> AlgorithmParams {
    AlgorithmParams::Chord(ChordConfig::default())
}

/// A simulator with `n` nodes joined one after another (one every `gap`), through random
/// already-joined nodes, then `settle` of virtual time.
pub fn overlay(seed: u64, n: usize, algo: AlgorithmParams, net: NetConfig) -> Sim {
    overlay_with(seed, n, algo, net, CoreConfig::default())
}

/// [`overlay`] with a given core configuration.
pub fn overlay_with(
    seed: u64,
    n: usize,
    algo: AlgorithmParams,
    net: NetConfig,
    core: CoreConfig,
) -> Sim {
    populate(Sim::new(seed, core, algo, net), n)
}

/// [`overlay`] whose whole-membership tables share a universe holding the ids of the first
/// `shared` peers only (as the simulator's runner does, with a margin): the tables keep
/// those as bits and the rest as ids, both paths at once.
pub fn overlay_sharing(
    seed: u64,
    n: usize,
    algo: AlgorithmParams,
    net: NetConfig,
    shared: usize,
) -> Sim {
    let mut sim = Sim::new(seed, CoreConfig::default(), algo, net);
    let ids = sim.preload(shared);
    sim.algorithm.share_ids(ids);
    populate(sim, n)
}

fn populate(mut sim: Sim, n: usize) -> Sim {
    for i in 0..n {
        sim.add_node();
        if i == 0 {
            sim.start(0, &[]);
        } else {
            let b = sim.random_below(i);
            let bid = sim.id(b);
            sim.start(i, &[bid]);
        }
        sim.run_for(Duration::from_millis(500));
    }
    sim.run_for(Duration::from_secs(120));
    sim
}

/// A user whose values live at hash(user name) (USER-MATCH).
pub fn user(i: usize) -> (Identity, Id) {
    let name = format!("user{i}@example.com");
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    seed[31] = 0x55;
    let id = Identity::from_seed(seed, name.clone());
    (id, Id::hash_of(name.as_bytes()))
}

pub fn value_of(i: usize) -> Vec<u8> {
    format!("sip:user{i}@192.0.2.{}:5060", i % 250).into_bytes()
}

/// Stores value `i` of user `i` through node `via`; panics unless it succeeds.
pub fn store_user_value(sim: &mut Sim, via: usize, i: usize, lifetime: u32) {
    let (who, res) = user(i);
    let now = sim.now();
    let v = signed_value(
        &who,
        res,
        KIND_USER_VALUE,
        now,
        lifetime,
        ValueModel::Single(value_of(i)),
    );
    let e = sim
        .op(via, |n, t| n.store(t, res, KIND_USER_VALUE, vec![v], 0))
        .expect("store completes");
    match e {
        Event::Completed { outcome, .. } => {
            outcome.unwrap_or_else(|err| panic!("store {i} via {via} failed: {err}"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Fetches user `i`'s value through node `via`: Some(bytes) if found.
pub fn fetch_user_value(sim: &mut Sim, via: usize, i: usize) -> Result<Option<Vec<u8>>, String> {
    let (_, res) = user(i);
    let e = sim
        .op(via, |n, t| n.fetch_kind(t, res, KIND_USER_VALUE))
        .ok_or("fetch did not complete")?;
    let Event::Completed { outcome, .. } = e else {
        return Err("unexpected event".into());
    };
    let body = outcome.map_err(|e| e.to_string())?;
    let p2psip_proto::Body::FetchAns(ans) = body else {
        return Err("not a FetchAns".into());
    };
    let v = ans
        .kind_responses
        .first()
        .and_then(|k| k.values.first())
        .and_then(|d| d.value.as_ref())
        .and_then(|v| match &v.model {
            Some(pb::stored_data_value::Model::Single(s)) => Some(s.value.clone()),
            _ => None,
        });
    Ok(v)
}

/// A random node that is up.
pub fn random_live(sim: &mut Sim) -> usize {
    loop {
        let i = sim.random_below(sim.len());
        if sim.is_up(i)
            && sim
                .node(i)
                .is_some_and(|n| n.is_joined() && n.topology().is_peer())
        {
            return i;
        }
    }
}
