//! Reachability: reflexive addresses peers observe, candidates, whether this node is
//! behind a NAT, and moving to the peer responsible for it when it is.

use super::*;

impl Runtime {
    /// A peer this node dialled told it the address it sees the link at. One report that
    /// it is at its own address says it is reachable; that a peer in auto mode is behind a
    /// NAT takes the reports of two distinct peers (one peer alone, which may lie, cannot
    /// make it a client; a client takes its admitting peer's report); two that see it at
    /// two ports of one address mean a symmetric NAT.
    pub(super) fn on_observed(&mut self, by: NodeId, addr: SocketAddr) {
        if self.reports.len() >= REPORTERS_MAX && !self.reports.contains_key(&by) {
            return;
        }
        self.reports.insert(by, addr);
        let elsewhere: Vec<SocketAddr> = self
            .reports
            .values()
            .copied()
            .filter(|a| Some(*a) != self.host)
            .collect();
        // A peer in auto mode would stop routing on this: two reporters. A client routes
        // for nobody anyway; its admitting peer's word gives its reflexive candidate.
        let needed = if self.is_peer && self.nat_mode == NatMode::Auto {
            2
        } else {
            1
        };
        let behind = match (Some(addr) == self.host, elsewhere.len()) {
            (true, _) => false,
            (false, n) if n >= needed => true,
            (false, _) => {
                tracing::info!(%by, seen = %addr, host = ?self.host, "one peer sees this node at another address; a second peer's report decides whether it is behind a NAT (with a single bootstrap peer, set nat.mode = \"client\" if it is)");
                return;
            }
        };
        if behind && !self.symmetric {
            let ports: HashSet<u16> = elsewhere
                .iter()
                .filter(|a| a.ip() == addr.ip())
                .map(|a| a.port())
                .collect();
            if ports.len() >= 2 {
                tracing::info!(seen = ?elsewhere, "two peers see this node at two ports: the NAT maps each destination anew (symmetric); other nodes reach this one through its relay");
                self.symmetric = true;
                self.transport.set_symmetric(true);
            }
        }
        if self.reflexive != Some(addr) || self.behind_nat != Some(behind) {
            if behind {
                tracing::info!(%by, reflexive = %addr, host = ?self.host, "peers see this node at another address: behind a NAT");
            } else {
                tracing::info!(%by, %addr, "a peer sees this node at its own address: reachable");
            }
        }
        self.reflexive = Some(addr);
        self.behind_nat = Some(behind);
        if behind && self.is_peer && self.nat_mode == NatMode::Auto {
            if self.started {
                tracing::warn!("already routing as a peer; set nat.mode = \"client\" if others cannot reach this node");
            } else if let Some(make) = self.client_core.take() {
                self.core = make();
                self.is_peer = false;
                tracing::info!("behind a NAT: running as a client (routing nothing) of the peer responsible for this Node-ID");
            }
        }
        self.export_nat();
        self.refresh_candidates();
        self.maybe_start();
    }

    /// Sets the candidates this node gives in Attach and AppAttach: its host address, the
    /// reflexive address peers see, and behind a NAT its admitting peer as relay.
    pub(super) fn refresh_candidates(&mut self) {
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
        if !self.is_peer {
            if let Some(a) = self.admitting.and_then(|p| self.addrs.get(&p)) {
                c.push(candidate(*a, Type::Relayed));
            }
        }
        self.core.set_candidates(c.clone());
        for app in &self.apps {
            self.core.set_app_candidates(*app, c.clone());
        }
    }

    /// A long-running client (a node behind a NAT) looks up the peer responsible for its
    /// Node-ID now and then: requests addressed to it are routed there.
    pub(super) fn locate_responsible(&mut self) {
        if self.is_peer
            || !self.daemon
            || !self.core.is_joined()
            || self.locating.is_some()
            || self.moving_to.is_some()
            || Instant::now() < self.next_locate
        {
            return;
        }
        self.next_locate = Instant::now() + LOCATE_INTERVAL;
        let me = self.core.id();
        self.locating = Some(self.core.lookup(now(), me));
    }

    /// The lookup of the responsible peer answered: move there if it is another peer.
    pub(super) fn on_located(&mut self, responder: Option<NodeId>) {
        self.locating = None;
        if responder.is_some() && responder == self.admitting {
            self.located = true;
            self.export_nat();
        }
        let Some(r) = responder.filter(|r| Some(*r) != self.admitting && *r != self.core.id())
        else {
            return;
        };
        if self.transport.is_linked(r) {
            self.readmit(r);
        } else if let Some(a) = self.admitting {
            tracing::info!(peer = %r, "moving to the peer responsible for this Node-ID");
            self.moving_to = Some(r);
            let op = self.core.attach(now(), r, Some(a));
            self.attaching.insert(op, r);
        }
    }

    /// Makes `peer` (linked) this client's admitting peer.
    pub(super) fn readmit(&mut self, peer: NodeId) {
        self.core.readmit(now(), peer);
        self.admitting = Some(peer);
        self.moving_to = None;
        tracing::info!(%peer, "admitted by this peer");
        self.refresh_candidates();
        // Confirm at once that it is the responsible peer.
        self.located = false;
        self.next_locate = Instant::now();
        self.export_nat();
    }

    pub(super) fn export_nat(&self) {
        metrics::nat(
            &self.label,
            metrics::NatState {
                behind_nat: self.behind_nat == Some(true),
                symmetric: self.symmetric,
                routes: self.is_peer,
                located: self.is_peer || self.located,
            },
        );
    }
}
