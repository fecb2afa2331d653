//! Serving requests addressed to this node: topology methods go to the algorithm, data
//! methods to the storage rules.

use super::{bytes_of, writers_of, OverlayNode};
use crate::id::{Id, NodeId};
use crate::storage::{
    apply_store, fetch, find_closest, stat, too_large, Budget, Kind, KindData, StoreMode, Verify,
};
use crate::topology::Origin;
use p2psip_proto::limits::{ANSWER_HEADROOM, MAX_MESSAGE_LEN, MAX_SPECIFIERS};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::{Body, Header};
use prost::Message as _;
use rand::Rng;

type Served = Result<Body, (ErrorCode, String)>;

fn resource_of(bytes: &[u8]) -> Result<Id, (ErrorCode, String)> {
    Id::from_slice(bytes).ok_or((
        ErrorCode::InvalidMessage,
        "resource id is not 16 bytes".into(),
    ))
}

/// The encoded bytes an answer body may take: what the requester accepts, and never more
/// than a message can carry.
fn answer_budget(max_len: u32) -> Budget {
    let cap = MAX_MESSAGE_LEN - ANSWER_HEADROOM;
    Budget(match max_len {
        0 => cap,
        n => (n as usize).min(cap),
    })
}

fn too_many(n: usize, what: &str) -> (ErrorCode, String) {
    (
        ErrorCode::InvalidMessage,
        format!("{n} distinct {what}; at most {MAX_SPECIFIERS} are served"),
    )
}

/// Sorts specifiers by their encoding and drops repeats: O(n log n).
fn dedup_specifiers(specs: &mut Vec<pb::StoredDataSpecifier>) {
    let mut keyed: Vec<(Vec<u8>, pb::StoredDataSpecifier)> =
        specs.drain(..).map(|s| (s.encode_to_vec(), s)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    specs.extend(keyed.into_iter().map(|(_, s)| s));
}

impl OverlayNode {
    /// Serves one request; `max_len` is the answer size the requester accepts (0: any, up
    /// to the message limit); `direct`: it came straight from its originator's link.
    pub(super) fn serve(
        &mut self,
        origin: NodeId,
        body: Body,
        h: &Header<'_>,
        direct: bool,
    ) -> Served {
        let mut budget = answer_budget(h.max_response_len);
        if !self.topology.is_peer()
            && !matches!(
                body,
                Body::PingReq(_)
                    | Body::AttachReq(_)
                    | Body::AppAttachReq(_)
                    | Body::ConfigUpdateReq(_)
            )
        {
            return Err((
                ErrorCode::Forbidden,
                format!("a client does not serve {}", body.method_name()),
            ));
        }
        match body {
            Body::AttachReq(mut a) => {
                if !a.candidates.is_empty() {
                    // The driver uses at most MAX_CANDIDATES; more are not handed on.
                    a.candidates
                        .truncate(4 * p2psip_proto::limits::MAX_CANDIDATES);
                    self.events.push_back(super::Event::PeerCandidates {
                        node: origin,
                        candidates: a.candidates,
                    });
                }
                Ok(Body::AttachAns(pb::AttachAns {
                    ufrag: Vec::new(),
                    password: Vec::new(),
                    role: "passive".into(),
                    candidates: self.candidates.clone(),
                    send_update: false,
                }))
            }
            Body::JoinReq(_) | Body::UpdateReq(_) | Body::LeaveReq(_) | Body::RouteQueryReq(_) => {
                let from = Origin {
                    id: origin,
                    reached: direct,
                };
                self.with_topology(|t, ctx| t.on_request(ctx, from, &body))
            }
            Body::ProbeReq(_) => {
                let from = Origin {
                    id: origin,
                    reached: direct,
                };
                let mut ans = self.with_topology(|t, ctx| t.on_request(ctx, from, &body))?;
                if let Body::ProbeAns(p) = &mut ans {
                    p.num_resources = self.resources().len().min(u32::MAX as usize) as u32;
                }
                Ok(ans)
            }
            Body::StoreReq(req) => self.serve_store(req, origin, direct),
            Body::FetchReq(req) => Ok(Body::FetchAns(pb::FetchAns {
                kind_responses: self.per_kind(&req.resource, req.specifiers, &mut budget, fetch)?,
            })),
            Body::StatReq(req) => Ok(Body::StatAns(pb::StatAns {
                kind_responses: self.per_kind(&req.resource, req.specifiers, &mut budget, stat)?,
            })),
            Body::FindReq(mut req) => {
                let target = resource_of(&req.resource)?;
                req.kinds.sort_unstable();
                req.kinds.dedup();
                if req.kinds.len() > MAX_SPECIFIERS {
                    return Err(too_many(req.kinds.len(), "kinds"));
                }
                for kind in &req.kinds {
                    self.known_kind(*kind)?;
                }
                let keys = self.store.keys();
                let mut results = Vec::new();
                for kind in req.kinds {
                    if !budget.take(48) {
                        return Err(too_large());
                    }
                    let closest = find_closest(
                        target,
                        keys.iter().filter(|(_, k)| *k == kind).map(|(r, _)| *r),
                    );
                    results.push(pb::FindKindData {
                        kind,
                        closest: closest.map(|c| c.to_bytes().to_vec()).unwrap_or_default(),
                    });
                }
                Ok(Body::FindAns(pb::FindAns { results }))
            }
            Body::ConfigUpdateReq(update) => {
                self.events.push_back(super::Event::ConfigUpdate {
                    from: origin,
                    update,
                });
                Ok(Body::ConfigUpdateAns(pb::ConfigUpdateAns {}))
            }
            Body::AppAttachReq(a) => {
                let Some(c) = self.app_candidates.get(&a.application).cloned() else {
                    return Err((
                        ErrorCode::NotFound,
                        format!("application {} is not served here", a.application),
                    ));
                };
                if !a.candidates.is_empty() {
                    let mut candidates = a.candidates;
                    candidates.truncate(4 * p2psip_proto::limits::MAX_CANDIDATES);
                    self.events.push_back(super::Event::PeerCandidates {
                        node: origin,
                        candidates,
                    });
                }
                Ok(Body::AppAttachAns(pb::AppAttachAns {
                    ufrag: Vec::new(),
                    password: Vec::new(),
                    application: a.application,
                    role: "passive".into(),
                    candidates: c,
                }))
            }
            Body::PingReq(p) => Ok(Body::PingAns(pb::PingAns {
                response_id: self.rng.random(),
                time: self.now.as_millis(),
                diagnostics: self.diagnostics(origin, &p.diagnostic_kinds)?,
            })),
            Body::PathTrackReq(p) => {
                let via = h.via().filter_map(|d| d.id()).collect();
                self.serve_path_track(origin, p, via)
            }
            other => Err((
                ErrorCode::InvalidMessage,
                format!("{} is not served by this peer", other.method_name()),
            )),
        }
    }

    /// One answer per distinct specifier of a Fetch or Stat, from the stored data of its
    /// kind: identical specifiers are answered once, more than `MAX_SPECIFIERS` are
    /// refused before anything is read, and the answer stops at `budget`
    /// (Error_Response_Too_Large) while it is built.
    fn per_kind<T>(
        &self,
        resource: &[u8],
        mut specifiers: Vec<pb::StoredDataSpecifier>,
        budget: &mut Budget,
        answer: impl Fn(
            Option<&KindData>,
            &pb::StoredDataSpecifier,
            u64,
            &mut Budget,
        ) -> Result<T, (ErrorCode, String)>,
    ) -> Result<Vec<T>, (ErrorCode, String)> {
        let resource = resource_of(resource)?;
        let now_ms = self.now.as_millis();
        dedup_specifiers(&mut specifiers);
        if specifiers.len() > MAX_SPECIFIERS {
            return Err(too_many(specifiers.len(), "specifiers"));
        }
        for spec in &specifiers {
            self.known_kind(spec.kind)?;
        }
        // Each kind's data is read once, however many specifiers name it.
        let mut data: Vec<(u32, Option<KindData>)> = Vec::new();
        let mut out = Vec::with_capacity(specifiers.len());
        for spec in &specifiers {
            let i = match data.iter().position(|(k, _)| *k == spec.kind) {
                Some(i) => i,
                None => {
                    data.push((spec.kind, self.store.get(resource, spec.kind)));
                    data.len() - 1
                }
            };
            out.push(answer(data[i].1.as_ref(), spec, now_ms, budget)?);
        }
        Ok(out)
    }

    fn known_kind(&self, kind: u32) -> Result<(), (ErrorCode, String)> {
        match self.cfg.kinds.get(kind) {
            Some(_) => Ok(()),
            None => Err((
                ErrorCode::UnknownKind,
                format!("kind {kind} is not defined"),
            )),
        }
    }

    /// The writer quota: why `new` replacing `old` would leave a writer holding more than
    /// `writer_kind_bytes` of `kind` at this peer (None: within it).
    fn quota_excess(&self, kind: &Kind, old: &KindData, new: &KindData) -> Option<String> {
        let limit = self.cfg.writer_kind_bytes;
        if limit == 0 {
            return None;
        }
        let before = writers_of(old);
        writers_of(new).into_iter().find_map(|(w, b)| {
            let was = before.get(&w).copied().unwrap_or(0);
            let total = self.writer_bytes(kind.id, w).saturating_sub(was) + b;
            (b > was && total > limit).then(|| {
                format!(
                    "quota: writer {w} would hold {total} bytes of kind {} at this peer, \
                     {limit} allowed",
                    kind.name
                )
            })
        })
    }

    /// A Store: every kind is checked first; nothing is written unless all are accepted.
    fn serve_store(&mut self, req: pb::StoreReq, origin: NodeId, direct: bool) -> Served {
        let resource = resource_of(&req.resource)?;
        let mode = if req.replica_number == 0 {
            StoreMode::Primary
        } else {
            StoreMode::Merge
        };
        // A copy (replica_number > 0) is taken as such only straight from a node of the
        // resource's replica neighbourhood. From anyone else (a routed hand-over of a
        // former holder, or a node calling its store a copy to skip the responsible
        // peer's checks) it is held to the writer's quota, and its generation counter is
        // not believed.
        let outsider =
            mode == StoreMode::Merge && !(direct && self.topology.may_copy_to_me(origin, resource));
        let now_ms = self.now.as_millis();
        let ahead = now_ms.saturating_add(self.cfg.max_clock_skew.as_millis() as u64);
        let mut staged = Vec::with_capacity(req.kind_data.len());
        let mut growth: u64 = 0;
        for kd in &req.kind_data {
            let kind = self.cfg.kinds.get(kd.kind).ok_or((
                ErrorCode::UnknownKind,
                format!("kind {} is not defined", kd.kind),
            ))?;
            if let Some(v) = kd.values.iter().find(|v| v.storage_time > ahead) {
                return Err((
                    ErrorCode::InvalidMessage,
                    format!(
                        "storage_time {} ms is more than {} s ahead of this peer's clock ({now_ms} ms)",
                        v.storage_time,
                        self.cfg.max_clock_skew.as_secs()
                    ),
                ));
            }
            let old = self.store.get(resource, kd.kind).unwrap_or_default();
            let mut data = old.clone();
            let outsider_kd;
            let kd = if outsider {
                outsider_kd = pb::StoreKindData {
                    generation_counter: old.generation,
                    ..kd.clone()
                };
                &outsider_kd
            } else {
                kd
            };
            let changed = apply_store(
                &mut data,
                kind,
                resource,
                kd,
                mode,
                Verify {
                    mode: &self.cfg.verify,
                    keys: &mut self.keys,
                    known: &self.prechecked,
                },
                now_ms,
            )?;
            if mode == StoreMode::Primary || outsider {
                if let Some(why) = self.quota_excess(kind, &old, &data) {
                    self.stats.quota_refused += 1;
                    if outsider {
                        self.stats.copies_refused += 1;
                    }
                    return Err((ErrorCode::DataTooLarge, why));
                }
            }
            growth = growth
                .saturating_add(bytes_of(&data))
                .saturating_sub(bytes_of(&old));
            staged.push((kd.kind, old, data, changed));
        }
        let limit = self.cfg.store_bytes;
        if limit > 0 && growth > 0 && self.stored_bytes.saturating_add(growth) > limit {
            self.stats.store_full += 1;
            return Err((
                ErrorCode::OutOfSpace,
                format!("this peer holds its limit of {limit} stored bytes"),
            ));
        }
        let rs = self.topology.replica_set(resource);
        let mine = rs.contains(&self.me);
        let mut kind_responses = Vec::with_capacity(staged.len());
        let mut changed_kinds = Vec::new();
        for (kind, old, data, changed) in staged {
            kind_responses.push(pb::StoreKindResponse {
                kind,
                generation_counter: data.generation,
                replicas: rs.iter().skip(1).map(|n| n.to_bytes().to_vec()).collect(),
            });
            // A copy that changes nothing (the periodic re-push) is not written again; a
            // writer's store always moves the generation counter.
            if changed || mode == StoreMode::Primary {
                self.write_data_over(resource, kind, &old, Some(data));
            }
            if changed {
                changed_kinds.push(kind);
            }
        }
        if !changed_kinds.is_empty() && rs.first() == Some(&self.me) {
            // Copies leave after the answer, once the primary's own copy is committed
            // (deliver, or poll_transmit when the storage commits later).
            self.held_replication.push((resource, changed_kinds, rs));
        }
        if mode == StoreMode::Merge && !mine {
            // A copy from a node whose view of the replica set differs from ours (a node
            // joined in between, or our own view is still settling): looked at again once
            // both views had time to settle, and handed on then if it is still not ours,
            // instead of being held until the next full round.
            self.recheck_copies_later();
        }
        Ok(Body::StoreAns(pb::StoreAns { kind_responses }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::transactions::tests::holder;
    use crate::client::ClientTopology;
    use crate::core::{CoreConfig, Event, OverlayNode};
    use crate::storage::{KindData, MemoryStore, Storage, StorageError, KIND_USER_VALUE};
    use crate::topology::LinkEvent;
    use crate::{signed_value, Id, NodeId, Time, ValueModel};
    use p2psip_proto::pb::ErrorCode;
    use p2psip_proto::security::Identity;
    use p2psip_proto::Body;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A storage whose writes wait for `commit`, which fails while `full` is set (and then
    /// undoes them, as the daemon's database does).
    #[derive(Clone, Default)]
    struct Disk {
        inner: Arc<Mutex<(MemoryStore, MemoryStore, bool, u32)>>, // (visible, committed, full, commits)
    }

    impl Storage for Disk {
        fn get(&self, r: Id, k: u32) -> Option<KindData> {
            self.inner.lock().unwrap().0.get(r, k)
        }
        fn put(&mut self, r: Id, k: u32, d: KindData) {
            self.inner.lock().unwrap().0.put(r, k, d)
        }
        fn remove(&mut self, r: Id, k: u32) -> Option<KindData> {
            self.inner.lock().unwrap().0.remove(r, k)
        }
        fn keys(&self) -> Vec<(Id, u32)> {
            self.inner.lock().unwrap().0.keys()
        }
        fn value_count(&self) -> usize {
            self.inner.lock().unwrap().0.value_count()
        }
        fn uncommitted(&self) -> bool {
            let g = self.inner.lock().unwrap();
            g.0.keys() != g.1.keys()
                || g.0
                    .keys()
                    .iter()
                    .any(|(r, k)| g.0.get(*r, *k) != g.1.get(*r, *k))
        }
        fn commit(&mut self) -> Result<(), StorageError> {
            let mut g = self.inner.lock().unwrap();
            g.3 += 1;
            if g.2 {
                g.0 = g.1.clone();
                Err(StorageError::OutOfSpace("test disk full".into()))
            } else {
                g.1 = g.0.clone();
                Ok(())
            }
        }
    }

    /// A client stores through a lone peer backed by `disk`; returns the outcome the
    /// client saw (and checks that no answer left the peer before its commit).
    fn store_through(disk: &Disk, value: &[u8]) -> Result<Body, ErrorCode> {
        let (mut peer, mut client, writer) =
            peer_and_client(CoreConfig::default(), &[], Box::new(disk.clone()));
        let peer_id = peer.id();
        let client_id = client.id();
        let t = Time(1_000_000);
        let res = Id::hash_of(b"alice");
        let v = signed_value(
            &writer,
            res,
            KIND_USER_VALUE,
            t,
            60,
            ValueModel::Single(value.to_vec()),
        );
        client.store(t, res, KIND_USER_VALUE, vec![v], 0);
        while let Some(m) = client.poll_transmit() {
            peer.handle_message(t, client_id, &m.bytes);
        }
        let commits_before = disk.inner.lock().unwrap().3;
        let mut answered = false;
        while let Some(m) = peer.poll_transmit() {
            // The answer leaves only after the commit that holds the store.
            assert_eq!(disk.inner.lock().unwrap().3, commits_before + 1);
            client.handle_message(t, peer_id, &m.bytes);
            answered = true;
        }
        assert!(answered, "the peer never answered");
        loop {
            match client.poll_event() {
                Some(Event::Completed { outcome, .. }) => return outcome.map_err(|e| e.code),
                Some(_) => continue,
                None => panic!("the client's store never completed"),
            }
        }
    }

    #[test]
    fn a_store_is_answered_after_its_commit_and_refused_when_the_commit_fails() {
        let disk = Disk::default();
        let ok = store_through(&disk, b"one");
        assert!(matches!(ok, Ok(Body::StoreAns(_))), "{ok:?}");
        assert!(!disk.uncommitted());
        let res = Id::hash_of(b"alice");
        let kept = disk.get(res, KIND_USER_VALUE);
        assert!(kept.is_some());

        disk.inner.lock().unwrap().2 = true;
        let refused = store_through(&disk, b"two");
        assert_eq!(refused.err(), Some(ErrorCode::OutOfSpace));
        assert_eq!(
            disk.get(res, KIND_USER_VALUE),
            kept,
            "the refused store was undone"
        );
    }

    /// A lone peer (its replica sets: itself, then `replicas`, all linked) on `storage`,
    /// and the client "alice" linked to it, both started at 1 s.
    fn peer_and_client(
        cfg: CoreConfig,
        replicas: &[NodeId],
        storage: Box<dyn Storage>,
    ) -> (OverlayNode, OverlayNode, Identity) {
        let peer_identity = Identity::from_seed([7; 32], "peer");
        let peer_id = peer_identity.node_id;
        let mut peer = holder(cfg, peer_identity, replicas, storage, 1, Time(0));
        let writer = Identity::from_seed([9; 32], "alice");
        let client_id = writer.node_id;
        let mut client = OverlayNode::new(
            CoreConfig::default(),
            writer.clone(),
            Box::new(ClientTopology::new(client_id)),
            Box::new(MemoryStore::new()),
            2,
        );
        let t = Time(1_000_000);
        client.start(t, &[peer_id]);
        client.handle_link(t, LinkEvent::Up(peer_id));
        peer.handle_link(t, LinkEvent::Up(client_id));
        for r in replicas {
            peer.handle_link(t, LinkEvent::Up(*r));
        }
        while client.poll_event().is_some() {}
        (peer, client, writer)
    }

    /// A primary peer (replicas r1, r2, r3) and a client linked to it.
    fn primary_and_client(window: usize) -> (OverlayNode, OverlayNode, Identity, [NodeId; 3]) {
        let replicas = [Identity::from_seed([11; 32], "r1").node_id, Id(12), Id(13)];
        let cfg = CoreConfig {
            replication_window: window,
            ..CoreConfig::default()
        };
        let (peer, client, writer) = peer_and_client(cfg, &replicas, Box::new(MemoryStore::new()));
        (peer, client, writer, replicas)
    }

    /// `n` stores by `n` writers, each of its own resource, from `client` to `peer`.
    fn stores_of_many_writers(client: &mut OverlayNode, peer: &mut OverlayNode, t: Time, n: usize) {
        for i in 0..n {
            let name = format!("user{i}");
            let w = Identity::from_seed([i as u8 + 100; 32], &name);
            client_store(client, &w, t, &name);
        }
        while let Some(m) = client.poll_transmit() {
            peer.handle_message(t, client.id(), &m.bytes);
        }
    }

    /// The replica r1 of [`primary_and_client`] as a node, linked to `peer`.
    fn replica_r1(peer: &OverlayNode, t: Time) -> OverlayNode {
        replica_r1_on(peer, t, Box::new(MemoryStore::new()))
    }

    /// The same on `store`.
    fn replica_r1_on(peer: &OverlayNode, t: Time, store: Box<dyn Storage>) -> OverlayNode {
        let identity = Identity::from_seed([11; 32], "r1");
        let mut replica = holder(CoreConfig::default(), identity, &[], store, 3, t);
        replica.handle_link(t, LinkEvent::Up(peer.id()));
        replica
    }

    fn client_store(client: &mut OverlayNode, writer: &Identity, t: Time, name: &str) {
        let res = Id::hash_of(name.as_bytes());
        let v = signed_value(
            writer,
            res,
            KIND_USER_VALUE,
            t,
            60,
            ValueModel::Single(name.as_bytes().to_vec()),
        );
        client.store(t, res, KIND_USER_VALUE, vec![v], 0);
    }

    /// The copies to the replicas leave after the answer to the writer, so they add
    /// nothing to the store's latency.
    #[test]
    fn the_answer_to_a_store_leaves_before_its_copies() {
        let (mut peer, mut client, writer, replicas) = primary_and_client(32);
        let t = Time(1_000_000);
        client_store(&mut client, &writer, t, "alice");
        while let Some(m) = client.poll_transmit() {
            peer.handle_message(t, client.id(), &m.bytes);
        }
        let order: Vec<NodeId> = std::iter::from_fn(|| peer.poll_transmit())
            .map(|m| m.to)
            .collect();
        assert_eq!(order.first(), Some(&client.id()), "{order:?}");
        for r in replicas {
            assert!(order.contains(&r), "no copy to {r}: {order:?}");
        }
    }

    /// A replica that is slow to answer gets at most `replication_window` copies at once;
    /// the rest wait at the primary (not in the replica's queues, where they would be
    /// retransmitted as they age) and all of them arrive once it answers.
    #[test]
    fn copies_to_a_slow_replica_wait_for_room_in_its_window() {
        let window = 8;
        let (mut peer, mut client, writer, replicas) = primary_and_client(window);
        let r1 = replicas[0];
        let t = Time(1_000_000);
        let mut replica = replica_r1(&peer, t);
        assert_eq!(replica.id(), r1);
        let stores = 50;
        let _ = writer;
        stores_of_many_writers(&mut client, &mut peer, t, stores);
        let mut to_r1: Vec<Vec<u8>> = Vec::new();
        while let Some(m) = peer.poll_transmit() {
            if m.to == r1 {
                to_r1.push(m.bytes);
            }
        }
        assert_eq!(to_r1.len(), window, "copies sent before any answer");
        // The replica answers, one batch at a time: every value arrives, never more than
        // the window at once.
        let mut rounds = 0;
        while !to_r1.is_empty() {
            rounds += 1;
            assert!(rounds <= stores, "copies stopped flowing");
            assert!(to_r1.len() <= window);
            for b in to_r1.drain(..) {
                replica.handle_message(t, peer.id(), &b);
            }
            while let Some(m) = replica.poll_transmit() {
                peer.handle_message(t, r1, &m.bytes);
            }
            while let Some(m) = peer.poll_transmit() {
                if m.to == r1 {
                    to_r1.push(m.bytes);
                }
            }
        }
        assert_eq!(replica.storage().value_count(), stores);
    }

    /// A store that counts its writes (each one a durable commit on the daemon's disk).
    #[derive(Clone, Default)]
    struct CountedWrites {
        inner: Arc<Mutex<(MemoryStore, usize)>>,
    }

    impl Storage for CountedWrites {
        fn get(&self, r: Id, k: u32) -> Option<KindData> {
            self.inner.lock().unwrap().0.get(r, k)
        }
        fn put(&mut self, r: Id, k: u32, d: KindData) {
            let mut g = self.inner.lock().unwrap();
            g.1 += 1;
            g.0.put(r, k, d)
        }
        fn remove(&mut self, r: Id, k: u32) -> Option<KindData> {
            let mut g = self.inner.lock().unwrap();
            g.1 += 1;
            g.0.remove(r, k)
        }
        fn keys(&self) -> Vec<(Id, u32)> {
            self.inner.lock().unwrap().0.keys()
        }
        fn value_count(&self) -> usize {
            self.inner.lock().unwrap().0.value_count()
        }
    }

    /// Every `replication_interval` the primary sends each replica everything again: a
    /// copy that changes nothing costs the replica no write (on the daemon, no durable
    /// commit) and no signature check, while a changed value still arrives and is kept.
    #[test]
    fn the_periodic_re_push_writes_nothing_that_is_held() {
        let r1 = Identity::from_seed([11; 32], "r1").node_id;
        let every = Duration::from_secs(20);
        let cfg = CoreConfig {
            replication_interval: every,
            ..CoreConfig::default()
        };
        let (mut peer, mut client, writer) =
            peer_and_client(cfg, &[r1], Box::new(MemoryStore::new()));
        let t = Time(1_000_000);
        let disk = CountedWrites::default();
        let mut replica = replica_r1_on(&peer, t, Box::new(disk.clone()));
        let relay = |peer: &mut OverlayNode, replica: &mut OverlayNode, t: Time| {
            let to_r1: Vec<Vec<u8>> = std::iter::from_fn(|| peer.poll_transmit())
                .filter(|m| m.to == r1)
                .map(|m| m.bytes)
                .collect();
            let n = to_r1.len();
            let batch: Vec<(NodeId, &[u8])> =
                to_r1.iter().map(|b| (peer.id(), b.as_slice())).collect();
            replica.prepare(&batch);
            for b in &to_r1 {
                replica.handle_message(t, peer.id(), b);
            }
            while let Some(m) = replica.poll_transmit() {
                peer.handle_message(t, r1, &m.bytes);
            }
            n
        };
        for name in ["alice", "bob", "carol"] {
            let w = Identity::from_seed([name.len() as u8 + 40; 32], name);
            client_store(
                &mut client,
                if name == "alice" { &writer } else { &w },
                t,
                name,
            );
        }
        while let Some(m) = client.poll_transmit() {
            peer.handle_message(t, client.id(), &m.bytes);
        }
        assert_eq!(relay(&mut peer, &mut replica, t), 3);
        assert_eq!(replica.storage().value_count(), 3);
        let writes = disk.inner.lock().unwrap().1;
        let batched = replica.stats().signatures_batched;
        assert_eq!(batched, 3, "the first copies' values are checked");

        let later = Time(t.0 + every.as_micros() as u64);
        peer.handle_timeout(later);
        assert_eq!(relay(&mut peer, &mut replica, later), 3, "all re-pushed");
        assert_eq!(
            disk.inner.lock().unwrap().1,
            writes,
            "unchanged copies written again"
        );
        assert_eq!(
            replica.stats().signatures_batched,
            batched,
            "unchanged values checked again"
        );

        // A changed value still travels and is kept.
        let t2 = Time(later.0 + 1_000_000);
        client_store(&mut client, &writer, t2, "alice");
        while let Some(m) = client.poll_transmit() {
            peer.handle_message(t2, client.id(), &m.bytes);
        }
        assert_eq!(relay(&mut peer, &mut replica, t2), 1);
        assert_eq!(disk.inner.lock().unwrap().1, writes + 1);
        let res = Id::hash_of(b"alice");
        let values = |n: &OverlayNode| n.storage().get(res, KIND_USER_VALUE).map(|d| d.values);
        assert!(values(&replica).is_some());
        assert_eq!(values(&replica), values(&peer));
    }

    /// A writer faster than replication: its stores are answered while the copies
    /// waiting for the replicas stay within `replication_backlog`, the rest when they
    /// drain, so the writer slows to replication's pace instead of leaving a backlog.
    #[test]
    fn stores_are_answered_at_the_pace_of_replication() {
        let (window, backlog) = (2, 3);
        let r1 = Identity::from_seed([11; 32], "r1").node_id;
        let cfg = CoreConfig {
            replication_window: window,
            replication_backlog: backlog,
            ..CoreConfig::default()
        };
        let (mut peer, mut client, _) = peer_and_client(cfg, &[r1], Box::new(MemoryStore::new()));
        let t = Time(1_000_000);
        let mut replica = replica_r1(&peer, t);
        let stores = 10;
        stores_of_many_writers(&mut client, &mut peer, t, stores);
        let (mut answered, mut to_r1) = (0, Vec::new());
        let route = |peer: &mut OverlayNode, answered: &mut usize, to_r1: &mut Vec<Vec<u8>>| {
            while let Some(m) = peer.poll_transmit() {
                if m.to == r1 {
                    to_r1.push(m.bytes);
                } else {
                    assert_eq!(m.to, client.id());
                    *answered += 1;
                }
            }
        };
        route(&mut peer, &mut answered, &mut to_r1);
        // Two copies in flight, three waiting: five answered, five held.
        assert_eq!(to_r1.len(), window);
        assert_eq!(
            answered,
            window + backlog,
            "answers before replication caught up"
        );
        assert_eq!(
            peer.stats().stores_backpressured,
            (stores - window - backlog) as u64
        );
        let mut rounds = 0;
        while !to_r1.is_empty() {
            rounds += 1;
            assert!(rounds <= stores, "copies stopped flowing");
            for b in std::mem::take(&mut to_r1) {
                replica.handle_message(t, peer.id(), &b);
            }
            while let Some(m) = replica.poll_transmit() {
                peer.handle_message(t, r1, &m.bytes);
            }
            route(&mut peer, &mut answered, &mut to_r1);
            // A held answer leaves once fewer than `backlog` copies wait.
            let waiting = peer.copies_waiting();
            assert!(
                waiting >= backlog || answered == stores,
                "{waiting} waiting, {answered} answered"
            );
        }
        assert_eq!(
            answered, stores,
            "every store answered once its copies could leave"
        );
        assert_eq!(replica.storage().value_count(), stores);
    }
}
