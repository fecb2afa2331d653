//! 128-bit identifiers as carried on the wire (16 bytes, big-endian).
//!
//! Node-IDs and Resource-IDs share one id space. Ring arithmetic (distance, intervals) lives
//! in `p2psip-algorithms`; this crate only needs the value and its encoding.

use sha2::{Digest, Sha256};
use std::fmt;

/// Length of a Node-ID or Resource-ID on the wire.
pub const ID_LEN: usize = 16;

/// A 128-bit identifier in the overlay's id space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u128);

impl Id {
    /// The id as 16 big-endian bytes.
    pub fn to_bytes(self) -> [u8; ID_LEN] {
        self.0.to_be_bytes()
    }

    /// Reads 16 big-endian bytes.
    pub fn from_bytes(b: [u8; ID_LEN]) -> Self {
        Id(u128::from_be_bytes(b))
    }

    /// Reads an id from a slice that must be exactly 16 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; ID_LEN]>::try_from(b).ok().map(Id::from_bytes)
    }

    /// Resource-ID of a resource name (e.g. a SIP AOR): the first 128 bits of SHA-256(name).
    pub fn hash_of(name: &[u8]) -> Self {
        let d = Sha256::digest(name);
        let mut b = [0u8; ID_LEN];
        b.copy_from_slice(&d[..ID_LEN]);
        Id::from_bytes(b)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for Id {
    /// Short form: the first 8 hex digits, enough to tell peers apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{:032x}", self.0)
        } else {
            write!(f, "{:08x}", (self.0 >> 96) as u32)
        }
    }
}

/// The 32-bit overlay id of the forwarding header: the first 4 bytes of SHA-256(overlay name).
pub fn overlay_id(name: &str) -> u32 {
    let d = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_is_big_endian() {
        let id = Id(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        assert_eq!(id.to_bytes()[0], 1);
        assert_eq!(id.to_bytes()[15], 0x10);
        assert_eq!(Id::from_slice(&id.to_bytes()), Some(id));
        assert_eq!(Id::from_slice(&[0u8; 15]), None);
    }

    #[test]
    fn hash_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 ...
        assert_eq!(Id::hash_of(b"abc").0 >> 96, 0xba78_16bf);
        assert_eq!(overlay_id("abc"), 0xba78_16bf);
    }
}
