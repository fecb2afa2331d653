//! Unit tests of the onehop algorithm.

use super::*;
use rand::SeedableRng;

/// The member responsible for `target` in a sorted membership (the first at or after it).
fn ring_responsible(members: &[Id], target: Id) -> Option<Id> {
    if members.is_empty() {
        return None;
    }
    let i = members.partition_point(|m| *m < target);
    Some(members[i % members.len()])
}

fn queued(node: &OneHop, ev_node: Id) -> Vec<usize> {
    (0..node.outgoing.len())
        .filter(|l| node.outgoing[*l].iter().any(|e| e.node == ev_node))
        .collect()
}

#[test]
fn routes_in_one_hop_to_the_ring_successor() {
    let members: Vec<Id> = (1..=100u128).map(|i| Id(i << 100)).collect();
    let me = members[10];
    let mut node = OneHop::new(me, OneHopConfig::default());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut actions = Vec::new();
    let mut tok = 0;
    let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
    node.start_with_members(&mut ctx, &members);
    assert_eq!(node.members(), 100);
    for t in [Id(5), Id((50 << 100) + 1), Id(u128::MAX)] {
        let want = ring_responsible(&members, t).unwrap_or(me);
        let got = match node.next_hop(t) {
            NextHop::Local => me,
            NextHop::Forward(n) => n,
        };
        assert_eq!(got, want, "target {t}");
    }
    assert_eq!(
        node.replica_set(Id(me.0 - 1)),
        vec![me, members[11], members[12]]
    );
    // A failure we notice removes the member and goes out at every level (L = 7).
    node.on_link(&mut ctx, LinkEvent::Failed(members[11]));
    assert_eq!(node.members(), 99);
    assert_eq!(queued(&node, members[11]), (0..7).collect::<Vec<_>>());
    assert_eq!(
        node.replica_set(Id(me.0 - 1)),
        vec![me, members[12], members[13]]
    );
    // A second witness of the same failure is not spread again.
    node.receive_events(
        &mut ctx,
        &[Ev {
            node: members[11],
            alive: false,
            stamp: 9,
            span: 0,
        }
        .wire()],
        7,
    );
    assert_eq!(node.outgoing[0].len(), 1);
    // Being declared gone ourselves is refuted at every level.
    node.receive_events(
        &mut ctx,
        &[Ev {
            node: me,
            alive: false,
            stamp: 5,
            span: 0,
        }
        .wire()],
        3,
    );
    assert_eq!(queued(&node, me).len(), 7);
    assert!(node.outgoing[6]
        .iter()
        .any(|e| e.node == me && e.alive && e.stamp > 5));
}

/// Delivers every request among `nodes` (answering it) until none is left; returns how
/// many times each node received an event about `subject`.
fn run_broadcast(nodes: &mut [OneHop], subject: Id, rounds: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut tok = 0;
    let mut got = vec![0usize; nodes.len()];
    let index: HashMap<Id, usize> = nodes.iter().enumerate().map(|(i, n)| (n.me, i)).collect();
    for round in 0..rounds {
        let now = Time(1_000 * (round as u64 + 1));
        let mut sent = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            let mut actions = Vec::new();
            let mut ctx = Ctx::new(now, &mut rng, &mut actions, &mut tok);
            n.on_timer(&mut ctx, T_GOSSIP);
            sent.extend(actions.into_iter().map(|a| (i, a)));
        }
        for (from, a) in sent {
            let TopologyAction::Request {
                token,
                target: Target::Direct(t),
                body,
            } = a
            else {
                continue;
            };
            let to = index[&t];
            if let Body::UpdateReq(u) = &body {
                let m = pb::OneHopUpdate::decode(u.overlay_specific.as_slice()).unwrap();
                got[to] += m
                    .events
                    .iter()
                    .filter(|e| Id::from_slice(&e.node) == Some(subject))
                    .count();
            }
            let me = nodes[from].me;
            let mut actions = Vec::new();
            let mut ctx = Ctx::new(now, &mut rng, &mut actions, &mut tok);
            let origin = Origin {
                id: me,
                reached: true,
            };
            let ans = nodes[to]
                .on_request(&mut ctx, origin, &body)
                .map_err(|e| e.1);
            // The receiver's probes of members reported failed: answered by the member
            // if it is among `nodes`, else failed, before the round goes on.
            for probe in std::mem::take(&mut actions) {
                if let TopologyAction::Request {
                    token,
                    target: Target::Direct(x),
                    body: Body::ProbeReq(_),
                } = probe
                {
                    let mut ctx = Ctx::new(now, &mut rng, &mut actions, &mut tok);
                    match index.get(&x) {
                        Some(_) => {
                            let ok = Body::ProbeAns(pb::ProbeAns::default());
                            nodes[to].on_answer(&mut ctx, token, Some(x), Ok(&ok));
                        }
                        None => nodes[to].on_answer(&mut ctx, token, None, Err(&timeout())),
                    }
                }
            }
            let mut ctx = Ctx::new(now, &mut rng, &mut actions, &mut tok);
            let ans = ans.map_err(|e| pb::ErrorAns {
                code: ErrorCode::Unspecified as i32,
                info: e.into_bytes(),
            });
            nodes[from].on_answer(&mut ctx, token, Some(t), ans.as_ref());
        }
    }
    got
}

fn timeout() -> pb::ErrorAns {
    pb::ErrorAns {
        code: ErrorCode::RequestTimeout as i32,
        info: b"no answer".to_vec(),
    }
}

/// The probes `actions` hold, as (token, member probed).
fn probes(actions: &[TopologyAction]) -> Vec<(u64, Id)> {
    actions
        .iter()
        .filter_map(|a| match a {
            TopologyAction::Request {
                token,
                target: Target::Direct(x),
                body: Body::ProbeReq(_),
            } => Some((*token, *x)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reported_failure_or_arrival_is_applied_only_when_our_own_probe_agrees() {
    let mut nodes = fleet(16);
    let node = &mut nodes[0];
    let (live, dead) = (node.after(node.me, 5)[4], node.after(node.me, 9)[8]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let (mut actions, mut tok) = (Vec::new(), 1_000_000);
    let report = |x: Id, stamp: u64| {
        Ev {
            node: x,
            alive: false,
            stamp,
            span: 0,
        }
        .wire()
    };
    let mut ctx = Ctx::new(Time(500), &mut rng, &mut actions, &mut tok);
    node.receive_events(&mut ctx, &[report(live, 400), report(dead, 400)], 3);
    // Reported again while the probes wait: no second probe.
    node.receive_events(&mut ctx, &[report(live, 450)], 3);
    let sent = probes(&actions);
    assert_eq!(sent.iter().map(|p| p.1).collect::<Vec<_>>(), [live, dead]);
    assert_eq!(node.members(), 16, "nothing is applied on a report alone");
    assert!(node.outgoing.iter().all(Vec::is_empty), "nor passed on");
    let mut ctx = Ctx::new(Time(600), &mut rng, &mut actions, &mut tok);
    // The live member answers (an Error it signed would do as well).
    let ok = Body::ProbeAns(pb::ProbeAns::default());
    node.on_answer(&mut ctx, sent[0].0, Some(live), Ok(&ok));
    // The dead one does not; an answer in someone else's name is no answer from it.
    node.on_answer(&mut ctx, sent[1].0, Some(live), Err(&timeout()));
    assert!(node.members.contains(&live));
    assert!(!node.members.contains(&dead));
    assert!(queued(node, live).is_empty());
    // Passed on at the levels below the report's (3): 0, 1 and 2.
    assert_eq!(queued(node, dead), vec![0, 1, 2]);
    // Arrivals likewise: a node that answers is taken, one that does not is not.
    let (real, made_up) = (Id(dead.0 + 1), Id(dead.0 + 2));
    let arrival = |x: Id| {
        Ev {
            node: x,
            alive: true,
            stamp: 700,
            span: 0,
        }
        .wire()
    };
    let mut actions = Vec::new();
    let mut ctx = Ctx::new(Time(700), &mut rng, &mut actions, &mut tok);
    node.receive_events(&mut ctx, &[arrival(real), arrival(made_up)], 2);
    let sent = probes(&actions);
    assert_eq!(
        sent.iter().map(|p| p.1).collect::<Vec<_>>(),
        [real, made_up]
    );
    assert!(!node.members.contains(&real) && !node.members.contains(&made_up));
    let mut ctx = Ctx::new(Time(800), &mut rng, &mut actions, &mut tok);
    node.on_answer(&mut ctx, sent[0].0, Some(real), Ok(&ok));
    node.on_answer(&mut ctx, sent[1].0, None, Err(&timeout()));
    assert!(node.members.contains(&real));
    assert!(!node.members.contains(&made_up));
    assert_eq!(queued(node, real), vec![0, 1]);
    assert!(queued(node, made_up).is_empty());
}

#[test]
fn with_confirm_reports_off_a_report_is_taken_at_once() {
    let mut node = fleet(8).swap_remove(0);
    node.cfg.confirm_reports = false;
    let x = node.after(node.me, 3)[2];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut actions, mut tok) = (Vec::new(), 1_000_000);
    let mut ctx = Ctx::new(Time(500), &mut rng, &mut actions, &mut tok);
    let report = Ev {
        node: x,
        alive: false,
        stamp: 400,
        span: 0,
    };
    node.receive_events(&mut ctx, &[report.wire()], 2);
    assert!(probes(&actions).is_empty());
    assert!(!node.members.contains(&x));
    assert_eq!(queued(&node, x), vec![0, 1]);
}

fn fleet(n: usize) -> Vec<OneHop> {
    let ids: Vec<Id> = (0..n as u128)
        .map(|i| Id((i + 1) * (u128::MAX / 1000)))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut tok = 0;
    ids.iter()
        .map(|me| {
            let mut node = OneHop::new(*me, OneHopConfig::default());
            let mut actions = Vec::new();
            let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
            node.start_with_members(&mut ctx, &ids);
            node
        })
        .collect()
}

#[test]
fn edra_delivers_an_event_to_every_member_exactly_once_within_log2_n_intervals() {
    for n in [2usize, 3, 37, 128, 300] {
        let mut nodes = fleet(n + 1);
        // The last member crashed and node 0 noticed: the broadcast goes round the ring.
        let gone = nodes.pop().map(|x| x.me).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (mut actions, mut tok) = (Vec::new(), 1_000_000);
        let mut ctx = Ctx::new(Time(500), &mut rng, &mut actions, &mut tok);
        nodes[0].on_link(&mut ctx, LinkEvent::Failed(gone));
        let levels = nodes[0].levels();
        let got = run_broadcast(&mut nodes, gone, levels);
        assert_eq!(got[0], 0, "n={n}: the origin got its own event back");
        assert!(
            got[1..].iter().all(|c| *c == 1),
            "n={n}: deliveries per node {got:?}"
        );
        assert!(nodes.iter().all(|x| !x.members.contains(&gone)));
        // Nothing is left queued anywhere: the broadcast ended.
        assert!(nodes.iter().all(|x| x.outgoing.iter().all(Vec::is_empty)));
    }
}

#[test]
fn a_message_to_a_dead_successor_goes_to_the_next_one() {
    let mut nodes = fleet(16);
    let dead = nodes[1].me; // node 0's 2^0-th successor
    let stranger = Id(7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let (mut actions, mut tok) = (Vec::new(), 1_000_000);
    let mut ctx = Ctx::new(Time(500), &mut rng, &mut actions, &mut tok);
    nodes[0].announce(&mut ctx, stranger, true, 500);
    let mut ctx = Ctx::new(Time(600), &mut rng, &mut actions, &mut tok);
    nodes[0].gossip(&mut ctx);
    let level0 = nodes[0]
        .pending
        .iter()
        .find(|(_, p)| **p == Pending::Gossip(dead, 0))
        .map(|(t, _)| *t)
        .expect("M(0) went to node 1");
    let err = pb::ErrorAns {
        code: ErrorCode::Unspecified as i32,
        info: b"link failed".to_vec(),
    };
    nodes[0].on_answer(&mut ctx, level0, None, Err(&err));
    assert!(!nodes[0].members.contains(&dead));
    // Re-queued at level 0 for the new successor (node 2), with the failure itself.
    assert!(nodes[0].outgoing[0].iter().any(|e| e.node == stranger));
    assert!(nodes[0].outgoing[0]
        .iter()
        .any(|e| e.node == dead && !e.alive));
}

#[test]
fn a_member_neighbours_list_and_we_lack_is_contacted_once_per_window() {
    let mut nodes = fleet(8);
    let node = &mut nodes[0];
    let stranger = Id(7); // listed by neighbours, unknown here (dead, say)
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (mut actions, mut tok) = (Vec::new(), 1_000_000);
    let contacts = |node: &OneHop| {
        node.pending
            .values()
            .filter(|p| **p == Pending::Stabilize(stranger))
            .count()
    };
    let listed = wire_ids(&[stranger, node.me]);
    for ms in [1_000, 2_000, 30_000] {
        let mut ctx = Ctx::new(Time::from_millis(ms), &mut rng, &mut actions, &mut tok);
        node.hints(&mut ctx, &listed);
    }
    assert_eq!(contacts(node), 1, "one request while the window lasts");
    let later = Time::from_millis(1_000) + node.recent_window();
    let mut ctx = Ctx::new(later, &mut rng, &mut actions, &mut tok);
    node.hints(&mut ctx, &listed);
    assert_eq!(contacts(node), 2, "contacted again once the window is over");
    // A member we know, or one known gone, is never contacted.
    let member = nodes[0].after(nodes[0].me, 1)[0];
    let mut ctx = Ctx::new(later, &mut rng, &mut actions, &mut tok);
    nodes[0].hints(&mut ctx, &wire_ids(&[member]));
    assert!(!nodes[0]
        .pending
        .values()
        .any(|p| *p == Pending::Stabilize(member)));
}

/// A Leave signed by its leaver but come through other peers (an old one replayed) is a
/// report: the leaver stays until our own probe of it fails. Over its own link it is
/// applied at once.
#[test]
fn a_leave_through_other_peers_is_checked_before_it_is_applied() {
    let mut node = fleet(8).swap_remove(0);
    let (x, y) = (node.after(node.me, 3)[2], node.after(node.me, 4)[3]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let (mut actions, mut tok) = (Vec::new(), 1_000_000);
    let leave = |l: Id| {
        Body::LeaveReq(pb::LeaveReq {
            leaving_peer_id: l.to_bytes().to_vec(),
            overlay_specific: vec![],
        })
    };
    let mut ctx = Ctx::new(Time(500), &mut rng, &mut actions, &mut tok);
    let relayed = Origin {
        id: x,
        reached: false,
    };
    for _ in 0..3 {
        assert!(node.on_request(&mut ctx, relayed, &leave(x)).is_ok());
    }
    let sent = probes(&actions);
    assert_eq!(
        sent.iter().map(|p| p.1).collect::<Vec<_>>(),
        [x],
        "one check"
    );
    assert!(
        node.members.contains(&x),
        "a relayed Leave was applied at once"
    );
    let mut ctx = Ctx::new(Time(600), &mut rng, &mut actions, &mut tok);
    let ok = Body::ProbeAns(pb::ProbeAns::default());
    node.on_answer(&mut ctx, sent[0].0, Some(x), Ok(&ok));
    assert!(node.members.contains(&x), "x answered, so it stays");
    assert!(queued(&node, x).is_empty());
    // The leaver's own Leave over its link.
    let mut ctx = Ctx::new(Time(700), &mut rng, &mut actions, &mut tok);
    let direct = Origin {
        id: y,
        reached: true,
    };
    assert!(node.on_request(&mut ctx, direct, &leave(y)).is_ok());
    assert!(!node.members.contains(&y));
}
