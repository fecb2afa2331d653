//! Counters the core keeps about itself; the daemon exports them as metrics, the simulator
//! sums them into reports.

/// Monotonic counters of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests and answers passed on towards another node.
    pub forwarded: u64,
    /// Requests served by this node.
    pub served: u64,
    /// Messages whose header or contents could not be parsed (dropped).
    pub malformed: u64,
    /// Messages of another overlay (dropped).
    pub wrong_overlay: u64,
    /// Requests that came back to a node that had already forwarded them (dropped).
    pub loops: u64,
    /// Requests for a resource that reached this peer before it finished joining (dropped;
    /// the originator retransmits).
    pub not_ready: u64,
    /// Requests answered TTL_Exceeded.
    pub ttl_exceeded: u64,
    /// Answers that matched no transaction (late duplicates).
    pub stray_answers: u64,
    pub retransmissions: u64,
    /// Requests sent again along another route because the link they went out on failed.
    pub rerouted: u64,
    pub timeouts: u64,
    /// Store requests sent to keep replicas and hand data over.
    pub replication_stores: u64,
    /// Copies that waited for room in their replica's window (replication_window).
    pub replication_waiting: u64,
    /// Requests whose originator claimed a Node-ID other than its link's (dropped).
    pub forged: u64,
    /// Error answers sent.
    pub errors_sent: u64,
    /// Requests refused because their originator (the linked node) exceeded its rate.
    pub rate_limited: u64,
    /// Of those, requests refused because the link they came over exceeded its rate.
    pub link_limited: u64,
    /// Requests for this node refused (Error_Forbidden) because their security block is
    /// not a valid signature of the originator they name.
    pub bad_signatures: u64,
    /// Answers dropped because they are not signed by the responder they name, or name
    /// another responder than the node the request was sent to.
    pub forged_answers: u64,
    /// Stores refused because their writer's bytes under the kind would exceed the quota.
    pub quota_refused: u64,
    /// Fetched values whose signature or access policy did not check out (the fetch was
    /// asked again of the next replica).
    pub bad_values: u64,
    /// Commits of the storage that failed (disk full, I/O error); the stores waiting on
    /// them were answered Error_Out_Of_Space.
    pub commit_failures: u64,
    /// Copies (replica_number > 0) from outside the resource's replica neighbourhood that
    /// the writer's quota refused.
    pub copies_refused: u64,
    /// Stores refused because this peer holds its `store_bytes` limit (Out_Of_Space).
    pub store_full: u64,
    /// Answers sent straight to their originator (DIRECT_RESPONSE).
    pub direct_responses: u64,
    /// Answers to writers' stores held while replication lagged (`replication_backlog`).
    pub stores_backpressured: u64,
    /// Batch checks of the signatures of messages that arrived together.
    pub signature_batches: u64,
    /// Of those, batches that failed (a bad signature among them: each was checked alone).
    pub signature_batch_failures: u64,
    /// Signatures a batch check verified.
    pub signatures_batched: u64,
}
