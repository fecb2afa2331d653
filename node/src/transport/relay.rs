//! Carrying a relayed stream (proto/SPEC.md 2.8): bytes are copied both ways between the
//! originator's stream and the stream to the target, within the stream's byte cap, the
//! originator's bytes per minute and an idle timeout; past any of them both streams are
//! reset with [`RESET_RELAY_CUT`](super::RESET_RELAY_CUT).

use super::limits::ByteWindows;
use p2psip_algorithms::NodeId;
use quinn::{RecvStream, SendStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a relayed stream may use.
#[derive(Debug, Clone, Copy)]
pub struct RelayCaps {
    pub idle: Duration,
    /// Bytes both ways together.
    pub stream_bytes: u64,
    /// Bytes per minute of one originator's streams, both ways together (0: no limit).
    pub originator_per_min: u64,
}

/// Why a relayed stream was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Idle,
    StreamBytes,
    OriginatorBytes,
}

impl Cut {
    pub fn reason(self) -> &'static str {
        match self {
            Cut::Idle => "idle",
            Cut::StreamBytes => "stream_bytes",
            Cut::OriginatorBytes => "originator_bytes",
        }
    }
}

/// One relayed stream's shared state: bytes carried and the time of the last one.
struct Carried<'a> {
    began: Instant,
    bytes: AtomicU64,
    /// Milliseconds after `began` of the last byte carried.
    last_ms: AtomicU64,
    originator: NodeId,
    windows: &'a ByteWindows<NodeId>,
    caps: RelayCaps,
}

impl Carried<'_> {
    /// Counts `n` more bytes, or says which cap they would pass.
    fn take(&self, n: u64) -> Result<(), Cut> {
        let total = self.bytes.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        if total > self.caps.stream_bytes {
            return Err(Cut::StreamBytes);
        }
        let now = Instant::now();
        if !self
            .windows
            .take(self.originator, n, self.caps.originator_per_min, now)
        {
            return Err(Cut::OriginatorBytes);
        }
        let ms = now.duration_since(self.began).as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        Ok(())
    }

    /// Returns when nothing has crossed for the idle timeout.
    async fn idle(&self) -> Cut {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            let due = self.began + last + self.caps.idle;
            if Instant::now() >= due {
                return Cut::Idle;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Copies one direction until its end (the copy of the end is passed on) or a cap.
async fn pump(
    from: &mut RecvStream,
    to: &mut SendStream,
    carried: &Carried<'_>,
) -> Result<(), Cut> {
    loop {
        match from.read_chunk(16 * 1024, true).await {
            Ok(Some(chunk)) => {
                carried.take(chunk.bytes.len() as u64)?;
                if to.write_all(&chunk.bytes).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return Ok(());
            }
            // The other side reset or the connection failed: nothing more to carry.
            Err(_) => return Ok(()),
        }
    }
}

/// Carries the originator's streams `(send, recv)` to the target's `(to_send, to_recv)`
/// and back. Returns the bytes carried and, if it was cut, why (the streams are reset
/// then).
pub async fn carry(
    originator: NodeId,
    (send, recv): (&mut SendStream, &mut RecvStream),
    (to_send, to_recv): (&mut SendStream, &mut RecvStream),
    windows: &ByteWindows<NodeId>,
    caps: RelayCaps,
) -> (u64, Option<Cut>) {
    let carried = Carried {
        began: Instant::now(),
        bytes: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
        originator,
        windows,
        caps,
    };
    let cut = {
        let both = async {
            tokio::try_join!(pump(recv, to_send, &carried), pump(to_recv, send, &carried))
        };
        tokio::select! {
            r = both => r.err(),
            cut = carried.idle() => Some(cut),
        }
    };
    if cut.is_some() {
        let code = quinn::VarInt::from_u32(super::RESET_RELAY_CUT);
        let _ = send.reset(code);
        let _ = to_send.reset(code);
        let _ = recv.stop(code);
        let _ = to_recv.stop(code);
    }
    let n = carried.bytes.load(Ordering::Acquire);
    (n.min(caps.stream_bytes), cut)
}
