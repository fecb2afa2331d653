//! The 128-bit id space and ring arithmetic.
//!
//! Node-IDs and Resource-IDs live on one ring of size 2^128. Distances are measured
//! clockwise: `distance(a, b)` is how far one travels from `a` to reach `b`.

pub use p2psip_proto::Id;

/// A Node-ID (same space as Resource-IDs).
pub type NodeId = Id;

/// Clockwise distance from `a` to `b` on the ring.
pub fn distance(a: Id, b: Id) -> u128 {
    b.0.wrapping_sub(a.0)
}

/// Whether `x` lies in the half-open ring interval `(a, b]`. When `a == b` the interval is
/// the whole ring.
pub fn in_open_closed(x: Id, a: Id, b: Id) -> bool {
    if a == b {
        return true;
    }
    let d = distance(a, x);
    d != 0 && d <= distance(a, b)
}

/// Whether `x` lies in the open ring interval `(a, b)`. When `a == b` it is the whole ring
/// except `a`.
pub fn in_open(x: Id, a: Id, b: Id) -> bool {
    if a == b {
        return x != a;
    }
    let d = distance(a, x);
    d != 0 && d < distance(a, b)
}

/// `id + offset` on the ring.
pub fn add(id: Id, offset: u128) -> Id {
    Id(id.0.wrapping_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_wrap_around() {
        let (a, b) = (Id(u128::MAX - 5), Id(10));
        assert!(in_open_closed(Id(0), a, b));
        assert!(in_open_closed(Id(10), a, b));
        assert!(!in_open_closed(Id(11), a, b));
        assert!(!in_open_closed(a, a, b));
        assert!(in_open(Id(u128::MAX), a, b));
        assert!(!in_open(b, a, b));
        assert_eq!(distance(a, b), 16);
        assert!(in_open_closed(Id(42), Id(7), Id(7)));
        assert!(!in_open(Id(7), Id(7), Id(7)));
    }
}
