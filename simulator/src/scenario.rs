//! Scenarios: what to simulate, as a TOML file (`simulator/scenarios/*.toml`) whose every
//! field has a default, so flags can build one too.

use crate::net::{Latency, NetConfig};
use p2psip_algorithms::chord::ChordConfig;
use p2psip_algorithms::core::{CoreConfig, HOP_ACK_SLACK};
use p2psip_algorithms::kademlia::KademliaConfig;
use p2psip_algorithms::onehop::OneHopConfig;
use p2psip_algorithms::storage::VerifyMode;
use p2psip_algorithms::time::parse_duration;
use p2psip_algorithms::AlgorithmParams;
use serde::{Deserialize, Serialize};
use std::time::Duration;

fn dur(field: &str, s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| format!("{field}: {e}"))
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub name: String,
    pub algorithm: String,
    /// Peers at the start (and the population churn keeps stable).
    pub nodes: usize,
    /// Simulated time after the start.
    pub duration: String,
    pub seed: u64,
    /// Start from a converged overlay (every peer already joined). Otherwise peers join
    /// one after another, `join_gap` apart, before the clock of the run starts.
    pub warm_start: bool,
    pub join_gap: String,
    /// Time-series resolution.
    pub sample_interval: String,
    pub network: Network,
    pub churn: Churn,
    pub workload: Workload,
    pub chord: ChordParams,
    pub kademlia: KademliaParams,
    pub onehop: OneHopParams,
    pub core: CoreParams,
    pub adversary: Adversary,
    pub nat: Nat,
}

/// Nodes behind NATs (`p2psip-sim nat`; simulator/src/nat.rs has the model).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Nat {
    /// Fraction of the nodes behind a NAT router.
    pub behind: f64,
    /// Share of those whose NAT maps each destination anew (symmetric); the others keep
    /// one mapping for every destination (cone).
    pub symmetric: f64,
    /// Application connections (AppAttach, then direct, punched or relayed) between
    /// random nodes.
    pub connections: usize,
    /// How long a direct attempt may take before the relay is used (`nat.punch_timeout_ms`
    /// of the daemon).
    pub punch_timeout: String,
}

impl Default for Nat {
    fn default() -> Self {
        Nat {
            behind: 0.0,
            symmetric: 0.5,
            connections: 0,
            punch_timeout: "3s".into(),
        }
    }
}

/// Nodes that misbehave (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Adversary {
    /// Fraction of the initial peers that drop every request and answer they should pass
    /// on for others, while keeping up their own maintenance (so they stay in routing
    /// tables). Lookups are started by the honest peers only.
    pub droppers: f64,
    /// Fraction of the initial peers (besides the droppers) that forge within what their
    /// own keys allow: answers in other nodes' names, Leaves and Updates in their
    /// neighbours' names, their own Updates full of made-up successors. They forward
    /// everything they should.
    pub forgers: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// "king" (synthetic Internet, median RTT `median_rtt`), "uniform" (`min`..`max` per
    /// link) or "constant" (`constant`).
    pub latency: String,
    pub median_rtt: String,
    pub min: String,
    pub max: String,
    pub constant: String,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Fraction of node pairs that cannot reach each other.
    pub broken_links: f64,
    /// How fast a sender's transport reports a dead peer whose link carries no message
    /// ("" for never).
    pub link_failure_after: String,
    /// The slack of the hop acknowledgement (proto/SPEC.md 2.6): a message sent to a dead
    /// peer fails its link after three round trips plus this ("" for no hop
    /// acknowledgement: after `link_failure_after`).
    pub hop_ack_slack: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// "none", "exponential", "pareto" or "weibull" session times.
    pub model: String,
    pub median_session: String,
    /// Shape of the Pareto (alpha > 1) or Weibull (k) distribution.
    pub shape: f64,
    /// Fraction of departures that are crashes (the rest leave gracefully).
    pub crash_fraction: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Random-id lookups per peer per hour.
    pub lookups_per_node_per_hour: f64,
    /// SIP users that register (and refresh) their location.
    pub users: usize,
    pub refresh: String,
    /// Calls per hour in the whole overlay: fetch the callee's registration, then open a
    /// direct connection (Attach) to the node it names.
    pub calls_per_hour: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChordParams {
    pub successors: usize,
    pub predecessors: usize,
    pub fingers: usize,
    pub replicas: usize,
    /// "" turns periodic stabilisation off.
    pub stabilize_interval: String,
    pub reactive_recovery: bool,
    pub finger_interval: String,
    pub fingers_per_round: usize,
    pub self_lookup_interval: String,
    /// Proximity neighbour selection among finger candidates.
    pub proximity: bool,
    /// With `proximity`, proximity route selection too (next hop by round trip and
    /// progress, not progress alone).
    pub proximity_routing: bool,
    /// Self-tuning: stabilisation and finger intervals from the churn each node sees
    /// (the two intervals above are then unused, but "" still turns stabilisation off).
    pub self_tuning: bool,
}

/// The `[kademlia]` table (see `p2psip_algorithms::kademlia::KademliaConfig`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KademliaParams {
    pub k: usize,
    pub replicas: usize,
    /// "" turns periodic stabilisation off.
    pub stabilize_interval: String,
    pub refresh_interval: String,
    pub buckets_per_round: usize,
    pub self_lookup_interval: String,
    /// Entries not heard from for this long are checked; "" turns the checks off.
    pub check_after: String,
    pub checks_per_round: usize,
    /// Proximity neighbour selection within full buckets.
    pub proximity: bool,
    /// Self-tuning: stabilisation and bucket-refresh intervals from the churn each node
    /// sees in its near set (the two intervals above are then unused, but "" still turns
    /// stabilisation off).
    pub self_tuning: bool,
}

impl Default for KademliaParams {
    fn default() -> Self {
        // Maintenance intervals for large overlays, as for Chord.
        KademliaParams {
            k: 8,
            replicas: 2,
            stabilize_interval: "30s".into(),
            refresh_interval: "60s".into(),
            buckets_per_round: 2,
            self_lookup_interval: "300s".into(),
            check_after: "300s".into(),
            checks_per_round: 32,
            proximity: false,
            self_tuning: false,
        }
    }
}

/// The `[onehop]` table (see `p2psip_algorithms::onehop::OneHopConfig`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OneHopParams {
    pub replicas: usize,
    pub gossip_interval: String,
    /// "" turns the successor check off.
    pub stabilize_interval: String,
    pub self_lookup_interval: String,
    /// Reports of failures and arrivals wait for the receiver's own probe (the daemon's
    /// default); off for runs at scale that measure routing, not attacks.
    pub confirm_reports: bool,
}

impl Default for OneHopParams {
    fn default() -> Self {
        OneHopParams {
            replicas: 2,
            gossip_interval: "5s".into(),
            stabilize_interval: "30s".into(),
            self_lookup_interval: "300s".into(),
            confirm_reports: true,
        }
    }
}

fn opt_dur(field: &str, s: &str) -> Result<Option<Duration>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        dur(field, s).map(Some)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoreParams {
    pub request_timeout: String,
    /// Ceiling of the measured round-trip timeout.
    pub max_request_timeout: String,
    pub retransmissions: u32,
    /// Re-route a request whose link fails this soon after it left ("0s": off).
    pub reroute_window: String,
    pub replication_interval: String,
    /// Verify every stored value's signature (costs CPU at scale; the protocol does it).
    pub verify_signatures: bool,
    /// Sign every message and verify it where it is acted on (proto/SPEC.md 5.4): two
    /// Ed25519 operations per message, the bulk of a 100k-peer run's CPU. Off: the peers
    /// trust each other's messages (a model of an overlay without forgers).
    pub sign_messages: bool,
    /// Retransmit a routed request through the algorithm's other first hops in turn.
    pub retry_other_first_hop: bool,
    /// Peers ask for direct responses (proto/SPEC.md 8.1).
    pub direct_response: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "chord".into(),
            algorithm: "chord".into(),
            nodes: 1000,
            duration: "30m".into(),
            seed: 1,
            warm_start: true,
            join_gap: "500ms".into(),
            sample_interval: "60s".into(),
            network: Network::default(),
            churn: Churn::default(),
            workload: Workload::default(),
            chord: ChordParams::default(),
            kademlia: KademliaParams::default(),
            onehop: OneHopParams::default(),
            core: CoreParams::default(),
            adversary: Adversary::default(),
            nat: Nat::default(),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency: "king".into(),
            median_rtt: "150ms".into(),
            min: "5ms".into(),
            max: "50ms".into(),
            constant: "50ms".into(),
            loss: 0.0,
            broken_links: 0.0,
            link_failure_after: "2s".into(),
            hop_ack_slack: format!("{}ms", HOP_ACK_SLACK.as_millis()),
        }
    }
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            model: "none".into(),
            median_session: "60m".into(),
            shape: 1.5,
            crash_fraction: 0.5,
        }
    }
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            lookups_per_node_per_hour: 6.0,
            users: 100,
            refresh: "30m".into(),
            calls_per_hour: 600.0,
        }
    }
}

impl Default for ChordParams {
    fn default() -> Self {
        // Maintenance intervals for large overlays: slower than the daemon's defaults.
        ChordParams {
            successors: 4,
            predecessors: 4,
            fingers: 24,
            replicas: 2,
            stabilize_interval: "30s".into(),
            reactive_recovery: true,
            finger_interval: "60s".into(),
            fingers_per_round: 2,
            self_lookup_interval: "300s".into(),
            proximity: false,
            proximity_routing: true,
            self_tuning: false,
        }
    }
}

impl Default for CoreParams {
    fn default() -> Self {
        CoreParams {
            request_timeout: "1s".into(),
            max_request_timeout: "4s".into(),
            retransmissions: 3,
            reroute_window: "5s".into(),
            replication_interval: "600s".into(),
            verify_signatures: true,
            sign_messages: true,
            retry_other_first_hop: true,
            direct_response: false,
        }
    }
}

/// What a scenario means, with every duration parsed and checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub duration: Duration,
    pub join_gap: Duration,
    pub sample_interval: Duration,
    pub median_session: Option<Duration>,
    pub refresh: Duration,
    pub net: NetConfig,
    pub core: CoreConfig,
    pub algorithm: AlgorithmParams,
    pub punch_timeout: Duration,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading scenario {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("scenario {}: {e}", path.display()))
    }

    /// Checks and converts everything the run needs.
    pub fn resolve(&self) -> Result<Resolved, String> {
        if self.nodes == 0 {
            return Err("nodes: at least 1".into());
        }
        if !(0.0..1.0).contains(&self.adversary.droppers) {
            return Err("adversary.droppers: a fraction in [0, 1)".into());
        }
        if !(0.0..1.0).contains(&self.adversary.forgers)
            || self.adversary.droppers + self.adversary.forgers >= 1.0
        {
            return Err(
                "adversary.forgers: a fraction in [0, 1), with the droppers below 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.nat.behind) || !(0.0..=1.0).contains(&self.nat.symmetric) {
            return Err("nat.behind is a fraction in [0, 1), nat.symmetric in [0, 1]".into());
        }
        let n = &self.network;
        let latency = match n.latency.as_str() {
            "king" => Latency::Coordinates {
                median_rtt: dur("network.median_rtt", &n.median_rtt)?,
            },
            "uniform" => Latency::PerLink {
                min: dur("network.min", &n.min)?,
                max: dur("network.max", &n.max)?,
            },
            "constant" => Latency::Constant(dur("network.constant", &n.constant)?),
            other => {
                return Err(format!(
                    "network.latency: king, uniform or constant, not {other:?}"
                ))
            }
        };
        if !(0.0..1.0).contains(&n.loss) || !(0.0..1.0).contains(&n.broken_links) {
            return Err("network.loss and network.broken_links are fractions in [0, 1)".into());
        }
        let net = NetConfig {
            latency,
            loss: n.loss,
            broken_links: n.broken_links,
            link_failure_after: opt_dur("network.link_failure_after", &n.link_failure_after)?,
            hop_ack_slack: opt_dur("network.hop_ack_slack", &n.hop_ack_slack)?,
        };
        let median_session = match self.churn.model.as_str() {
            "none" => None,
            "exponential" | "pareto" | "weibull" => {
                Some(dur("churn.median_session", &self.churn.median_session)?)
            }
            other => {
                return Err(format!(
                    "churn.model: none, exponential, pareto or weibull, not {other:?}"
                ))
            }
        };
        if self.churn.model == "pareto" && self.churn.shape <= 1.0 {
            return Err("churn.shape: a Pareto shape must be above 1 (finite mean)".into());
        }
        if self.churn.shape <= 0.0 || !(0.0..=1.0).contains(&self.churn.crash_fraction) {
            return Err("churn.shape must be positive, churn.crash_fraction in [0, 1]".into());
        }
        let c = &self.chord;
        let mut algorithm =
            AlgorithmParams::default_for(&self.algorithm).map_err(|e| e.to_string())?;
        match &mut algorithm {
            AlgorithmParams::Chord(cc) => {
                *cc = ChordConfig {
                    successors: c.successors,
                    predecessors: c.predecessors,
                    fingers: c.fingers,
                    replicas: c.replicas,
                    stabilize_interval: opt_dur("chord.stabilize_interval", &c.stabilize_interval)?,
                    reactive_recovery: c.reactive_recovery,
                    finger_interval: dur("chord.finger_interval", &c.finger_interval)?,
                    fingers_per_round: c.fingers_per_round,
                    self_lookup_interval: dur(
                        "chord.self_lookup_interval",
                        &c.self_lookup_interval,
                    )?,
                    proximity: c.proximity,
                    proximity_routing: c.proximity_routing,
                    self_tuning: c.self_tuning,
                    ..ChordConfig::default()
                }
                .normalized();
            }
            AlgorithmParams::Kademlia(kc) => {
                let k = &self.kademlia;
                *kc = KademliaConfig {
                    k: k.k,
                    replicas: k.replicas,
                    stabilize_interval: opt_dur(
                        "kademlia.stabilize_interval",
                        &k.stabilize_interval,
                    )?,
                    refresh_interval: dur("kademlia.refresh_interval", &k.refresh_interval)?,
                    buckets_per_round: k.buckets_per_round,
                    self_lookup_interval: dur(
                        "kademlia.self_lookup_interval",
                        &k.self_lookup_interval,
                    )?,
                    check_after: opt_dur("kademlia.check_after", &k.check_after)?,
                    checks_per_round: k.checks_per_round,
                    proximity: k.proximity,
                    self_tuning: k.self_tuning,
                    ..KademliaConfig::default()
                }
                .normalized();
            }
            AlgorithmParams::OneHop(oc) => {
                let o = &self.onehop;
                *oc = OneHopConfig {
                    replicas: o.replicas,
                    gossip_interval: dur("onehop.gossip_interval", &o.gossip_interval)?,
                    stabilize_interval: opt_dur(
                        "onehop.stabilize_interval",
                        &o.stabilize_interval,
                    )?,
                    self_lookup_interval: dur(
                        "onehop.self_lookup_interval",
                        &o.self_lookup_interval,
                    )?,
                    confirm_reports: o.confirm_reports,
                    ..OneHopConfig::default()
                }
                .normalized();
            }
        }
        let core = CoreConfig {
            overlay: format!("sim.{}", self.name),
            request_timeout: dur("core.request_timeout", &self.core.request_timeout)?,
            retransmissions: self.core.retransmissions,
            max_request_timeout: dur("core.max_request_timeout", &self.core.max_request_timeout)?,
            reroute_window: dur("core.reroute_window", &self.core.reroute_window)?,
            replication_interval: dur(
                "core.replication_interval",
                &self.core.replication_interval,
            )?,
            verify: if self.core.verify_signatures {
                VerifyMode::SelfSigned
            } else {
                VerifyMode::Skip
            },
            retry_other_first_hop: self.core.retry_other_first_hop,
            direct_response: self.core.direct_response,
            sign_messages: self.core.sign_messages,
            successor_replicas: self.algorithm != p2psip_algorithms::kademlia::NAME,
            ..CoreConfig::default()
        };
        Ok(Resolved {
            duration: dur("duration", &self.duration)?,
            join_gap: dur("join_gap", &self.join_gap)?,
            sample_interval: dur("sample_interval", &self.sample_interval)?
                .max(Duration::from_secs(1)),
            median_session,
            refresh: dur("workload.refresh", &self.workload.refresh)?.max(Duration::from_secs(1)),
            net,
            core,
            algorithm,
            punch_timeout: dur("nat.punch_timeout", &self.nat.punch_timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse_and_resolve() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap();
                s.resolve()
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    #[test]
    fn bad_values_are_explained() {
        let s: Scenario = toml::from_str("[churn]\nmodel = \"gamma\"").unwrap();
        assert!(s.resolve().unwrap_err().contains("gamma"));
        assert!(toml::from_str::<Scenario>("nodez = 5").is_err());
        let s: Scenario = toml::from_str("duration = \"5 fortnights\"").unwrap();
        assert!(s.resolve().unwrap_err().contains("duration"));
    }
}
