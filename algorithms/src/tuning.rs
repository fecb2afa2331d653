//! Self-tuning maintenance, in the spirit of RFC 7363: a peer estimates the overlay's size
//! and its neighbours' join and departure rates from what it sees of its neighbour lists,
//! and derives its maintenance intervals from them, so that a stable overlay maintains
//! itself rarely and a churning one often (proto/SPEC.md 7.1).
//!
//! The rates are exponentially decayed counts over exponentially decayed exposure
//! (neighbour-seconds watched), started from a prior of one departure and one arrival per
//! neighbour-hour so that a fresh peer neither panics nor sleeps. Everything here is pure
//! arithmetic on virtual time: the simulator and the daemon run it alike.

use crate::id::Id;
use crate::time::Time;
use std::time::Duration;

/// How fast the churn estimators of Chord and Kademlia forget.
pub const CHURN_HALF_LIFE: Duration = Duration::from_secs(1800);

/// The prior: one event per this many neighbour-seconds (a mean session of an hour).
const PRIOR_EXPOSURE_S: f64 = 3600.0;

/// Departures and arrivals among a peer's neighbours, per neighbour and second.
#[derive(Debug, Clone)]
pub struct ChurnEstimator {
    half_life_s: f64,
    departures: f64,
    arrivals: f64,
    exposure_s: f64,
    watched: usize,
    last: Option<Time>,
}

impl ChurnEstimator {
    /// An estimator whose memory halves every `half_life`.
    pub fn new(half_life: Duration) -> Self {
        ChurnEstimator {
            half_life_s: half_life.as_secs_f64().max(1.0),
            departures: 0.0,
            arrivals: 0.0,
            exposure_s: 0.0,
            watched: 0,
            last: None,
        }
    }

    /// Brings the counts to `now`: decays them and adds the exposure of the neighbours
    /// watched since the last call; from now on `watched` neighbours are watched.
    pub fn observe(&mut self, now: Time, watched: usize) {
        if let Some(last) = self.last {
            let dt = now.since(last).as_secs_f64();
            if dt > 0.0 {
                let keep = (-dt * std::f64::consts::LN_2 / self.half_life_s).exp();
                // Exposure accrued over dt, decayed continuously: w * H/ln2 * (1 - keep).
                let accrued =
                    self.watched as f64 * self.half_life_s / std::f64::consts::LN_2 * (1.0 - keep);
                self.departures *= keep;
                self.arrivals *= keep;
                self.exposure_s = self.exposure_s * keep + accrued;
            }
        }
        self.last = Some(now);
        self.watched = watched;
    }

    /// A neighbour failed or left.
    pub fn departure(&mut self, now: Time) {
        self.observe(now, self.watched);
        self.departures += 1.0;
    }

    /// A new node entered the neighbour lists.
    pub fn arrival(&mut self, now: Time) {
        self.observe(now, self.watched);
        self.arrivals += 1.0;
    }

    /// Departures per node and second (the inverse of the mean session time).
    pub fn departure_rate(&self) -> f64 {
        (self.departures + 1.0) / (self.exposure_s + PRIOR_EXPOSURE_S)
    }

    /// Arrivals per neighbour and second.
    pub fn arrival_rate(&self) -> f64 {
        (self.arrivals + 1.0) / (self.exposure_s + PRIOR_EXPOSURE_S)
    }
}

/// The overlay's size from the density of a peer's neighbourhood: `k` neighbours spread
/// over `span` of the 2^128 ring mean about `k * 2^128 / span` nodes in all. `lists` are
/// the predecessors (nearest first) and successors (nearest first).
pub fn size_estimate(me: Id, predecessors: &[Id], successors: &[Id]) -> f64 {
    let k = predecessors.len() + successors.len();
    let (Some(far_pred), Some(far_succ)) = (predecessors.last(), successors.last()) else {
        return (k + 1) as f64;
    };
    let span = me.0.wrapping_sub(far_pred.0) as f64 + far_succ.0.wrapping_sub(me.0) as f64;
    if span <= 0.0 {
        return (k + 1) as f64;
    }
    // k neighbours plus this node fill `span`; the ring is 2^128.
    let ring = 2f64.powi(128);
    ((k as f64) * ring / span).max((k + 1) as f64)
}

/// The overlay's size from a Kademlia node's near set: among n ids spread uniformly, the
/// k-th XOR-closest to a node lies about `k * 2^128 / n` away, so n is about
/// `k * 2^128 / d_k`. `near` are the node's closest known ids, nearest first.
pub fn xor_size_estimate(me: Id, near: &[Id]) -> f64 {
    let k = near.len();
    let Some(far) = near.last() else {
        return 1.0;
    };
    let d = (me.0 ^ far.0) as f64;
    if d <= 0.0 {
        return (k + 1) as f64;
    }
    ((k as f64) * 2f64.powi(128) / d).max((k + 1) as f64)
}

/// Bounds and targets of the derived intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuningTargets {
    /// Wanted probability that one of the successors changed (failed, left or was
    /// overtaken by a joining node) within one stabilisation interval.
    pub neighbour_change: f64,
    /// Wanted probability that a lookup meets a stale finger on its way.
    pub stale_lookup: f64,
    pub min: Duration,
    pub max: Duration,
}

impl Default for TuningTargets {
    fn default() -> Self {
        TuningTargets {
            neighbour_change: 0.2,
            stale_lookup: 0.1,
            min: Duration::from_secs(2),
            max: Duration::from_secs(600),
        }
    }
}

fn clamp(seconds: f64, t: &TuningTargets) -> Duration {
    if !seconds.is_finite() {
        return t.max;
    }
    Duration::from_secs_f64(seconds.clamp(t.min.as_secs_f64(), t.max.as_secs_f64()))
}

/// The stabilisation interval: each of `successors` entries changes at rate
/// `departure + arrival`; the interval is the time within which any of them changes with
/// probability `neighbour_change`: I = -ln(1 - p) / ((mu + lambda) * s).
pub fn stabilize_interval(
    departure: f64,
    arrival: f64,
    successors: usize,
    t: &TuningTargets,
) -> Duration {
    let rate = (departure + arrival) * successors.max(1) as f64;
    clamp(-(1.0 - t.neighbour_change).ln() / rate, t)
}

/// The interval between finger-refresh rounds. A lookup crosses about log2(N)/2 fingers;
/// a finger refreshed every T seconds is dead with probability about mu*T/2, so the
/// lookup meets a stale one with probability about h*mu*T/2 = `stale_lookup`, which gives
/// T; a round refreshes `per_round` of the `distinct` fingers, so rounds come every
/// T * per_round / distinct.
pub fn finger_interval(
    departure: f64,
    size: f64,
    distinct: usize,
    per_round: usize,
    t: &TuningTargets,
) -> Duration {
    let hops = (size.max(2.0).log2() / 2.0).max(1.0);
    let per_finger = 2.0 * t.stale_lookup / (departure * hops);
    clamp(
        per_finger * per_round.max(1) as f64 / distinct.max(1) as f64,
        t,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Time {
        Time(s * 1_000_000)
    }

    /// Nodes spaced evenly on a ring of n: the estimate is n.
    #[test]
    fn the_size_of_an_even_ring_is_found() {
        for n in [16u128, 1000, 10_000, 1 << 20] {
            let step = u128::MAX / n;
            let me = Id(step * 5);
            let preds: Vec<Id> = (1..=4).map(|d| Id(me.0 - d * step)).collect();
            let succs: Vec<Id> = (1..=4).map(|d| Id(me.0 + d * step)).collect();
            let est = size_estimate(me, &preds, &succs);
            let err = (est - n as f64).abs() / n as f64;
            assert!(err < 0.01, "ring of {n}: estimated {est}");
        }
    }

    /// Neighbours that stay: the departure rate falls from the prior towards zero and the
    /// intervals grow to the maximum.
    #[test]
    fn a_stable_neighbourhood_is_maintained_rarely() {
        let t = TuningTargets::default();
        let mut e = ChurnEstimator::new(Duration::from_secs(1800));
        e.observe(secs(0), 8);
        let start = stabilize_interval(e.departure_rate(), e.arrival_rate(), 4, &t);
        e.observe(secs(6 * 3600), 8);
        let later = stabilize_interval(e.departure_rate(), e.arrival_rate(), 4, &t);
        assert!(later > start * 5, "{start:?} then {later:?}");
        // The memory (8 neighbours x 30 min / ln 2 of exposure) bounds how stable it can
        // tell: a mean session of more than 5 hours.
        assert!(
            e.departure_rate() < 1.0 / 18_000.0,
            "{}",
            e.departure_rate()
        );
        let fingers = finger_interval(e.departure_rate(), 10_000.0, 13, 4, &t);
        assert!(fingers >= Duration::from_secs(60), "{fingers:?}");
    }

    /// Neighbours with a mean session of 10 minutes: the estimate converges there and the
    /// interval follows the formula (and shrinks from the prior's).
    #[test]
    fn a_churning_neighbourhood_is_measured_and_maintained_often() {
        let t = TuningTargets::default();
        let mut e = ChurnEstimator::new(Duration::from_secs(1800));
        let watched = 8;
        e.observe(secs(0), watched);
        let prior = stabilize_interval(e.departure_rate(), e.arrival_rate(), 4, &t);
        // 8 neighbours of mean session 600 s: one departure (and one arrival) every 75 s.
        for k in 1..=400u64 {
            e.departure(secs(k * 75));
            e.arrival(secs(k * 75));
        }
        let mu = e.departure_rate();
        assert!((mu - 1.0 / 600.0).abs() < 0.15 / 600.0, "mu {mu}");
        let i = stabilize_interval(mu, e.arrival_rate(), 4, &t);
        let want = -(1.0 - t.neighbour_change).ln() / (2.0 / 600.0 * 4.0);
        assert!(
            (i.as_secs_f64() - want).abs() < 0.2 * want,
            "{i:?} vs {want}"
        );
        assert!(i * 4 < prior, "{i:?} vs the prior's {prior:?}");
        // Fingers at 10,000 nodes: T = 2 * p / (mu * 6.64), rounds of 4 of 13.
        let f = finger_interval(1.0 / 600.0, 10_000.0, 13, 4, &t);
        let want = 2.0 * t.stale_lookup / (1.0 / 600.0 * (10_000f64.log2() / 2.0)) * 4.0 / 13.0;
        assert!(
            (f.as_secs_f64() - want).abs() < 0.01 * want,
            "{f:?} vs {want}"
        );
    }

    #[test]
    fn intervals_stay_within_their_bounds() {
        let t = TuningTargets::default();
        assert_eq!(stabilize_interval(10.0, 10.0, 4, &t), t.min);
        assert_eq!(stabilize_interval(0.0, 0.0, 4, &t), t.max);
        assert_eq!(finger_interval(0.0, 100.0, 8, 4, &t), t.max);
        assert_eq!(size_estimate(Id(1), &[], &[]), 1.0);
    }

    /// n random ids: the estimate from any node's 8 closest is within a factor of 3 of n,
    /// and over 50 nodes the median within a factor of 1.5.
    #[test]
    fn the_size_seen_from_a_kademlia_near_set_is_found() {
        use rand::{Rng, SeedableRng};
        for n in [100usize, 1000, 10_000] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
            let ids: Vec<Id> = (0..n).map(|_| Id(rng.random())).collect();
            let mut estimates: Vec<f64> = ids
                .iter()
                .take(50)
                .map(|me| {
                    let mut near: Vec<Id> = ids.iter().copied().filter(|x| x != me).collect();
                    near.sort_unstable_by_key(|x| x.0 ^ me.0);
                    near.truncate(8);
                    xor_size_estimate(*me, &near)
                })
                .collect();
            for e in &estimates {
                assert!(*e > n as f64 / 3.0 && *e < n as f64 * 3.0, "n {n}: {e}");
            }
            estimates.sort_by(f64::total_cmp);
            let median = estimates[25];
            assert!(
                median > n as f64 / 1.5 && median < n as f64 * 1.5,
                "n {n}: median {median}"
            );
        }
    }
}
