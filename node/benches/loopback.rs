//! Store+fetch throughput and latency from one client through a 5-peer loopback overlay of
//! real `p2psip node` processes, with every message signed, with the default (messages straight
//! to their destination over its own link unsigned) and with signatures off, resident
//! memory per idle peer, and one node's store throughput and commit time for each
//! `storage.sync` mode.
//!
//! `cargo bench -p p2psip-node --bench loopback` (P2PSIP_BENCH_SECS sets the length of each
//! phase, default 10; P2PSIP_BENCH_SYNC the five peers' `storage.sync`, default "batch";
//! P2PSIP_BENCH_ONLY a comma list of the parts to run: every, default, off, sync). The
//! per-originator and per-link rate limits are off in every node: one client makes all the
//! load.
#![allow(clippy::unwrap_used)]

use p2psip_algorithms::storage::KIND_USER_VALUE;
use p2psip_algorithms::{Event, Id};
use p2psip_node::config::Config;
use p2psip_node::ops::build_value;
use p2psip_node::runtime::{self, NodeHandle, Role};
use p2psip_proto::security::Identity;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2psip");
const OVERLAY: &str = "bench.p2psip";
const USERS: usize = 4000;

struct Proc(Child, SocketAddr);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which messages are signed (proto/SPEC.md 5.4).
#[derive(Clone, Copy)]
enum Signing {
    /// Every message (`security.sign_direct_messages = true`).
    Every,
    /// The default: all but those straight to their destination over its own link.
    Default,
    /// None (`security.sign_messages = false`).
    Off,
}

impl Signing {
    fn name(self) -> &'static str {
        match self {
            Signing::Every => "every message signed",
            Signing::Default => "signed, direct ones not (default)",
            Signing::Off => "signatures off",
        }
    }

    /// Its name in P2PSIP_BENCH_ONLY.
    fn key(self) -> &'static str {
        match self {
            Signing::Every => "every",
            Signing::Default => "default",
            Signing::Off => "off",
        }
    }

    fn toml(self) -> &'static str {
        match self {
            Signing::Every => "sign_messages = true\nsign_direct_messages = true\n",
            Signing::Default => "sign_messages = true\n",
            Signing::Off => "sign_messages = false\n",
        }
    }

    fn apply(self, cfg: &mut Config) {
        cfg.security.sign_messages = !matches!(self, Signing::Off);
        cfg.security.sign_direct_messages = matches!(self, Signing::Every);
    }
}

fn start(dir: &std::path::Path, boot: Option<SocketAddr>, sign: Signing) -> Proc {
    let conf = unlimited_config(dir, sign);
    start_with(
        dir,
        boot,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--storage-sync",
            &peer_sync(),
        ],
    )
}

/// A configuration without the rate limits (the benchmark's one client is all the load,
/// and the figures are the overlay's, not the limiter's), message signatures `sign`.
fn unlimited_config(dir: &std::path::Path, sign: Signing) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("p2psip.toml");
    std::fs::write(
        &conf,
        format!(
            "[limits]\norigin_requests_per_s = 0\norigin_max_in_flight = 0\n\
             link_requests_per_s = 0\n[security]\n{}",
            sign.toml()
        ),
    )
    .unwrap();
    conf
}

/// The peers' `storage.sync` (P2PSIP_BENCH_SYNC; default "batch", the node's default).
fn peer_sync() -> String {
    std::env::var("P2PSIP_BENCH_SYNC").unwrap_or_else(|_| "batch".into())
}

fn start_with(dir: &std::path::Path, boot: Option<SocketAddr>, extra: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "node",
        "--overlay",
        OVERLAY,
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "warn",
    ])
    .args(extra)
    .arg("--data-dir")
    .arg(dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(b) = boot {
        cmd.args(["--bootstrap", &b.to_string()]);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let addr: SocketAddr = line.split_whitespace().nth(5).unwrap().parse().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        while out.read_line(&mut s).unwrap_or(0) > 0 {}
    });
    Proc(child, addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// What a load sends.
#[derive(Clone, Copy, PartialEq)]
enum Mix {
    /// Store+fetch pairs of the same value.
    Pairs,
    /// Stores only, each value once (the load ends early if they run out).
    Stores,
}

/// Runs `mix` from `workers` concurrent tasks for `secs`; with `rate`, paces the total
/// operations per second. Returns (ops, seconds, latencies ms, failures).
async fn load(
    client: Arc<NodeHandle>,
    values: Arc<Vec<(Id, p2psip_proto::pb::StoredData)>>,
    workers: usize,
    secs: f64,
    rate: Option<f64>,
    offset: usize,
    mix: Mix,
) -> (usize, f64, Vec<f64>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, values, next, failures) = (
            client.clone(),
            values.clone(),
            next.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = rate {
                    let due = start + Duration::from_secs_f64(n as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() > end {
                    break;
                }
                let (res, v) = match mix {
                    Mix::Pairs => values[((n / 2) + offset) % values.len()].clone(),
                    Mix::Stores => match values.get(n) {
                        Some(x) => x.clone(),
                        None => break,
                    },
                };
                let t = Instant::now();
                let e = if mix == Mix::Stores || n % 2 == 0 {
                    client
                        .op(move |c, now| c.store(now, res, KIND_USER_VALUE, vec![v], 0))
                        .await
                } else {
                    client
                        .op(move |c, now| c.fetch_kind(now, res, KIND_USER_VALUE))
                        .await
                };
                match e {
                    Ok(Event::Completed { outcome: Ok(_), .. }) => {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0)
                    }
                    other => {
                        if std::env::var_os("P2PSIP_BENCH_DEBUG").is_some() {
                            eprintln!("{other:?}");
                        }
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    (all.len(), elapsed, all, failures.load(Ordering::Relaxed))
}

/// The `q` quantile of a Prometheus histogram (cumulative buckets `le` -> count), by linear
/// interpolation inside the bucket it falls in.
fn hist_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    let want = total * q;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= want {
            if le.is_infinite() {
                return prev.0;
            }
            let span = (c - prev.1).max(1.0);
            return prev.0 + (le - prev.0) * (want - prev.1) / span;
        }
        prev = (le, c);
    }
    prev.0
}

/// The commit-time histogram of a node's /metrics: (le, cumulative count) pairs.
fn commit_buckets(metrics: SocketAddr) -> Vec<(f64, f64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("p2psip_storage_commit_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// One lone node per `storage.sync` mode, stores only (64 in flight, each a new value),
/// for `secs`: store throughput, store latency at the client, commit time at the node.
async fn storage_modes(dir: &std::path::Path, secs: f64) {
    println!("storage: one lone node per storage.sync mode, stores only, 64 in flight, 200-byte values, {secs} s each");
    let mut base = None;
    for (i, mode) in ["always", "batch", "none"].iter().enumerate() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = port.to_string();
        let d = dir.join(format!("sync-{mode}"));
        let conf = unlimited_config(&d, Signing::Default);
        let node = start_with(
            &d,
            None,
            &[
                "--config",
                conf.to_str().unwrap(),
                "--storage-sync",
                mode,
                "--metrics",
                &metrics,
            ],
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cfg = Config {
            overlay: OVERLAY.into(),
            ..Config::default()
        };
        let client = Arc::new(
            runtime::spawn(
                cfg,
                Role::Client { admitting: node.1 },
                [0x50 + i as u8; 32],
            )
            .await
            .unwrap(),
        );
        client.wait_joined(Duration::from_secs(10)).await.unwrap();
        let values = Arc::new(signed_values((secs * 20_000.0) as usize));
        let (ops, el, mut lat, fail) =
            load(client.clone(), values, 64, secs, None, 0, Mix::Stores).await;
        let rate = ops as f64 / el;
        let b = commit_buckets(port);
        let ratio = base.map_or(String::new(), |b: f64| {
            format!(" ({:.2}x always)", rate / b)
        });
        base.get_or_insert(rate);
        println!(
            "  sync = {mode:6}: {rate:.0} stores/s{ratio}, store median {:.2} ms, p99 {:.2} ms; commit p50 {:.2} ms, p99 {:.2} ms ({} commits); {fail} failed",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            hist_quantile(&b, 0.5) * 1000.0,
            hist_quantile(&b, 0.99) * 1000.0,
            b.last().map_or(0.0, |x| x.1),
        );
        if let Ok(c) = Arc::try_unwrap(client) {
            c.shutdown().await;
        }
        drop(node);
    }
}

/// `count` values of `USERS` users, each newer than the user's previous one.
fn signed_values(count: usize) -> Vec<(Id, p2psip_proto::pb::StoredData)> {
    let now = runtime::now();
    let users: Vec<(Identity, String)> = (0..USERS)
        .map(|i| {
            let name = format!("bench-user-{i}");
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            (Identity::from_seed(seed, name.clone()), name)
        })
        .collect();
    (0..count)
        .map(|i| {
            let (who, name) = &users[i % USERS];
            let t = p2psip_algorithms::Time(now.0 + (i / USERS) as u64 * 1000);
            build_value(who, name, KIND_USER_VALUE, &[b'x'; 200], t, 3600)
        })
        .collect()
}

/// What one overlay phase measured.
struct Phase {
    max_rate: f64,
    p50: f64,
    p99: f64,
    half_rate: f64,
    half_p50: f64,
    half_p99: f64,
    failed: usize,
    rss_mib: f64,
}

/// Five peers and a client with message signatures `sign`: saturated store+fetch pairs,
/// then half that rate; the peers' memory after 5 s idle.
fn overlay_phase(dir: &std::path::Path, secs: f64, sign: Signing) -> Phase {
    let first = start(&dir.join("n0"), None, sign);
    let boot = first.1;
    let mut peers = vec![first];
    for i in 1..5 {
        peers.push(start(&dir.join(format!("n{i}")), Some(boot), sign));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut phase = rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await; // let the ring settle
        let mut cfg = Config {
            overlay: OVERLAY.into(),
            ..Config::default()
        };
        sign.apply(&mut cfg);
        let client = Arc::new(
            runtime::spawn(
                cfg,
                Role::Client {
                    admitting: peers[2].1,
                },
                [0x77; 32],
            )
            .await
            .unwrap(),
        );
        client.wait_joined(Duration::from_secs(10)).await.unwrap();
        // Pre-signed values, so the timed loop measures the overlay and not the client's
        // signing: 4000 users, each storing ever newer values, so that every store is a
        // real change (verified by the responsible peer and both replicas, and replicated).
        let values: Arc<Vec<_>> = Arc::new(signed_values((secs * 20_000.0) as usize));
        let (ops, el, mut lat, fail) = load(
            client.clone(),
            values.clone(),
            64,
            secs,
            None,
            0,
            Mix::Pairs,
        )
        .await;
        let max_rate = ops as f64 / el;
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        let (hops, hel, mut hlat, hfail) = load(
            client.clone(),
            values.clone(),
            64,
            secs,
            Some(max_rate / 2.0),
            ops / 2 + 1,
            Mix::Pairs,
        )
        .await;
        if let Ok(c) = Arc::try_unwrap(client) {
            c.shutdown().await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        Phase {
            max_rate,
            p50,
            p99,
            half_rate: hops as f64 / hel,
            half_p50: pct(&mut hlat, 0.5),
            half_p99: pct(&mut hlat, 0.99),
            failed: fail + hfail,
            rss_mib: 0.0,
        }
    });
    let rss: Vec<u64> = peers.iter().map(|p| rss_kib(p.0.id())).collect();
    phase.rss_mib = rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0;
    phase
}

fn main() {
    let secs: f64 = std::env::var("P2PSIP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let dir = std::env::temp_dir().join(format!("p2psip-bench-{}", std::process::id()));
    println!("p2psip loopback benchmark: 5 peer processes (storage.sync = \"{}\"), 1 in-process client, 200-byte values, store+fetch pairs, {secs} s per phase", peer_sync());
    let mut phases = Vec::new();
    let only = std::env::var("P2PSIP_BENCH_ONLY").unwrap_or_default();
    let runs = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    for (i, sign) in [Signing::Every, Signing::Default, Signing::Off]
        .into_iter()
        .enumerate()
    {
        if !runs(sign.key()) {
            continue;
        }
        let name = sign.name();
        let p = overlay_phase(&dir.join(format!("phase-{i}")), secs, sign);
        println!(
            "  {name}: saturated (64 in flight) {:.0} ops/s, median {:.2} ms, p99 {:.2} ms; at half that rate {:.0} ops/s, median {:.2} ms, p99 {:.2} ms; {} failed; {:.1} MiB per idle peer ({USERS} users' values x 3 copies)",
            p.max_rate, p.p50, p.p99, p.half_rate, p.half_p50, p.half_p99, p.failed, p.rss_mib
        );
        phases.push(p);
    }
    if phases.len() == 3 {
        println!(
        "  default / every message signed: throughput {:.2}, p99 at half load {:.2}; default / off: throughput {:.2}, p99 at half load {:.2}",
        phases[1].max_rate / phases[0].max_rate,
        phases[1].half_p99 / phases[0].half_p99,
        phases[1].max_rate / phases[2].max_rate,
        phases[1].half_p99 / phases[2].half_p99
    );
    }
    if !runs("sync") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(storage_modes(&dir, secs));
    let _ = std::fs::remove_dir_all(&dir);
}
