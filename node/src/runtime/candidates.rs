//! Candidates (proto/SPEC.md 3): how a node says where it can be reached, and where
//! another's candidates say it can be.

use super::*;

/// A candidate of the given type; priorities as ICE's type preferences (host first).
pub fn candidate(a: SocketAddr, kind: pb::candidate::Type) -> pb::Candidate {
    use pb::candidate::Type;
    pb::Candidate {
        address: match a.ip() {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        },
        port: u32::from(a.port()),
        r#type: kind as i32,
        priority: match kind {
            Type::Host => 126,
            Type::PeerReflexive => 110,
            Type::ServerReflexive => 100,
            Type::Relayed | Type::Unspecified => 0,
        },
    }
}

pub(super) fn is_relayed(c: &pb::Candidate) -> bool {
    c.r#type == pb::candidate::Type::Relayed as i32
}

/// Where a node's candidates say it can be reached (direct host and reflexive addresses,
/// and its relay): the first `MAX_CANDIDATES` usable ones, without repeats (proto/SPEC.md
/// 3); however many a message lists, no more are dialled or punched.
pub fn reach_of(candidates: &[pb::Candidate]) -> Reach {
    use p2psip_proto::limits::MAX_CANDIDATES;
    let mut r = Reach::default();
    let mut seen = std::collections::HashSet::new();
    let usable = candidates
        .iter()
        .filter_map(|c| Some((c, candidate_addr(c)?)))
        .filter(|(c, a)| seen.insert((is_relayed(c), *a)))
        .take(MAX_CANDIDATES);
    for (c, a) in usable {
        if is_relayed(c) {
            r.relay = r.relay.or(Some(a));
            continue;
        }
        r.reflexive |= c.r#type == pb::candidate::Type::ServerReflexive as i32;
        r.direct.push(a);
    }
    r
}

pub fn candidate_addr(c: &pb::Candidate) -> Option<SocketAddr> {
    let ip: IpAddr = match c.address.len() {
        4 => <[u8; 4]>::try_from(c.address.as_slice()).ok()?.into(),
        16 => <[u8; 16]>::try_from(c.address.as_slice()).ok()?.into(),
        _ => return None,
    };
    let port = u16::try_from(c.port).ok()?;
    (port != 0 && !ip.is_unspecified()).then(|| SocketAddr::new(ip, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_thousands_of_candidates_yields_at_most_eight_distinct_ones() {
        let host = pb::candidate::Type::Host;
        let mut many = Vec::new();
        for i in 0..10_000u32 {
            // Repeats of a few addresses, then thousands of distinct ones.
            let port = if i < 5_000 {
                4000 + (i % 3) as u16
            } else {
                10_000 + (i % 50_000) as u16
            };
            many.push(candidate(SocketAddr::from(([127, 0, 0, 1], port)), host));
        }
        let r = reach_of(&many);
        assert_eq!(r.direct.len(), p2psip_proto::limits::MAX_CANDIDATES);
        let distinct: std::collections::HashSet<_> = r.direct.iter().collect();
        assert_eq!(distinct.len(), r.direct.len(), "no repeats");
        assert_eq!(
            r.direct[..3],
            [
                SocketAddr::from(([127, 0, 0, 1], 4000)),
                SocketAddr::from(([127, 0, 0, 1], 4001)),
                SocketAddr::from(([127, 0, 0, 1], 4002)),
            ],
            "the first usable ones, in order"
        );
    }
}
