//! The driver loop: network events, commands, timers and the core's output, one at a
//! time; messages to nodes without a link wait for an Attach.

use super::inbox::{Inbox, BATCH_MAX, DRAIN_MAX};
use super::*;

impl Runtime {
    pub(super) async fn run(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        mut cmds: mpsc::Receiver<Command>,
    ) {
        metrics::config_sequence(&self.label, self.docs.sequence());
        if self.boot.addrs().is_empty() {
            self.start_core();
        } else {
            self.dial_bootstrap();
        }
        let mut inbox = Inbox::default();
        let mut next_tick = Instant::now();
        let mut next_save = Instant::now() + PEER_CACHE_SAVE_EVERY;
        let mut boot_retry = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(3),
            Duration::from_secs(3),
        );
        loop {
            let deadline = self.core.poll_timeout().map(|t| {
                let n = now();
                Instant::now() + t.since(n)
            });
            tokio::select! {
                ev = net.recv() => match ev {
                    Some(ev) => {
                        // What has already arrived goes into the inbox, whose batches
                        // take clients' traffic before copies between neighbours.
                        inbox.push(ev);
                        while inbox.len() < DRAIN_MAX {
                            match net.try_recv() {
                                Ok(ev) => inbox.push(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = std::future::ready(()), if !inbox.is_empty() => {}
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => {
                        // Every handle is gone: stop as on a shutdown request.
                        if self.shutdown.is_none() {
                            let (tx, _rx) = oneshot::channel();
                            self.begin_shutdown(tx);
                        }
                    }
                },
                _ = sleep_until(deadline) => self.core.handle_timeout(now()),
                _ = sleep_until(Some(next_tick)) => {
                    next_tick = Instant::now() + self.tick_period();
                    self.maybe_start();
                    self.locate_responsible();
                    export::export(&self.label, &self.core, &self.store, &self.transport, self.began.elapsed().as_secs_f64());
                    // Diagnostic Pings answer from it (links and their round trips too,
                    // which change as the node joins): read every second.
                    let info = self.host_info();
                    self.core.set_host_info(now(), info);
                    // sync = "none": the second's commits reach the disk.
                    self.store.sync_now();
                    if Instant::now() >= next_save {
                        next_save = Instant::now() + PEER_CACHE_SAVE_EVERY;
                        self.save_peers();
                    }
                }
                _ = boot_retry.tick(), if self.reach.routes() && !self.started && !self.boot.addrs().is_empty() => {
                    match self.boot.retry(now()) {
                        Retry::Form => {
                            tracing::info!("no other bootstrap peer answered: forming the overlay");
                            self.start_core();
                        }
                        Retry::Redial => self.dial_bootstrap(),
                    }
                }
            }
            if !inbox.is_empty() {
                // Group commit: a batch is handled before the flush, so the stores among
                // it share one commit; the signatures among it are verified in one batch
                // first.
                let max = if self.sync == SyncMode::Always {
                    1
                } else {
                    BATCH_MAX
                };
                let evs = inbox.batch(max);
                self.prepare(&evs);
                for ev in evs {
                    self.on_net(ev);
                }
            }
            self.flush();
            if let Some((_, since)) = &self.shutdown {
                let done = self.core.state() == p2psip_algorithms::NodeState::Left
                    || since.elapsed() > Duration::from_secs(5);
                if done {
                    break;
                }
            }
        }
        self.flush();
        self.store.sync_now();
        self.save_peers();
        self.transport.shutdown().await;
        metrics::overlay_event(&self.label, "stopped");
        if let Some((tx, _)) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// How often the driver's housekeeping runs (start, metrics, diagnostics' host
    /// information, the once-a-second sync of `sync = "none"`, the bootstrap cache):
    /// every second while the node starts and joins, for a client (which checks on its
    /// admitting peer), when metrics are exported or `sync = "none"` promises a second's
    /// durability; otherwise every [`IDLE_TICK`]: an idle peer's wake-ups are most of its
    /// CPU (issue 25: 0.051 -> 0.037% of a core per peer at 20 peers).
    pub(super) fn tick_period(&self) -> Duration {
        let busy = !self.started
            || !self.core.is_joined()
            || !self.reach.routes()
            || metrics::enabled()
            || self.sync == SyncMode::None
            || self.began.elapsed() < BUSY_START;
        if busy {
            Duration::from_secs(1)
        } else {
            IDLE_TICK
        }
    }

    pub(super) fn dial_bootstrap(&mut self) {
        for a in self.boot.addrs() {
            self.transport.connect(*a, None);
        }
    }

    /// Starts the core once a bootstrap peer is linked and, for a peer in auto mode, its
    /// reachability is known (or the wait for it is over).
    pub(super) fn maybe_start(&mut self) {
        if self.started || self.boot.ids().is_empty() {
            return;
        }
        match self.reach.start(now()) {
            Start::Wait => return,
            Start::AssumingReachable => tracing::warn!(
                "no bootstrap peer reported this node's address: assuming it is reachable"
            ),
            Start::Now => {}
        }
        self.start_core();
    }

    pub(super) fn start_core(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.export_nat();
        if !self.reach.routes() {
            self.admission.start(self.boot.ids().first().copied());
            self.refresh_candidates();
        }
        let ids = self.boot.ids().to_vec();
        self.core.start(now(), &ids);
        if ids.is_empty() {
            tracing::info!(node = %self.core.id(), "forming a new overlay");
        }
    }

    /// Hands the messages among `evs` to the core's batch check of their signatures.
    fn prepare(&mut self, evs: &[NetEvent]) {
        let batch: Vec<(NodeId, &[u8])> = evs
            .iter()
            .filter_map(|ev| match ev {
                NetEvent::Message { from, bytes, .. } => Some((*from, bytes.as_slice())),
                _ => None,
            })
            .collect();
        self.core.prepare(&batch);
    }

    pub(super) fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Message { from, bytes, .. } => {
                metrics::message(&self.label, "in", &bytes);
                self.core.handle_message(now(), from, &bytes);
            }
            NetEvent::LinkUp {
                node,
                addr,
                dialled,
            } => {
                tracing::debug!(%node, %addr, dialled, "link up");
                self.boot.link_up(node, addr, dialled);
                for m in self.links.link_up(node, addr) {
                    self.send_now(node, m);
                }
                self.core.handle_link(now(), LinkEvent::Up(node));
                self.send_config(node);
                self.maybe_start();
                if self.started
                    && !self.reach.routes()
                    && self.daemon
                    && self.admission.takes_link(node)
                {
                    self.readmit(node);
                }
            }
            NetEvent::Observed { by, addr } => self.on_observed(by, addr),
            NetEvent::LinkDown { node, refused } => {
                tracing::debug!(%node, "link down");
                let admitting = self.admission.admitting() == Some(node);
                if !self.reach.routes() && self.daemon && self.admission.on_link_down(node) {
                    tracing::warn!(%node, "lost the admitting peer: reconnecting through the bootstrap peers");
                    self.export_nat();
                    self.dial_bootstrap();
                } else if !self.reach.routes() && !self.daemon && admitting {
                    // A client has only its admitting peer: without it every operation
                    // fails, at once and with the peer's reason.
                    let why = match refused {
                        Some(r) => format!("the admitting peer refused us: {r}"),
                        None => "the admitting peer closed the connection".into(),
                    };
                    for (op, tx) in self.waiters.drain() {
                        let _ = tx.send(failed(op, &why));
                    }
                    self.fatal = Some(why);
                }
                self.core.handle_link(now(), LinkEvent::Failed(node));
            }
            NetEvent::ConnectFailed { node, addr, reason } => {
                if !self.reach.routes() && !self.daemon && self.boot.is_bootstrap(addr) {
                    self.fatal = Some(format!("admitting peer {addr} unreachable: {reason}"));
                }
                if self.boot.is_bootstrap(addr) && !self.started {
                    tracing::warn!(%addr, "bootstrap peer unreachable: {reason}");
                } else {
                    tracing::debug!(%addr, "connect failed: {reason}");
                }
                if let Some(n) = node {
                    // A move there failed: the next lookup of the responsible peer retries.
                    self.admission.move_failed(n);
                    self.links.connect_failed(n);
                    self.core.handle_link(now(), LinkEvent::Failed(n));
                }
            }
        }
    }

    pub(super) fn on_cmd(&mut self, c: Command) {
        match c {
            Command::Op(f, tx) => {
                let op = f(&mut self.core, now());
                match &self.fatal {
                    Some(why) if !self.reach.routes() => {
                        let _ = tx.send(failed(op, why));
                    }
                    _ => {
                        self.waiters.insert(op, tx);
                    }
                }
            }
            Command::Status(tx) => {
                let _ = tx.send(Status {
                    id: self.core.id(),
                    joined: self.core.is_joined(),
                    routing: self.core.routing_table(),
                    stats: self.core.stats().clone(),
                    connections: self.transport.connection_count(),
                    stored_values: self.core.storage().value_count(),
                    fatal: self.fatal.clone(),
                    reflexive: self.reach.reflexive(),
                    behind_nat: self.reach.behind_nat(),
                });
            }
            Command::Core(f) => f(&mut self.core),
            Command::ServeApp(app) => {
                if !self.apps.contains(&app) {
                    self.apps.push(app);
                }
                self.refresh_candidates();
            }
            Command::Shutdown(tx) => self.begin_shutdown(tx),
        }
    }

    pub(super) fn begin_shutdown(&mut self, tx: oneshot::Sender<()>) {
        tracing::info!(node = %self.core.id(), "leaving the overlay");
        self.core.leave(now());
        metrics::overlay_event(&self.label, "leave");
        self.shutdown = Some((tx, Instant::now()));
    }

    pub(super) fn send_now(&mut self, to: NodeId, bytes: Vec<u8>) {
        metrics::message(&self.label, "out", &bytes);
        if let Err(b) = self.transport.send(to, bytes) {
            self.queue_for(to, b);
        }
    }

    /// Holds a message for a node without a link, and sets one up: connect to a known
    /// address, or ask the node for its candidates through the overlay (Attach).
    pub(super) fn queue_for(&mut self, to: NodeId, bytes: Vec<u8>) {
        // Only for the first message held, and only when no address is known: the
        // routing table is copied then, not for every message.
        let (routes, core, transport, boot) =
            (self.reach.routes(), &self.core, &self.transport, &self.boot);
        let via = || {
            routes
                .then(|| {
                    attach_via(
                        &core.routing_table(),
                        boot.ids(),
                        to,
                        |n| transport.is_linked(n),
                        || transport.any_link(to),
                    )
                })
                .flatten()
        };
        match self.links.hold(to, bytes, via) {
            Some(Setup::Connect(a)) => self.transport.connect(a, Some(to)),
            Some(Setup::Attach { via }) => {
                let op = self.core.attach(now(), to, Some(via));
                self.links.attaching(op, to);
            }
            Some(Setup::Unreachable) => self.core.handle_link(now(), LinkEvent::Failed(to)),
            None => {}
        }
    }

    pub(super) fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.core.poll_transmit() {
                progressed = true;
                self.send_now(t.to, t.bytes);
            }
            while let Some(e) = self.core.poll_event() {
                progressed = true;
                self.on_event(e);
            }
            if !progressed {
                break;
            }
        }
    }

    pub(super) fn on_event(&mut self, e: Event) {
        match e {
            Event::Joined => {
                tracing::info!(node = %self.core.id(), algorithm = self.core.algorithm(), "joined the overlay");
                metrics::overlay_event(&self.label, "join");
            }
            Event::JoinFailed(why) => {
                crate::remote_log!(warn, "join_failed", node = %self.core.id(), "join failed: {why}");
                metrics::overlay_event(&self.label, "join_failed");
            }
            Event::Left => tracing::info!(node = %self.core.id(), "left the overlay"),
            Event::ConfigUpdate { from, update } => self.on_config_update(from, update),
            Event::PeerCandidates { node, candidates } => {
                let reach = reach_of(&candidates);
                if self.reach.punches_back() {
                    // Open our NAT towards the requester before our answer reaches it: its
                    // connection attempt then finds the way in (proto/SPEC.md 2.8).
                    for a in &reach.direct {
                        self.transport.punch(*a);
                    }
                }
                if self.reach.routes() {
                    if let Some(a) = reach.direct.first() {
                        self.links.learn(node, *a);
                    }
                }
            }
            Event::Completed {
                op,
                method,
                outcome,
                hops,
                latency,
                responder,
            } => {
                if self.admission.is_locating(op) {
                    self.on_located(responder.filter(|_| outcome.is_ok()));
                    return;
                }
                match self.links.attach_done(op, attach_address(&outcome)) {
                    Some(Attached::Connect { node, addr }) => {
                        self.transport.connect(addr, Some(node));
                        return;
                    }
                    Some(Attached::Failed(node)) => {
                        tracing::debug!(%node, "attach gave no usable address");
                        self.admission.move_failed(node);
                        self.core.handle_link(now(), LinkEvent::Failed(node));
                        return;
                    }
                    None => {}
                }
                metrics::transaction(
                    &self.label,
                    method,
                    latency.as_secs_f64(),
                    hops,
                    outcome.is_ok(),
                );
                if let Some(tx) = self.waiters.remove(&op) {
                    let _ = tx.send(Event::Completed {
                        op,
                        method,
                        outcome,
                        hops,
                        latency,
                        responder,
                    });
                }
            }
        }
    }
}
