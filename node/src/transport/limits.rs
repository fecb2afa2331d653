//! What a remote party can make the transport hold: bytes of unfinished incoming streams
//! per connection (each stream also has a read deadline), incoming connections in total
//! and per source address, relayed streams in total and per originator, and the bytes an
//! originator's relayed streams carry per minute. Every refusal is counted
//! (`TransportStats`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes taken from a [`StreamBudget`] (an unfinished stream's, or a message's waiting
/// for the runtime), given back on drop.
#[derive(Debug)]
pub struct Queued {
    budget: Arc<StreamBudget>,
    n: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl Queued {
    /// `n` bytes of `budget`, if it has them within `limit`.
    pub fn take(budget: &Arc<StreamBudget>, n: usize, limit: usize) -> Option<Queued> {
        let mut q = Queued {
            budget: budget.clone(),
            n: 0,
        };
        q.grow(n, limit).then_some(q)
    }

    /// Takes `n` more bytes, if the budget has them within `limit`.
    fn grow(&mut self, n: usize, limit: usize) -> bool {
        let took = self.budget.take(n, limit);
        if took {
            self.n += n;
        }
        took
    }
}

/// Why an incoming message stream was given up.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRefusal {
    /// Longer than a message may be.
    TooLong,
    /// The connection's unfinished streams already hold their budget of bytes.
    BufferFull,
    /// Not finished within the read deadline.
    Timeout,
    /// The stream or connection failed.
    Failed,
}

/// Bytes held by the unfinished incoming streams of one connection.
#[derive(Debug, Default)]
pub struct StreamBudget {
    held: AtomicUsize,
}

impl StreamBudget {
    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if that stays within `limit` (checked and taken in one step).
    fn take(&self, n: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(n).filter(|t| *t <= limit)
            })
            .is_ok()
    }
}

/// Reads one message stream to its end: at most `max` bytes, within `deadline`, each byte
/// counted against the connection's `budget` (at most `limit` in all) until the message is
/// complete and handed on.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    max: usize,
    budget: &Arc<StreamBudget>,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<u8>, ReadRefusal> {
    let read = async {
        let mut buf = Vec::new();
        let mut taken = Queued {
            budget: budget.clone(),
            n: 0,
        };
        loop {
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    let n = chunk.bytes.len();
                    if buf.len().saturating_add(n) > max {
                        return Err(ReadRefusal::TooLong);
                    }
                    if !taken.grow(n, limit) {
                        return Err(ReadRefusal::BufferFull);
                    }
                    buf.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => return Ok(buf),
                Err(_) => return Err(ReadRefusal::Failed),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(ReadRefusal::Timeout),
    }
}

/// What is open now (incoming connections, relayed streams), in total and per key (a
/// source address, an originator); a slot is checked and taken in one step.
#[derive(Debug)]
pub struct Slots<K> {
    open: Mutex<(usize, HashMap<K, usize>)>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            open: Mutex::new((0, HashMap::new())),
        }
    }
}

/// Incoming connections per source address.
pub type ConnectionSlots = Slots<IpAddr>;

/// One slot, given back on drop.
pub struct Slot<K: Hash + Eq + Copy> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.slots.open.lock() {
            g.0 = g.0.saturating_sub(1);
            if let Some(n) = g.1.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.1.remove(&self.key);
                }
            }
        }
    }
}

impl<K: Hash + Eq + Copy> Slots<K> {
    /// A slot for `key`, if fewer than `total` are open and fewer than `per_key` for that
    /// key (0: no limit).
    pub fn take(self: &Arc<Self>, key: K, total: usize, per_key: usize) -> Option<Slot<K>> {
        let mut g = self.open.lock().ok()?;
        let mine = g.1.get(&key).copied().unwrap_or(0);
        if (total > 0 && g.0 >= total) || (per_key > 0 && mine >= per_key) {
            return None;
        }
        g.0 += 1;
        *g.1.entry(key).or_default() += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Open in all.
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |g| g.0)
    }
}

/// Keys a [`ByteWindows`] remembers at most; past it, keys whose window is over are
/// forgotten, and if none is, a new key is refused until one is.
const WINDOW_KEYS_MAX: usize = 4096;

/// Units (bytes, requests) taken per key (an originator, a source address) in the
/// current window of that key: a fixed window (a minute unless said otherwise) that
/// starts with the key's first unit after the previous one ended.
#[derive(Debug)]
pub struct ByteWindows<K> {
    windows: Mutex<HashMap<K, (Instant, u64)>>,
    window: Duration,
}

impl<K> Default for ByteWindows<K> {
    fn default() -> Self {
        ByteWindows::new(Duration::from_secs(60))
    }
}

impl<K> ByteWindows<K> {
    pub fn new(window: Duration) -> Self {
        ByteWindows {
            windows: Mutex::new(HashMap::new()),
            window,
        }
    }
}

impl<K: Hash + Eq + Copy> ByteWindows<K> {
    /// Takes `n` units for `key` if its window stays within `per_window` (0: no limit).
    pub fn take(&self, key: K, n: u64, per_window: u64, now: Instant) -> bool {
        if per_window == 0 {
            return true;
        }
        let Ok(mut w) = self.windows.lock() else {
            return false;
        };
        let window = self.window;
        if w.len() >= WINDOW_KEYS_MAX && !w.contains_key(&key) {
            w.retain(|_, (start, _)| now.duration_since(*start) < window);
            if w.len() >= WINDOW_KEYS_MAX {
                return false;
            }
        }
        let (start, used) = w.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            (*start, *used) = (now, 0);
        }
        match used.checked_add(n).filter(|t| *t <= per_window) {
            Some(t) => {
                *used = t;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_total_and_per_address_and_given_back() {
        let s: Arc<ConnectionSlots> = Arc::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.take(a, 3, 2).unwrap();
        let _a2 = s.take(a, 3, 2).unwrap();
        assert!(s.take(a, 3, 2).is_none(), "per address");
        let _b1 = s.take(b, 3, 2).unwrap();
        assert!(s.take(b, 3, 2).is_none(), "in total");
        drop(a1);
        assert_eq!(s.open(), 2);
        assert!(s.take(b, 3, 2).is_some(), "a slot given back is free again");
    }

    #[test]
    fn byte_windows_cap_each_key_per_minute_and_start_again() {
        let w = ByteWindows::default();
        let t0 = Instant::now();
        assert!(w.take(1u8, 60, 100, t0));
        assert!(!w.take(1u8, 41, 100, t0), "over the minute's bytes");
        assert!(w.take(1u8, 40, 100, t0), "a refusal takes nothing");
        assert!(w.take(2u8, 100, 100, t0), "another key has its own minute");
        assert!(
            w.take(1u8, 100, 100, t0 + Duration::from_secs(60)),
            "a new minute"
        );
        assert!(w.take(1u8, u64::MAX, 0, t0), "0: no limit");
        assert!(!w.take(1u8, u64::MAX, 100, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn byte_windows_remember_a_bounded_number_of_keys() {
        let w = ByteWindows::default();
        let t0 = Instant::now();
        for k in 0..WINDOW_KEYS_MAX as u32 {
            assert!(w.take(k, 1, 10, t0));
        }
        assert!(
            !w.take(u32::MAX, 1, 10, t0),
            "every window is still running"
        );
        let later = t0 + Duration::from_secs(61);
        assert!(
            w.take(u32::MAX, 1, 10, later),
            "finished windows are forgotten"
        );
        assert!(w.windows.lock().unwrap().len() == 1);
    }

    #[test]
    fn queued_bytes_are_given_back_when_the_message_is_dropped() {
        let b = Arc::new(StreamBudget::default());
        let one = Queued::take(&b, 6, 10).unwrap();
        assert!(Queued::take(&b, 5, 10).is_none(), "over the queue's bytes");
        assert_eq!(b.held(), 6);
        drop(one);
        assert!(Queued::take(&b, 10, 10).is_some());
        assert_eq!(b.held(), 0, "given back again on drop");
    }

    #[test]
    fn the_stream_budget_is_taken_and_given_back_atomically() {
        let b = Arc::new(StreamBudget::default());
        let mut q = Queued::take(&b, 3, 4).unwrap();
        assert!(!q.grow(2, 4), "over the limit: nothing taken");
        assert_eq!(b.held(), 3);
        drop(q);
        assert_eq!(b.held(), 0);
    }
}
