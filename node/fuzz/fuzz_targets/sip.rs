//! Fuzzes the SIP front-end's input path: stream framing (Content-Length), parsing, and
//! every header analysis the registrar and proxy do (`p2psip_node::sip::fuzz_sip`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p2psip_node::sip::fuzz_sip(data);
});
