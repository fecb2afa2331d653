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
    /// A synthetic Internet with the spread of the King data set: every node sits at a
    /// random point of a plane plus a random access delay (its "height"); one-way latency
    /// is the distance plus both heights, scaled so that the median round-trip time is
    /// `median_rtt` (about 150 ms for King) with a long tail to several hundred ms.
    Coordinates { median_rtt: Duration },
}

/// The network model of a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    pub latency: Latency,
    /// Probability that a message is lost (independently per message).
    pub loss: f64,
    /// The links of a crashed node, or cut by a partition, are reported failed at the
    /// other end after this delay (keep-alives and QUIC's idle timeout); so is a message
    /// sent to a dead node when `hop_ack_slack` is `None`. `None`: no report, only
    /// end-to-end timeouts.
    pub link_failure_after: Option<Duration>,
    /// Hop acknowledgement (proto/SPEC.md 2.6): a message sent to a crashed or
    /// unreachable node fails the sender's link after
    /// `core::hop_ack_timeout(round trip, length, slack)`, as the daemon's transport does
    /// when QUIC does not acknowledge a message stream. `None`: after `link_failure_after`.
    pub hop_ack_slack: Option<Duration>,
    /// Fraction of node pairs that cannot reach each other at all (non-transitive
    /// connectivity, as behind some firewalls).
    pub broken_links: f64,
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
            hop_ack_slack: Some(p2psip_algorithms::core::HOP_ACK_SLACK),
            broken_links: 0.0,
        }
    }
}

impl NetConfig {
    /// Whether the link between nodes `a` and `b` is broken (fixed per pair and seed).
    pub fn is_broken(&self, seed: u64, a: usize, b: usize) -> bool {
        if self.broken_links <= 0.0 {
            return false;
        }
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let h = rng_hash(seed ^ 0xb0b ^ ((x as u64) << 32) ^ y as u64);
        (h >> 11) as f64 / (1u64 << 53) as f64 <= self.broken_links
    }

    /// The one-way latency between nodes `a` and `b` (indices), for a run seeded `seed`.
    pub fn latency(&self, seed: u64, a: usize, b: usize) -> Duration {
        match &self.latency {
            Latency::Constant(d) => *d,
            Latency::Coordinates { median_rtt } => {
                let c = |i: usize| {
                    let h = |k: u64| {
                        (rng_hash(seed ^ 0xc00d ^ ((i as u64) << 8) ^ k) >> 11) as f64
                            / (1u64 << 53) as f64
                    };
                    // Exponential access delay with mean 0.06 (in units of the plane).
                    (h(1), h(2), -0.06 * (1.0 - h(3)).max(1e-12).ln())
                };
                let (a, b) = (c(a), c(b));
                let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() + a.2 + b.2;
                // Median of (distance in the unit square + two heights) is about 0.64.
                let one_way = median_rtt.as_secs_f64() / 2.0 * d / 0.64;
                Duration::from_secs_f64(one_way.max(0.000_1))
            }
            Latency::PerLink { min, max } => {
                let (x, y) = if a < b { (a, b) } else { (b, a) };
                let h = rng_hash(seed ^ ((x as u64) << 32) ^ y as u64);
                let span = max.saturating_sub(*min).as_micros() as u64;
                *min + Duration::from_micros(if span == 0 { 0 } else { h % (span + 1) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinate_model_has_the_king_spread() {
        let net = NetConfig {
            latency: Latency::Coordinates {
                median_rtt: Duration::from_millis(150),
            },
            ..NetConfig::default()
        };
        let mut rtts: Vec<f64> = (0..20_000)
            .map(|k| 2.0 * net.latency(7, k, k * 7 + 13).as_secs_f64() * 1000.0)
            .collect();
        rtts.sort_by(f64::total_cmp);
        let (p10, p50, p90) = (rtts[2_000], rtts[10_000], rtts[18_000]);
        assert!((130.0..170.0).contains(&p50), "median RTT {p50} ms");
        assert!(
            p10 < 0.6 * p50 && p90 > 1.4 * p50,
            "spread {p10} / {p50} / {p90}"
        );
        // Symmetric and stable.
        assert_eq!(net.latency(7, 3, 9), net.latency(7, 9, 3));
    }

    #[test]
    fn broken_links_are_a_fixed_fraction() {
        let net = NetConfig {
            broken_links: 0.1,
            ..NetConfig::default()
        };
        let broken = (0..10_000).filter(|k| net.is_broken(1, *k, k + 1)).count();
        assert!((800..1200).contains(&broken), "{broken}");
        assert_eq!(net.is_broken(1, 5, 6), net.is_broken(1, 6, 5));
    }
}
