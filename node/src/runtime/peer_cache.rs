//! The bootstrap cache: peers this node dialled and reached, kept for the next start.

use super::*;

/// The bootstrap cache: peers known at the last run (the database's `meta` table; data
/// directories of earlier versions kept it in a file `peers`).
pub(super) fn read_peer_cache(store: &DashStore, dir: Option<&std::path::Path>) -> Vec<SocketAddr> {
    let text = store
        .meta(PEER_CACHE_KEY)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .or_else(|| dir.and_then(|d| std::fs::read_to_string(d.join("peers")).ok()))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .take(p2psip_algorithms::bootstrap::CACHE_MAX)
        .collect()
}

impl Runtime {
    /// Keeps the addresses of the peers this node reached in the database (the bootstrap
    /// cache dialled at the next start), when they changed; at most `bootstrap::CACHE_MAX`.
    /// Addresses that other nodes merely gave (Attach candidates) are not kept.
    pub(super) fn save_peers(&mut self) {
        let peers = self.boot.cache();
        if peers.is_empty() || peers == self.saved_peers {
            return;
        }
        let text = peers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        match self.store.set_meta(PEER_CACHE_KEY, text.as_bytes()) {
            Ok(()) => self.saved_peers = peers,
            Err(e) => tracing::warn!("keeping the bootstrap cache: {e}"),
        }
    }
}
