//! The deterministic multi-node harness: many [`OverlayNode`]s, one virtual clock, one
//! event queue, a modelled network. Every run is reproducible from its seed.

use crate::net::NetConfig;
use indexmap::IndexSet;
use p2psip_algorithms::core::{hop_ack_timeout, CoreConfig};
use p2psip_algorithms::id::in_open_closed;
use p2psip_algorithms::storage::MemoryStore;
use p2psip_algorithms::{AlgorithmParams, Event, Id, LinkEvent, NodeId, OpId, OverlayNode, Time};
use p2psip_proto::security::Identity;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

/// Virtual time starts here (2025-01-01T00:00:00Z), so stored data has realistic times.
pub const EPOCH: Time = Time(1_735_689_600_000_000);

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        to: usize,
        from: NodeId,
        bytes: Vec<u8>,
    },
    Wake(usize),
    LinkFailed {
        at: usize,
        peer: NodeId,
    },
}

/// An event in the queue: the heap pops the earliest, ties in the order they were queued.
struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One entry of the event log: what was delivered to whom, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogEntry {
    pub time: u64,
    pub to: u32,
    pub kind: u8,
    pub len: u32,
    pub digest: u64,
}

struct Slot {
    id: NodeId,
    identity: Identity,
    /// Boxed so that taking it out of its slot for a call moves a pointer, not the node.
    node: Option<Box<OverlayNode>>,
    /// The store of a crashed node, kept as its data directory would be.
    disk: Option<Box<MemoryStore>>,
    wake_at: Option<Time>,
    group: u8,
    /// Nodes this node has exchanged messages with: its open QUIC connections, which
    /// notice (by keep-alive) when the other end crashes.
    /// In the order they opened (a one-hop peer talks to hundreds: a set, not a list).
    links: IndexSet<u32>,
    /// An adversary: drops every request and answer it should pass on for others (it
    /// keeps up its own maintenance, so it stays in everyone's routing tables).
    drops_forwarded: bool,
    /// An adversary that forges, within what its own keys allow (docs/security.md):
    /// answers in other nodes' names, Leaves and Updates in its neighbours' names, and its
    /// own Updates full of made-up successors. It forwards everything it should.
    forges: bool,
}

/// The harness.
pub struct Sim {
    seed: u64,
    now: Time,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Queued>,
    seq: u64,
    slots: Vec<Slot>,
    index: HashMap<NodeId, usize>,
    pub net: NetConfig,
    pub core: CoreConfig,
    pub algorithm: AlgorithmParams,
    log: Vec<LogEntry>,
    pub log_enabled: bool,
    /// A partition changed since the links were last checked against it.
    groups_changed: bool,
    done: HashMap<(usize, OpId), Event>,
    /// With `stream_completions`, finished operations (and the candidates requesters
    /// gave) go here instead of `done`.
    completions: Vec<(usize, Event)>,
    pub stream_completions: bool,
    events_processed: u64,
    joined_events: u64,
    /// Peers that reported Joined and have not gone since, for ground-truth routing.
    joined: BTreeSet<NodeId>,
    /// Bytes sent per traffic class.
    pub traffic: Traffic,
    dropped_by_adversaries: u64,
    /// Messages forgers made up.
    forgeries: u64,
    /// Identities made ahead by `preload`, taken by the next `add_node`s, and the stream
    /// their seeds come from (one per run, so successive preloads never repeat).
    preloaded: VecDeque<Identity>,
    preload_rng: ChaCha8Rng,
}

/// Bytes and messages handed to the network, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Overlay maintenance: Join, Leave, Update, Probe, RouteQuery and their answers.
    pub maintenance_bytes: u64,
    pub maintenance_messages: u64,
    /// Data and workload: Store (including replication), Fetch, Stat, Find, Ping, Attach.
    pub data_bytes: u64,
    pub data_messages: u64,
}

impl Traffic {
    fn count(&mut self, bytes: &[u8]) {
        let code = p2psip_proto::parse_header(bytes)
            .ok()
            .and_then(|h| p2psip_proto::split_contents(&h, bytes).ok())
            .map(|c| c.code);
        let maintenance = matches!(code, Some(1 | 2 | 15..=22));
        if maintenance {
            self.maintenance_bytes += bytes.len() as u64;
            self.maintenance_messages += 1;
        } else {
            self.data_bytes += bytes.len() as u64;
            self.data_messages += 1;
        }
    }
}

/// Whether a message `me` sends passes on someone else's request (the via list holds more
/// than its originator) or answer (its responder is another node).
fn is_forwarded(me: NodeId, bytes: &[u8]) -> bool {
    let Ok(h) = p2psip_proto::parse_header(bytes) else {
        return false;
    };
    let Ok(c) = p2psip_proto::split_contents(&h, bytes) else {
        return false;
    };
    if p2psip_proto::is_request(c.code) {
        h.via_len() > 1
    } else {
        h.via().next() != Some(p2psip_proto::DestRef::Node(me))
    }
}

/// A message with `header` and `body`, signed by `identity` (as a node signs what it
/// originates), encoded; None if it cannot be encoded.
pub fn signed_message(
    identity: &p2psip_proto::security::Identity,
    header: p2psip_proto::OwnedHeader,
    body: p2psip_proto::Body,
) -> Option<Vec<u8>> {
    let block = p2psip_proto::security::sign_message(
        identity,
        header.overlay,
        header.transaction_id,
        body.code(),
        &body.encode_to_vec(),
    );
    p2psip_proto::Message {
        header,
        body,
        security: prost::Message::decode(block.as_slice()).ok(),
    }
    .encode()
    .ok()
}

/// What a forger makes up beside a message `t` it sends (docs/security.md, "forgers"),
/// signed with its own key, as it cannot sign with anyone else's:
/// - beside each request it passes on, an answer back down the path in the name of the
///   request's destination (or of a made-up node next to the target), and for a request
///   routed to a Resource-ID one in its own name, as if it were responsible;
/// - beside each Update of its own to a neighbour, a Leave and an Update in the name of
///   another node it knows, and an Update of its own listing made-up successors.
fn forge(
    me: &p2psip_proto::security::Identity,
    node: &OverlayNode,
    t: &p2psip_algorithms::Transmit,
) -> Vec<p2psip_algorithms::Transmit> {
    use p2psip_proto::{pb, Body, Destination, OwnedHeader};
    let Ok(h) = p2psip_proto::parse_header(&t.bytes) else {
        return Vec::new();
    };
    let Ok(c) = p2psip_proto::split_contents(&h, &t.bytes) else {
        return Vec::new();
    };
    let overlay = h.overlay;
    let signed = |header: OwnedHeader, body: Body| signed_message(me, header, body);
    let mut out = Vec::new();
    let via: Vec<Destination> = h.via().map(|d| d.to_owned()).collect();
    if p2psip_proto::is_request(c.code) && via.len() > 1 {
        // Passed on for someone else: answer it first, in the destination's name.
        let claimed = match h.destinations().last().map(|d| d.to_owned()) {
            Some(Destination::Node(n)) => n,
            Some(Destination::Resource(r)) => Id(r.0.wrapping_add(1)),
            _ => return out,
        };
        let body: Body = match c.code {
            23 => pb::PingAns {
                response_id: 1,
                time: 0,
                ..Default::default()
            }
            .into(),
            9 => pb::FetchAns {
                kind_responses: vec![],
            }
            .into(),
            _ => return out,
        };
        // Back along the path it came: the via list without ourselves, reversed.
        let mut back: Vec<Destination> = via[..via.len() - 1].to_vec();
        back.reverse();
        let Some(Destination::Node(prev)) = back.first().cloned() else {
            return out;
        };
        // In the destination's name (signed with our key: refused), and for a Resource
        // target in our own name (signed properly: the originator must see that we
        // cannot be responsible).
        let mut names = vec![claimed];
        if matches!(
            h.destinations().last(),
            Some(p2psip_proto::DestRef::Resource(_))
        ) {
            names.push(me.node_id);
        }
        for name in names {
            let header = OwnedHeader {
                via: vec![Destination::Node(name)],
                destinations: back.clone(),
                ..OwnedHeader::new(overlay, h.transaction_id, back[0].clone())
            };
            if let Some(bytes) = signed(header, body.clone()) {
                out.push(p2psip_algorithms::Transmit { to: prev, bytes });
            }
        }
    } else if c.code == 19 && via.len() == 1 {
        // Our own Update to a neighbour: add a Leave and an Update in another's name, and
        // one of our own naming made-up successors.
        let to = t.to;
        let rt = node.routing_table();
        let victim = rt
            .successors
            .iter()
            .chain(rt.predecessors.iter())
            .copied()
            .find(|v| *v != to);
        let txid = h.transaction_id ^ 0x5a5a_5a5a;
        let chord = |ids: &[Id]| -> Body {
            let w: Vec<Vec<u8>> = ids.iter().map(|i| i.to_bytes().to_vec()).collect();
            pb::UpdateReq {
                algorithm: node.algorithm().into(),
                overlay_specific: prost::Message::encode_to_vec(&pb::ChordUpdate {
                    uptime: 1,
                    r#type: pb::chord_update::Type::Neighbors as i32,
                    predecessors: w.clone(),
                    successors: w,
                    fingers: vec![],
                }),
            }
            .into()
        };
        let fakes: Vec<Id> = (1..=4).map(|k| Id(to.0.wrapping_add(k))).collect();
        let header = |via: Vec<Id>, tx: u64| OwnedHeader {
            via: via.into_iter().map(Destination::Node).collect(),
            ..OwnedHeader::new(overlay, tx, Destination::Node(to))
        };
        let mut made: Vec<Vec<u8>> = Vec::new();
        if let Some(v) = victim {
            let leave: Body = pb::LeaveReq {
                leaving_peer_id: v.to_bytes().to_vec(),
                overlay_specific: vec![],
            }
            .into();
            made.extend(signed(header(vec![v, me.node_id], txid), leave));
            made.extend(signed(header(vec![v, me.node_id], txid ^ 1), chord(&fakes)));
        }
        made.extend(signed(header(vec![me.node_id], txid ^ 2), chord(&fakes)));
        out.extend(
            made.into_iter()
                .map(|bytes| p2psip_algorithms::Transmit { to, bytes }),
        );
    }
    out
}

/// FNV-1a over bytes, for log digests.
fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Sim {
    pub fn new(seed: u64, core: CoreConfig, algorithm: AlgorithmParams, net: NetConfig) -> Self {
        Sim {
            seed,
            now: EPOCH,
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            slots: Vec::new(),
            index: HashMap::new(),
            net,
            core,
            algorithm,
            log: Vec::new(),
            log_enabled: false,
            groups_changed: false,
            done: HashMap::new(),
            completions: Vec::new(),
            stream_completions: false,
            events_processed: 0,
            joined_events: 0,
            joined: BTreeSet::new(),
            traffic: Traffic::default(),
            dropped_by_adversaries: 0,
            forgeries: 0,
            preloaded: VecDeque::new(),
            preload_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6964_656e_7469_7479),
        }
    }

    /// Makes node `i` an adversary that drops what it should forward (or honest again).
    pub fn set_dropper(&mut self, i: usize, drops: bool) {
        if let Some(s) = self.slots.get_mut(i) {
            s.drops_forwarded = drops;
        }
    }

    /// Whether node `i` drops what it should forward.
    pub fn is_dropper(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.drops_forwarded)
    }

    /// Makes node `i` a forger (or honest again).
    pub fn set_forger(&mut self, i: usize, forges: bool) {
        if let Some(s) = self.slots.get_mut(i) {
            s.forges = forges;
        }
    }

    pub fn is_forger(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.forges)
    }

    /// Messages forgers made up.
    pub fn forgeries(&self) -> u64 {
        self.forgeries
    }

    /// Messages adversaries dropped instead of forwarding.
    pub fn dropped_by_adversaries(&self) -> u64 {
        self.dropped_by_adversaries
    }

    /// The seed every random choice of this run derives from (the network model's too).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn now(&self) -> Time {
        self.now
    }

    /// Virtual time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        self.now.since(EPOCH)
    }

    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.slots[i].id
    }

    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    pub fn identity(&self, i: usize) -> &Identity {
        &self.slots[i].identity
    }

    pub fn node(&self, i: usize) -> Option<&OverlayNode> {
        self.slots[i].node.as_deref()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }

    /// A random number from the harness RNG (for tests choosing nodes and ids).
    pub fn random<T>(&mut self) -> T
    where
        rand::distr::StandardUniform: rand::distr::Distribution<T>,
    {
        self.rng.random()
    }

    pub fn random_below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// Makes the identities of the next `n` nodes now, from a stream of their own (seeded
    /// by the run's seed), so that their ids are known before the nodes exist; returns the
    /// ids. Nodes added after these get identities as usual.
    pub fn preload(&mut self, n: usize) -> Vec<NodeId> {
        let first = self.slots.len() + self.preloaded.len();
        let made: Vec<Identity> = (0..n)
            .map(|k| {
                let seed = self.preload_rng.random();
                Identity::from_seed(seed, format!("node{}", first + k))
            })
            .collect();
        let ids = made.iter().map(|x| x.node_id).collect();
        self.preloaded.extend(made);
        ids
    }

    /// Adds a node with a fresh self-signed identity (not started).
    pub fn add_node(&mut self) -> usize {
        let i = self.slots.len();
        let identity = match self.preloaded.pop_front() {
            Some(x) => x,
            None => Identity::from_seed(self.rng.random(), format!("node{i}")),
        };
        let id = identity.node_id;
        self.index.insert(id, i);
        self.slots.push(Slot {
            id,
            identity,
            node: None,
            disk: None,
            wake_at: None,
            group: 0,
            links: IndexSet::new(),
            drops_forwarded: false,
            forges: false,
        });
        i
    }

    fn make_node(&mut self, i: usize, store: Box<MemoryStore>) -> OverlayNode {
        let s = &self.slots[i];
        let topo = self.algorithm.build(s.id);
        let node_seed = self.rng.random();
        let mut node = OverlayNode::new(
            self.core.clone(),
            s.identity.clone(),
            topo,
            store,
            node_seed,
        );
        // A made-up host address per node (10.x.y.z:4700): the network model delivers by
        // node, but options that carry an address (DIRECT_RESPONSE) need one.
        let i = i as u32;
        node.set_candidates(vec![p2psip_proto::pb::Candidate {
            address: vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            port: 4700,
            r#type: p2psip_proto::pb::candidate::Type::Host as i32,
            priority: 1,
        }]);
        node
    }

    /// Starts node `i`, joining through `bootstrap` (empty: it forms a new overlay).
    pub fn start(&mut self, i: usize, bootstrap: &[NodeId]) {
        let mut node = self.make_node(i, Box::new(MemoryStore::new()));
        node.start(self.now, bootstrap);
        self.slots[i].node = Some(Box::new(node));
        self.after(i);
    }

    /// Starts node `i` already joined, from a snapshot of the members (warm start).
    pub fn start_with_members(&mut self, i: usize, members: &[NodeId]) {
        let mut node = self.make_node(i, Box::new(MemoryStore::new()));
        node.start_with_members(self.now, members);
        self.slots[i].node = Some(Box::new(node));
        self.after(i);
    }

    /// Removes node `i` for good (a departure in a churn model): no disk kept. Its open
    /// links fail at the other end like a crash's.
    pub fn remove(&mut self, i: usize) {
        self.crash(i);
        self.slots[i].disk = None;
    }

    /// Finished operations since the last call (with `stream_completions`).
    pub fn drain_completions(&mut self) -> Vec<(usize, Event)> {
        std::mem::take(&mut self.completions)
    }

    /// The joined peers right now (ground truth).
    pub fn joined_set(&self) -> &BTreeSet<NodeId> {
        &self.joined
    }

    /// The joined peer truly responsible for `target` under the algorithm's rule.
    pub fn responsible(&self, target: Id) -> Option<NodeId> {
        self.algorithm.responsible(&self.joined, target)
    }

    /// Algorithm-independent convergence check: every joined peer's replica set for its own
    /// id (itself and the peers it would copy its data to) is the true one. Returns how
    /// many peers are wrong, with the first few described.
    pub fn neighbourhood_errors(&self) -> (usize, Vec<String>) {
        let n = self.algorithm.replicas() + 1;
        let mut wrong = 0;
        let mut notes = Vec::new();
        for id in &self.joined {
            let Some(node) = self
                .index
                .get(id)
                .and_then(|i| self.slots[*i].node.as_ref())
            else {
                continue;
            };
            let want = self.algorithm.replica_set_truth(&self.joined, *id, n);
            let got = node.topology().replica_set(*id);
            if got != want {
                wrong += 1;
                if notes.len() < 5 {
                    notes.push(format!("{id}: replica set {got:?}, want {want:?}"));
                }
            }
        }
        (wrong, notes)
    }

    /// Starts node `i` as a client attached to the peer `admitting`: it routes nothing
    /// and stores nothing, and reaches the overlay only through that peer.
    pub fn start_client(&mut self, i: usize, admitting: NodeId) {
        let s = &self.slots[i];
        let topo = Box::new(p2psip_algorithms::client::ClientTopology::new(s.id));
        let node_seed = self.rng.random();
        let mut node = OverlayNode::new(
            self.core.clone(),
            s.identity.clone(),
            topo,
            Box::new(MemoryStore::new()),
            node_seed,
        );
        node.start(self.now, &[admitting]);
        self.slots[i].node = Some(Box::new(node));
        self.after(i);
        // The client dialled its admitting peer: both ends have the link (the peer
        // routes requests addressed to the client over it).
        if let Some(a) = self.index.get(&admitting).copied() {
            self.link(i, a);
        }
    }

    /// Opens a link between running nodes `i` and `j` (a connection one of them dialled):
    /// both cores are told it is up.
    pub fn link(&mut self, i: usize, j: usize) {
        for (x, y) in [(i, j), (j, i)] {
            let peer = self.slots[y].id;
            if let Some(n) = self.slots[x].node.as_mut() {
                n.handle_link(self.now, LinkEvent::Up(peer));
                self.slots[x].links.insert(y as u32);
                self.after(x);
            }
        }
    }

    /// Whether a link between nodes `i` and `j` is open (a message went over it, or
    /// [`Sim::link`] opened it).
    pub fn is_linked(&self, i: usize, j: usize) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| s.links.contains(&(j as u32)))
    }

    /// Mutable access to a node, for tests that set transport details.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut OverlayNode> {
        self.slots[i].node.as_deref_mut()
    }

    /// Delivers raw bytes to node `to` as if the node `from` had sent them (tests of
    /// malformed or forged input).
    pub fn inject(&mut self, to: usize, from: NodeId, bytes: Vec<u8>) {
        let at = self.now + Duration::from_millis(1);
        self.push(at, Ev::Deliver { to, from, bytes });
    }

    /// Crashes node `i`: it vanishes without a word. Its store is kept as on disk.
    pub fn crash(&mut self, i: usize) {
        self.joined.remove(&self.slots[i].id);
        if let Some(n) = self.slots[i].node.take() {
            let mut disk = MemoryStore::new();
            let s = n.storage();
            for (r, k) in s.keys() {
                if let Some(d) = s.get(r, k) {
                    p2psip_algorithms::storage::Storage::put(&mut disk, r, k, d);
                }
            }
            self.slots[i].disk = Some(Box::new(disk));
        }
        self.slots[i].wake_at = None;
        // Every open connection to it times out at the other end.
        let id = self.slots[i].id;
        if let Some(d) = self.net.link_failure_after {
            for j in std::mem::take(&mut self.slots[i].links) {
                let j = j as usize;
                self.slots[j].links.shift_remove(&(i as u32));
                if self.slots[j].node.is_some() {
                    self.push(self.now + d, Ev::LinkFailed { at: j, peer: id });
                }
            }
        }
    }

    /// Restarts a crashed node with the same identity and (with `keep_data`) its store.
    pub fn restart(&mut self, i: usize, keep_data: bool, bootstrap: &[NodeId]) {
        let store = match (keep_data, self.slots[i].disk.take()) {
            (true, Some(d)) => d,
            _ => Box::new(MemoryStore::new()),
        };
        let mut node = self.make_node(i, store);
        node.start(self.now, bootstrap);
        self.slots[i].node = Some(Box::new(node));
        self.after(i);
    }

    /// Starts a graceful leave of node `i`; it is removed once it reports `Left`.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(n) = self.slots[i].node.as_mut() {
            n.leave(now);
        }
        self.after(i);
    }

    /// Puts node `i` in partition group `g`; messages only pass within a group.
    pub fn set_group(&mut self, i: usize, g: u8) {
        self.slots[i].group = g;
        self.groups_changed = true;
    }

    /// After a partition: every open link that now crosses it fails at both ends, as the
    /// keep-alives of its connection would notice.
    fn cut_links(&mut self) {
        self.groups_changed = false;
        let Some(d) = self.net.link_failure_after else {
            return;
        };
        for i in 0..self.slots.len() {
            let g = self.slots[i].group;
            let links = std::mem::take(&mut self.slots[i].links);
            let (kept, cut): (IndexSet<u32>, IndexSet<u32>) = links
                .into_iter()
                .partition(|&j| self.slots[j as usize].group == g);
            self.slots[i].links = kept;
            let cut: Vec<usize> = cut.into_iter().map(|j| j as usize).collect();
            for j in cut {
                if self.slots[i].node.is_some() {
                    let peer = self.slots[j].id;
                    self.push(self.now + d, Ev::LinkFailed { at: i, peer });
                }
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        for s in &mut self.slots {
            s.group = 0;
        }
    }

    pub fn group(&self, i: usize) -> u8 {
        self.slots[i].group
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Collects what node `i` produced and schedules it.
    fn after(&mut self, i: usize) {
        let Some(mut node) = self.slots[i].node.take() else {
            return;
        };
        let from = node.id();
        let dropper = self.slots[i].drops_forwarded;
        let forger = self.slots[i].forges;
        let mut forged: Vec<p2psip_algorithms::Transmit> = Vec::new();
        loop {
            let t = match forged.pop() {
                Some(t) => t,
                None => match node.poll_transmit() {
                    Some(t) => {
                        if forger {
                            forged = forge(&self.slots[i].identity, &node, &t);
                            self.forgeries += forged.len() as u64;
                        }
                        t
                    }
                    None => break,
                },
            };
            if dropper && is_forwarded(from, &t.bytes) {
                self.dropped_by_adversaries += 1;
                continue;
            }
            self.traffic.count(&t.bytes);
            let to = self.index.get(&t.to).copied();
            let reachable = to.filter(|j| {
                self.slots[*j].node.is_some()
                    && self.slots[*j].group == self.slots[i].group
                    && !self.net.is_broken(self.seed, i, *j)
            });
            match reachable {
                Some(j) => {
                    if self.net.loss > 0.0 && self.rng.random::<f64>() < self.net.loss {
                        continue;
                    }
                    let at = self.now + self.net.latency(self.seed, i, j);
                    self.push(
                        at,
                        Ev::Deliver {
                            to: j,
                            from,
                            bytes: t.bytes,
                        },
                    );
                }
                None => {
                    let unacked = match (self.net.hop_ack_slack, to) {
                        (Some(slack), Some(j)) => {
                            let rtt = self.net.latency(self.seed, i, j) * 2;
                            Some(hop_ack_timeout(rtt, t.bytes.len(), slack))
                        }
                        _ => self.net.link_failure_after,
                    };
                    if let Some(d) = unacked {
                        self.push(self.now + d, Ev::LinkFailed { at: i, peer: t.to });
                    }
                }
            }
        }
        let mut left = false;
        while let Some(e) = node.poll_event() {
            match e {
                Event::Completed { op, .. } => {
                    if self.stream_completions {
                        self.completions.push((i, e));
                    } else {
                        self.done.insert((i, op), e);
                    }
                }
                Event::Joined => {
                    self.joined_events += 1;
                    if node.topology().is_peer() {
                        self.joined.insert(from);
                    }
                }
                Event::Left => left = true,
                // Drivers that model transports (the NAT experiment) act on these.
                Event::PeerCandidates { .. } if self.stream_completions => {
                    self.completions.push((i, e));
                }
                Event::JoinFailed(_)
                | Event::PeerCandidates { .. }
                | Event::ConfigUpdate { .. } => {}
            }
        }
        if left {
            // Gone for good: its last messages are already queued.
            self.slots[i].wake_at = None;
            self.joined.remove(&from);
            return;
        }
        if let Some(t) = node.poll_timeout() {
            if self.slots[i].wake_at.is_none_or(|w| t < w) {
                self.slots[i].wake_at = Some(t);
                self.push(t, Ev::Wake(i));
            }
        }
        self.slots[i].node = Some(node);
    }

    /// Processes one event; returns false when the queue is empty.
    fn step(&mut self) -> bool {
        if self.groups_changed {
            self.cut_links();
        }
        let Some(Queued { at: t, ev, .. }) = self.queue.pop() else {
            return false;
        };
        self.now = t;
        self.events_processed += 1;
        match ev {
            Ev::Deliver { to, from, bytes } => {
                if self.log_enabled {
                    self.log.push(LogEntry {
                        time: t.0,
                        to: to as u32,
                        kind: 0,
                        len: bytes.len() as u32,
                        digest: digest(&bytes),
                    });
                }
                if let Some(n) = self.slots[to].node.as_mut() {
                    n.handle_message(t, from, &bytes);
                    if let Some(f) = self.index.get(&from).copied() {
                        self.slots[to].links.insert(f as u32);
                        self.slots[f].links.insert(to as u32);
                    }
                    self.after(to);
                }
            }
            Ev::Wake(i) => {
                if self.slots[i].wake_at == Some(t) {
                    self.slots[i].wake_at = None;
                }
                if let Some(n) = self.slots[i].node.as_mut() {
                    if n.poll_timeout().is_some_and(|w| w <= t) {
                        n.handle_timeout(t);
                    }
                    self.after(i);
                }
            }
            Ev::LinkFailed { at, peer } => {
                if self.log_enabled {
                    self.log.push(LogEntry {
                        time: t.0,
                        to: at as u32,
                        kind: 1,
                        len: 0,
                        digest: peer.0 as u64,
                    });
                }
                if let Some(n) = self.slots[at].node.as_mut() {
                    n.handle_link(t, LinkEvent::Failed(peer));
                    self.after(at);
                }
            }
        }
        true
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(t) = self.queue.peek().map(|q| q.at) {
            if t > until {
                break;
            }
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until operation `op` of node `i` completes, at most `limit` of virtual time.
    pub fn wait_op(&mut self, i: usize, op: OpId, limit: Duration) -> Option<Event> {
        let until = self.now + limit;
        loop {
            if let Some(e) = self.done.remove(&(i, op)) {
                return Some(e);
            }
            match self.queue.peek().map(|q| q.at) {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => return None,
            }
        }
    }

    /// Takes the completion of an operation, if it has completed.
    pub fn take_done(&mut self, i: usize, op: OpId) -> Option<Event> {
        self.done.remove(&(i, op))
    }

    /// Runs an operation on node `i` and waits for it (up to 60 s of virtual time).
    pub fn op(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId,
    ) -> Option<Event> {
        let now = self.now;
        let op = f(self.slots[i].node.as_mut()?, now);
        self.after(i);
        self.wait_op(i, op, Duration::from_secs(60))
    }

    /// Starts an operation on node `i` without waiting.
    pub fn start_op(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId,
    ) -> Option<OpId> {
        let now = self.now;
        let op = f(self.slots[i].node.as_mut()?, now);
        self.after(i);
        Some(op)
    }

    // ---- ground truth -----------------------------------------------------------------

    /// Live peers (running and joined; clients are not part of the ring), sorted by id.
    pub fn live_ring(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|s| {
                s.node
                    .as_ref()
                    .is_some_and(|n| n.is_joined() && n.topology().is_peer())
            })
            .map(|s| s.id)
            .collect();
        v.sort();
        v
    }

    /// Live nodes of one partition group, sorted by id.
    pub fn live_ring_of(&self, g: u8) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|s| s.group == g && s.node.as_ref().is_some_and(|n| n.is_joined()))
            .map(|s| s.id)
            .collect();
        v.sort();
        v
    }

    /// The node truly responsible for `target` in `ring` (sorted ids): its successor.
    pub fn responsible_in(ring: &[NodeId], target: Id) -> Option<NodeId> {
        if ring.is_empty() {
            return None;
        }
        let i = ring.partition_point(|x| *x < target);
        Some(ring[i % ring.len()])
    }

    /// The `n` nodes that truly should hold copies of `target` in `ring`.
    pub fn replica_set_in(ring: &[NodeId], target: Id, n: usize) -> Vec<NodeId> {
        if ring.is_empty() {
            return Vec::new();
        }
        let i = ring.partition_point(|x| *x < target);
        (0..n.min(ring.len()))
            .map(|k| ring[(i + k) % ring.len()])
            .collect()
    }

    /// Checks that every node of `ring` has the true successor and predecessor. Returns
    /// how many nodes are wrong, with the first few described.
    pub fn ring_errors(&self, ring: &[NodeId]) -> (usize, Vec<String>) {
        let n = ring.len();
        let mut wrong = 0;
        let mut notes = Vec::new();
        for (k, id) in ring.iter().enumerate() {
            let Some(i) = self.index_of(*id) else {
                continue;
            };
            let Some(node) = self.slots[i].node.as_ref() else {
                continue;
            };
            let rt = node.routing_table();
            let succ = ring[(k + 1) % n];
            let pred = ring[(k + n - 1) % n];
            let ok_s = n == 1 || rt.successors.first() == Some(&succ);
            let ok_p = n == 1 || rt.predecessors.first() == Some(&pred);
            if !(ok_s && ok_p) {
                wrong += 1;
                if notes.len() < 5 {
                    notes.push(format!(
                        "{id}: succ {:?} (want {succ}), pred {:?} (want {pred})",
                        rt.successors.first(),
                        rt.predecessors.first()
                    ));
                }
            }
        }
        (wrong, notes)
    }

    /// Whether `target` falls in node `id`'s true range in `ring`.
    pub fn owns(ring: &[NodeId], id: NodeId, target: Id) -> bool {
        let Some(k) = ring.iter().position(|x| *x == id) else {
            return false;
        };
        let pred = ring[(k + ring.len() - 1) % ring.len()];
        ring.len() == 1 || in_open_closed(target, pred, id)
    }

    pub fn joined_events(&self) -> u64 {
        self.joined_events
    }
}
