//! Inputs the fuzzers found (proto/fuzz), kept so that what they broke stays fixed: each
//! must behave as its target demands.
#![allow(clippy::unwrap_used)]

use p2psip_proto::Message;
use std::path::Path;

/// The kept inputs of one target (files named `<target>-*`).
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let prefix = format!("{target}-");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// Target `message`: whatever decodes re-encodes to a message that decodes to the same.
#[test]
fn messages_found_by_the_fuzzer_round_trip() {
    let kept = inputs("message");
    assert!(!kept.is_empty(), "no kept inputs");
    for (name, bytes) in kept {
        let m = Message::decode(&bytes).unwrap();
        let again = Message::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(again, m, "{name}");
    }
}
