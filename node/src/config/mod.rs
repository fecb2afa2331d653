//! The node configuration: one TOML file (every field documented in
//! `deploy/p2psip.toml`), overridden by `P2PSIP_*` environment variables and flags.

/// Refuses a setting: `invalid!("field: why {}", x)` returns [`ConfigError::Invalid`].
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(ConfigError::Invalid(format!($($arg)*)))
    };
}

mod sections;

pub use self::sections::*;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not TOML, or a field that does not exist or has the wrong type.
    #[error("config {path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    /// A setting that parses but makes no sense: its name, then why.
    #[error("{0}")]
    Invalid(String),
}
use p2psip_algorithms::chord::ChordConfig;
use p2psip_algorithms::core::CoreConfig;
use p2psip_algorithms::kademlia::KademliaConfig;
use p2psip_algorithms::onehop::OneHopConfig;
use p2psip_algorithms::AlgorithmParams;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Overlay name; peers of other overlays are refused.
    pub overlay: String,
    /// DHT algorithm: every peer of an overlay must run the same one.
    pub algorithm: String,
    /// UDP address the QUIC endpoint listens on.
    pub listen: String,
    /// Peers to join through, as "host:port" (names resolve with a built-in DNS resolver
    /// reading /etc/resolv.conf and /etc/hosts). Empty: this node starts a new overlay. When
    /// the first entry is this node itself (a StatefulSet's first pod), it joins through
    /// the others if one answers within `form_after_s`, and else starts the overlay.
    pub bootstrap: Vec<String>,
    /// Seconds the first bootstrap peer waits for the others before starting the overlay.
    pub form_after_s: u64,
    /// The address other nodes reach this one at, "ip:port" or "ip". Empty: the listen
    /// address, or, when that is unspecified (0.0.0.0), the address of the interface
    /// that routes towards the first bootstrap peer (or the default route).
    pub advertise: String,
    /// File holding the node's Ed25519 key (created on first start).
    pub identity: Option<PathBuf>,
    /// User name bound to the identity (for USER-MATCH kinds written by this node).
    pub user: String,
    /// Directory for the stored data and the bootstrap cache; none: memory only.
    pub data_dir: Option<PathBuf>,
    /// TCP address of the Prometheus `/metrics` endpoint; empty: no metrics endpoint.
    pub metrics: String,
    pub timers: Timers,
    pub limits: Limits,
    pub chord: ChordSection,
    pub kademlia: KademliaSection,
    pub onehop: OneHopSection,
    pub sip: SipSection,
    pub nat: NatSection,
    pub security: SecuritySection,
    pub storage: StorageSection,
    pub log: LogSection,
    pub diagnostics: DiagnosticsSection,
    /// Services this node registers (`[[services]]`).
    pub services: Vec<ServiceSection>,
    /// Ask for direct responses to the lookups this peer originates (proto/SPEC.md 8.1):
    /// the responsible peer answers straight to this peer's advertised address instead of
    /// back along the path; retransmissions fall back to the path. For peers others can
    /// connect to (a peer behind a NAT, running as a client, never asks).
    pub direct_response: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            overlay: "p2psip.example".into(),
            algorithm: "chord".into(),
            listen: "0.0.0.0:4700".into(),
            bootstrap: Vec::new(),
            form_after_s: 10,
            advertise: String::new(),
            identity: None,
            user: String::new(),
            data_dir: None,
            metrics: String::new(),
            timers: Timers::default(),
            limits: Limits::default(),
            chord: ChordSection::default(),
            kademlia: KademliaSection::default(),
            onehop: OneHopSection::default(),
            sip: SipSection::default(),
            nat: NatSection::default(),
            security: SecuritySection::default(),
            storage: StorageSection::default(),
            log: LogSection::default(),
            diagnostics: DiagnosticsSection::default(),
            services: Vec::new(),
            direct_response: false,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown fields are errors (a typo must not be ignored).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.display().to_string(),
            source,
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.overlay.is_empty() {
            invalid!("overlay: the overlay name must not be empty");
        }
        if let Err(e) = AlgorithmParams::default_for(&self.algorithm) {
            invalid!("algorithm: {e}");
        }
        if self.limits.max_message_bytes > p2psip_proto::limits::MAX_MESSAGE_LEN {
            invalid!(
                "limits.max_message_bytes: at most {} (the protocol limit)",
                p2psip_proto::limits::MAX_MESSAGE_LEN
            );
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            invalid!(
                "log.format: \"human\" or \"json\", not {:?}",
                self.log.format
            );
        }
        if self.sip.enabled {
            if let Err(e) = self.sip.listen.parse::<std::net::SocketAddr>() {
                invalid!("sip.listen {:?}: {e}", self.sip.listen);
            }
            if self.sip.domain.is_empty() {
                invalid!("sip.domain must not be empty");
            }
            if self.sip.min_expires_s > self.sip.max_expires_s {
                invalid!("sip.min_expires_s must not exceed sip.max_expires_s");
            }
        }
        if !matches!(self.nat.mode.as_str(), "auto" | "peer" | "client") {
            invalid!(
                "nat.mode: \"auto\", \"peer\" or \"client\", not {:?}",
                self.nat.mode
            );
        }
        if self.security.ca.is_some() != self.security.certificate.is_some() {
            invalid!(
                "security.ca and security.certificate go together (an enrolled node needs both)"
            );
        }
        if crate::storage::SyncMode::parse(&self.storage.sync).is_none() {
            invalid!(
                "storage.sync: \"always\", \"batch\" or \"none\", not {:?}",
                self.storage.sync
            );
        }
        if crate::storage::OnCorruption::parse(&self.storage.on_corruption).is_none() {
            invalid!(
                "storage.on_corruption: \"refuse\" or \"quarantine\", not {:?}",
                self.storage.on_corruption
            );
        }
        if self.limits.event_queue_bytes < self.limits.max_message_bytes {
            invalid!(
                "limits.event_queue_bytes ({}) must be at least limits.max_message_bytes ({}): a message that size could never wait for the node",
                self.limits.event_queue_bytes,
                self.limits.max_message_bytes
            );
        }
        if self.limits.replication_window == 0 {
            invalid!(
                "limits.replication_window must be positive: copies to a replica would never leave"
            );
        }
        if self.nat.relay_idle_timeout_s == 0 {
            invalid!("nat.relay_idle_timeout_s must be positive");
        }
        if self.nat.punch_timeout_ms == 0 {
            invalid!("nat.punch_timeout_ms must be positive");
        }
        if self.timers.request_timeout_ms == 0 {
            invalid!("timers.request_timeout_ms must be positive");
        }
        if self.timers.max_request_timeout_ms < self.timers.request_timeout_ms {
            invalid!(
                "timers.max_request_timeout_ms ({}) must be at least timers.request_timeout_ms ({})",
                self.timers.max_request_timeout_ms,
                self.timers.request_timeout_ms
            );
        }
        if self.security.ca.is_some()
            && (self.diagnostics.open || !self.diagnostics.operators.is_empty())
        {
            invalid!(
                "diagnostics.open and diagnostics.operators are for self-signed overlays; in an \
                 enrolled overlay the overlay configuration document's `operators` names them"
            );
        }
        self.operators()?;
        if self.services.len() > 16 {
            invalid!("services: at most 16 entries");
        }
        for s in &self.services {
            s.validate()?;
        }
        Ok(())
    }

    /// The Node-IDs of `diagnostics.operators`.
    pub fn operators(&self) -> Result<Vec<p2psip_algorithms::NodeId>, ConfigError> {
        self.diagnostics
            .operators
            .iter()
            .map(|s| {
                crate::ops::parse_node_id(s)
                    .map_err(|e| ConfigError::Invalid(format!("diagnostics.operators: {e}")))
            })
            .collect()
    }

    /// The overlay core's configuration.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            overlay: self.overlay.clone(),
            request_timeout: Duration::from_millis(self.timers.request_timeout_ms),
            retransmissions: self.timers.retransmissions,
            max_request_timeout: Duration::from_millis(self.timers.max_request_timeout_ms),
            reroute_window: Duration::from_millis(self.timers.reroute_window_ms),
            replication_interval: Duration::from_secs(self.timers.replication_interval_s.max(1)),
            expiry_interval: Duration::from_secs(self.timers.expiry_interval_s.max(1)),
            origin_rate: self.limits.origin_requests_per_s,
            origin_burst: self.limits.origin_burst,
            link_rate: self.limits.link_requests_per_s,
            link_burst: self.limits.link_burst,
            sign_messages: self.security.sign_messages,
            sign_direct_messages: self.security.sign_direct_messages,
            origin_max_in_flight: self.limits.origin_max_in_flight,
            replication_window: self.limits.replication_window,
            replication_backlog: self.limits.replication_backlog,
            writer_kind_bytes: self.limits.writer_kind_bytes,
            max_clock_skew: Duration::from_secs(self.limits.max_clock_skew_s),
            store_bytes: self.limits.store_bytes,
            successor_replicas: self.algorithm != p2psip_algorithms::kademlia::NAME,
            direct_response: self.direct_response,
            diagnostics_open: self.diagnostics.open,
            operators: self.operators().unwrap_or_default(),
            ..CoreConfig::default()
        }
    }

    /// The algorithm and its parameters (the one place configuration picks it).
    pub fn algorithm_params(&self) -> Result<AlgorithmParams, ConfigError> {
        let mut p = AlgorithmParams::default_for(&self.algorithm)
            .map_err(|e| ConfigError::Invalid(format!("algorithm: {e}")))?;
        match &mut p {
            AlgorithmParams::Chord(c) => {
                let s = &self.chord;
                *c = ChordConfig {
                    successors: s.successors,
                    predecessors: s.predecessors,
                    fingers: s.fingers,
                    replicas: s.replicas,
                    stabilize_interval: secs_or_off(s.stabilize_interval_s),
                    reactive_recovery: s.reactive_recovery,
                    finger_interval: Duration::from_secs(s.finger_interval_s.max(1)),
                    self_lookup_interval: Duration::from_secs(s.self_lookup_interval_s.max(1)),
                    proximity: s.proximity,
                    self_tuning: s.self_tuning,
                    ..ChordConfig::default()
                };
            }
            AlgorithmParams::Kademlia(c) => {
                let s = &self.kademlia;
                *c = KademliaConfig {
                    k: s.k,
                    replicas: s.replicas,
                    stabilize_interval: secs_or_off(s.stabilize_interval_s),
                    refresh_interval: Duration::from_secs(s.refresh_interval_s.max(1)),
                    buckets_per_round: s.buckets_per_round,
                    self_lookup_interval: Duration::from_secs(s.self_lookup_interval_s.max(1)),
                    check_after: secs_or_off(s.check_after_s),
                    checks_per_round: s.checks_per_round,
                    proximity: s.proximity,
                    self_tuning: s.self_tuning,
                    ..KademliaConfig::default()
                }
                .normalized();
            }
            AlgorithmParams::OneHop(c) => {
                let s = &self.onehop;
                *c = OneHopConfig {
                    replicas: s.replicas,
                    gossip_interval: Duration::from_millis(s.gossip_interval_ms.max(10)),
                    stabilize_interval: secs_or_off(s.stabilize_interval_s),
                    self_lookup_interval: Duration::from_secs(s.self_lookup_interval_s.max(1)),
                    confirm_reports: s.confirm_reports,
                    ..OneHopConfig::default()
                }
                .normalized();
            }
        }
        Ok(p)
    }
}

/// An interval in seconds where 0 means off.
fn secs_or_off(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_validates() {
        let text = include_str!("../../../deploy/p2psip.toml");
        let cfg: Config = toml::from_str(text).expect("deploy/p2psip.toml parses");
        cfg.validate().expect("and validates");
        assert_eq!(cfg.algorithm, "chord");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(toml::from_str::<Config>("overlay = \"x\"\nalgorthm = \"chord\"").is_err());
        let cfg: Config = toml::from_str("algorithm = \"pastry\"").unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pastry"), "{e}");
    }

    #[test]
    fn diagnostics_operators_are_node_ids_and_only_for_self_signed_overlays() {
        let ok: Config =
            toml::from_str("[diagnostics]\noperators = [\"000102030405060708090a0b0c0d0e0f\"]")
                .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.core().operators.len(), 1);
        let bad: Config = toml::from_str("[diagnostics]\noperators = [\"abc\"]").unwrap();
        let e = format!("{:#}", bad.validate().unwrap_err());
        assert!(e.contains("diagnostics.operators"), "{e}");
        let enrolled: Config = toml::from_str(
            "[security]\nca = \"ca.pem\"\ncertificate = \"n.pem\"\n[diagnostics]\nopen = true",
        )
        .unwrap();
        let e = enrolled.validate().unwrap_err().to_string();
        assert!(e.contains("overlay configuration document"), "{e}");
    }
}
