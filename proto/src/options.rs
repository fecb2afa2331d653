//! Forwarding option types (proto/SPEC.md 2.4).

use std::net::{IpAddr, SocketAddr};

/// DIRECT_RESPONSE (after RFC 7263): the originator asks the responsible peer to send the
/// answer straight to it instead of back along the via list; the value is the address it
/// is reached at (4 or 16 address bytes, then the port, big-endian).
pub const DIRECT_RESPONSE: u8 = 1;

/// The value of a DIRECT_RESPONSE option for `addr`.
pub fn encode_address(addr: SocketAddr) -> Vec<u8> {
    let mut v = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

/// The address in a DIRECT_RESPONSE option (None: not 6 or 18 bytes, or port 0).
pub fn decode_address(v: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match v.len() {
        6 => {
            let b: [u8; 4] = v[..4].try_into().ok()?;
            (IpAddr::from(b), &v[4..])
        }
        18 => {
            let b: [u8; 16] = v[..16].try_into().ok()?;
            (IpAddr::from(b), &v[16..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(port.try_into().ok()?);
    (port != 0).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_garbage_is_refused() {
        for a in ["192.0.2.1:4700", "[2001:db8::1]:4700"] {
            let a: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
            assert_eq!(decode_address(&encode_address(a)), Some(a));
        }
        assert_eq!(decode_address(&[1, 2, 3]), None);
        assert_eq!(decode_address(&[192, 0, 2, 1, 0, 0]), None);
    }
}
