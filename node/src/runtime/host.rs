//! What the node tells its core about itself for diagnostics (proto/SPEC.md 4.1): its
//! addresses, memory, the machine's uptime, round trips to linked nodes, NAT state.

use super::*;
use p2psip_algorithms::HostInfo;

/// How long the resident memory and the machine's uptime read from /proc are used before
/// they are read again (diagnostics do not need them fresher; reading them every tick was
/// a fifth of an idle peer's CPU).
const PROC_READ_EVERY: Duration = Duration::from_secs(10);

/// What the node last read from /proc, and when.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcRead {
    at: Instant,
    memory_bytes: u64,
    machine_uptime_s: u64,
}

impl ProcRead {
    fn now() -> ProcRead {
        ProcRead {
            at: Instant::now(),
            memory_bytes: resident_bytes().unwrap_or(0),
            machine_uptime_s: machine_uptime_s().unwrap_or(0),
        }
    }
}

impl Runtime {
    /// The driver's view of the node, handed to the core every tick.
    pub(super) fn host_info(&mut self) -> HostInfo {
        let proc_read = match self.proc_read {
            Some(p) if p.at.elapsed() < PROC_READ_EVERY => p,
            _ => *self.proc_read.insert(ProcRead::now()),
        };
        let mut addresses: Vec<String> = Vec::new();
        for a in [self.reach.host(), self.reach.reflexive()]
            .into_iter()
            .flatten()
        {
            let a = a.to_string();
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        HostInfo {
            software: format!("p2psip {}", env!("CARGO_PKG_VERSION")),
            addresses,
            memory_bytes: proc_read.memory_bytes,
            machine_uptime_s: proc_read
                .machine_uptime_s
                .saturating_add(proc_read.at.elapsed().as_secs()),
            neighbor_rtts: self.transport.link_rtts(),
            reflexive: self.reach.reflexive().map(|a| a.to_string()),
            nat_state: self.reach.nat_state().into(),
            links: self.transport.connection_count().min(u32::MAX as usize) as u32,
        }
    }
}

/// Resident memory of this process (Linux: VmRSS of /proc/self/status), bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Seconds since the machine started (Linux: /proc/uptime).
fn machine_uptime_s() -> Option<u64> {
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}
