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

mod edra;

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
                if origin.reached {
                    self.announce(ctx, leaver, false, ctx.now.as_millis());
                } else {
                    // Through other peers: perhaps an old Leave replayed (its signature is
                    // still good), so a report like any other, checked before it is applied.
                    let ev = Ev {
                        node: leaver,
                        alive: false,
                        stamp: ctx.now.as_millis(),
                        span: 0,
                    };
                    self.hear(ctx, ev, usize::MAX);
                }
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

#[cfg(test)]
mod tests;
