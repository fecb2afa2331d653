//! The hex test vectors of SPEC.md section 9, checked byte for byte against the encoder and
//! decoded back into the same messages.
#![allow(clippy::unwrap_used)]

use p2psip_proto::security::{message_signing_input, stored_data_signing_input, verify};
use p2psip_proto::{pb, test_vectors, Body, Id, Message};

const SPEC: &str = include_str!("../SPEC.md");

/// The ```hex vector:NAME blocks of the spec, in order.
fn spec_vectors() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.trim().strip_prefix("```hex vector:") {
            let mut hexs = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                hexs.push_str(l.trim());
            }
            out.push((name.to_string(), hex::decode(&hexs).unwrap()));
        }
    }
    out
}

#[test]
fn spec_lists_exactly_the_vectors_of_the_code() {
    let spec: Vec<String> = spec_vectors().into_iter().map(|(n, _)| n).collect();
    let code: Vec<String> = test_vectors::all()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(spec, code);
    assert!(spec.len() >= 6);
}

#[test]
fn every_vector_encodes_byte_for_byte_and_decodes_back() {
    let spec = spec_vectors();
    for (name, msg) in test_vectors::all() {
        let (_, bytes) = spec.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(
            &msg.encode().unwrap(),
            bytes,
            "vector {name}: the encoder disagrees with SPEC.md"
        );
        assert_eq!(Message::decode(bytes).unwrap(), msg, "vector {name}");
    }
}

#[test]
fn signed_store_vector_verifies_and_binds_alice() {
    let spec = spec_vectors();
    let (_, bytes) = spec.iter().find(|(n, _)| n == "store-signed").unwrap();
    let msg = Message::decode(bytes).unwrap();
    let sig = msg.security.unwrap().signature.unwrap();
    let input = message_signing_input(
        msg.header.overlay,
        msg.header.transaction_id,
        msg.body.code(),
        &msg.body.encode_to_vec(),
    );
    let signer = verify(&sig, &input, true).unwrap();
    assert_eq!(signer.user, "alice");
    let Body::StoreReq(req) = msg.body else {
        panic!("not a store")
    };
    let resource = Id::from_slice(&req.resource).unwrap();
    assert_eq!(resource, Id::hash_of(b"sip:alice@example.com"));
    let data = &req.kind_data[0].values[0];
    let value = data.value.as_ref().unwrap();
    let input = stored_data_signing_input(resource, 1, data.storage_time, value);
    verify(data.signature.as_ref().unwrap(), &input, true).unwrap();
    // The stored value's dictionary key is the writer's Node-ID (USER-NODE-MATCH shape).
    let Some(pb::stored_data_value::Model::Dictionary(e)) = &value.model else {
        panic!("not a dictionary entry")
    };
    assert_eq!(e.key, test_vectors::alice().node_id.to_bytes().to_vec());
}

#[test]
fn signed_ping_vector_verifies_as_its_originator_and_not_once_altered() {
    use p2psip_proto::security::{verify_message, Binding, SignatureError};
    use prost::Message as _;
    let spec = spec_vectors();
    let (_, bytes) = spec.iter().find(|(n, _)| n == "ping-signed").unwrap();
    let msg = Message::decode(bytes).unwrap();
    let block = msg.security.clone().unwrap().encode_to_vec();
    let body = msg.body.encode_to_vec();
    let h = &msg.header;
    let signer = verify_message(
        &block,
        h.overlay,
        h.transaction_id,
        msg.body.code(),
        &body,
        Binding::SelfSigned,
    )
    .unwrap();
    // The signer is the originator the via list names: Alice.
    assert_eq!(signer, test_vectors::alice().node_id);
    assert_eq!(h.via, vec![p2psip_proto::Destination::Node(signer)]);
    // Another transaction id (a replay under another request) does not verify.
    assert_eq!(
        verify_message(
            &block,
            h.overlay,
            h.transaction_id ^ 1,
            msg.body.code(),
            &body,
            Binding::SelfSigned
        ),
        Err(SignatureError::BadSignature)
    );
}
