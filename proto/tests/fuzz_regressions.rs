//! Inputs the fuzzers found (proto/fuzz, node/fuzz), kept so that what they broke stays
//! fixed: each must behave as its target demands.
#![allow(clippy::unwrap_used)]

use p2psip_proto::Message;
use std::path::Path;

fn input(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-regressions")
            .join(name),
    )
    .unwrap()
}

/// Target `message`: whatever decodes re-encodes to a message that decodes to the same.
#[test]
fn messages_found_by_the_fuzzer_round_trip() {
    for name in ["message-security-roundtrip"] {
        let bytes = input(name);
        let m = Message::decode(&bytes).unwrap();
        let again = Message::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(again, m, "{name}");
    }
}
