//! Chord parameters.

use crate::tuning::TuningTargets;
use std::time::Duration;

/// Parameters of the Chord algorithm (the `[chord]` table of a node's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct ChordConfig {
    /// Length of the successor list (at least 3).
    pub successors: usize,
    /// Length of the predecessor list (at least 3).
    pub predecessors: usize,
    /// Finger table entries, 16 to 128. Entry `i` points near `id + 2^(127-i)`.
    pub fingers: usize,
    /// Copies kept besides the responsible peer's (2 = three copies in all).
    pub replicas: usize,
    /// Periodic stabilisation: every interval, exchange Updates with the first successor and
    /// predecessor. `None` turns periodic stabilisation off (reactive recovery only, which
    /// RFC 6940 warns is unstable past ~1000 nodes under churn).
    pub stabilize_interval: Option<Duration>,
    /// Reactive recovery: on a failed neighbour, contact the new neighbours at once.
    pub reactive_recovery: bool,
    /// How often part of the finger table is refreshed.
    pub finger_interval: Duration,
    /// Fingers refreshed per round.
    pub fingers_per_round: usize,
    /// How often the node looks itself up through a random known peer, which heals
    /// partitions (two rings find each other again).
    pub self_lookup_interval: Duration,
    /// Delay before a failed join is retried with the next bootstrap peer.
    pub join_retry: Duration,
    /// Proximity neighbour selection: while refreshing a live finger, also look up another
    /// random point of its interval now and then, measure the node found with a direct
    /// probe, and keep whichever of the two answered faster.
    pub proximity: bool,
    /// With `proximity`, proximity route selection too: the next hop is the known node
    /// between this one and the target whose round trip plus the hops it leaves costs
    /// least, not always the one closest to the target (proto/SPEC.md 7.2).
    pub proximity_routing: bool,
    /// Self-tuning (proto/SPEC.md 7.1): the stabilisation and finger-refresh intervals
    /// follow the churn this node sees among its neighbours and the overlay size it
    /// estimates, within `tuning`'s bounds, instead of the fixed intervals above
    /// (`stabilize_interval` None still turns periodic stabilisation off).
    pub self_tuning: bool,
    pub tuning: TuningTargets,
}

impl Default for ChordConfig {
    fn default() -> Self {
        ChordConfig {
            successors: 4,
            predecessors: 4,
            fingers: 24,
            replicas: 2,
            stabilize_interval: Some(Duration::from_secs(10)),
            reactive_recovery: true,
            finger_interval: Duration::from_secs(10),
            fingers_per_round: 4,
            self_lookup_interval: Duration::from_secs(30),
            join_retry: Duration::from_secs(5),
            proximity: false,
            proximity_routing: true,
            self_tuning: false,
            tuning: TuningTargets::default(),
        }
    }
}

impl ChordConfig {
    /// Clamps the fields to the ranges the algorithm supports.
    pub fn normalized(mut self) -> Self {
        self.successors = self.successors.max(3);
        self.fingers = self.fingers.clamp(16, 128);
        self.replicas = self.replicas.min(self.successors);
        // A replica knows it is one only when the responsible peer and the peer before it
        // are among its predecessors: the farthest replica needs `replicas + 1` of them.
        self.predecessors = self.predecessors.max(3).max(self.replicas + 1);
        self.fingers_per_round = self.fingers_per_round.max(1);
        self
    }
}
