//! A peer's bootstrap, as pure state: the addresses it joins through (configured, and the
//! bootstrap cache of its last run), the Node-IDs they turned out to hold, when the first
//! bootstrap peer of a fleet stops waiting for the others and forms the overlay, and the
//! bootstrap cache to keep for the next start: only peers this node dialled and reached
//! (the handshake proved their Node-IDs), never addresses others merely gave
//! (proto/SPEC.md 5.4, "Bootstrap cache").

use crate::id::NodeId;
use crate::time::Time;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Peers kept in the bootstrap cache at most.
pub const CACHE_MAX: usize = 64;

/// What a peer that has not started yet does at its next retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Dial the bootstrap addresses again.
    Redial,
    /// The first bootstrap peer waited long enough for the others: form the overlay.
    Form,
}

/// The bootstrap addresses, what they hold, and the peers reached.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    addrs: Vec<SocketAddr>,
    ids: Vec<NodeId>,
    form_at: Option<Time>,
    reached: VecDeque<(NodeId, SocketAddr)>,
}

impl Bootstrap {
    /// Joins through `addrs` (none: this node forms a new overlay); with `form_at`, it is
    /// the first bootstrap peer of its fleet and forms the overlay itself if none of the
    /// others answered by then.
    pub fn new(addrs: Vec<SocketAddr>, form_at: Option<Time>) -> Self {
        Bootstrap {
            addrs,
            form_at,
            ..Bootstrap::default()
        }
    }

    /// The addresses to dial.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The Node-IDs of the bootstrap peers linked so far, in the order they came up.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Whether `addr` is a bootstrap address.
    pub fn is_bootstrap(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
    }

    /// A link to `node` at `addr` came up; `dialled`: this node opened it.
    pub fn link_up(&mut self, node: NodeId, addr: SocketAddr, dialled: bool) {
        if dialled {
            self.reached.retain(|(n, _)| *n != node);
            self.reached.push_back((node, addr));
            if self.reached.len() > CACHE_MAX {
                self.reached.pop_front();
            }
        }
        if self.is_bootstrap(addr) && !self.ids.contains(&node) {
            self.ids.push(node);
        }
    }

    /// The retry of a peer that has not started: dial again, or form the overlay once
    /// `form_at` has passed (it then starts without bootstrap peers).
    pub fn retry(&mut self, now: Time) -> Retry {
        if self.form_at.is_some_and(|t| now >= t) {
            self.ids.clear();
            Retry::Form
        } else {
            Retry::Redial
        }
    }

    /// The bootstrap cache to keep: the addresses of the peers reached, sorted, at most
    /// [`CACHE_MAX`].
    pub fn cache(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self.reached.iter().map(|(_, a)| *a).collect();
        peers.sort();
        peers.dedup();
        peers.truncate(CACHE_MAX);
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id;
    use std::time::Duration;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    #[test]
    fn bootstrap_ids_come_from_links_to_bootstrap_addresses_only() {
        let mut b = Bootstrap::new(vec![addr(1), addr(2)], None);
        b.link_up(Id(10), addr(9), true);
        b.link_up(Id(11), addr(2), false);
        b.link_up(Id(12), addr(1), true);
        b.link_up(Id(11), addr(2), true);
        assert_eq!(b.ids(), &[Id(11), Id(12)]);
    }

    #[test]
    fn the_cache_holds_peers_this_node_dialled_newest_kept() {
        let mut b = Bootstrap::new(vec![], None);
        // Accepted links (anyone can connect and claim anything about others) are not kept.
        b.link_up(Id(1), addr(1), false);
        assert!(b.cache().is_empty());
        for i in 0..(CACHE_MAX as u16 + 5) {
            b.link_up(Id(u128::from(i) + 100), addr(1000 + i), true);
        }
        let c = b.cache();
        assert_eq!(c.len(), CACHE_MAX);
        assert!(!c.contains(&addr(1000)), "the oldest went first");
        assert!(c.contains(&addr(1000 + CACHE_MAX as u16 + 4)));
        // A peer reached again at a new address is kept once, at the new one.
        b.link_up(Id(100 + CACHE_MAX as u128 + 4), addr(7), true);
        let c = b.cache();
        assert!(c.contains(&addr(7)) && !c.contains(&addr(1000 + CACHE_MAX as u16 + 4)));
    }

    #[test]
    fn the_first_bootstrap_peer_forms_the_overlay_when_its_wait_is_over() {
        let t0 = Time(1_000_000);
        let mut b = Bootstrap::new(vec![addr(1)], Some(t0 + Duration::from_secs(30)));
        assert_eq!(b.retry(t0 + Duration::from_secs(29)), Retry::Redial);
        b.link_up(Id(5), addr(1), true);
        assert_eq!(b.retry(t0 + Duration::from_secs(30)), Retry::Form);
        assert!(b.ids().is_empty(), "it forms alone");
        // Without a wait it always dials again.
        let mut plain = Bootstrap::new(vec![addr(1)], None);
        assert_eq!(plain.retry(Time(u64::MAX)), Retry::Redial);
    }
}
