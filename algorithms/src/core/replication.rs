//! Replication: the responsible peer copies every change to its replica set; on every
//! change of responsibility each stored resource is re-checked: the responsible peer
//! pushes to new replicas, a replica pushes to a new responsible peer, and a peer that is
//! no longer in the replica set hands the data over and then drops it.

use super::transactions::Owner;
use super::OverlayNode;
use crate::id::{Id, NodeId};
use crate::topology::Target;
use p2psip_proto::pb;
use p2psip_proto::{Body, Destination};
use std::collections::{HashMap, VecDeque};

/// Writers' answers held at most; beyond, stores are answered at once (the bound on what
/// back-pressure may hold in memory).
const BACKPRESSURED_MAX: usize = 4096;

/// The copies to one replica: how many are in flight, and the resources waiting for
/// room (each once, with the kinds to copy and its replica number). A waiting copy is
/// built when it leaves, from what is held then, so repeated writes to a resource wait
/// as one copy.
#[derive(Debug, Default)]
pub(super) struct Window {
    in_flight: usize,
    waiting: VecDeque<Id>,
    kinds: HashMap<Id, (Vec<u32>, u32)>,
}

impl OverlayNode {
    /// A Merge store carrying everything held for `resource` in `kinds`.
    pub(super) fn replica_body(
        &self,
        resource: Id,
        kinds: &[u32],
        replica_number: u32,
    ) -> Option<pb::StoreReq> {
        let kind_data: Vec<pb::StoreKindData> = kinds
            .iter()
            .filter_map(|k| {
                self.store.get(resource, *k).map(|d| pb::StoreKindData {
                    kind: *k,
                    generation_counter: d.generation,
                    values: d.values.into_values().collect(),
                })
            })
            .collect();
        (!kind_data.is_empty()).then(|| pb::StoreReq {
            resource: resource.to_bytes().to_vec(),
            replica_number,
            kind_data,
        })
    }

    fn push(&mut self, resource: Id, kinds: &[u32], to: NodeId, replica_number: u32) {
        if self.replicating.contains(&(resource, to)) {
            return;
        }
        if self.send_copy(resource, kinds, to, replica_number) {
            self.replicating.insert((resource, to));
        }
    }

    /// Sends the copies of the changes whose answers have left.
    pub(super) fn release_replication(&mut self) {
        for (resource, kinds, rs) in std::mem::take(&mut self.held_replication) {
            self.push_to_replicas(resource, &kinds, &rs);
        }
    }

    /// After a change at the responsible peer: copy the changed kinds to the replicas.
    pub(super) fn push_to_replicas(&mut self, resource: Id, kinds: &[u32], rs: &[NodeId]) {
        for (i, n) in rs.iter().enumerate().skip(1) {
            self.send_copy(resource, kinds, *n, i as u32);
        }
    }

    /// Sends a copy of `kinds` of `resource` to `to` when its window has room, or has it
    /// wait (merged with a copy of the same resource already waiting). False when there
    /// is nothing to copy.
    fn send_copy(&mut self, resource: Id, kinds: &[u32], to: NodeId, replica_number: u32) -> bool {
        let cap = self.cfg.replication_window.max(1);
        if let Some(w) = self
            .replica_window
            .get_mut(&to)
            .filter(|w| w.in_flight >= cap)
        {
            match w.kinds.get_mut(&resource) {
                Some((waiting_kinds, number)) => {
                    for k in kinds {
                        if !waiting_kinds.contains(k) {
                            waiting_kinds.push(*k);
                        }
                    }
                    *number = replica_number;
                }
                None => {
                    w.kinds.insert(resource, (kinds.to_vec(), replica_number));
                    w.waiting.push_back(resource);
                    self.stats.replication_waiting += 1;
                }
            }
            return true;
        }
        let Some(body) = self.replica_body(resource, kinds, replica_number) else {
            return false;
        };
        self.replica_window.entry(to).or_default().in_flight += 1;
        self.stats.replication_stores += 1;
        self.request(
            Owner::Replicate { resource, to },
            Target::Direct(to),
            body.into(),
        );
        true
    }

    /// Copies waiting for room in the replicas' windows, over all replicas.
    pub(super) fn copies_waiting(&self) -> usize {
        self.replica_window.values().map(|w| w.waiting.len()).sum()
    }

    /// Answers a writer's store now, or holds the answer while `replication_backlog`
    /// copies or more wait (or earlier answers are held): a writer faster
    /// than replication is slowed to its pace instead of leaving a backlog that delays
    /// everyone's requests for seconds (proto/SPEC.md 6).
    pub(super) fn answer_store(&mut self, reply: super::routing::Reply, body: Body) {
        let cap = self.cfg.replication_backlog;
        let lagging = cap > 0
            && (!self.backpressured.is_empty() || self.copies_waiting() >= cap)
            && self.backpressured.len() < BACKPRESSURED_MAX;
        if lagging {
            self.stats.stores_backpressured += 1;
            self.backpressured.push_back((reply, body));
        } else {
            self.send_reply(reply, &body);
        }
    }

    /// Sends the held answers as far as the backlog allows.
    fn release_answers(&mut self) {
        let cap = self.cfg.replication_backlog;
        while !self.backpressured.is_empty() && (cap == 0 || self.copies_waiting() < cap) {
            if let Some((reply, body)) = self.backpressured.pop_front() {
                self.send_reply(reply, &body);
            }
        }
    }

    /// A copy to `to` was answered (or failed): the next waiting ones leave.
    pub(super) fn copy_done(&mut self, to: NodeId) {
        self.copy_window_moves(to);
        self.release_answers();
    }

    fn copy_window_moves(&mut self, to: NodeId) {
        let cap = self.cfg.replication_window.max(1);
        if let Some(w) = self.replica_window.get_mut(&to) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
        loop {
            let Some(w) = self.replica_window.get_mut(&to) else {
                return;
            };
            if w.in_flight >= cap {
                return;
            }
            let Some(resource) = w.waiting.pop_front() else {
                if w.in_flight == 0 {
                    self.replica_window.remove(&to);
                }
                return;
            };
            let Some((kinds, number)) = w.kinds.remove(&resource) else {
                continue;
            };
            if !self.send_copy(resource, &kinds, to, number) {
                // Nothing held for it any more.
                self.replicating.remove(&(resource, to));
            }
        }
    }

    /// `to` is gone: the copies waiting for it are dropped (a new replica set gets its
    /// own copies from check_replication).
    pub(super) fn forget_copies_to(&mut self, to: NodeId) {
        if let Some(w) = self.replica_window.remove(&to) {
            for r in w.waiting {
                self.replicating.remove(&(r, to));
            }
        }
        self.release_answers();
    }

    /// Re-checks every stored resource against the current replica sets.
    pub(super) fn check_replication(&mut self) {
        for (resource, kinds) in self.resources() {
            let rs = self.topology.replica_set(resource);
            let synced = self.synced.get(&resource).cloned().unwrap_or_default();
            if rs.first() == Some(&self.me) {
                for (i, n) in rs.iter().enumerate().skip(1) {
                    if !synced.contains(n) {
                        self.push(resource, &kinds, *n, i as u32);
                    }
                }
            } else if rs.contains(&self.me) {
                let primary = rs[0];
                if !synced.contains(&primary) {
                    self.push(resource, &kinds, primary, 1);
                }
            } else if !self.handing_over.contains_key(&resource) {
                if let Some(body) = self.replica_body(resource, &kinds, 1) {
                    self.handing_over.insert(resource, kinds.clone());
                    self.stats.replication_stores += 1;
                    self.request(
                        Owner::Handover { resource },
                        Target::Route(vec![Destination::Resource(resource)]),
                        body.into(),
                    );
                }
            }
        }
    }

    /// The responsible peer took the data: drop it if this node is still not a replica.
    /// (The kinds it handed over, not a scan of every stored key: a peer that hands over
    /// thousands of resources did that scan, and its sort, for each.)
    pub(super) fn handover_done(&mut self, resource: Id, kinds: &[u32]) {
        if !self.topology.replica_set(resource).contains(&self.me) {
            for k in kinds {
                if self.store.get(resource, *k).is_some() {
                    self.write_data(resource, *k, None);
                }
            }
            self.synced.remove(&resource);
        }
    }
}
