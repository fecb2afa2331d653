//! Unit tests of the kademlia algorithm.

use super::*;

/// `n` ids spread over the id space, sorted.
fn spread_members(n: u128) -> Vec<Id> {
    let mut v: Vec<Id> = (0..n)
        .map(|i| Id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5cef_9d1b)))
        .collect();
    v.sort();
    v
}

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
    let sorted = spread_members(1000);
    let me = sorted[17];
    let mut node = Kademlia::new(me, KademliaConfig::default());
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut actions = Vec::new();
    let mut tok = 0;
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    node.start_with_members(&mut ctx, &sorted);
    assert!(node.is_joined());
    // Every bucket with members holds min(k, members in range) of them, all in range,
    // and more where the near set reaches into it.
    for (b, bucket) in node.buckets.iter().enumerate() {
        let in_range = sorted
            .iter()
            .filter(|m| node.bucket_of(**m) == Some(b))
            .count();
        let n = bucket.nodes.len();
        assert!(
            n >= in_range.min(8) && n <= in_range,
            "bucket {b}: {n} of {in_range}"
        );
        assert!(bucket.nodes.iter().all(|n| node.bucket_of(*n) == Some(b)));
    }
    // The whole near set is known, whatever its buckets' sizes.
    let mut near: Vec<Id> = sorted.iter().copied().filter(|m| *m != me).collect();
    near.sort_unstable_by_key(|m| xor(*m, me));
    for m in near.iter().take(node.near_size()) {
        assert!(node.contains(*m), "near node {m:?} missing");
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

/// Entries no link would report dead (a warm start, or links closed when idle): those not
/// heard from for `check_after` are probed at the next refresh round, and one that does
/// not answer leaves its bucket. With the checks off, a silent dead entry stays.
#[test]
fn silent_entries_are_checked_and_dead_ones_dropped() {
    let sorted = spread_members(200);
    let me = sorted[5];
    for checks in [true, false] {
        let cfg = KademliaConfig {
            check_after: checks.then_some(Duration::from_secs(300)),
            ..KademliaConfig::default()
        };
        let mut node = Kademlia::new(me, cfg);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let mut tok = 0;
        let mut actions = Vec::new();
        let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
        node.start_with_members(&mut ctx, &sorted);
        let entries: Vec<Id> = node.all().collect();
        let dead = entries[entries.len() / 2];
        // A round before check_after has passed checks nothing.
        let mut run_round = |node: &mut Kademlia, at: Time| {
            let mut actions = Vec::new();
            let mut ctx = Ctx::new(at, &mut rng, &mut actions, &mut tok);
            node.refresh(&mut ctx);
            let mut checked = Vec::new();
            for a in actions {
                if let TopologyAction::Request {
                    token,
                    target: Target::Direct(n),
                    body: Body::ProbeReq(_),
                } = a
                {
                    checked.push(n);
                    let mut actions = Vec::new();
                    let mut ctx = Ctx::new(at, &mut rng, &mut actions, &mut tok);
                    if n == dead {
                        let e = pb::ErrorAns {
                            code: ErrorCode::RequestTimeout as i32,
                            info: vec![],
                        };
                        node.on_answer(&mut ctx, token, None, Err(&e));
                    } else {
                        node.on_answer(
                            &mut ctx,
                            token,
                            Some(n),
                            Ok(&Body::ProbeAns(pb::ProbeAns::default())),
                        );
                    }
                }
            }
            checked
        };
        let early = run_round(&mut node, Time(0) + Duration::from_secs(60));
        assert!(
            early.len() <= 4,
            "{} checks before check_after",
            early.len()
        );
        let mut at = 360;
        let mut rounds = 0;
        while node.contains(dead) && rounds < 20 {
            run_round(&mut node, Time(0) + Duration::from_secs(at));
            at += 60;
            rounds += 1;
        }
        if checks {
            assert!(!node.contains(dead), "the silent dead entry is still there");
            // At most checks_per_round at a time, so every entry took a few rounds.
            assert!(rounds <= entries.len().div_ceil(32) + 1, "{rounds} rounds");
        } else {
            assert!(
                node.contains(dead),
                "without checks the refresh found it anyway"
            );
        }
    }
}

/// Proximity: a sampled node of a full bucket that answered faster than the bucket's
/// slowest entry takes its place (the entry becomes a replacement); a slower one, or one
/// whose round trip was not measured, changes nothing.
#[test]
fn a_faster_candidate_displaces_the_slowest_entry_of_a_full_bucket() {
    let sorted = spread_members(4000);
    let me = sorted[17];
    let cfg = KademliaConfig {
        proximity: true,
        ..KademliaConfig::default()
    };
    let mut node = Kademlia::new(me, cfg);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut actions = Vec::new();
    let mut tok = 0;
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    node.start_with_members(&mut ctx, &sorted);
    let b = 0;
    let entries = node.buckets[b].nodes.clone();
    assert_eq!(entries.len(), 8, "bucket 0 is full");
    assert!(node.far_enough(b), "bucket 0 is far from the near set");
    let edge = (0..128).find(|b| !node.far_enough(*b)).unwrap();
    assert!(
        edge > 0 && edge < 128,
        "the buckets by the near set are left alone"
    );
    let outside: Vec<Id> = sorted
        .iter()
        .copied()
        .filter(|m| node.bucket_of(*m) == Some(b) && !entries.contains(m))
        .take(3)
        .collect();
    let (fast, slow, unmeasured) = (outside[0], outside[1], outside[2]);
    let mut rtts = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        rtts.insert(*e, Duration::from_millis(100 + 10 * i as u64));
    }
    let slowest = entries[7];
    rtts.insert(fast, Duration::from_millis(20));
    rtts.insert(slow, Duration::from_millis(500));
    let mut actions = Vec::new();
    let mut ctx = Ctx::new(Time(1), &mut rng, &mut actions, &mut tok).with_rtts(&rtts);
    node.offer_faster(&mut ctx, b, slow);
    node.offer_faster(&mut ctx, b, unmeasured);
    assert_eq!(
        node.buckets[b].nodes, entries,
        "a slower or unmeasured node got in"
    );
    node.offer_faster(&mut ctx, b, fast);
    assert!(node.buckets[b].nodes.contains(&fast));
    assert!(!node.buckets[b].nodes.contains(&slowest));
    assert!(node.buckets[b].replacements.contains(&slowest));
    assert_eq!(node.buckets[b].nodes.len(), 8);
}

/// Self-tuning (SPEC 7.1): a node whose near set stays quiet for an hour stabilises and
/// refreshes far less often than the fixed 10 s; failures in its near set bring the
/// intervals down again; the size it estimates is the member count's order.
#[test]
fn self_tuning_follows_the_churn_of_the_near_set() {
    let sorted = spread_members(1000);
    let me = sorted[17];
    let cfg = KademliaConfig {
        self_tuning: true,
        ..KademliaConfig::default()
    };
    let mut node = Kademlia::new(me, cfg);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let (mut actions, mut tok) = (Vec::new(), 0);
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    node.start_with_members(&mut ctx, &sorted);
    let fixed = KademliaConfig::default();
    let (_, _, n) = node.churn_estimate();
    assert!((300.0..3000.0).contains(&n), "size estimate {n} for 1000");
    // An hour with nothing changing (exposure accrues at each change of the tables; a
    // node seen again is one).
    let hour = Time(3600 * 1_000_000);
    let mut ctx = Ctx::new(hour, &mut rng, &mut actions, &mut tok);
    let someone = node.window()[0];
    node.consider(&mut ctx, someone);
    let quiet_stab = node.stabilize_every().unwrap();
    let quiet_refresh = node.refresh_every();
    // The prior alone (one event per neighbour-hour each way) gives 50 s; an hour's
    // exposure without events, about 4 minutes.
    assert!(quiet_stab > Duration::from_secs(120), "{quiet_stab:?}");
    assert!(quiet_refresh > fixed.refresh_interval, "{quiet_refresh:?}");
    // Half the near set fails within a minute.
    for (i, id) in node.window().into_iter().take(4).enumerate() {
        let at = Time(hour.0 + (i as u64 + 1) * 10_000_000);
        let mut ctx = Ctx::new(at, &mut rng, &mut actions, &mut tok);
        node.on_link(&mut ctx, LinkEvent::Failed(id));
    }
    let busy_stab = node.stabilize_every().unwrap();
    let busy_refresh = node.refresh_every();
    assert!(
        busy_stab < quiet_stab / 2,
        "{busy_stab:?} against {quiet_stab:?}"
    );
    assert!(
        busy_refresh < quiet_refresh,
        "{busy_refresh:?} against {quiet_refresh:?}"
    );
    // With self-tuning off, the configured intervals whatever happened.
    let mut plain = Kademlia::new(me, KademliaConfig::default());
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    plain.start_with_members(&mut ctx, &sorted);
    assert_eq!(plain.stabilize_every(), fixed.stabilize_interval);
    assert_eq!(plain.refresh_every(), fixed.refresh_interval);
}

/// A candidate nearer than the k-th nearest node, whose bucket already holds k, enters
/// the table once it answers: it is not turned away into the replacements and probed
/// again at every Update that names it (at 10,000 peers that loop was most of Kademlia's
/// maintenance traffic: 208 B/peer/s without churn, 72 once it stopped).
#[test]
fn a_near_candidate_that_answered_is_kept_and_not_probed_again() {
    // Every member in bucket 0 (top bit set, the rest near zero like us): one bucket
    // holds the whole near set.
    let me = Id(1);
    let members: Vec<Id> = (0..8u128).map(|i| Id((1 << 127) | (16 + i))).collect();
    let near = Id(1 << 127);
    let mut node = Kademlia::new(me, KademliaConfig::default());
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut tok = 0;
    let mut actions = Vec::new();
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    let mut all = members.clone();
    all.push(me);
    all.sort();
    node.start_with_members(&mut ctx, &all);
    assert_eq!(node.buckets[0].nodes.len(), 8, "bucket 0 is full");
    let mut probes = 0;
    for round in 0..3 {
        let mut actions = Vec::new();
        let mut ctx = Ctx::new(Time(round), &mut rng, &mut actions, &mut tok);
        node.learn(&mut ctx, &[near]);
        for a in actions {
            if let TopologyAction::Request {
                token,
                target: Target::Direct(n),
                ..
            } = a
            {
                assert_eq!(n, near);
                probes += 1;
                let mut actions = Vec::new();
                let mut ctx = Ctx::new(Time(round), &mut rng, &mut actions, &mut tok);
                let ans = Body::UpdateAns(pb::UpdateAns::default());
                node.on_answer(&mut ctx, token, Some(near), Ok(&ans));
            }
        }
    }
    assert_eq!(probes, 1, "probed at each Update that named it");
    assert!(node.contains(near), "the nearest node is not in the table");
}
