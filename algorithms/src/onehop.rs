//! A one-hop DHT for fleets where call set-up latency matters (after Gupta, Liskov and
//! Rodrigues, "One Hop Lookups for Peer-to-Peer Overlays"): every peer knows every peer.
//! Responsibility is Chord's (the first member at or after an id), so a lookup goes
//! straight to the responsible peer when the table is fresh; when it is not, the peer it
//! reaches passes it on by its own table (and a dead target's link failure re-routes it).
//!
//! Membership changes spread by push-pull gossip: a peer that learns an event (a join, a
//! leave, a failure it noticed) passes it to `fanout` random members every gossip
//! interval for a number of rounds that grows with log N; answers carry the receiver's
//! own fresh events back. A joining peer pages the membership out of its admitting peer.
//! Each peer checks its successor periodically, so every failure has a witness. A peer
//! that hears it was declared gone refutes it with a newer event; self-lookups through
//! peers from the past merge the memberships of the two sides of a healed partition.

use crate::common::{self, ids_from_wire, wire_ids};
use crate::id::{distance, Id, NodeId};
use crate::time::Time;
use crate::topology::*;
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::{Body, Destination};
use prost::Message as _;
use rand::Rng;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// The algorithm's name in configuration and in Join/Update bodies.
pub const NAME: &str = "onehop";

const T_GOSSIP: TimerId = TimerId(1);
const T_STABILIZE: TimerId = TimerId(2);
const T_SELF_LOOKUP: TimerId = TimerId(3);
const T_JOIN_RETRY: TimerId = TimerId(4);

/// Members per snapshot page.
pub const PAGE: usize = 8192;
/// Events per gossip message.
const MAX_EVENTS: usize = 4096;
/// How long a node's newest event stamp is kept to order later events about it.
const STAMP_MEMORY: Duration = Duration::from_secs(600);
/// Peers remembered after they left, for self-lookups.
const DEPARTED_CAP: usize = 64;

/// Parameters of the one-hop algorithm (the `[onehop]` table of a node's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct OneHopConfig {
    /// Copies kept besides the responsible peer's.
    pub replicas: usize,
    /// How often fresh membership events are pushed.
    pub gossip_interval: Duration,
    /// Members each round's events go to.
    pub fanout: usize,
    /// Rounds an event is passed on; 0 = ln(N)/ln(fanout + 1) + 3.
    pub rounds: u32,
    /// How often the successor is checked (None: only by traffic).
    pub stabilize_interval: Option<Duration>,
    /// How often the node looks itself up through a peer from its past (heals partitions).
    pub self_lookup_interval: Duration,
    /// Delay before a failed join is retried with the next bootstrap peer.
    pub join_retry: Duration,
}

impl Default for OneHopConfig {
    fn default() -> Self {
        OneHopConfig {
            replicas: 2,
            gossip_interval: Duration::from_secs(1),
            fanout: 2,
            rounds: 0,
            stabilize_interval: Some(Duration::from_secs(10)),
            self_lookup_interval: Duration::from_secs(30),
            join_retry: Duration::from_secs(5),
        }
    }
}

impl OneHopConfig {
    /// Clamps the fields to the ranges the algorithm supports.
    pub fn normalized(mut self) -> Self {
        self.fanout = self.fanout.clamp(1, 16);
        self.replicas = self.replicas.min(16);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Join,
    /// A page of the membership from `from`, while joining or merging.
    Snapshot(Id),
    Gossip(Id),
    Stabilize(Id),
    SelfLookup,
    Leave,
}

#[derive(Debug, Clone, Copy)]
struct Fresh {
    node: Id,
    alive: bool,
    stamp: u64,
    rounds_left: u32,
}

/// The one-hop state machine of one node.
pub struct OneHop {
    me: Id,
    cfg: OneHopConfig,
    joined: bool,
    started: Time,
    /// Every live member, this node included.
    members: BTreeSet<Id>,
    /// Newest event stamp per node (recent events only).
    stamps: HashMap<Id, (bool, u64, Time)>,
    fresh: Vec<Fresh>,
    departed: VecDeque<Id>,
    pending: HashMap<u64, Pending>,
    bootstrap: Vec<Id>,
    join_attempt: usize,
    /// While joining: the admitting peer and the members paged so far.
    joining: Option<(Id, Vec<Id>)>,
}

impl OneHop {
    pub fn new(me: NodeId, cfg: OneHopConfig) -> Self {
        let mut members = BTreeSet::new();
        members.insert(me);
        OneHop {
            me,
            cfg: cfg.normalized(),
            joined: false,
            started: Time(0),
            members,
            stamps: HashMap::new(),
            fresh: Vec::new(),
            departed: VecDeque::new(),
            pending: HashMap::new(),
            bootstrap: Vec::new(),
            join_attempt: 0,
            joining: None,
        }
    }

    /// How many members this node knows (itself included).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    fn successor_of(&self, target: Id) -> Id {
        self.members
            .range(target..)
            .next()
            .or_else(|| self.members.iter().next())
            .copied()
            .unwrap_or(self.me)
    }

    /// The `n` members after `id` on the ring (not `id` itself).
    fn after(&self, id: Id, n: usize) -> Vec<Id> {
        let n = n.min(self.members.len().saturating_sub(1));
        let tail = self
            .members
            .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded));
        tail.chain(self.members.iter())
            .filter(|x| **x != id)
            .take(n)
            .copied()
            .collect()
    }

    /// The `n` members before `id` on the ring, closest first.
    fn before(&self, id: Id, n: usize) -> Vec<Id> {
        let n = n.min(self.members.len().saturating_sub(1));
        let head = self.members.range(..id).rev();
        head.chain(self.members.iter().rev())
            .filter(|x| **x != id)
            .take(n)
            .copied()
            .collect()
    }

    fn window(&self) -> (Vec<Id>, Vec<Id>) {
        (
            self.before(self.me, self.cfg.replicas + 1),
            self.after(self.me, self.cfg.replicas),
        )
    }

    fn rounds(&self) -> u32 {
        if self.cfg.rounds > 0 {
            return self.cfg.rounds;
        }
        let n = self.members.len().max(2) as f64;
        (n.ln() / ((self.cfg.fanout + 1) as f64).ln()).ceil() as u32 + 3
    }

    fn random_member(&self, ctx: &mut Ctx<'_>) -> Option<Id> {
        if self.members.len() < 2 {
            return None;
        }
        for _ in 0..4 {
            let m = self.successor_of(Id(ctx.rng.random()));
            if m != self.me {
                return Some(m);
            }
        }
        self.after(self.me, 1).first().copied()
    }

    /// Applies an event if it is news; returns whether it was.
    fn apply(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool, stamp: u64) -> bool {
        if node == self.me {
            if !alive && self.joined {
                // Declared gone while alive: refute with a newer event.
                self.announce(ctx, self.me, true, stamp.max(ctx.now.as_millis()) + 1);
            }
            return false;
        }
        if let Some((_, s, _)) = self.stamps.get(&node) {
            if *s >= stamp {
                return false;
            }
        }
        let changed = if alive {
            !self.members.contains(&node)
        } else {
            self.members.contains(&node)
        };
        self.stamps.insert(node, (alive, stamp, ctx.now));
        if !changed {
            return false;
        }
        let before = self.window();
        if alive {
            self.members.insert(node);
        } else {
            self.members.remove(&node);
            if self.departed.len() == DEPARTED_CAP {
                self.departed.pop_front();
            }
            self.departed.push_back(node);
        }
        if self.joined && self.window() != before {
            ctx.event(TopologyEvent::ResponsibilityChanged);
        }
        true
    }

    /// Applies an event of our own making and queues it for gossip.
    fn announce(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool, stamp: u64) {
        if node != self.me && !self.apply(ctx, node, alive, stamp) {
            return;
        }
        let rounds = self.rounds();
        self.fresh.push(Fresh {
            node,
            alive,
            stamp,
            rounds_left: rounds,
        });
    }

    fn receive_events(&mut self, ctx: &mut Ctx<'_>, events: &[pb::MembershipEvent]) {
        let rounds = self.rounds();
        for e in events {
            let Some(node) = Id::from_slice(&e.node) else {
                continue;
            };
            if self.apply(ctx, node, e.alive, e.stamp) {
                self.fresh.push(Fresh {
                    node,
                    alive: e.alive,
                    stamp: e.stamp,
                    rounds_left: rounds,
                });
            }
        }
    }

    fn wire_events(&self) -> Vec<pb::MembershipEvent> {
        self.fresh
            .iter()
            .rev()
            .take(MAX_EVENTS)
            .map(|f| pb::MembershipEvent {
                node: f.node.to_bytes().to_vec(),
                alive: f.alive,
                stamp: f.stamp,
            })
            .collect()
    }

    fn update(&self, ctx: &Ctx<'_>, events: bool) -> pb::OneHopUpdate {
        pb::OneHopUpdate {
            uptime: ctx
                .now
                .since(self.started)
                .as_secs()
                .min(u64::from(u32::MAX)) as u32,
            events: if events {
                self.wire_events()
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn update_req(u: pb::OneHopUpdate) -> pb::UpdateReq {
        pb::UpdateReq {
            algorithm: NAME.into(),
            overlay_specific: u.encode_to_vec(),
        }
    }

    fn gossip(&mut self, ctx: &mut Ctx<'_>) {
        self.stamps
            .retain(|_, (_, _, seen)| ctx.now.since(*seen) < STAMP_MEMORY);
        if self.fresh.is_empty() {
            return;
        }
        for _ in 0..self.cfg.fanout {
            let Some(t) = self.random_member(ctx) else {
                break;
            };
            let body = Self::update_req(self.update(ctx, true));
            let tok = ctx.request(Target::Direct(t), body);
            self.pending.insert(tok, Pending::Gossip(t));
        }
        for f in &mut self.fresh {
            f.rounds_left = f.rounds_left.saturating_sub(1);
        }
        self.fresh.retain(|f| f.rounds_left > 0);
    }

    fn stabilize(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(&s) = self.after(self.me, 1).first() {
            let body = Self::update_req(self.update(ctx, true));
            let tok = ctx.request(Target::Direct(s), body);
            self.pending.insert(tok, Pending::Stabilize(s));
        }
    }

    fn request_page(&mut self, ctx: &mut Ctx<'_>, from: Id, start: Id) {
        let u = pb::OneHopUpdate {
            snapshot_from: start.to_bytes().to_vec(),
            snapshot_limit: PAGE as u32,
            ..self.update(ctx, false)
        };
        let tok = ctx.request(Target::Direct(from), Self::update_req(u));
        self.pending.insert(tok, Pending::Snapshot(from));
    }

    fn page(&self, start: Id, limit: usize) -> (Vec<Id>, bool) {
        let limit = limit.clamp(1, PAGE);
        let mut it = self.members.range(start..);
        let v: Vec<Id> = it.by_ref().take(limit).copied().collect();
        (v, it.next().is_some())
    }

    fn self_lookup(&mut self, ctx: &mut Ctx<'_>) {
        let mut pool: Vec<Id> = self.departed.iter().copied().collect();
        pool.extend(self.bootstrap.iter().copied());
        pool.extend(self.random_member(ctx));
        pool.retain(|x| *x != self.me);
        if pool.is_empty() {
            return;
        }
        let via = pool[ctx.rng.random_range(0..pool.len())];
        let tok = ctx.request(
            Target::SourceRoute(vec![
                Destination::Node(via),
                Destination::Resource(crate::id::add(self.me, 1)),
            ]),
            pb::ProbeReq {
                requested_info: vec![],
            },
        );
        self.pending.insert(tok, Pending::SelfLookup);
    }

    fn send_join(&mut self, ctx: &mut Ctx<'_>) {
        if self.bootstrap.is_empty() {
            return;
        }
        let b = self.bootstrap[self.join_attempt % self.bootstrap.len()];
        self.join_attempt += 1;
        let tok = ctx.request(
            Target::SourceRoute(vec![Destination::Node(b), Destination::Resource(self.me)]),
            pb::JoinReq {
                joining_peer_id: self.me.to_bytes().to_vec(),
                algorithm: NAME.into(),
                overlay_specific: Vec::new(),
            },
        );
        self.pending.insert(tok, Pending::Join);
    }

    fn become_joined(&mut self, ctx: &mut Ctx<'_>) {
        self.joined = true;
        self.started = ctx.now;
        ctx.event(TopologyEvent::Joined);
        ctx.event(TopologyEvent::ResponsibilityChanged);
        ctx.set_timer_jittered(self.cfg.gossip_interval, T_GOSSIP);
        if let Some(i) = self.cfg.stabilize_interval {
            ctx.set_timer_jittered(i, T_STABILIZE);
        }
        ctx.set_timer_jittered(self.cfg.self_lookup_interval, T_SELF_LOOKUP);
    }

    /// A member we did not know talked to us (a healed partition, a refuted failure).
    fn met(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        if id != self.me && !self.members.contains(&id) && self.joined {
            self.announce(ctx, id, true, ctx.now.as_millis());
        }
    }
}

impl Topology for OneHop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn local_id(&self) -> NodeId {
        self.me
    }

    fn is_joined(&self) -> bool {
        self.joined
    }

    fn next_hop(&self, target: Id) -> NextHop {
        let r = self.successor_of(target);
        if r == self.me {
            NextHop::Local
        } else {
            NextHop::Forward(r)
        }
    }

    fn is_neighbor(&self, node: NodeId) -> bool {
        node != self.me && self.members.contains(&node)
    }

    fn replica_set(&self, resource: Id) -> Vec<NodeId> {
        let first = self.successor_of(resource);
        let mut v = vec![first];
        v.extend(self.after(first, self.cfg.replicas));
        v
    }

    fn start(&mut self, ctx: &mut Ctx<'_>, bootstrap: &[NodeId]) {
        self.started = ctx.now;
        self.bootstrap = bootstrap
            .iter()
            .copied()
            .filter(|b| *b != self.me)
            .collect();
        if self.bootstrap.is_empty() {
            self.become_joined(ctx);
        } else {
            self.send_join(ctx);
        }
    }

    fn start_with_members(&mut self, ctx: &mut Ctx<'_>, members: &[NodeId]) {
        self.started = ctx.now;
        if !members.contains(&self.me) {
            let boot: Vec<Id> = members.iter().copied().take(1).collect();
            self.start(ctx, &boot);
            return;
        }
        self.members.extend(members.iter().copied());
        self.become_joined(ctx);
    }

    fn on_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        body: &Body,
    ) -> Result<Body, (ErrorCode, String)> {
        match body {
            Body::JoinReq(j) => {
                common::check_algorithm(NAME, &j.algorithm, "Join")?;
                if !self.joined {
                    return Err((
                        ErrorCode::InProgress,
                        "admitting peer is still joining".into(),
                    ));
                }
                let jp = common::check_sender(&j.joining_peer_id, from, "joining")?;
                // The joiner pages the membership out of us, then takes its place; we
                // announce it at once so that gossip starts while it pages.
                self.announce(ctx, jp, true, ctx.now.as_millis());
                let (page, more) = self.page(Id(0), PAGE);
                let u = pb::OneHopUpdate {
                    members: wire_ids(&page),
                    more,
                    ..self.update(ctx, false)
                };
                Ok(Body::JoinAns(pb::JoinAns {
                    overlay_specific: u.encode_to_vec(),
                }))
            }
            Body::UpdateReq(u) => {
                common::check_algorithm(NAME, &u.algorithm, "Update")?;
                let Ok(req) = pb::OneHopUpdate::decode(u.overlay_specific.as_slice()) else {
                    return Err((ErrorCode::InvalidMessage, "bad OneHopUpdate".into()));
                };
                self.met(ctx, from);
                self.receive_events(ctx, &req.events);
                let mut ans = self.update(ctx, true);
                if req.snapshot_limit > 0 {
                    let start = Id::from_slice(&req.snapshot_from).unwrap_or(Id(0));
                    let (page, more) = self.page(start, req.snapshot_limit as usize);
                    ans.members = wire_ids(&page);
                    ans.more = more;
                    ans.events.clear();
                }
                Ok(Body::UpdateAns(pb::UpdateAns {
                    overlay_specific: ans.encode_to_vec(),
                }))
            }
            Body::LeaveReq(l) => {
                let leaver = common::check_sender(&l.leaving_peer_id, from, "leaving")?;
                self.announce(ctx, leaver, false, ctx.now.as_millis());
                Ok(Body::LeaveAns(pb::LeaveAns {}))
            }
            Body::ProbeReq(_) => {
                let span = self
                    .before(self.me, 1)
                    .first()
                    .map_or(u128::MAX, |p| distance(*p, self.me));
                Ok(common::probe_answer(
                    span,
                    ctx.now.since(self.started).as_secs(),
                ))
            }
            Body::RouteQueryReq(q) => common::route_query_answer(q, self.me, |t| self.next_hop(t)),
            other => Err(common::not_topology(other)),
        }
    }

    fn on_answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        token: u64,
        responder: Option<NodeId>,
        answer: Answer<'_>,
    ) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let decoded = match answer {
            Ok(Body::JoinAns(j)) => pb::OneHopUpdate::decode(j.overlay_specific.as_slice()).ok(),
            Ok(Body::UpdateAns(u)) => pb::OneHopUpdate::decode(u.overlay_specific.as_slice()).ok(),
            _ => None,
        };
        match (p, decoded) {
            (Pending::Join, Some(u)) => {
                if self.joined || self.joining.is_some() {
                    return;
                }
                let Some(ap) = responder else { return };
                let page = ids_from_wire(&u.members);
                let next = page.last().map(|l| crate::id::add(*l, 1));
                self.joining = Some((ap, page));
                match next {
                    Some(n) if u.more => self.request_page(ctx, ap, n),
                    _ => self.finish_snapshot(ctx),
                }
            }
            (Pending::Join, None) => {
                if self.joined {
                    return;
                }
                let why = match answer {
                    Err(e) => format!(
                        "join refused: {:?} {}",
                        ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                        String::from_utf8_lossy(&e.info)
                    ),
                    Ok(b) => format!("unexpected answer {}", b.method_name()),
                };
                ctx.event(TopologyEvent::JoinFailed(why));
                ctx.set_timer(self.cfg.join_retry, T_JOIN_RETRY);
            }
            (Pending::Snapshot(from), Some(u)) => {
                let page = ids_from_wire(&u.members);
                let next = page.last().map(|l| crate::id::add(*l, 1));
                if let Some((_, acc)) = self.joining.as_mut() {
                    acc.extend(page);
                } else {
                    // Merging after a partition: every member of the other side is news.
                    for id in page {
                        self.met(ctx, id);
                    }
                }
                match next {
                    Some(n) if u.more => self.request_page(ctx, from, n),
                    _ => self.finish_snapshot(ctx),
                }
            }
            (Pending::Snapshot(_), None) => {
                if let Some((ap, _)) = self.joining.take() {
                    // The admitting peer failed while we paged: start over.
                    if self.bootstrap.len() > 1 {
                        self.bootstrap.retain(|b| *b != ap);
                    }
                    ctx.set_timer(self.cfg.join_retry, T_JOIN_RETRY);
                }
            }
            (Pending::Gossip(_) | Pending::Stabilize(_), Some(u)) => {
                if let Some(r) = responder {
                    self.met(ctx, r);
                }
                self.receive_events(ctx, &u.events);
            }
            (Pending::Gossip(n) | Pending::Stabilize(n), None) => {
                if answer.is_err() && self.members.contains(&n) {
                    self.announce(ctx, n, false, ctx.now.as_millis());
                }
            }
            (Pending::SelfLookup, _) => {
                let Some(r) = responder.filter(|r| *r != self.me) else {
                    return;
                };
                if answer.is_ok() && !self.members.contains(&r) {
                    // A peer we thought gone, or never knew: its side of a partition.
                    self.met(ctx, r);
                    self.request_page(ctx, r, Id(0));
                }
            }
            (Pending::Leave, _) => {}
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        if let LinkEvent::Failed(id) = event {
            if self.members.contains(&id) && self.joined {
                self.announce(ctx, id, false, ctx.now.as_millis());
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        match timer {
            T_JOIN_RETRY if !self.joined && self.joining.is_none() => self.send_join(ctx),
            _ if !self.joined => {}
            T_GOSSIP => {
                self.gossip(ctx);
                ctx.set_timer_jittered(self.cfg.gossip_interval, T_GOSSIP);
            }
            T_STABILIZE => {
                self.stabilize(ctx);
                if let Some(i) = self.cfg.stabilize_interval {
                    ctx.set_timer_jittered(i, T_STABILIZE);
                }
            }
            T_SELF_LOOKUP => {
                self.self_lookup(ctx);
                ctx.set_timer_jittered(self.cfg.self_lookup_interval, T_SELF_LOOKUP);
            }
            _ => {}
        }
    }

    fn leave(&mut self, ctx: &mut Ctx<'_>) {
        if !self.joined {
            ctx.event(TopologyEvent::Left);
            return;
        }
        let mut tell = self.after(self.me, 1);
        tell.extend(self.before(self.me, 1));
        tell.extend(self.random_member(ctx));
        tell.sort();
        tell.dedup();
        for t in tell {
            let tok = ctx.request(
                Target::Direct(t),
                pb::LeaveReq {
                    leaving_peer_id: self.me.to_bytes().to_vec(),
                    overlay_specific: Vec::new(),
                },
            );
            self.pending.insert(tok, Pending::Leave);
        }
        self.joined = false;
        ctx.event(TopologyEvent::Left);
    }

    fn routing_table(&self) -> RoutingSnapshot {
        RoutingSnapshot {
            algorithm: NAME,
            node: self.me,
            predecessors: self.before(self.me, self.cfg.replicas + 1),
            successors: self.after(self.me, self.cfg.replicas + 1),
            fingers: Vec::new(),
        }
    }
}

impl OneHop {
    /// The membership is complete (joining) or merged: take our place.
    fn finish_snapshot(&mut self, ctx: &mut Ctx<'_>) {
        let Some((_, members)) = self.joining.take() else {
            return;
        };
        self.members.extend(members);
        self.members.insert(self.me);
        self.become_joined(ctx);
        self.announce(ctx, self.me, true, ctx.now.as_millis());
        // Our neighbours learn of us at once, whatever gossip does.
        let mut tell = self.after(self.me, 1);
        tell.extend(self.before(self.me, 1));
        tell.dedup();
        for t in tell {
            let body = Self::update_req(self.update(ctx, true));
            let tok = ctx.request(Target::Direct(t), body);
            self.pending.insert(tok, Pending::Stabilize(t));
        }
    }
}

/// The member responsible for `target` in a sorted membership (the first at or after it).
#[cfg(test)]
fn ring_responsible(members: &[Id], target: Id) -> Option<Id> {
    if members.is_empty() {
        return None;
    }
    let i = members.partition_point(|m| *m < target);
    Some(members[i % members.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_one_hop_to_the_ring_successor() {
        let members: Vec<Id> = (1..=100u128).map(|i| Id(i << 100)).collect();
        let me = members[10];
        let mut node = OneHop::new(me, OneHopConfig::default());
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
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
        // A failure report removes the member and is queued for gossip.
        node.on_link(&mut ctx, LinkEvent::Failed(members[11]));
        assert_eq!(node.members(), 99);
        assert_eq!(node.fresh.len(), 1);
        assert_eq!(
            node.replica_set(Id(me.0 - 1)),
            vec![me, members[12], members[13]]
        );
        // Being declared gone ourselves is refuted.
        node.receive_events(
            &mut ctx,
            &[pb::MembershipEvent {
                node: me.to_bytes().to_vec(),
                alive: false,
                stamp: 5,
            }],
        );
        assert!(node
            .fresh
            .iter()
            .any(|f| f.node == me && f.alive && f.stamp > 5));
    }
}
