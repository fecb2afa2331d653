//! NATs in the simulator: a model of home routers (mappings and filtering, RFC 4787
//! terms) and an experiment that puts a share of the nodes behind them, so that the
//! core's reachability decisions (`p2psip_algorithms::reach`: the NAT verdict from
//! peers' reports, candidates, direct or relayed connections) run at scale on the same
//! code the daemon drives.
//!
//! The model, per node behind a NAT (one router each, every one with the same private
//! address behind it, as home networks have):
//! - **cone**: endpoint-independent mapping (one public port for every destination) with
//!   address-and-port-dependent filtering: a packet gets in only from an address and
//!   port the node has sent to. A hole punch from both sides gets through.
//! - **symmetric**: address-and-port-dependent mapping (a new public port per
//!   destination) with the same filtering: the port a peer saw is not the one a third
//!   node would be answered from, so punching fails and only the relay reaches it.
//!
//! Mappings do not expire in the model (every run is far shorter than the keep-alive
//! intervals that hold them open in the daemon).

use crate::harness::Sim;
use crate::rng_hash;
use crate::scenario::Scenario;
use p2psip_algorithms::admission::{Admission, Located};
use p2psip_algorithms::bootstrap::Bootstrap;
use p2psip_algorithms::links::{attach_address, Attached, Links};
use p2psip_algorithms::reach::{reach_of, FirstTry, NatMode, Reach, Reachability, Start};
use p2psip_algorithms::{Event, NodeId, OpId, Time};
use p2psip_proto::Body;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The application the experiment's connections are for (SIP's port, as a label).
pub const APP: u32 = 5060;
/// The port every node listens on, behind its NAT or not.
const PORT: u16 = 4700;

/// What sits between a node and the Internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum NatKind {
    /// Nothing: reachable at its own address.
    Open,
    Cone,
    Symmetric,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
        }
    }
}

#[derive(Debug)]
struct Router {
    public: Ipv4Addr,
    symmetric: bool,
    /// The public port of each destination (a cone router uses one port for all).
    by_dest: HashMap<SocketAddr, u16>,
    ports: HashSet<u16>,
    next_port: u16,
    /// Remote addresses the node has sent to: the only ones let in.
    allowed: HashSet<SocketAddr>,
}

impl Router {
    fn map(&mut self, to: SocketAddr) -> u16 {
        if let Some(p) = self.by_dest.get(&to) {
            return *p;
        }
        let port = match (self.symmetric, self.ports.iter().next()) {
            (false, Some(p)) => *p,
            _ => {
                let p = self.next_port;
                self.next_port = self.next_port.checked_add(1).unwrap_or(50_000);
                p
            }
        };
        self.by_dest.insert(to, port);
        self.ports.insert(port);
        port
    }
}

/// The network's addressing and its NAT routers.
#[derive(Debug)]
pub struct NatNet {
    kinds: Vec<NatKind>,
    routers: HashMap<usize, Router>,
    by_public: HashMap<IpAddr, usize>,
    open_at: HashMap<SocketAddr, usize>,
}

impl NatNet {
    /// `n` nodes, a fraction `behind` of them behind NATs of which a share `symmetric`
    /// maps each destination anew; which ones is fixed by the seed.
    pub fn new(seed: u64, n: usize, behind: f64, symmetric: f64) -> NatNet {
        let unit = |i: usize, salt: u64| {
            (rng_hash(seed ^ salt ^ ((i as u64) << 20)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut net = NatNet {
            kinds: Vec::with_capacity(n),
            routers: HashMap::new(),
            by_public: HashMap::new(),
            open_at: HashMap::new(),
        };
        for i in 0..n {
            net.push(if unit(i, 0x6e61_7401) >= behind {
                NatKind::Open
            } else if unit(i, 0x6e61_7402) < symmetric {
                NatKind::Symmetric
            } else {
                NatKind::Cone
            });
        }
        net
    }

    /// Adds the next node, behind a router of its own unless `kind` is open.
    fn push(&mut self, kind: NatKind) {
        let i = self.kinds.len();
        self.kinds.push(kind);
        if kind == NatKind::Open {
            self.open_at.insert(self.host(i), i);
            return;
        }
        let public = v4(198, i);
        self.by_public.insert(IpAddr::V4(public), i);
        self.routers.insert(
            i,
            Router {
                public,
                symmetric: kind == NatKind::Symmetric,
                by_dest: HashMap::new(),
                ports: HashSet::new(),
                next_port: 40_000u16.saturating_add((i % 1000) as u16),
                allowed: HashSet::new(),
            },
        );
    }

    pub fn kind(&self, i: usize) -> NatKind {
        self.kinds.get(i).copied().unwrap_or(NatKind::Open)
    }

    /// The address node `i` has on its own interface: public for an open node, the same
    /// private address for every node behind a NAT.
    pub fn host(&self, i: usize) -> SocketAddr {
        match self.kind(i) {
            NatKind::Open => SocketAddr::new(IpAddr::V4(v4(20, i)), PORT),
            _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), PORT),
        }
    }

    /// The open node at `addr`, if any.
    pub fn open_node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.open_at.get(&addr).copied()
    }

    /// Node `from` sends a packet to `to`. Returns the node that receives it and the
    /// source address it sees, or None when no node gets it (no route to a private
    /// address, no mapping at that port, or filtered).
    pub fn send(&mut self, from: usize, to: SocketAddr) -> Option<(usize, SocketAddr)> {
        let src = match self.routers.get_mut(&from) {
            None => self.host(from),
            Some(r) => {
                r.allowed.insert(to);
                let port = r.map(to);
                SocketAddr::new(IpAddr::V4(r.public), port)
            }
        };
        if let Some(j) = self.open_node_at(to) {
            return Some((j, src));
        }
        let j = *self.by_public.get(&to.ip())?;
        let r = self.routers.get(&j)?;
        (r.ports.contains(&to.port()) && r.allowed.contains(&src)).then_some((j, src))
    }

    /// A connection from `from` to `to`: the first packet gets to `expect` and its answer
    /// gets back.
    pub fn connects(&mut self, from: usize, to: SocketAddr, expect: usize) -> bool {
        match self.send(from, to) {
            Some((j, src)) if j == expect => self.send(j, src).map(|(back, _)| back) == Some(from),
            _ => false,
        }
    }
}

fn v4(first: u8, i: usize) -> Ipv4Addr {
    let i = i as u32 + 1;
    Ipv4Addr::new(first, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// How the connections between one kind of caller and one kind of callee went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathRow {
    pub attempted: u64,
    /// To an open node.
    pub direct: u64,
    /// To a node behind a NAT, directly (its NAT opened by its punch).
    pub punched: u64,
    pub relayed: u64,
    /// A direct attempt failed within the punch timeout (then the relay was tried).
    pub punch_failed: u64,
    pub failed: u64,
    #[serde(skip)]
    pub setup_ms: Vec<f64>,
    pub setup_median_ms: f64,
}

/// What the NAT experiment measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NatReport {
    pub nodes: usize,
    /// Nodes per NAT kind.
    pub kinds: BTreeMap<String, usize>,
    /// (actual kind, verdict: "public", "nat", "symmetric-nat", "unknown") counts.
    pub verdicts: BTreeMap<String, usize>,
    /// Nodes behind a NAT that route (should be none).
    pub natted_routing: usize,
    /// Open nodes that do not route (should be none).
    pub open_not_routing: usize,
    /// Nodes that run as clients.
    pub clients: usize,
    /// Clients admitted, at the end of the admission phase, by the peer responsible for
    /// their Node-ID, and confirmed by their own lookup.
    pub clients_located: usize,
    /// Clients that moved from their bootstrap peer to another (Attach, then a
    /// connection through their NAT).
    pub moves: u64,
    /// Connections by "caller -> callee" kinds.
    pub paths: BTreeMap<String, PathRow>,
}

impl NatReport {
    pub fn row(&self, caller: NatKind, callee: NatKind) -> PathRow {
        self.paths
            .get(&pair(caller, callee))
            .cloned()
            .unwrap_or_default()
    }

    /// The connections table (markdown).
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| caller -> callee | attempts | direct | punched | relayed | punch failed | failed | setup median (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (k, r) in &self.paths {
            s.push_str(&format!(
                "| {k} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
                r.attempted,
                r.direct,
                r.punched,
                r.relayed,
                r.punch_failed,
                r.failed,
                r.setup_median_ms
            ));
        }
        s
    }

    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        format!(
            "{} nodes ({}); verdicts (kind as found): {}; behind a NAT and routing: {}; open and not routing: {}; clients admitted by their responsible peer: {} of {} ({} moved from their bootstrap peer)",
            self.nodes,
            kinds.join(", "),
            verdicts.join(", "),
            self.natted_routing,
            self.open_not_routing,
            self.clients_located,
            self.clients,
            self.moves
        )
    }
}

fn pair(a: NatKind, b: NatKind) -> String {
    format!("{} -> {}", a.name(), b.name())
}

/// The NAT experiment's settings (`[nat]` in a scenario).
struct Params {
    behind: f64,
    symmetric: f64,
    connections: usize,
    punch_timeout: Duration,
}

/// Runs the NAT experiment of scenario `sc` (its `[nat]` table): every node dials two
/// open bootstrap peers, which report the address they see it at; its [`Reachability`]
/// decides whether it routes (the overlay is formed by those that do) and what
/// candidates it gives. The others join as clients through their first bootstrap peer
/// and, as [`Admission`] decides, look up the peer responsible for their Node-ID and move
/// there (it is their relay). Then `connections` AppAttach exchanges between random
/// nodes: the callee punches towards the caller's candidates when it is behind a NAT, the
/// caller takes [`Reach::first_try`] and the model decides whether the packets get
/// through.
pub fn run(sc: &Scenario) -> Result<NatReport, String> {
    let r = sc.resolve()?;
    let p = Params {
        behind: sc.nat.behind,
        symmetric: sc.nat.symmetric,
        connections: sc.nat.connections,
        punch_timeout: r.punch_timeout,
    };
    let n = sc.nodes;
    let mut sim = Sim::new(sc.seed, r.core.clone(), r.algorithm.clone(), r.net.clone());
    sim.stream_completions = true;
    for _ in 0..n {
        sim.add_node();
    }
    let net = NatNet::new(sc.seed, n, p.behind, p.symmetric);
    let open: Vec<usize> = (0..n).filter(|i| net.kind(*i) == NatKind::Open).collect();
    if open.len() < 3 {
        return Err("nat: at least three nodes must be open (bootstrap peers)".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x6e61_7400);
    let mut x = Exp {
        net,
        reach: Vec::with_capacity(n),
        admission: vec![Admission::default(); n],
        p,
        report: NatReport {
            nodes: n,
            ..NatReport::default()
        },
        connecting: HashMap::new(),
        locating: HashSet::new(),
        links: (0..n).map(|_| Links::default()).collect(),
    };
    // Reachability: the first open node forms the overlay (nat.mode = "peer", as a node
    // without bootstrap peers does); every other dials two open bootstrap peers.
    let after_wait = Time(1) + p2psip_algorithms::reach::OBSERVE_WAIT;
    let mut boots: Vec<Bootstrap> = Vec::with_capacity(n);
    for i in 0..n {
        let mode = if i == open[0] {
            NatMode::Peer
        } else {
            NatMode::Auto
        };
        let mut r = Reachability::new(mode, Some(x.net.host(i)), true);
        let mut boot = Bootstrap::default();
        if i != open[0] {
            let mut picked = Vec::new();
            while picked.len() < 2 {
                let b = open[rng.random_range(0..open.len())];
                if b != i && !picked.contains(&b) {
                    picked.push(b);
                }
            }
            boot = Bootstrap::new(picked.iter().map(|b| x.net.host(*b)).collect(), None);
            for b in picked {
                let to = x.net.host(b);
                if let Some((_, seen)) = x.net.send(i, to) {
                    boot.link_up(sim.id(b), to, true);
                    r.on_observed(sim.id(b), seen, false);
                }
            }
        }
        if r.start(Time(1)) == Start::Wait {
            r.start(after_wait);
        }
        let kind = x.net.kind(i);
        let rep = &mut x.report;
        *rep.kinds.entry(kind.name().into()).or_default() += 1;
        *rep.verdicts
            .entry(format!("{} as {}", kind.name(), r.nat_state()))
            .or_default() += 1;
        match (kind, r.routes()) {
            (NatKind::Open, false) => rep.open_not_routing += 1,
            (NatKind::Cone | NatKind::Symmetric, true) => rep.natted_routing += 1,
            _ => {}
        }
        x.reach.push(r);
        boots.push(boot);
    }
    // The overlay of the nodes that route; the others join as clients through their
    // first bootstrap peer.
    let mut members: Vec<NodeId> = (0..n)
        .filter(|i| x.reach[*i].routes())
        .map(|i| sim.id(i))
        .collect();
    members.sort();
    for i in (0..n).filter(|i| x.reach[*i].routes()) {
        sim.start_with_members(i, &members);
        x.set_candidates(&mut sim, i);
    }
    sim.run_for(Duration::from_millis(1));
    for i in (0..n).filter(|i| !x.reach[*i].routes()) {
        // Admitted by the first bootstrap peer that came up, as the daemon is.
        let Some(boot) = boots[i].ids().first().copied() else {
            return Err(format!("nat: node {i} reached no bootstrap peer"));
        };
        x.admission[i].start(Some(boot));
        sim.start_client(i, boot);
        x.set_candidates(&mut sim, i);
        x.report.clients += 1;
    }
    // Clients find their responsible peers and move there.
    for _ in 0..300 {
        x.admission_round(&mut sim);
        sim.run_for(Duration::from_millis(100));
        x.handle(&mut sim);
    }
    x.report.clients_located = (0..n)
        .filter(|i| !x.reach[*i].routes() && x.admission[*i].located())
        .filter(|i| x.admission[*i].admitting() == sim.responsible(sim.id(*i)))
        .count();

    // Connections between random nodes, 20 ms apart.
    for _ in 0..x.p.connections {
        let a = rng.random_range(0..n);
        let b = rng.random_range(0..n);
        if a != b && sim.is_up(a) && sim.is_up(b) {
            let id = sim.id(b);
            let started = sim.now();
            if let Some(op) = sim.start_op(a, |nd, t| nd.app_attach(t, id, APP)) {
                x.connecting.insert((a, op), (b, started));
                x.row(a, b).attempted += 1;
            }
        }
        sim.run_for(Duration::from_millis(20));
        x.handle(&mut sim);
    }
    sim.run_for(Duration::from_secs(60));
    x.handle(&mut sim);
    // Never answered: failed.
    let unanswered: Vec<(usize, usize)> = x
        .connecting
        .iter()
        .map(|((a, _), (b, _))| (*a, *b))
        .collect();
    for (a, b) in unanswered {
        x.row(a, b).failed += 1;
    }
    let mut report = x.report;
    for row in report.paths.values_mut() {
        row.setup_ms.sort_by(f64::total_cmp);
        row.setup_median_ms = row
            .setup_ms
            .get(row.setup_ms.len() / 2)
            .copied()
            .unwrap_or(0.0);
    }
    Ok(report)
}

/// The experiment's state beside the simulator: the NAT model, each node's core
/// decisions, and the operations under way.
struct Exp {
    net: NatNet,
    reach: Vec<Reachability>,
    admission: Vec<Admission>,
    p: Params,
    report: NatReport,
    /// AppAttach (caller, op) -> (callee, started).
    connecting: HashMap<(usize, OpId), (usize, Time)>,
    /// Lookups of the responsible peer, by (client, op).
    locating: HashSet<(usize, OpId)>,
    /// Each node's Attaches under way and the addresses they gave (a client's move to
    /// its responsible peer), as the daemon keeps them.
    links: Vec<Links>,
}

impl Exp {
    fn row(&mut self, a: usize, b: usize) -> &mut PathRow {
        let k = pair(self.net.kind(a), self.net.kind(b));
        self.report.paths.entry(k).or_default()
    }

    /// Gives node `i`'s core the candidates its [`Reachability`] chooses (a client's
    /// relay: its admitting peer).
    fn set_candidates(&self, sim: &mut Sim, i: usize) {
        let relay = self.admission[i]
            .admitting()
            .and_then(|p| sim.index_of(p))
            .map(|p| self.net.host(p));
        let c = self.reach[i].candidates(relay);
        if let Some(node) = sim.node_mut(i) {
            node.set_candidates(c.clone());
            node.set_app_candidates(APP, c);
        }
    }

    /// Starts the lookups of the responsible peer that are due.
    fn admission_round(&mut self, sim: &mut Sim) {
        let now = sim.now();
        for i in 0..self.reach.len() {
            let joined = sim.node(i).is_some_and(|n| n.is_joined());
            if self.reach[i].routes() || !joined || !self.admission[i].locate_due(now) {
                continue;
            }
            let me = sim.id(i);
            if let Some(op) = sim.start_op(i, |n, t| n.lookup(t, me)) {
                self.admission[i].locating(op);
                self.locating.insert((i, op));
            }
        }
    }

    fn handle(&mut self, sim: &mut Sim) {
        for (i, e) in sim.drain_completions() {
            match e {
                // A node behind a NAT opens it towards a requester before it answers.
                Event::PeerCandidates { candidates, .. } if self.reach[i].punches_back() => {
                    for a in reach_of(&candidates).direct {
                        let _ = self.net.send(i, a);
                    }
                }
                Event::Completed {
                    op,
                    outcome,
                    responder,
                    ..
                } => {
                    if self.locating.remove(&(i, op)) {
                        self.on_located(sim, i, responder.filter(|_| outcome.is_ok()));
                    } else if let Some(attached) =
                        self.links[i].attach_done(op, attach_address(&outcome))
                    {
                        self.on_moved(sim, i, attached);
                    } else if let Some((b, started)) = self.connecting.remove(&(i, op)) {
                        let waited = sim.now().since(started);
                        match outcome {
                            Ok(Body::AppAttachAns(ans)) => {
                                self.connect(sim, i, b, &reach_of(&ans.candidates), waited)
                            }
                            _ => self.row(i, b).failed += 1,
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Client `i` learned which peer is responsible for it.
    fn on_located(&mut self, sim: &mut Sim, i: usize, responder: Option<NodeId>) {
        let me = sim.id(i);
        let linked = |n: NodeId| sim.index_of(n).is_some_and(|j| sim.is_linked(i, j));
        match self.admission[i].on_located(me, responder, linked) {
            Located::Readmit(r) => self.readmit(sim, i, r),
            Located::Move { to, via } => {
                if let Some(op) = sim.start_op(i, |n, t| n.attach(t, to, Some(via))) {
                    self.links[i].attaching(op, to);
                }
            }
            Located::Confirmed | Located::Nothing => {}
        }
    }

    /// Client `i`'s Attach to its responsible peer answered: it connects to the address
    /// given (through its NAT) and is admitted there, or the move failed.
    fn on_moved(&mut self, sim: &mut Sim, i: usize, attached: Attached) {
        match attached {
            Attached::Connect { node, addr } => {
                let reached = sim
                    .index_of(node)
                    .is_some_and(|j| self.net.connects(i, addr, j));
                if reached {
                    self.report.moves += 1;
                    self.readmit(sim, i, node);
                } else {
                    self.links[i].connect_failed(node);
                    self.admission[i].move_failed(node);
                }
            }
            Attached::Failed(node) => self.admission[i].move_failed(node),
        }
    }

    fn readmit(&mut self, sim: &mut Sim, i: usize, peer: NodeId) {
        if let Some(j) = sim.index_of(peer) {
            sim.link(i, j);
        }
        let now = sim.now();
        if let Some(n) = sim.node_mut(i) {
            n.readmit(now, peer);
        }
        self.admission[i].readmit(peer, now);
        self.set_candidates(sim, i);
    }

    /// Node `a` connects to `b`, which its AppAttach answer says is reached as `reach`.
    fn connect(&mut self, sim: &Sim, a: usize, b: usize, reach: &Reach, waited: Duration) {
        let rtt = |x: usize, y: usize| {
            sim.net.latency(sim.seed(), x, y) + sim.net.latency(sim.seed(), y, x)
        };
        let mut spent = waited;
        match reach.first_try(self.reach[a].symmetric(), false) {
            FirstTry::Direct => {
                let ok = reach
                    .direct
                    .iter()
                    .any(|addr| self.net.connects(a, *addr, b));
                if ok {
                    let open = self.net.kind(b) == NatKind::Open;
                    let row = self.row(a, b);
                    if open {
                        row.direct += 1;
                    } else {
                        row.punched += 1;
                    }
                    row.setup_ms
                        .push((spent + rtt(a, b)).as_secs_f64() * 1000.0);
                    return;
                }
                self.row(a, b).punch_failed += 1;
                spent += self.p.punch_timeout;
                match reach.relay {
                    Some(r) => self.relayed(sim, a, b, r, spent, rtt),
                    None => self.row(a, b).failed += 1,
                }
            }
            FirstTry::Relay(r) => self.relayed(sim, a, b, r, spent, rtt),
            FirstTry::Unreachable => self.row(a, b).failed += 1,
        }
    }

    fn relayed(
        &mut self,
        sim: &Sim,
        a: usize,
        b: usize,
        relay: SocketAddr,
        spent: Duration,
        rtt: impl Fn(usize, usize) -> Duration,
    ) {
        // The relay is an open peer; the node it relays for keeps a link to it.
        let via = self
            .net
            .open_node_at(relay)
            .filter(|r| sim.is_up(*r) && sim.is_linked(*r, b) && self.net.connects(a, relay, *r));
        let row_ms = via.map(|r| (spent + rtt(a, r) + rtt(r, b)).as_secs_f64() * 1000.0);
        let row = self.row(a, b);
        match row_ms {
            Some(ms) => {
                row.relayed += 1;
                row.setup_ms.push(ms);
            }
            None => row.failed += 1,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A network with nodes of the given kinds, in order.
    fn net_of(kinds: &[NatKind]) -> NatNet {
        let mut net = NatNet::new(1, 0, 0.0, 0.0);
        for k in kinds {
            net.push(*k);
        }
        net
    }

    #[test]
    fn a_cone_nat_keeps_one_port_and_lets_in_only_whom_it_sent_to() {
        use NatKind::*;
        let mut net = net_of(&[Open, Open, Cone]);
        let (_, seen0) = net.send(2, net.host(0)).unwrap();
        let (_, seen1) = net.send(2, net.host(1)).unwrap();
        assert_eq!(seen0, seen1, "one mapping for every destination");
        assert_ne!(seen0, net.host(2));
        // Node 0, which it sent to, gets in; a stranger does not, not even at that port.
        assert_eq!(net.send(0, seen0).map(|x| x.0), Some(2));
        let mut net2 = net_of(&[Open, Open, Cone, Open]);
        let (_, seen) = net2.send(2, net2.host(0)).unwrap();
        assert_eq!(net2.send(3, seen), None);
        // The private address behind a NAT is reached by nobody outside.
        assert_eq!(net2.send(0, net2.host(2)), None);
    }

    #[test]
    fn punching_opens_a_cone_nat_but_not_a_symmetric_one() {
        use NatKind::*;
        // Two cone nodes learn their reflexive addresses from node 0, then 2 punches
        // towards 1's and 1 connects: through.
        let mut net = net_of(&[Open, Cone, Cone, Symmetric, Open]);
        let (_, r1) = net.send(1, net.host(0)).unwrap();
        let (_, r2) = net.send(2, net.host(0)).unwrap();
        assert!(
            !net.connects(1, r2, 2),
            "without a punch the callee's NAT drops it"
        );
        let _ = net.send(2, r1);
        assert!(net.connects(1, r2, 2), "after the callee's punch");
        // A symmetric node's port towards 0 is not the one a third node is answered from.
        let (_, r3) = net.send(3, net.host(0)).unwrap();
        let _ = net.send(3, r1);
        assert!(
            !net.connects(1, r3, 3),
            "the reflexive port seen by 0 leads nowhere"
        );
        let (_, r3b) = net.send(3, net.host(4)).unwrap();
        assert_eq!(r3.ip(), r3b.ip());
        assert_ne!(r3, r3b, "a new port per destination");
    }
}
