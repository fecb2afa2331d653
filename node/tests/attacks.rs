//! Attacks on a peer (docs/security.md): each is made against a real `p2psip node` process
//! on 127.0.0.1 over QUIC by a client in this process, and each test asserts that the
//! attack is refused with the documented error, that the peer's memory stays within a
//! stated bound (its peak resident set, VmHWM, from /proc), and that the peer still
//! answers a Ping within 1 s afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_algorithms::storage::{KIND_USER_ARRAY, KIND_USER_VALUE};
use p2psip_algorithms::{signed_value, Event, Id, Time, ValueModel};
use p2psip_node::config::Config;
use p2psip_node::runtime::{self, NodeHandle, Role};
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::security::Identity;
use std::time::{Duration, Instant};

const OVERLAY: &str = "attacks.test";
/// What an attack may add to the attacked peer's peak resident memory.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The peak resident memory of a process so far.
fn peak_kib(n: &NodeProc) -> u64 {
    proc_kib(n.child.id(), "VmHWM:")
}

/// A lone peer (it forms the overlay itself) with `extra` TOML tables added to the test
/// configuration; waits until it has formed its overlay.
fn victim(dir: &std::path::Path, extra: &str) -> NodeProc {
    std::fs::create_dir_all(dir).unwrap();
    let config = write_config(dir, OVERLAY, &[], "127.0.0.1:0");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[timers]", &format!("{extra}[timers]"));
    std::fs::write(&config, text).unwrap();
    let n = spawn_node(dir, config);
    let formed = eventually(Duration::from_secs(20), || joined_alone(&n).then_some(()));
    assert!(
        formed.is_some(),
        "the attacked peer never formed its overlay"
    );
    n
}

async fn client_of(n: &NodeProc, seed: u8) -> NodeHandle {
    let cfg = Config {
        overlay: OVERLAY.into(),
        ..Config::default()
    };
    let c = runtime::spawn(cfg, Role::Client { admitting: n.addr }, [seed; 32])
        .await
        .unwrap();
    c.wait_joined(Duration::from_secs(10)).await.unwrap();
    c
}

async fn victim_and_client(dir: &std::path::Path) -> (NodeProc, NodeHandle) {
    let n = victim(dir, "");
    let c = client_of(&n, 0x42).await;
    (n, c)
}

/// The outcome of one operation: Ok(body) or the error code; a timeout is an error here.
async fn op(
    c: &NodeHandle,
    f: impl FnOnce(&mut p2psip_algorithms::OverlayNode, Time) -> p2psip_algorithms::OpId
        + Send
        + 'static,
) -> Result<p2psip_proto::Body, ErrorCode> {
    match tokio::time::timeout(Duration::from_secs(20), c.op(f)).await {
        Ok(Ok(Event::Completed { outcome, .. })) => outcome.map_err(|e| e.code),
        other => panic!("no answer: {other:?}"),
    }
}

/// The attacked peer answers a Ping within 1 s.
async fn answers_ping(c: &NodeHandle, n: &NodeProc) {
    let started = Instant::now();
    // The lone peer is responsible for every id: a lookup of its own Node-ID reaches it.
    let target = Id::from_slice(&hex::decode(&n.id).unwrap()).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        c.op(move |c, now| c.lookup(now, target)),
    )
    .await;
    assert!(
        matches!(r, Ok(Ok(Event::Completed { outcome: Ok(_), .. }))),
        "the attacked peer did not answer a Ping within 1 s: {r:?}"
    );
    eprintln!("  ping answered in {:?}", started.elapsed());
}

/// Array entries `range` of 16,000 bytes of `fill`, signed by `writer`, each a
/// millisecond newer than the one before.
fn array_entries(
    writer: &Identity,
    res: Id,
    range: std::ops::Range<u32>,
    fill: u8,
) -> Vec<pb::StoredData> {
    let now = runtime::now();
    range
        .map(|i| {
            signed_value(
                writer,
                res,
                KIND_USER_ARRAY,
                Time(now.0 + u64::from(i)),
                3600,
                ValueModel::Array(i, vec![fill; 16_000]),
            )
        })
        .collect()
}

/// 55 array entries of 16,000 bytes (880 kB, within the 1 MiB writer quota) at one
/// resource, stored by their rightful writer.
async fn fill_array(c: &NodeHandle) -> Id {
    let writer = Identity::from_seed([0x31; 32], "big-array");
    let res = Id::hash_of(b"big-array");
    let values = array_entries(&writer, res, 0..55, b'v');
    for chunk in values.chunks(11) {
        let chunk = chunk.to_vec();
        let r = op(c, move |n, t| n.store(t, res, KIND_USER_ARRAY, chunk, 0)).await;
        assert!(matches!(r, Ok(p2psip_proto::Body::StoreAns(_))), "{r:?}");
    }
    res
}

fn all_entries(last: u32) -> pb::StoredDataSpecifier {
    pb::StoredDataSpecifier {
        kind: KIND_USER_ARRAY,
        generation: 0,
        model: Some(pb::stored_data_specifier::Model::Indices(pb::ArrayRanges {
            ranges: vec![pb::ArrayRange { first: 0, last }],
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_that_would_build_huge_answers_are_bounded() {
    let dir = TempDir::new("attack-fetch");
    let (n, c) = victim_and_client(&dir.0).await;
    let res = fill_array(&c).await;
    let before = peak_kib(&n);

    // 128 copies of one specifier (a 3 kB request asking for 128 x 880 kB).
    let specs = vec![all_entries(1000); 128];
    let r = op(&c, move |n, t| n.fetch(t, res, specs)).await;
    match &r {
        Ok(p2psip_proto::Body::FetchAns(f)) => {
            assert_eq!(f.kind_responses.len(), 1, "repeats answered once");
            assert_eq!(f.kind_responses[0].values.len(), 55);
        }
        other => panic!("repeated specifiers: {other:?}"),
    }
    // 32 distinct specifiers, each naming every entry: refused while being built.
    let specs: Vec<_> = (0..32).map(|i| all_entries(1000 + i)).collect();
    let r = op(&c, move |n, t| n.fetch(t, res, specs)).await;
    assert_eq!(r.err(), Some(ErrorCode::ResponseTooLarge));
    // 2,000 distinct specifiers: refused before anything is read.
    let specs: Vec<_> = (0..2000).map(|i| all_entries(1000 + i)).collect();
    let r = op(&c, move |n, t| n.fetch(t, res, specs)).await;
    assert_eq!(r.err(), Some(ErrorCode::InvalidMessage));

    let grew = peak_kib(&n).saturating_sub(before);
    eprintln!("  peak RSS grew by {grew} KiB");
    assert!(
        grew < RSS_BOUND_KIB,
        "the fetches grew the peer's peak memory by {grew} KiB"
    );
    answers_ping(&c, &n).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_time_far_ahead_cannot_lock_its_writer_out() {
    let dir = TempDir::new("attack-time");
    let (n, c) = victim_and_client(&dir.0).await;
    let writer = Identity::from_seed([0x32; 32], "time-victim");
    let res = Id::hash_of(b"time-victim");
    let now = runtime::now();
    let fifty_years = 50 * 365 * 24 * 3600 * 1000u64;
    let future = signed_value(
        &writer,
        res,
        KIND_USER_VALUE,
        Time(now.0 + fifty_years),
        3600,
        ValueModel::Single(b"from the future".to_vec()),
    );
    let r = op(&c, move |n, t| {
        n.store(t, res, KIND_USER_VALUE, vec![future], 0)
    })
    .await;
    assert_eq!(
        r.err(),
        Some(ErrorCode::InvalidMessage),
        "far-future value taken"
    );
    // The writer's ordinary store still succeeds.
    let v = signed_value(
        &writer,
        res,
        KIND_USER_VALUE,
        runtime::now(),
        3600,
        ValueModel::Single(b"now".to_vec()),
    );
    let r = op(&c, move |n, t| n.store(t, res, KIND_USER_VALUE, vec![v], 0)).await;
    assert!(matches!(r, Ok(p2psip_proto::Body::StoreAns(_))), "{r:?}");
    answers_ping(&c, &n).await;
    c.shutdown().await;
}

/// A connector that is no part of the overlay's ring sends 'copies' (replica_number = 1,
/// generation counter 2^64-1) of 16 kB array entries for a writer whose quota at the peer
/// is 2,000 bytes. Only copies straight from the resource's replica neighbourhood skip the
/// writer's quota; these are held to it, and their generation counter is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_from_outside_the_replica_neighbourhood_get_the_writers_checks() {
    let dir = TempDir::new("attack-copies");
    let n = victim(&dir.0, "[limits]\nwriter_kind_bytes = 2000\n");
    let before = peak_kib(&n);
    let attacker_seed = [0x66; 32];
    let attacker = Identity::from_seed(attacker_seed, "").node_id;
    let (_ep, conn) = raw_connect(n.addr, OVERLAY, attacker_seed).await;
    let writer = Identity::from_seed([0x33; 32], "copied");
    let res = Id::hash_of(b"copied");
    let mut refused = 0;
    for batch in 0..5u32 {
        let values = array_entries(&writer, res, batch * 12..batch * 12 + 12, b'c');
        let body = pb::StoreReq {
            resource: res.to_bytes().to_vec(),
            replica_number: 1,
            kind_data: vec![pb::StoreKindData {
                kind: KIND_USER_ARRAY,
                generation_counter: u64::MAX,
                values,
            }],
        };
        let txid = 0xc0de_0000 + u64::from(batch);
        let req = raw_request(
            OVERLAY,
            txid,
            attacker,
            p2psip_proto::Destination::Resource(res),
            p2psip_proto::Body::StoreReq(body),
        );
        send_raw(&conn, &req).await;
        let ans = raw_answer(&conn, txid, Duration::from_secs(5)).await;
        match ans.map(|m| m.body) {
            Some(p2psip_proto::Body::ErrorAns(e)) if e.code == ErrorCode::DataTooLarge as i32 => {
                refused += 1
            }
            other => panic!("copy {batch} from outside was not refused: {other:?}"),
        }
    }
    assert_eq!(refused, 5);
    // Nothing of it is stored.
    let cfg = Config {
        overlay: OVERLAY.into(),
        ..Config::default()
    };
    let c = runtime::spawn(cfg, Role::Client { admitting: n.addr }, [0x43; 32])
        .await
        .unwrap();
    c.wait_joined(Duration::from_secs(10)).await.unwrap();
    let r = op(&c, move |n, t| n.fetch_kind(t, res, KIND_USER_ARRAY)).await;
    match r {
        Ok(p2psip_proto::Body::FetchAns(f)) => {
            assert!(
                f.kind_responses.iter().all(|k| k.values.is_empty()),
                "copies stored"
            )
        }
        other => panic!("{other:?}"),
    }
    // Counted (the metrics are exported once a second).
    let counted = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        (metric_sum(&s, "p2psip_store_copies_refused_total", &[]) == 5.0).then_some(())
    });
    assert!(counted.is_some(), "the refused copies are not counted");
    let grew = peak_kib(&n).saturating_sub(before);
    assert!(grew < RSS_BOUND_KIB, "peak memory grew by {grew} KiB");
    answers_ping(&c, &n).await;
    c.shutdown().await;
}

/// Three connections each open 100 streams and send 900 kB on each without finishing it
/// (270 MB the peer would have to hold): the unfinished streams of a connection hold at
/// most `limits.max_connection_buffer_bytes` (4 MiB by default); the rest are given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_streams_cannot_fill_a_peers_memory() {
    let dir = TempDir::new("attack-streams");
    let n = victim(&dir.0, "");
    let before = peak_kib(&n);
    let mut conns = Vec::new();
    for i in 0..3u8 {
        conns.push(raw_connect(n.addr, OVERLAY, [0x70 + i; 32]).await);
    }
    let chunk = vec![0xabu8; 900_000];
    let mut tasks = Vec::new();
    for (_, conn) in &conns {
        let (conn, chunk) = (conn.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            let mut open = Vec::new();
            for _ in 0..100 {
                let Ok(mut s) = conn.open_uni().await else {
                    break;
                };
                // A stream the peer gives up fails here: that is the point.
                let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await;
                open.push(s);
            }
            open
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let grew = peak_kib(&n).saturating_sub(before);
    eprintln!("  peak RSS grew by {grew} KiB with 300 unfinished streams open");
    assert!(grew < RSS_BOUND_KIB, "peak memory grew by {grew} KiB");
    let c = client_of(&n, 0x44).await;
    answers_ping(&c, &n).await;
    let counted = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        (metric_sum(
            &s,
            "p2psip_messages_dropped_total",
            &[("reason", "buffer_full")],
        ) > 0.0)
            .then_some(())
    });
    assert!(counted.is_some(), "the given-up streams are not counted");
    drop(held);
    for (ep, conn) in conns {
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    }
    // Reported, not asserted: what the allocator gives back is its business.
    let settled = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        (metric_sum(&s, "p2psip_transport_incoming_connections", &[]) <= 1.0).then_some(())
    });
    assert!(
        settled.is_some(),
        "the closed connections still hold their slots"
    );
    eprintln!(
        "  resident memory after the connections closed: {} KiB (before the attack: peak {before} KiB)",
        proc_kib(n.child.id(), "VmRSS:")
    );
    c.shutdown().await;
}

/// Twelve connections from one address to a peer that takes 4 per address: the rest are
/// refused before their handshake, and the peer keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let dir = TempDir::new("attack-conns");
    let n = victim(&dir.0, "[limits]\nmax_connections_per_ip = 4\n");
    let mut ok = Vec::new();
    let mut refused = 0;
    for i in 0..12u8 {
        match try_raw_connect(n.addr, OVERLAY, [0x80 + i; 32]).await {
            Ok(c) => ok.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(ok.len(), 4, "connections taken beyond the cap");
    assert_eq!(refused, 8);
    // A slot given back is free again: closing one lets a client in.
    let (ep, c) = ok.pop().unwrap();
    c.close(0u32.into(), b"done");
    ep.wait_idle().await;
    let client = eventually_async_client(&n).await;
    answers_ping(&client, &n).await;
    client.shutdown().await;
}

async fn eventually_async_client(n: &NodeProc) -> NodeHandle {
    for _ in 0..50 {
        let cfg = Config {
            overlay: OVERLAY.into(),
            ..Config::default()
        };
        if let Ok(c) = runtime::spawn(cfg, Role::Client { admitting: n.addr }, [0x45; 32]).await {
            if c.wait_joined(Duration::from_secs(2)).await.is_ok() {
                return c;
            }
            c.shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no client could connect after a slot was given back");
}

/// Sixty connections asking for another overlay, each refused with a log line: the lines
/// of one reason are rate-limited (one per 10 s with the count held back), the count is
/// exact in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cannot_flood_the_log() {
    let dir = TempDir::new("attack-logs");
    let n = victim(&dir.0, "");
    let mut kept = Vec::new();
    for i in 0..60u8 {
        if let Ok((ep, conn)) =
            try_raw_connect(n.addr, "another-overlay.test", [0x90u8.wrapping_add(i); 32]).await
        {
            // The peer closes it once it has read the overlay asked for.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            kept.push(ep);
        }
    }
    assert!(
        kept.len() >= 55,
        "only {} connections got as far as the refusal",
        kept.len()
    );
    let counted = eventually(Duration::from_secs(10), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        let held = metric_sum(
            &s,
            "p2psip_log_lines_suppressed_total",
            &[("reason", "incoming_refused")],
        );
        (held >= 50.0).then_some(held)
    });
    let log = std::fs::read_to_string(&n.stderr_log).unwrap();
    let lines = log.matches("refused incoming connection").count();
    assert!(lines <= 2, "{lines} log lines for 60 refusals");
    assert!(
        counted.is_some(),
        "the held-back lines are not counted: {:?}",
        scrape(n.metrics).map(|t| t
            .lines()
            .filter(|l| l.contains("suppressed") || l.contains("refused"))
            .map(str::to_string)
            .collect::<Vec<_>>())
    );
    let c = client_of(&n, 0x46).await;
    answers_ping(&c, &n).await;
    c.shutdown().await;
}

/// One originator opens 8 relayed streams through a peer that carries at most 3 per
/// originator (64 in all) to an echo service behind it: 3 are relayed, 5 refused, and the
/// relay keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_streams_are_capped_per_originator() {
    let dir = TempDir::new("attack-relay");
    let n = victim(&dir.0, "[nat]\nrelay_max_streams_per_originator = 3\n");
    // The node behind the relay: a client of the peer, serving echo.
    let target = client_of(&n, 0x47).await;
    p2psip_node::echo::serve(&target.client()).await;
    let (_ep, conn) = raw_app_connect(n.addr, OVERLAY, [0x67; 32]).await;
    let mut head = Vec::new();
    head.extend_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
    head.extend_from_slice(&target.id.to_bytes());
    head.extend_from_slice(&p2psip_node::echo::APP_ECHO.to_be_bytes());
    let (mut relayed, mut refused) = (0, 0);
    let mut open = Vec::new();
    for _ in 0..8 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&head).await.unwrap();
        send.write_all(b"hi").await.unwrap();
        let mut back = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(3), recv.read_exact(&mut back)).await {
            Ok(Ok(())) if &back == b"hi" => relayed += 1,
            _ => refused += 1,
        }
        // Kept open: each relayed stream holds its slot.
        open.push((send, recv));
    }
    assert_eq!((relayed, refused), (3, 5), "relayed, refused");
    let counted = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        (metric_sum(&s, "p2psip_relay_streams_total", &[("outcome", "refused")]) >= 5.0)
            .then_some(())
    });
    assert!(counted.is_some(), "the refused streams are not counted");
    // Closing the streams gives the slots back.
    drop(open);
    let again = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(n.metrics)?);
        (metric_sum(&s, "p2psip_relay_streams_active", &[]) == 0.0).then_some(())
    });
    assert!(again.is_some(), "the relay still counts the closed streams");
    answers_ping(&target, &n).await;
    target.shutdown().await;
}
