//! Fuzzes full message decoding (header, contents, protobuf body, security block) and checks
//! that whatever decodes encodes back to a message that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2psip_proto::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        if let Ok(bytes) = m.encode() {
            let again = Message::decode(&bytes).expect("re-encoded message decodes");
            assert_eq!(again, m);
        }
    }
});
