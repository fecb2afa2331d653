//! Explicit time. The core never reads a clock: every input carries `now`.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, microseconds since the Unix epoch. The daemon passes wall-clock time;
/// the simulator passes virtual time (starting at a fixed epoch so stored data has
/// realistic storage times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// Milliseconds since the Unix epoch (the unit of `StoredData.storage_time`).
    pub fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, other: Time) -> Duration {
        self.since(other)
    }
}
