//! Chord, the mandatory base algorithm, after the CHORD-RELOAD topology of RFC 6940
//! section 9: successor and predecessor lists, a finger table with random fingers, join
//! through the admitting peer, Update exchanges (periodic stabilisation and reactive
//! recovery), graceful Leave, and periodic self-lookups that heal partitions.

mod config;
mod finger_table;
mod neighbors;

pub use config::ChordConfig;
pub use finger_table::FingerTable;
pub use neighbors::{NeighborList, Side};

use crate::common::{self, ids_from_wire, wire_ids};
use crate::id::{add, distance, in_open, in_open_closed, Id, NodeId};
use crate::time::Time;
use crate::topology::*;
use crate::tuning::{
    finger_interval, size_estimate, stabilize_interval, ChurnEstimator, CHURN_HALF_LIFE,
};
use p2psip_proto::pb::{self, chord_update, ErrorCode};
use p2psip_proto::{Body, Destination};
use prost::Message as _;
use rand::Rng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// The algorithm's name in configuration and in Join/Update bodies.
pub const NAME: &str = "chord";

/// The `n` candidates with the smallest `key` (ties: by id), in no particular order.
fn closest_by(ids: &[Id], n: usize, key: impl Fn(Id) -> u128) -> Vec<Id> {
    let mut v: Vec<(u128, Id)> = ids.iter().map(|i| (key(*i), *i)).collect();
    if v.len() > n {
        v.select_nth_unstable(n);
        v.truncate(n);
    }
    v.into_iter().map(|(_, i)| i).collect()
}

const T_STABILIZE: TimerId = TimerId(1);
const T_FINGERS: TimerId = TimerId(2);
const T_SELF_LOOKUP: TimerId = TimerId(3);
const T_JOIN_RETRY: TimerId = TimerId(4);

/// The node lists of a ChordUpdate.
struct Lists {
    preds: Vec<Id>,
    succs: Vec<Id>,
    fingers: Vec<Id>,
}

/// How many once-seen peers are remembered for self-lookups after they left the tables.
const KNOWN_CAP: usize = 64;

/// How long a node that failed or left stays out of our tables unless it talks to us
/// itself. Neighbour lists are copied from neighbour to neighbour; without this a dead
/// node that one of them still lists comes back with every copy (in a small ring, whose
/// lists hold every node, it kept coming back) and requests for its range are sent to it
/// until each copy has failed again.
const QUARANTINE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Join,
    /// Verifying a candidate neighbour before it enters the tables.
    Probe(Id),
    /// Periodic or reactive Update with a neighbour.
    Stabilize(Id),
    /// A routed lookup of a random point of finger interval `i`.
    Finger(usize),
    /// A direct check that the node held as finger `i` is still alive.
    FingerCheck(usize, Id),
    /// Proximity: a routed lookup of another random point of live finger `i`'s interval.
    FingerSample(usize),
    /// Proximity: the round trip to a candidate for finger `i`.
    FingerCandidate(usize, Id),
    SelfLookup,
    Leave,
}

/// The Chord state machine of one node.
pub struct Chord {
    me: Id,
    cfg: ChordConfig,
    joined: bool,
    started: Time,
    succs: NeighborList,
    preds: NeighborList,
    fingers: FingerTable,
    known: VecDeque<Id>,
    probing: HashSet<Id>,
    pending: HashMap<u64, Pending>,
    bootstrap: Vec<Id>,
    join_attempt: usize,
    next_finger: usize,
    /// The first predecessor and when we last heard its lists.
    pred_heard: (Id, Time),
    /// Nodes that failed or left, and when: kept out of the tables for [`QUARANTINE`].
    gone: HashMap<Id, Time>,
    /// Nodes the transport holds a link to (their handshakes proved their Node-IDs): a
    /// neighbour's list that omits one does not take it out of ours; its link's failure
    /// does.
    linked: HashSet<Id>,
    /// Departures and arrivals among the neighbours (self-tuning, RFC 7363 style).
    churn: ChurnEstimator,
    /// Round trips to neighbours as the core measured them (with `proximity`: route
    /// selection weighs them against progress).
    rtts: HashMap<Id, Duration>,
}

impl Chord {
    pub fn new(me: NodeId, cfg: ChordConfig) -> Self {
        let cfg = cfg.normalized();
        Chord {
            me,
            succs: NeighborList::new(me, Side::Succ, cfg.successors),
            preds: NeighborList::new(me, Side::Pred, cfg.predecessors),
            fingers: FingerTable::new(me, cfg.fingers),
            cfg,
            joined: false,
            started: Time(0),
            known: VecDeque::new(),
            probing: HashSet::new(),
            pending: HashMap::new(),
            bootstrap: Vec::new(),
            join_attempt: 0,
            next_finger: 0,
            pred_heard: (me, Time(0)),
            gone: HashMap::new(),
            linked: HashSet::new(),
            churn: ChurnEstimator::new(CHURN_HALF_LIFE),
            rtts: HashMap::new(),
        }
    }

    /// The neighbours (predecessors and successors, each once), sorted.
    fn neighbour_set(&self) -> Vec<Id> {
        let mut v: Vec<Id> = self
            .succs
            .ids()
            .iter()
            .chain(self.preds.ids())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// What the estimator knows: the departure rate, arrival rate and overlay size.
    pub fn churn_estimate(&self) -> (f64, f64, f64) {
        (
            self.churn.departure_rate(),
            self.churn.arrival_rate(),
            size_estimate(self.me, self.preds.ids(), self.succs.ids()),
        )
    }

    /// The stabilisation interval now: the configured one, or with self-tuning the one
    /// derived from the churn seen (None: periodic stabilisation is off).
    pub fn stabilize_every(&self) -> Option<Duration> {
        let fixed = self.cfg.stabilize_interval?;
        if !self.cfg.self_tuning {
            return Some(fixed);
        }
        let (mu, lambda, _) = self.churn_estimate();
        Some(stabilize_interval(
            mu,
            lambda,
            self.cfg.successors,
            &self.cfg.tuning,
        ))
    }

    /// The interval between finger-refresh rounds now.
    pub fn fingers_every(&self) -> Duration {
        if !self.cfg.self_tuning {
            return self.cfg.finger_interval;
        }
        let (mu, _, n) = self.churn_estimate();
        let distinct = self.fingers.distinct().len().max(1);
        finger_interval(
            mu,
            n,
            distinct,
            self.cfg.fingers_per_round,
            &self.cfg.tuning,
        )
    }

    /// Whether `id` failed or left within the last [`QUARANTINE`].
    fn is_gone(&self, id: Id, now: Time) -> bool {
        self.gone
            .get(&id)
            .is_some_and(|t| now.since(*t) < QUARANTINE)
    }

    /// Notes that `id` failed or left (and forgets quarantines that ran out).
    fn mark_gone(&mut self, id: Id, now: Time) {
        self.gone.retain(|_, t| now.since(*t) < QUARANTINE);
        self.gone.insert(id, now);
    }

    /// Successors, closest first.
    pub fn successors(&self) -> &[Id] {
        self.succs.ids()
    }

    /// Predecessors, closest first.
    pub fn predecessors(&self) -> &[Id] {
        self.preds.ids()
    }

    /// The finger table.
    pub fn finger_table(&self) -> &FingerTable {
        &self.fingers
    }

    fn remember(&mut self, id: Id) {
        if id == self.me || self.known.contains(&id) {
            return;
        }
        if self.known.len() == KNOWN_CAP {
            self.known.pop_front();
        }
        self.known.push_back(id);
    }

    /// The replica window: the predecessors whose ranges this node holds copies of
    /// (`replicas + 1` of them) and the successors it copies its own range to. A change in
    /// it changes what this node stores or replicates.
    fn window(&self) -> (Vec<Id>, Vec<Id>) {
        let r = self.cfg.replicas.min(self.succs.ids().len());
        let p = (self.cfg.replicas + 1).min(self.preds.ids().len());
        (
            self.preds.ids()[..p].to_vec(),
            self.succs.ids()[..r].to_vec(),
        )
    }

    /// Applies `f` to the tables and reports ResponsibilityChanged if the window moved.
    fn changing(&mut self, ctx: &mut Ctx<'_>, f: impl FnOnce(&mut Self) -> bool) -> bool {
        let before = self.window();
        let tuning = self.cfg.self_tuning;
        let neighbours = if tuning {
            self.neighbour_set()
        } else {
            Vec::new()
        };
        let changed = f(self);
        if self.joined && self.window() != before {
            ctx.event(TopologyEvent::ResponsibilityChanged);
        }
        if changed && tuning {
            let now_neighbours = self.neighbour_set();
            if self.joined {
                let new = now_neighbours
                    .iter()
                    .filter(|n| neighbours.binary_search(n).is_err())
                    .count();
                for _ in 0..new {
                    self.churn.arrival(ctx.now);
                }
            }
            self.churn.observe(ctx.now, now_neighbours.len());
        }
        changed
    }

    /// A node known to be alive (it talked to us) enters the tables where it fits.
    fn consider(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        if id == self.me {
            return;
        }
        self.gone.remove(&id);
        self.remember(id);
        self.changing(ctx, |c| {
            let a = c.succs.insert(id);
            let b = c.preds.insert(id);
            c.fingers.offer(id);
            a || b
        });
    }

    /// A node that failed or left is removed from every table.
    fn drop_node(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        self.mark_gone(id, ctx.now);
        let was_neighbor = self.succs.contains(id) || self.preds.contains(id);
        if was_neighbor && self.joined {
            self.churn.departure(ctx.now);
        }
        let was_finger: Vec<usize> = (0..self.fingers.len())
            .filter(|i| self.fingers.get(*i) == Some(id))
            .collect();
        self.changing(ctx, |c| {
            let a = c.succs.remove(id);
            let b = c.preds.remove(id);
            let f = c.fingers.remove(id);
            a || b || f
        });
        self.remember(id);
        if was_neighbor && self.cfg.reactive_recovery && self.joined {
            self.stabilize(ctx, true);
        }
        if self.joined && self.succs.is_empty() {
            self.self_lookup(ctx);
        }
        if self.joined {
            // A dead finger lengthens every route through its interval until it is
            // replaced: look for a new one now rather than at its next turn.
            for i in was_finger {
                self.find_finger(ctx, i);
            }
        }
    }

    /// A node another peer says is gone: a direct Update to it, which drops it if it fails
    /// (one check at a time per node, however often it is reported).
    fn check_reported(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        let held = self.succs.contains(id)
            || self.preds.contains(id)
            || self.fingers.iter().any(|f| f == id);
        let checking = self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Stabilize(x) if *x == id));
        if held && !checking {
            let body = self.update_body(chord_update::Type::Neighbors, ctx.now);
            let tok = ctx.request(Target::Direct(id), body);
            self.pending.insert(tok, Pending::Stabilize(id));
        }
    }

    /// Candidates reported by another node (hints): those that would enter a list are
    /// verified with a direct Update before they do. One message costs at most a list's
    /// worth of probes on each side (the candidates closest to us), and no more than
    /// `successors + predecessors` probes are out at a time, whatever the message listed.
    fn learn(&mut self, ctx: &mut Ctx<'_>, ids: &[Id]) {
        let now = ctx.now;
        let mut fresh: Vec<Id> = ids
            .iter()
            .copied()
            .filter(|c| *c != self.me && !self.probing.contains(c) && !self.is_gone(*c, now))
            .filter(|c| self.succs.would_enter(*c) || self.preds.would_enter(*c))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let me = self.me;
        let mut pick = closest_by(&fresh, self.cfg.successors, |c| distance(me, c));
        pick.extend(closest_by(&fresh, self.cfg.predecessors, |c| {
            distance(c, me)
        }));
        pick.sort_unstable();
        pick.dedup();
        let cap = self.cfg.successors + self.cfg.predecessors;
        for c in pick {
            if self.probing.len() >= cap {
                break;
            }
            self.probing.insert(c);
            let body = self.update_body(chord_update::Type::Neighbors, ctx.now);
            let t = ctx.request(Target::Direct(c), body);
            self.pending.insert(t, Pending::Probe(c));
        }
    }

    fn chord_update(&self, ty: chord_update::Type, now: Time) -> pb::ChordUpdate {
        pb::ChordUpdate {
            uptime: now.since(self.started).as_secs().min(u32::MAX as u64) as u32,
            r#type: ty as i32,
            predecessors: wire_ids(self.preds.ids()),
            successors: wire_ids(self.succs.ids()),
            fingers: if ty == chord_update::Type::Full {
                self.fingers
                    .distinct()
                    .iter()
                    .map(|i| i.to_bytes().to_vec())
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn update_body(&self, ty: chord_update::Type, now: Time) -> pb::UpdateReq {
        pb::UpdateReq {
            algorithm: NAME.into(),
            overlay_specific: self.chord_update(ty, now).encode_to_vec(),
        }
    }

    /// Sends an Update to the first successor (and, after a neighbour failed, to the first
    /// predecessor too). The periodic round needs only the successor: its answer carries
    /// the successor's lists to us, the request carries ours to it, and our predecessor's
    /// own round does the same for the link behind us. A predecessor that dies is noticed
    /// by the link's keep-alive.
    fn stabilize(&mut self, ctx: &mut Ctx<'_>, both: bool) {
        let mut targets: Vec<Id> = Vec::new();
        targets.extend(self.succs.first());
        if both {
            targets.extend(self.preds.first());
        }
        targets.dedup();
        for t in targets {
            let body = self.update_body(chord_update::Type::Neighbors, ctx.now);
            let tok = ctx.request(Target::Direct(t), body);
            self.pending.insert(tok, Pending::Stabilize(t));
        }
    }

    fn refresh_fingers(&mut self, ctx: &mut Ctx<'_>) {
        let Some(succ) = self.succs.first() else {
            return;
        };
        for _ in 0..self.cfg.fingers_per_round {
            let i = self.next_finger;
            self.next_finger = (i + 1) % self.fingers.len();
            let start = self.fingers.interval_start(i);
            if in_open_closed(start, self.me, succ) {
                // The whole interval starts before the successor: that is the finger.
                self.fingers.set(i, succ);
                continue;
            }
            if let Some(f) = self.fingers.get(i) {
                // A live finger anywhere in its interval routes as well as a fresh one: a
                // direct probe (one round trip) keeps it; only a missing or dead finger
                // costs a routed lookup (log N hops each way).
                let body = pb::ProbeReq {
                    requested_info: vec![],
                };
                let tok = ctx.request(Target::Direct(f), body);
                self.pending.insert(tok, Pending::FingerCheck(i, f));
                if self.cfg.proximity {
                    // Sample another node of the interval: the faster one stays.
                    let target = self.fingers.random_target(i, ctx.rng.random());
                    let tok = ctx.request(
                        Target::Route(vec![Destination::Resource(target)]),
                        pb::ProbeReq {
                            requested_info: vec![],
                        },
                    );
                    self.pending.insert(tok, Pending::FingerSample(i));
                }
                continue;
            }
            self.find_finger(ctx, i);
        }
    }

    /// A routed lookup of a random point of finger interval `i` (unless the interval
    /// starts before our successor, which is then the finger).
    fn find_finger(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let Some(succ) = self.succs.first() else {
            return;
        };
        if in_open_closed(self.fingers.interval_start(i), self.me, succ) {
            self.fingers.set(i, succ);
            return;
        }
        let target = self.fingers.random_target(i, ctx.rng.random());
        let body = pb::ProbeReq {
            requested_info: vec![],
        };
        let tok = ctx.request(Target::Route(vec![Destination::Resource(target)]), body);
        self.pending.insert(tok, Pending::Finger(i));
    }

    /// Looks up `me + 1` through a random known peer: the answer names the node that
    /// peer's ring holds as our successor. Finding a closer one heals a partition.
    fn self_lookup(&mut self, ctx: &mut Ctx<'_>) {
        let mut pool: Vec<Id> = self.known.iter().copied().collect();
        pool.extend(self.fingers.distinct());
        pool.extend(self.preds.ids());
        pool.extend(self.bootstrap.iter().copied());
        pool.retain(|x| *x != self.me);
        if pool.is_empty() {
            return;
        }
        let via = pool[ctx.rng.random_range(0..pool.len())];
        let tok = ctx.request(
            Target::SourceRoute(vec![
                Destination::Node(via),
                Destination::Resource(add(self.me, 1)),
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

    fn arm_timers(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(i) = self.stabilize_every() {
            ctx.set_timer_jittered(i, T_STABILIZE);
        }
        ctx.set_timer_jittered(self.fingers_every(), T_FINGERS);
        ctx.set_timer_jittered(self.cfg.self_lookup_interval, T_SELF_LOOKUP);
    }

    fn become_joined(&mut self, ctx: &mut Ctx<'_>) {
        self.joined = true;
        self.started = ctx.now;
        ctx.event(TopologyEvent::Joined);
        ctx.event(TopologyEvent::ResponsibilityChanged);
        self.arm_timers(ctx);
    }

    fn decode_update(bytes: &[u8]) -> Option<Lists> {
        let u = pb::ChordUpdate::decode(bytes).ok()?;
        Some(Lists {
            preds: ids_from_wire(&u.predecessors),
            succs: ids_from_wire(&u.successors),
            fingers: ids_from_wire(&u.fingers),
        })
    }

    /// Handles a neighbour's lists from an Update request or answer.
    fn on_neighbor_lists(&mut self, ctx: &mut Ctx<'_>, from: Id, preds: &[Id], succs: &[Id]) {
        self.consider(ctx, from);
        if self.preds.first() == Some(from) {
            self.pred_heard = (from, ctx.now);
        }
        let now = ctx.now;
        if self.succs.first() == Some(from) {
            // Our successor's successor list is authoritative for ours (classic Chord): it
            // drops entries that died even when we never sent to them. Entries we saw fail
            // are not taken back from it; entries we hold a live link to stay.
            let rest = self.vouched(succs, now, |c| c.succs.ids());
            self.changing(ctx, |c| c.succs.replace(from, &rest));
        }
        if self.preds.first() == Some(from) {
            let rest = self.vouched(preds, now, |c| c.preds.ids());
            self.changing(ctx, |c| c.preds.replace(from, &rest));
        }
        let mut cands = preds.to_vec();
        cands.extend_from_slice(succs);
        self.learn(ctx, &cands);
    }

    /// What our first successor's (or predecessor's) list `l` puts into ours: its
    /// entries that we have not seen fail (classic Chord stabilisation: its list is
    /// authoritative for ours; it came over its own link), plus the entries of our own
    /// list (`ours`) that we hold a live link to, whether it names them or not, so that one
    /// neighbour cannot take out of our tables the nodes we reach ourselves.
    fn vouched(&self, l: &[Id], now: Time, ours: impl Fn(&Self) -> &[Id]) -> Vec<Id> {
        let mut v: Vec<Id> = l
            .iter()
            .copied()
            .filter(|x| *x != self.me && !self.is_gone(*x, now))
            .collect();
        v.extend(
            ours(self)
                .iter()
                .copied()
                .filter(|x| self.linked.contains(x)),
        );
        v
    }

    /// The closest node known to precede `target` (classic Chord routing).
    fn closest_preceding(&self, target: Id) -> Option<Id> {
        let mut best: Option<Id> = None;
        let mut consider = |n: Id| {
            if in_open(n, self.me, target)
                && best.is_none_or(|b| distance(self.me, n) > distance(self.me, b))
            {
                best = Some(n);
            }
        };
        self.fingers.iter().for_each(&mut consider);
        self.succs.ids().iter().copied().for_each(&mut consider);
        self.preds.ids().iter().copied().for_each(&mut consider);
        if !self.cfg.proximity || !self.cfg.proximity_routing || self.rtts.is_empty() {
            return best;
        }
        best.map(|b| self.fastest_way(target, b))
    }

    /// Proximity route selection: among the nodes between this one and `target`, the one
    /// whose round trip plus the hops it leaves to go costs least. Each halving of the
    /// distance left saves half a hop on average in Chord, so a node that leaves `r` times
    /// the distance `best` leaves costs `0.5 * log2(r)` hops more, each hop at the mean
    /// one-way latency to the neighbours measured.
    fn fastest_way(&self, target: Id, best: Id) -> Id {
        let hop = self.rtts.values().map(|d| d.as_secs_f64()).sum::<f64>()
            / self.rtts.len().max(1) as f64
            / 2.0;
        let left_best = distance(best, target).max(1) as f64;
        let cost = |n: Id| {
            let one_way = self.rtts.get(&n).map_or(hop, |d| d.as_secs_f64() / 2.0);
            let left = distance(n, target).max(1) as f64;
            one_way + hop * 0.5 * (left / left_best).log2()
        };
        let mut pick = (best, cost(best));
        for n in self.fingers.iter().chain(self.succs.ids().iter().copied()) {
            if n != best && in_open(n, self.me, target) && self.rtts.contains_key(&n) {
                let c = cost(n);
                if c < pick.1 {
                    pick = (n, c);
                }
            }
        }
        pick.0
    }

    /// Keeps the round trip the core measured to `node` when it is a neighbour (the map
    /// holds neighbours only: pruned when it outgrows the tables).
    fn note_rtt(&mut self, ctx: &Ctx<'_>, node: Option<NodeId>) {
        let Some(n) = node.filter(|n| self.is_neighbor(*n)) else {
            return;
        };
        let Some(rtt) = ctx.rtt(n) else { return };
        self.rtts.insert(n, rtt);
        let cap = 2 * (self.cfg.fingers + self.cfg.successors + self.cfg.predecessors);
        if self.rtts.len() > cap {
            let mut rtts = std::mem::take(&mut self.rtts);
            rtts.retain(|n, _| self.is_neighbor(*n));
            self.rtts = rtts;
        }
    }

    /// The ring as this node sees it, in ring order: predecessors (farthest first), the
    /// node itself, successors.
    fn ring_view(&self) -> Vec<Id> {
        let mut v: Vec<Id> = self.preds.ids().iter().rev().copied().collect();
        v.push(self.me);
        for s in self.succs.ids() {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }
}

impl Topology for Chord {
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
        let Some(succ) = self.succs.first() else {
            return NextHop::Local;
        };
        if target == self.me {
            return NextHop::Local;
        }
        match self.preds.first() {
            Some(p) if in_open_closed(target, p, self.me) => return NextHop::Local,
            None => {
                // Without a predecessor, assume the range behind us up to our farthest
                // known successor is ours rather than bouncing the message around.
                let last = *self.succs.ids().last().unwrap_or(&succ);
                if in_open_closed(target, last, self.me) {
                    return NextHop::Local;
                }
            }
            _ => {}
        }
        if in_open_closed(target, self.me, succ) {
            return NextHop::Forward(succ);
        }
        // A target in a farther successor's range: straight to that successor, which is
        // responsible (one hop instead of a walk along the ring, and no node in between
        // that could drop the request).
        for w in self.succs.ids().windows(2) {
            if in_open_closed(target, w[0], w[1]) {
                return NextHop::Forward(w[1]);
            }
        }
        // A target in one of our predecessors' ranges: a node behind us whose successor
        // pointer skips a newer peer sent it here. Hand it back to that predecessor rather
        // than around the whole ring.
        let preds = self.preds.ids();
        for w in preds.windows(2) {
            if in_open_closed(target, w[1], w[0]) {
                return NextHop::Forward(w[0]);
            }
        }
        NextHop::Forward(self.closest_preceding(target).unwrap_or(succ))
    }

    /// Every other known node that precedes `target` (closest first): fingers, successors
    /// and predecessors between this node and the target. None when the next hop is the
    /// responsible node itself (there is nothing to route around).
    fn next_hop_alternatives(&self, target: Id) -> Vec<NodeId> {
        let NextHop::Forward(best) = self.next_hop(target) else {
            return Vec::new();
        };
        if self
            .succs
            .ids()
            .last()
            .is_some_and(|s| in_open_closed(target, self.me, *s))
        {
            return Vec::new();
        }
        let mut alts: Vec<Id> = self
            .fingers
            .iter()
            .chain(self.succs.ids().iter().copied())
            .chain(self.preds.ids().iter().copied())
            .filter(|n| *n != best && in_open(*n, self.me, target))
            .collect();
        alts.sort_by_key(|n| std::cmp::Reverse(distance(self.me, *n)));
        alts.dedup();
        alts
    }

    /// The responsible node is the first at or after the target; every node a request
    /// passes on its way there lies between this node and the target. A responder
    /// strictly between us and the target (clockwise) is such a hop, not the one.
    fn plausible_responder(&self, target: Id, responder: NodeId) -> bool {
        // Strictly between, clockwise: 0 < d(me, responder) < d(me, target) (nothing is,
        // when the target is this node's own id).
        let d = distance(self.me, responder);
        !self.joined || d == 0 || d >= distance(self.me, target)
    }

    fn is_neighbor(&self, node: NodeId) -> bool {
        self.succs.contains(node)
            || self.preds.contains(node)
            || self.fingers.iter().any(|f| f == node)
    }

    /// The replica set, and the ring neighbours on either side (a leaving predecessor, an
    /// admitting successor, a replica just pushed out by a join); not fingers.
    fn may_copy_to_me(&self, node: NodeId, resource: Id) -> bool {
        self.succs.contains(node)
            || self.preds.contains(node)
            || self.replica_set(resource).contains(&node)
    }

    fn replica_set(&self, resource: Id) -> Vec<NodeId> {
        let view = self.ring_view();
        let n = self.cfg.replicas + 1;
        // In a ring smaller than our lists (a successor is also a predecessor) the view is
        // the whole ring, cut at our farthest predecessor, which follows its last entry: a
        // set that runs off the end goes on from the start.
        let wraps = self
            .succs
            .ids()
            .iter()
            .any(|s| self.preds.ids().contains(s));
        let from = |i: usize| -> Vec<NodeId> {
            let mut v: Vec<NodeId> = view[i..].iter().take(n).copied().collect();
            if wraps {
                for x in view.iter().take(i) {
                    if v.len() >= n {
                        break;
                    }
                    v.push(*x);
                }
            }
            v
        };
        for i in 1..view.len() {
            if in_open_closed(resource, view[i - 1], view[i]) {
                return from(i);
            }
        }
        if wraps && view.len() > 1 {
            return from(0);
        }
        if view.len() == 1 {
            return vec![self.me];
        }
        Vec::new()
    }

    fn start(&mut self, ctx: &mut Ctx<'_>, bootstrap: &[NodeId]) {
        self.started = ctx.now;
        self.bootstrap = bootstrap
            .iter()
            .copied()
            .filter(|b| *b != self.me)
            .collect();
        if self.bootstrap.is_empty() {
            // The first peer of a new overlay.
            self.become_joined(ctx);
        } else {
            self.send_join(ctx);
        }
    }

    fn start_with_members(&mut self, ctx: &mut Ctx<'_>, members: &[NodeId]) {
        self.started = ctx.now;
        let n = members.len();
        let Some(k) = members.iter().position(|m| *m == self.me) else {
            self.start(ctx, &members[..n.min(1)]);
            return;
        };
        for d in 1..n.min(self.cfg.successors + 1) {
            self.succs.insert(members[(k + d) % n]);
        }
        for d in 1..n.min(self.cfg.predecessors + 1) {
            self.preds.insert(members[(k + n - d) % n]);
        }
        for i in 0..self.fingers.len() {
            let start = self.fingers.interval_start(i);
            let j = members.partition_point(|m| *m < start) % n;
            self.fingers.set(i, members[j]);
        }
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
                // Answer with our state as the joiner will need it: we become its first
                // successor, our predecessors become its predecessors.
                let mut u = self.chord_update(chord_update::Type::Full, ctx.now);
                u.successors.insert(0, self.me.to_bytes().to_vec());
                u.successors.truncate(self.cfg.successors);
                if origin.reached {
                    self.consider(ctx, jp);
                } else {
                    // Routed to us: the joiner enters once our probe has reached it.
                    self.learn(ctx, &[jp]);
                }
                Ok(Body::JoinAns(pb::JoinAns {
                    overlay_specific: u.encode_to_vec(),
                }))
            }
            Body::UpdateReq(u) => {
                common::check_algorithm(NAME, &u.algorithm, "Update")?;
                let Some(l) = Self::decode_update(&u.overlay_specific) else {
                    return Err((ErrorCode::InvalidMessage, "bad ChordUpdate".into()));
                };
                if origin.reached {
                    self.on_neighbor_lists(ctx, from, &l.preds, &l.succs);
                } else {
                    // Neighbours send their Updates over their links; a routed one is a
                    // hint about its sender, not a list to take.
                    self.learn(ctx, &[from]);
                }
                let ans = self.chord_update(chord_update::Type::Neighbors, ctx.now);
                Ok(Body::UpdateAns(pb::UpdateAns {
                    overlay_specific: ans.encode_to_vec(),
                }))
            }
            Body::LeaveReq(l) => {
                let leaver = common::check_sender(&l.leaving_peer_id, from, "leaving")?;
                if origin.reached {
                    self.drop_node(ctx, leaver);
                } else {
                    // A genuine Leave comes over the leaver's own link. One that came
                    // through other peers may be an old one replayed (its signature is
                    // still good): check the leaver ourselves and drop it only if that fails.
                    self.check_reported(ctx, leaver);
                }
                if let Ok(cl) = pb::ChordLeave::decode(l.overlay_specific.as_slice()) {
                    let mut ids = ids_from_wire(&cl.predecessors);
                    ids.extend(ids_from_wire(&cl.successors));
                    ids.retain(|x| *x != leaver);
                    self.learn(ctx, &ids);
                }
                Ok(Body::LeaveAns(pb::LeaveAns {}))
            }
            Body::ProbeReq(_) => {
                let span = match self.preds.first() {
                    Some(p) => distance(p, self.me),
                    None => u128::MAX,
                };
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
        if self.cfg.proximity {
            self.note_rtt(ctx, responder);
        }
        match (p, answer) {
            (Pending::Join, Ok(Body::JoinAns(j))) => {
                if self.joined {
                    return;
                }
                let Some(ap) = responder else { return };
                let Some(Lists {
                    preds,
                    succs,
                    fingers,
                }) = Self::decode_update(&j.overlay_specific)
                else {
                    ctx.event(TopologyEvent::JoinFailed("bad JoinAns".into()));
                    return;
                };
                // The admitting peer answered (its signature proves it): it is our first
                // successor, and its lists are the tables we start from, taken on its word
                // only until the PeerReady Update below reaches each entry (an entry that
                // does not answer is dropped). Its fingers are not taken: ours are found
                // by lookups, whose answers their responders sign.
                self.consider(ctx, ap);
                for s in succs.iter().chain(preds.iter()) {
                    if !self.is_gone(*s, ctx.now) {
                        self.succs.insert(*s);
                        self.preds.insert(*s);
                    }
                }
                for id in preds.iter().chain(succs.iter()).chain(fingers.iter()) {
                    self.remember(*id);
                }
                self.become_joined(ctx);
                // Tell the neighbours we are here (and check that they are).
                let mut tell: Vec<Id> = self.preds.ids().to_vec();
                tell.extend(self.succs.ids());
                tell.sort_unstable();
                tell.dedup();
                for t in tell {
                    let body = self.update_body(chord_update::Type::PeerReady, ctx.now);
                    let tok = ctx.request(Target::Direct(t), body);
                    self.pending.insert(tok, Pending::Stabilize(t));
                }
            }
            (Pending::Join, res) => {
                if self.joined {
                    return;
                }
                let why = match res {
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
            (Pending::Probe(c) | Pending::Stabilize(c), res) => {
                if let Pending::Probe(c) = p {
                    self.probing.remove(&c);
                }
                match res {
                    Ok(Body::UpdateAns(u)) => {
                        if let Some(l) = Self::decode_update(&u.overlay_specific) {
                            self.on_neighbor_lists(ctx, responder.unwrap_or(c), &l.preds, &l.succs);
                        }
                    }
                    _ => self.drop_node(ctx, c),
                }
            }
            (Pending::Finger(i), Ok(_)) => {
                if let Some(r) = responder {
                    if r != self.me {
                        self.fingers.set(i, r);
                        self.remember(r);
                    }
                }
            }
            (Pending::FingerSample(i), Ok(_)) => {
                // Only a node inside the interval routes as the finger does.
                if let Some(r) = responder.filter(|r| {
                    *r != self.me
                        && self.fingers.index_of(*r) == Some(i)
                        && self.fingers.get(i) != Some(*r)
                }) {
                    let tok = ctx.request(
                        Target::Direct(r),
                        pb::ProbeReq {
                            requested_info: vec![],
                        },
                    );
                    self.pending.insert(tok, Pending::FingerCandidate(i, r));
                }
            }
            (Pending::FingerCandidate(i, r), Ok(_)) => {
                let faster = match (ctx.rtt(r), self.fingers.get(i).and_then(|f| ctx.rtt(f))) {
                    (Some(new), Some(old)) => new < old,
                    (Some(_), None) => self.fingers.get(i).is_none(),
                    _ => false,
                };
                if faster && self.fingers.index_of(r) == Some(i) {
                    self.fingers.set(i, r);
                    self.remember(r);
                }
            }
            (Pending::FingerSample(_) | Pending::FingerCandidate(..), Err(_)) => {}
            (Pending::Finger(_), Err(_)) | (Pending::FingerCheck(..), Ok(_)) => {}
            (Pending::FingerCheck(i, f), Err(_)) => {
                // Gone (the core reports the link failure too) or refusing: look again next
                // time round.
                if self.fingers.get(i) == Some(f) {
                    self.fingers.remove(f);
                }
            }
            (Pending::SelfLookup, Ok(_)) => {
                let Some(r) = responder else { return };
                if r == self.me || self.succs.contains(r) || self.probing.contains(&r) {
                    return;
                }
                let closer = match self.succs.first() {
                    Some(s) => in_open(r, self.me, s),
                    None => true,
                };
                if closer || self.preds.would_enter(r) {
                    self.learn(ctx, &[r]);
                    if self.succs.is_empty() {
                        // No successor at all: take the answer's word for it.
                        self.consider(ctx, r);
                    }
                }
            }
            (Pending::SelfLookup, Err(_)) | (Pending::Leave, _) => {}
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up(id) => {
                self.linked.insert(id);
            }
            LinkEvent::Failed(id) => {
                self.linked.remove(&id);
            }
        }
        if let LinkEvent::Failed(id) = event {
            if self.is_neighbor(id) {
                self.drop_node(ctx, id);
            } else {
                self.mark_gone(id, ctx.now);
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        match timer {
            T_JOIN_RETRY if !self.joined => self.send_join(ctx),
            _ if !self.joined => {}
            T_STABILIZE => {
                // Our predecessor's own rounds reach us; when they stopped for two
                // intervals, it is checked directly (Chord's check_predecessor).
                let every = self.stabilize_every();
                let silent = match (self.preds.first(), every) {
                    (Some(p), Some(i)) => {
                        if self.pred_heard.0 != p {
                            self.pred_heard = (p, ctx.now);
                        }
                        ctx.now.since(self.pred_heard.1) > i * 2
                    }
                    _ => false,
                };
                self.stabilize(ctx, silent);
                if let Some(i) = self.stabilize_every() {
                    ctx.set_timer_jittered(i, T_STABILIZE);
                }
            }
            T_FINGERS => {
                self.refresh_fingers(ctx);
                ctx.set_timer_jittered(self.fingers_every(), T_FINGERS);
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
        let cl = pb::ChordLeave {
            predecessors: wire_ids(self.preds.ids()),
            successors: wire_ids(self.succs.ids()),
        };
        let mut tell: Vec<Id> = self.preds.ids().to_vec();
        tell.extend(self.succs.ids());
        tell.sort();
        tell.dedup();
        for t in tell {
            let tok = ctx.request(
                Target::Direct(t),
                pb::LeaveReq {
                    leaving_peer_id: self.me.to_bytes().to_vec(),
                    overlay_specific: cl.encode_to_vec(),
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
            predecessors: self.preds.ids().to_vec(),
            successors: self.succs.ids().to_vec(),
            fingers: self.fingers.distinct(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// In a ring smaller than the successor and predecessor lists together, every member
    /// is both: the replica set of what a member holds must still be the responsible peer
    /// and the next ones (before the fix, a 5-peer ring replicated nothing).
    #[test]
    fn a_small_ring_still_has_full_replica_sets() {
        for size in [2u128, 3, 5, 7, 9] {
            let members: Vec<Id> = (1..=size).map(|i| Id(i << 120)).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let (mut actions, mut tok) = (Vec::new(), 0);
            let mut ctx = Ctx::new(Time(0), &mut rng, &mut actions, &mut tok);
            let len = members.len();
            for (k, me) in members.iter().enumerate() {
                let mut node = Chord::new(*me, ChordConfig::default());
                node.start_with_members(&mut ctx, &members);
                // The resources this member holds: its own and its two predecessors'.
                for j in [k, (k + len - 1) % len, (k + len - 2) % len] {
                    let r = &members[j];
                    // A resource just after member j-1 belongs to member j.
                    let resource = Id(r.0 - 1);
                    let want: Vec<Id> = (0..3.min(len)).map(|d| members[(j + d) % len]).collect();
                    assert_eq!(
                        node.replica_set(resource),
                        want,
                        "ring of {size}, member {k}, resource of member {j}"
                    );
                }
            }
        }
    }
}
