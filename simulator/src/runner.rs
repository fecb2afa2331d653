//! Runs a scenario: builds the overlay, applies churn and workload as Poisson processes on
//! the harness's virtual clock, measures, and returns a [`Report`].

use crate::churn::Sessions;
use crate::harness::{Sim, EPOCH};
use crate::report::{Report, Sample};
use crate::scenario::{Resolved, Scenario};
use p2psip_algorithms::storage::KIND_SIP_REGISTRATION;
use p2psip_algorithms::{signed_value, Event, Id, NodeId, OpId, Time, ValueModel};
use p2psip_proto::pb::{self, stored_data_value::Model};
use p2psip_proto::security::Identity;
use p2psip_proto::Body;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Depart(usize),
    Arrive,
    Lookup,
    Register(usize),
    Call,
    Sample,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Lookup { target: Id },
    Register { user: usize },
    CallFetch { started: Time },
    CallAttach { started: Time },
    Check { user: usize },
}

/// Live peers, for picking one at random in O(1).
struct LiveSet {
    list: Vec<usize>,
    pos: HashMap<usize, usize>,
}

impl LiveSet {
    fn insert(&mut self, i: usize) {
        if !self.pos.contains_key(&i) {
            self.pos.insert(i, self.list.len());
            self.list.push(i);
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(p) = self.pos.remove(&i) {
            let last = self.list.pop();
            if let Some(l) = last {
                if l != i {
                    self.list[p] = l;
                    self.pos.insert(l, p);
                }
            }
        }
    }
}

/// Progress callback: (virtual seconds done, virtual seconds in all).
pub type Progress<'a> = &'a mut dyn FnMut(f64, f64);

pub struct Runner {
    sc: Scenario,
    r: Resolved,
    pub sim: Sim,
    rng: ChaCha8Rng,
    acts: BTreeMap<(Time, u64), Act>,
    seq: u64,
    live: LiveSet,
    sessions: Option<Sessions>,
    arrival_mean_gap: f64,
    pending: HashMap<(usize, OpId), Pending>,
    users: Vec<Identity>,
    /// Storage time (ms) of each user's last acknowledged registration.
    registered_at: Vec<Option<u64>>,
    report: Report,
    sample_acc: Sample,
    last_traffic: (u64, u64),
    last_events: u64,
    start: Time,
}

impl Runner {
    pub fn new(sc: &Scenario) -> Result<Runner, String> {
        let r = sc.resolve()?;
        let mut sim = Sim::new(sc.seed, r.core.clone(), r.algorithm.clone(), r.net.clone());
        sim.stream_completions = true;
        let sessions = r
            .median_session
            .and_then(|m| Sessions::new(&sc.churn.model, m, sc.churn.shape));
        let arrival_mean_gap = sessions.map_or(0.0, |s| s.mean() / sc.nodes as f64);
        if sim.algorithm.keeps_whole_membership() {
            // Every peer holds the whole membership: the tables share the ids of every peer
            // the run will make (the initial ones and the expected arrivals, with a margin;
            // later ones still work, at 16 bytes per id and table).
            let arrivals = if arrival_mean_gap > 0.0 {
                r.duration.as_secs_f64() / arrival_mean_gap
            } else {
                0.0
            };
            let ids = sim.preload(sc.nodes + (arrivals * 1.25) as usize + 64);
            sim.algorithm.share_ids(ids);
        }
        let users = (0..sc.workload.users)
            .map(|u| {
                let mut seed = [0x51u8; 32];
                seed[..8].copy_from_slice(&(u as u64).to_be_bytes());
                seed[8..16].copy_from_slice(&sc.seed.to_be_bytes());
                Identity::from_seed(seed, aor(u))
            })
            .collect();
        let report = Report::new(sc);
        Ok(Runner {
            rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x7275_6e6e_6572),
            sc: sc.clone(),
            r,
            sim,
            acts: BTreeMap::new(),
            seq: 0,
            live: LiveSet {
                list: Vec::new(),
                pos: HashMap::new(),
            },
            sessions,
            arrival_mean_gap,
            pending: HashMap::new(),
            registered_at: vec![None; sc.workload.users],
            users,
            report,
            sample_acc: Sample::default(),
            last_traffic: (0, 0),
            last_events: 0,
            start: EPOCH,
        })
    }

    fn at(&mut self, t: Time, a: Act) {
        self.seq += 1;
        self.acts.insert((t, self.seq), a);
    }

    fn exp(&mut self, mean_s: f64) -> Duration {
        let u: f64 = 1.0 - self.rng.random::<f64>();
        Duration::from_secs_f64(-u.ln() * mean_s)
    }

    fn random_live(&mut self) -> Option<usize> {
        if self.live.list.is_empty() {
            return None;
        }
        let k = self.rng.random_range(0..self.live.list.len());
        Some(self.live.list[k])
    }

    fn schedule_departure(&mut self, i: usize) {
        if let Some(s) = self.sessions {
            let len = s.sample(&mut self.rng);
            let t = self.sim.now() + Duration::from_secs_f64(len);
            self.at(t, Act::Depart(i));
        }
    }

    /// Builds the overlay: warm (every peer joined from a membership snapshot) or by
    /// sequential joins.
    fn build(&mut self, progress: Progress<'_>) {
        let n = self.sc.nodes;
        for _ in 0..n {
            self.sim.add_node();
        }
        // Adversaries: a seeded choice among the initial peers.
        let droppers = (self.sc.adversary.droppers * n as f64).round() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        for k in 0..droppers.min(n) {
            let j = self.rng.random_range(k..n);
            order.swap(k, j);
            self.sim.set_dropper(order[k], true);
        }
        let forgers = ((self.sc.adversary.forgers * n as f64).round() as usize)
            .min(n.saturating_sub(droppers));
        for k in droppers..(droppers + forgers).min(n) {
            let j = self.rng.random_range(k..n);
            order.swap(k, j);
            self.sim.set_forger(order[k], true);
        }
        self.report.adversaries = droppers.min(n);
        self.report.forgers = forgers;
        if self.sc.warm_start {
            let mut members: Vec<NodeId> = (0..n).map(|i| self.sim.id(i)).collect();
            members.sort();
            for i in 0..n {
                self.sim.start_with_members(i, &members);
                self.live.insert(i);
                if i % 1000 == 0 {
                    progress(0.0, self.r.duration.as_secs_f64());
                }
            }
            self.sim.run_for(Duration::from_millis(1));
        } else {
            for i in 0..n {
                let boot: Vec<NodeId> = match self.random_live() {
                    Some(b) => vec![self.sim.id(b)],
                    None => vec![],
                };
                self.sim.start(i, &boot);
                self.live.insert(i);
                let gap = self.r.join_gap;
                self.sim.run_for(gap);
            }
            self.sim.run_for(Duration::from_secs(60));
        }
        self.sim.drain_completions();
        self.start = self.sim.now();
        for i in 0..n {
            self.schedule_departure(i);
        }
    }

    /// Runs the scenario to its end and returns the report.
    pub fn run(mut self, progress: Progress<'_>) -> Report {
        let wall = Instant::now();
        self.build(progress);
        let start = self.start;
        let end = start + self.r.duration;
        let total = self.r.duration.as_secs_f64();
        // Workload processes.
        if self.sessions.is_some() {
            let g = self.exp(self.arrival_mean_gap);
            self.at(start + g, Act::Arrive);
        }
        if self.sc.workload.lookups_per_node_per_hour > 0.0 {
            let g = self.exp(self.lookup_gap());
            self.at(start + g, Act::Lookup);
        }
        for u in 0..self.sc.workload.users {
            let off = self.rng.random::<f64>() * self.r.refresh.as_secs_f64().min(60.0);
            self.at(start + Duration::from_secs_f64(off), Act::Register(u));
        }
        if self.sc.workload.calls_per_hour > 0.0 && self.sc.workload.users > 0 {
            let g = self.exp(3600.0 / self.sc.workload.calls_per_hour);
            // Calls begin once the first registrations had a minute to land.
            self.at(start + Duration::from_secs(60) + g, Act::Call);
        }
        let si = self.r.sample_interval;
        self.at(start + si, Act::Sample);
        self.last_events = self.sim.events_processed();
        loop {
            let next = self.acts.first_key_value().map(|(k, _)| k.0);
            let Some(t) = next.filter(|t| *t <= end) else {
                break;
            };
            self.sim.run_until(t);
            self.collect();
            if let Some((_, a)) = self.acts.pop_first() {
                self.apply(a, end, progress);
            }
        }
        self.sim.run_until(end);
        self.collect();
        // Stored-data loss: every user whose last registration is still within its
        // lifetime must be fetchable.
        self.check_registrations();
        self.report.finish(&self.sim, wall.elapsed(), self.sc.nodes);
        progress(total, total);
        self.report
    }

    fn lookup_gap(&self) -> f64 {
        3600.0 / (self.sc.workload.lookups_per_node_per_hour * self.sc.nodes as f64)
    }

    fn apply(&mut self, a: Act, end: Time, progress: Progress<'_>) {
        let now = self.sim.now();
        match a {
            Act::Depart(i) => {
                if !self.sim.is_up(i) {
                    return;
                }
                self.live.remove(i);
                if self.rng.random::<f64>() < self.sc.churn.crash_fraction {
                    self.sim.remove(i);
                    self.report.crashes += 1;
                } else {
                    self.sim.leave(i);
                    self.report.leaves += 1;
                }
            }
            Act::Arrive => {
                let i = self.sim.add_node();
                let boot: Vec<NodeId> = match self.random_live() {
                    Some(b) => vec![self.sim.id(b)],
                    None => vec![],
                };
                self.sim.start(i, &boot);
                self.live.insert(i);
                self.report.arrivals += 1;
                self.schedule_departure(i);
                let g = self.exp(self.arrival_mean_gap);
                self.at(now + g, Act::Arrive);
            }
            Act::Lookup => {
                if let Some(i) = self
                    .random_live()
                    .filter(|i| !self.sim.is_dropper(*i) && !self.sim.is_forger(*i))
                {
                    let target = Id(self.rng.random());
                    if let Some(op) = self.sim.start_op(i, |n, t| n.lookup(t, target)) {
                        self.pending.insert((i, op), Pending::Lookup { target });
                        self.sample_acc.lookups += 1;
                    }
                }
                let g = self.exp(self.lookup_gap());
                self.at(now + g, Act::Lookup);
            }
            Act::Register(u) => {
                if let Some(i) = self.random_live() {
                    let who = &self.users[u];
                    let res = Id::hash_of(aor(u).as_bytes());
                    let lifetime = (2 * self.r.refresh.as_secs()).min(u32::MAX as u64) as u32;
                    let device = format!("{:#}", self.sim.id(i)).into_bytes();
                    let v = signed_value(
                        who,
                        res,
                        KIND_SIP_REGISTRATION,
                        now,
                        lifetime,
                        ValueModel::Dictionary(who.node_id.to_bytes().to_vec(), device),
                    );
                    if let Some(op) = self
                        .sim
                        .start_op(i, |n, t| n.store(t, res, KIND_SIP_REGISTRATION, vec![v], 0))
                    {
                        self.pending.insert((i, op), Pending::Register { user: u });
                        self.report.registrations += 1;
                    }
                }
                self.at(now + self.r.refresh, Act::Register(u));
            }
            Act::Call => {
                let u = self.rng.random_range(0..self.sc.workload.users);
                if self.registered_at[u].is_some() {
                    if let Some(i) = self.random_live() {
                        let res = Id::hash_of(aor(u).as_bytes());
                        if let Some(op) = self
                            .sim
                            .start_op(i, |n, t| n.fetch_kind(t, res, KIND_SIP_REGISTRATION))
                        {
                            self.pending
                                .insert((i, op), Pending::CallFetch { started: now });
                            self.report.calls.attempted += 1;
                        }
                    }
                }
                let g = self.exp(3600.0 / self.sc.workload.calls_per_hour);
                self.at(now + g, Act::Call);
            }
            Act::Sample => {
                self.take_sample();
                progress(
                    now.since(self.start).as_secs_f64(),
                    end.since(self.start).as_secs_f64(),
                );
                let si = self.r.sample_interval;
                self.at(now + si, Act::Sample);
            }
        }
    }

    fn take_sample(&mut self) {
        let now = self.sim.now();
        let secs = self.r.sample_interval.as_secs_f64();
        let tr = self.sim.traffic;
        let live = self.sim.joined_set().len().max(1) as f64;
        let mut s = std::mem::take(&mut self.sample_acc);
        s.t_s = now.since(self.start).as_secs_f64();
        s.live_peers = self.sim.joined_set().len();
        s.maintenance_bytes_per_node_s =
            (tr.maintenance_bytes - self.last_traffic.0) as f64 / live / secs;
        s.data_bytes_per_node_s = (tr.data_bytes - self.last_traffic.1) as f64 / live / secs;
        s.events = self.sim.events_processed() - self.last_events;
        self.last_traffic = (tr.maintenance_bytes, tr.data_bytes);
        self.last_events = self.sim.events_processed();
        // P2PSIP_SIM_STALE=1: print, each sample, how many routing-table entries of the live
        // peers name peers that are gone (a diagnosis aid; it walks every table, too slow
        // for whole-membership tables at scale).
        if std::env::var("P2PSIP_SIM_STALE").is_ok() {
            let live = self.sim.joined_set().clone();
            let (mut entries, mut stale) = (0usize, 0usize);
            for id in live.iter() {
                if let Some(n) = self.sim.index_of(*id).and_then(|i| self.sim.node(i)) {
                    let rt = n.routing_table();
                    for f in rt.fingers.iter().chain(rt.successors.iter()) {
                        entries += 1;
                        if !live.contains(f) {
                            stale += 1;
                        }
                    }
                }
            }
            eprintln!(
                "t={:.0} entries {entries} stale {stale} ({:.2}%)",
                s.t_s,
                100.0 * stale as f64 / entries.max(1) as f64
            );
        }
        self.report.push_sample(s);
    }

    /// Handles finished operations.
    fn collect(&mut self) {
        for (i, e) in self.sim.drain_completions() {
            let Event::Completed {
                op,
                outcome,
                hops,
                latency,
                responder,
                ..
            } = e
            else {
                continue;
            };
            let Some(p) = self.pending.remove(&(i, op)) else {
                continue;
            };
            match p {
                Pending::Lookup { target } => {
                    let ok = outcome.is_ok();
                    let correct =
                        ok && responder.is_some() && responder == self.sim.responsible(target);
                    self.report.lookup(ok, correct, latency, hops);
                    if let Some(r) = responder.filter(|_| ok).and_then(|r| self.sim.index_of(r)) {
                        if r != i {
                            let rtt = self.sim.net.latency(self.sim.seed(), i, r)
                                + self.sim.net.latency(self.sim.seed(), r, i);
                            self.report.stretch(latency, rtt);
                        }
                    }
                    self.sample_acc.completed += 1;
                    if ok {
                        self.sample_acc.ok += 1;
                        self.sample_acc
                            .latencies_ms
                            .push(latency.as_secs_f64() * 1000.0);
                    }
                    if correct {
                        self.sample_acc.correct += 1;
                    }
                }
                Pending::Register { user } => {
                    if outcome.is_ok() {
                        self.registered_at[user] = Some(self.sim.now().as_millis());
                        self.report.registrations_ok += 1;
                    }
                }
                Pending::CallFetch { started } => {
                    let device = match &outcome {
                        Ok(Body::FetchAns(f)) => device_of(f),
                        _ => None,
                    };
                    if let Some(d) = device {
                        self.report.calls.found += 1;
                        if let Some(op) = self.sim.start_op(i, |n, t| n.attach(t, d, None)) {
                            self.pending
                                .insert((i, op), Pending::CallAttach { started });
                        }
                    }
                }
                Pending::CallAttach { started } => {
                    if outcome.is_ok() {
                        self.report.calls.connected += 1;
                        self.report
                            .calls
                            .setup_ms
                            .push(self.sim.now().since(started).as_secs_f64() * 1000.0);
                    }
                }
                Pending::Check { user } => {
                    let found = matches!(&outcome, Ok(Body::FetchAns(f)) if device_of(f).is_some());
                    self.report.data_checked += 1;
                    if !found {
                        // Lost, or only not found? Look at every live store (ground truth).
                        let res = Id::hash_of(aor(user).as_bytes());
                        let holders: Vec<String> = (0..self.sim.len())
                            .filter(|k| {
                                self.sim.node(*k).is_some_and(|n| {
                                    n.storage().get(res, KIND_SIP_REGISTRATION).is_some()
                                })
                            })
                            .map(|k| format!("{}", self.sim.id(k)))
                            .collect();
                        let truth = self.sim.responsible(res).map(|r| format!("{r}"));
                        if holders.is_empty() {
                            self.report.data_lost += 1;
                        } else {
                            self.report.data_not_found += 1;
                        }
                        if self.report.lost_examples.len() < 10 {
                            self.report.lost_examples.push(format!(
                                "{} ({:?}; held by {holders:?}, responsible {truth:?})",
                                aor(user),
                                outcome.as_ref().err().map(|e| e.code.as_str_name())
                            ));
                        }
                    }
                }
            }
        }
    }

    fn check_registrations(&mut self) {
        let now_ms = self.sim.now().as_millis();
        let lifetime_ms = 2 * self.r.refresh.as_millis() as u64;
        for u in 0..self.users.len() {
            let Some(t) = self.registered_at[u] else {
                continue;
            };
            // Only registrations that must still exist (a margin for the last refresh).
            if t + lifetime_ms <= now_ms + 5_000 {
                continue;
            }
            if let Some(i) = self.random_live() {
                let res = Id::hash_of(aor(u).as_bytes());
                if let Some(op) = self
                    .sim
                    .start_op(i, |n, t| n.fetch_kind(t, res, KIND_SIP_REGISTRATION))
                {
                    self.pending.insert((i, op), Pending::Check { user: u });
                }
            }
        }
        let until = self.sim.now() + Duration::from_secs(30);
        self.sim.run_until(until);
        self.collect();
    }
}

fn aor(u: usize) -> String {
    format!("sip:user{u}@sim.example")
}

/// The registering node named by a SIP registration.
fn device_of(f: &pb::FetchAns) -> Option<NodeId> {
    let d = f.kind_responses.first()?.values.first()?;
    let Some(Model::Dictionary(e)) = d.value.as_ref()?.model.as_ref() else {
        return None;
    };
    let text = std::str::from_utf8(&e.value.as_ref()?.value).ok()?;
    u128::from_str_radix(text, 16).ok().map(Id)
}
