//! # p2psip-algorithms: the sans-IO overlay core
//!
//! - [`id`]: the 128-bit id space and ring arithmetic.
//! - [`topology`]: the algorithm slot, the [`Topology`] trait.
//! - [`chord`]: Chord, the mandatory algorithm.
//! - [`storage`]: the storage trait and the storage rules.
//! - [`admission`]: a client's admitting peer and its move to the responsible one.
//! - [`reach`]: reachability decisions (NAT verdict, candidates, direct or relayed).
//! - [`links`]: links on demand (messages held for a node without a link, connect or
//!   Attach, through whom).
//! - [`bootstrap`]: bootstrap addresses and peers, forming the overlay, the bootstrap cache.
//! - [`core`]: [`OverlayNode`], the node's state machine: transactions, routing, serving,
//!   replication, around a `Box<dyn Topology>`.
//!
//! Nothing here does IO or reads a clock; see `../shared/DESIGN.md` section 1.

pub mod admission;
pub mod bootstrap;
pub mod chord;
pub mod client;
mod common;
pub mod core;
pub mod id;
pub mod idset;
pub mod kademlia;
pub mod links;
pub mod onehop;
pub mod path_walk;
pub mod reach;
pub mod redir;
pub mod storage;
pub mod time;
pub mod topology;
pub mod tuning;
mod values;

pub use crate::core::{
    CoreConfig, Event, HostInfo, NodeState, OpError, OpId, OverlayNode, Stats, Transmit,
};
pub use id::{Id, NodeId};
pub use time::Time;
pub use topology::{LinkEvent, NextHop, RoutingSnapshot, Target, Topology};
pub use values::{signed_value, ValueModel};

use thiserror::Error;

/// The algorithms this build knows, by configuration name.
pub const ALGORITHMS: &[&str] = &[chord::NAME, kademlia::NAME, onehop::NAME];

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
    Kademlia(kademlia::KademliaConfig),
    OneHop(onehop::OneHopConfig),
}

impl AlgorithmParams {
    /// Default parameters of the algorithm named `name`.
    pub fn default_for(name: &str) -> Result<Self, BuildError> {
        match name {
            chord::NAME => Ok(AlgorithmParams::Chord(chord::ChordConfig::default())),
            kademlia::NAME => Ok(AlgorithmParams::Kademlia(
                kademlia::KademliaConfig::default(),
            )),
            onehop::NAME => Ok(AlgorithmParams::OneHop(onehop::OneHopConfig::default())),
            other => Err(BuildError::UnknownAlgorithm(other.to_string())),
        }
    }

    /// The one place that turns configuration into an algorithm.
    pub fn build(&self, me: NodeId) -> Box<dyn Topology> {
        match self {
            AlgorithmParams::Chord(c) => Box::new(chord::Chord::new(me, c.clone())),
            AlgorithmParams::Kademlia(c) => Box::new(kademlia::Kademlia::new(me, c.clone())),
            AlgorithmParams::OneHop(c) => Box::new(onehop::OneHop::new(me, c.clone())),
        }
    }

    /// The algorithm's name in configuration.
    pub fn name(&self) -> &'static str {
        match self {
            AlgorithmParams::Chord(_) => chord::NAME,
            AlgorithmParams::Kademlia(_) => kademlia::NAME,
            AlgorithmParams::OneHop(_) => onehop::NAME,
        }
    }

    /// Ground truth: the member of a complete, sorted membership that is responsible for
    /// `target` under this algorithm's rule (ring successor, or XOR-closest).
    pub fn responsible(&self, members: &std::collections::BTreeSet<Id>, target: Id) -> Option<Id> {
        match self {
            AlgorithmParams::Chord(_) | AlgorithmParams::OneHop(_) => members
                .range(target..)
                .next()
                .or_else(|| members.iter().next())
                .copied(),
            AlgorithmParams::Kademlia(_) => kademlia::xor_closest(members, target),
        }
    }

    /// Ground truth: the `n` members that should hold copies of `target`, responsible
    /// first (linear in the membership for Kademlia: meant for tests and checks).
    pub fn replica_set_truth(
        &self,
        members: &std::collections::BTreeSet<Id>,
        target: Id,
        n: usize,
    ) -> Vec<Id> {
        match self {
            AlgorithmParams::Chord(_) | AlgorithmParams::OneHop(_) => members
                .range(target..)
                .chain(members.range(..target))
                .take(n)
                .copied()
                .collect(),
            AlgorithmParams::Kademlia(_) => {
                let mut v: Vec<Id> = members.iter().copied().collect();
                v.sort_unstable_by_key(|m| m.0 ^ target.0);
                v.truncate(n);
                v
            }
        }
    }

    /// Whether every node keeps the whole membership (a simulator holding many such nodes
    /// gives them a shared [`idset::Universe`] of the ids they will meet).
    pub fn keeps_whole_membership(&self) -> bool {
        matches!(self, AlgorithmParams::OneHop(_))
    }

    /// Lets the membership tables of the nodes built from these parameters share `ids`
    /// (see [`idset::Universe`]); algorithms without whole-membership tables ignore it.
    pub fn share_ids(&mut self, ids: Vec<Id>) {
        if let AlgorithmParams::OneHop(c) = self {
            c.universe = idset::Universe::new(ids);
        }
    }

    /// How many copies beyond the responsible one the algorithm keeps.
    pub fn replicas(&self) -> usize {
        match self {
            AlgorithmParams::Chord(c) => c.replicas,
            AlgorithmParams::Kademlia(c) => c.replicas,
            AlgorithmParams::OneHop(c) => c.replicas,
        }
    }
}
