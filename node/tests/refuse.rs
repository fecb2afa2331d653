//! Bad peers are refused and the node stays up: a peer of another overlay, a request whose
//! originator claims a Node-ID its certificate does not hold, a Join with another algorithm,
//! and a garbage byte stream.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_proto::{pb, Body, Destination, Id, Message};
use std::time::Duration;

const OVERLAY: &str = "refuse.test";

fn request(signer: &p2psip_proto::security::Identity, dest: Destination, body: Body) -> Vec<u8> {
    raw_request(OVERLAY, rand_txid(), signer, dest, body)
}

fn rand_txid() -> u64 {
    0x5eed_0000_0000_0001
}

fn dropped(n: &NodeProc, reason: &str) -> f64 {
    metric_sum(
        &parse_prometheus(&scrape(n.metrics).unwrap_or_default()),
        "p2psip_messages_dropped_total",
        &[("reason", reason)],
    )
}

fn alive(n: &NodeProc) {
    let (code, out, err) = client(n.addr, OVERLAY, &["ping"]);
    assert_eq!(code, 0, "node {} no longer answers: {out} {err}", n.id);
}

#[test]
fn bad_peers_are_refused_and_the_node_stays_up() {
    let root = TempDir::new("refuse");
    let a = start_node(&root.0.join("a"), OVERLAY, &[], "127.0.0.1:0");
    let b = start_node(&root.0.join("b"), OVERLAY, &[a.addr], "127.0.0.1:0");
    eventually(Duration::from_secs(20), || {
        let s = parse_prometheus(&scrape(b.metrics)?);
        (metric_sum(&s, "p2psip_overlay_joined", &[]) == 1.0).then_some(())
    })
    .expect("b joins a");

    // 1. A peer of another overlay: refused at the connection, with a reason it logs.
    let wrong = start_node(
        &root.0.join("w"),
        "another.overlay",
        &[a.addr],
        "127.0.0.1:0",
    );
    let refused = eventually(Duration::from_secs(15), || {
        let log = std::fs::read_to_string(&wrong.stderr_log).ok()?;
        log.contains("incompatible overlay").then_some(())
    });
    assert!(
        refused.is_some(),
        "the wrong-overlay peer was not told why; its log:\n{}",
        std::fs::read_to_string(&wrong.stderr_log).unwrap_or_default()
    );
    let s = parse_prometheus(&scrape(wrong.metrics).unwrap());
    assert_eq!(
        metric_sum(&s, "p2psip_overlay_joined", &[]),
        0.0,
        "it must not join"
    );
    let counted = eventually(Duration::from_secs(5), || {
        let s = parse_prometheus(&scrape(a.metrics)?);
        (metric_sum(&s, "p2psip_transport_refused_connections_total", &[]) >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "refused connection not counted");
    // Also as a client: the error says why.
    let (code, _, err) = client(a.addr, "another.overlay", &["ping"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("could not reach") || err.contains("overlay"),
        "{err}"
    );
    alive(&a);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seed = [0x42u8; 32];
        let my_identity = p2psip_proto::security::Identity::from_seed(seed, "");
        let me = my_identity.node_id;
        let (_ep, conn) = raw_connect(a.addr, OVERLAY, seed).await;

        // 2. A forged originator: the certificate proves `me`, the via list claims another.
        let before = dropped(&a, "forged_origin");
        let forged = request(
            &p2psip_proto::security::Identity::from_seed([0x43; 32], ""),
            Destination::Resource(Id(77)),
            Body::PingReq(pb::PingReq {
                padding: vec![],
                ..Default::default()
            }),
        );
        send_raw(&conn, &forged).await;
        let seen = eventually(Duration::from_secs(5), || {
            (dropped(&a, "forged_origin") > before).then_some(())
        });
        assert!(seen.is_some(), "forged request not counted as dropped");

        // 3. A Join with another algorithm, and a Join for another Node-ID: Error answers.
        let answers = async |bytes: Vec<u8>| {
            send_raw(&conn, &bytes).await;
            loop {
                let mut r = tokio::time::timeout(Duration::from_secs(5), conn.accept_uni())
                    .await
                    .expect("an answer")
                    .unwrap();
                let b = r.read_to_end(1 << 20).await.unwrap();
                // The link control frame (our observed address, SPEC 2.8) is not an answer.
                if b.starts_with(&[0xD2, 0x50, 0x32, 0x43]) {
                    continue;
                }
                break Message::decode(&b).unwrap().body;
            }
        };
        let join = |algorithm: &str, id: Id| {
            request(
                &my_identity,
                Destination::Resource(me),
                Body::JoinReq(pb::JoinReq {
                    joining_peer_id: id.to_bytes().to_vec(),
                    algorithm: algorithm.into(),
                    overlay_specific: vec![],
                }),
            )
        };
        let Body::ErrorAns(e) = answers(join("kademlia", me)).await else {
            panic!("a Join with another algorithm must be refused")
        };
        assert_eq!(e.code, pb::ErrorCode::IncompatibleWithOverlay as i32);
        assert!(String::from_utf8_lossy(&e.info).contains("chord"));
        let Body::ErrorAns(e) = answers(join("chord", Id(0x9999))).await else {
            panic!("a Join for another Node-ID must be refused")
        };
        assert_eq!(e.code, pb::ErrorCode::Forbidden as i32);

        // 4. Garbage on a stream, and an oversized stream.
        let before = dropped(&a, "malformed");
        send_raw(&conn, b"\x00\x01garbage that is not a p2psip message").await;
        send_raw(&conn, &[0xd2; 64]).await;
        let seen = eventually(Duration::from_secs(5), || {
            (dropped(&a, "malformed") >= before + 2.0).then_some(())
        });
        assert!(seen.is_some(), "garbage not counted");
        let big = vec![0u8; (1 << 20) + 10];
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_all(&big).await;
        let _ = s.finish();
        let seen = eventually(Duration::from_secs(5), || {
            (dropped(&a, "oversized") >= 1.0).then_some(())
        });
        assert!(seen.is_some(), "oversized stream not counted");
    });

    // 5. Raw UDP garbage at the QUIC port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        sock.send_to(&[i; 200], a.addr).unwrap();
    }
    alive(&a);
    alive(&b);
}
