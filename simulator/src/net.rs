//! The modelled network: per-link latency, loss, partitions, and how fast a sender learns
//! that its peer is gone.

use crate::rng_hash;
use std::time::Duration;

/// How long a message takes between two nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    /// Every link the same.
    Constant(Duration),
    /// Each link (unordered pair) gets a fixed latency drawn uniformly from `[min, max]`,
    /// derived from the pair and the seed, so it is the same every run.
    PerLink { min: Duration, max: Duration },
}

/// The network model of a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    pub latency: Latency,
    /// Probability that a message is lost (independently per message).
    pub loss: f64,
    /// After sending to a crashed or unreachable node, the sender's transport reports the
    /// link failed after this delay (QUIC's loss detection and idle timeout). `None`: no
    /// report, only end-to-end timeouts.
    pub link_failure_after: Option<Duration>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Latency::PerLink {
                min: Duration::from_millis(5),
                max: Duration::from_millis(50),
            },
            loss: 0.0,
            link_failure_after: Some(Duration::from_secs(2)),
        }
    }
}

impl NetConfig {
    /// The one-way latency between nodes `a` and `b` (indices), for a run seeded `seed`.
    pub fn latency(&self, seed: u64, a: usize, b: usize) -> Duration {
        match &self.latency {
            Latency::Constant(d) => *d,
            Latency::PerLink { min, max } => {
                let (x, y) = if a < b { (a, b) } else { (b, a) };
                let h = rng_hash(seed ^ ((x as u64) << 32) ^ y as u64);
                let span = max.saturating_sub(*min).as_micros() as u64;
                *min + Duration::from_micros(if span == 0 { 0 } else { h % (span + 1) })
            }
        }
    }
}
