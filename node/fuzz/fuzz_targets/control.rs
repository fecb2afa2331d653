//! Fuzzes the link control frame (observed address, proto/SPEC.md 2.8).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = p2psip_node::transport::parse_observed(data);
});
