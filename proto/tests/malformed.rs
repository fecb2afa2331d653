//! Malformed input: each defect gives its own typed error, never a panic.
#![allow(clippy::unwrap_used)]

use p2psip_proto::header::{FIXED_LEN, MAGIC};
use p2psip_proto::limits::{MAX_MESSAGE_LEN, MAX_VIA_ENTRIES};
use p2psip_proto::pb::ErrorCode;
use p2psip_proto::{
    flags, forward, parse_header, test_vectors, Destination, Id, ListKind, Message, ParseError,
    Rewrite,
};

fn ping() -> Vec<u8> {
    test_vectors::all()[0].1.encode().unwrap()
}

fn set_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn every_truncation_is_refused_with_a_length_error() {
    let msg = ping();
    for n in 0..msg.len() {
        let err = parse_header(&msg[..n]).unwrap_err();
        if n < FIXED_LEN {
            assert_eq!(
                err,
                ParseError::Truncated {
                    needed: FIXED_LEN,
                    have: n
                }
            );
        } else {
            assert_eq!(
                err,
                ParseError::LengthMismatch {
                    declared: msg.len(),
                    actual: n
                }
            );
        }
        assert!(Message::decode(&msg[..n]).is_err());
    }
}

#[test]
fn bad_magic() {
    let mut m = ping();
    m[0] = 0x00;
    assert_eq!(
        parse_header(&m).unwrap_err(),
        ParseError::BadMagic(MAGIC & 0x00ff_ffff)
    );
}

#[test]
fn bad_version_maps_to_incompatible() {
    let mut m = ping();
    m[4] = 9;
    let e = parse_header(&m).unwrap_err();
    assert_eq!(e, ParseError::UnsupportedVersion(9));
    assert_eq!(e.error_code(), ErrorCode::IncompatibleWithOverlay);
}

#[test]
fn reserved_byte_must_be_zero() {
    let mut m = ping();
    m[7] = 1;
    assert_eq!(
        parse_header(&m).unwrap_err(),
        ParseError::ReservedNonZero(1)
    );
}

#[test]
fn ttl_zero_cannot_be_forwarded_and_large_ttl_is_refused() {
    let mut m = ping();
    m[5] = 0;
    // A TTL-0 message still parses (it may have arrived at its destination) ...
    assert_eq!(parse_header(&m).unwrap().ttl, 0);
    // ... but a hop cannot pass it on.
    let me = Destination::Node(Id(5));
    let mut out = Vec::new();
    let e = forward(
        &m,
        Rewrite {
            push_via: Some(&me),
            pop_destination: false,
        },
        &mut out,
    )
    .unwrap_err();
    assert_eq!(e, ParseError::TtlExceeded);
    assert_eq!(e.error_code(), ErrorCode::TtlExceeded);
    m[5] = 101;
    assert_eq!(
        parse_header(&m).unwrap_err(),
        ParseError::TtlTooLarge { ttl: 101, max: 100 }
    );
}

#[test]
fn oversized_message_length() {
    let mut m = ping();
    set_u32(&mut m, 24, (MAX_MESSAGE_LEN + 1) as u32);
    let e = parse_header(&m).unwrap_err();
    assert_eq!(
        e,
        ParseError::MessageTooLarge {
            len: MAX_MESSAGE_LEN + 1,
            max: MAX_MESSAGE_LEN
        }
    );
    assert_eq!(e.error_code(), ErrorCode::MessageTooLarge);
}

#[test]
fn list_lengths_past_the_end() {
    let mut m = ping();
    set_u16(&mut m, 14, 0xffff);
    assert!(matches!(
        parse_header(&m).unwrap_err(),
        ParseError::ListsPastEnd { .. }
    ));
    let mut m = ping();
    set_u16(&mut m, 32, 0xfff0);
    assert!(matches!(
        parse_header(&m).unwrap_err(),
        ParseError::ListsPastEnd { .. }
    ));
}

#[test]
fn via_list_overflow() {
    let (_, mut msg) = test_vectors::all().remove(0);
    msg.header.via = (0..MAX_VIA_ENTRIES as u128)
        .map(|i| Destination::Node(Id(i)))
        .collect();
    let full = msg.encode().unwrap();
    assert_eq!(parse_header(&full).unwrap().via_len(), MAX_VIA_ENTRIES);
    // One more entry cannot be encoded ...
    msg.header.via.push(Destination::Node(Id(999)));
    assert_eq!(
        msg.encode().unwrap_err(),
        ParseError::ListTooLong {
            list: ListKind::Via,
            max: MAX_VIA_ENTRIES
        }
    );
    // ... nor pushed by a hop ...
    let me = Destination::Node(Id(1000));
    let e = forward(
        &full,
        Rewrite {
            push_via: Some(&me),
            pop_destination: false,
        },
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        ParseError::ListTooLong {
            list: ListKind::Via,
            max: MAX_VIA_ENTRIES
        }
    );
    // ... nor parsed when a sender forges it by hand.
    let mut forged = full.clone();
    let extra = [1u8; 17];
    let via_len = u16::from_be_bytes([forged[14], forged[15]]) + 17;
    forged.splice(FIXED_LEN..FIXED_LEN, extra);
    set_u16(&mut forged, 14, via_len);
    let len = forged.len() as u32;
    set_u32(&mut forged, 24, len);
    assert_eq!(
        parse_header(&forged).unwrap_err(),
        ParseError::ListTooLong {
            list: ListKind::Via,
            max: MAX_VIA_ENTRIES
        }
    );
}

#[test]
fn bad_entries() {
    // The ping's via list is one node entry at FIXED_LEN.
    let mut m = ping();
    m[FIXED_LEN] = 0x7f;
    assert_eq!(
        parse_header(&m).unwrap_err(),
        ParseError::BadEntryType {
            list: ListKind::Via,
            ty: 0x7f
        }
    );
    // An opaque entry whose length runs past the via list.
    let mut m = ping();
    m[FIXED_LEN] = 0x03;
    m[FIXED_LEN + 1] = 200;
    assert_eq!(
        parse_header(&m).unwrap_err(),
        ParseError::EntryTruncated {
            list: ListKind::Via
        }
    );
    // A zero-length opaque id.
    let mut m = ping();
    m[FIXED_LEN] = 0x03;
    m[FIXED_LEN + 1] = 0;
    assert!(matches!(
        parse_header(&m).unwrap_err(),
        // The remaining 15 bytes of the old entry then fail to parse as entries.
        ParseError::EmptyOpaque { .. } | ParseError::BadEntryType { .. }
    ));
}

#[test]
fn critical_options_are_refused_by_hops() {
    let (_, mut msg) = test_vectors::all().remove(0);
    msg.header.options.push(p2psip_proto::ForwardingOption {
        kind: 9,
        flags: 0,
        value: vec![1, 2, 3],
    });
    // Non-critical unknown options are carried along.
    let bytes = msg.encode().unwrap();
    assert_eq!(parse_header(&bytes).unwrap().options().count(), 1);
    msg.header.flags = flags::FORWARD_CRITICAL;
    let bytes = msg.encode().unwrap();
    let e = parse_header(&bytes).unwrap_err();
    assert_eq!(e, ParseError::UnsupportedCriticalOption(9));
    assert_eq!(e.error_code(), ErrorCode::UnsupportedForwardingOption);
}

#[test]
fn contents_defects() {
    // Unknown message code.
    let mut m = ping();
    let h = parse_header(&m).unwrap().header_len();
    m[h] = 0x42;
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        ParseError::UnknownCode(0x4217)
    );
    // Body length larger than what is there.
    let mut m = ping();
    set_u32(&mut m, h + 2, 1000);
    assert_eq!(Message::decode(&m).unwrap_err(), ParseError::BadContents);
    // A body that is not valid protobuf.
    let (_, msg) = test_vectors::all().remove(3);
    let mut m = msg.encode().unwrap();
    let h = parse_header(&m).unwrap().header_len();
    m[h + 6] = 0xff; // an invalid field key / wire type
    assert!(matches!(
        Message::decode(&m).unwrap_err(),
        ParseError::BadBody { code: 0xffff, .. }
    ));
}

#[test]
fn forwarding_step_rewrites_only_the_header() {
    let (_, msg) = test_vectors::all().remove(4); // via-3
    let bytes = msg.encode().unwrap();
    let me = Destination::Node(Id(0x3e));
    let mut out = Vec::new();
    forward(
        &bytes,
        Rewrite {
            push_via: Some(&me),
            pop_destination: false,
        },
        &mut out,
    )
    .unwrap();
    let fwd = Message::decode(&out).unwrap();
    assert_eq!(fwd.header.ttl, msg.header.ttl - 1);
    assert_eq!(fwd.header.via.len(), 4);
    assert_eq!(fwd.header.via[3], me);
    assert_eq!(fwd.header.via[..3], msg.header.via[..]);
    assert_eq!(fwd.header.destinations, msg.header.destinations);
    assert_eq!(fwd.body, msg.body);
    assert_eq!(out.len(), bytes.len() + 17);
    // An answer travelling the reversed via list pops each hop and pushes nothing.
    let (_, ans) = test_vectors::all().remove(2); // fetch-answer, dest [B, A]
    let bytes = ans.encode().unwrap();
    forward(
        &bytes,
        Rewrite {
            push_via: None,
            pop_destination: true,
        },
        &mut out,
    )
    .unwrap();
    let fwd = Message::decode(&out).unwrap();
    assert_eq!(fwd.header.destinations, ans.header.destinations[1..]);
    assert_eq!(fwd.body, ans.body);
    // Popping the last destination leaves an empty list, which is allowed on the wire.
    let bytes = out.clone();
    forward(
        &bytes,
        Rewrite {
            push_via: None,
            pop_destination: true,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(parse_header(&out).unwrap().destination_len(), 0);
    let bytes = out.clone();
    assert_eq!(
        forward(
            &bytes,
            Rewrite {
                push_via: None,
                pop_destination: true
            },
            &mut out
        )
        .unwrap_err(),
        ParseError::NoDestination
    );
}
