//! Property tests: every header and every body survives encode -> decode unchanged, and the
//! parser never panics on arbitrary bytes.
#![allow(clippy::unwrap_used)]

use p2psip_proto::pb;
use p2psip_proto::{forward, parse_header, Body, Destination, ForwardingOption, Id, Message};
use p2psip_proto::{OwnedHeader, Rewrite};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn id() -> impl Strategy<Value = Id> {
    any::<u128>().prop_map(Id)
}
fn idb() -> impl Strategy<Value = Vec<u8>> {
    id().prop_map(|i| i.to_bytes().to_vec())
}
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..40)
}
fn text() -> impl Strategy<Value = String> {
    "[a-z0-9@.:]{0,20}"
}

fn dest() -> impl Strategy<Value = Destination> {
    prop_oneof![
        id().prop_map(Destination::Node),
        id().prop_map(Destination::Resource),
        vec(any::<u8>(), 1..=255).prop_map(Destination::Opaque),
    ]
}

fn header() -> impl Strategy<Value = OwnedHeader> {
    (
        (
            0u8..=100,
            0u8..8,
            any::<u32>(),
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
        ),
        vec(dest(), 0..8),
        vec(dest(), 0..5),
        vec((any::<u8>(), any::<u8>(), bytes()), 0..3),
    )
        .prop_map(
            |((ttl, flags, overlay, config_seq, txid, mrl), via, destinations, opts)| {
                OwnedHeader {
                    ttl,
                    // FORWARD_CRITICAL with options present is refused by design; keep it off.
                    flags: flags & !p2psip_proto::flags::FORWARD_CRITICAL,
                    overlay,
                    config_seq,
                    transaction_id: txid,
                    max_response_len: mrl,
                    via,
                    destinations,
                    options: opts
                        .into_iter()
                        .map(|(kind, flags, value)| ForwardingOption { kind, flags, value })
                        .collect(),
                }
            },
        )
}

fn data_value() -> impl Strategy<Value = pb::DataValue> {
    (any::<bool>(), bytes()).prop_map(|(exists, value)| pb::DataValue { exists, value })
}

fn signature() -> impl Strategy<Value = pb::Signature> {
    (
        idb(),
        text(),
        prop_oneof![
            bytes().prop_map(pb::signer_identity::Key::PublicKey),
            bytes().prop_map(pb::signer_identity::Key::CertificateHash),
            bytes().prop_map(pb::signer_identity::Key::Certificate),
        ],
        bytes(),
    )
        .prop_map(|(node_id, user, key, value)| pb::Signature {
            algorithm: 1,
            signer: Some(pb::SignerIdentity {
                node_id,
                user,
                key: Some(key),
            }),
            value,
        })
}

fn stored_data() -> impl Strategy<Value = pb::StoredData> {
    use pb::stored_data_value::Model;
    (
        any::<u64>(),
        any::<u32>(),
        prop_oneof![
            data_value().prop_map(Model::Single),
            (any::<u32>(), data_value()).prop_map(|(index, v)| Model::Array(pb::ArrayEntry {
                index,
                value: Some(v)
            })),
            (bytes(), data_value()).prop_map(|(key, v)| Model::Dictionary(pb::DictionaryEntry {
                key,
                value: Some(v)
            })),
        ],
        option::of(signature()),
    )
        .prop_map(|(storage_time, lifetime, m, signature)| pb::StoredData {
            storage_time,
            lifetime,
            value: Some(pb::StoredDataValue { model: Some(m) }),
            signature,
        })
}

fn specifier() -> impl Strategy<Value = pb::StoredDataSpecifier> {
    use pb::stored_data_specifier::Model;
    (
        any::<u32>(),
        any::<u64>(),
        prop_oneof![
            any::<bool>().prop_map(Model::Single),
            vec((any::<u32>(), any::<u32>()), 0..3).prop_map(|r| Model::Indices(pb::ArrayRanges {
                ranges: r
                    .into_iter()
                    .map(|(first, last)| pb::ArrayRange { first, last })
                    .collect()
            })),
            vec(bytes(), 0..3).prop_map(|keys| Model::Keys(pb::DictionaryKeys { keys })),
        ],
    )
        .prop_map(|(kind, generation, m)| pb::StoredDataSpecifier {
            kind,
            generation,
            model: Some(m),
        })
}

fn candidate() -> impl Strategy<Value = pb::Candidate> {
    (vec(any::<u8>(), 4..=4), any::<u16>(), 0i32..5, any::<u32>()).prop_map(
        |(address, port, ty, priority)| pb::Candidate {
            address,
            port: port as u32,
            r#type: ty,
            priority,
        },
    )
}

fn pb_dest() -> impl Strategy<Value = pb::Destination> {
    use pb::destination::Id as D;
    prop_oneof![
        idb().prop_map(D::Node),
        idb().prop_map(D::Resource),
        bytes().prop_map(D::Opaque)
    ]
    .prop_map(|d| pb::Destination { id: Some(d) })
}

fn kind_desc() -> impl Strategy<Value = pb::KindDescription> {
    (
        any::<u32>(),
        text(),
        0i32..4,
        0i32..5,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(kind, name, dm, ap, max_count, max_size, mnm)| pb::KindDescription {
                kind,
                name,
                data_model: dm,
                access_policy: ap,
                max_count,
                max_size,
                max_node_multiple: mnm,
            },
        )
}

/// One strategy per message code: every body type the protocol defines.
fn body() -> impl Strategy<Value = Body> {
    let attach = || {
        (
            bytes(),
            bytes(),
            text(),
            vec(candidate(), 0..3),
            any::<bool>(),
        )
    };
    let app = || {
        (
            bytes(),
            bytes(),
            any::<u16>(),
            text(),
            vec(candidate(), 0..3),
        )
    };
    prop_oneof![
        vec(0i32..4, 0..3).prop_map(|r| Body::ProbeReq(pb::ProbeReq { requested_info: r })),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| Body::ProbeAns(
            pb::ProbeAns {
                responsible_set: a,
                num_resources: b,
                uptime: c
            }
        )),
        attach().prop_map(
            |(ufrag, password, role, candidates, send_update)| Body::AttachReq(pb::AttachReq {
                ufrag,
                password,
                role,
                candidates,
                send_update
            })
        ),
        attach().prop_map(
            |(ufrag, password, role, candidates, send_update)| Body::AttachAns(pb::AttachAns {
                ufrag,
                password,
                role,
                candidates,
                send_update
            })
        ),
        (
            idb(),
            any::<u32>(),
            vec((any::<u32>(), any::<u64>(), vec(stored_data(), 0..3)), 0..3)
        )
            .prop_map(
                |(resource, replica_number, kd)| Body::StoreReq(pb::StoreReq {
                    resource,
                    replica_number,
                    kind_data: kd
                        .into_iter()
                        .map(|(kind, generation_counter, values)| pb::StoreKindData {
                            kind,
                            generation_counter,
                            values
                        })
                        .collect(),
                })
            ),
        vec((any::<u32>(), any::<u64>(), vec(idb(), 0..3)), 0..3).prop_map(|r| Body::StoreAns(
            pb::StoreAns {
                kind_responses: r
                    .into_iter()
                    .map(
                        |(kind, generation_counter, replicas)| pb::StoreKindResponse {
                            kind,
                            generation_counter,
                            replicas
                        }
                    )
                    .collect()
            }
        )),
        (idb(), vec(specifier(), 0..3)).prop_map(|(resource, specifiers)| Body::FetchReq(
            pb::FetchReq {
                resource,
                specifiers
            }
        )),
        vec((any::<u32>(), any::<u64>(), vec(stored_data(), 0..3)), 0..3).prop_map(|r| {
            Body::FetchAns(pb::FetchAns {
                kind_responses: r
                    .into_iter()
                    .map(|(kind, generation, values)| pb::FetchKindResponse {
                        kind,
                        generation,
                        values,
                    })
                    .collect(),
            })
        }),
        (idb(), vec(any::<u32>(), 0..4))
            .prop_map(|(resource, kinds)| Body::FindReq(pb::FindReq { resource, kinds })),
        vec((any::<u32>(), idb()), 0..3).prop_map(|r| Body::FindAns(pb::FindAns {
            results: r
                .into_iter()
                .map(|(kind, closest)| pb::FindKindData { kind, closest })
                .collect()
        })),
        (idb(), text(), bytes()).prop_map(|(joining_peer_id, algorithm, overlay_specific)| {
            Body::JoinReq(pb::JoinReq {
                joining_peer_id,
                algorithm,
                overlay_specific,
            })
        }),
        bytes().prop_map(|o| Body::JoinAns(pb::JoinAns {
            overlay_specific: o
        })),
        (idb(), bytes()).prop_map(|(l, o)| Body::LeaveReq(pb::LeaveReq {
            leaving_peer_id: l,
            overlay_specific: o
        })),
        Just(Body::LeaveAns(pb::LeaveAns {})),
        (text(), bytes()).prop_map(|(a, o)| Body::UpdateReq(pb::UpdateReq {
            algorithm: a,
            overlay_specific: o
        })),
        bytes().prop_map(|o| Body::UpdateAns(pb::UpdateAns {
            overlay_specific: o
        })),
        (any::<bool>(), option::of(pb_dest()), bytes()).prop_map(|(s, d, o)| {
            Body::RouteQueryReq(pb::RouteQueryReq {
                send_update: s,
                destination: d,
                overlay_specific: o,
            })
        }),
        (idb(), bytes()).prop_map(|(n, o)| Body::RouteQueryAns(pb::RouteQueryAns {
            next_peer: n,
            overlay_specific: o
        })),
        bytes().prop_map(|p| Body::PingReq(pb::PingReq {
            padding: p,
            ..Default::default()
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(r, t)| Body::PingAns(pb::PingAns {
            response_id: r,
            time: t,
            ..Default::default()
        })),
        (idb(), vec(specifier(), 0..3)).prop_map(|(resource, specifiers)| Body::StatReq(
            pb::StatReq {
                resource,
                specifiers
            }
        )),
        vec(
            (
                any::<u32>(),
                any::<u64>(),
                vec((any::<u32>(), bytes(), any::<u64>(), any::<bool>()), 0..3)
            ),
            0..3
        )
        .prop_map(|r| Body::StatAns(pb::StatAns {
            kind_responses: r
                .into_iter()
                .map(|(kind, generation, vals)| pb::StatKindResponse {
                    kind,
                    generation,
                    values: vals
                        .into_iter()
                        .map(|(len, hash, t, exists)| pb::StoredMetaData {
                            value_length: len,
                            hash,
                            storage_time: t,
                            lifetime: len / 2,
                            exists,
                            index: len / 3,
                            key: vec![],
                        })
                        .collect(),
                })
                .collect(),
        })),
        app().prop_map(
            |(ufrag, password, application, role, candidates)| Body::AppAttachReq(
                pb::AppAttachReq {
                    ufrag,
                    password,
                    application: application as u32,
                    role,
                    candidates
                }
            )
        ),
        app().prop_map(
            |(ufrag, password, application, role, candidates)| Body::AppAttachAns(
                pb::AppAttachAns {
                    ufrag,
                    password,
                    application: application as u32,
                    role,
                    candidates
                }
            )
        ),
        (0i32..3, any::<u32>(), bytes(), vec(kind_desc(), 0..3)).prop_map(|(t, s, c, k)| {
            Body::ConfigUpdateReq(pb::ConfigUpdateReq {
                r#type: t,
                sequence: s,
                config_data: c,
                kinds: k,
            })
        }),
        Just(Body::ConfigUpdateAns(pb::ConfigUpdateAns {})),
        (idb(), vec(any::<u32>(), 0..4)).prop_map(|(d, k)| Body::PathTrackReq(pb::PathTrackReq {
            destination: d,
            diagnostic_kinds: k,
        })),
        (idb(), any::<bool>(), vec(idb(), 0..4), any::<u64>(), text()).prop_map(
            |(n, r, via, up, v)| Body::PathTrackAns(pb::PathTrackAns {
                next_hop: n,
                responsible: r,
                diagnostics: vec![
                    pb::DiagnosticInfo {
                        kind: 7,
                        value: Some(pb::diagnostic_info::Value::Number(up)),
                    },
                    pb::DiagnosticInfo {
                        kind: 5,
                        value: Some(pb::diagnostic_info::Value::Text(v)),
                    },
                ],
                via,
            })
        ),
        ((2i32..=20), text()).prop_map(|(c, i)| Body::ErrorAns(pb::ErrorAns {
            code: c,
            info: i.into_bytes()
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn message_round_trip(h in header(), b in body(), sig in option::of(signature())) {
        let msg = Message {
            header: h,
            body: b,
            security: sig.map(|s| pb::SecurityBlock { certificates: vec![], signature: Some(s) }),
        };
        let bytes = msg.encode().unwrap();
        let parsed = parse_header(&bytes).unwrap();
        prop_assert_eq!(parsed.to_owned(), msg.header.clone());
        prop_assert_eq!(parsed.header_len(), msg.header.encoded_len());
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn forwarding_keeps_everything_but_ttl_and_via(h in header(), b in body(), me in dest()) {
        prop_assume!(h.ttl > 0);
        let msg = Message { header: h, body: b, security: None };
        let bytes = msg.encode().unwrap();
        let mut out = Vec::new();
        forward(&bytes, Rewrite { push_via: Some(&me), pop_destination: false }, &mut out).unwrap();
        let mut expect = msg.clone();
        expect.header.ttl -= 1;
        expect.header.via.push(me);
        prop_assert_eq!(Message::decode(&out).unwrap(), expect);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..300)) {
        let _ = parse_header(&data);
        let _ = Message::decode(&data);
    }

    #[test]
    fn mutated_valid_messages_never_panic(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        for (_, m) in p2psip_proto::test_vectors::all() {
            let mut bytes = m.encode().unwrap();
            let i = idx.index(bytes.len());
            bytes[i] = byte;
            let _ = Message::decode(&bytes);
            let mut out = Vec::new();
            let me = Destination::Node(Id(1));
            let _ = forward(&bytes, Rewrite { push_via: Some(&me), pop_destination: true }, &mut out);
        }
    }
}
