//! Direct responses between real in-process peers on 127.0.0.1 over QUIC (proto/SPEC.md
//! 8.1): a peer with `direct_response` on gets its lookups' answers straight from the
//! responsible peer (which counts them); a peer whose advertised address reaches nothing
//! still gets every answer, along the path, after a retransmission.
#![allow(clippy::unwrap_used)]

use p2psip_algorithms::{Event, Id};
use p2psip_node::config::Config;
use p2psip_node::identity;
use p2psip_node::runtime::{self, NodeHandle, Role};
use std::time::{Duration, Instant};

const OVERLAY: &str = "direct.test";

/// A peer started (its join under way).
async fn spawn(boot: Option<&NodeHandle>, advertise: &str) -> NodeHandle {
    let mut cfg = Config {
        overlay: OVERLAY.into(),
        listen: "127.0.0.1:0".into(),
        bootstrap: boot.map(|b| vec![b.addr.to_string()]).unwrap_or_default(),
        advertise: advertise.into(),
        direct_response: true,
        ..Config::default()
    };
    cfg.timers.request_timeout_ms = 500;
    runtime::spawn(cfg, Role::Peer, identity::generate_seed())
        .await
        .unwrap()
}

async fn peer(boot: Option<&NodeHandle>, advertise: &str) -> NodeHandle {
    let h = spawn(boot, advertise).await;
    h.wait_joined(Duration::from_secs(20)).await.unwrap();
    h
}

/// Answers the peers sent straight to their originators so far.
async fn direct(all: &[NodeHandle]) -> u64 {
    let mut d = 0;
    for h in all {
        d += h.status().await.unwrap().stats.direct_responses;
    }
    d
}

/// `n` lookups from `from`: (answered, the slowest, answers sent directly by the peers of
/// `all` meanwhile).
async fn lookups(from: &NodeHandle, all: &[NodeHandle], n: usize) -> (usize, Duration, u64) {
    let before = direct(all).await;
    let (mut ok, mut slowest) = (0, Duration::ZERO);
    for k in 0..n {
        let target = Id::hash_of(format!("direct-{k}").as_bytes());
        let e = tokio::time::timeout(
            Duration::from_secs(15),
            from.op(move |c, t| c.lookup(t, target)),
        )
        .await
        .unwrap()
        .unwrap();
        if let Event::Completed {
            outcome: Ok(_),
            latency,
            ..
        } = e
        {
            ok += 1;
            slowest = slowest.max(latency);
        }
    }
    (ok, slowest, direct(all).await - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_straight_back_and_fall_back_to_the_path() {
    let t0 = Instant::now();
    let first = peer(None, "").await;
    let mut all = vec![];
    // Enough peers that some lookups take two hops or more (with 4 successors, 4
    // predecessors and the fingers, a small ring is all neighbours).
    for _ in 0..23 {
        all.push(spawn(Some(&first), "").await);
    }
    for h in &all {
        h.wait_joined(Duration::from_secs(30)).await.unwrap();
    }
    all.push(first);
    // Let the ring settle (finger tables fill in the background).
    let settle = Instant::now() + Duration::from_secs(4);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("24 peers joined in {:?}", t0.elapsed());
    let (ok, slowest, direct) = lookups(&all[0], &all, 60).await;
    println!("60 lookups: {ok} answered, slowest {slowest:?}, {direct} answers sent directly");
    assert_eq!(ok, 60);
    assert!(direct >= 3, "only {direct} direct answers");
    assert!(
        slowest < Duration::from_millis(500),
        "an answer waited for a retransmission"
    );

    // A peer whose advertised address reaches nothing: the responsible peers' connections
    // to it fail, their direct answers are lost, and the retransmissions (without the
    // option) are answered along the path.
    let lost = peer(Some(&all[1]), "127.0.0.1:1").await;
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut everyone: Vec<NodeHandle> = Vec::new();
    everyone.extend(all);
    let (ok, slowest, direct) = lookups(&lost, &everyone, 8).await;
    println!("from the unreachable peer: {ok} of 8 answered, slowest {slowest:?}, {direct} direct answers tried");
    assert_eq!(ok, 8, "the fallback did not bring every answer");
    assert!(direct >= 1, "no direct answer was tried");
    assert!(
        slowest >= Duration::from_millis(500),
        "no answer needed the fallback"
    );
    // (The peers stop with the test's runtime: no graceful leaves to wait for.)
    drop((lost, everyone));
}
