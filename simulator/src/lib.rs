//! # p2psip-simulator
//!
//! A deterministic discrete-event harness ([`Sim`]) that drives many instances of the
//! overlay core of `p2psip-algorithms` with virtual time and a modelled network
//! ([`NetConfig`]): per-link latency, loss, crashes, restarts, partitions. Every run is
//! reproducible from its seed. [`nat`] models NAT routers and runs the core's
//! reachability decisions behind them. The multi-node tests and the `p2psip-sim` binary use it.

pub mod churn;
mod harness;
pub mod nat;
mod net;
pub mod report;
pub mod runner;
pub mod scenario;

pub use harness::{signed_message, LogEntry, Sim, Traffic, EPOCH};
pub use net::{Latency, NetConfig};
pub use report::Report;
pub use runner::Runner;
pub use scenario::Scenario;

/// A 64-bit mix (SplitMix64 finaliser): derives per-link values from a seed.
pub fn rng_hash(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
