//! Hop-by-hop recovery and measured retransmission timeouts.
//!
//! A request is remembered for `reroute_window` after it leaves on a link; if that link
//! fails within the window (the transport's keep-alive noticed the peer is gone), the
//! request is routed again at once around the failed node, instead of waiting for the
//! originator's end-to-end retransmission, which would meet the same dead hop if the nodes
//! before it had not yet noticed. The end-to-end timeout itself follows the measured round
//! trip of answered requests, so that long recursive routes are not retransmitted while
//! their answer is still on its way.

use super::OverlayNode;
use crate::id::NodeId;
use crate::time::Time;
use std::time::Duration;

/// What to do again with a request if the link it left on fails.
pub(super) enum Resend {
    /// A transaction this node originated: send its current attempt again.
    Tx(u64),
    /// A request passed on for another node: route it again as received from `from`.
    Forward { from: NodeId, bytes: Vec<u8> },
}

/// The simulator's default `slack` of [`hop_ack_timeout`] (`network.hop_ack_slack`). The
/// daemon's `timers.hop_ack_slack_ms` is 3,000 ms by default (a loaded peer on a crowded
/// machine can be slow that long without being gone).
pub const HOP_ACK_SLACK: Duration = Duration::from_millis(300);

/// How long a sender waits for the transport of a link to acknowledge a message it sent
/// (proto/SPEC.md 2.6, "Hop acknowledgement") before it takes the link to have failed:
/// three of the link's round trips (QUIC's acknowledgement of new data arrives after one,
/// a lost packet is sent again after about two), `slack` for the peer's acknowledgement
/// delay and scheduling, and the time the message takes to leave at 1 MiB/s. The daemon
/// applies it to every message stream; the simulator's network model uses the same.
pub fn hop_ack_timeout(rtt: Duration, bytes: usize, slack: Duration) -> Duration {
    let transfer = Duration::from_micros(u64::try_from(bytes).unwrap_or(u64::MAX));
    rtt.saturating_mul(3)
        .saturating_add(slack)
        .saturating_add(transfer)
}

pub(super) struct Sent {
    at: Time,
    to: NodeId,
    what: Resend,
}

/// Smoothed round trip and its mean deviation (RFC 6298), sampled only from answers to
/// first attempts (Karn's rule).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    pub(super) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let dev = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + dev) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }

    /// The first retransmission timeout: measured, within `[floor, cap]`.
    pub(super) fn rto(&self, floor: Duration, cap: Duration) -> Duration {
        match self.srtt {
            None => floor,
            Some(s) => (s + self.rttvar * 4).clamp(floor, cap.max(floor)),
        }
    }
}

impl OverlayNode {
    /// Remembers a request that just left on the link to `to`.
    pub(super) fn remember_sent(&mut self, to: NodeId, what: Resend) {
        if to == self.me || self.cfg.reroute_window.is_zero() {
            return;
        }
        let window = self.cfg.reroute_window;
        while self.sent.front().is_some_and(|s| s.at + window < self.now) {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            at: self.now,
            to,
            what,
        });
    }

    /// The link to `n` failed: every request that recently left on it is routed again
    /// (the topology has already dropped `n`).
    pub(super) fn reroute_after_failure(&mut self, n: NodeId) {
        self.fail_direct_requests(n);
        if !self.sent.iter().any(|s| s.to == n) {
            return;
        }
        let window = self.cfg.reroute_window;
        let now = self.now;
        let mut again = Vec::new();
        self.sent.retain_mut(|s| {
            if s.to != n {
                return true;
            }
            if s.at + window >= now {
                again.push(std::mem::replace(&mut s.what, Resend::Tx(0)));
            }
            false
        });
        for what in again {
            self.stats.rerouted += 1;
            match what {
                Resend::Tx(id) => {
                    self.transmit_attempt(id);
                }
                Resend::Forward { from, bytes } => self.process(from, &bytes),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_is_given_three_round_trips_slack_and_its_transfer_time() {
        let slack = HOP_ACK_SLACK;
        let t = hop_ack_timeout(Duration::from_millis(150), 200, slack);
        assert_eq!(t, Duration::from_micros(750_200));
        let big = hop_ack_timeout(Duration::from_millis(1), 1 << 20, slack);
        assert!(
            big > Duration::from_millis(1300),
            "1 MiB: about a second more: {big:?}"
        );
        assert_eq!(
            hop_ack_timeout(Duration::MAX, usize::MAX, slack),
            Duration::MAX,
            "saturates"
        );
    }

    #[test]
    fn rto_follows_measured_round_trips_within_bounds() {
        let floor = Duration::from_secs(1);
        let cap = Duration::from_secs(4);
        let mut e = RttEstimator::default();
        assert_eq!(e.rto(floor, cap), floor, "no sample yet: the floor");
        for _ in 0..50 {
            e.sample(Duration::from_millis(1500));
        }
        let rto = e.rto(floor, cap);
        assert!(
            rto >= Duration::from_millis(1500) && rto < Duration::from_millis(1700),
            "steady 1.5 s round trips: {rto:?}"
        );
        for _ in 0..50 {
            e.sample(Duration::from_millis(100));
        }
        assert_eq!(
            e.rto(floor, cap),
            floor,
            "fast answers: never below the floor"
        );
        for _ in 0..50 {
            e.sample(Duration::from_secs(30));
        }
        assert_eq!(e.rto(floor, cap), cap, "slow answers: never above the cap");
    }
}
