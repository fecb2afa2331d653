//! Storage rules end to end through the overlay: access policies, generation counters,
//! lifetimes, deletes, and the Fetch/Stat/Find answers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::storage::{KIND_NODE_VALUE, KIND_SIP_REGISTRATION, KIND_USER_VALUE};
use p2psip_algorithms::{signed_value, Event, OpError, ValueModel};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::{Body, Id};
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

fn sim() -> Sim {
    overlay(21, 30, chord(), NetConfig::default())
}

fn outcome(e: Option<Event>) -> Result<Body, OpError> {
    match e {
        Some(Event::Completed { outcome, .. }) => outcome,
        other => panic!("operation did not complete: {other:?}"),
    }
}

fn code(e: Option<Event>) -> ErrorCode {
    outcome(e).expect_err("the store must be refused").code
}

#[test]
fn storing_into_another_users_resource_is_forbidden() {
    let mut sim = sim();
    let (alice, _) = user(1);
    let (_, bob_res) = user(2);
    let now = sim.now();
    let v = signed_value(
        &alice,
        bob_res,
        KIND_USER_VALUE,
        now,
        60,
        ValueModel::Single(b"x".to_vec()),
    );
    let via = random_live(&mut sim);
    assert_eq!(
        code(sim.op(via, |n, t| n.store(t, bob_res, KIND_USER_VALUE, vec![v], 0))),
        ErrorCode::Forbidden
    );
    // NODE-MATCH: a node may only write at its own Node-ID.
    let o = random_live(&mut sim);
    let other = sim.id(o);
    let v = signed_value(
        &alice,
        other,
        KIND_NODE_VALUE,
        now,
        60,
        ValueModel::Single(b"x".to_vec()),
    );
    assert_eq!(
        code(sim.op(via, |n, t| n.store(t, other, KIND_NODE_VALUE, vec![v], 0))),
        ErrorCode::Forbidden
    );
    // USER-NODE-MATCH: a SIP registration keyed by someone else's Node-ID.
    let (alice, alice_res) = user(1);
    let v = signed_value(
        &alice,
        alice_res,
        KIND_SIP_REGISTRATION,
        now,
        60,
        ValueModel::Dictionary(vec![7; 16], b"sip:alice@192.0.2.1".to_vec()),
    );
    assert_eq!(
        code(sim.op(via, |n, t| n.store(
            t,
            alice_res,
            KIND_SIP_REGISTRATION,
            vec![v],
            0
        ))),
        ErrorCode::Forbidden
    );
    // ... and with her own Node-ID as key it is accepted.
    let v = signed_value(
        &alice,
        alice_res,
        KIND_SIP_REGISTRATION,
        now,
        60,
        ValueModel::Dictionary(
            alice.node_id.to_bytes().to_vec(),
            b"sip:alice@192.0.2.1".to_vec(),
        ),
    );
    outcome(sim.op(via, |n, t| {
        n.store(t, alice_res, KIND_SIP_REGISTRATION, vec![v], 0)
    }))
    .unwrap();
    // A tampered value: the signature no longer verifies.
    let mut v = signed_value(
        &alice,
        alice_res,
        KIND_USER_VALUE,
        now,
        60,
        ValueModel::Single(b"a".to_vec()),
    );
    v.value = Some(pb::StoredDataValue {
        model: Some(pb::stored_data_value::Model::Single(pb::DataValue {
            exists: true,
            value: b"forged".to_vec(),
        })),
    });
    assert_eq!(
        code(sim.op(via, |n, t| n.store(
            t,
            alice_res,
            KIND_USER_VALUE,
            vec![v],
            0
        ))),
        ErrorCode::Forbidden
    );
    // An unknown kind.
    let v = signed_value(
        &alice,
        alice_res,
        999,
        now,
        60,
        ValueModel::Single(b"a".to_vec()),
    );
    assert_eq!(
        code(sim.op(via, |n, t| n.store(t, alice_res, 999, vec![v], 0))),
        ErrorCode::UnknownKind
    );
}

fn generation(body: Body) -> u64 {
    match body {
        Body::StoreAns(a) => a.kind_responses[0].generation_counter,
        Body::FetchAns(a) => a.kind_responses[0].generation,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn generation_counters_are_compare_and_swap_and_old_data_is_refused() {
    let mut sim = sim();
    let (alice, res) = user(1);
    let via = random_live(&mut sim);
    let put = |sim: &mut Sim, val: &[u8], g: u64| {
        let now = sim.now();
        let v = signed_value(
            &alice,
            res,
            KIND_USER_VALUE,
            now,
            600,
            ValueModel::Single(val.to_vec()),
        );
        sim.run_for(Duration::from_millis(10));
        sim.op(via, |n, t| n.store(t, res, KIND_USER_VALUE, vec![v], g))
    };
    let g1 = generation(outcome(put(&mut sim, b"v1", 0)).unwrap());
    assert_eq!(g1, 1);
    let g2 = generation(outcome(put(&mut sim, b"v2", g1)).unwrap());
    assert_eq!(g2, 2);
    // A writer still holding generation 1 is refused.
    assert_eq!(
        code(put(&mut sim, b"stale", g1)),
        ErrorCode::GenerationCounterTooLow
    );
    let got = outcome(sim.op(via, |n, t| n.fetch_kind(t, res, KIND_USER_VALUE))).unwrap();
    assert_eq!(generation(got), 2);
    assert_eq!(
        fetch_user_value(&mut sim, via, 1).unwrap(),
        Some(b"v2".to_vec())
    );
    // A value older than the stored one.
    let old = signed_value(
        &alice,
        res,
        KIND_USER_VALUE,
        p2psip_algorithms::Time(sim.now().0 - 3_600_000_000),
        7200,
        ValueModel::Single(b"old".to_vec()),
    );
    assert_eq!(
        code(sim.op(via, |n, t| n.store(t, res, KIND_USER_VALUE, vec![old], 0))),
        ErrorCode::DataTooOld
    );
}

#[test]
fn expired_and_deleted_values_are_not_returned() {
    let mut sim = sim();
    let via = random_live(&mut sim);
    store_user_value(&mut sim, via, 3, 10);
    store_user_value(&mut sim, via, 4, 3600);
    assert_eq!(
        fetch_user_value(&mut sim, via, 3).unwrap(),
        Some(value_of(3))
    );
    sim.run_for(Duration::from_secs(15));
    for _ in 0..5 {
        let via = random_live(&mut sim);
        assert_eq!(
            fetch_user_value(&mut sim, via, 3).unwrap(),
            None,
            "expired value returned"
        );
        assert_eq!(
            fetch_user_value(&mut sim, via, 4).unwrap(),
            Some(value_of(4))
        );
    }
    // A delete (exists = false) hides the value.
    let (u4, res4) = user(4);
    let now = sim.now();
    let del = signed_value(
        &u4,
        res4,
        KIND_USER_VALUE,
        now,
        3600,
        ValueModel::DeleteSingle,
    );
    outcome(sim.op(via, |n, t| n.store(t, res4, KIND_USER_VALUE, vec![del], 0))).unwrap();
    assert_eq!(fetch_user_value(&mut sim, via, 4).unwrap(), None);
    // The expiry timer purges expired values from every store.
    sim.run_for(Duration::from_secs(120));
    let (_, res3) = user(3);
    for i in 0..sim.len() {
        if let Some(n) = sim.node(i) {
            assert!(
                n.storage().get(res3, KIND_USER_VALUE).is_none(),
                "node {i} keeps an expired value"
            );
        }
    }
}

#[test]
fn stat_and_find_answer_from_the_responsible_peer() {
    let mut sim = sim();
    let via = random_live(&mut sim);
    store_user_value(&mut sim, via, 9, 3600);
    let (_, res) = user(9);
    let Body::StatAns(s) = outcome(sim.op(via, |n, t| n.stat(t, res, KIND_USER_VALUE))).unwrap()
    else {
        panic!("not a StatAns")
    };
    let meta = &s.kind_responses[0].values[0];
    assert_eq!(meta.value_length as usize, value_of(9).len());
    assert_eq!(meta.lifetime, 3600);
    // Find from just before the resource names it.
    let before = Id(res.0 - 1);
    let Body::FindAns(f) =
        outcome(sim.op(via, |n, t| n.find(t, before, vec![KIND_USER_VALUE]))).unwrap()
    else {
        panic!("not a FindAns")
    };
    assert_eq!(f.results[0].closest, res.to_bytes().to_vec());
    // Fetching an empty resource answers with no values, not an error.
    let empty = Id(res.0 ^ 0xffff);
    let Body::FetchAns(a) =
        outcome(sim.op(via, |n, t| n.fetch_kind(t, empty, KIND_USER_VALUE))).unwrap()
    else {
        panic!("not a FetchAns")
    };
    assert!(a.kind_responses[0].values.is_empty());
}
