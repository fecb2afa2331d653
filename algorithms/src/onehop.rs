//! A one-hop DHT for fleets where call set-up latency matters (after Gupta, Liskov and
//! Rodrigues, "One Hop Lookups for Peer-to-Peer Overlays", and Monnerat and Amorim's D1HT):
//! every peer knows every peer. Responsibility is Chord's (the first member at or after an
//! id), so a lookup goes straight to the responsible peer when the table is fresh; when it
//! is not, the peer it reaches passes it on by its own table (and a dead target's link
//! failure re-routes it).
//!
//! Membership events (a join, a leave, a failure a peer noticed) spread by D1HT's EDRA: with
//! L = ceil(log2 N), every gossip interval a peer sends message M(l), for each level l < L
//! that has events to carry, to its 2^l-th successor; M(l) has TTL l, and an event that
//! arrives with TTL t is passed on at the levels below t. An event a peer noticed itself goes
//! out at all L levels. With consistent tables this is a binomial-tree broadcast along the
//! ring: each peer receives each event once, after at most L intervals, so maintenance costs
//! about one event (about 30 bytes) per peer per membership change, whatever N is. A message
//! whose target turned out dead is sent again to the new 2^l-th successor.
//!
//! A joining peer pages the membership out of its admitting peer, which announces it, and
//! pulls the events of the last minutes from its new neighbours. Each peer checks its
//! successor periodically, so every failure has a witness. A peer that hears it was declared
//! gone refutes it with a newer event; self-lookups through peers from the past merge the
//! memberships of the two sides of a healed partition.

use crate::common::{self, ids_from_wire, wire_ids};
use crate::id::{distance, Id, NodeId};
use crate::idset::{IdSet, Universe};
use crate::time::Time;
use crate::topology::*;
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::{Body, Destination};
use prost::Message as _;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// The algorithm's name in configuration and in Join/Update bodies.
pub const NAME: &str = "onehop";

const T_GOSSIP: TimerId = TimerId(1);
const T_STABILIZE: TimerId = TimerId(2);
const T_SELF_LOOKUP: TimerId = TimerId(3);
const T_JOIN_RETRY: TimerId = TimerId(4);

/// Members per snapshot page.
pub const PAGE: usize = 8192;
/// Events per message; the rest wait for the next interval.
const MAX_EVENTS: usize = 4096;
/// Peers remembered after they left, for self-lookups.
const DEPARTED_CAP: usize = 64;
/// Levels are capped (2^40 members is beyond any fleet).
const MAX_LEVELS: usize = 40;
/// Reported arrivals and failures being checked at once; reports beyond are not taken (a
/// real failure is still noticed by this node's own traffic and its successor checks, a
/// real arrival by the joiner's own Updates).
const CONFIRM_MAX: usize = 1024;

/// Parameters of the one-hop algorithm (the `[onehop]` table of a node's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct OneHopConfig {
    /// Copies kept besides the responsible peer's.
    pub replicas: usize,
    /// How often queued membership events are sent on (D1HT's Θ); an event reaches every
    /// peer within about log2(N) intervals.
    pub gossip_interval: Duration,
    /// How often the successor is checked (None: only by traffic).
    pub stabilize_interval: Option<Duration>,
    /// How often the node looks itself up through a peer from its past (heals partitions).
    pub self_lookup_interval: Duration,
    /// Delay before a failed join is retried with the next bootstrap peer.
    pub join_retry: Duration,
    /// Whether another peer's report of a failure or an arrival is applied only after this
    /// node's own probe of the node agrees (proto/SPEC.md 5.1). Off, reports are taken as
    /// they come: cheaper (no probe per peer per membership change) but any member can
    /// then evict or invent members everywhere. For simulations at scale.
    pub confirm_reports: bool,
    /// Ids the membership tables of many nodes in one process may share (a simulator's
    /// peers): each table keeps one bit per universe id instead of the id. Empty in a
    /// daemon; what a table contains is the same either way.
    pub universe: Universe,
}

impl Default for OneHopConfig {
    fn default() -> Self {
        OneHopConfig {
            replicas: 2,
            gossip_interval: Duration::from_secs(1),
            stabilize_interval: Some(Duration::from_secs(10)),
            self_lookup_interval: Duration::from_secs(30),
            join_retry: Duration::from_secs(5),
            confirm_reports: true,
            universe: Universe::default(),
        }
    }
}

impl OneHopConfig {
    /// Clamps the fields to the ranges the algorithm supports.
    pub fn normalized(mut self) -> Self {
        self.replicas = self.replicas.min(16);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Join,
    /// A page of the membership from `from`, while joining or merging.
    Snapshot(Id),
    /// Message M(level) to `Id`; its events are kept in `in_flight` until answered.
    Gossip(Id, usize),
    Stabilize(Id),
    SelfLookup,
    Leave,
    /// Our own probe of a member another peer reported failed.
    Confirm(Id),
}

/// One membership event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ev {
    node: Id,
    alive: bool,
    stamp: u64,
    /// Ring positions the receiver of this copy covers (0: all 2^level of its level).
    span: u32,
}

impl Ev {
    fn wire(&self) -> pb::MembershipEvent {
        pb::MembershipEvent {
            node: self.node.to_bytes().to_vec(),
            alive: self.alive,
            stamp: self.stamp,
            span: self.span,
        }
    }
}

/// What this node knows of a node's newest event.
#[derive(Debug, Clone, Copy)]
struct Known {
    alive: bool,
    stamp: u64,
    seen: Time,
    /// Ring positions after us (ours included) the event has been passed on for.
    cover: usize,
}

/// The one-hop state machine of one node.
pub struct OneHop {
    me: Id,
    cfg: OneHopConfig,
    joined: bool,
    started: Time,
    /// Every live member, this node included.
    members: IdSet,
    /// Newest event per node (recent events only: `recent_window`).
    known: HashMap<Id, Known>,
    /// Members a neighbour listed and we did not know, contacted at most once per
    /// `recent_window` (when: now): without it every check that lists a dead node, and every
    /// answer to those checks, sends it another request while the first still waits.
    hinted: HashMap<Id, Time>,
    /// `outgoing[l]`: events for the next message M(l).
    outgoing: Vec<Vec<Ev>>,
    /// Events sent and not yet answered, by token.
    in_flight: HashMap<u64, Vec<Ev>>,
    /// Events learned recently, handed to a joiner that asks.
    recent: VecDeque<(Time, Ev)>,
    departed: VecDeque<Id>,
    pending: HashMap<u64, Pending>,
    bootstrap: Vec<Id>,
    join_attempt: usize,
    /// While joining: the admitting peer and the members paged so far.
    joining: Option<(Id, Vec<Id>)>,
    /// Events other peers sent that would change our membership (the failure of a member
    /// we hold, the arrival of one we do not), with the ring positions the report asks us
    /// to cover: applied only once our own probe of the node agrees.
    confirming: HashMap<Id, (Ev, usize)>,
}

impl OneHop {
    pub fn new(me: NodeId, cfg: OneHopConfig) -> Self {
        let mut members = IdSet::with_universe(cfg.universe.clone());
        members.insert(me);
        OneHop {
            me,
            cfg: cfg.normalized(),
            joined: false,
            started: Time(0),
            members,
            known: HashMap::new(),
            hinted: HashMap::new(),
            outgoing: Vec::new(),
            in_flight: HashMap::new(),
            recent: VecDeque::new(),
            departed: VecDeque::new(),
            pending: HashMap::new(),
            bootstrap: Vec::new(),
            join_attempt: 0,
            joining: None,
            confirming: HashMap::new(),
        }
    }

    /// How many members this node knows (itself included).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    fn successor_of(&self, target: Id) -> Id {
        self.members.successor_of(target).unwrap_or(self.me)
    }

    /// The `n` members after `id` on the ring (not `id` itself).
    fn after(&self, id: Id, n: usize) -> Vec<Id> {
        self.members.after(id, n)
    }

    /// The `n` members before `id` on the ring, closest first.
    fn before(&self, id: Id, n: usize) -> Vec<Id> {
        self.members.before(id, n)
    }

    /// L = ceil(log2 N): the levels of EDRA for the current membership.
    fn levels(&self) -> usize {
        let n = self.members.len().max(2);
        ((usize::BITS - (n - 1).leading_zeros()) as usize).min(MAX_LEVELS)
    }

    /// How long learned events are kept for joiners: a few full spreads.
    fn recent_window(&self) -> Duration {
        (self.cfg.gossip_interval * (3 * self.levels() as u32)).max(Duration::from_secs(60))
    }

    fn random_member(&self, ctx: &mut Ctx<'_>) -> Option<Id> {
        if self.members.len() < 2 {
            return None;
        }
        let i = ctx.rng.random_range(0..self.members.len());
        self.members
            .get(i)
            .filter(|m| *m != self.me)
            .or_else(|| self.after(self.me, 1).first().copied())
    }

    /// Applies a membership change; reports a change of our neighbourhood to the core.
    fn change(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool) {
        let near = if alive {
            if !self.members.insert(node) {
                return;
            }
            self.in_window(node)
        } else {
            if !self.members.contains(&node) {
                return;
            }
            let near = self.in_window(node);
            self.members.remove(&node);
            if self.departed.len() == DEPARTED_CAP {
                self.departed.pop_front();
            }
            self.departed.push_back(node);
            near
        };
        if self.joined && near {
            ctx.event(TopologyEvent::ResponsibilityChanged);
        }
    }

    /// Whether member `node` is in our neighbourhood: among the `replicas` members after
    /// us or the `replicas + 1` before us (two ranks, instead of listing the neighbourhood
    /// before and after every change).
    fn in_window(&self, node: Id) -> bool {
        let n = self.members.len();
        let d = (self.members.rank(node) + n - self.members.rank(self.me)) % n.max(1);
        d <= self.cfg.replicas || d + self.cfg.replicas + 1 >= n
    }

    /// Queues an event for the part of the ring after us that we cover: `cover` ring
    /// positions, ours included. Level l goes to our 2^l-th successor, which covers
    /// min(2^l, cover - 2^l) positions; levels already queued for `covered` are skipped.
    fn spread(&mut self, ev: Ev, cover: usize, covered: usize) {
        for l in 0..MAX_LEVELS {
            let step = 1usize << l;
            if step >= cover {
                break;
            }
            let child = step.min(cover - step);
            let before = if step < covered {
                step.min(covered - step)
            } else {
                0
            };
            if child > before {
                if self.outgoing.len() <= l {
                    self.outgoing.resize_with(l + 1, Vec::new);
                }
                self.outgoing[l].push(Ev {
                    span: child as u32,
                    ..ev
                });
            }
        }
    }

    /// An event whose copy asks us to cover `cover` ring positions (ours included; `None`
    /// for one we noticed ourselves, which covers the whole ring): applied if it is news,
    /// and passed on where it has not been yet.
    fn learn(&mut self, ctx: &mut Ctx<'_>, ev: Ev, cover: Option<usize>) {
        if ev.node == self.me {
            if !ev.alive && self.joined {
                // Declared gone while alive: refute with a newer event.
                self.announce(ctx, self.me, true, ev.stamp.max(ctx.now.as_millis()) + 1);
            }
            return;
        }
        let mut ev = ev;
        let covered = match self.known.get(&ev.node) {
            Some(k) if k.stamp > ev.stamp && k.alive != ev.alive => return,
            // The same news again (another witness of the same failure, say): spread it only
            // where it has not gone yet, under the newest stamp.
            Some(k) if k.alive == ev.alive => {
                ev.stamp = ev.stamp.max(k.stamp);
                k.cover
            }
            _ => 0,
        };
        if covered == 0 {
            self.change(ctx, ev.node, ev.alive);
            self.recent.push_back((ctx.now, ev));
        }
        let cover = cover.unwrap_or(usize::MAX).min(self.members.len()).max(1);
        self.known.insert(
            ev.node,
            Known {
                alive: ev.alive,
                stamp: ev.stamp,
                seen: ctx.now,
                cover: cover.max(covered),
            },
        );
        self.spread(ev, cover, covered);
    }

    /// An event of our own making: applied and sent round the whole ring.
    fn announce(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool, stamp: u64) {
        let ev = Ev {
            node,
            alive,
            stamp,
            span: 0,
        };
        if node == self.me {
            self.recent.push_back((ctx.now, ev));
            self.spread(ev, self.members.len(), 0);
        } else {
            self.learn(ctx, ev, None);
        }
    }

    /// Events of a message M(`level`).
    fn receive_events(&mut self, ctx: &mut Ctx<'_>, events: &[pb::MembershipEvent], level: usize) {
        let full = 1usize << level.min(MAX_LEVELS);
        for e in events {
            let Some(node) = Id::from_slice(&e.node) else {
                continue;
            };
            let ev = Ev {
                node,
                alive: e.alive,
                stamp: e.stamp,
                span: 0,
            };
            let cover = if e.span == 0 {
                full
            } else {
                (e.span as usize).min(full)
            };
            self.hear(ctx, ev, cover);
        }
    }

    /// An event another peer sent. One that would change our membership is only a
    /// report: a peer can sign only as itself, so it could make up anyone's failure or a
    /// node that does not exist. We probe the node and take the event (and pass it on)
    /// only if the probe agrees: an answer the node signed for an arrival, none for a
    /// failure. Events that change nothing here are taken as they come.
    fn hear(&mut self, ctx: &mut Ctx<'_>, ev: Ev, cover: usize) {
        if !self.cfg.confirm_reports
            || ev.node == self.me
            || ev.alive == self.members.contains(&ev.node)
        {
            return self.learn(ctx, ev, Some(cover));
        }
        if self
            .known
            .get(&ev.node)
            .is_some_and(|k| k.alive != ev.alive && k.stamp > ev.stamp)
        {
            return; // older than what we know
        }
        if let Some((e, c)) = self.confirming.get_mut(&ev.node) {
            if e.alive == ev.alive {
                e.stamp = e.stamp.max(ev.stamp);
                *c = (*c).max(cover);
            }
            return;
        }
        if self.confirming.len() >= CONFIRM_MAX {
            return;
        }
        let tok = ctx.request(
            Target::Direct(ev.node),
            pb::ProbeReq {
                requested_info: vec![],
            },
        );
        self.pending.insert(tok, Pending::Confirm(ev.node));
        self.confirming.insert(ev.node, (ev, cover));
    }

    /// The outcome of our probe of `x` (`answered`: an answer `x` signed came back): the
    /// reported event is applied and passed on if the probe agrees with it.
    fn confirmed(&mut self, ctx: &mut Ctx<'_>, x: Id, answered: bool) {
        let Some((ev, cover)) = self.confirming.remove(&x) else {
            return;
        };
        if answered == ev.alive && self.members.contains(&x) != ev.alive {
            self.learn(ctx, ev, Some(cover));
        }
    }

    fn recent_events(&self) -> Vec<pb::MembershipEvent> {
        self.recent
            .iter()
            .rev()
            .take(MAX_EVENTS)
            .map(|(_, e)| e.wire())
            .collect()
    }

    fn update(&self, ctx: &Ctx<'_>) -> pb::OneHopUpdate {
        pb::OneHopUpdate {
            uptime: ctx
                .now
                .since(self.started)
                .as_secs()
                .min(u64::from(u32::MAX)) as u32,
            ..Default::default()
        }
    }

    fn update_req(u: pb::OneHopUpdate) -> pb::UpdateReq {
        pb::UpdateReq {
            algorithm: NAME.into(),
            overlay_specific: u.encode_to_vec(),
        }
    }

    /// One EDRA interval: message M(l) to the 2^l-th successor for every level with events.
    fn gossip(&mut self, ctx: &mut Ctx<'_>) {
        // A node's newest event orders later copies of events about it; every copy arrives
        // within a spread, so it is kept as long as recent events are (three spreads).
        let keep = self.recent_window();
        self.known.retain(|_, k| ctx.now.since(k.seen) < keep);
        self.hinted.retain(|_, t| ctx.now.since(*t) < keep);
        while let Some((t, _)) = self.recent.front() {
            if ctx.now.since(*t) < keep {
                break;
            }
            self.recent.pop_front();
        }
        let levels = self.levels();
        // Levels the ring has shrunk below: their receivers are covered by lower levels.
        self.outgoing.truncate(levels);
        let me = self.members.rank(self.me);
        for l in 0..self.outgoing.len() {
            if self.outgoing[l].is_empty() {
                continue;
            }
            let Some(t) = self.members.get_wrapping(me + (1usize << l)) else {
                continue;
            };
            if t == self.me {
                self.outgoing[l].clear();
                continue;
            }
            let q = &mut self.outgoing[l];
            let events: Vec<Ev> = q.drain(..q.len().min(MAX_EVENTS)).collect();
            let full = 1u32 << l;
            let u = pb::OneHopUpdate {
                ttl: l as u32,
                events: events
                    .iter()
                    .map(|e| Ev {
                        span: if e.span == full { 0 } else { e.span },
                        ..*e
                    })
                    .map(|e| e.wire())
                    .collect(),
                ..self.update(ctx)
            };
            let tok = ctx.request(Target::Direct(t), Self::update_req(u));
            self.pending.insert(tok, Pending::Gossip(t, l));
            self.in_flight.insert(tok, events);
        }
    }

    /// Checks the successor; `pull` asks for its recent events (a joiner does).
    /// Our neighbourhood on both sides, sent to and by the peers we check: a member one side
    /// knows and the other does not (an event a broadcast missed while views differed) is
    /// contacted and, if it answers, announced.
    fn neighbourhood(&self) -> Vec<Vec<u8>> {
        let mut v = self.before(self.me, self.cfg.replicas + 1);
        v.extend(self.after(self.me, self.cfg.replicas + 1));
        wire_ids(&v)
    }

    fn hints(&mut self, ctx: &mut Ctx<'_>, ids: &[Vec<u8>]) {
        let (keep, now) = (self.recent_window(), ctx.now);
        for id in ids_from_wire(ids) {
            let known_gone = self.known.get(&id).is_some_and(|k| !k.alive);
            if id == self.me || self.members.contains(&id) || known_gone {
                continue;
            }
            if self.hinted.get(&id).is_some_and(|t| now.since(*t) < keep) {
                continue;
            }
            self.hinted.insert(id, now);
            self.stabilize(ctx, id, false);
        }
    }

    fn stabilize(&mut self, ctx: &mut Ctx<'_>, to: Id, pull: bool) {
        let u = pb::OneHopUpdate {
            want_recent: pull,
            members: self.neighbourhood(),
            ..self.update(ctx)
        };
        let tok = ctx.request(Target::Direct(to), Self::update_req(u));
        self.pending.insert(tok, Pending::Stabilize(to));
    }

    fn request_page(&mut self, ctx: &mut Ctx<'_>, from: Id, start: Id) {
        let u = pb::OneHopUpdate {
            snapshot_from: start.to_bytes().to_vec(),
            snapshot_limit: PAGE as u32,
            ..self.update(ctx)
        };
        let tok = ctx.request(Target::Direct(from), Self::update_req(u));
        self.pending.insert(tok, Pending::Snapshot(from));
    }

    fn page(&self, start: Id, limit: usize) -> (Vec<Id>, bool) {
        let limit = limit.clamp(1, PAGE);
        let mut it = self.members.iter_from(start);
        let v: Vec<Id> = it.by_ref().take(limit).collect();
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

    /// Chord's responsibility (the first member at or after the target): a responder
    /// strictly between this node and the target cannot be responsible.
    fn plausible_responder(&self, target: Id, responder: NodeId) -> bool {
        // Strictly between, clockwise: 0 < d(me, responder) < d(me, target) (nothing is,
        // when the target is this node's own id).
        let d = crate::id::distance(self.me, responder);
        !self.joined || d == 0 || d >= crate::id::distance(self.me, target)
    }

    fn is_neighbor(&self, node: NodeId) -> bool {
        node != self.me && self.members.contains(&node)
    }

    /// Within `replicas + 1` members either side of the resource's successor (every
    /// member is a neighbour here, so that alone would admit anyone).
    fn may_copy_to_me(&self, node: NodeId, resource: Id) -> bool {
        let first = self.successor_of(resource);
        let span = self.cfg.replicas + 1;
        node == first
            || self.after(first, span).contains(&node)
            || self.before(first, span).contains(&node)
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
        origin: Origin,
        body: &Body,
    ) -> Result<Body, (ErrorCode, String)> {
        let from = origin.id;
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
                // announce it at once so that gossip starts while it pages, if it reached
                // us over its own link (else its first page request, which does, is when).
                if origin.reached {
                    self.announce(ctx, jp, true, ctx.now.as_millis());
                }
                let (page, more) = self.page(Id(0), PAGE);
                let u = pb::OneHopUpdate {
                    members: wire_ids(&page),
                    more,
                    ..self.update(ctx)
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
                if origin.reached {
                    // Gossip travels over links: events in a routed Update are not taken.
                    self.met(ctx, from);
                    self.receive_events(ctx, &req.events, req.ttl as usize);
                }
                let mut ans = self.update(ctx);
                if req.snapshot_limit > 0 {
                    let start = Id::from_slice(&req.snapshot_from).unwrap_or(Id(0));
                    let (page, more) = self.page(start, req.snapshot_limit as usize);
                    ans.members = wire_ids(&page);
                    ans.more = more;
                } else if !req.members.is_empty() {
                    // A neighbour's check: compare neighbourhoods.
                    self.hints(ctx, &req.members);
                    ans.members = self.neighbourhood();
                    if req.want_recent {
                        ans.events = self.recent_events();
                    }
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
        if let Pending::Confirm(x) = p {
            // Any answer `x` signed, an Error included, shows it alive.
            return self.confirmed(ctx, x, responder == Some(x));
        }
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
            (Pending::Gossip(..) | Pending::Stabilize(_), Some(u)) => {
                self.in_flight.remove(&token);
                if let Some(r) = responder {
                    self.met(ctx, r);
                }
                // Events pulled by a joiner: applied here, not passed on.
                self.receive_events(ctx, &u.events, 0);
                if matches!(p, Pending::Stabilize(_)) {
                    self.hints(ctx, &u.members);
                }
            }
            (Pending::Gossip(n, _) | Pending::Stabilize(n), None) => {
                if answer.is_err() && self.members.contains(&n) {
                    self.announce(ctx, n, false, ctx.now.as_millis());
                }
                if let (Pending::Gossip(_, l), Some(events)) = (p, self.in_flight.remove(&token)) {
                    // The 2^l-th successor is someone else now: it gets them next interval.
                    let events: Vec<Ev> = events.into_iter().filter(|e| e.node != n).collect();
                    if self.outgoing.len() <= l {
                        self.outgoing.resize_with(l + 1, Vec::new);
                    }
                    self.outgoing[l].extend(events);
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
            (Pending::Leave | Pending::Confirm(_), _) => {}
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
                if let Some(&s) = self.after(self.me, 1).first() {
                    self.stabilize(ctx, s, false);
                }
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
        // The admitting peer announced us. Our neighbours learn of us at once, whatever
        // the broadcast does, and hand us the events we missed while paging.
        let mut tell = self.after(self.me, 1);
        tell.extend(self.before(self.me, 1));
        tell.dedup();
        for t in tell {
            self.stabilize(ctx, t, true);
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
    use rand::SeedableRng;

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
}
