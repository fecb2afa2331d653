//! NAT traversal against real Linux NAT: `tests/natlab/lab.sh` builds network namespaces
//! (three public peers on a "public" bridge; hosts A and B each behind a port-preserving
//! MASQUERADE router; host S behind `MASQUERADE --random-fully`, a NAT that maps every
//! destination to a new port) and this test runs `p2psip` processes in them:
//!
//! - the nodes behind NATs learn their reflexive addresses, find they are not reachable and
//!   run as clients of the peers (the overlay routes through public peers only);
//! - a value stored from host A is fetched from host B, and host S stores and fetches;
//! - application connections (AppAttach + the echo application) between A and B come up
//!   directly, punched through both NATs, with no relay in the metrics; to and from S they
//!   go through a relay peer; each carries data both ways;
//! - after a pause longer than the routers keep idle UDP mappings (5 s), the nodes behind
//!   them are still reached: keep-alives held their bindings open;
//! - the success rate and set-up time of each pair are printed (docs/benchmarks.md).
//!
//! Needs root, iproute2 and iptables (`.ci/run` installs iptables). Set
//! `P2PSIP_NATLAB=skip` to skip it on a machine without them.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OVERLAY: &str = "natlab";
const PUBLIC: [&str; 3] = [
    "198.51.100.1:4000",
    "198.51.100.2:4000",
    "198.51.100.3:4000",
];
/// Echo calls per pair of hosts for the figures.
const ROUNDS: usize = 10;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/natlab/lab.sh")
}

/// A process in a namespace of the lab.
struct NsProc {
    child: Child,
    id: String,
    log: PathBuf,
}

/// The lab: torn down (processes killed, namespaces removed) on drop, even when the test
/// fails half-way.
struct Lab {
    prefix: String,
    dir: TempDir,
    procs: Vec<NsProc>,
}

impl Lab {
    /// Builds the lab; `tag` tells apart the labs of tests that run at once.
    fn up(tag: char) -> Lab {
        let prefix = format!("n{tag}{:04x}", std::process::id() & 0xffff);
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &prefix])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the NAT lab could not be built: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab {
            prefix,
            dir: TempDir::new("natlab"),
            procs: Vec::new(),
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Starts `p2psip node` in namespace `host`; returns its Node-ID.
    fn node(&mut self, host: &str, listen: &str, bootstrap: &[&str]) -> String {
        self.node_with(host, listen, bootstrap, "")
    }

    /// [`Lab::node`] with `extra` appended to its configuration (more tables).
    fn node_with(&mut self, host: &str, listen: &str, bootstrap: &[&str], extra: &str) -> String {
        let dir = self.dir.0.join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let boot: Vec<String> = bootstrap.iter().map(|a| format!("\"{a}\"")).collect();
        let config = dir.join("p2psip.toml");
        std::fs::write(
            &config,
            format!(
                "overlay = \"{OVERLAY}\"\nlisten = \"{listen}\"\nbootstrap = [{}]\n\
                 metrics = \"127.0.0.1:9470\"\n\
                 [timers]\nrequest_timeout_ms = 500\nkeep_alive_ms = 300\nidle_timeout_ms = 3000\n\
                 [chord]\nstabilize_interval_s = 1\nfinger_interval_s = 2\nself_lookup_interval_s = 5\n\
                 [nat]\necho = true\n{extra}",
                boot.join(", ")
            ),
        )
        .unwrap();
        let log = dir.join("stderr.log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), BIN, "node", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let id = line
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let p = NsProc { child, id, log };
        assert!(
            line.contains("listening on"),
            "node in {host} did not start: {line:?}; log: {}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        let id = p.id.clone();
        self.procs.push(p);
        id
    }

    /// The node's metrics, read inside its namespace.
    fn metrics(&self, host: &str) -> Vec<Sample> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "bash", "-c"])
            .arg(
                "exec 3<>/dev/tcp/127.0.0.1/9470 && \
                 printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && timeout 5 cat <&3",
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => parse_prometheus(body),
            None => Vec::new(),
        }
    }

    fn metric(&self, host: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(host), name, filter)
    }

    /// `p2psip client --json ...` in namespace `host` through `peer`: (exit code, output).
    fn client(&self, host: &str, peer: &str, args: &[&str]) -> (i32, Value) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), BIN, "client", "--json"])
            .args(["--peer", peer, "--overlay", OVERLAY, "--timeout", "15s"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            Value::String(format!("{text} / {}", String::from_utf8_lossy(&out.stderr)))
        });
        (out.status.code().unwrap_or(-1), v)
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let t = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(15).collect();
                format!(
                    "--- {} ---\n{}",
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.prefix])
            .output();
    }
}

/// Echo calls from `from` (a client process there, admitted by `peer`) to `to`: the path
/// each took and its set-up time in ms; panics unless every call succeeds.
fn echo_series(lab: &Lab, from: &str, peer: &str, to: &str, n: usize) -> (Vec<String>, Vec<f64>) {
    let mut paths = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        let (code, v) = lab.client(from, peer, &["app-echo", to, "--rounds", "3"]);
        assert_eq!(code, 0, "echo {i} from {from} failed: {v}\n{}", lab.logs());
        assert_eq!(v["ok"], true, "{v}");
        paths.push(v["path"].as_str().unwrap_or_default().to_string());
        times.push(v["connect_ms"].as_f64().unwrap_or(f64::NAN));
    }
    (paths, times)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

#[test]
fn nodes_behind_nats_store_fetch_and_connect_directly_or_through_a_relay() {
    if std::env::var("P2PSIP_NATLAB").as_deref() == Ok("skip") {
        eprintln!("P2PSIP_NATLAB=skip: NAT lab not run");
        return;
    }
    let mut lab = Lab::up('l');
    lab.node("p1", PUBLIC[0], &[]);
    lab.node("p2", PUBLIC[1], &[PUBLIC[0]]);
    lab.node("p3", PUBLIC[2], &[PUBLIC[0]]);
    for p in ["p1", "p2", "p3"] {
        let ok = eventually(Duration::from_secs(20), || {
            (lab.metric(p, "p2psip_overlay_joined", &[]) == 1.0
                && lab.metric(p, "p2psip_routing_successors", &[]) >= 1.0)
                .then_some(())
        });
        assert!(ok.is_some(), "public peer {p} did not join\n{}", lab.logs());
    }
    let a = lab.node("a", "0.0.0.0:4000", &PUBLIC);
    let b = lab.node("b", "0.0.0.0:4000", &PUBLIC);
    let s = lab.node("s", "0.0.0.0:4000", &PUBLIC);

    // Behind their NATs the three run as clients, each admitted by the peer responsible
    // for its Node-ID; S has seen that its NAT maps each destination anew.
    for h in ["a", "b", "s"] {
        let ready = eventually(Duration::from_secs(20), || {
            let m = lab.metrics(h);
            let v = |n: &str| metric_sum(&m, n, &[]);
            (v("p2psip_overlay_joined") == 1.0 && v("p2psip_nat_located") == 1.0).then_some(m)
        });
        let m = ready.unwrap_or_else(|| panic!("{h} not admitted\n{}", lab.logs()));
        assert_eq!(
            metric_sum(&m, "p2psip_nat_behind", &[]),
            1.0,
            "{h} behind a NAT"
        );
        assert_eq!(
            metric_sum(&m, "p2psip_nat_routing", &[]),
            0.0,
            "{h} must not route"
        );
        let sym = if h == "s" { 1.0 } else { 0.0 };
        assert_eq!(
            metric_sum(&m, "p2psip_nat_symmetric", &[]),
            sym,
            "{h} symmetric"
        );
    }
    // The overlay routes through the public peers only: each knows just the other two.
    for p in ["p1", "p2", "p3"] {
        assert_eq!(lab.metric(p, "p2psip_nat_routing", &[]), 1.0);
        assert_eq!(lab.metric(p, "p2psip_nat_behind", &[]), 0.0);
        let succ = lab.metric(p, "p2psip_routing_successors", &[]);
        assert!(
            succ <= 2.0,
            "{p} has {succ} successors: a NATed node became a peer"
        );
    }

    // Stored from behind NAT A, fetched from behind NAT B (through other peers).
    let (code, v) = lab.client("a", PUBLIC[1], &["store", "natlab-alice", "stored from A"]);
    assert_eq!(code, 0, "store from A: {v}");
    let (code, v) = lab.client("b", PUBLIC[2], &["fetch", "natlab-alice"]);
    assert_eq!(code, 0, "fetch from B: {v}");
    assert_eq!(v["values"][0], "stored from A", "{v}");
    // The symmetric-NAT host stores and fetches too.
    let (code, v) = lab.client("s", PUBLIC[2], &["store", "natlab-sym", "stored from S"]);
    assert_eq!(code, 0, "store from S: {v}");
    let (code, v) = lab.client("s", PUBLIC[0], &["fetch", "natlab-sym"]);
    assert_eq!(code, 0, "fetch from S: {v}");
    assert_eq!(v["values"][0], "stored from S", "{v}");
    let (code, v) = lab.client("s", PUBLIC[0], &["fetch", "natlab-alice"]);
    assert_eq!((code, &v["values"][0]), (0, &Value::from("stored from A")));

    // A and B: direct connections punched through both NATs, both ways; no relay.
    let relayed = |lab: &Lab| -> f64 {
        ["p1", "p2", "p3"]
            .iter()
            .map(|p| lab.metric(p, "p2psip_relay_streams_total", &[("outcome", "relayed")]))
            .sum()
    };
    let (ab, ab_ms) = echo_series(&lab, "a", PUBLIC[0], &b, ROUNDS);
    let (ba, ba_ms) = echo_series(&lab, "b", PUBLIC[1], &a, ROUNDS);
    assert!(
        ab.iter().chain(&ba).all(|p| p == "direct"),
        "A<->B paths: {ab:?} {ba:?}\n{}",
        lab.logs()
    );
    // Counters are exported once a second: wait until B's shows every stream.
    let want = (ROUNDS * 3) as f64;
    let accepted_b = eventually(Duration::from_secs(5), || {
        let v = lab.metric(
            "b",
            "p2psip_app_streams_total",
            &[("direction", "accepted")],
        );
        (v == want).then_some(v)
    });
    assert_eq!(
        accepted_b,
        Some(want),
        "B accepted every echo stream directly"
    );
    assert_eq!(
        relayed(&lab),
        0.0,
        "no stream may go through a relay between A and B"
    );

    // S: behind a NAT that maps each destination anew, so no punch can work; its calls
    // and calls to it go through a relay, and still carry data both ways.
    let (sa, sa_ms) = echo_series(&lab, "s", PUBLIC[2], &a, ROUNDS);
    let (as_, as_ms) = echo_series(&lab, "a", PUBLIC[1], &s, ROUNDS);
    assert!(
        sa.iter().chain(&as_).all(|p| p == "relayed"),
        "S paths: {sa:?} {as_:?}"
    );
    let want = (2 * ROUNDS * 3) as f64;
    let msg = "hello through the overlay".len() as f64;
    let relay_bytes = |lab: &Lab| -> f64 {
        ["p1", "p2", "p3"]
            .iter()
            .map(|p| lab.metric(p, "p2psip_relay_bytes_total", &[]))
            .sum()
    };
    let counted = eventually(Duration::from_secs(5), || {
        (relayed(&lab) == want && relay_bytes(&lab) == want * 2.0 * msg).then_some(())
    });
    assert!(
        counted.is_some(),
        "every S stream relayed once, both directions carried: {} streams, {} bytes",
        relayed(&lab),
        relay_bytes(&lab)
    );

    // The routers forget an idle UDP mapping after 5 s: after a longer pause the nodes
    // behind them are still reachable, because their keep-alives held the bindings open.
    // (Time has to pass here; nothing is being waited for.)
    std::thread::sleep(Duration::from_secs(8));
    let (after_ab, _) = echo_series(&lab, "a", PUBLIC[2], &b, 1);
    let (after_as, _) = echo_series(&lab, "a", PUBLIC[2], &s, 1);
    assert_eq!(
        (after_ab[0].as_str(), after_as[0].as_str()),
        ("direct", "relayed")
    );

    println!("\nNAT lab: application connections (AppAttach + echo), {ROUNDS} calls per pair");
    println!("| from -> to | path | succeeded | set-up median | set-up max |");
    println!("|---|---|---|---|---|");
    for (name, paths, ms) in [
        ("A -> B (cone NATs)", &ab, &ab_ms),
        ("B -> A (cone NATs)", &ba, &ba_ms),
        ("S -> A (symmetric NAT)", &sa, &sa_ms),
        ("A -> S (symmetric NAT)", &as_, &as_ms),
    ] {
        let max = ms.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {name} | {} | {}/{ROUNDS} | {:.1} ms | {:.1} ms |",
            paths[0],
            paths.len(),
            median(ms),
            max
        );
    }

    // Last (its relay probes would count in the relay figures above): `p2psip doctor` in each namespace against the three public peers (each also tried as
    // a relay): a public host
    // (a peer's own namespace), the port-preserving NAT of A (cone) and the NAT of S that
    // maps each destination anew (symmetric), each with its exit status.
    for (host, want, code) in [("p1", "public", 0), ("a", "cone", 0), ("s", "symmetric", 2)] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(host),
                BIN,
                "doctor",
                "--json",
                "--overlay",
                OVERLAY,
            ])
            .args(PUBLIC.iter().flat_map(|p| ["--peer", p]))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            panic!(
                "doctor in {host}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["nat"], want, "doctor in {host}: {v}");
        assert_eq!(v["reached"], 3, "doctor in {host}: {v}");
        // Each public peer relays a stream back to the host (over the link the host
        // opened, so through its NAT too).
        assert_eq!(v["relays"], 3, "doctor in {host}: {v}");
        assert_eq!(out.status.code(), Some(code), "doctor in {host}: {v}");
        println!("doctor in {host}: {} ({})", v["nat"], v["explanation"]);
    }
}

/// A SIP phone behind a NAT: baresip in host A (behind NAT A's MASQUERADE, which drops
/// whatever comes in unasked) registers with RFC 5626 outbound (`sipnat=outbound`) at the
/// front-end of public peer p1, and baresip on public host p2 calls it. The front-end
/// sends the INVITE over the flow the REGISTER opened through the NAT (the phone's Contact
/// names 10.0.1.2, which nothing outside reaches). The phone's STUN keep-alives (every
/// 2 s: the front-end's flow timer) hold the NAT's mapping open beyond the router's 5 s
/// expiry, so a second call after a longer pause rings too.
#[test]
fn a_phone_behind_a_nat_is_called_over_its_outbound_flow() {
    if std::env::var("P2PSIP_NATLAB").as_deref() == Ok("skip") {
        eprintln!("P2PSIP_NATLAB=skip: NAT lab not run");
        return;
    }
    if !baresip::available() {
        return;
    }
    let mut lab = Lab::up('s');
    let users = lab.dir.0.join("sip-users");
    common::phone::write_users(&users);
    let fe = "198.51.100.1:5060";
    lab.node_with(
        "p1",
        PUBLIC[0],
        &[],
        &format!(
            "[sip]\nenabled = true\nlisten = \"{fe}\"\nusers_file = \"{}\"\nflow_timer_s = 2\n",
            users.display()
        ),
    );
    let up = eventually(Duration::from_secs(20), || {
        (lab.metric("p1", "p2psip_overlay_joined", &[]) == 1.0).then_some(())
    });
    assert!(up.is_some(), "p1 did not form its overlay\n{}", lab.logs());
    let account = |user: &str, pw: &str, extra: &str| {
        format!("<sip:{user}@p2psip>;outbound=\"sip:{fe}\";auth_pass={pw};regint=600{extra}")
    };
    let mut alice = baresip::Phone::in_netns(
        &lab.dir.0,
        "alice",
        &account("alice", "wonderland", ";sipnat=outbound;answermode=auto"),
        &lab.ns("a"),
        "10.0.1.2",
    );
    alice.start(28, &[]);
    assert!(
        alice.wait_for("200 OK", Duration::from_secs(10)),
        "alice did not register from behind NAT A:\n{}\n{}",
        alice.output(),
        lab.logs()
    );
    let mut bob = baresip::Phone::in_netns(
        &lab.dir.0,
        "bob",
        &account("bob", "the-builder", ""),
        &lab.ns("p2"),
        "198.51.100.2",
    );
    let call = |bob: &mut baresip::Phone, n: u32| {
        let b = bob.run(6, &["/dial sip:alice@p2psip"]);
        assert!(
            b.contains("Call established: sip:alice@p2psip"),
            "call {n} to alice behind NAT A was not answered:\n{b}\n--- alice ---\n{}\n{}",
            alice.output(),
            lab.logs()
        );
    };
    call(&mut bob, 1);
    // Longer than the router keeps an idle mapping: only the keep-alives hold it.
    // (Time has to pass here; nothing is being waited for.)
    std::thread::sleep(Duration::from_secs(8));
    call(&mut bob, 2);
    let a = alice.finish(Duration::from_secs(40));
    assert_eq!(
        a.matches("Call established: sip:bob@p2psip").count(),
        2,
        "{a}"
    );
    let keepalives = lab.metric("p1", "p2psip_sip_keepalives_total", &[("kind", "stun")]);
    assert!(
        keepalives >= 4.0,
        "{keepalives} STUN keep-alives answered in 20 s"
    );
}
