//! `p2psip client bench`: the client side of the side-by-side benchmark (`bench/opendht`).
//! One client of one admitting peer: it waits until values it stores come back (the
//! overlay is ready), then measures put and get latency one request at a time and the
//! put+get throughput with a window of requests in flight. Every value is a signed
//! USER-VALUE under its own name, as `client store` writes it.

use crate::config::Config;
use crate::ops::{build_value, name_seed, values_of};
use crate::runtime::{self, NodeClient, Role};
use anyhow::bail;
use p2psip_algorithms::storage::KIND_USER_VALUE;
use p2psip_algorithms::Id;
use p2psip_proto::security::Identity;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Values put, then got, one at a time.
    pub count: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Length of the throughput phase.
    pub duration: Duration,
    /// Requests in flight during the throughput phase.
    pub window: usize,
    /// Values stored and fetched per readiness round.
    pub probes: usize,
    /// Give up waiting for readiness after this.
    pub ready_timeout: Duration,
    /// One request's limit.
    pub op_timeout: Duration,
    /// Another peer through which the first values are fetched at the end (a fleet split
    /// into islands shows here).
    pub check_peer: Option<SocketAddr>,
}

/// Values of the latency phase fetched again through the check peer.
const CHECKED: usize = 100;

/// A value of `size` bytes that names its key (so a wrong answer is seen).
fn payload(key: &str, size: usize) -> Vec<u8> {
    let mut v: Vec<u8> = format!("{key}|").into_bytes();
    let fill = hex::encode(Id::hash_of(key.as_bytes()).to_bytes());
    while v.len() < size {
        v.extend_from_slice(fill.as_bytes());
    }
    v.truncate(size.max(1));
    v
}

async fn put(c: &NodeClient, key: &str, size: usize, limit: Duration) -> anyhow::Result<()> {
    let writer = Identity::from_seed(name_seed(key), key.to_string());
    let (res, v) = build_value(
        &writer,
        key,
        KIND_USER_VALUE,
        &payload(key, size),
        runtime::now(),
        3600,
    );
    c.store(res, KIND_USER_VALUE, vec![v], limit).await?;
    Ok(())
}

/// Ok(true) when the value comes back intact.
async fn get(c: &NodeClient, key: &str, size: usize, limit: Duration) -> anyhow::Result<bool> {
    let res = Id::hash_of(key.as_bytes());
    let f = c.fetch_kind(res, KIND_USER_VALUE, limit).await?;
    Ok(values_of(&f).contains(&payload(key, size)))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut ms: Vec<f64>, failed: usize) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({"ok": ms.len(), "failed": failed, "p50_ms": pct(&ms, 0.5), "p99_ms": pct(&ms, 0.99),
           "mean_ms": if ms.is_empty() { f64::NAN } else { ms.iter().sum::<f64>() / ms.len() as f64 }})
}

/// A client of `peer`, retried until `deadline` (the peer may not be up or joined yet).
async fn connect(
    cfg: &Config,
    peer: SocketAddr,
    deadline: Instant,
    limit: Duration,
) -> anyhow::Result<runtime::NodeHandle> {
    loop {
        let h = runtime::spawn(
            cfg.clone(),
            Role::Client { admitting: peer },
            crate::identity::generate_seed(),
        )
        .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        match h.wait_joined(left.min(Duration::from_secs(5))).await {
            Ok(()) => return Ok(h),
            Err(e) => {
                // A client whose join failed may have nobody to say goodbye to.
                let _ = tokio::time::timeout(Duration::from_secs(2), h.shutdown()).await;
                if Instant::now() >= deadline {
                    bail!("peer {peer} not reachable within {limit:?}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs the benchmark through the peer at `peer`; the result as JSON.
pub async fn run(cfg: Config, peer: SocketAddr, spec: BenchSpec) -> anyhow::Result<Value> {
    let started = Instant::now();
    let deadline = started + spec.ready_timeout;
    let mut h = connect(&cfg, peer, deadline, spec.ready_timeout).await?;
    let mut c = h.client();
    let nonce: u32 = rand::random();
    // Ready: a round in which every probe value stored comes back.
    let mut rounds = 0;
    let ready_ms = loop {
        rounds += 1;
        if h.status().await.map_or(true, |s| s.fatal.is_some()) {
            tracing::info!(round = rounds, "not ready: lost the peer; connecting again");
            let _ = tokio::time::timeout(Duration::from_secs(2), h.shutdown()).await;
            h = connect(&cfg, peer, deadline, spec.ready_timeout).await?;
            c = h.client();
        }
        let keys: Vec<String> = (0..spec.probes)
            .map(|i| format!("probe-{nonce:08x}-{rounds}-{i}"))
            .collect();
        let mut all = true;
        for k in &keys {
            if let Err(e) = put(&c, k, spec.value_size, spec.op_timeout).await {
                tracing::info!(round = rounds, key = %k, "not ready: put failed: {e}");
                all = false;
            }
        }
        for k in &keys {
            match get(&c, k, spec.value_size, spec.op_timeout).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(round = rounds, key = %k, "not ready: get found no value");
                    all = false;
                }
                Err(e) => {
                    tracing::info!(round = rounds, key = %k, "not ready: get failed: {e}");
                    all = false;
                }
            }
        }
        if all {
            break started.elapsed().as_secs_f64() * 1000.0;
        }
        if Instant::now() >= deadline {
            h.shutdown().await;
            bail!(
                "not ready within {:?} ({rounds} rounds)",
                spec.ready_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Latency, one request at a time.
    let keys: Vec<String> = (0..spec.count)
        .map(|i| format!("bench-{nonce:08x}-{i}"))
        .collect();
    let (mut put_ms, mut put_failed) = (Vec::new(), 0);
    for k in &keys {
        let t = Instant::now();
        match put(&c, k, spec.value_size, spec.op_timeout).await {
            Ok(()) => put_ms.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(_) => put_failed += 1,
        }
    }
    let (mut get_ms, mut get_failed, mut found) = (Vec::new(), 0, 0);
    for k in &keys {
        let t = Instant::now();
        match get(&c, k, spec.value_size, spec.op_timeout).await {
            Ok(ok) => {
                get_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                found += usize::from(ok);
            }
            Err(_) => get_failed += 1,
        }
    }
    // Throughput: `window` workers, each alternating a put of a new key and a get of a
    // key of the latency phase.
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let keys = Arc::new(keys);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..spec.window.max(1) {
        let (c, ok, bad, keys, spec) = (
            c.clone(),
            ok.clone(),
            bad.clone(),
            keys.clone(),
            spec.clone(),
        );
        tasks.spawn(async move {
            let mut i = 0usize;
            while t0.elapsed() < spec.duration {
                let done = if i.is_multiple_of(2) {
                    let k = format!("load-{nonce:08x}-{w}-{i}");
                    put(&c, &k, spec.value_size, spec.op_timeout).await.is_ok()
                } else if keys.is_empty() {
                    true
                } else {
                    let k = &keys[(w * 7919 + i) % keys.len()];
                    get(&c, k, spec.value_size, spec.op_timeout)
                        .await
                        .unwrap_or(false)
                };
                if done {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = t0.elapsed().as_secs_f64();
    h.shutdown().await;
    let ops = ok.load(Ordering::Relaxed);
    let mut elsewhere = Value::Null;
    if let Some(other) = spec.check_peer {
        let h2 = connect(
            &cfg,
            other,
            Instant::now() + spec.ready_timeout,
            spec.ready_timeout,
        )
        .await?;
        let c2 = h2.client();
        let mut found = 0;
        // Why the others were not found: a value missing, or the fetch's error.
        let mut why: std::collections::BTreeMap<String, usize> = Default::default();
        let n = keys.len().min(CHECKED);
        let checking = Instant::now();
        for (i, k) in keys.iter().take(n).enumerate() {
            let t = Instant::now();
            let r = get(&c2, k, spec.value_size, spec.op_timeout).await;
            let (at, took) = (checking.elapsed(), t.elapsed());
            match r {
                Ok(true) => found += 1,
                Ok(false) => {
                    tracing::info!(i, ?at, ?took, "check: value missing");
                    *why.entry("missing".into()).or_default() += 1
                }
                Err(e) => {
                    tracing::info!(i, ?at, ?took, "check: get failed: {e}");
                    *why.entry(e.to_string()).or_default() += 1
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), h2.shutdown()).await;
        elsewhere =
            json!({"peer": other.to_string(), "checked": n, "found": found, "not_found": why});
    }
    Ok(json!({
        "ready_ms": ready_ms,
        "found_elsewhere": elsewhere,
        "ready_rounds": rounds,
        "put": summary(put_ms, put_failed),
        "get": { "found": found, "latency": summary(get_ms, get_failed) },
        "throughput": {"ops": ops, "failed": bad.load(Ordering::Relaxed), "seconds": secs,
                       "ops_per_s": ops as f64 / secs, "window": spec.window},
    }))
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn payloads_have_the_asked_size_and_differ_by_key() {
        assert_eq!(payload("a", 200).len(), 200);
        assert_eq!(payload("a-long-key-name", 8).len(), 8);
        assert_ne!(payload("k1", 200), payload("k2", 200));
    }
}
