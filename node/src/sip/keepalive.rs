//! RFC 5626 keep-alives the front-end answers: STUN Binding requests (RFC 5389) on its SIP
//! UDP port, told apart from SIP by their first bytes (RFC 5626 section 4.4.2, RFC 7983's
//! demultiplexing: a STUN message starts with two zero bits and carries the magic cookie
//! at bytes 4..8), and CRLFCRLF pings on SIP streams (answered in `requests.rs`). The
//! codec is stun_codec's.

use bytecodec::{DecodeExt, EncodeExt};
use std::net::SocketAddr;
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5389::Attribute;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder};

/// STUN's magic cookie (RFC 5389 section 6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN keep-alives are small; anything longer is not answered.
const MAX_STUN: usize = 548;

/// Whether a datagram is a STUN message rather than SIP (which starts with a method name
/// or `SIP/`, letters, never a byte below 0x40).
pub(super) fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0] & 0xc0 == 0 && bytes[4..8] == MAGIC_COOKIE
}

/// The answer to a STUN datagram from `src`: a Binding success response naming `src` in
/// its XOR-MAPPED-ADDRESS when the datagram is a well-formed Binding request; None for
/// anything else (responses, indications, other methods, garbage), which stays unanswered.
pub(super) fn stun_answer(bytes: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(bytes) || bytes.len() > MAX_STUN {
        return None;
    }
    let mut decoder = MessageDecoder::<Attribute>::new();
    let req = decoder.decode_from_bytes(bytes).ok()?.ok()?;
    if req.class() != MessageClass::Request || req.method() != BINDING {
        return None;
    }
    let mut ans =
        Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, req.transaction_id());
    ans.add_attribute(XorMappedAddress::new(src));
    MessageEncoder::new().encode_into_bytes(ans).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::TransactionId;

    fn encode(class: MessageClass) -> Vec<u8> {
        let m = Message::<Attribute>::new(class, BINDING, TransactionId::new([7; 12]));
        MessageEncoder::new().encode_into_bytes(m).unwrap()
    }

    #[test]
    fn a_binding_request_is_answered_with_the_source_address() {
        let src: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        let req = encode(MessageClass::Request);
        assert!(is_stun(&req));
        let ans = stun_answer(&req, src).expect("no answer");
        let mut decoder = MessageDecoder::<Attribute>::new();
        let m = decoder.decode_from_bytes(&ans).unwrap().unwrap();
        assert_eq!(m.class(), MessageClass::SuccessResponse);
        assert_eq!(m.transaction_id(), TransactionId::new([7; 12]));
        let mapped = m.get_attribute::<XorMappedAddress>().map(|a| a.address());
        assert_eq!(mapped, Some(src));
        let v6: SocketAddr = "[2001:db8::7]:5060".parse().unwrap();
        assert!(stun_answer(&req, v6).is_some());
    }

    #[test]
    fn sip_responses_and_garbage_are_not_answered() {
        let src: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        assert!(!is_stun(b"REGISTER sip:p2psip SIP/2.0\r\n\r\n"));
        assert!(!is_stun(b"SIP/2.0 200 OK\r\n\r\n"));
        assert!(stun_answer(&encode(MessageClass::SuccessResponse), src).is_none());
        assert!(stun_answer(&encode(MessageClass::Indication), src).is_none());
        let mut truncated = encode(MessageClass::Request);
        truncated[3] = 40; // claims attributes that are not there
        assert!(stun_answer(&truncated, src).is_none());
        let mut junk = vec![0u8; 64];
        junk[4..8].copy_from_slice(&MAGIC_COOKIE);
        junk[2] = 0xff;
        assert!(stun_answer(&junk, src).is_none());
    }
}
