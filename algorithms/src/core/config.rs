//! Configuration of the overlay core (independent of the algorithm).

use crate::storage::{KindRegistry, VerifyMode};
use std::time::Duration;

/// What every peer of an overlay must agree on, plus this node's transaction timers.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The overlay name; its hash is the overlay id of every message.
    pub overlay: String,
    /// First retransmission timeout of an end-to-end request; doubles on every retry.
    /// It is the floor: once answers have been timed, the node uses its measured round
    /// trip (smoothed, plus four deviations, Karn's rule) when that is longer.
    pub request_timeout: Duration,
    /// The ceiling of the measured first retransmission timeout.
    pub max_request_timeout: Duration,
    /// How long a request this node sent or passed on is remembered, so that it can be
    /// re-routed at once when the link it went out on fails within that time (hop-by-hop
    /// recovery, instead of waiting for the originator's retransmission).
    pub reroute_window: Duration,
    /// Retransmissions before a request fails with Request_Timeout.
    pub retransmissions: u32,
    /// How often every stored resource's replica set is re-pushed in full (besides the
    /// pushes on every change of responsibility).
    pub replication_interval: Duration,
    /// How often expired values are purged.
    pub expiry_interval: Duration,
    /// How value signatures are checked.
    pub verify: VerifyMode,
    /// The kinds the overlay defines.
    pub kinds: KindRegistry,
    /// Requests per second a peer accepts from each node that originates them over its
    /// link (a client, or a peer's own requests), as a token bucket; 0: no limit.
    pub origin_rate: u32,
    /// The bucket's depth: requests accepted in a burst above the rate.
    pub origin_burst: u32,
    /// Requests per second one linked node may send this one, its own and those it passes
    /// on for others together, whatever originators they name (token bucket); more are
    /// answered Error_Rate_Limited. 0: no limit.
    pub link_rate: u32,
    /// That bucket's depth.
    pub link_burst: u32,
    /// Sign every request and answer this node sends, and take a message addressed to this
    /// node only when its security block is a valid signature of the originator (a
    /// request) or the responder (an answer) its header names (proto/SPEC.md 5). Off:
    /// messages travel unsigned and unchecked, as in an overlay whose members trust each
    /// other (a large simulation).
    pub sign_messages: bool,
    /// With `sign_messages`, sign also the messages that travel straight to their only
    /// destination over that node's own link (a request to a neighbour, its answer, a
    /// replica push): the link's handshake already proves the sender, so by default they
    /// go unsigned (proto/SPEC.md 5.4, "Link-authenticated messages"). Receivers take both.
    pub sign_direct_messages: bool,
    /// Requests each originating neighbour may have in flight through this node (passed
    /// on, answer not back yet); more are answered Error_Rate_Limited. 0: no limit.
    pub origin_max_in_flight: usize,
    /// Send the retransmissions of a routed request through the algorithm's other first
    /// hops in turn (`Topology::next_hop_alternatives`) instead of the same one.
    pub retry_other_first_hop: bool,
    /// The overlay's replicas of a resource are the responsible node's successors on the
    /// ring (Chord, one-hop): a fetch that returned badly signed values is asked again of
    /// the node responsible for the responder's Node-ID + 1, its successor. Off (Kademlia):
    /// such a fetch fails with Error_Forbidden.
    pub successor_replicas: bool,
    /// How many further replicas a fetch with badly signed values is asked of.
    pub refetch_replicas: u32,
    /// Bytes of values one writer (a signer's Node-ID) may have stored at this peer under
    /// one kind; a writer's store beyond it is refused (Error_Data_Too_Large). Copies from
    /// other peers (replication, handover) are never refused: they were accepted once.
    /// 0: no limit.
    pub writer_kind_bytes: u64,
    /// How far ahead of this peer's clock a value's storage_time may be; a store with a
    /// value further ahead is refused (Error_Invalid_Message), so no writer can lock out
    /// later stores with a time far in the future.
    pub max_clock_skew: Duration,
    /// Bytes of stored data this peer holds in all (values, signatures, identities,
    /// metadata; copies included); a store beyond it is refused with Error_Out_Of_Space.
    /// 0: no limit.
    pub store_bytes: u64,
    /// Any node may ask this one for every diagnostic kind (proto/SPEC.md 4.1); off, the
    /// operators' kinds are answered only to `operators` and the node itself.
    pub diagnostics_open: bool,
    /// Nodes that may ask for the operators' diagnostic kinds.
    pub operators: Vec<crate::id::NodeId>,
    /// Ask for direct responses (proto/SPEC.md 8.1): the first attempt of a request routed
    /// to a Resource-ID carries a DIRECT_RESPONSE option with this peer's host candidate,
    /// and the responsible peer answers straight to it; retransmissions go without it (the
    /// symmetric route is the fallback). Only peers ask (a client is not reachable).
    pub direct_response: bool,
    /// Honour other nodes' DIRECT_RESPONSE options.
    pub serve_direct_responses: bool,
    /// Copies to one replica in flight at once (stores of the responsible peer's changes,
    /// re-pushes); more wait at this peer, merged per resource, until it answers.
    pub replication_window: usize,
    /// Copies waiting for room in the windows, over all replicas, beyond which answers to
    /// writers' stores are held until they drain (0: never held).
    pub replication_backlog: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            overlay: "p2psip.example".into(),
            request_timeout: Duration::from_millis(1000),
            retransmissions: 3,
            max_request_timeout: Duration::from_millis(4000),
            reroute_window: Duration::from_secs(5),
            replication_interval: Duration::from_secs(300),
            expiry_interval: Duration::from_secs(60),
            verify: VerifyMode::SelfSigned,
            kinds: KindRegistry::default(),
            origin_rate: 5000,
            origin_burst: 5000,
            link_rate: 20_000,
            link_burst: 20_000,
            sign_messages: true,
            sign_direct_messages: false,
            origin_max_in_flight: 1024,
            retry_other_first_hop: true,
            successor_replicas: true,
            refetch_replicas: 2,
            writer_kind_bytes: 1 << 20,
            replication_window: 32,
            replication_backlog: 256,
            max_clock_skew: Duration::from_secs(300),
            store_bytes: 256 << 20,
            diagnostics_open: false,
            operators: Vec::new(),
            direct_response: false,
            serve_direct_responses: true,
        }
    }
}
