//! The periodic gauges of a node (storage, transport, the core's counters), exported by
//! the driver; `crate::metrics` holds the per-event recording.

use crate::metrics;
use crate::storage::DashStore;
use crate::transport::Transport;
use ::metrics::{counter, gauge};
use p2psip_algorithms::OverlayNode;
use std::sync::atomic::Ordering;

/// Periodic gauges and the core's counters.
pub(super) fn export(
    node: &str,
    core: &OverlayNode,
    store: &DashStore,
    transport: &Transport,
    uptime_s: f64,
) {
    if !metrics::enabled() {
        return;
    }
    let n = || node.to_string();
    let s = core.stats();
    counter!("p2psip_messages_forwarded_total", "node" => n()).absolute(s.forwarded);
    counter!("p2psip_messages_served_total", "node" => n()).absolute(s.served);
    counter!("p2psip_direct_responses_total", "node" => n()).absolute(s.direct_responses);
    counter!("p2psip_stores_backpressured_total", "node" => n()).absolute(s.stores_backpressured);
    counter!("p2psip_signature_batches_total", "node" => n()).absolute(s.signature_batches);
    counter!("p2psip_signature_batch_failures_total", "node" => n())
        .absolute(s.signature_batch_failures);
    counter!("p2psip_signatures_batched_total", "node" => n()).absolute(s.signatures_batched);
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "malformed")
        .absolute(s.malformed);
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "wrong_overlay")
        .absolute(s.wrong_overlay);
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "loop").absolute(s.loops);
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "forged_origin")
        .absolute(s.forged);
    counter!("p2psip_requests_rate_limited_total", "node" => n()).absolute(s.rate_limited);
    counter!("p2psip_fetch_bad_values_total", "node" => n()).absolute(s.bad_values);
    counter!("p2psip_store_quota_refused_total", "node" => n()).absolute(s.quota_refused);
    counter!("p2psip_store_copies_refused_total", "node" => n()).absolute(s.copies_refused);
    counter!("p2psip_store_full_refused_total", "node" => n()).absolute(s.store_full);
    counter!("p2psip_storage_commit_failures_total", "node" => n()).absolute(s.commit_failures);
    counter!("p2psip_storage_corruption_events_total", "node" => n())
        .absolute(store.corruption_events());
    gauge!("p2psip_storage_disk_bytes", "node" => n()).set(store.disk_bytes() as f64);
    counter!("p2psip_log_write_failures_total").absolute(metrics::log_write_failures());
    for (reason, n) in crate::remote_log::suppressed() {
        counter!("p2psip_log_lines_suppressed_total", "reason" => reason).absolute(n);
    }
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "queue_full")
        .absolute(transport.stats.queue_full_drops.load(Ordering::Relaxed));
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "event_queue_full")
        .absolute(transport.stats.event_queue_drops.load(Ordering::Relaxed));
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "oversized")
        .absolute(transport.stats.oversized_drops.load(Ordering::Relaxed));
    counter!("p2psip_transport_refused_connections_total", "node" => n())
        .absolute(transport.stats.refused_connections.load(Ordering::Relaxed));
    gauge!("p2psip_transport_incoming_connections", "node" => n())
        .set(transport.incoming_connections() as f64);
    counter!("p2psip_transport_connection_limit_refused_total", "node" => n()).absolute(
        transport
            .stats
            .connection_limit_refused
            .load(Ordering::Relaxed),
    );
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "buffer_full")
        .absolute(transport.stats.buffer_full_drops.load(Ordering::Relaxed));
    counter!("p2psip_messages_dropped_total", "node" => n(), "reason" => "stream_timeout")
        .absolute(transport.stats.stream_timeouts.load(Ordering::Relaxed));
    counter!("p2psip_links_unacknowledged_total", "node" => n())
        .absolute(transport.stats.unacknowledged_links.load(Ordering::Relaxed));
    counter!("p2psip_app_streams_total", "node" => n(), "direction" => "opened")
        .absolute(transport.stats.app_streams_opened.load(Ordering::Relaxed));
    counter!("p2psip_app_streams_total", "node" => n(), "direction" => "accepted")
        .absolute(transport.stats.app_streams_accepted.load(Ordering::Relaxed));
    let ts = &transport.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter!("p2psip_app_connections_total", "node" => n(), "path" => "direct")
        .absolute(get(&ts.app_direct));
    counter!("p2psip_app_connections_total", "node" => n(), "path" => "relayed")
        .absolute(get(&ts.app_relayed));
    counter!("p2psip_nat_punch_failures_total", "node" => n()).absolute(get(&ts.punch_failed));
    counter!("p2psip_relay_streams_total", "node" => n(), "outcome" => "relayed")
        .absolute(get(&ts.relay_streams));
    counter!("p2psip_relay_streams_total", "node" => n(), "outcome" => "refused")
        .absolute(get(&ts.relay_refused));
    for (outcome, c) in [
        ("cut_idle", &ts.relay_cut_idle),
        ("cut_stream_bytes", &ts.relay_cut_stream_bytes),
        ("cut_originator_bytes", &ts.relay_cut_originator_bytes),
    ] {
        counter!("p2psip_relay_streams_total", "node" => n(), "outcome" => outcome)
            .absolute(get(c));
    }
    counter!("p2psip_relay_bytes_total", "node" => n()).absolute(get(&ts.relay_bytes));
    gauge!("p2psip_relay_streams_active", "node" => n()).set(get(&ts.relay_active) as f64);
    counter!("p2psip_transaction_retransmissions_total", "node" => n()).absolute(s.retransmissions);
    counter!("p2psip_requests_rerouted_total", "node" => n()).absolute(s.rerouted);
    counter!("p2psip_transaction_timeouts_total", "node" => n()).absolute(s.timeouts);
    counter!("p2psip_replication_stores_total", "node" => n()).absolute(s.replication_stores);
    counter!("p2psip_replication_waiting_total", "node" => n()).absolute(s.replication_waiting);
    let rt = core.routing_table();
    gauge!("p2psip_routing_successors", "node" => n()).set(rt.successors.len() as f64);
    gauge!("p2psip_routing_predecessors", "node" => n()).set(rt.predecessors.len() as f64);
    gauge!("p2psip_routing_fingers", "node" => n()).set(rt.fingers.len() as f64);
    gauge!("p2psip_transport_connections_open", "node" => n())
        .set(transport.connection_count() as f64);
    gauge!("p2psip_overlay_joined", "node" => n()).set(if core.is_joined() { 1.0 } else { 0.0 });
    gauge!("p2psip_uptime_seconds", "node" => n()).set(uptime_s);
    for (kind, (values, bytes)) in store.usage_by_kind() {
        gauge!("p2psip_storage_values", "node" => n(), "kind" => kind.to_string())
            .set(values as f64);
        gauge!("p2psip_storage_bytes", "node" => n(), "kind" => kind.to_string()).set(bytes as f64);
    }
}
