//! The messages behind the hex test vectors of `SPEC.md` section 9. `tests/vectors.rs`
//! checks that each encodes to exactly the bytes the spec lists (and decodes back), and
//! `cargo run -p p2psip-proto --example vectors` prints them.

use crate::body::Body;
use crate::header::Destination;
use crate::id::{overlay_id, Id};
use crate::message::Message;
use crate::pb;
use crate::security::{message_signing_input, stored_data_signing_input, Identity};
use crate::write::OwnedHeader;
use prost::Message as _;

/// The overlay name used by all vectors.
pub const OVERLAY: &str = "example.p2psip";
/// Node-ID of the sending peer A.
pub const NODE_A: Id = Id(0x0a0a_0a0a_0a0a_0a0a_0a0a_0a0a_0a0a_0a0a);
/// Node-ID of peer B.
pub const NODE_B: Id = Id(0x0b0b_0b0b_0b0b_0b0b_0b0b_0b0b_0b0b_0b0b);
/// Node-ID of the peer answering the Fetch.
pub const RESPONDER: Id = Id(0x3c3c_3c3c_3c3c_3c3c_3c3c_3c3c_3c3c_3c3c);
/// Storage time of the stored value, ms since the epoch (2023-11-14T22:13:20Z).
pub const STORAGE_TIME: u64 = 1_700_000_000_000;

/// Alice's self-signed identity (seed 0x01 * 32).
pub fn alice() -> Identity {
    Identity::from_seed([1; 32], "alice")
}

fn header(txid: u64, via: Vec<Destination>, dest: Vec<Destination>) -> OwnedHeader {
    OwnedHeader {
        via,
        destinations: dest,
        ..OwnedHeader::new(overlay_id(OVERLAY), txid, Destination::Node(NODE_B))
    }
}

/// The value Alice stores: a dictionary entry keyed by her Node-ID.
pub fn alice_value() -> pb::StoredData {
    let a = alice();
    let resource = Id::hash_of(b"sip:alice@example.com");
    let value = pb::StoredDataValue {
        model: Some(pb::stored_data_value::Model::Dictionary(
            pb::DictionaryEntry {
                key: a.node_id.to_bytes().to_vec(),
                value: Some(pb::DataValue {
                    exists: true,
                    value: b"sip:alice@192.0.2.10:5060".to_vec(),
                }),
            },
        )),
    };
    let sig = a.sign(&stored_data_signing_input(
        resource,
        1,
        STORAGE_TIME,
        &value,
    ));
    pb::StoredData {
        storage_time: STORAGE_TIME,
        lifetime: 3600,
        value: Some(value),
        signature: Some(sig),
    }
}

/// All vectors, by name, in the order of the spec.
pub fn all() -> Vec<(&'static str, Message)> {
    let a = alice();
    let resource = Id::hash_of(b"sip:alice@example.com");

    let ping = Message {
        header: header(
            0x0102_0304_0506_0708,
            vec![Destination::Node(NODE_A)],
            vec![Destination::Node(NODE_B)],
        ),
        body: Body::PingReq(pb::PingReq {
            padding: vec![],
            ..Default::default()
        }),
        security: None,
    };

    let store_body = Body::StoreReq(pb::StoreReq {
        resource: resource.to_bytes().to_vec(),
        replica_number: 0,
        kind_data: vec![pb::StoreKindData {
            kind: 1,
            generation_counter: 0,
            values: vec![alice_value()],
        }],
    });
    let store_txid = 0x1111_2222_3333_4444;
    let store_overlay = overlay_id(OVERLAY);
    let store_sig = a.sign(&message_signing_input(
        store_overlay,
        store_txid,
        store_body.code(),
        &store_body.encode_to_vec(),
    ));
    let store = Message {
        header: header(
            store_txid,
            vec![Destination::Node(a.node_id)],
            vec![Destination::Resource(resource)],
        ),
        body: store_body,
        security: Some(pb::SecurityBlock {
            certificates: vec![],
            signature: Some(store_sig),
        }),
    };

    let fetch_ans = Message {
        header: header(
            0x5555_6666_7777_8888,
            vec![Destination::Node(RESPONDER)],
            vec![Destination::Node(NODE_B), Destination::Node(NODE_A)],
        ),
        body: Body::FetchAns(pb::FetchAns {
            kind_responses: vec![pb::FetchKindResponse {
                kind: 1,
                generation: 1,
                values: vec![alice_value()],
            }],
        }),
        security: None,
    };

    let error = Message {
        header: header(
            0x99,
            vec![Destination::Node(NODE_B)],
            vec![Destination::Node(NODE_A)],
        ),
        body: Body::error(pb::ErrorCode::NotFound, "no value at resource"),
        security: None,
    };

    let via3 = Message {
        header: OwnedHeader {
            ttl: 97,
            ..header(
                0x0102_0304_0506_0709,
                vec![
                    Destination::Node(NODE_A),
                    Destination::Node(Id(0x1c1c_1c1c_1c1c_1c1c_1c1c_1c1c_1c1c_1c1c)),
                    Destination::Node(Id(0x2d2d_2d2d_2d2d_2d2d_2d2d_2d2d_2d2d_2d2d)),
                ],
                vec![Destination::Resource(resource)],
            )
        },
        body: Body::PingReq(pb::PingReq {
            padding: vec![],
            ..Default::default()
        }),
        security: None,
    };

    let opaque = Message {
        header: header(
            0x0a0b_0c0d,
            vec![Destination::Node(RESPONDER)],
            vec![
                Destination::Node(NODE_B),
                Destination::Opaque(vec![0xc1, 0x1e, 0x47, 0x01]),
            ],
        ),
        body: Body::PingAns(pb::PingAns {
            response_id: 42,
            time: STORAGE_TIME,
            ..Default::default()
        }),
        security: None,
    };

    let ping_txid = 0x0102_0304_0506_0710;
    let ping_body = Body::PingReq(pb::PingReq {
        padding: vec![],
        ..Default::default()
    });
    let ping_block = crate::security::sign_message(
        &a,
        overlay_id(OVERLAY),
        ping_txid,
        ping_body.code(),
        &ping_body.encode_to_vec(),
    );
    let ping_signed = Message {
        header: header(
            ping_txid,
            vec![Destination::Node(a.node_id)],
            vec![Destination::Node(NODE_B)],
        ),
        body: ping_body,
        security: pb::SecurityBlock::decode(ping_block.as_slice()).ok(),
    };

    vec![
        ("ping", ping),
        ("store-signed", store),
        ("fetch-answer", fetch_ans),
        ("error-not-found", error),
        ("via-3", via3),
        ("opaque-destination", opaque),
        ("ping-signed", ping_signed),
    ]
}

/// Decoded stored data must encode back to the same bytes (used by the vectors test).
pub fn stored_data_bytes() -> Vec<u8> {
    alice_value().encode_to_vec()
}
