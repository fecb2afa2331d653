//! Clients: non-routing nodes that reach the overlay through one admitting peer; Attach
//! exchanges transport candidates; a forged originator id is dropped.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::storage::KIND_USER_VALUE;
use p2psip_algorithms::{signed_value, Event, ValueModel};
use p2psip_proto::{pb, Body, Destination, Id, OwnedHeader};
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

#[test]
fn a_client_stores_and_fetches_through_its_admitting_peer() {
    let mut sim = overlay(61, 30, chord(), NetConfig::default());
    let c = sim.add_node();
    let peer = random_live(&mut sim);
    let peer_id = sim.id(peer);
    sim.start_client(c, peer_id);
    sim.run_for(Duration::from_secs(1));
    store_user_value(&mut sim, c, 5, 600);
    let other = random_live(&mut sim);
    assert_eq!(
        fetch_user_value(&mut sim, other, 5).unwrap(),
        Some(value_of(5))
    );
    assert_eq!(fetch_user_value(&mut sim, c, 5).unwrap(), Some(value_of(5)));
    // The client is not part of the ring and holds nothing.
    assert!(!sim.live_ring().contains(&sim.id(c)));
    assert_eq!(sim.node(c).unwrap().storage().value_count(), 0);
    for id in &sim.live_ring() {
        let i = sim.index_of(*id).unwrap();
        let rt = sim.node(i).unwrap().routing_table();
        assert!(
            !rt.successors.contains(&sim.id(c)),
            "a client entered a routing table"
        );
    }
}

#[test]
fn attach_exchanges_candidates_through_the_overlay() {
    let mut sim = overlay(62, 30, chord(), NetConfig::default());
    let (a, b) = (random_live(&mut sim), random_live(&mut sim));
    let cand = |port: u32| pb::Candidate {
        address: vec![127, 0, 0, 1],
        port,
        r#type: pb::candidate::Type::Host as i32,
        priority: 1,
    };
    sim.node_mut(a).unwrap().set_candidates(vec![cand(4000)]);
    sim.node_mut(b).unwrap().set_candidates(vec![cand(5000)]);
    let bid = sim.id(b);
    let e = sim.op(a, |n, t| n.attach(t, bid, None)).unwrap();
    let Event::Completed {
        outcome: Ok(Body::AttachAns(ans)),
        responder,
        ..
    } = e
    else {
        panic!("attach failed: {e:?}")
    };
    assert_eq!(responder, Some(bid));
    assert_eq!(ans.candidates, vec![cand(5000)]);
    // An Attach to an id no node has is answered Not_Found.
    let nobody = Id(bid.0 ^ 1);
    let e = sim.op(a, |n, t| n.attach(t, nobody, None)).unwrap();
    let Event::Completed {
        outcome: Err(err), ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(err.code, pb::ErrorCode::NotFound);
}

#[test]
fn a_request_with_a_forged_originator_is_dropped() {
    let mut sim = overlay(63, 10, chord(), NetConfig::default());
    let (a, b) = (0, 1);
    let (who, res) = user(1);
    let v = signed_value(
        &who,
        res,
        KIND_USER_VALUE,
        sim.now(),
        60,
        ValueModel::Single(b"x".to_vec()),
    );
    let body = Body::StoreReq(pb::StoreReq {
        resource: res.to_bytes().to_vec(),
        replica_number: 0,
        kind_data: vec![pb::StoreKindData {
            kind: KIND_USER_VALUE,
            generation_counter: 0,
            values: vec![v],
        }],
    });
    let overlay_id = p2psip_proto::overlay_id(&sim.node(a).unwrap().config().overlay);
    // Node a's link delivers a request whose via list claims it came from someone else.
    let header = OwnedHeader {
        via: vec![Destination::Node(Id(12345))],
        ..OwnedHeader::new(overlay_id, 77, Destination::Resource(res))
    };
    let bytes =
        p2psip_proto::encode_parts(&header, body.code(), &body.encode_to_vec(), &[]).unwrap();
    let aid = sim.id(a);
    sim.inject(b, aid, bytes);
    sim.inject(b, aid, vec![0xde, 0xad, 0xbe, 0xef]);
    sim.run_for(Duration::from_secs(1));
    let st = sim.node(b).unwrap().stats().clone();
    assert_eq!(st.forged, 1);
    assert_eq!(st.malformed, 1);
    assert!(sim.node(b).unwrap().is_joined(), "node b is still up");
}

#[test]
fn a_request_out_of_ttl_is_answered_ttl_exceeded() {
    let mut sim = overlay(64, 20, chord(), NetConfig::default());
    let (a, b) = (0, 1);
    let aid = sim.id(a);
    // A resource that b is not responsible for, so b would have to forward it.
    let ring = sim.live_ring();
    let target = (0..)
        .map(|k: u128| Id(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)))
        .find(|t| Sim::responsible_in(&ring, *t) != Some(sim.id(b)))
        .unwrap();
    let overlay_id = p2psip_proto::overlay_id(&sim.node(a).unwrap().config().overlay);
    let header = OwnedHeader {
        ttl: 0,
        via: vec![Destination::Node(aid)],
        ..OwnedHeader::new(overlay_id, 99, Destination::Resource(target))
    };
    let body = Body::PingReq(pb::PingReq {
        padding: vec![],
        ..Default::default()
    });
    let bytes =
        p2psip_proto::encode_parts(&header, body.code(), &body.encode_to_vec(), &[]).unwrap();
    let before = sim.node(a).unwrap().stats().stray_answers;
    sim.inject(b, aid, bytes);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node(b).unwrap().stats().ttl_exceeded, 1);
    // The Error answer went back to a (which had no transaction for it).
    assert_eq!(sim.node(a).unwrap().stats().stray_answers, before + 1);
}

/// A client that sends 100 lookups at the same instant through a peer that lets each
/// originator have 10 in flight: the peer passes 10 on and refuses the others with
/// Rate_Limited (those it answers itself take no slot); the others' answers then free the
/// slots again.
#[test]
fn an_admitting_peer_caps_the_requests_a_client_has_in_flight() {
    let core = p2psip_algorithms::core::CoreConfig {
        origin_max_in_flight: 10,
        origin_rate: 0,
        ..Default::default()
    };
    let mut sim = overlay_with(63, 30, chord(), NetConfig::default(), core);
    let c = sim.add_node();
    let peer = random_live(&mut sim);
    let peer_id = sim.id(peer);
    sim.start_client(c, peer_id);
    sim.run_for(Duration::from_secs(1));
    sim.drain_completions();
    let targets: Vec<Id> = (0..100u128)
        .map(|k| Id(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
        .collect();
    let local = targets
        .iter()
        .filter(|t| sim.responsible(**t) == Some(peer_id))
        .count();
    let ops: Vec<_> = targets
        .iter()
        .map(|t| {
            let t = *t;
            sim.start_op(c, move |n, now| n.lookup(now, t)).unwrap()
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for op in ops {
        match sim.wait_op(c, op, Duration::from_secs(30)) {
            Some(Event::Completed { outcome: Ok(_), .. }) => ok += 1,
            Some(Event::Completed {
                outcome: Err(e), ..
            }) if e.code == pb::ErrorCode::RateLimited => limited += 1,
            other => panic!("lookup: {other:?}"),
        }
    }
    assert_eq!(ok + limited, 100);
    assert_eq!(ok, 10 + local, "{local} answered by the peer itself");
    assert_eq!(sim.node(peer).unwrap().stats().rate_limited, limited as u64);
    // The slots are free again: the next lookup goes through.
    let t = targets[0];
    let op = sim.start_op(c, move |n, now| n.lookup(now, t)).unwrap();
    assert!(matches!(
        sim.wait_op(c, op, Duration::from_secs(30)),
        Some(Event::Completed { outcome: Ok(_), .. })
    ));
}
