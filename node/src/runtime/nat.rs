//! Reachability: reflexive addresses peers observe, candidates, whether this node is
//! behind a NAT, and moving to the peer responsible for it when it is.

use super::*;

impl Runtime {
    /// A peer this node dialled told it the address it sees the link at; the core's
    /// [`Reachability`] decides what that means, this applies it.
    pub(super) fn on_observed(&mut self, by: NodeId, addr: SocketAddr) {
        let change = match self.reach.on_observed(by, addr, self.started) {
            Observed::Ignored => return,
            Observed::NeedsSecondReport => {
                tracing::info!(%by, seen = %addr, host = ?self.reach.host(), "one peer sees this node at another address; a second peer's report decides whether it is behind a NAT (with a single bootstrap peer, set nat.mode = \"client\" if it is)");
                return;
            }
            Observed::Known(c) => c,
        };
        if change.became_symmetric {
            tracing::info!(seen = %addr, "two peers see this node at two ports: the NAT maps each destination anew (symmetric); other nodes reach this one through its relay");
            self.transport.set_symmetric(true);
        }
        if change.changed {
            if change.behind_nat {
                tracing::info!(%by, reflexive = %addr, host = ?self.reach.host(), "peers see this node at another address: behind a NAT");
            } else {
                tracing::info!(%by, %addr, "a peer sees this node at its own address: reachable");
            }
        }
        if change.late {
            tracing::warn!("already routing as a peer; set nat.mode = \"client\" if others cannot reach this node");
        }
        if change.stop_routing {
            if let Some(make) = self.client_core.take() {
                self.core = make();
                tracing::info!("behind a NAT: running as a client (routing nothing) of the peer responsible for this Node-ID");
            }
        }
        self.export_nat();
        self.refresh_candidates();
        self.maybe_start();
    }

    /// Sets the candidates this node gives in Attach and AppAttach (the core's choice:
    /// host, reflexive, and behind a NAT its admitting peer as relay).
    pub(super) fn refresh_candidates(&mut self) {
        let relay = self.admission.admitting().and_then(|p| self.links.addr(p));
        let c = self.reach.candidates(relay);
        self.core.set_candidates(c.clone());
        for app in &self.apps {
            self.core.set_app_candidates(*app, c.clone());
        }
    }

    /// A long-running client (a node behind a NAT) looks up the peer responsible for its
    /// Node-ID now and then: requests addressed to it are routed there.
    pub(super) fn locate_responsible(&mut self) {
        if self.reach.routes()
            || !self.daemon
            || !self.core.is_joined()
            || !self.admission.locate_due(now())
        {
            return;
        }
        let me = self.core.id();
        let op = self.core.lookup(now(), me);
        self.admission.locating(op);
    }

    /// The lookup of the responsible peer answered: move there if it is another peer.
    pub(super) fn on_located(&mut self, responder: Option<NodeId>) {
        let me = self.core.id();
        let transport = self.transport.clone();
        match self
            .admission
            .on_located(me, responder, |n| transport.is_linked(n))
        {
            Located::Confirmed => self.export_nat(),
            Located::Readmit(r) => self.readmit(r),
            Located::Move { to, via } => {
                tracing::info!(peer = %to, "moving to the peer responsible for this Node-ID");
                let op = self.core.attach(now(), to, Some(via));
                self.links.attaching(op, to);
            }
            Located::Nothing => {}
        }
    }

    /// Makes `peer` (linked) this client's admitting peer.
    pub(super) fn readmit(&mut self, peer: NodeId) {
        self.core.readmit(now(), peer);
        self.admission.readmit(peer, now());
        tracing::info!(%peer, "admitted by this peer");
        self.refresh_candidates();
        self.export_nat();
    }

    pub(super) fn export_nat(&self) {
        metrics::nat(
            &self.label,
            metrics::NatState {
                behind_nat: self.reach.behind_nat() == Some(true),
                symmetric: self.reach.symmetric(),
                routes: self.reach.routes(),
                located: self.reach.routes() || self.admission.located(),
            },
        );
    }
}
