//! The tables of the configuration file besides the top level, with their defaults
//! (documented in `deploy/p2psip.toml`).

use super::*;

/// The `[storage]` table: how the data in `data_dir` (`store.redb`) is kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// When a store is on disk. "always": each store its own durable commit, answered
    /// after it. "batch" (default): stores that arrive together share one durable commit
    /// and each is answered after it (as durable as "always", faster under load). "none":
    /// commits reach the disk once a second; a crash loses up to a second of acknowledged
    /// stores.
    pub sync: String,
    /// A database that fails its integrity check at start: "refuse" (default) stops the
    /// node naming the file and the damage; "quarantine" moves it aside
    /// (`store.redb.corrupt-<unix time>`), starts empty (replicas refill it), logs an ERROR
    /// and counts `p2psip_storage_corruption_events_total`.
    pub on_corruption: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            sync: "batch".into(),
            on_corruption: "refuse".into(),
        }
    }
}

/// The `[security]` table: which nodes an overlay admits (proto/SPEC.md section 5.2).
/// Without `ca` the overlay is self-signed: any Ed25519 key may join, its Node-ID the hash
/// of the key. With `ca` it is enrolled: only nodes holding a certificate of that CA
/// (`p2psip ca issue`) are admitted, with the Node-ID and user name the CA chose.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// The overlay CA's certificate (PEM, `ca.pem` of `p2psip ca init`).
    pub ca: Option<PathBuf>,
    /// This node's certificate from the CA for its identity key (PEM).
    pub certificate: Option<PathBuf>,
    /// With a CA: admit self-signed nodes and accept their values as well.
    pub allow_self_signed: bool,
    /// Revoked certificates: a file of hex serial numbers, one per line
    /// (`p2psip ca revoke` keeps one in the CA directory).
    pub revoked: Option<PathBuf>,
    /// The overlay configuration document signed by the CA (`p2psip ca sign-config`):
    /// checked at start; newer ones arrive from peers (ConfigUpdate).
    pub overlay_config: Option<PathBuf>,
    /// Sign every request and answer, and take a message only when it is signed by the
    /// originator (or responder) it names (proto/SPEC.md 5). Every peer of an overlay must
    /// agree: a node with this off is refused by those that have it on.
    pub sign_messages: bool,
    /// Sign also the messages that go straight to their only destination over its own
    /// link (requests to a neighbour, their answers, replica pushes). Off (the default),
    /// they travel unsigned: the link's TLS handshake already proves the sender's Node-ID
    /// to the receiver (proto/SPEC.md 5.4). Receivers accept both either way.
    pub sign_direct_messages: bool,
}

impl Default for SecuritySection {
    fn default() -> Self {
        SecuritySection {
            ca: None,
            certificate: None,
            allow_self_signed: false,
            revoked: None,
            overlay_config: None,
            sign_messages: true,
            sign_direct_messages: false,
        }
    }
}

/// The `[nat]` table: reachability, hole punching and relaying (proto/SPEC.md section 2.8).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatSection {
    /// "auto": a node configured as a peer learns its reflexive address from the first peer
    /// it links to and routes only if that address is its own (no NAT in between); behind a
    /// NAT it runs as a client of the peer responsible for its Node-ID. "peer": always
    /// route (the operator vouches for reachability). "client": never route.
    pub mode: String,
    /// How long a direct connection attempt (hole punch) may take before the relay is used.
    pub punch_timeout_ms: u64,
    /// Relay application streams for nodes linked to this one that others cannot reach.
    pub relay: bool,
    /// Relayed streams this node carries at once; more are refused (and counted).
    pub relay_max_streams: usize,
    /// Relayed streams one originator may have open through this node at once.
    pub relay_max_streams_per_originator: usize,
    /// A relayed stream nothing crosses (either way) for this long is closed (seconds).
    pub relay_idle_timeout_s: u64,
    /// Bytes one relayed stream may carry, both ways together; then it is cut.
    pub relay_max_stream_bytes: u64,
    /// Bytes one originator's relayed streams may carry per minute, both ways together;
    /// a stream that would go past it is cut (0: no limit).
    pub relay_originator_bytes_per_min: u64,
    /// Serve the echo application (number 7): what an application stream sends comes back.
    /// `p2psip client app-echo` uses it to test application connections.
    pub echo: bool,
}

impl Default for NatSection {
    fn default() -> Self {
        NatSection {
            mode: "auto".into(),
            punch_timeout_ms: 3000,
            relay: true,
            relay_max_streams: 64,
            relay_max_streams_per_originator: 8,
            relay_idle_timeout_s: 120,
            relay_max_stream_bytes: 1 << 20,
            relay_originator_bytes_per_min: 4 << 20,
            echo: false,
        }
    }
}

/// The `[sip]` table: the SIP front-end (registrar and proxy), off by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    pub enabled: bool,
    /// UDP and TCP address of the front-end.
    pub listen: String,
    /// Domain of AORs whose URI names a node by IP address.
    pub domain: String,
    /// Registration lifetimes are clamped to at most this (seconds).
    pub max_expires_s: u32,
    /// Shorter registrations are refused with 423 (seconds).
    pub min_expires_s: u32,
    /// Digest authentication of REGISTER (RFC 3261 section 22, RFC 7616): on by default;
    /// needs `users_file`. Off, anyone who reaches the front-end can register (and so
    /// take over) any AOR of the domain.
    pub auth: bool,
    /// Challenge (407) initial INVITE, MESSAGE and SUBSCRIBE requests whose From is a
    /// user of `domain`, from phones (not from other front-ends); calls from other domains
    /// to this domain's users are taken unchallenged. Needs `auth`.
    pub auth_requests: bool,
    /// Credentials, htdigest lines `user:realm:HA1` (realm = `domain`); `p2psip sip
    /// add-user FILE USER` writes them.
    pub users_file: Option<String>,
    /// In an enrolled overlay: a directory holding, for each user, `<user>.key` and
    /// `<user>.pem`, a certificate the overlay's CA issued for `sip:<user>@<domain>`
    /// (`p2psip ca issue-sip-users`). Registrations are signed with them, so the overlay
    /// needs no `allow_self_signed`. Unset, they are signed with keys derived from the
    /// node's key (self-signed overlays).
    pub user_certificates: Option<String>,
    /// Digest algorithms offered, most preferred first: "SHA-256", "MD5". MD5 alone by
    /// default: Debian's baresip 1.0 (libre) fails a REGISTER when any challenge is not
    /// MD5, and SIPp answers only the first; list "SHA-256" first where every phone
    /// takes the first challenge it supports (RFC 8760; linphone does).
    pub digest_algorithms: Vec<String>,
    /// TCP connections from phones open at once, in all and from one IP address; more
    /// are closed as they arrive (0: no limit).
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_ip: usize,
    /// A TCP connection that carries nothing for this long is closed, unless a device
    /// is registered over it (seconds; RFC 5626 phones send CRLFCRLF keep-alives).
    pub tcp_idle_timeout_s: u64,
    /// Requests a second taken from one IP address (a phone sends a few a minute; an
    /// edge proxy in front sends all its phones'); more are answered 503 with
    /// Retry-After. 0: no limit.
    pub requests_per_s_per_source: u32,
    /// Requests handled at once; more are answered 503 with Retry-After.
    pub max_requests_in_flight: usize,
    /// IP addresses of SIP proxies in front of the front-end (a Kamailio dispatcher):
    /// every phone behind one shares its address, so neither `requests_per_s_per_source`
    /// nor the limit of failed authentications per address applies to them (failures
    /// still count per user).
    pub trusted_proxies: Vec<String>,
    /// RFC 5626: the Flow-Timer (seconds) in the 200 to a phone that registers an
    /// outbound flow straight to this front-end: it sends a keep-alive (STUN on UDP,
    /// CRLFCRLF on TCP) every 80-100% of it, and a UDP flow silent for twice that plus 2 s
    /// counts as failed (the device's next flow is used, or 480). 0: none sent, phones
    /// use their own default, and UDP flows stand until they expire.
    pub flow_timer_s: u32,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            enabled: false,
            listen: "0.0.0.0:5060".into(),
            domain: "p2psip".into(),
            max_expires_s: 3600,
            min_expires_s: 10,
            auth: true,
            auth_requests: true,
            users_file: None,
            user_certificates: None,
            digest_algorithms: vec!["MD5".into()],
            tcp_max_connections: 4096,
            tcp_max_connections_per_ip: 64,
            tcp_idle_timeout_s: 32,
            requests_per_s_per_source: 500,
            max_requests_in_flight: 4096,
            trusted_proxies: Vec::new(),
            flow_timer_s: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// First retransmission timeout of a request, milliseconds (doubles per retry). The
    /// floor: the node uses its measured round trip when that is longer.
    pub request_timeout_ms: u64,
    /// Ceiling of the measured first retransmission timeout, milliseconds.
    pub max_request_timeout_ms: u64,
    /// How long a sent or forwarded request is kept for re-routing if its link fails,
    /// milliseconds (0 = no hop-by-hop recovery).
    pub reroute_window_ms: u64,
    /// Retransmissions before Request_Timeout.
    pub retransmissions: u32,
    /// Full re-push of every replica set, seconds.
    pub replication_interval_s: u64,
    /// Purge of expired values, seconds.
    pub expiry_interval_s: u64,
    /// QUIC keep-alive, milliseconds: holds NAT bindings open. 25 s is below the UDP
    /// binding lifetimes of common NATs (30 s and more; Linux keeps a mapping that saw
    /// traffic both ways 120 s; RFC 4787 asks for 2 minutes). Sent by the end that dialled
    /// a link only: an idle link costs one PING and its ACK per interval (15 s until
    /// 2026-12-07: 0.057 -> 0.051% of a core per idle peer at 25 s).
    pub keep_alive_ms: u64,
    /// QUIC idle timeout, milliseconds: a silent peer's link fails after this (nearly two
    /// keep-alive intervals; a lost PING is probed again by QUIC's loss recovery long
    /// before). A crashed neighbour that is sent anything is noticed sooner, by the
    /// hop acknowledgement.
    pub idle_timeout_ms: u64,
    /// Hop acknowledgement (proto/SPEC.md 2.6), milliseconds: a link whose peer has not
    /// acknowledged a message within three round trips plus this (and the message's
    /// transfer time) is closed as failed, and what was sent on it is routed around the
    /// peer. 3000 by default: a crashed or frozen neighbour is noticed within about 3 s
    /// instead of the idle timeout (45 s), while a peer that is only loaded (a 20-peer
    /// fleet on 2 cores under 64 operations in flight) is never silent that long. 0: off.
    /// 300 is what the simulator models, for fleets with CPU to spare.
    pub hop_ack_slack_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        let c = CoreConfig::default();
        Timers {
            request_timeout_ms: c.request_timeout.as_millis() as u64,
            retransmissions: c.retransmissions,
            max_request_timeout_ms: c.max_request_timeout.as_millis() as u64,
            reroute_window_ms: c.reroute_window.as_millis() as u64,
            replication_interval_s: c.replication_interval.as_secs(),
            expiry_interval_s: c.expiry_interval.as_secs(),
            keep_alive_ms: 25_000,
            idle_timeout_ms: 45_000,
            // Long enough that no loaded live peer trips it (node/tests/cluster.rs,
            // a_loaded_fleet_...: none at 2,000 ms; 11 links closed at 300 ms).
            hop_ack_slack_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted on a stream, bytes (at most the protocol's 1 MiB).
    pub max_message_bytes: usize,
    /// Concurrent incoming streams (in-flight messages) per connection.
    pub max_streams_per_connection: u32,
    /// Messages queued for one neighbour before further ones are dropped.
    pub send_queue: usize,
    /// Messages received and waiting for this node to take them, at most; further ones are
    /// dropped and counted (`reason="event_queue_full"`).
    pub event_queue: usize,
    /// Bytes those waiting messages may hold in all; a message that would pass it is
    /// dropped and counted the same way.
    pub event_queue_bytes: usize,
    /// Bytes the unfinished incoming streams of one connection may hold in all; a stream
    /// that would pass it is given up (counted).
    pub max_connection_buffer_bytes: usize,
    /// Milliseconds an incoming stream may take to finish; a slower one is given up.
    pub stream_read_timeout_ms: u64,
    /// Incoming connections open at once, in total and from one IP address; more are
    /// refused before their handshake (counted). 0: no limit.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Requests per second accepted from each node that originates them over its link (a
    /// client, or a peer's own requests); more are answered Error_Rate_Limited. 0: no limit.
    pub origin_requests_per_s: u32,
    /// Requests accepted at once above that rate (the token bucket's depth).
    pub origin_burst: u32,
    /// Requests per second accepted over one link, the linked node's own and those it
    /// passes on for others together, whatever originators they name; more are answered
    /// Error_Rate_Limited. 0: no limit.
    pub link_requests_per_s: u32,
    /// That bucket's depth.
    pub link_burst: u32,
    /// Requests each originator may have in flight through this peer (passed on, answer
    /// not back yet); more are answered Error_Rate_Limited. 0: no limit.
    pub origin_max_in_flight: usize,
    /// Copies of stored data to one replica in flight at once; more wait at this peer
    /// (merged per resource) until the replica answers, so a burst of writes cannot queue
    /// unbounded work at the replicas.
    pub replication_window: usize,
    /// Copies waiting for room in the replicas' windows (over all replicas) from which
    /// answers to writers' stores are held until the copies drain: a writer faster than
    /// replication is slowed to its pace. 0: never held.
    pub replication_backlog: usize,
    /// Bytes of values one writer may have stored at this peer under one kind; a store
    /// beyond it is answered Error_Data_Too_Large. 0: no limit.
    pub writer_kind_bytes: u64,
    /// Seconds a value's storage_time may be ahead of this peer's clock; a store with a
    /// value further ahead is refused (a writer could otherwise lock its own later stores
    /// out with Data_Too_Old for years).
    pub max_clock_skew_s: u64,
    /// Bytes of stored data this peer holds in all (values with their signatures,
    /// identities and metadata; copies included); a store beyond it is answered
    /// Error_Out_Of_Space. 0: no limit.
    pub store_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: p2psip_proto::limits::MAX_MESSAGE_LEN,
            max_streams_per_connection: 256,
            send_queue: 4096,
            event_queue: 8192,
            event_queue_bytes: 32 << 20,
            max_connection_buffer_bytes: 4 << 20,
            stream_read_timeout_ms: 10_000,
            max_connections: 4096,
            max_connections_per_ip: 256,
            origin_requests_per_s: 5000,
            origin_burst: 5000,
            link_requests_per_s: 20_000,
            link_burst: 20_000,
            origin_max_in_flight: 1024,
            replication_window: CoreConfig::default().replication_window,
            replication_backlog: CoreConfig::default().replication_backlog,
            writer_kind_bytes: CoreConfig::default().writer_kind_bytes,
            max_clock_skew_s: CoreConfig::default().max_clock_skew.as_secs(),
            store_bytes: CoreConfig::default().store_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChordSection {
    pub successors: usize,
    pub predecessors: usize,
    pub fingers: usize,
    /// Copies besides the responsible peer's.
    pub replicas: usize,
    /// Periodic stabilisation interval, seconds; 0 turns it off.
    pub stabilize_interval_s: u64,
    pub reactive_recovery: bool,
    pub finger_interval_s: u64,
    pub self_lookup_interval_s: u64,
    /// Proximity neighbour selection: sample another node of each live finger's interval
    /// at every refresh and keep the one with the shorter measured round trip; and
    /// proximity route selection: the next hop weighs round trips against progress
    /// (SPEC 7.2).
    pub proximity: bool,
    /// Self-tuning (SPEC 7.1): stabilisation and finger refresh as often as the churn this
    /// peer sees needs (2 s to 10 min), instead of stabilize_interval_s and
    /// finger_interval_s; stabilize_interval_s = 0 still turns stabilisation off.
    pub self_tuning: bool,
}

impl Default for ChordSection {
    fn default() -> Self {
        let c = ChordConfig::default();
        ChordSection {
            successors: c.successors,
            predecessors: c.predecessors,
            fingers: c.fingers,
            replicas: c.replicas,
            stabilize_interval_s: c.stabilize_interval.map_or(0, |d| d.as_secs()),
            reactive_recovery: c.reactive_recovery,
            finger_interval_s: c.finger_interval.as_secs(),
            self_lookup_interval_s: c.self_lookup_interval.as_secs(),
            proximity: c.proximity,
            self_tuning: c.self_tuning,
        }
    }
}

/// The `[kademlia]` table, read when `algorithm = "kademlia"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KademliaSection {
    /// Bucket size (4..64).
    pub k: usize,
    /// Copies besides the responsible peer's (the XOR-closest).
    pub replicas: usize,
    /// Update with a nearest node, seconds; 0 turns it off.
    pub stabilize_interval_s: u64,
    pub refresh_interval_s: u64,
    pub buckets_per_round: usize,
    pub self_lookup_interval_s: u64,
    /// A bucket entry not heard from for this long is probed at the next refresh round and
    /// dropped if it does not answer; 0 turns the checks off.
    pub check_after_s: u64,
    /// Most such checks per round.
    pub checks_per_round: usize,
    /// Proximity neighbour selection: a refresh of a full bucket also samples another node
    /// of its range and keeps the faster (measured round trips). Off by default, as for
    /// Chord: a new candidate's first round trip includes its QUIC handshake.
    pub proximity: bool,
    /// Self-tuning (SPEC 7.1): stabilisation and bucket refresh as often as the churn
    /// this peer sees in its near set needs (2 s to 10 min), instead of
    /// stabilize_interval_s and refresh_interval_s; stabilize_interval_s = 0 still turns
    /// stabilisation off.
    pub self_tuning: bool,
}

impl Default for KademliaSection {
    fn default() -> Self {
        let c = KademliaConfig::default();
        KademliaSection {
            k: c.k,
            replicas: c.replicas,
            stabilize_interval_s: c.stabilize_interval.map_or(0, |d| d.as_secs()),
            refresh_interval_s: c.refresh_interval.as_secs(),
            buckets_per_round: c.buckets_per_round,
            self_lookup_interval_s: c.self_lookup_interval.as_secs(),
            check_after_s: c.check_after.map_or(0, |d| d.as_secs()),
            checks_per_round: c.checks_per_round,
            proximity: c.proximity,
            self_tuning: c.self_tuning,
        }
    }
}

/// The `[onehop]` table, read when `algorithm = "onehop"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OneHopSection {
    /// Copies besides the responsible peer's.
    pub replicas: usize,
    /// How often queued membership events are sent on, milliseconds (an event reaches
    /// every peer within about log2(N) of these).
    pub gossip_interval_ms: u64,
    /// Successor check, seconds; 0 turns it off.
    pub stabilize_interval_s: u64,
    pub self_lookup_interval_s: u64,
    /// Another peer's report of a failure or arrival is applied only once this node's own
    /// probe agrees (proto/SPEC.md 5.1). Turning it off lets any member evict others.
    pub confirm_reports: bool,
}

impl Default for OneHopSection {
    fn default() -> Self {
        let c = OneHopConfig::default();
        OneHopSection {
            replicas: c.replicas,
            gossip_interval_ms: c.gossip_interval.as_millis() as u64,
            stabilize_interval_s: c.stabilize_interval.map_or(0, |d| d.as_secs()),
            self_lookup_interval_s: c.self_lookup_interval.as_secs(),
            confirm_reports: c.confirm_reports,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// "human" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "p2psip=debug".
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// The `[diagnostics]` table: who may ask this node for the operators' diagnostic kinds
/// (routing table, storage, memory, message counts, round trips, NAT state: proto/SPEC.md
/// 4.1; `p2psip client diag`, `routing-table`, `storage`). Self-signed overlays only: in
/// an enrolled overlay the overlay configuration document's `operators` names them.
/// PathTrack's kinds (addresses, uptime, load, version) are answered to any member.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsSection {
    /// Answer every kind to anyone (a lab or a devnet; default false).
    pub open: bool,
    /// Node-IDs (32 hex digits) of the operators: the identity a `p2psip client
    /// --identity KEY` runs with (`p2psip id KEY` prints its Node-ID).
    pub operators: Vec<String>,
}

/// One `[[services]]` entry: a service this node registers in the overlay (ReDiR,
/// proto/SPEC.md 6.2) and keeps registered while it runs; `p2psip client services NAME`
/// finds it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The service name: "turn", "voicemail", "conference", "pstn-gateway", or any.
    pub name: String,
    /// Where the service is reached, host:port (e.g. the TURN server's address).
    pub address: String,
    /// Optional attributes handed to whoever finds it ("transport=udp").
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Seconds the records live; the node refreshes them every third of it.
    #[serde(default = "default_service_lifetime")]
    pub lifetime_s: u32,
}

fn default_service_lifetime() -> u32 {
    600
}

impl ServiceSection {
    /// Checks one entry (sizes bounded, so that every record fits the REDIR kind's limit).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            invalid!(
                "services: name {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            );
        }
        if self.address.is_empty() || self.address.len() > 255 {
            invalid!("services.{}: address must be 1 to 255 bytes", self.name);
        }
        if self.attributes.len() > 16 || self.attributes.iter().any(|a| a.len() > 128) {
            invalid!(
                "services.{}: at most 16 attributes of at most 128 bytes",
                self.name
            );
        }
        if !(30..=86_400).contains(&self.lifetime_s) {
            invalid!("services.{}: lifetime_s must be 30 to 86400", self.name);
        }
        Ok(())
    }
}
