//! Replication: the responsible peer copies every change to its replica set; on every
//! change of responsibility each stored resource is re-checked: the responsible peer
//! pushes to new replicas, a replica pushes to a new responsible peer, and a peer that is
//! no longer in the replica set hands the data over and then drops it.

use super::transactions::Owner;
use super::OverlayNode;
use crate::id::{Id, NodeId};
use crate::topology::Target;
use p2psip_proto::pb;
use p2psip_proto::Destination;

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
        if let Some(body) = self.replica_body(resource, kinds, replica_number) {
            self.replicating.insert((resource, to));
            self.stats.replication_stores += 1;
            self.request(
                Owner::Replicate { resource, to },
                Target::Direct(to),
                body.into(),
            );
        }
    }

    /// After a change at the responsible peer: copy the changed kinds to the replicas.
    pub(super) fn push_to_replicas(&mut self, resource: Id, kinds: &[u32], rs: &[NodeId]) {
        for (i, n) in rs.iter().enumerate().skip(1) {
            if let Some(body) = self.replica_body(resource, kinds, i as u32) {
                self.stats.replication_stores += 1;
                self.request(
                    Owner::Replicate { resource, to: *n },
                    Target::Direct(*n),
                    body.into(),
                );
            }
        }
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
            } else if !self.handing_over.contains(&resource) {
                if let Some(body) = self.replica_body(resource, &kinds, 1) {
                    self.handing_over.insert(resource);
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
    pub(super) fn handover_done(&mut self, resource: Id) {
        if !self.topology.replica_set(resource).contains(&self.me) {
            for (r, k) in self.store.keys() {
                if r == resource {
                    self.write_data(r, k, None);
                }
            }
            self.synced.remove(&resource);
        }
    }
}
