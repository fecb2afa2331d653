//! Links on demand, as pure state: a message for a node without a link waits here while
//! the driver sets one up — a connection to an address this node knows for it, or an
//! Attach through a linked peer that asks the node for its candidates — and leaves when
//! the link comes up; held messages are dropped when no link can be set up. The daemon's
//! runtime drives it; the decisions (which way, through whom, what is dropped) are here
//! so that unit tests reach them.

use crate::core::{OpError, OpId};
use crate::id::NodeId;
use crate::topology::RoutingSnapshot;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// Messages held at most for one node without a link; the oldest go first.
pub const PENDING_CAP: usize = 256;

/// How the driver sets up a link to a node it has messages for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Connect to the address this node knows for it.
    Connect(SocketAddr),
    /// Send an Attach to it through the linked peer `via` and connect to the address
    /// the answer gives ([`Links::attaching`], then [`Links::attach_done`]).
    Attach { via: NodeId },
    /// No way to reach it: the held messages are dropped; the core is told the link failed.
    Unreachable,
}

/// What an Attach this node sent came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Connect to `addr`, the node's first direct candidate.
    Connect { node: NodeId, addr: SocketAddr },
    /// No usable address: the held messages were dropped; the core is told the link failed.
    Failed(NodeId),
}

/// Addresses known for nodes, messages waiting for links, and the Attaches under way.
#[derive(Debug, Default)]
pub struct Links {
    addrs: HashMap<NodeId, SocketAddr>,
    pending: HashMap<NodeId, VecDeque<Vec<u8>>>,
    attaching: HashMap<OpId, NodeId>,
}

impl Links {
    /// The address known for `node` (it connected, answered an Attach, or a direct
    /// response named it).
    pub fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.addrs.get(&node).copied()
    }

    /// Remembers where `node` can be reached.
    pub fn learn(&mut self, node: NodeId, addr: SocketAddr) {
        self.addrs.insert(node, addr);
    }

    /// Messages held for `node`.
    pub fn held(&self, node: NodeId) -> usize {
        self.pending.get(&node).map_or(0, VecDeque::len)
    }

    /// Holds `bytes` for `to`, which has no link. For the first message held for it, how
    /// to set one up: connect to its known address, else Attach through `via()` (a linked
    /// peer; None when this node has none to ask, or does not route); None while a setup
    /// is already under way. Unreachable drops what was held.
    pub fn hold(
        &mut self,
        to: NodeId,
        bytes: Vec<u8>,
        via: impl FnOnce() -> Option<NodeId>,
    ) -> Option<Setup> {
        let fresh = !self.pending.contains_key(&to);
        let q = self.pending.entry(to).or_default();
        if q.len() >= PENDING_CAP {
            q.pop_front();
        }
        q.push_back(bytes);
        if !fresh {
            return None;
        }
        if let Some(a) = self.addr(to) {
            return Some(Setup::Connect(a));
        }
        match via() {
            Some(via) => Some(Setup::Attach { via }),
            None => {
                self.pending.remove(&to);
                Some(Setup::Unreachable)
            }
        }
    }

    /// The Attach `op` asks `to` for its candidates (a held message's, or a move of a
    /// client to its responsible peer).
    pub fn attaching(&mut self, op: OpId, to: NodeId) {
        self.attaching.insert(op, to);
    }

    /// Transaction `op` completed: None if it is no Attach of ours; else connect to the
    /// address its answer gave (`addr`), or give up on the node.
    pub fn attach_done(&mut self, op: OpId, addr: Option<SocketAddr>) -> Option<Attached> {
        let node = self.attaching.remove(&op)?;
        Some(match addr {
            Some(addr) => {
                self.addrs.insert(node, addr);
                Attached::Connect { node, addr }
            }
            None => {
                self.pending.remove(&node);
                Attached::Failed(node)
            }
        })
    }

    /// A link to `node` at `addr` came up: the messages held for it, oldest first.
    pub fn link_up(&mut self, node: NodeId, addr: SocketAddr) -> Vec<Vec<u8>> {
        self.addrs.insert(node, addr);
        self.pending
            .remove(&node)
            .map(Vec::from)
            .unwrap_or_default()
    }

    /// A connection to `node` failed: what was held for it and its address are dropped.
    pub fn connect_failed(&mut self, node: NodeId) {
        self.pending.remove(&node);
        self.addrs.remove(&node);
    }
}

/// The address an Attach's outcome gives to connect to: the first direct candidate of
/// its answer (None for any other outcome), what [`Links::attach_done`] takes.
pub fn attach_address(outcome: &Result<p2psip_proto::Body, OpError>) -> Option<SocketAddr> {
    match outcome {
        Ok(p2psip_proto::Body::AttachAns(a)) => crate::reach::reach_of(&a.candidates)
            .direct
            .first()
            .copied(),
        _ => None,
    }
}

/// The node an Attach to `to` goes through: a linked peer of the routing table
/// (successors, predecessors, fingers) or a bootstrap peer, and only when there is none,
/// `any_link`. Not any link first: a client linked to this node (one that chose it as its
/// admitting peer) does not route, and every Attach sent through it was lost (a just-joined
/// peer then timed out on all its neighbours at once and went on alone).
pub fn attach_via(
    rt: &RoutingSnapshot,
    boot_ids: &[NodeId],
    to: NodeId,
    linked: impl Fn(NodeId) -> bool,
    any_link: impl FnOnce() -> Option<NodeId>,
) -> Option<NodeId> {
    rt.successors
        .iter()
        .chain(&rt.predecessors)
        .chain(&rt.fingers)
        .chain(boot_ids)
        .copied()
        .find(|n| *n != to && linked(*n))
        .or_else(any_link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        crate::Id(u128::from(i))
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    #[test]
    fn the_first_held_message_sets_up_a_link_and_the_link_takes_them_all() {
        let mut l = Links::default();
        assert_eq!(
            l.hold(n(1), vec![1], || Some(n(9))),
            Some(Setup::Attach { via: n(9) })
        );
        // A setup is under way: nothing more to do for the next ones.
        assert_eq!(l.hold(n(1), vec![2], || panic!("asked twice")), None);
        l.attaching(OpId(7), n(1));
        assert_eq!(l.attach_done(OpId(8), None), None, "not our Attach");
        assert_eq!(
            l.attach_done(OpId(7), Some(addr(4000))),
            Some(Attached::Connect {
                node: n(1),
                addr: addr(4000)
            })
        );
        assert_eq!(l.link_up(n(1), addr(4000)), vec![vec![1], vec![2]]);
        assert_eq!(l.held(n(1)), 0);
        // Known now: the next message after the link went down connects at once.
        assert_eq!(
            l.hold(n(1), vec![3], || None),
            Some(Setup::Connect(addr(4000)))
        );
    }

    #[test]
    fn nothing_to_ask_or_no_address_drops_what_was_held() {
        let mut l = Links::default();
        assert_eq!(l.hold(n(2), vec![1], || None), Some(Setup::Unreachable));
        assert_eq!(l.held(n(2)), 0);
        assert_eq!(
            l.hold(n(3), vec![1], || Some(n(9))),
            Some(Setup::Attach { via: n(9) })
        );
        l.attaching(OpId(1), n(3));
        assert_eq!(l.attach_done(OpId(1), None), Some(Attached::Failed(n(3))));
        assert_eq!(l.held(n(3)), 0);
        // A failed connection forgets the address too: the next try asks again.
        l.learn(n(4), addr(1));
        assert_eq!(
            l.hold(n(4), vec![1], || None),
            Some(Setup::Connect(addr(1)))
        );
        l.connect_failed(n(4));
        assert_eq!((l.held(n(4)), l.addr(n(4))), (0, None));
        assert_eq!(
            l.hold(n(4), vec![1], || Some(n(9))),
            Some(Setup::Attach { via: n(9) })
        );
    }

    #[test]
    fn at_most_pending_cap_messages_wait_the_oldest_go_first() {
        let mut l = Links::default();
        for i in 0..(PENDING_CAP + 10) {
            l.hold(n(5), (i as u32).to_be_bytes().to_vec(), || Some(n(9)));
        }
        let out = l.link_up(n(5), addr(2));
        assert_eq!(out.len(), PENDING_CAP);
        assert_eq!(out[0], 10u32.to_be_bytes().to_vec());
    }

    #[test]
    fn attaches_go_through_routing_peers_before_any_link() {
        let rt = RoutingSnapshot {
            successors: vec![n(1), n(2)],
            predecessors: vec![n(3)],
            fingers: vec![n(4)],
            ..RoutingSnapshot::default()
        };
        let linked = |x: NodeId| x == n(3) || x == n(4) || x == n(8);
        // The first linked routing peer, not the target itself, not the client link.
        assert_eq!(
            attach_via(&rt, &[], n(1), linked, || Some(n(8))),
            Some(n(3))
        );
        assert_eq!(
            attach_via(&rt, &[], n(3), linked, || Some(n(8))),
            Some(n(4))
        );
        // A bootstrap peer before any other link.
        let only_boot = |x: NodeId| x == n(6) || x == n(8);
        assert_eq!(
            attach_via(&rt, &[n(6)], n(1), only_boot, || Some(n(8))),
            Some(n(6))
        );
        // Any link only when nothing else is linked.
        assert_eq!(
            attach_via(&rt, &[n(6)], n(1), |_| false, || Some(n(8))),
            Some(n(8))
        );
        assert_eq!(attach_via(&rt, &[], n(1), |_| false, || None), None);
    }
}
