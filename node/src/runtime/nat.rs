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
        let relay = self.admitting.and_then(|p| self.addrs.get(&p)).copied();
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
                behind_nat: self.reach.behind_nat() == Some(true),
                symmetric: self.reach.symmetric(),
                routes: self.reach.routes(),
                located: self.reach.routes() || self.located,
            },
        );
    }
}
