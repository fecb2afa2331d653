//! The link control frame (SPEC 2.8): a stream on a peer link whose first bytes are
//! `D2 50 32 43`, then one frame; today the only frame type tells the link's peer the
//! address the sender observed it at (a reflexive address).

use std::net::SocketAddr;

/// First bytes of a link control stream; a message starts `D2 50 32 50`.
pub const CONTROL_MAGIC: [u8; 4] = [0xD2, 0x50, 0x32, 0x43];
/// Control frame type: the address the sender observed the link's peer at.
pub const CONTROL_OBSERVED: u8 = 1;

/// The control frame telling a peer the address its link comes from.
pub fn observed_frame(addr: SocketAddr) -> Vec<u8> {
    let mut f = CONTROL_MAGIC.to_vec();
    f.push(CONTROL_OBSERVED);
    // An IPv4 peer seen on a dual-stack socket is reported as IPv4, as it knows itself.
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v) => {
            f.push(4);
            f.extend_from_slice(&v.octets());
        }
        std::net::IpAddr::V6(v) => {
            f.push(6);
            f.extend_from_slice(&v.octets());
        }
    }
    f.extend_from_slice(&addr.port().to_be_bytes());
    f
}

/// The address in an observed-address control frame (None for anything malformed or of
/// another control type).
pub fn parse_observed(f: &[u8]) -> Option<SocketAddr> {
    let rest = f.strip_prefix(&CONTROL_MAGIC)?;
    let (&kind, rest) = rest.split_first()?;
    if kind != CONTROL_OBSERVED {
        return None;
    }
    let (&family, rest) = rest.split_first()?;
    let (ip, rest): (std::net::IpAddr, &[u8]) = match family {
        4 if rest.len() == 6 => (<[u8; 4]>::try_from(&rest[..4]).ok()?.into(), &rest[4..]),
        6 if rest.len() == 18 => (<[u8; 16]>::try_from(&rest[..16]).ok()?.into(), &rest[16..]),
        _ => return None,
    };
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn observed_frames_round_trip_and_reject_garbage() {
        for a in ["198.51.100.11:4433", "[2001:db8::7]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_observed(&observed_frame(a)), Some(a));
        }
        let mapped: SocketAddr = "[::ffff:198.51.100.11]:4433".parse().unwrap();
        assert_eq!(
            parse_observed(&observed_frame(mapped)),
            Some("198.51.100.11:4433".parse().unwrap())
        );
        let good = observed_frame("10.0.0.1:1".parse().unwrap());
        for n in 0..good.len() {
            assert_eq!(parse_observed(&good[..n]), None, "truncated at {n}");
        }
        let mut other = good.clone();
        other[4] = 2;
        assert_eq!(parse_observed(&other), None);
        let mut longer = good;
        longer.push(0);
        assert_eq!(parse_observed(&longer), None);
    }
}
