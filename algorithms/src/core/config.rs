//! Configuration of the overlay core (independent of the algorithm).

use crate::storage::{KindRegistry, VerifyMode};
use std::time::Duration;

/// What every peer of an overlay must agree on, plus this node's transaction timers.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The overlay name; its hash is the overlay id of every message.
    pub overlay: String,
    /// First retransmission timeout of an end-to-end request; doubles on every retry.
    pub request_timeout: Duration,
    /// Retransmissions before a request fails with Request_Timeout.
    pub retransmissions: u32,
    /// How often every stored resource's replica set is re-pushed in full (besides the
    /// pushes on every change of responsibility).
    pub replication_interval: Duration,
    /// How often expired values are purged.
    pub expiry_interval: Duration,
    /// How value signatures are checked.
    pub verify: VerifyMode,
    /// The kinds the overlay defines.
    pub kinds: KindRegistry,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            overlay: "p2psip.example".into(),
            request_timeout: Duration::from_millis(1000),
            retransmissions: 3,
            replication_interval: Duration::from_secs(300),
            expiry_interval: Duration::from_secs(60),
            verify: VerifyMode::SelfSigned,
            kinds: KindRegistry::default(),
        }
    }
}
