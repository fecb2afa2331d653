//! Helpers of the process-level tests: real `p2psip` processes on 127.0.0.1, killed on drop.
#![allow(dead_code, clippy::unwrap_used)]

pub mod baresip;
pub mod kamailio;
pub mod linphone;
pub mod phone;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_p2psip");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "p2psip-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // P2PSIP_KEEP_TEST_DIRS=1 keeps the nodes' configurations and logs for a post-mortem.
        if std::env::var_os("P2PSIP_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A running `p2psip node`; SIGKILLed on drop if still running.
pub struct NodeProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub id: String,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub stderr_log: PathBuf,
    /// What it printed on standard output after its first line.
    pub stdout_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NodeProc {
    /// The address of its SIP front-end, from its `SIP front-end on udp/tcp ADDR` line
    /// (within 20 s, as long as a node is given to join; the front-end may be given port 0
    /// and so never races for a port).
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        eventually(Duration::from_secs(20), || {
            let lines = self.stdout_lines.lock().ok()?;
            lines.iter().find_map(|l| {
                l.strip_prefix("SIP front-end on udp/tcp ")
                    .and_then(|a| a.trim().parse().ok())
            })
        })
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test timers: fast failure detection and stabilisation.
pub fn write_config(dir: &Path, overlay: &str, bootstrap: &[SocketAddr], listen: &str) -> PathBuf {
    let boot: Vec<String> = bootstrap.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "overlay = \"{overlay}\"\nlisten = \"{listen}\"\nbootstrap = [{}]\n\
         [timers]\nrequest_timeout_ms = 500\nkeep_alive_ms = 300\nidle_timeout_ms = 1500\n\
         replication_interval_s = 30\n\
         [chord]\nstabilize_interval_s = 1\nfinger_interval_s = 2\nself_lookup_interval_s = 5\n\
         [log]\nlevel = \"info\"\n",
        boot.join(", ")
    );
    let p = dir.join("p2psip.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts a node with a config file and data dir in `dir`; waits for its listening line.
pub fn start_node(dir: &Path, overlay: &str, bootstrap: &[SocketAddr], listen: &str) -> NodeProc {
    std::fs::create_dir_all(dir).unwrap();
    let config = write_config(dir, overlay, bootstrap, listen);
    spawn_node(dir, config)
}

pub fn spawn_node(dir: &Path, config: PathBuf) -> NodeProc {
    let stderr_log = dir.join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains("listening on"),
        "node did not start: {line:?}; stderr: {}",
        std::fs::read_to_string(&stderr_log).unwrap_or_default()
    );
    // "p2psip node <id> listening on <addr> (...)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let id = words[2].to_string();
    let addr: SocketAddr = words[5].parse().unwrap();
    // "metrics on http://<addr>/metrics": the port the kernel gave it.
    line.clear();
    out.read_line(&mut line).unwrap();
    let metrics: SocketAddr = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics line: {line:?}"));
    // Keep draining stdout so the child never blocks on a full pipe; its lines are kept.
    let stdout_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = stdout_lines.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while matches!(out.read_line(&mut line), Ok(n) if n > 0) {
            if let Ok(mut v) = keep.lock() {
                if v.len() < 1000 {
                    v.push(line.trim_end().to_string());
                }
            }
            line.clear();
        }
    });
    NodeProc {
        child,
        addr,
        id,
        metrics,
        data_dir: dir.to_path_buf(),
        config,
        stderr_log,
        stdout_lines,
    }
}

/// Runs `p2psip client` against `peer`; returns (exit code, stdout, stderr).
pub fn client(peer: SocketAddr, overlay: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args([
            "client",
            "--peer",
            &peer.to_string(),
            "--overlay",
            overlay,
            "--timeout",
            "10s",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// GET /metrics.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| rest.to_string())
}

/// Parses Prometheus text exposition: (name, labels, value) per sample. Panics on a line
/// that is not valid exposition format.
/// One sample: metric name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE ") || !c.is_empty(),
                "bad comment line {line:?}"
            );
            if let Some(t) = c.strip_prefix("TYPE ") {
                let ty = t.split_whitespace().nth(1).unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "bad TYPE {line:?}"
                );
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => {
                let l = l
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line:?}"));
                let labels = l
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label {line:?}"));
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (
                            k.to_string(),
                            v.unwrap_or_else(|| panic!("unquoted label {line:?}"))
                                .to_string(),
                        )
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (name_labels.to_string(), Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        out.push((name, labels, value));
    }
    out
}

/// Sum of a metric's samples whose labels include `filter`.
pub fn metric_sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// Polls `f` every 200 ms until it returns Some, at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node reports itself joined (its /metrics): a lone node that formed its overlay.
pub fn joined_alone(n: &NodeProc) -> bool {
    scrape(n.metrics)
        .map(|t| metric_sum(&parse_prometheus(&t), "p2psip_overlay_joined", &[]) == 1.0)
        .unwrap_or(false)
}

/// The node reports itself joined with at least one successor (its /metrics).
pub fn joined(n: &NodeProc) -> bool {
    scrape(n.metrics)
        .map(|t| {
            let s = parse_prometheus(&t);
            metric_sum(&s, "p2psip_overlay_joined", &[]) == 1.0
                && metric_sum(&s, "p2psip_routing_successors", &[]) >= 1.0
        })
        .unwrap_or(false)
}

/// A raw QUIC connection to `addr` with a valid certificate for identity `seed`: a peer
/// that speaks the wire protocol by hand (attacks, malformed input).
pub async fn raw_connect(
    addr: SocketAddr,
    overlay: &str,
    seed: [u8; 32],
) -> (quinn::Endpoint, quinn::Connection) {
    try_raw_connect(addr, overlay, seed).await.unwrap()
}

/// [`raw_connect`], with the handshake's failure as an error.
pub async fn try_raw_connect(
    addr: SocketAddr,
    overlay: &str,
    seed: [u8; 32],
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    connect_with_alpn(addr, overlay, seed, None).await
}

/// A raw application connection (ALPN `p2psip-app/1`): streams to the node's applications
/// and its relay.
pub async fn raw_app_connect(
    addr: SocketAddr,
    overlay: &str,
    seed: [u8; 32],
) -> (quinn::Endpoint, quinn::Connection) {
    connect_with_alpn(addr, overlay, seed, Some(p2psip_node::tls::ALPN_APP))
        .await
        .unwrap()
}

async fn connect_with_alpn(
    addr: SocketAddr,
    overlay: &str,
    seed: [u8; 32],
    alpn: Option<&[u8]>,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    use quinn::crypto::rustls::QuicClientConfig;
    let (certs, key) = p2psip_node::identity::tls_credentials(&seed).unwrap();
    let trust = std::sync::Arc::new(p2psip_node::security::trust::Trust::self_signed(overlay));
    let (_, mut client) = p2psip_node::tls::configs(certs, key, trust, "test".into()).unwrap();
    if let Some(a) = alpn {
        client.alpn_protocols = vec![a.to_vec()];
    }
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(
        QuicClientConfig::try_from(client).unwrap(),
    )));
    let sni = format!("o{:08x}.p2psip", p2psip_proto::overlay_id(overlay));
    let conn = ep.connect(addr, &sni).unwrap().await?;
    Ok((ep, conn))
}

/// Sends one message on its own stream.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) {
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(bytes).await.unwrap();
    s.finish().unwrap();
}

/// A request from `signer` (its originator, alone in the via list) to `dest`, signed.
pub fn raw_request(
    overlay: &str,
    txid: u64,
    signer: &p2psip_proto::security::Identity,
    dest: p2psip_proto::Destination,
    body: p2psip_proto::Body,
) -> Vec<u8> {
    signed_message(overlay, &[signer.node_id], dest, txid, body, Some(signer))
}

/// A message with the given via list (originator first) to `dest`, signed by `signer` as
/// proto/SPEC.md 5 says, or unsigned.
pub fn signed_message(
    overlay: &str,
    via: &[p2psip_proto::Id],
    dest: p2psip_proto::Destination,
    txid: u64,
    body: p2psip_proto::Body,
    signer: Option<&p2psip_proto::security::Identity>,
) -> Vec<u8> {
    let overlay = p2psip_proto::overlay_id(overlay);
    let security = signer.map(|s| {
        let input = p2psip_proto::security::message_signing_input(
            overlay,
            txid,
            body.code(),
            &body.encode_to_vec(),
        );
        p2psip_proto::pb::SecurityBlock {
            certificates: vec![],
            signature: Some(s.sign(&input)),
        }
    });
    p2psip_proto::Message {
        header: p2psip_proto::OwnedHeader {
            via: via
                .iter()
                .map(|i| p2psip_proto::Destination::Node(*i))
                .collect(),
            ..p2psip_proto::OwnedHeader::new(overlay, txid, dest)
        },
        body,
        security,
    }
    .encode()
    .unwrap()
}

/// The next message the peer sends on a raw connection whose transaction id is `txid`
/// (others, such as the peer's own requests, are skipped); None after `limit`.
pub async fn raw_answer(
    conn: &quinn::Connection,
    txid: u64,
    limit: Duration,
) -> Option<p2psip_proto::Message> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let mut s = tokio::time::timeout_at(end, conn.accept_uni())
            .await
            .ok()?
            .ok()?;
        let bytes = s.read_to_end(1 << 20).await.ok()?;
        if let Ok(m) = p2psip_proto::Message::decode(&bytes) {
            if m.header.transaction_id == txid {
                return Some(m);
            }
        }
    }
}
