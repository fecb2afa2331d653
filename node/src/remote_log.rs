//! Log lines that remote input can trigger (a refused connection, a bad certificate, a SIP
//! request), rate-limited per reason: the first line of a reason is written, then at most
//! one per `INTERVAL`, carrying how many were held back (`suppressed`). Without this anyone
//! who reaches a node could fill its log disk. The counts are exact in
//! `p2psip_log_lines_suppressed_total{reason}`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// At most one line per reason per this interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Per reason: when its last line was written, lines held back since, held back in all.
type Gate = HashMap<&'static str, (Instant, u64, u64)>;

static GATE: LazyLock<Mutex<Gate>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether a line for `reason` may be written now: Some(lines held back since the last
/// one), or None (held back and counted).
pub fn allow(reason: &'static str) -> Option<u64> {
    allow_at(reason, Instant::now())
}

fn allow_at(reason: &'static str, now: Instant) -> Option<u64> {
    let Ok(mut g) = GATE.lock() else {
        return Some(0);
    };
    match g.get_mut(reason) {
        None => {
            g.insert(reason, (now, 0, 0));
            Some(0)
        }
        Some(e) if now.duration_since(e.0) >= INTERVAL => {
            let held = e.1;
            e.0 = now;
            e.1 = 0;
            Some(held)
        }
        Some(e) => {
            e.1 += 1;
            e.2 += 1;
            None
        }
    }
}

/// Lines held back so far, per reason (for metrics).
pub fn suppressed() -> Vec<(&'static str, u64)> {
    GATE.lock()
        .map(|g| g.iter().map(|(r, e)| (*r, e.2)).collect())
        .unwrap_or_default()
}

/// `tracing::<level>!` for a line remote input triggers, rate-limited under `reason`.
#[macro_export]
macro_rules! remote_log {
    ($level:ident, $reason:literal, $($arg:tt)+) => {
        if let Some(suppressed) = $crate::remote_log::allow($reason) {
            tracing::$level!(reason = $reason, suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        assert_eq!(allow_at("test-a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(allow_at("test-a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(allow_at("test-b", t0), Some(0), "reasons are apart");
        assert_eq!(allow_at("test-a", t0 + INTERVAL), Some(5));
        let held = suppressed()
            .into_iter()
            .find(|(r, _)| *r == "test-a")
            .map(|x| x.1);
        assert_eq!(held, Some(5));
    }
}
