//! Fuzzes the signed overlay configuration document as a peer receives it in a
//! ConfigUpdate (proto/SPEC.md 5.3): signature line, TOML, kinds. Bad input must give an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2psip_node::overlay_config::{parse, sequence_of, verify};

fuzz_target!(|data: &[u8]| {
    let _ = sequence_of(data);
    let _ = verify(data, &[7u8; 32]);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(doc) = parse(text) {
            for k in &doc.kinds {
                let _ = k.to_kind();
            }
        }
    }
});
