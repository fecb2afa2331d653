//! Metrics through the `metrics` facade; the binary installs the Prometheus exporter.
//! Names follow `p2psip_<subsystem>_<what>_<unit>`; every series carries a `node` label
//! (the first 8 hex digits of the Node-ID) so several nodes can share one process.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;
use p2psip_proto::body::method_name;
use p2psip_proto::{parse_header, split_contents, Body};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once an exporter is installed: without one, nothing is computed for metrics (no
/// header parsing per message, no periodic walk of the store).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Log lines that could not be written (standard error failed, e.g. a full disk).
static LOG_WRITE_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Log lines that could not be written so far.
pub fn log_write_failures() -> u64 {
    LOG_WRITE_FAILURES.load(Ordering::Relaxed)
}

/// Counts a log line that could not be written.
pub fn log_write_failed() {
    LOG_WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// The `node` label of a node's series (its Node-ID as `Display` shows it: the first 8
/// hex digits).
pub fn label(id: p2psip_algorithms::NodeId) -> String {
    format!("{id}")
}

/// A keep-alive a SIP front-end answered (RFC 5626: `stun` on its UDP port, `crlf` on
/// a stream).
pub fn sip_keepalive(node: p2psip_algorithms::NodeId, kind: &'static str) {
    counter!("p2psip_sip_keepalives_total", "node" => label(node), "kind" => kind).increment(1);
}

/// Whether an exporter is installed (metrics are computed only then).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Most scrapes served at once; more connections wait to be accepted.
const SCRAPES_AT_ONCE: usize = 16;
/// A scrape connection that sends no complete request in this long is closed.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the metrics endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint on {addr}: {error}")]
    Endpoint {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("metrics recorder: {0}")]
    Recorder(metrics_exporter_prometheus::BuildError),
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr` (port 0: one the
/// kernel picks); returns the address it listens on. The exposition is the exporter's
/// own rendering; this only answers HTTP with it.
pub async fn install(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let endpoint = |error| MetricsError::Endpoint { addr, error };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(endpoint)?;
    let bound = listener.local_addr().map_err(endpoint)?;
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .and_then(|b| b.install_recorder())
        .map_err(MetricsError::Recorder)?;
    ENABLED.store(true, Ordering::Relaxed);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(SCRAPES_AT_ONCE));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let tcp = match listener.accept().await {
                Ok((t, _)) => t,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(move |r| {
                    std::future::ready(Ok::<_, std::convert::Infallible>(scrape(&handle, &r)))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
            });
        }
    });
    Ok(bound)
}

/// The answer to one request to the metrics endpoint.
fn scrape<B>(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    req: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = if req.method() != hyper::Method::GET {
        (hyper::StatusCode::METHOD_NOT_ALLOWED, String::new())
    } else if req.uri().path() != "/metrics" {
        (
            hyper::StatusCode::NOT_FOUND,
            "metrics are at /metrics\n".to_string(),
        )
    } else {
        (hyper::StatusCode::OK, handle.render())
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Counts one message by direction and method (and error code for Error answers).
pub fn message(node: &str, direction: &'static str, bytes: &[u8]) {
    if !enabled() {
        return;
    }
    let Ok(h) = parse_header(bytes) else {
        counter!("p2psip_messages_malformed_total", "node" => node.to_string()).increment(1);
        return;
    };
    let Ok(c) = split_contents(&h, bytes) else {
        counter!("p2psip_messages_malformed_total", "node" => node.to_string()).increment(1);
        return;
    };
    let method = method_name(c.code);
    counter!("p2psip_messages_total", "node" => node.to_string(), "direction" => direction, "method" => method)
        .increment(1);
    counter!("p2psip_transport_bytes_total", "node" => node.to_string(), "direction" => direction)
        .increment(bytes.len() as u64);
    if c.code == p2psip_proto::ERROR_CODE {
        if let Ok(Body::ErrorAns(e)) = Body::decode(c.code, c.body) {
            let name = p2psip_proto::pb::ErrorCode::try_from(e.code)
                .map(|c| c.as_str_name())
                .unwrap_or("UNKNOWN");
            counter!("p2psip_errors_total", "node" => node.to_string(), "direction" => direction, "code" => name)
                .increment(1);
        }
    }
}

/// A finished transaction of a client operation.
pub fn transaction(node: &str, method: &'static str, seconds: f64, hops: u32, ok: bool) {
    if !enabled() {
        return;
    }
    histogram!("p2psip_transaction_duration_seconds", "node" => node.to_string(), "method" => method)
        .record(seconds);
    histogram!("p2psip_routing_hops", "node" => node.to_string()).record(f64::from(hops));
    if !ok {
        counter!("p2psip_transaction_failures_total", "node" => node.to_string(), "method" => method)
            .increment(1);
    }
}

/// What a node knows of its reachability (proto/SPEC.md 2.8).
pub struct NatState {
    pub behind_nat: bool,
    /// Its NAT maps each destination to a new port.
    pub symmetric: bool,
    /// It routes for others (a peer).
    pub routes: bool,
    /// A peer, or a client whose admitting peer is responsible for its Node-ID.
    pub located: bool,
}

pub fn nat(node: &str, st: NatState) {
    if !enabled() {
        return;
    }
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    gauge!("p2psip_nat_behind", "node" => node.to_string()).set(b(st.behind_nat));
    gauge!("p2psip_nat_symmetric", "node" => node.to_string()).set(b(st.symmetric));
    gauge!("p2psip_nat_routing", "node" => node.to_string()).set(b(st.routes));
    gauge!("p2psip_nat_located", "node" => node.to_string()).set(b(st.located));
}

/// A peer certificate the handshake refused, by reason: not_enrolled, expired, revoked,
/// not_yet_valid, invalid (wrong CA, wrong overlay, malformed).
pub fn cert_refused(node: &str, why: &crate::security::trust::TrustError) {
    counter!("p2psip_certificates_refused_total", "node" => node.to_string(), "reason" => why.reason())
        .increment(1);
}

/// The sequence number of the overlay configuration document a node holds.
pub fn config_sequence(node: &str, sequence: u32) {
    gauge!("p2psip_overlay_config_sequence", "node" => node.to_string()).set(f64::from(sequence));
}

/// An overlay configuration document a peer sent that this node refused.
pub fn config_refused(node: &str) {
    counter!("p2psip_overlay_config_refused_total", "node" => node.to_string()).increment(1);
}

/// Join and leave events.
pub fn overlay_event(node: &str, what: &'static str) {
    counter!("p2psip_overlay_events_total", "node" => node.to_string(), "event" => what)
        .increment(1);
}
