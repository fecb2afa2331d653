//! Fuzzes the forwarding-header parser and the forwarding step.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2psip_proto::{forward, parse_header, Destination, Id, Rewrite};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        // Iterating validated lists must not fail or panic.
        let _ = h.via().count();
        let _ = h.destinations().count();
        let _ = h.options().count();
        let me = Destination::Node(Id(1));
        let mut out = Vec::new();
        if forward(data, Rewrite { push_via: Some(&me), pop_destination: false }, &mut out).is_ok() {
            assert!(parse_header(&out).is_ok(), "a forwarded message must parse");
        }
    }
});
