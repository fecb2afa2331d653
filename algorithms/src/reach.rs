//! Reachability (proto/SPEC.md 2.8 and 3): the decisions a node makes about where it can
//! be reached and how it reaches others, as pure state. The daemon's runtime and the
//! simulator's NAT model drive the same code:
//!
//! - [`Reachability`]: from the addresses peers report seeing this node at, whether it is
//!   behind a NAT, whether that NAT maps each destination anew ("symmetric"), whether a
//!   peer in auto mode stops routing, and the candidates it gives in Attach and AppAttach.
//! - [`reach_of`]: what another node's candidates say about reaching it ([`Reach`]).
//! - [`Reach::first_try`]: a direct connection (punched when the node is behind a NAT)
//!   or its relay.

use crate::id::NodeId;
use crate::time::Time;
use p2psip_proto::limits::MAX_CANDIDATES;
use p2psip_proto::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Peers whose reports of this node's address are kept (the first ones; later ones are
/// ignored, so a stream of new connectors cannot grow the table).
pub const REPORTERS_MAX: usize = 8;

/// How long a peer in auto mode waits for its bootstrap peers to report its address
/// before it assumes it is reachable.
pub const OBSERVE_WAIT: Duration = Duration::from_secs(2);

/// How a node decides whether it routes (`nat.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// Route unless two peers see this node at another address than its own.
    Auto,
    /// Route whatever peers report.
    Peer,
    /// Never route: a client of one admitting peer.
    Client,
}

/// What a report of this node's address changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The reporter table is full and this reporter is not in it: nothing changed.
    Ignored,
    /// One peer sees this node at another address; a peer in auto mode waits for a
    /// second, distinct reporter before it concludes anything (one peer may lie).
    NeedsSecondReport,
    /// The node's reachability is known (see the fields for what changed).
    Known(Change),
}

/// The consequences of a report, for the driver to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Whether it is behind a NAT now.
    pub behind_nat: bool,
    /// The reflexive address or the NAT verdict differ from before.
    pub changed: bool,
    /// Two peers saw two ports of one address: the NAT maps each destination anew.
    pub became_symmetric: bool,
    /// A peer in auto mode, not started yet, found itself behind a NAT: it runs as a
    /// client (routing nothing) from now on.
    pub stop_routing: bool,
    /// A peer in auto mode found itself behind a NAT after it began routing (too late to
    /// change; the operator should set `nat.mode = "client"`).
    pub late: bool,
}

/// Whether a node waiting for its reachability starts its core now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not yet: a peer in auto mode waits for reports until [`OBSERVE_WAIT`] is over.
    Wait,
    /// Start.
    Now,
    /// Start; no peer reported this node's address in time, so it is taken as reachable.
    AssumingReachable,
}

/// A node's reachability, from the reports of the peers it dialled.
#[derive(Debug, Clone)]
pub struct Reachability {
    mode: NatMode,
    host: Option<SocketAddr>,
    routes: bool,
    reports: BTreeMap<NodeId, SocketAddr>,
    reflexive: Option<SocketAddr>,
    behind_nat: Option<bool>,
    symmetric: bool,
    observe_until: Option<Time>,
}

impl Reachability {
    /// A node at `host` (its own address, if it knows one) that routes when `routes`.
    pub fn new(mode: NatMode, host: Option<SocketAddr>, routes: bool) -> Self {
        Reachability {
            mode,
            host,
            routes: routes && mode != NatMode::Client,
            reports: BTreeMap::new(),
            reflexive: None,
            behind_nat: None,
            symmetric: false,
            observe_until: None,
        }
    }

    /// Sets the address this node advertises as its host candidate.
    pub fn set_host(&mut self, host: Option<SocketAddr>) {
        self.host = host;
    }

    pub fn mode(&self) -> NatMode {
        self.mode
    }
    pub fn host(&self) -> Option<SocketAddr> {
        self.host
    }
    /// Whether this node routes (a peer) or is a client.
    pub fn routes(&self) -> bool {
        self.routes
    }
    /// The address the last reporting peer sees this node at.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }
    /// Whether a NAT sits between this node and the peers (None: not known yet).
    pub fn behind_nat(&self) -> Option<bool> {
        self.behind_nat
    }
    /// Whether its NAT maps each destination anew: only its relay reaches it.
    pub fn symmetric(&self) -> bool {
        self.symmetric
    }
    /// The node's NAT state as diagnostics name it (proto/SPEC.md 4.1).
    pub fn nat_state(&self) -> &'static str {
        match (self.behind_nat, self.symmetric) {
            (_, true) => "symmetric-nat",
            (Some(true), false) => "nat",
            (Some(false), false) => "public",
            (None, false) => "unknown",
        }
    }
    /// Whether this node opens its NAT towards a node that asks to connect (Attach,
    /// AppAttach) before it answers, so that the requester's connection finds the way in.
    pub fn punches_back(&self) -> bool {
        self.behind_nat == Some(true)
    }

    /// The peer `by`, which this node dialled, sees it at `addr`. One report that it is at
    /// its own address says it is reachable; that a peer in auto mode is behind a NAT
    /// takes the reports of two distinct peers (a client takes its admitting peer's word:
    /// it routes for nobody anyway); two that see it at two ports of one address mean a
    /// symmetric NAT. `started`: the node already routes.
    pub fn on_observed(&mut self, by: NodeId, addr: SocketAddr, started: bool) -> Observed {
        if self.reports.len() >= REPORTERS_MAX && !self.reports.contains_key(&by) {
            return Observed::Ignored;
        }
        self.reports.insert(by, addr);
        let elsewhere: Vec<SocketAddr> = self
            .reports
            .values()
            .copied()
            .filter(|a| Some(*a) != self.host)
            .collect();
        let needed = if self.routes && self.mode == NatMode::Auto {
            2
        } else {
            1
        };
        let behind = match (Some(addr) == self.host, elsewhere.len()) {
            (true, _) => false,
            (false, n) if n >= needed => true,
            (false, _) => return Observed::NeedsSecondReport,
        };
        let mut change = Change {
            behind_nat: behind,
            changed: self.reflexive != Some(addr) || self.behind_nat != Some(behind),
            ..Change::default()
        };
        if behind && !self.symmetric {
            let ports: BTreeSet<u16> = elsewhere
                .iter()
                .filter(|a| a.ip() == addr.ip())
                .map(|a| a.port())
                .collect();
            if ports.len() >= 2 {
                self.symmetric = true;
                change.became_symmetric = true;
            }
        }
        self.reflexive = Some(addr);
        self.behind_nat = Some(behind);
        if behind && self.routes && self.mode == NatMode::Auto {
            if started {
                change.late = true;
            } else {
                self.routes = false;
                change.stop_routing = true;
            }
        }
        Observed::Known(change)
    }

    /// Whether a node with bootstrap peers linked starts its core at `now`: a peer in
    /// auto mode waits for its reachability up to [`OBSERVE_WAIT`] from the first ask.
    pub fn start(&mut self, now: Time) -> Start {
        if self.mode != NatMode::Auto || self.behind_nat.is_some() {
            return Start::Now;
        }
        let until = *self.observe_until.get_or_insert(now + OBSERVE_WAIT);
        if now < until {
            return Start::Wait;
        }
        self.behind_nat = Some(false);
        Start::AssumingReachable
    }

    /// The candidates this node gives in Attach and AppAttach: its host address, the
    /// reflexive address peers see (unless its NAT maps each destination anew, which
    /// makes it useless to others), and, for a client, its admitting peer `relay`.
    pub fn candidates(&self, relay: Option<SocketAddr>) -> Vec<pb::Candidate> {
        use pb::candidate::Type;
        let mut c = Vec::new();
        if let Some(h) = self.host {
            c.push(candidate(h, Type::Host));
        }
        if let Some(r) = self
            .reflexive
            .filter(|r| Some(*r) != self.host && !self.symmetric)
        {
            c.push(candidate(r, Type::ServerReflexive));
        }
        if !self.routes {
            if let Some(a) = relay {
                c.push(candidate(a, Type::Relayed));
            }
        }
        c
    }
}

/// Where another node's candidates say it can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Host and reflexive addresses, in the order given.
    pub direct: Vec<SocketAddr>,
    /// Its relay (the admitting peer of a node behind a NAT).
    pub relay: Option<SocketAddr>,
    /// The node offers a reflexive address (it sits behind a NAT whose mapping a punch can
    /// use). A node with a relay but no reflexive address is behind a NAT that maps each
    /// destination anew: only its relay reaches it.
    pub reflexive: bool,
}

/// How to reach a node first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstTry {
    /// Connect to its direct addresses (all at once, after punching them); on failure
    /// within the punch timeout, its relay if it has one.
    Direct,
    /// Straight through its relay.
    Relay(SocketAddr),
    /// Neither: it gave no usable candidate.
    Unreachable,
}

impl Reach {
    /// Whether a direct connection can come up: the node has no relay (it is reachable),
    /// or it offers a reflexive address and this node's NAT (`own_symmetric`: one that
    /// maps each destination anew) keeps one mapping for every destination.
    pub fn direct_possible(&self, own_symmetric: bool) -> bool {
        !self.direct.is_empty() && (self.relay.is_none() || (self.reflexive && !own_symmetric))
    }

    /// How to reach the node first. `punch_failed_recently`: a direct attempt to it failed
    /// a short while ago, so its relay is used at once if it has one.
    pub fn first_try(&self, own_symmetric: bool, punch_failed_recently: bool) -> FirstTry {
        if self.direct_possible(own_symmetric) && !(punch_failed_recently && self.relay.is_some()) {
            return FirstTry::Direct;
        }
        match self.relay {
            Some(r) => FirstTry::Relay(r),
            None => FirstTry::Unreachable,
        }
    }
}

/// A candidate of the given type; priorities as ICE's type preferences (host first).
pub fn candidate(a: SocketAddr, kind: pb::candidate::Type) -> pb::Candidate {
    use pb::candidate::Type;
    pb::Candidate {
        address: match a.ip() {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        },
        port: u32::from(a.port()),
        r#type: kind as i32,
        priority: match kind {
            Type::Host => 126,
            Type::PeerReflexive => 110,
            Type::ServerReflexive => 100,
            Type::Relayed | Type::Unspecified => 0,
        },
    }
}

/// Whether the candidate names a relay.
pub fn is_relayed(c: &pb::Candidate) -> bool {
    c.r#type == pb::candidate::Type::Relayed as i32
}

/// Where a node's candidates say it can be reached (direct host and reflexive addresses,
/// and its relay): the first `MAX_CANDIDATES` usable ones, without repeats (proto/SPEC.md
/// 3); however many a message lists, no more are dialled or punched.
pub fn reach_of(candidates: &[pb::Candidate]) -> Reach {
    let mut r = Reach::default();
    let mut seen = std::collections::HashSet::new();
    let usable = candidates
        .iter()
        .filter_map(|c| Some((c, candidate_addr(c)?)))
        .filter(|(c, a)| seen.insert((is_relayed(c), *a)))
        .take(MAX_CANDIDATES);
    for (c, a) in usable {
        if is_relayed(c) {
            r.relay = r.relay.or(Some(a));
            continue;
        }
        r.reflexive |= c.r#type == pb::candidate::Type::ServerReflexive as i32;
        r.direct.push(a);
    }
    r
}

/// The address of a candidate (None: malformed, port 0 or unspecified).
pub fn candidate_addr(c: &pb::Candidate) -> Option<SocketAddr> {
    let ip: IpAddr = match c.address.len() {
        4 => <[u8; 4]>::try_from(c.address.as_slice()).ok()?.into(),
        16 => <[u8; 16]>::try_from(c.address.as_slice()).ok()?.into(),
        _ => return None,
    };
    let port = u16::try_from(c.port).ok()?;
    (port != 0 && !ip.is_unspecified()).then(|| SocketAddr::new(ip, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::id::Id;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn peer(n: u128) -> NodeId {
        Id(n)
    }
    const HOST: &str = "192.168.1.2:4700";

    #[test]
    fn a_peer_in_auto_mode_needs_two_reporters_to_stop_routing() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa(HOST)), true);
        assert_eq!(
            r.on_observed(peer(1), sa("198.51.100.7:40000"), false),
            Observed::NeedsSecondReport
        );
        assert!(r.routes() && r.behind_nat().is_none());
        // The same peer again decides nothing: two distinct reporters are needed.
        assert_eq!(
            r.on_observed(peer(1), sa("198.51.100.7:40000"), false),
            Observed::NeedsSecondReport
        );
        let Observed::Known(c) = r.on_observed(peer(2), sa("198.51.100.7:40000"), false) else {
            panic!("a second reporter decides")
        };
        assert!(c.behind_nat && c.changed && c.stop_routing && !c.became_symmetric);
        assert!(!r.routes() && !r.symmetric());
        assert_eq!(r.nat_state(), "nat");
        // A client offers its host, its reflexive address and its relay.
        let relay = sa("203.0.113.9:4700");
        assert_eq!(
            reach_of(&r.candidates(Some(relay))),
            Reach {
                direct: vec![sa(HOST), sa("198.51.100.7:40000")],
                relay: Some(relay),
                reflexive: true,
            }
        );
    }

    #[test]
    fn two_ports_of_one_address_mean_a_symmetric_nat_and_no_reflexive_candidate() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa(HOST)), true);
        r.on_observed(peer(1), sa("198.51.100.7:50000"), false);
        let Observed::Known(c) = r.on_observed(peer(2), sa("198.51.100.7:50001"), false) else {
            panic!()
        };
        assert!(c.became_symmetric && c.stop_routing);
        assert_eq!(r.nat_state(), "symmetric-nat");
        let reach = reach_of(&r.candidates(Some(sa("203.0.113.9:4700"))));
        assert!(!reach.reflexive, "{reach:?}");
        assert_eq!(reach.direct, vec![sa(HOST)]);
        // A reachable node cannot punch to it, only relay.
        assert_eq!(
            reach.first_try(false, false),
            FirstTry::Relay(sa("203.0.113.9:4700"))
        );
    }

    #[test]
    fn one_report_of_its_own_address_makes_a_peer_reachable() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa("203.0.113.5:4700")), true);
        let Observed::Known(c) = r.on_observed(peer(1), sa("203.0.113.5:4700"), false) else {
            panic!()
        };
        assert!(!c.behind_nat && !c.stop_routing && r.routes());
        assert!(!r.punches_back());
        assert_eq!(r.nat_state(), "public");
        // A peer gives its host address only.
        assert_eq!(
            reach_of(&r.candidates(Some(sa("203.0.113.9:4700")))).direct,
            vec![sa("203.0.113.5:4700")]
        );
    }

    #[test]
    fn a_late_verdict_does_not_stop_a_routing_peer_and_modes_are_obeyed() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa(HOST)), true);
        r.on_observed(peer(1), sa("198.51.100.7:40000"), true);
        let Observed::Known(c) = r.on_observed(peer(2), sa("198.51.100.7:40000"), true) else {
            panic!()
        };
        assert!(c.late && !c.stop_routing && r.routes());
        // nat.mode = "peer" routes whatever peers say.
        let mut p = Reachability::new(NatMode::Peer, Some(sa(HOST)), true);
        let Observed::Known(c) = p.on_observed(peer(1), sa("198.51.100.7:40000"), false) else {
            panic!("one report is enough when the node does not decide to route on it")
        };
        assert!(c.behind_nat && !c.stop_routing && p.routes());
        // nat.mode = "client" never routes.
        assert!(!Reachability::new(NatMode::Client, None, true).routes());
    }

    #[test]
    fn the_reporter_table_is_bounded() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa(HOST)), true);
        for n in 0..REPORTERS_MAX as u128 {
            assert_ne!(
                r.on_observed(peer(n), sa("203.0.113.1:1"), false),
                Observed::Ignored
            );
        }
        assert_eq!(
            r.on_observed(peer(1000), sa("203.0.113.1:1"), false),
            Observed::Ignored
        );
    }

    #[test]
    fn a_peer_in_auto_mode_waits_for_reports_then_assumes_it_is_reachable() {
        let mut r = Reachability::new(NatMode::Auto, Some(sa(HOST)), true);
        let t0 = Time(1_000_000);
        assert_eq!(r.start(t0), Start::Wait);
        assert_eq!(r.start(t0 + Duration::from_millis(1999)), Start::Wait);
        assert_eq!(r.start(t0 + OBSERVE_WAIT), Start::AssumingReachable);
        assert_eq!(r.behind_nat(), Some(false));
        assert_eq!(r.start(t0 + OBSERVE_WAIT), Start::Now);
        assert_eq!(
            Reachability::new(NatMode::Peer, None, true).start(t0),
            Start::Now
        );
    }

    #[test]
    fn first_try_goes_direct_where_a_punch_can_work_and_relays_otherwise() {
        let relay = Some(sa("203.0.113.9:4700"));
        let open = Reach {
            direct: vec![sa("203.0.113.5:4700")],
            relay: None,
            reflexive: false,
        };
        let cone = Reach {
            direct: vec![sa(HOST), sa("198.51.100.7:40000")],
            relay,
            reflexive: true,
        };
        let symmetric = Reach {
            direct: vec![sa(HOST)],
            relay,
            reflexive: false,
        };
        // A reachable node: direct from anywhere, even from behind a symmetric NAT.
        assert_eq!(open.first_try(true, false), FirstTry::Direct);
        assert_eq!(open.first_try(false, true), FirstTry::Direct);
        // Behind a cone NAT: punched, unless this side's NAT is symmetric or it failed.
        assert_eq!(cone.first_try(false, false), FirstTry::Direct);
        assert_eq!(
            cone.first_try(true, false),
            FirstTry::Relay(sa("203.0.113.9:4700"))
        );
        assert_eq!(
            cone.first_try(false, true),
            FirstTry::Relay(sa("203.0.113.9:4700"))
        );
        // Behind a symmetric NAT: its relay only.
        assert_eq!(
            symmetric.first_try(false, false),
            FirstTry::Relay(sa("203.0.113.9:4700"))
        );
        assert_eq!(
            Reach::default().first_try(false, false),
            FirstTry::Unreachable
        );
    }

    #[test]
    fn an_answer_with_thousands_of_candidates_yields_at_most_eight_distinct_ones() {
        let host = pb::candidate::Type::Host;
        let mut many = Vec::new();
        for i in 0..10_000u32 {
            // Repeats of a few addresses, then thousands of distinct ones.
            let port = if i < 5_000 {
                4000 + (i % 3) as u16
            } else {
                10_000 + (i % 50_000) as u16
            };
            many.push(candidate(SocketAddr::from(([127, 0, 0, 1], port)), host));
        }
        let r = reach_of(&many);
        assert_eq!(r.direct.len(), MAX_CANDIDATES);
        let distinct: std::collections::HashSet<_> = r.direct.iter().collect();
        assert_eq!(distinct.len(), r.direct.len(), "no repeats");
        assert_eq!(
            r.direct[..3],
            [
                SocketAddr::from(([127, 0, 0, 1], 4000)),
                SocketAddr::from(([127, 0, 0, 1], 4001)),
                SocketAddr::from(([127, 0, 0, 1], 4002)),
            ],
            "the first usable ones, in order"
        );
    }
}
