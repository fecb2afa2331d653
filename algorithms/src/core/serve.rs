//! Serving requests addressed to this node: topology methods go to the algorithm, data
//! methods to the storage rules.

use super::{writers_of, OverlayNode};
use crate::id::{Id, NodeId};
use crate::storage::{apply_store, fetch, find_closest, stat, Kind, KindData, StoreMode};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::Body;
use rand::Rng;

type Served = Result<Body, (ErrorCode, String)>;

fn resource_of(bytes: &[u8]) -> Result<Id, (ErrorCode, String)> {
    Id::from_slice(bytes).ok_or((
        ErrorCode::InvalidMessage,
        "resource id is not 16 bytes".into(),
    ))
}

impl OverlayNode {
    pub(super) fn serve(&mut self, origin: NodeId, body: Body) -> Served {
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
            Body::AttachReq(a) => {
                if !a.candidates.is_empty() {
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
                self.with_topology(|t, ctx| t.on_request(ctx, origin, &body))
            }
            Body::ProbeReq(_) => {
                let mut ans = self.with_topology(|t, ctx| t.on_request(ctx, origin, &body))?;
                if let Body::ProbeAns(p) = &mut ans {
                    p.num_resources = self.resources().len().min(u32::MAX as usize) as u32;
                }
                Ok(ans)
            }
            Body::StoreReq(req) => self.serve_store(req),
            Body::FetchReq(req) => Ok(Body::FetchAns(pb::FetchAns {
                kind_responses: self.per_kind(&req.resource, &req.specifiers, fetch)?,
            })),
            Body::StatReq(req) => Ok(Body::StatAns(pb::StatAns {
                kind_responses: self.per_kind(&req.resource, &req.specifiers, stat)?,
            })),
            Body::FindReq(req) => {
                let target = resource_of(&req.resource)?;
                let keys = self.store.keys();
                let mut results = Vec::new();
                for kind in req.kinds {
                    self.known_kind(kind)?;
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
                    self.events.push_back(super::Event::PeerCandidates {
                        node: origin,
                        candidates: a.candidates,
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
            Body::PingReq(_) => Ok(Body::PingAns(pb::PingAns {
                response_id: self.rng.random(),
                time: self.now.as_millis(),
            })),
            other => Err((
                ErrorCode::InvalidMessage,
                format!("{} is not served by this peer", other.method_name()),
            )),
        }
    }

    /// One answer per specifier of a Fetch or Stat, from the stored data of its kind.
    fn per_kind<T>(
        &self,
        resource: &[u8],
        specifiers: &[pb::StoredDataSpecifier],
        answer: impl Fn(Option<&KindData>, &pb::StoredDataSpecifier, u64) -> T,
    ) -> Result<Vec<T>, (ErrorCode, String)> {
        let resource = resource_of(resource)?;
        let now_ms = self.now.as_millis();
        specifiers
            .iter()
            .map(|spec| {
                self.known_kind(spec.kind)?;
                let data = self.store.get(resource, spec.kind);
                Ok(answer(data.as_ref(), spec, now_ms))
            })
            .collect()
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
    fn serve_store(&mut self, req: pb::StoreReq) -> Served {
        let resource = resource_of(&req.resource)?;
        let mode = if req.replica_number == 0 {
            StoreMode::Primary
        } else {
            StoreMode::Merge
        };
        let now_ms = self.now.as_millis();
        let mut staged = Vec::with_capacity(req.kind_data.len());
        for kd in &req.kind_data {
            let kind = self.cfg.kinds.get(kd.kind).ok_or((
                ErrorCode::UnknownKind,
                format!("kind {} is not defined", kd.kind),
            ))?;
            let old = self.store.get(resource, kd.kind).unwrap_or_default();
            let mut data = old.clone();
            let changed = apply_store(
                &mut data,
                kind,
                resource,
                kd,
                mode,
                &self.cfg.verify,
                now_ms,
            )?;
            if mode == StoreMode::Primary {
                if let Some(why) = self.quota_excess(kind, &old, &data) {
                    self.stats.quota_refused += 1;
                    return Err((ErrorCode::DataTooLarge, why));
                }
            }
            staged.push((kd.kind, old, data, changed));
        }
        let rs = self.topology.replica_set(resource);
        let mut kind_responses = Vec::with_capacity(staged.len());
        let mut changed_kinds = Vec::new();
        for (kind, old, data, changed) in staged {
            kind_responses.push(pb::StoreKindResponse {
                kind,
                generation_counter: data.generation,
                replicas: rs.iter().skip(1).map(|n| n.to_bytes().to_vec()).collect(),
            });
            self.write_data_over(resource, kind, &old, Some(data));
            if changed {
                changed_kinds.push(kind);
            }
        }
        if !changed_kinds.is_empty() && rs.first() == Some(&self.me) {
            if self.store.uncommitted() {
                // Copies leave once the primary's own copy is committed (poll_transmit).
                self.held_replication.push((resource, changed_kinds, rs));
            } else {
                self.push_to_replicas(resource, &changed_kinds, &rs);
            }
        }
        Ok(Body::StoreAns(pb::StoreAns { kind_responses }))
    }
}
