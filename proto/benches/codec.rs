//! Codec benchmarks: header parse with a 3-entry via list, the forwarding step, a full
//! decode of a signed Store, and the message signature every request and answer carries
//! (sign, verify). `cargo bench -p p2psip-proto --bench codec`
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2psip_proto::security::{
    sign_message, verify_batch, verify_message, Binding, Identity, KeyCache, Pending,
};
use p2psip_proto::{forward, parse_header, test_vectors, Destination, Id, Message, Rewrite};
use std::hint::black_box;

fn vector(name: &str) -> Vec<u8> {
    test_vectors::all()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .encode()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let via3 = vector("via-3");
    let store = vector("store-signed");

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_header_via3", |b| {
        b.iter(|| {
            let h = parse_header(black_box(&via3)).unwrap();
            black_box(h.first_destination());
        })
    });
    let me = Destination::Node(Id(0x3e3e_3e3e_3e3e_3e3e_3e3e_3e3e_3e3e_3e3e));
    let mut out = Vec::with_capacity(1024);
    g.bench_function("forward_step_via3", |b| {
        b.iter(|| {
            forward(
                black_box(&via3),
                Rewrite {
                    push_via: Some(&me),
                    pop_destination: false,
                },
                &mut out,
            )
            .unwrap();
            black_box(out.len());
        })
    });
    g.bench_function("decode_store_signed", |b| {
        b.iter(|| black_box(Message::decode(black_box(&store)).unwrap()))
    });
    // The message signature of a 200-byte Store body (proto/SPEC.md 5.4).
    let alice = test_vectors::alice();
    let body = vec![0x5a; 200];
    let overlay = p2psip_proto::overlay_id(test_vectors::OVERLAY);
    g.bench_function("sign_message_200b", |b| {
        b.iter(|| black_box(sign_message(&alice, overlay, 7, 7, black_box(&body))))
    });
    let block = sign_message(&alice, overlay, 7, 7, &body);
    g.bench_function("verify_message_200b", |b| {
        b.iter(|| {
            black_box(
                verify_message(black_box(&block), overlay, 7, 7, &body, Binding::SelfSigned)
                    .unwrap(),
            )
        })
    });
    // Batch checks (SPEC 5.4): 4 and 8 messages of distinct signers, the time per batch.
    for n in [4usize, 8] {
        let signers: Vec<Identity> = (0..n as u8)
            .map(|i| Identity::from_seed([i + 1; 32], format!("u{i}")))
            .collect();
        let blocks: Vec<Vec<u8>> = signers
            .iter()
            .enumerate()
            .map(|(i, id)| sign_message(id, overlay, i as u64, 7, &body))
            .collect();
        let mut keys = KeyCache::default();
        let pending: Vec<Pending> = blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                Pending::of_message(
                    b,
                    overlay,
                    i as u64,
                    7,
                    &body,
                    Binding::SelfSigned,
                    &mut keys,
                )
            })
            .collect();
        g.bench_function(format!("verify_batch_{n}x200b"), |b| {
            b.iter(|| black_box(verify_batch(black_box(&pending), &mut keys)))
        });
    }
    g.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);
