//! The overlay core: one node's state machine around a `Box<dyn Topology>`.
//!
//! Drivers (the daemon, the simulator) feed it inputs with an explicit `now` —
//! [`OverlayNode::handle_message`], [`OverlayNode::handle_link`],
//! [`OverlayNode::handle_timeout`] — and collect outputs with
//! [`OverlayNode::poll_transmit`], [`OverlayNode::poll_event`] and
//! [`OverlayNode::poll_timeout`], in the manner of quinn-proto.

mod batch;
mod config;
mod diagnostics;
mod recovery;
mod replication;
mod routing;
mod serve;
mod stats;
mod transactions;

pub use config::CoreConfig;
pub use diagnostics::HostInfo;
pub use recovery::{hop_ack_timeout, HOP_ACK_SLACK};
pub use stats::Stats;
pub use transactions::OpId;

use crate::id::{Id, NodeId};
use crate::storage::{KindData, Storage};
use crate::time::Time;
use crate::topology::{Ctx, LinkEvent, RoutingSnapshot, Target, Topology, TopologyAction};
use crate::topology::{TimerId, TopologyEvent};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::security::Identity;
use p2psip_proto::{overlay_id, Body, Destination};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;
use transactions::{Owner, Tx};

/// Bytes to send to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub bytes: Vec<u8>,
}

/// Why an operation failed: a protocol error code and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub info: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.info)
    }
}

/// What the core reports to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The node joined the overlay (or formed a new one).
    Joined,
    /// A join attempt failed; the algorithm retries.
    JoinFailed(String),
    /// A graceful leave is complete: data handed over, neighbours told.
    Left,
    /// A client operation finished.
    Completed {
        op: OpId,
        method: &'static str,
        outcome: Result<Body, OpError>,
        /// Overlay hops from this node to the node that answered (0 = answered locally).
        hops: u32,
        latency: Duration,
        responder: Option<NodeId>,
    },
    /// A node told this one how to reach it (in an Attach or AppAttach request): the
    /// transport may connect to it, and punches its NAT towards it (proto/SPEC.md 2.8).
    PeerCandidates {
        node: NodeId,
        candidates: Vec<pb::Candidate>,
    },
    /// A node sent this one an overlay configuration document (ConfigUpdate, proto/SPEC.md
    /// 5.3). The core only passes it on: checking its signature and sequence number and
    /// applying it is the driver's part.
    ConfigUpdate {
        from: NodeId,
        update: pb::ConfigUpdateReq,
    },
}

/// Life cycle of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Idle,
    Running,
    /// Handing data over before telling the neighbours.
    Leaving,
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Tx {
        id: u64,
        attempt: u32,
    },
    Topology(TimerId),
    Replication,
    Expiry,
    /// A replication check a while after copies arrived that this node is not a replica of.
    CopyRecheck,
}

/// How long after such copies arrived the replication check runs.
const COPY_RECHECK: Duration = Duration::from_secs(10);

/// One node of the overlay, without IO.
pub struct OverlayNode {
    cfg: CoreConfig,
    me: NodeId,
    identity: Identity,
    overlay_id: u32,
    topology: Box<dyn Topology>,
    store: Box<dyn Storage>,
    rng: ChaCha8Rng,
    now: Time,
    state: NodeState,
    txs: HashMap<u64, Tx>,
    /// Per node, the transactions sent straight to it (ended at once if its link fails).
    direct_txs: HashMap<NodeId, Vec<u64>>,
    timers: BTreeMap<(Time, u64), TimerKind>,
    timer_seq: u64,
    next_token: u64,
    next_op: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    loopback: VecDeque<Vec<u8>>,
    /// Per resource, the nodes a full copy was pushed to since the last full re-push.
    synced: HashMap<Id, Vec<NodeId>>,
    replicating: HashSet<(Id, NodeId)>,
    /// Copies in flight to each replica, and those waiting for room in its window.
    replica_window: HashMap<NodeId, replication::Window>,
    /// Resources being handed to their responsible peer, with the kinds handed over.
    handing_over: HashMap<Id, Vec<u32>>,
    replication_due: bool,
    leave_pending: usize,
    stats: Stats,
    /// How other nodes reach this one (set by the transport).
    candidates: Vec<pb::Candidate>,
    /// Where this node's applications listen, by application number (AppAttach).
    app_candidates: HashMap<u32, Vec<pb::Candidate>>,
    /// Nodes the transport reports a link to: a request whose next destination is one of
    /// them goes straight there (a client of this peer is reached that way).
    links: HashSet<NodeId>,
    /// Client fetches asked again of another replica after badly signed answers: how often.
    refetched: HashMap<OpId, u32>,
    /// Per originating neighbour: its requests passed on whose answers have not come back
    /// (transaction id → when).
    inflight: HashMap<NodeId, HashMap<u64, Time>>,
    /// Per verified originator: request tokens left and when they were counted.
    buckets: HashMap<NodeId, (f64, Time)>,
    /// Per linked node: request tokens left (whatever originators its requests name).
    link_buckets: HashMap<NodeId, (f64, Time)>,
    /// Requests that left recently, for hop-by-hop recovery.
    sent: VecDeque<recovery::Sent>,
    /// Measured round trips of direct and of routed requests.
    rtt_direct: recovery::RttEstimator,
    rtt_routed: recovery::RttEstimator,
    /// Bytes stored per (kind, writer), for the writer quota.
    writer_bytes: HashMap<(u32, NodeId), u64>,
    /// Bytes stored in all (every kind, every writer), for `store_bytes`.
    stored_bytes: u64,
    /// Answers to stores whose writes wait for the storage's commit (sent by
    /// [`OverlayNode::poll_transmit`] once it succeeds).
    held: Vec<(routing::Reply, Body, bool)>,
    /// Answers to writers' stores held while too many copies wait for room in the
    /// replicas' windows (`replication_backlog`), oldest first.
    backpressured: VecDeque<(routing::Reply, Body)>,
    /// Replica pushes of those stores: (resource, kinds, replica set).
    held_replication: Vec<(Id, Vec<u32>, Vec<NodeId>)>,
    /// A [`TimerKind::CopyRecheck`] is set.
    copy_recheck_armed: bool,
    /// Signers' public keys already decoded (message signatures).
    keys: p2psip_proto::security::KeyCache,
    /// Stored values' signatures already verified (the fetcher's check of what it gets).
    verified: p2psip_proto::security::VerifiedMemo,
    /// Message signatures the last batch check verified ([`OverlayNode::prepare`]).
    prechecked: p2psip_proto::security::VerifiedMemo,
    /// What diagnostic answers are made of (proto/SPEC.md 4.1).
    diag: diagnostics::DiagState,
    /// Round trip to each node measured by a direct request's first attempt (at most
    /// [`NODE_RTTS_MAX`]): what proximity neighbour selection compares.
    node_rtts: HashMap<NodeId, Duration>,
    /// The token bucket of direct answers to originators without a link.
    direct_dials: HashMap<(), (f64, Time)>,
}

/// Nodes whose round trip the core remembers.
const NODE_RTTS_MAX: usize = 4096;

impl OverlayNode {
    /// A node with the given identity, algorithm and storage. `seed` drives every random
    /// choice the node makes (transaction ids, random fingers, jitter).
    pub fn new(
        cfg: CoreConfig,
        identity: Identity,
        topology: Box<dyn Topology>,
        store: Box<dyn Storage>,
        seed: u64,
    ) -> Self {
        let me = topology.local_id();
        OverlayNode {
            overlay_id: overlay_id(&cfg.overlay),
            cfg,
            me,
            identity,
            topology,
            store,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Time(0),
            state: NodeState::Idle,
            txs: HashMap::new(),
            direct_txs: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_token: 0,
            next_op: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            loopback: VecDeque::new(),
            synced: HashMap::new(),
            replicating: HashSet::new(),
            replica_window: HashMap::new(),
            handing_over: HashMap::new(),
            replication_due: false,
            leave_pending: 0,
            stats: Stats::default(),
            candidates: Vec::new(),
            app_candidates: HashMap::new(),
            links: HashSet::new(),
            buckets: HashMap::new(),
            link_buckets: HashMap::new(),
            inflight: HashMap::new(),
            refetched: HashMap::new(),
            sent: VecDeque::new(),
            rtt_direct: recovery::RttEstimator::default(),
            rtt_routed: recovery::RttEstimator::default(),
            writer_bytes: HashMap::new(),
            stored_bytes: 0,
            held: Vec::new(),
            backpressured: VecDeque::new(),
            held_replication: Vec::new(),
            copy_recheck_armed: false,
            keys: Default::default(),
            verified: Default::default(),
            prechecked: Default::default(),
            diag: Default::default(),
            node_rtts: HashMap::new(),
            direct_dials: HashMap::new(),
        }
        .with_writer_bytes_counted()
    }

    /// Counts the bytes each writer has stored (for a store restored from disk).
    fn with_writer_bytes_counted(mut self) -> Self {
        self.count_writer_bytes();
        self
    }

    fn count_writer_bytes(&mut self) {
        self.writer_bytes.clear();
        self.stored_bytes = 0;
        for (r, k) in self.store.keys() {
            if let Some(d) = self.store.get(r, k) {
                for (w, b) in writers_of(&d) {
                    *self.writer_bytes.entry((k, w)).or_default() += b;
                    self.stored_bytes = self.stored_bytes.saturating_add(b);
                }
            }
        }
    }

    /// Writes (or, when empty or None, removes) one kind's data at a resource, keeping the
    /// per-writer byte counts of the quota in step. Every write of the core goes here.
    fn write_data(&mut self, resource: Id, kind: u32, data: Option<KindData>) {
        let old = self.store.get(resource, kind).unwrap_or_default();
        self.write_data_over(resource, kind, &old, data);
    }

    /// [`Self::write_data`] for a caller that already read what is stored (`old`).
    fn write_data_over(&mut self, resource: Id, kind: u32, old: &KindData, data: Option<KindData>) {
        for (w, b) in writers_of(old) {
            self.stored_bytes = self.stored_bytes.saturating_sub(b);
            if let Some(x) = self.writer_bytes.get_mut(&(kind, w)) {
                *x = x.saturating_sub(b);
                if *x == 0 {
                    self.writer_bytes.remove(&(kind, w));
                }
            }
        }
        match data {
            Some(d) if !d.values.is_empty() => {
                for (w, b) in writers_of(&d) {
                    *self.writer_bytes.entry((kind, w)).or_default() += b;
                    self.stored_bytes = self.stored_bytes.saturating_add(b);
                }
                self.store.put(resource, kind, d);
            }
            _ => {
                self.store.remove(resource, kind);
            }
        }
    }

    /// Bytes `writer` has stored under `kind` at this peer.
    pub fn writer_bytes(&self, kind: u32, writer: NodeId) -> u64 {
        self.writer_bytes.get(&(kind, writer)).copied().unwrap_or(0)
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn state(&self) -> NodeState {
        self.state
    }

    pub fn is_joined(&self) -> bool {
        self.state == NodeState::Running && self.topology.is_joined()
    }

    pub fn algorithm(&self) -> &'static str {
        self.topology.name()
    }

    /// Changes the abuse limits (a newer overlay configuration document): requests per
    /// second and burst per originator, requests in flight per originator, bytes per writer
    /// and kind. Takes effect with the next request. (The per-link limit is the node's own
    /// setting: `CoreConfig::link_rate`.)
    pub fn set_limits(
        &mut self,
        origin_rate: u32,
        origin_burst: u32,
        origin_max_in_flight: usize,
        writer_kind_bytes: u64,
    ) {
        self.cfg.origin_rate = origin_rate;
        self.cfg.origin_burst = origin_burst;
        self.cfg.origin_max_in_flight = origin_max_in_flight;
        self.cfg.writer_kind_bytes = writer_kind_bytes;
    }

    /// Defines or redefines a kind (a newer overlay configuration document).
    pub fn define_kind(&mut self, kind: crate::storage::Kind) {
        self.cfg.kinds.add(kind);
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn routing_table(&self) -> RoutingSnapshot {
        self.topology.routing_table()
    }

    pub fn topology(&self) -> &dyn Topology {
        self.topology.as_ref()
    }

    pub fn storage(&self) -> &dyn Storage {
        self.store.as_ref()
    }

    /// The node's store, writable: for fault injection (a peer that tampers with what it
    /// holds) in tests and the simulator.
    pub fn storage_mut(&mut self) -> &mut dyn Storage {
        self.store.as_mut()
    }

    /// Sets where application `application` (5060: SIP) listens on this node, given out in
    /// AppAttach answers; an empty list stops serving it.
    pub fn set_app_candidates(&mut self, application: u32, candidates: Vec<pb::Candidate>) {
        if candidates.is_empty() {
            self.app_candidates.remove(&application);
        } else {
            self.app_candidates.insert(application, candidates);
        }
    }

    /// Sets the transport candidates this node gives out in Attach exchanges.
    pub fn set_candidates(&mut self, candidates: Vec<pb::Candidate>) {
        self.candidates = candidates;
    }

    /// Transactions waiting for an answer.
    pub fn pending_transactions(&self) -> usize {
        self.txs.len()
    }

    /// Starts the node: joins through `bootstrap`, or forms a new overlay if it is empty.
    pub fn start(&mut self, now: Time, bootstrap: &[NodeId]) {
        self.launch(now, |t, ctx| t.start(ctx, bootstrap));
    }

    /// Starts the node already joined, from a complete snapshot of the overlay's members
    /// (see `Topology::start_with_members`).
    pub fn start_with_members(&mut self, now: Time, members: &[NodeId]) {
        self.launch(now, |t, ctx| t.start_with_members(ctx, members));
    }

    /// A client moves to another admitting peer (one it has a link to), e.g. the peer
    /// responsible for its Node-ID, through which requests addressed to it arrive. Nothing
    /// happens on a peer or a node that is not running.
    pub fn readmit(&mut self, now: Time, peer: NodeId) {
        self.now = now;
        if self.state != NodeState::Running || self.topology.is_peer() {
            return;
        }
        self.with_topology(|t, ctx| t.start(ctx, &[peer]));
        self.drain();
    }

    fn launch(&mut self, now: Time, f: impl FnOnce(&mut dyn Topology, &mut Ctx<'_>)) {
        self.now = now;
        self.state = NodeState::Running;
        self.diag.started.get_or_insert(now);
        self.with_topology(f);
        let (r, e) = (self.cfg.replication_interval, self.cfg.expiry_interval);
        self.set_timer(now + r, TimerKind::Replication);
        self.set_timer(now + e, TimerKind::Expiry);
        self.drain();
    }

    /// A message received from the node `from` (the authenticated peer of the link).
    pub fn handle_message(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        self.now = now;
        if matches!(self.state, NodeState::Idle | NodeState::Left) {
            return;
        }
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        self.process(from, bytes);
        self.drain();
    }

    /// A link event from the transport.
    pub fn handle_link(&mut self, now: Time, event: LinkEvent) {
        self.now = now;
        match event {
            LinkEvent::Up(n) => self.links.insert(n),
            LinkEvent::Failed(n) => {
                self.buckets.remove(&n);
                self.link_buckets.remove(&n);
                self.inflight.remove(&n);
                self.links.remove(&n)
            }
        };
        if self.state != NodeState::Running {
            return;
        }
        if let LinkEvent::Failed(n) = event {
            self.synced.values_mut().for_each(|v| v.retain(|x| *x != n));
            self.forget_copies_to(n);
        }
        self.with_topology(|t, ctx| t.on_link(ctx, event));
        if let LinkEvent::Failed(n) = event {
            self.reroute_after_failure(n);
        }
        self.drain();
    }

    /// When the node next needs [`OverlayNode::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        while let Some((&(t, seq), &kind)) = self.timers.iter().next() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, seq));
            if matches!(self.state, NodeState::Idle | NodeState::Left) {
                continue;
            }
            match kind {
                TimerKind::Tx { id, attempt } => self.on_tx_timer(id, attempt),
                TimerKind::Topology(timer) => {
                    if self.state == NodeState::Running {
                        self.with_topology(|t, ctx| t.on_timer(ctx, timer));
                    }
                }
                TimerKind::Replication => {
                    self.synced.clear();
                    self.replication_due = true;
                    let r = self.cfg.replication_interval;
                    self.set_timer(now + r, TimerKind::Replication);
                }
                TimerKind::CopyRecheck => {
                    self.copy_recheck_armed = false;
                    self.replication_due = true;
                }
                TimerKind::Expiry => {
                    self.purge_expired();
                    let e = self.cfg.expiry_interval;
                    self.set_timer(now + e, TimerKind::Expiry);
                }
            }
            self.drain();
        }
    }

    /// The next message to send. Writes waiting for the storage's commit are committed
    /// first, so an answer to a store leaves only once what it acknowledges is durable.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.held.is_empty() || !self.held_replication.is_empty() || self.store.uncommitted() {
            self.settle();
        }
        self.transmits.pop_front()
    }

    /// Commits the storage; sends the answers (and replica pushes) that waited for it, or,
    /// when it fails, answers those stores with Error_Out_Of_Space (the backend has undone
    /// their writes, and the quota counts are taken again from what is stored).
    fn settle(&mut self) {
        let held = std::mem::take(&mut self.held);
        match self.store.commit() {
            Ok(()) => {
                for (reply, body, primary) in held {
                    if primary {
                        self.answer_store(reply, body);
                    } else {
                        self.send_reply(reply, &body);
                    }
                }
                self.release_replication();
            }
            Err(e) => {
                self.stats.commit_failures += 1;
                self.count_writer_bytes();
                // The writes were undone: nothing to copy.
                self.held_replication.clear();
                let info = e.to_string();
                for (reply, _, _) in held {
                    self.stats.errors_sent += 1;
                    self.send_reply(reply, &Body::error(ErrorCode::OutOfSpace, &info));
                }
            }
        }
        self.drain();
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Leaves gracefully: hands every stored value to the successors, then tells the
    /// neighbours. [`Event::Left`] reports the end.
    pub fn leave(&mut self, now: Time) {
        self.now = now;
        if self.state != NodeState::Running {
            return;
        }
        self.state = NodeState::Leaving;
        let r = self.replica_count();
        let heirs: Vec<NodeId> = self
            .topology
            .routing_table()
            .successors
            .into_iter()
            .take(r.max(1))
            .collect();
        let resources = self.resources();
        for heir in &heirs {
            for (res, kinds) in &resources {
                if let Some(body) = self.replica_body(*res, kinds, 1) {
                    self.leave_pending += 1;
                    self.stats.replication_stores += 1;
                    self.request(Owner::LeaveHandover, Target::Direct(*heir), body.into());
                }
            }
        }
        if self.leave_pending == 0 {
            self.finish_leave();
        }
        self.drain();
    }

    fn finish_leave(&mut self) {
        self.with_topology(|t, ctx| t.leave(ctx));
        self.state = NodeState::Left;
        self.events.push_back(Event::Left);
    }

    /// This node's host candidate as an address (what a DIRECT_RESPONSE option names).
    fn host_address(&self) -> Option<std::net::SocketAddr> {
        let c = self
            .candidates
            .iter()
            .find(|c| c.r#type == pb::candidate::Type::Host as i32)?;
        let ip = match c.address.len() {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(c.address.as_slice()).ok()?),
            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(c.address.as_slice()).ok()?),
            _ => return None,
        };
        let port = u16::try_from(c.port).ok().filter(|p| *p != 0)?;
        Some(std::net::SocketAddr::new(ip, port))
    }

    /// Number of replicas besides the responsible copy, as the algorithm keeps them.
    fn replica_count(&self) -> usize {
        self.topology.replica_set(self.me).len().saturating_sub(1)
    }

    // ---- client operations ------------------------------------------------------------

    /// Stores values of one kind at `resource`. `generation` 0 means no compare-and-swap.
    pub fn store(
        &mut self,
        now: Time,
        resource: Id,
        kind: u32,
        values: Vec<pb::StoredData>,
        generation: u64,
    ) -> OpId {
        let body = pb::StoreReq {
            resource: resource.to_bytes().to_vec(),
            replica_number: 0,
            kind_data: vec![pb::StoreKindData {
                kind,
                generation_counter: generation,
                values,
            }],
        };
        self.client_request(now, route(resource), body.into())
    }

    /// Fetches values at `resource`.
    pub fn fetch(
        &mut self,
        now: Time,
        resource: Id,
        specifiers: Vec<pb::StoredDataSpecifier>,
    ) -> OpId {
        let body = pb::FetchReq {
            resource: resource.to_bytes().to_vec(),
            specifiers,
        };
        self.client_request(now, route(resource), body.into())
    }

    /// Fetches every value of one kind at `resource`.
    pub fn fetch_kind(&mut self, now: Time, resource: Id, kind: u32) -> OpId {
        self.fetch(now, resource, vec![all_of_kind(kind)])
    }

    /// Stat of one kind at `resource`.
    pub fn stat(&mut self, now: Time, resource: Id, kind: u32) -> OpId {
        let body = pb::StatReq {
            resource: resource.to_bytes().to_vec(),
            specifiers: vec![all_of_kind(kind)],
        };
        self.client_request(now, route(resource), body.into())
    }

    /// Find: the closest resource at or after `resource` that holds each kind.
    pub fn find(&mut self, now: Time, resource: Id, kinds: Vec<u32>) -> OpId {
        let body = pb::FindReq {
            resource: resource.to_bytes().to_vec(),
            kinds,
        };
        self.client_request(now, route(resource), body.into())
    }

    /// Pings the node responsible for `target` (a lookup: the answer names the responder).
    pub fn lookup(&mut self, now: Time, target: Id) -> OpId {
        self.client_request(
            now,
            route(target),
            pb::PingReq {
                padding: vec![],
                ..Default::default()
            }
            .into(),
        )
    }

    /// Asks the node `node` for its transport candidates, giving it ours; the answer is an
    /// AttachAns. The request is routed through the overlay, starting at `via` (a node the
    /// transport has a link to) when given: the transport calls this precisely when it has
    /// no link to `node`, so the request must not be sent to `node` directly.
    pub fn attach(&mut self, now: Time, node: NodeId, via: Option<NodeId>) -> OpId {
        let body = pb::AttachReq {
            ufrag: Vec::new(),
            password: Vec::new(),
            role: "active".into(),
            candidates: self.candidates.clone(),
            send_update: false,
        };
        let target = match via {
            Some(v) if v != node && v != self.me => {
                Target::SourceRoute(vec![Destination::Node(v), Destination::Node(node)])
            }
            _ => Target::Route(vec![Destination::Node(node)]),
        };
        self.client_request(now, target, body.into())
    }

    /// AppAttach: asks the node `node` where its application `application` listens (routed
    /// through the overlay); the answer is an AppAttachAns with the application's
    /// candidates, over which the application opens its own connection.
    pub fn app_attach(&mut self, now: Time, node: NodeId, application: u32) -> OpId {
        let body = pb::AppAttachReq {
            ufrag: Vec::new(),
            password: Vec::new(),
            application,
            role: "active".into(),
            // Ours for that application, else the node's own: the callee punches its NAT
            // towards them before it answers.
            candidates: self
                .app_candidates
                .get(&application)
                .unwrap_or(&self.candidates)
                .clone(),
        };
        self.client_request(
            now,
            Target::Route(vec![Destination::Node(node)]),
            body.into(),
        )
    }

    /// Sends an overlay configuration document straight to the linked node `to`
    /// (ConfigUpdate, proto/SPEC.md 5.3).
    pub fn config_update(&mut self, now: Time, to: NodeId, update: pb::ConfigUpdateReq) -> OpId {
        self.client_request(now, Target::Direct(to), update.into())
    }

    fn client_request(&mut self, now: Time, target: Target, body: Body) -> OpId {
        self.now = now;
        self.next_op += 1;
        let op = OpId(self.next_op);
        if self.state != NodeState::Running {
            self.events.push_back(Event::Completed {
                op,
                method: body.method_name(),
                outcome: Err(OpError {
                    code: ErrorCode::InProgress,
                    info: "the node is not running".into(),
                }),
                hops: 0,
                latency: Duration::ZERO,
                responder: None,
            });
            return op;
        }
        self.request(Owner::Client(op), target, body);
        self.drain();
        op
    }

    // ---- plumbing ---------------------------------------------------------------------

    /// Arms one replication check [`COPY_RECHECK`] from now (one at a time).
    fn recheck_copies_later(&mut self) {
        if !self.copy_recheck_armed {
            self.copy_recheck_armed = true;
            self.set_timer(self.now + COPY_RECHECK, TimerKind::CopyRecheck);
        }
    }

    fn set_timer(&mut self, at: Time, kind: TimerKind) -> (Time, u64) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), kind);
        (at, self.timer_seq)
    }

    /// Calls into the algorithm with a fresh context and carries out what it asked for.
    fn with_topology<R>(&mut self, f: impl FnOnce(&mut dyn Topology, &mut Ctx<'_>) -> R) -> R {
        let mut actions = Vec::new();
        let r = {
            let mut ctx = Ctx::new(self.now, &mut self.rng, &mut actions, &mut self.next_token)
                .with_rtts(&self.node_rtts);
            f(self.topology.as_mut(), &mut ctx)
        };
        for a in actions {
            match a {
                TopologyAction::Request {
                    token,
                    target,
                    body,
                } => self.request(Owner::Topology(token), target, body),
                TopologyAction::Timer { at, timer } => {
                    self.set_timer(at, TimerKind::Topology(timer));
                }
                TopologyAction::Event(e) => match e {
                    TopologyEvent::ResponsibilityChanged => self.replication_due = true,
                    TopologyEvent::Joined => self.events.push_back(Event::Joined),
                    TopologyEvent::JoinFailed(why) => self.events.push_back(Event::JoinFailed(why)),
                    TopologyEvent::Left => {}
                },
            }
        }
        r
    }

    /// Processes messages the node sent to itself and pending replication work.
    fn drain(&mut self) {
        loop {
            while let Some(b) = self.loopback.pop_front() {
                let me = self.me;
                self.process(me, &b);
            }
            if self.replication_due && self.state == NodeState::Running {
                self.replication_due = false;
                self.check_replication();
            }
            let replication_pending = self.replication_due && self.state == NodeState::Running;
            if self.loopback.is_empty() && !replication_pending {
                break;
            }
        }
    }

    fn transmit(&mut self, to: NodeId, bytes: Vec<u8>) {
        if to == self.me {
            self.loopback.push_back(bytes);
            return;
        }
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { to, bytes });
    }

    /// Every stored resource with its kinds.
    fn resources(&self) -> BTreeMap<Id, Vec<u32>> {
        let mut m: BTreeMap<Id, Vec<u32>> = BTreeMap::new();
        for (r, k) in self.store.keys() {
            m.entry(r).or_default().push(k);
        }
        m
    }

    fn purge_expired(&mut self) {
        let now_ms = self.now.as_millis();
        for (r, k) in self.store.keys() {
            if let Some(mut d) = self.store.get(r, k) {
                let before = d.values.len();
                d.values
                    .retain(|_, v| !crate::storage::is_expired(v, now_ms));
                if d.values.is_empty() || d.values.len() != before {
                    self.write_data(r, k, Some(d));
                }
            }
        }
    }
}

/// Payload bytes of each writer (signer Node-ID) in one kind's data.
pub(super) fn writers_of(d: &KindData) -> HashMap<NodeId, u64> {
    let mut m: HashMap<NodeId, u64> = HashMap::new();
    for sd in d.values.values() {
        let w = sd
            .signature
            .as_ref()
            .and_then(|s| s.signer.as_ref())
            .and_then(|s| Id::from_slice(&s.node_id))
            .unwrap_or(Id(0));
        *m.entry(w).or_default() += crate::storage::stored_len(sd);
    }
    m
}

/// Every byte one kind's data takes (values with their signatures, identities and
/// metadata), as the quota and the peer's total count them.
pub(super) fn bytes_of(d: &KindData) -> u64 {
    d.values.values().map(crate::storage::stored_len).sum()
}

fn route(resource: Id) -> Target {
    Target::Route(vec![Destination::Resource(resource)])
}

/// A host candidate for `addr`.
pub(super) fn host_candidate(addr: std::net::SocketAddr) -> pb::Candidate {
    let address = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    pb::Candidate {
        address,
        port: u32::from(addr.port()),
        r#type: pb::candidate::Type::Host as i32,
        priority: 1,
    }
}

/// A Fetch specifier for every value of one kind.
pub fn all_of_kind(kind: u32) -> pb::StoredDataSpecifier {
    pb::StoredDataSpecifier {
        kind,
        generation: 0,
        model: None,
    }
}

/// A helper for tests and tools: the error of an outcome, if any.
pub fn error_code(outcome: &Result<Body, OpError>) -> Option<ErrorCode> {
    outcome.as_ref().err().map(|e| e.code)
}

impl OverlayNode {
    /// Reports a link failure for a direct request that timed out.
    fn link_failed(&mut self, n: NodeId) {
        self.synced.values_mut().for_each(|v| v.retain(|x| *x != n));
        self.forget_copies_to(n);
        self.with_topology(|t, ctx| t.on_link(ctx, LinkEvent::Failed(n)));
        self.reroute_after_failure(n);
    }
}
