//! # p2psip-algorithms: the sans-IO overlay core
//!
//! - [`id`]: the 128-bit id space and ring arithmetic.
//! - [`topology`]: the algorithm slot, the [`Topology`] trait.
//! - [`chord`]: Chord, the mandatory algorithm.
//! - [`storage`]: the storage trait and the storage rules.
//! - [`core`]: [`OverlayNode`], the node's state machine: transactions, routing, serving,
//!   replication, around a `Box<dyn Topology>`.
//!
//! Nothing here does IO or reads a clock; see `../shared/DESIGN.md` section 1.

pub mod chord;
pub mod client;
pub mod core;
pub mod id;
pub mod storage;
pub mod time;
pub mod topology;
mod values;

pub use crate::core::{CoreConfig, Event, NodeState, OpError, OpId, OverlayNode, Stats, Transmit};
pub use id::{Id, NodeId};
pub use time::Time;
pub use topology::{LinkEvent, NextHop, RoutingSnapshot, Target, Topology};
pub use values::{signed_value, ValueModel};

use thiserror::Error;

/// The algorithms this build knows, by configuration name.
pub const ALGORITHMS: &[&str] = &[chord::NAME];

/// Errors building an algorithm from configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("unknown algorithm {0:?}; known: {known}", known = ALGORITHMS.join(", "))]
    UnknownAlgorithm(String),
}

/// Algorithm parameters, one variant per algorithm.
#[derive(Debug, Clone, PartialEq)]
pub enum AlgorithmParams {
    Chord(chord::ChordConfig),
}

impl AlgorithmParams {
    /// Default parameters of the algorithm named `name`.
    pub fn default_for(name: &str) -> Result<Self, BuildError> {
        match name {
            chord::NAME => Ok(AlgorithmParams::Chord(chord::ChordConfig::default())),
            other => Err(BuildError::UnknownAlgorithm(other.to_string())),
        }
    }

    /// The one place that turns configuration into an algorithm.
    pub fn build(&self, me: NodeId) -> Box<dyn Topology> {
        match self {
            AlgorithmParams::Chord(c) => Box::new(chord::Chord::new(me, c.clone())),
        }
    }

    /// How many copies beyond the responsible one the algorithm keeps.
    pub fn replicas(&self) -> usize {
        match self {
            AlgorithmParams::Chord(c) => c.replicas,
        }
    }
}
