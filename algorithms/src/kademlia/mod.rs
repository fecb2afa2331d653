//! Kademlia in the slot: the XOR metric, 128 k-buckets with replacement caches, recursive
//! routing to the XOR-closest known node, and the `replicas + 1` XOR-closest nodes as the
//! replica set. Maintenance: a join answered with the responsible node's closest nodes,
//! Update exchanges with the nearest nodes (the FIND_NODE of recursive routing: each
//! answer carries the sender's nodes closest to the receiver), bucket refresh (a direct
//! probe of a bucket's least recently seen entry, a routed lookup of a random id of an empty
//! bucket's range), and periodic self-lookups through random known nodes, which heal
//! partitions.

use crate::common::{self, ids_from_wire, wire_ids};
use crate::id::{distance, Id, NodeId};
use crate::time::Time;
use crate::topology::*;
use crate::tuning::{
    finger_interval, stabilize_interval, xor_size_estimate, ChurnEstimator, TuningTargets,
    CHURN_HALF_LIFE,
};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::{Body, Destination};
use prost::Message as _;
use rand::Rng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// The algorithm's name in configuration and in Join/Update bodies.
pub const NAME: &str = "kademlia";

const T_STABILIZE: TimerId = TimerId(1);
const T_REFRESH: TimerId = TimerId(2);
const T_SELF_LOOKUP: TimerId = TimerId(3);
const T_JOIN_RETRY: TimerId = TimerId(4);

/// How many once-seen nodes are remembered for self-lookups.
const KNOWN_CAP: usize = 64;

/// Parameters of Kademlia (the `[kademlia]` table of a node's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct KademliaConfig {
    /// Bucket size (and replacement cache size), 4 to 64; Kademlia's k.
    pub k: usize,
    /// Copies kept besides the responsible node's (the replica set is the `replicas + 1`
    /// XOR-closest nodes; `k - 1` gives classic Kademlia's k copies).
    pub replicas: usize,
    /// Every interval, an Update with one of the nearest nodes (None: only reactive).
    pub stabilize_interval: Option<Duration>,
    /// How often buckets are refreshed.
    pub refresh_interval: Duration,
    /// Buckets refreshed per round.
    pub buckets_per_round: usize,
    /// How often the node looks itself up through a random known node (heals partitions).
    pub self_lookup_interval: Duration,
    /// Delay before a failed join is retried with the next bootstrap peer.
    pub join_retry: Duration,
    /// A bucket entry not heard from for this long is checked (a direct Probe) at the next
    /// refresh round, and dropped if it does not answer (None: entries are checked only
    /// by the bucket refresh, one per bucket, and when a route through them fails).
    pub check_after: Option<Duration>,
    /// Most such checks per refresh round (oldest first).
    pub checks_per_round: usize,
    /// Proximity neighbour selection: each refresh of a full bucket also looks up a random
    /// id of the bucket's range and probes the node found; it takes the place of the
    /// bucket's slowest entry when it answered faster (entries of the near set stay).
    pub proximity: bool,
    /// Self-tuning (proto/SPEC.md 7.1): the stabilisation and bucket-refresh intervals
    /// follow the churn this node sees in its near set and the overlay size it estimates,
    /// within `tuning`'s bounds (`stabilize_interval` None still turns periodic
    /// stabilisation off).
    pub self_tuning: bool,
    pub tuning: TuningTargets,
}

impl Default for KademliaConfig {
    fn default() -> Self {
        KademliaConfig {
            k: 8,
            replicas: 2,
            stabilize_interval: Some(Duration::from_secs(10)),
            refresh_interval: Duration::from_secs(10),
            buckets_per_round: 4,
            self_lookup_interval: Duration::from_secs(30),
            join_retry: Duration::from_secs(5),
            check_after: Some(Duration::from_secs(300)),
            checks_per_round: 32,
            proximity: false,
            self_tuning: false,
            tuning: TuningTargets::default(),
        }
    }
}

impl KademliaConfig {
    /// Clamps the fields to the ranges the algorithm supports.
    pub fn normalized(mut self) -> Self {
        self.k = self.k.clamp(4, 64);
        self.replicas = self.replicas.min(self.k - 1);
        self.buckets_per_round = self.buckets_per_round.max(1);
        self
    }
}

/// Proximity leaves alone the buckets within this many of the near set's farthest one.
const PROXIMITY_NEAR_MARGIN: usize = 6;

/// Whether bucket `b` is far enough from the near set, whose farthest node is in bucket
/// `edge` ([`Kademlia::proximity_edge`]), for proximity to choose its entries: the buckets
/// that hold or come near the `k` closest nodes keep the nodes learned nearest to us,
/// which the last hops of lookups towards our part of the id space need. (Choosing by
/// round trip up to two buckets from the near set answered 99.86% of lookups by the right
/// peer at 3,000 peers under churn, against 99.97% without proximity; six buckets away,
/// 99.94%, with most of the latency gain, which comes from the first hops.)
fn far_from_near(b: usize, edge: usize) -> bool {
    b + PROXIMITY_NEAR_MARGIN < edge
}

/// Candidates kept for a later probe while the probes out are at their bound.
const HINTS_CAP: usize = 256;

fn xor(a: Id, b: Id) -> u128 {
    a.0 ^ b.0
}

/// One k-bucket: entries least recently seen first, and a cache of replacements.
#[derive(Debug, Clone, Default)]
struct Bucket {
    nodes: Vec<Id>,
    replacements: Vec<Id>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Join,
    /// Verifying a candidate near node before it enters the buckets.
    Probe(Id),
    /// Update with a near node (periodic, reactive or announcing ourselves).
    Stabilize(Id),
    /// Direct check of a bucket's least recently seen entry.
    BucketCheck(Id),
    /// Routed lookup of a random id of an empty bucket's range.
    Refresh,
    /// Proximity: routed lookup of a random id of full bucket `b`'s range.
    Sample(usize),
    /// Proximity: direct probe of a node found by a sample of bucket `b` (its round trip
    /// is measured).
    Candidate(usize, Id),
    SelfLookup,
    Leave,
}

/// The Kademlia state machine of one node.
pub struct Kademlia {
    me: Id,
    cfg: KademliaConfig,
    joined: bool,
    started: Time,
    buckets: Vec<Bucket>,
    known: VecDeque<Id>,
    probing: HashSet<Id>,
    /// Candidates waiting for a probe while `2k` are out (at most [`HINTS_CAP`], oldest
    /// dropped first): probed as earlier probes end.
    hints: VecDeque<Id>,
    pending: HashMap<u64, Pending>,
    bootstrap: Vec<Id>,
    join_attempt: usize,
    next_bucket: usize,
    /// The full bucket sampled last (proximity).
    next_sample: usize,
    /// Nodes that failed recently, not learned again from others' stale lists for a while.
    dead: HashMap<Id, Time>,
    /// When each bucket entry last proved alive (an answer or a request from it, or when
    /// it entered the buckets); entries only.
    seen: HashMap<Id, Time>,
    /// Entries being checked because they were not heard from for `check_after`.
    checking: HashSet<Id>,
    /// Departures and arrivals in the near set (self-tuning).
    churn: ChurnEstimator,
}

/// How long a failed node is not learned again from other nodes' lists.
const DEAD_MEMORY: Duration = Duration::from_secs(120);

impl Kademlia {
    pub fn new(me: NodeId, cfg: KademliaConfig) -> Self {
        Kademlia {
            me,
            cfg: cfg.normalized(),
            joined: false,
            started: Time(0),
            buckets: vec![Bucket::default(); 128],
            known: VecDeque::new(),
            probing: HashSet::new(),
            hints: VecDeque::new(),
            pending: HashMap::new(),
            bootstrap: Vec::new(),
            join_attempt: 0,
            next_bucket: 0,
            next_sample: 0,
            dead: HashMap::new(),
            seen: HashMap::new(),
            checking: HashSet::new(),
            churn: ChurnEstimator::new(CHURN_HALF_LIFE),
        }
    }

    /// What the estimator knows: the departure rate, arrival rate and overlay size.
    pub fn churn_estimate(&self) -> (f64, f64, f64) {
        (
            self.churn.departure_rate(),
            self.churn.arrival_rate(),
            xor_size_estimate(self.me, &self.window()),
        )
    }

    /// The stabilisation interval now: the configured one, or with self-tuning the one
    /// derived from the churn seen in the near set (None: periodic stabilisation is off).
    pub fn stabilize_every(&self) -> Option<Duration> {
        let fixed = self.cfg.stabilize_interval?;
        if !self.cfg.self_tuning {
            return Some(fixed);
        }
        let (mu, lambda, _) = self.churn_estimate();
        Some(stabilize_interval(mu, lambda, self.cfg.k, &self.cfg.tuning))
    }

    /// The interval between bucket-refresh rounds now: with self-tuning, a bucket entry
    /// is refreshed as often as a Chord finger would be for the same churn and size (the
    /// non-empty buckets play the fingers' part).
    pub fn refresh_every(&self) -> Duration {
        if !self.cfg.self_tuning {
            return self.cfg.refresh_interval;
        }
        let (mu, _, n) = self.churn_estimate();
        let buckets = self.buckets.iter().filter(|b| !b.nodes.is_empty()).count();
        finger_interval(
            mu,
            n,
            buckets.max(1),
            self.cfg.buckets_per_round,
            &self.cfg.tuning,
        )
    }

    /// The bucket a node belongs in: the length of the prefix it shares with us.
    fn bucket_of(&self, id: Id) -> Option<usize> {
        let d = xor(self.me, id);
        (d != 0).then(|| d.leading_zeros() as usize)
    }

    /// Every known node.
    fn all(&self) -> impl Iterator<Item = Id> + '_ {
        self.buckets.iter().flat_map(|b| b.nodes.iter().copied())
    }

    /// The `n` known nodes XOR-closest to `target` (this node not included).
    pub fn closest(&self, target: Id, n: usize) -> Vec<Id> {
        let mut v: Vec<Id> = self.all().collect();
        if n == 0 {
            return Vec::new();
        }
        if v.len() > n {
            v.select_nth_unstable_by_key(n - 1, |x| xor(*x, target));
            v.truncate(n);
        }
        v.sort_unstable_by_key(|x| xor(*x, target));
        v
    }

    fn contains(&self, id: Id) -> bool {
        self.bucket_of(id)
            .is_some_and(|b| self.buckets[b].nodes.contains(&id))
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

    /// The near set: the `k` known nodes closest to us (its churn drives self-tuning).
    fn window(&self) -> Vec<Id> {
        self.nearest(self.cfg.k)
    }

    /// The `n` known nodes closest to us. XOR distance to us falls with the bucket index,
    /// so only the nearest non-empty buckets are looked at.
    fn nearest(&self, n: usize) -> Vec<Id> {
        let mut v: Vec<Id> = Vec::with_capacity(2 * n);
        for b in self.buckets.iter().rev() {
            v.extend(b.nodes.iter().copied());
            if v.len() >= n {
                break;
            }
        }
        v.sort_unstable_by_key(|x| xor(*x, self.me));
        v.truncate(n);
        v
    }

    /// How many of the nodes closest to us are kept whatever the size of their bucket
    /// (proto/SPEC.md 7.1): every replica set this node is responsible for, or a member
    /// of, lies among them. A bucket that holds `k` already cannot leave one out (a
    /// responsible peer whose full bucket left out the eighth-closest node of a resource
    /// kept 7 of its 8 copies).
    fn near_size(&self) -> usize {
        2 * self.cfg.k.max(self.cfg.replicas + 1)
    }

    /// Whether `id` (in bucket `b`) would be among the [`Self::near_size`] nodes closest
    /// to us: fewer than that are closer, counting those of the nearer buckets and the
    /// closer ones of its own.
    fn is_near(&self, id: Id, b: usize) -> bool {
        let d = xor(id, self.me);
        let nearer: usize = self.buckets[b + 1..].iter().map(|x| x.nodes.len()).sum();
        let closer_here = self.buckets[b]
            .nodes
            .iter()
            .filter(|x| xor(**x, self.me) < d)
            .count();
        nearer + closer_here < self.near_size()
    }

    /// Bucket `b` past `k` entries keeps only near ones: the farthest of the others go
    /// back to the replacements.
    fn trim_bucket(&mut self, b: usize) {
        let k = self.cfg.k;
        while self.buckets[b].nodes.len() > k {
            let Some(far) = self.buckets[b]
                .nodes
                .iter()
                .copied()
                .max_by_key(|x| xor(*x, self.me))
            else {
                return;
            };
            if self.is_near(far, b) {
                return;
            }
            let bucket = &mut self.buckets[b];
            bucket.nodes.retain(|x| *x != far);
            bucket.replacements.retain(|x| *x != far);
            if bucket.replacements.len() == k {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(far);
            self.seen.remove(&far);
        }
    }

    fn changing(&mut self, ctx: &mut Ctx<'_>, f: impl FnOnce(&mut Self)) {
        let near = self.near_size();
        let before = self.nearest(near);
        f(self);
        let after = self.nearest(near);
        if self.joined && after != before {
            // Replica sets are drawn from the whole near set, not only the k closest.
            ctx.event(TopologyEvent::ResponsibilityChanged);
        }
        let k = self.cfg.k;
        let (before, after) = (&before[..before.len().min(k)], &after[..after.len().min(k)]);
        if self.joined && after != before && self.cfg.self_tuning {
            // Nodes new to the near set; those that left it by failing are counted by
            // drop_node, those a closer arrival pushed out are not departures.
            for _ in after.iter().filter(|x| !before.contains(x)) {
                self.churn.arrival(ctx.now);
            }
        }
        if self.cfg.self_tuning {
            self.churn.observe(ctx.now, after.len());
        }
    }

    /// A node known to be alive (it talked to us): seen now.
    fn consider(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        let Some(b) = self.bucket_of(id) else { return };
        self.dead.remove(&id);
        self.remember(id);
        let now = ctx.now;
        let k = self.cfg.k;
        self.changing(ctx, |s| {
            let bucket = &mut s.buckets[b];
            if let Some(p) = bucket.nodes.iter().position(|x| *x == id) {
                bucket.nodes.remove(p);
                bucket.nodes.push(id);
                s.seen.insert(id, now);
            } else if bucket.nodes.len() < k || s.is_near(id, b) {
                let bucket = &mut s.buckets[b];
                bucket.nodes.push(id);
                bucket.replacements.retain(|x| *x != id);
                s.seen.insert(id, now);
                s.trim_bucket(b);
            } else {
                let bucket = &mut s.buckets[b];
                bucket.replacements.retain(|x| *x != id);
                if bucket.replacements.len() == k {
                    bucket.replacements.remove(0);
                }
                bucket.replacements.push(id);
            }
        });
    }

    /// A node another peer says is gone: a direct Update to it, which drops it if it fails
    /// (one check at a time per node, however often it is reported).
    fn check_reported(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        let checking = self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Stabilize(x) | Pending::BucketCheck(x) if *x == id));
        if self.contains(id) && !checking {
            let tok = ctx.request(Target::Direct(id), self.update_body(ctx.now, id));
            self.pending.insert(tok, Pending::Stabilize(id));
        }
    }

    /// A node that failed or left: out of its bucket, the newest replacement moves in.
    fn drop_node(&mut self, ctx: &mut Ctx<'_>, id: Id) {
        let Some(b) = self.bucket_of(id) else { return };
        if self.dead.len() > 1024 {
            let now = ctx.now;
            self.dead.retain(|_, t| now.since(*t) < DEAD_MEMORY);
        }
        self.dead.insert(id, ctx.now);
        let near = self.window().contains(&id);
        if near && self.joined && self.cfg.self_tuning {
            self.churn.departure(ctx.now);
        }
        self.seen.remove(&id);
        self.changing(ctx, |s| {
            let bucket = &mut s.buckets[b];
            bucket.replacements.retain(|x| *x != id);
            if let Some(p) = bucket.nodes.iter().position(|x| *x == id) {
                bucket.nodes.remove(p);
                if bucket.nodes.len() >= s.cfg.k {
                    // It held near nodes past k: no room to refill.
                    return;
                }
                if let Some(r) = bucket.replacements.pop() {
                    bucket.nodes.push(r);
                    // Not heard from since it was cached: checked at the next round.
                    s.seen.entry(r).or_insert(Time(0));
                }
            }
        });
        if near && self.joined {
            self.stabilize(ctx);
        }
    }

    /// Candidates from another node (hints): each is checked with a direct Update before
    /// it enters a bucket (the answer, signed by it, proves it is there). One message costs
    /// at most `k` probes (the candidates closest to us that have room), and no more than
    /// `2k` are out at a time, whatever the message listed.
    fn learn(&mut self, ctx: &mut Ctx<'_>, ids: &[Id]) {
        let near_size = self.near_size();
        let near = self.nearest(near_size);
        let farthest = near.last().map(|x| xor(*x, self.me));
        let now = ctx.now;
        let mut fresh: Vec<(u128, Id)> = ids
            .iter()
            .copied()
            .filter(|c| *c != self.me && !self.contains(*c) && !self.probing.contains(c))
            .filter(|c| !self.recently_dead(*c, now))
            .filter(|c| {
                let enters_near =
                    near.len() < near_size || farthest.is_some_and(|f| xor(*c, self.me) < f);
                enters_near
                    || self
                        .bucket_of(*c)
                        .is_some_and(|b| self.buckets[b].nodes.len() < self.cfg.k)
            })
            .map(|c| (xor(c, self.me), c))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        fresh.truncate(self.cfg.k);
        for (_, c) in fresh {
            if self.probing.len() >= 2 * self.cfg.k {
                if !self.hints.contains(&c) {
                    if self.hints.len() >= HINTS_CAP {
                        self.hints.pop_front();
                    }
                    self.hints.push_back(c);
                }
                continue;
            }
            self.probe(ctx, c);
        }
    }

    /// Whether `c` failed or left within the last [`DEAD_MEMORY`].
    fn recently_dead(&self, c: Id, now: Time) -> bool {
        self.dead
            .get(&c)
            .is_some_and(|t| now.since(*t) < DEAD_MEMORY)
    }

    /// Sends candidate `c` a direct Update; it enters a bucket when it answers.
    fn probe(&mut self, ctx: &mut Ctx<'_>, c: Id) {
        self.probing.insert(c);
        let tok = ctx.request(Target::Direct(c), self.update_body(ctx.now, c));
        self.pending.insert(tok, Pending::Probe(c));
    }

    /// Probes waiting candidates while fewer than `2k` probes are out.
    fn probe_hints(&mut self, ctx: &mut Ctx<'_>) {
        while self.probing.len() < 2 * self.cfg.k {
            let Some(c) = self.hints.pop_front() else {
                return;
            };
            let wanted = !self.contains(c)
                && !self.probing.contains(&c)
                && self.bucket_of(c).is_some()
                && !self.recently_dead(c, ctx.now);
            if wanted {
                self.probe(ctx, c);
            }
        }
    }

    fn update(&self, now: Time, to: Id) -> pb::KademliaUpdate {
        pb::KademliaUpdate {
            uptime: now.since(self.started).as_secs().min(u64::from(u32::MAX)) as u32,
            closest: wire_ids(&self.closest(to, self.near_size())),
        }
    }

    fn update_body(&self, now: Time, to: Id) -> pb::UpdateReq {
        pb::UpdateReq {
            algorithm: NAME.into(),
            overlay_specific: self.update(now, to).encode_to_vec(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<Vec<Id>> {
        pb::KademliaUpdate::decode(bytes)
            .ok()
            .map(|u| ids_from_wire(&u.closest))
    }

    /// An Update with one of the nearest nodes, chosen at random.
    fn stabilize(&mut self, ctx: &mut Ctx<'_>) {
        let mut near = self.window();
        near.truncate(self.cfg.replicas + 1);
        if near.is_empty() {
            return;
        }
        let t = near[ctx.rng.random_range(0..near.len())];
        let tok = ctx.request(Target::Direct(t), self.update_body(ctx.now, t));
        self.pending.insert(tok, Pending::Stabilize(t));
    }

    fn refresh(&mut self, ctx: &mut Ctx<'_>) {
        for _ in 0..self.cfg.buckets_per_round {
            let b = self.next_bucket;
            self.next_bucket = (b + 1) % self.buckets.len();
            self.refresh_bucket(ctx, b);
        }
        self.check_silent(ctx);
        if self.cfg.proximity {
            self.sample_full_bucket(ctx);
        }
    }

    /// Proximity: looks up a random id of the next full bucket (round robin over the full
    /// ones only, one a round); the node found is probed and may take the place of a
    /// slower entry.
    fn sample_full_bucket(&mut self, ctx: &mut Ctx<'_>) {
        let n = self.buckets.len();
        let edge = self.proximity_edge(&self.window());
        let Some(b) = (1..=n)
            .map(|d| (self.next_sample + d) % n)
            .find(|b| self.buckets[*b].nodes.len() >= self.cfg.k && far_from_near(*b, edge))
        else {
            return;
        };
        self.next_sample = b;
        let target = self.random_in_bucket(b, ctx.rng.random());
        let tok = ctx.request(
            Target::Route(vec![Destination::Resource(target)]),
            pb::ProbeReq {
                requested_info: vec![],
            },
        );
        self.pending.insert(tok, Pending::Sample(b));
    }

    /// Probes the bucket entries not heard from for `check_after` (oldest first, at most
    /// `checks_per_round`): one that does not answer leaves its bucket, so dead entries
    /// do not pile up where no link would report their failure.
    fn check_silent(&mut self, ctx: &mut Ctx<'_>) {
        let Some(after) = self.cfg.check_after else {
            return;
        };
        let now = ctx.now;
        let mut silent: Vec<(Time, Id)> = self
            .all()
            .filter(|n| !self.checking.contains(n) && !self.probing.contains(n))
            .map(|n| (self.seen.get(&n).copied().unwrap_or(Time(0)), n))
            .filter(|(t, _)| now.since(*t) >= after)
            .collect();
        silent.sort_unstable();
        silent.truncate(self.cfg.checks_per_round);
        for (_, n) in silent {
            self.checking.insert(n);
            let tok = ctx.request(
                Target::Direct(n),
                pb::ProbeReq {
                    requested_info: vec![],
                },
            );
            self.pending.insert(tok, Pending::BucketCheck(n));
        }
    }

    /// A joiner looks up a random id in every bucket farther than its nearest neighbour's
    /// (Kademlia's join): the answers fill the buckets its admitting peer's list (nodes
    /// near it) left empty, before the periodic refresh gets to them.
    fn refresh_far_buckets(&mut self, ctx: &mut Ctx<'_>) {
        let nearest = self
            .window()
            .first()
            .and_then(|n| self.bucket_of(*n))
            .unwrap_or(0);
        for b in 0..nearest.min(self.buckets.len()) {
            if self.buckets[b].nodes.is_empty() {
                self.look_in_bucket(ctx, b);
            }
        }
    }

    /// Checks bucket `b`'s oldest node; a bucket with room (none, or fewer than `k`)
    /// also looks up a random id of its range, whose answer may fill it.
    fn refresh_bucket(&mut self, ctx: &mut Ctx<'_>, b: usize) {
        let held = self.buckets[b].nodes.len();
        if let Some(&oldest) = self.buckets[b].nodes.first() {
            let tok = ctx.request(
                Target::Direct(oldest),
                pb::ProbeReq {
                    requested_info: vec![],
                },
            );
            self.pending.insert(tok, Pending::BucketCheck(oldest));
        }
        if held < self.cfg.k {
            self.look_in_bucket(ctx, b);
        }
    }

    /// Looks up a random id of bucket `b`'s range (the responder enters the bucket),
    /// unless the bucket lies past the nearest known node's.
    fn look_in_bucket(&mut self, ctx: &mut Ctx<'_>, b: usize) {
        // Buckets past the nearest known node's are (nearly) empty in any overlay.
        let nearest = self.window();
        if nearest
            .first()
            .is_some_and(|n| self.bucket_of(*n).is_some_and(|nb| b > nb))
        {
            return;
        }
        let target = self.random_in_bucket(b, ctx.rng.random());
        // A lookup this node would answer itself (it knows no one closer to the
        // target: the whole bucket is empty here) starts at a random known node
        // instead, whose view of that part of the ring is its own.
        let route = match (self.next_hop(target), self.random_known(ctx)) {
            (NextHop::Local, Some(via)) => {
                Target::SourceRoute(vec![Destination::Node(via), Destination::Resource(target)])
            }
            _ => Target::Route(vec![Destination::Resource(target)]),
        };
        let tok = ctx.request(
            route,
            pb::ProbeReq {
                requested_info: vec![],
            },
        );
        self.pending.insert(tok, Pending::Refresh);
    }

    /// The id of bucket `b`'s range (sharing exactly `b` leading bits with ours) that
    /// random `r` picks.
    fn random_in_bucket(&self, b: usize, r: u128) -> Id {
        let low = if b >= 127 { 0 } else { u128::MAX >> (b + 1) };
        let prefix = if b == 0 {
            0
        } else {
            self.me.0 & !(u128::MAX >> b)
        };
        let flip = (!self.me.0) & (1u128 << (127 - b.min(127)));
        Id(prefix | flip | (r & low))
    }

    /// [`far_from_near`] with this node's near set as it is now.
    #[cfg(test)]
    fn far_enough(&self, b: usize) -> bool {
        far_from_near(b, self.proximity_edge(&self.window()))
    }

    /// The bucket of the farthest node of near set `near` (all buckets when it is empty):
    /// proximity keeps [`PROXIMITY_NEAR_MARGIN`] buckets off it.
    fn proximity_edge(&self, near: &[Id]) -> usize {
        near.last()
            .and_then(|n| self.bucket_of(*n))
            .unwrap_or(self.buckets.len())
    }

    /// Proximity: candidate `r` of full bucket `b` answered a direct probe. It takes the
    /// place of the bucket's slowest entry whose round trip is known and longer than its
    /// own; entries of the near set (which decide what this node stores) are never
    /// displaced. The displaced entry becomes a replacement.
    fn offer_faster(&mut self, ctx: &mut Ctx<'_>, b: usize, r: Id) {
        let near = self.window();
        let far_enough = far_from_near(b, self.proximity_edge(&near));
        if self.contains(r) || self.bucket_of(r) != Some(b) || !far_enough {
            return;
        }
        if self.buckets[b].nodes.len() < self.cfg.k {
            self.consider(ctx, r);
            return;
        }
        let Some(new) = ctx.rtt(r) else { return };
        let slowest = self.buckets[b]
            .nodes
            .iter()
            .filter(|n| !near.contains(n))
            .filter_map(|n| ctx.rtt(*n).map(|t| (t, *n)))
            .max();
        let Some((_, out)) = slowest.filter(|(old, _)| new < *old) else {
            return;
        };
        let now = ctx.now;
        let k = self.cfg.k;
        self.remember(r);
        self.changing(ctx, |s| {
            let bucket = &mut s.buckets[b];
            bucket.nodes.retain(|x| *x != out);
            bucket.replacements.retain(|x| *x != r && *x != out);
            if bucket.replacements.len() == k {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(out);
            bucket.nodes.push(r);
            s.seen.insert(r, now);
        });
    }

    /// A random node of those seen, the bootstrap peers and the three closest.
    fn random_known(&self, ctx: &mut Ctx<'_>) -> Option<Id> {
        let mut pool: Vec<Id> = self.known.iter().copied().collect();
        pool.extend(self.bootstrap.iter().copied());
        pool.extend(self.closest(self.me, 3));
        pool.retain(|x| *x != self.me);
        (!pool.is_empty()).then(|| pool[ctx.rng.random_range(0..pool.len())])
    }

    /// Looks up our own id through a random known node: a closer node in its view heals a
    /// partition.
    fn self_lookup(&mut self, ctx: &mut Ctx<'_>) {
        let Some(via) = self.random_known(ctx) else {
            return;
        };
        let tok = ctx.request(
            Target::SourceRoute(vec![Destination::Node(via), Destination::Resource(self.me)]),
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
        if self.cfg.self_tuning {
            // The near set is watched from now on (a warm start fills it without a change).
            self.churn.observe(ctx.now, self.window().len());
        }
        ctx.event(TopologyEvent::Joined);
        ctx.event(TopologyEvent::ResponsibilityChanged);
        if let Some(i) = self.stabilize_every() {
            ctx.set_timer_jittered(i, T_STABILIZE);
        }
        ctx.set_timer_jittered(self.refresh_every(), T_REFRESH);
        ctx.set_timer_jittered(self.cfg.self_lookup_interval, T_SELF_LOOKUP);
    }
}

impl Topology for Kademlia {
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
        // Strictly closer at every hop: greedy XOR routing cannot loop.
        match self.all().min_by_key(|x| xor(*x, target)) {
            Some(best) if xor(best, target) < xor(self.me, target) => NextHop::Forward(best),
            _ => NextHop::Local,
        }
    }

    /// The responsible node is the one XOR-closest to the target; a responder farther
    /// from it than this node (a member, so a candidate itself) cannot be.
    fn plausible_responder(&self, target: Id, responder: NodeId) -> bool {
        !self.joined || target == self.me || xor(responder, target) <= xor(self.me, target)
    }

    fn is_neighbor(&self, node: NodeId) -> bool {
        self.contains(node)
    }

    /// Among the k nodes closest to the resource that this node knows (a bucket's worth:
    /// Kademlia's neighbourhood of an id).
    fn may_copy_to_me(&self, node: NodeId, resource: Id) -> bool {
        self.closest(resource, self.cfg.k.max(self.cfg.replicas + 1))
            .contains(&node)
    }

    fn replica_set(&self, resource: Id) -> Vec<NodeId> {
        let mut v = self.closest(resource, self.cfg.replicas + 1);
        v.push(self.me);
        v.sort_unstable_by_key(|x| xor(*x, resource));
        v.truncate(self.cfg.replicas + 1);
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
        // Bucket b holds ids sharing exactly b bits with ours: one contiguous range.
        for b in 0..128usize {
            let prefix = if b == 0 {
                0
            } else {
                self.me.0 & !(u128::MAX >> b)
            };
            let flip = (!self.me.0) & (1u128 << (127 - b));
            let lo = prefix | flip;
            let hi = lo | if b == 127 { 0 } else { u128::MAX >> (b + 1) };
            let from = members.partition_point(|m| m.0 < lo);
            let to = members.partition_point(|m| m.0 <= hi);
            if from == to {
                continue;
            }
            let n = to - from;
            let k = self.cfg.k.min(n);
            let offset = if n > k { ctx.rng.random_range(0..n) } else { 0 };
            let bucket = &mut self.buckets[b];
            for i in 0..k {
                let m = members[from + (offset + i) % n];
                bucket.nodes.push(m);
                self.seen.insert(m, ctx.now);
            }
        }
        // And the whole near set, whatever the size of its buckets.
        let mut near: Vec<Id> = members.iter().copied().filter(|m| *m != self.me).collect();
        let n = self.near_size().min(near.len());
        if n > 0 {
            near.select_nth_unstable_by_key(n - 1, |x| xor(*x, self.me));
            for m in &near[..n] {
                if let Some(b) = self.bucket_of(*m) {
                    if !self.buckets[b].nodes.contains(m) {
                        self.buckets[b].nodes.push(*m);
                        self.seen.insert(*m, ctx.now);
                    }
                }
            }
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
                let mut u = self.update(ctx.now, jp);
                u.closest.insert(0, self.me.to_bytes().to_vec());
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
                let Some(ids) = Self::decode(&u.overlay_specific) else {
                    return Err((ErrorCode::InvalidMessage, "bad KademliaUpdate".into()));
                };
                if origin.reached {
                    self.consider(ctx, from);
                    self.learn(ctx, &ids);
                } else {
                    // A routed Update is a hint about its sender, not a list to take.
                    self.learn(ctx, &[from]);
                }
                Ok(Body::UpdateAns(pb::UpdateAns {
                    overlay_specific: self.update(ctx.now, from).encode_to_vec(),
                }))
            }
            Body::LeaveReq(l) => {
                let leaver = common::check_sender(&l.leaving_peer_id, from, "leaving")?;
                if origin.reached {
                    self.drop_node(ctx, leaver);
                } else {
                    // Through other peers: perhaps an old Leave replayed (proto/SPEC.md 5.4).
                    self.check_reported(ctx, leaver);
                }
                if let Some(mut ids) = Self::decode(&l.overlay_specific) {
                    ids.retain(|x| *x != leaver);
                    self.learn(ctx, &ids);
                }
                Ok(Body::LeaveAns(pb::LeaveAns {}))
            }
            Body::ProbeReq(_) => {
                let span = self
                    .closest(self.me, 1)
                    .first()
                    .map_or(u128::MAX, |n| xor(*n, self.me));
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
        match (p, answer) {
            (Pending::Join, Ok(Body::JoinAns(j))) => {
                if self.joined {
                    return;
                }
                let Some(ap) = responder else { return };
                let Some(ids) = Self::decode(&j.overlay_specific) else {
                    ctx.event(TopologyEvent::JoinFailed("bad JoinAns".into()));
                    return;
                };
                // The admitting peer answered (its signature proves it); the nodes it
                // names are hints, probed before they enter a bucket.
                self.consider(ctx, ap);
                for id in &ids {
                    if *id != self.me {
                        self.remember(*id);
                    }
                }
                self.become_joined(ctx);
                self.refresh_far_buckets(ctx);
                // Announce ourselves to the admitting peer; the probes of the nodes it
                // named announce us to them, and their answers fill the buckets.
                for t in self.closest(self.me, self.cfg.replicas + 2) {
                    let tok = ctx.request(Target::Direct(t), self.update_body(ctx.now, t));
                    self.pending.insert(tok, Pending::Stabilize(t));
                }
                self.learn(ctx, &ids);
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
                    self.probe_hints(ctx);
                }
                match res {
                    Ok(Body::UpdateAns(u)) => {
                        self.consider(ctx, responder.unwrap_or(c));
                        if let Some(ids) = Self::decode(&u.overlay_specific) {
                            self.learn(ctx, &ids);
                        }
                    }
                    _ => self.drop_node(ctx, c),
                }
            }
            (Pending::BucketCheck(n), Ok(_)) => {
                self.checking.remove(&n);
                self.consider(ctx, n);
            }
            (Pending::BucketCheck(n), Err(_)) => {
                self.checking.remove(&n);
                self.drop_node(ctx, n);
            }
            (Pending::Refresh, Ok(_)) => {
                if let Some(r) = responder.filter(|r| *r != self.me) {
                    self.consider(ctx, r);
                }
            }
            (Pending::SelfLookup, Ok(_)) => {
                let Some(r) = responder.filter(|r| *r != self.me) else {
                    return;
                };
                if !self.contains(r) {
                    self.learn(ctx, &[r]);
                }
            }
            (Pending::Sample(b), Ok(_)) => {
                let Some(r) = responder.filter(|r| {
                    *r != self.me && !self.contains(*r) && self.bucket_of(*r) == Some(b)
                }) else {
                    return;
                };
                let tok = ctx.request(
                    Target::Direct(r),
                    pb::ProbeReq {
                        requested_info: vec![],
                    },
                );
                self.pending.insert(tok, Pending::Candidate(b, r));
            }
            (Pending::Candidate(b, r), Ok(_)) => self.offer_faster(ctx, b, r),
            (Pending::Sample(_) | Pending::Candidate(..), Err(_)) => {}
            (Pending::Refresh | Pending::SelfLookup, Err(_)) | (Pending::Leave, _) => {}
        }
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        if let LinkEvent::Failed(id) = event {
            if self.contains(id) {
                self.drop_node(ctx, id);
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        match timer {
            T_JOIN_RETRY if !self.joined => self.send_join(ctx),
            _ if !self.joined => {}
            T_STABILIZE => {
                self.stabilize(ctx);
                if let Some(i) = self.stabilize_every() {
                    ctx.set_timer_jittered(i, T_STABILIZE);
                }
            }
            T_REFRESH => {
                self.refresh(ctx);
                ctx.set_timer_jittered(self.refresh_every(), T_REFRESH);
            }
            T_SELF_LOOKUP => {
                self.self_lookup(ctx);
                // An empty bucket nearer the root than the nearest node's is a hole that
                // lookups towards its range fall into (they end here, at the wrong node):
                // each self-lookup round looks into every such bucket, not only the
                // round-robin refresh, which reaches a bucket every 32 rounds.
                self.refresh_far_buckets(ctx);
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
        let near = self.closest(self.me, self.cfg.k);
        let body = pb::KademliaUpdate {
            uptime: 0,
            closest: wire_ids(&near),
        }
        .encode_to_vec();
        for t in near {
            let tok = ctx.request(
                Target::Direct(t),
                pb::LeaveReq {
                    leaving_peer_id: self.me.to_bytes().to_vec(),
                    overlay_specific: body.clone(),
                },
            );
            self.pending.insert(tok, Pending::Leave);
        }
        self.joined = false;
        ctx.event(TopologyEvent::Left);
    }

    fn routing_table(&self) -> RoutingSnapshot {
        // The nearest nodes in ring order both ways, for diagnostics: with every node of a
        // small overlay known, the first successor is the ring successor.
        let near = self.closest(self.me, self.cfg.k);
        let mut succs = near.clone();
        succs.sort_unstable_by_key(|x| distance(self.me, *x));
        let mut preds = near;
        preds.sort_unstable_by_key(|x| distance(*x, self.me));
        RoutingSnapshot {
            algorithm: NAME,
            node: self.me,
            predecessors: preds,
            successors: succs,
            fingers: self.all().collect(),
        }
    }
}

/// The member XOR-closest to `target` in a set: descend the binary trie of the ids,
/// preferring at each bit the half that agrees with the target.
pub fn xor_closest(members: &std::collections::BTreeSet<Id>, target: Id) -> Option<Id> {
    if members.is_empty() {
        return None;
    }
    let (mut lo, mut hi) = (0u128, u128::MAX);
    for bit in (0..128).rev() {
        let half = 1u128 << bit;
        let mid = lo | half; // first id of the upper half of [lo, hi]
        let (want, other) = if target.0 & half == 0 {
            ((lo, mid - 1), (mid, hi))
        } else {
            ((mid, hi), (lo, mid - 1))
        };
        if members.range(Id(want.0)..=Id(want.1)).next().is_some() {
            (lo, hi) = want;
        } else {
            (lo, hi) = other;
        }
    }
    members.range(Id(lo)..=Id(hi)).next().copied()
}

#[cfg(test)]
mod tests;
