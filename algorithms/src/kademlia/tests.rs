//! Unit tests of the kademlia algorithm.

use super::*;

#[test]
fn xor_closest_agrees_with_a_linear_scan() {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    let set: std::collections::BTreeSet<Id> = (0..300).map(|_| Id(rng.random())).collect();
    for _ in 0..300 {
        let t = Id(rng.random());
        let want = set.iter().copied().min_by_key(|m| xor(*m, t));
        assert_eq!(xor_closest(&set, t), want);
    }
}

#[test]
fn buckets_place_nodes_by_shared_prefix() {
    let me = Id(0);
    let k = Kademlia::new(me, KademliaConfig::default());
    assert_eq!(k.bucket_of(Id(1 << 127)), Some(0));
    assert_eq!(k.bucket_of(Id(1)), Some(127));
    assert_eq!(k.bucket_of(me), None);
}

#[test]
fn start_with_members_fills_every_populated_bucket_and_routes_greedily() {
    let members: Vec<Id> = (0..1000u128)
        .map(|i| Id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5cef_9d1b)))
        .collect();
    let mut sorted = members.clone();
    sorted.sort();
    let me = sorted[17];
    let mut node = Kademlia::new(me, KademliaConfig::default());
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut actions = Vec::new();
    let mut tok = 0;
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    node.start_with_members(&mut ctx, &sorted);
    assert!(node.is_joined());
    // Every bucket with members holds min(k, members in range) of them, all in range.
    for (b, bucket) in node.buckets.iter().enumerate() {
        let in_range = sorted
            .iter()
            .filter(|m| node.bucket_of(**m) == Some(b))
            .count();
        assert_eq!(bucket.nodes.len(), in_range.min(8), "bucket {b}");
        assert!(bucket.nodes.iter().all(|n| node.bucket_of(*n) == Some(b)));
    }
    // The XOR-closest member to our own id is known, and a target next to it routes there.
    let nearest = *sorted
        .iter()
        .filter(|m| **m != me)
        .min_by_key(|m| xor(**m, me))
        .unwrap_or(&me);
    assert_eq!(node.next_hop(nearest), NextHop::Forward(nearest));
    assert_eq!(node.next_hop(me), NextHop::Local);
    let rs = node.replica_set(me);
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0], me);
}
