//! Abuse limits over real QUIC on loopback, in one process: three peers, a client that
//! floods its admitting peer with requests (64 in flight, as fast as answers come back) and
//! a polite client of the same peer storing and fetching at 20 operations per second. The
//! peer accepts 100 requests per second from each originator (burst 50): the flooder gets
//! Error_Rate_Limited beyond that, and never more successes than the bucket allows; the
//! polite client's every operation succeeds. Prints the throughput both got.
#![allow(clippy::unwrap_used)]

use p2psip_algorithms::storage::KIND_USER_VALUE;
use p2psip_algorithms::{Event, Id};
use p2psip_node::config::Config;
use p2psip_node::ops::{build_value, name_seed};
use p2psip_node::runtime::{self, NodeHandle, Role};
use p2psip_proto::pb::ErrorCode;
use p2psip_proto::security::Identity;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: u32 = 100;
const BURST: u32 = 50;
const FLOOD_FOR: Duration = Duration::from_secs(3);

fn config(bootstrap: Vec<String>) -> Config {
    let mut c = Config {
        overlay: "limits.test".into(),
        listen: "127.0.0.1:0".into(),
        bootstrap,
        ..Config::default()
    };
    c.limits.origin_requests_per_s = RATE;
    c.limits.origin_burst = BURST;
    c.timers.request_timeout_ms = 500;
    c
}

fn seed(i: u8) -> [u8; 32] {
    [i; 32]
}

/// Ok, rate-limited, or another failure.
enum Outcome {
    Ok,
    Limited,
    Other(String),
}

fn outcome(ev: Result<Event, runtime::NodeError>) -> Outcome {
    match ev {
        Ok(Event::Completed { outcome: Ok(_), .. }) => Outcome::Ok,
        Ok(Event::Completed {
            outcome: Err(e), ..
        }) if e.code == ErrorCode::RateLimited => Outcome::Limited,
        Ok(Event::Completed {
            outcome: Err(e), ..
        }) => Outcome::Other(format!("{e:?}")),
        Ok(other) => Outcome::Other(format!("{other:?}")),
        Err(e) => Outcome::Other(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_while_another_keeps_working() {
    let first = runtime::spawn(config(vec![]), Role::Peer, seed(1))
        .await
        .unwrap();
    let boot = vec![first.addr.to_string()];
    let mut peers: Vec<NodeHandle> = vec![first];
    for i in 2..=3 {
        peers.push(
            runtime::spawn(config(boot.clone()), Role::Peer, seed(i))
                .await
                .unwrap(),
        );
    }
    for p in &peers {
        p.wait_joined(Duration::from_secs(10)).await.unwrap();
    }
    let admitting = peers[0].addr;
    let flooder = Arc::new(
        runtime::spawn(config(vec![]), Role::Client { admitting }, seed(10))
            .await
            .unwrap(),
    );
    let polite = runtime::spawn(
        config(vec![]),
        Role::Client { admitting },
        name_seed("polite"),
    )
    .await
    .unwrap();
    flooder.wait_joined(Duration::from_secs(5)).await.unwrap();
    polite.wait_joined(Duration::from_secs(5)).await.unwrap();

    // The flood: 64 workers, each sending its next fetch when the last one is answered.
    let began = Instant::now();
    let mut workers = Vec::new();
    for w in 0..64u32 {
        let f = flooder.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut other) = (0u64, 0u64, Vec::new());
            let mut i = 0u32;
            while began.elapsed() < FLOOD_FOR {
                let res = Id::hash_of(format!("flood-{w}-{i}").as_bytes());
                i += 1;
                match outcome(
                    f.op(move |n, t| n.fetch_kind(t, res, KIND_USER_VALUE))
                        .await,
                ) {
                    Outcome::Ok => ok += 1,
                    Outcome::Limited => limited += 1,
                    Outcome::Other(e) => other.push(e),
                }
            }
            (ok, limited, other)
        }));
    }

    // Meanwhile the polite client stores and fetches back 30 values, 20 operations/s.
    let mut polite_ok = 0u32;
    let mut polite_failed = Vec::new();
    let polite_began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..30u32 {
        let name = format!("polite-{i}");
        // USER-MATCH: each value is signed by the user its resource is named after.
        let writer = Identity::from_seed(name_seed(&name), name.clone());
        let (res, v) = build_value(
            &writer,
            &name,
            KIND_USER_VALUE,
            name.as_bytes(),
            runtime::now(),
            600,
        );
        tick.tick().await;
        match outcome(
            polite
                .op(move |n, t| n.store(t, res, KIND_USER_VALUE, vec![v], 0))
                .await,
        ) {
            Outcome::Ok => polite_ok += 1,
            Outcome::Limited => polite_failed.push(format!("store {i}: rate limited")),
            Outcome::Other(e) => polite_failed.push(format!("store {i}: {e}")),
        }
        tick.tick().await;
        match polite
            .op(move |n, t| n.fetch_kind(t, res, KIND_USER_VALUE))
            .await
        {
            Ok(Event::Completed {
                outcome: Ok(p2psip_proto::Body::FetchAns(f)),
                ..
            }) if f.kind_responses.iter().any(|k| !k.values.is_empty()) => polite_ok += 1,
            other => polite_failed.push(format!("fetch {i}: {:?}", other.map(|_| ()))),
        }
    }
    let polite_time = polite_began.elapsed();

    let (mut ok, mut limited, mut other) = (0u64, 0u64, Vec::new());
    for w in workers {
        let (o, l, e) = w.await.unwrap();
        ok += o;
        limited += l;
        other.extend(e);
    }
    let flood_time = began.elapsed();
    let admitting_stats = peers[0].status().await.unwrap().stats;

    println!(
        "flooder: {ok} answered + {limited} rate-limited in {:.1} s = {:.0} answered/s, {:.0} refused/s",
        flood_time.as_secs_f64(),
        ok as f64 / flood_time.as_secs_f64(),
        limited as f64 / flood_time.as_secs_f64()
    );
    println!(
        "polite client: {polite_ok}/60 operations succeeded in {:.1} s = {:.1}/s",
        polite_time.as_secs_f64(),
        f64::from(polite_ok) / polite_time.as_secs_f64()
    );

    assert!(
        polite_failed.is_empty(),
        "polite client failed: {polite_failed:?}"
    );
    assert_eq!(polite_ok, 60);
    assert!(
        other.len() < 5,
        "flooder saw unexpected failures: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(limited > 0, "the flood was never limited");
    // The bucket never lets more through than its depth plus the rate over the time.
    let allowed = f64::from(BURST) + f64::from(RATE) * flood_time.as_secs_f64() + 1.0;
    assert!(
        (ok as f64) <= allowed,
        "{ok} flood requests answered, at most {allowed:.0} allowed"
    );
    assert_eq!(
        admitting_stats.rate_limited, limited,
        "the peer counted every refusal"
    );

    let flooder = Arc::try_unwrap(flooder).ok().unwrap();
    flooder.shutdown().await;
    polite.shutdown().await;
    for p in peers {
        p.shutdown().await;
    }
}
