//! End-to-end transactions: every request this node originates gets a random transaction
//! id, is retransmitted with exponential back-off (re-routed each time), and ends with its
//! answer or Request_Timeout.

use super::recovery::Resend;
use super::{Event, OpError, OverlayNode, TimerKind};
use crate::id::{Id, NodeId};
use crate::storage::check_signed_with;
use crate::time::Time;
use crate::topology::{NextHop, Target};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::security::Memo;
use p2psip_proto::{encode_parts, Body, Destination, OwnedHeader};
use rand::Rng;

/// Identifies a client operation started on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// Who waits for a transaction's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Topology(u64),
    Client(OpId),
    Replicate { resource: Id, to: NodeId },
    Handover { resource: Id },
    LeaveHandover,
}

impl Owner {
    /// What started the transaction, as its span names it.
    fn name(&self) -> &'static str {
        match self {
            Owner::Topology(_) => "algorithm",
            Owner::Client(_) => "client",
            Owner::Replicate { .. } => "replication",
            Owner::Handover { .. } | Owner::LeaveHandover => "handover",
        }
    }
}

pub(super) struct Tx {
    owner: Owner,
    method: &'static str,
    code: u16,
    body: Vec<u8>,
    /// The request's security block, signed at the first attempt that needs one (one
    /// that leaves through another node than its only destination) and kept for the rest.
    security: Option<Vec<u8>>,
    destinations: Vec<Destination>,
    direct: Option<NodeId>,
    attempt: u32,
    started: Time,
    /// The armed retransmission timer, removed when the transaction ends (a timer left
    /// to fire for nothing is a wake-up of an idle node).
    timer: Option<(Time, u64)>,
    /// The transaction's span (debug level: nothing is recorded unless a subscriber
    /// enables it, so the simulator and a node logging at info pay nothing): its sends,
    /// retransmissions and end are logged inside it.
    span: tracing::Span,
}

impl Tx {
    /// The request's message code.
    pub(super) fn code(&self) -> u16 {
        self.code
    }

    /// The request's encoded body.
    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    /// The node the request is addressed to, when its last destination is a Node-ID: only
    /// that node may answer it with success.
    pub(super) fn addressee(&self) -> Option<NodeId> {
        match self.destinations.last() {
            Some(Destination::Node(n)) => Some(*n),
            _ => None,
        }
    }
}

impl Tx {
    /// The Resource-ID the request is routed to, when its last destination is one: only
    /// a node that can be responsible for it may answer it with success.
    pub(super) fn target_resource(&self) -> Option<Id> {
        match self.destinations.last() {
            Some(Destination::Resource(r)) => Some(*r),
            _ => None,
        }
    }
}

impl OverlayNode {
    /// Starts a transaction.
    pub(super) fn request(&mut self, owner: Owner, target: Target, body: Body) {
        let mut id: u64 = self.rng.random();
        while id == 0 || self.txs.contains_key(&id) {
            id = self.rng.random();
        }
        let (destinations, direct) = match target {
            Target::Direct(n) => (vec![Destination::Node(n)], Some(n)),
            Target::SourceRoute(d) => match d.first() {
                Some(Destination::Node(n)) if *n != self.me => {
                    let n = *n;
                    (d, Some(n))
                }
                _ => (d, None),
            },
            Target::Route(d) => (d, None),
        };
        let encoded = body.encode_to_vec();
        let span = tracing::debug_span!(
            "transaction",
            tx = %format_args!("{id:016x}"),
            method = body.method_name(),
            by = owner.name(),
        );
        span.in_scope(|| tracing::debug!(destination = ?destinations.last(), "request"));
        let tx = Tx {
            span,
            owner,
            method: body.method_name(),
            code: body.code(),
            security: None,
            body: encoded,
            destinations,
            direct,
            attempt: 0,
            timer: None,
            started: self.now,
        };
        if let Some(n) = direct {
            self.direct_txs.entry(n).or_default().push(id);
        }
        self.txs.insert(id, tx);
        self.send_attempt(id);
    }

    /// A client fetch's answer: every value must be signed by a writer the kind's policy
    /// allows. When one is not (the responder tampered with it, or holds garbage), the
    /// fetch is asked again of the next replica (None: re-sent), and fails with
    /// Error_Forbidden when no replica is left to ask.
    fn check_fetched(
        &mut self,
        tx: &Tx,
        op: OpId,
        responder: Option<NodeId>,
        outcome: Result<Body, pb::ErrorAns>,
    ) -> Option<Result<Body, pb::ErrorAns>> {
        let Ok(Body::FetchAns(ans)) = &outcome else {
            return Some(outcome);
        };
        let Ok(Body::FetchReq(req)) = Body::decode(tx.code, &tx.body) else {
            return Some(outcome);
        };
        let Some(resource) = Id::from_slice(&req.resource) else {
            return Some(outcome);
        };
        let mut bad = 0u64;
        for kr in &ans.kind_responses {
            let Some(kind) = self.cfg.kinds.get(kr.kind) else {
                continue;
            };
            for sd in &kr.values {
                if check_signed_with(
                    kind,
                    resource,
                    sd,
                    &self.cfg.verify,
                    &mut self.keys,
                    Memo::Remember(&mut self.verified),
                )
                .is_err()
                {
                    bad += 1;
                }
            }
        }
        if bad == 0 {
            return Some(outcome);
        }
        self.stats.bad_values += bad;
        let tries = self.refetched.entry(op).or_insert(0);
        *tries += 1;
        let next = responder
            .filter(|_| self.cfg.successor_replicas && *tries <= self.cfg.refetch_replicas)
            .map(|r| Id(r.0.wrapping_add(1)));
        match next {
            Some(next) => {
                self.request(
                    Owner::Client(op),
                    Target::Route(vec![Destination::Resource(next)]),
                    Body::FetchReq(req),
                );
                None
            }
            None => {
                self.refetched.remove(&op);
                Some(Err(pb::ErrorAns {
                    code: ErrorCode::Forbidden as i32,
                    info: format!(
                        "{bad} fetched value(s) with a bad signature, on every replica asked"
                    )
                    .into_bytes(),
                }))
            }
        }
    }

    /// Sends (or re-sends) a transaction's request along its current first hop and arms
    /// its retransmission timer.
    fn send_attempt(&mut self, id: u64) {
        if !self.transmit_attempt(id) {
            return;
        }
        let Some(tx) = self.txs.get(&id) else { return };
        let attempt = tx.attempt;
        let base = if tx.direct.is_some() {
            self.rtt_direct
        } else {
            self.rtt_routed
        }
        .rto(self.cfg.request_timeout, self.cfg.max_request_timeout);
        let rto = base * 2u32.saturating_pow(attempt);
        let key = self.set_timer(self.now + rto, TimerKind::Tx { id, attempt });
        if let Some(old) = self.txs.get_mut(&id).and_then(|tx| tx.timer.replace(key)) {
            self.timers.remove(&old);
        }
    }

    /// Sends a transaction's current attempt along the route as it stands now (also used
    /// to re-route it at once when the link it left on failed). False if the transaction
    /// ended because its request cannot be encoded.
    pub(super) fn transmit_attempt(&mut self, id: u64) -> bool {
        let Some(tx) = self.txs.get(&id) else {
            return false;
        };
        let mut header = OwnedHeader {
            via: vec![Destination::Node(self.me)],
            destinations: tx.destinations.clone(),
            ..OwnedHeader::new(self.overlay_id, id, Destination::Node(self.me))
        };
        // The first attempt of a routed lookup asks for a direct answer (SPEC 8.1).
        if tx.attempt == 0
            && tx.direct.is_none()
            && self.cfg.direct_response
            && self.topology.is_peer()
            && matches!(tx.destinations.as_slice(), [Destination::Resource(_)])
        {
            if let Some(addr) = self.host_address() {
                header.options.push(p2psip_proto::ForwardingOption {
                    kind: p2psip_proto::options::DIRECT_RESPONSE,
                    flags: 0,
                    value: p2psip_proto::options::encode_address(addr),
                });
            }
        }
        let first_hop = match (tx.direct, tx.destinations.first()) {
            (Some(n), _) => n,
            (None, Some(Destination::Node(n)))
                if *n == self.me || self.topology.is_neighbor(*n) =>
            {
                *n
            }
            (None, Some(Destination::Node(n))) => match self.topology.next_hop(*n) {
                NextHop::Local => self.me,
                NextHop::Forward(x) => x,
            },
            (None, Some(Destination::Resource(r))) => match self.topology.next_hop(*r) {
                NextHop::Local => self.me,
                NextHop::Forward(n) => n,
            },
            (None, _) => self.me,
        };
        // Retransmissions go through the other first hops in turn (a neighbour that drops
        // what it should forward then stops one attempt, not all).
        let first_hop = match tx.destinations.first() {
            Some(Destination::Resource(t)) | Some(Destination::Node(t))
                if tx.direct.is_none()
                    && tx.attempt > 0
                    && first_hop != self.me
                    && self.cfg.retry_other_first_hop =>
            {
                let alts = self.topology.next_hop_alternatives(*t);
                match alts.len() {
                    0 => first_hop,
                    n => alts[(tx.attempt as usize - 1) % n],
                }
            }
            _ => first_hop,
        };
        let routed = tx.direct.is_none();
        let unsigned = self.link_proves(first_hop, &tx.destinations);
        if !unsigned && tx.security.is_none() {
            let s = self.security_block(id, tx.code, &tx.body);
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.security = Some(s);
            }
        }
        let Some(tx) = self.txs.get(&id) else {
            return false;
        };
        let security = match &tx.security {
            Some(s) if !unsigned => s.as_slice(),
            _ => &[],
        };
        match encode_parts(&header, tx.code, &tx.body, security) {
            Ok(bytes) => {
                self.transmit(first_hop, bytes);
                // A direct request has nowhere else to go: only routed ones are re-routed.
                if routed {
                    self.remember_sent(first_hop, Resend::Tx(id));
                }
                true
            }
            Err(e) => {
                if let Some(tx) = self.take_tx(id) {
                    let err = pb::ErrorAns {
                        code: e.error_code() as i32,
                        info: e.to_string().into_bytes(),
                    };
                    self.complete(tx, None, 0, Err(err));
                }
                false
            }
        }
    }

    pub(super) fn on_tx_timer(&mut self, id: u64, attempt: u32) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.attempt != attempt {
            return;
        }
        if attempt < self.cfg.retransmissions {
            tx.attempt += 1;
            tx.span
                .in_scope(|| tracing::debug!(attempt = tx.attempt, "no answer: retransmitting"));
            self.stats.retransmissions += 1;
            self.send_attempt(id);
            return;
        }
        self.stats.timeouts += 1;
        if let Some(tx) = self.take_tx(id) {
            let direct = tx.direct;
            let err = pb::ErrorAns {
                code: ErrorCode::RequestTimeout as i32,
                info: format!("no answer after {} attempts", attempt + 1).into_bytes(),
            };
            self.complete(tx, None, 0, Err(err));
            if let Some(n) = direct {
                self.link_failed(n);
            }
        }
    }

    /// Removes transaction `id`, and its entry in the index of direct requests.
    fn take_tx(&mut self, id: u64) -> Option<Tx> {
        let tx = self.txs.remove(&id)?;
        self.disarm(&tx);
        if let Some(n) = tx.direct {
            if let Some(ids) = self.direct_txs.get_mut(&n) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.direct_txs.remove(&n);
                }
            }
        }
        Some(tx)
    }

    /// Removes an ended transaction's retransmission timer.
    fn disarm(&mut self, tx: &Tx) {
        if let Some(key) = tx.timer {
            self.timers.remove(&key);
        }
    }

    /// The link to `n` failed: requests sent straight to it cannot be answered, and end
    /// now instead of after their retransmissions.
    pub(super) fn fail_direct_requests(&mut self, n: NodeId) {
        let ids = self.direct_txs.remove(&n).unwrap_or_default();
        for id in ids {
            if let Some(tx) = self.txs.remove(&id) {
                self.disarm(&tx);
                self.stats.timeouts += 1;
                let err = pb::ErrorAns {
                    code: ErrorCode::RequestTimeout as i32,
                    info: b"the link to the node failed".to_vec(),
                };
                self.complete(tx, None, 0, Err(err));
            }
        }
    }

    /// An answer arrived for transaction `id`.
    pub(super) fn on_answer(
        &mut self,
        id: u64,
        responder: Option<NodeId>,
        hops: u32,
        outcome: Result<Body, pb::ErrorAns>,
    ) {
        match self.take_tx(id) {
            Some(tx) => {
                if tx.attempt == 0 {
                    // Karn's rule: only an unambiguous round trip is a sample.
                    let rtt = self.now.since(tx.started);
                    if let Some(n) = tx.direct {
                        self.rtt_direct.sample(rtt);
                        if outcome.is_ok() {
                            if self.node_rtts.len() >= super::NODE_RTTS_MAX
                                && !self.node_rtts.contains_key(&n)
                            {
                                // Start over (the map only guides choices); not "remove
                                // any one", whose pick would follow the hash map's random
                                // order and make runs differ.
                                self.node_rtts.clear();
                            }
                            self.node_rtts.insert(n, rtt);
                        }
                    } else {
                        self.rtt_routed.sample(rtt);
                    }
                }
                self.complete(tx, responder, hops, outcome)
            }
            None => self.stats.stray_answers += 1,
        }
    }

    fn complete(
        &mut self,
        tx: Tx,
        responder: Option<NodeId>,
        hops: u32,
        outcome: Result<Body, pb::ErrorAns>,
    ) {
        tx.span.in_scope(|| {
            let latency_ms = self.now.since(tx.started).as_secs_f64() * 1e3;
            match &outcome {
                Ok(b) => tracing::debug!(
                    answer = b.method_name(),
                    ?responder,
                    hops,
                    latency_ms,
                    "answered"
                ),
                Err(e) => tracing::debug!(
                    code = e.code,
                    info = %String::from_utf8_lossy(&e.info),
                    hops,
                    latency_ms,
                    "failed"
                ),
            }
        });
        match tx.owner {
            Owner::Topology(token) => {
                let answer = outcome.as_ref();
                self.with_topology(|t, ctx| t.on_answer(ctx, token, responder, answer));
            }
            Owner::Client(op) => {
                let outcome = match self.check_fetched(&tx, op, responder, outcome) {
                    Some(o) => o,
                    None => return, // asked again of another replica
                };
                self.refetched.remove(&op);
                let outcome = outcome.map_err(|e| OpError {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                    info: String::from_utf8_lossy(&e.info).into_owned(),
                });
                self.events.push_back(Event::Completed {
                    op,
                    method: tx.method,
                    outcome,
                    hops,
                    latency: self.now.since(tx.started),
                    responder,
                });
            }
            Owner::Replicate { resource, to } => {
                self.replicating.remove(&(resource, to));
                self.copy_done(to);
                if outcome.is_ok() {
                    let s = self.synced.entry(resource).or_default();
                    if !s.contains(&to) {
                        s.push(to);
                    }
                }
            }
            Owner::Handover { resource } => {
                let kinds = self.handing_over.remove(&resource).unwrap_or_default();
                if outcome.is_ok() {
                    self.handover_done(resource, &kinds);
                }
            }
            Owner::LeaveHandover => {
                self.leave_pending = self.leave_pending.saturating_sub(1);
                if self.leave_pending == 0 {
                    self.finish_leave();
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::core::{CoreConfig, OverlayNode};
    use crate::id::{Id, NodeId};
    use crate::storage::MemoryStore;
    use crate::time::Time;
    use crate::topology::{
        Answer, Ctx, LinkEvent, NextHop, RoutingSnapshot, Target, TimerId, Topology,
    };
    use p2psip_proto::pb::{self, ErrorCode};
    use p2psip_proto::security::Identity;
    use p2psip_proto::Body;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Answers seen: (token, answered with an error, when).
    pub(in crate::core) type Seen = Arc<Mutex<Vec<(u64, bool, Time)>>>;

    /// An algorithm that, once started, sends one direct request to each node of `sends`
    /// (in that order) and records the answers; alone in its overlay, it is responsible
    /// for every id.
    pub(in crate::core) struct Prober {
        pub me: NodeId,
        pub sends: Vec<NodeId>,
        pub seen: Seen,
        /// Nodes after this one in every replica set.
        pub replicas: Vec<NodeId>,
    }

    /// A node that holds data for others: its topology a Prober that sends nothing, with
    /// `replicas` after it in every replica set; on `store`, started at `t` alone.
    pub(in crate::core) fn holder(
        cfg: CoreConfig,
        identity: Identity,
        replicas: &[NodeId],
        store: Box<dyn crate::storage::Storage>,
        seed: u64,
        t: Time,
    ) -> OverlayNode {
        let me = identity.node_id;
        let topology = Prober {
            me,
            sends: Vec::new(),
            seen: Seen::default(),
            replicas: replicas.to_vec(),
        };
        let mut node = OverlayNode::new(cfg, identity, Box::new(topology), store, seed);
        node.start(t, &[]);
        node
    }

    impl Topology for Prober {
        fn name(&self) -> &'static str {
            "prober"
        }
        fn local_id(&self) -> NodeId {
            self.me
        }
        fn is_joined(&self) -> bool {
            true
        }
        fn next_hop(&self, _target: Id) -> NextHop {
            NextHop::Local
        }
        fn is_neighbor(&self, _node: NodeId) -> bool {
            false
        }
        fn replica_set(&self, _resource: Id) -> Vec<NodeId> {
            std::iter::once(self.me)
                .chain(self.replicas.iter().copied())
                .collect()
        }
        fn start(&mut self, ctx: &mut Ctx<'_>, _bootstrap: &[NodeId]) {
            for n in &self.sends {
                let req = pb::UpdateReq {
                    algorithm: "prober".into(),
                    overlay_specific: Vec::new(),
                };
                ctx.request(Target::Direct(*n), req);
            }
        }
        fn on_request(
            &mut self,
            _ctx: &mut Ctx<'_>,
            _from: crate::topology::Origin,
            _body: &Body,
        ) -> Result<Body, (ErrorCode, String)> {
            Err((ErrorCode::Unspecified, "not here".into()))
        }
        fn on_answer(
            &mut self,
            ctx: &mut Ctx<'_>,
            token: u64,
            _responder: Option<NodeId>,
            answer: Answer<'_>,
        ) {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push((token, answer.is_err(), ctx.now));
            }
        }
        fn on_link(&mut self, _ctx: &mut Ctx<'_>, _event: LinkEvent) {}
        fn on_timer(&mut self, _ctx: &mut Ctx<'_>, _timer: TimerId) {}
        fn leave(&mut self, _ctx: &mut Ctx<'_>) {}
        fn routing_table(&self) -> RoutingSnapshot {
            RoutingSnapshot::default()
        }
    }

    #[test]
    fn a_failed_link_ends_the_requests_sent_straight_to_it_in_order() {
        let (me, a, b) = (Id(1), Id(100), Id(200));
        let seen = Seen::default();
        let prober = Prober {
            me,
            sends: vec![a, b, a, b, a],
            seen: seen.clone(),
            replicas: Vec::new(),
        };
        let mut node = OverlayNode::new(
            CoreConfig::default(),
            Identity::from_seed([7; 32], "prober"),
            Box::new(prober),
            Box::new(MemoryStore::new()),
            1,
        );
        node.start(Time(0), &[]);
        assert_eq!(node.pending_transactions(), 5);

        // Long before any retransmission timer: A's link fails.
        let t = Time(0) + Duration::from_millis(10);
        node.handle_link(t, LinkEvent::Failed(a));
        let got = seen.lock().map(|s| s.clone()).unwrap_or_default();
        // Tokens are handed out in sending order: A's requests were 1, 3 and 5.
        assert_eq!(
            got,
            vec![(1, true, t), (3, true, t), (5, true, t)],
            "A's three requests end at once, in the order they were sent"
        );
        assert_eq!(node.pending_transactions(), 2, "B's requests still wait");
        assert_eq!(node.stats().timeouts, 3);

        // A second failure of the same link finds nothing left to end.
        node.handle_link(t, LinkEvent::Failed(a));
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 3);

        node.handle_link(t, LinkEvent::Failed(b));
        assert_eq!(node.pending_transactions(), 0);
        let got = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(&got[3..], &[(2, true, t), (4, true, t)]);
    }

    /// A transaction that ends takes its retransmission timer with it: an idle node is
    /// not woken for requests long answered.
    #[test]
    fn an_ended_transaction_leaves_no_timer_behind() {
        let (me, a, b) = (Id(1), Id(100), Id(200));
        let prober = Prober {
            me,
            sends: vec![a, b],
            seen: Seen::default(),
            replicas: Vec::new(),
        };
        let cfg = CoreConfig::default();
        let last_retry = cfg.max_request_timeout * (cfg.retransmissions + 1);
        let mut node = OverlayNode::new(
            cfg,
            Identity::from_seed([8; 32], "prober"),
            Box::new(prober),
            Box::new(MemoryStore::new()),
            1,
        );
        node.start(Time(0), &[]);
        assert_eq!(node.pending_transactions(), 2);
        let armed = node.poll_timeout();
        assert!(armed.is_some_and(|t| t < Time(0) + last_retry), "{armed:?}");
        let t = Time(0) + Duration::from_millis(10);
        node.handle_link(t, LinkEvent::Failed(a));
        node.handle_link(t, LinkEvent::Failed(b));
        assert_eq!(node.pending_transactions(), 0);
        let next = node.poll_timeout();
        assert!(
            next.is_some_and(|n| n > Time(0) + last_retry),
            "the next wake-up is a retransmission timer of an ended request: {next:?}"
        );
    }
}
