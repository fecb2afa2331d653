//! Overlay diagnostics (proto/SPEC.md 4.1, after RFC 7851): the diagnostic kinds a Ping
//! asks for, and PathTrack, which tells where this peer passes a request for a
//! destination. What only the driver can see (addresses, memory, round trips, NAT state)
//! it hands in with [`OverlayNode::set_host_info`]; the rest the core knows itself.

use super::OverlayNode;
use crate::id::{Id, NodeId};
use crate::time::Time;
use crate::topology::NextHop;
use p2psip_proto::diagnostics as kinds;
use p2psip_proto::pb::{self, diagnostic_info::Value, ErrorCode};
use p2psip_proto::Body;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Entries of one list (routing table, round trips) an answer carries at most; the
/// routing table's `fingers_total` says how many there are.
pub const MAX_LIST: usize = 256;

/// The load figure (STATUS_INFO) is messages received per second over this window.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// What the driver knows about the node that the core cannot see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostInfo {
    /// Software name and version (`p2psip 0.1.0`).
    pub software: String,
    /// host:port addresses the node is reached at.
    pub addresses: Vec<String>,
    /// Resident memory of the process, bytes.
    pub memory_bytes: u64,
    /// Seconds since the machine started.
    pub machine_uptime_s: u64,
    /// Measured round trip to each linked node.
    pub neighbor_rtts: Vec<(NodeId, Duration)>,
    /// The address a peer sees this node at.
    pub reflexive: Option<String>,
    /// "public", "nat", "symmetric-nat" or "unknown".
    pub nat_state: String,
    /// Nodes the transport has a link to.
    pub links: u32,
}

/// The core's diagnostic state.
#[derive(Debug, Default)]
pub(super) struct DiagState {
    pub(super) host: HostInfo,
    /// When the node started.
    pub(super) started: Option<Time>,
    /// Messages received at the start of the current load window.
    mark: Option<(Time, u64)>,
    /// Messages per second over the last complete window.
    load: Option<f64>,
}

type Refusal = (ErrorCode, String);

impl OverlayNode {
    /// The driver's view of the host, refreshed whenever it likes (the daemon: every
    /// second); also where the load window advances.
    pub fn set_host_info(&mut self, now: Time, info: HostInfo) {
        self.diag.host = info;
        let received = self.stats.messages_received;
        match self.diag.mark {
            Some((at, n)) if now.since(at) >= LOAD_WINDOW => {
                let secs = now.since(at).as_secs_f64();
                self.diag.load = Some(received.saturating_sub(n) as f64 / secs);
                self.diag.mark = Some((now, received));
            }
            Some(_) => {}
            None => self.diag.mark = Some((now, received)),
        }
    }

    /// Who may ask for the operators' diagnostic kinds (the overlay configuration
    /// document can change it while the node runs).
    pub fn set_diagnostics_access(&mut self, open: bool, operators: Vec<NodeId>) {
        self.cfg.diagnostics_open = open;
        self.cfg.operators = operators;
    }

    /// Whether `origin` may ask this node for the operators' diagnostic kinds: the node
    /// itself, a node the configuration names as an operator, anyone when diagnostics
    /// are open.
    fn may_diagnose(&self, origin: NodeId) -> bool {
        origin == self.me || self.cfg.diagnostics_open || self.cfg.operators.contains(&origin)
    }

    /// The answers to the diagnostic kinds `asked` (duplicates answered once, unknown
    /// kinds left out), or Forbidden when one of them is for operators only and `origin`
    /// is not one.
    pub(super) fn diagnostics(
        &self,
        origin: NodeId,
        asked: &[u32],
    ) -> Result<Vec<pb::DiagnosticInfo>, Refusal> {
        let mut seen = BTreeSet::new();
        let asked: Vec<u32> = asked.iter().copied().filter(|k| seen.insert(*k)).collect();
        if asked.len() > kinds::MAX_KINDS {
            return Err((
                ErrorCode::InvalidMessage,
                format!(
                    "{} diagnostic kinds; at most {} are served",
                    asked.len(),
                    kinds::MAX_KINDS
                ),
            ));
        }
        if let Some(k) = asked.iter().find(|k| !kinds::is_public(**k)) {
            if !self.may_diagnose(origin) {
                return Err((
                    ErrorCode::Forbidden,
                    format!(
                        "diagnostic kind {} is for the overlay's operators; {origin:#} is not one",
                        kinds::kind_name(*k).unwrap_or("?")
                    ),
                ));
            }
        }
        Ok(asked
            .into_iter()
            .filter_map(|k| {
                self.diagnostic(k).map(|v| pb::DiagnosticInfo {
                    kind: k,
                    value: Some(v),
                })
            })
            .collect())
    }

    fn diagnostic(&self, kind: u32) -> Option<Value> {
        let h = &self.diag.host;
        let s = &self.stats;
        Some(match kind {
            kinds::STATUS_INFO => Value::Number(self.load().round() as u64),
            kinds::ROUTING_TABLE_SIZE => Value::Number(self.routing_entries().len() as u64),
            kinds::SOFTWARE_VERSION => Value::Text(h.software.clone()),
            kinds::MACHINE_UPTIME => Value::Number(h.machine_uptime_s),
            kinds::APP_UPTIME => Value::Number(self.uptime().as_secs()),
            kinds::MEMORY_FOOTPRINT => Value::Number(h.memory_bytes),
            kinds::DATASIZE_STORED => Value::Number(self.stored_bytes),
            kinds::INSTANCES_STORED => Value::Number(self.store.value_count() as u64),
            kinds::MESSAGES_SENT_RCVD => Value::Messages(pb::MessageCounts {
                sent: s.messages_sent,
                received: s.messages_received,
                forwarded: s.forwarded,
                served: s.served,
                dropped: s
                    .malformed
                    .saturating_add(s.wrong_overlay)
                    .saturating_add(s.loops)
                    .saturating_add(s.forged)
                    .saturating_add(s.rate_limited),
            }),
            kinds::ROUTING_TABLE => {
                let r = self.topology.routing_table();
                let ids = |v: &[NodeId]| -> Vec<Vec<u8>> {
                    v.iter()
                        .take(MAX_LIST)
                        .map(|n| n.to_bytes().to_vec())
                        .collect()
                };
                Value::RoutingTable(pb::RoutingTableInfo {
                    algorithm: r.algorithm.to_string(),
                    predecessors: ids(&r.predecessors),
                    successors: ids(&r.successors),
                    fingers: ids(&r.fingers),
                    links: h.links,
                    fingers_total: r.fingers.len().min(u32::MAX as usize) as u32,
                })
            }
            kinds::STORAGE => Value::Storage(self.storage_info()),
            kinds::NEIGHBOR_RTT => Value::NeighborRtts(pb::NeighborRtts {
                neighbors: h
                    .neighbor_rtts
                    .iter()
                    .take(MAX_LIST)
                    .map(|(n, rtt)| pb::NeighborRtt {
                        node: n.to_bytes().to_vec(),
                        rtt_us: rtt.as_micros().min(u32::MAX as u128) as u32,
                    })
                    .collect(),
            }),
            kinds::NAT_STATE => Value::Nat(pb::NatInfo {
                reflexive: h.reflexive.clone().unwrap_or_default(),
                state: if h.nat_state.is_empty() {
                    "unknown".into()
                } else {
                    h.nat_state.clone()
                },
            }),
            kinds::ADDRESSES => Value::Addresses(pb::Addresses {
                addresses: h.addresses.iter().take(MAX_LIST).cloned().collect(),
            }),
            _ => return None,
        })
    }

    /// Messages received per second: over the last complete window, or since the start
    /// until one is complete.
    fn load(&self) -> f64 {
        self.diag.load.unwrap_or_else(|| {
            let secs = self.uptime().as_secs_f64();
            if secs > 0.0 {
                self.stats.messages_received as f64 / secs
            } else {
                0.0
            }
        })
    }

    fn uptime(&self) -> Duration {
        self.diag
            .started
            .map_or(Duration::ZERO, |t| self.now.since(t))
    }

    /// Distinct nodes in the routing table.
    fn routing_entries(&self) -> BTreeSet<NodeId> {
        let r = self.topology.routing_table();
        r.predecessors
            .into_iter()
            .chain(r.successors)
            .chain(r.fingers)
            .collect()
    }

    fn storage_info(&self) -> pb::StorageInfo {
        let mut per_kind: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        let keys = self.store.keys();
        let mut resources = BTreeSet::new();
        for (r, k) in &keys {
            resources.insert(*r);
            let n = self.store.get(*r, *k).map_or(0, |d| d.values.len() as u64);
            let e = per_kind.entry(*k).or_default();
            e.0 = e.0.saturating_add(1);
            e.1 = e.1.saturating_add(n);
        }
        pb::StorageInfo {
            resources: resources.len().min(u32::MAX as usize) as u32,
            values: per_kind.values().map(|v| v.1).sum(),
            bytes: self.stored_bytes,
            kinds: per_kind
                .into_iter()
                .map(|(kind, (resources, values))| pb::KindCount {
                    kind,
                    resources,
                    values,
                })
                .collect(),
        }
    }

    /// PathTrack: where this peer passes a request for the destination, with the
    /// diagnostic kinds asked, and the via list the PathTrack itself came along.
    pub(super) fn serve_path_track(
        &self,
        origin: NodeId,
        req: pb::PathTrackReq,
        via: Vec<NodeId>,
    ) -> Result<Body, Refusal> {
        let Some(dest) = Id::from_slice(&req.destination) else {
            return Err((
                ErrorCode::InvalidMessage,
                "destination is not 16 bytes".into(),
            ));
        };
        let diagnostics = self.diagnostics(origin, &req.diagnostic_kinds)?;
        let (next, responsible) = if dest == self.me {
            (self.me, true)
        } else if self.links.contains(&dest) || self.topology.is_neighbor(dest) {
            // A request for a node this one is linked to goes straight there (routing
            // does the same), and a resource with that id is the node's own.
            (dest, false)
        } else {
            match self.topology.next_hop(dest) {
                NextHop::Forward(x) => (x, false),
                NextHop::Local => (self.me, true),
            }
        };
        Ok(Body::PathTrackAns(pb::PathTrackAns {
            next_hop: next.to_bytes().to_vec(),
            responsible,
            diagnostics,
            via: via.iter().map(|n| n.to_bytes().to_vec()).collect(),
        }))
    }

    // ---- client operations ------------------------------------------------------------

    /// A diagnostic Ping of the node `node`, asking for `kinds` (proto/SPEC.md 4.1).
    pub fn diagnose(&mut self, now: Time, node: NodeId, kinds: Vec<u32>) -> super::OpId {
        let body = pb::PingReq {
            padding: Vec::new(),
            diagnostic_kinds: kinds,
        };
        self.client_request(
            now,
            crate::topology::Target::Route(vec![p2psip_proto::Destination::Node(node)]),
            body.into(),
        )
    }

    /// PathTrack for `destination`, asked of the node `at` (routed to it), or, with `at`
    /// None, routed to `destination` itself so that the peer responsible for it answers
    /// with the via list the request came along.
    pub fn path_track(
        &mut self,
        now: Time,
        at: Option<NodeId>,
        destination: Id,
        kinds: Vec<u32>,
    ) -> super::OpId {
        let body = pb::PathTrackReq {
            destination: destination.to_bytes().to_vec(),
            diagnostic_kinds: kinds,
        };
        let to = match at {
            Some(n) => p2psip_proto::Destination::Node(n),
            None => p2psip_proto::Destination::Resource(destination),
        };
        self.client_request(now, crate::topology::Target::Route(vec![to]), body.into())
    }
}
