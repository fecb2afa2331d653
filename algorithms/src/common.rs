//! Pieces every algorithm of the slot shares: ids on the wire, the algorithm-name check of
//! Join and Update, and the answers to Probe and RouteQuery.

use crate::id::{Id, NodeId};
use crate::topology::NextHop;
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::Body;

/// Node-IDs as the algorithm payloads carry them.
pub(crate) fn wire_ids(ids: &[Id]) -> Vec<Vec<u8>> {
    ids.iter().map(|i| i.to_bytes().to_vec()).collect()
}

/// Node-IDs out of an algorithm payload (malformed entries are skipped).
pub(crate) fn ids_from_wire(v: &[Vec<u8>]) -> Vec<Id> {
    v.iter().filter_map(|b| Id::from_slice(b)).collect()
}

/// A Join or Update for another algorithm is refused with Incompatible_with_Overlay.
pub(crate) fn check_algorithm(
    ours: &str,
    theirs: &str,
    what: &str,
) -> Result<(), (ErrorCode, String)> {
    if ours == theirs {
        Ok(())
    } else {
        Err((
            ErrorCode::IncompatibleWithOverlay,
            format!("{what} for algorithm {theirs:?}, this overlay runs {ours}"),
        ))
    }
}

/// A request that names a node (Join, Leave) must come from that node.
pub(crate) fn check_sender(
    claimed: &[u8],
    from: NodeId,
    what: &str,
) -> Result<NodeId, (ErrorCode, String)> {
    let id = Id::from_slice(claimed).unwrap_or(from);
    if id == from {
        Ok(id)
    } else {
        Err((
            ErrorCode::Forbidden,
            format!("{what} peer id does not match the sender"),
        ))
    }
}

/// The answer to a Probe: how much of the id space this node answers for (the top 64
/// bits of its range's width) and its uptime in seconds.
pub(crate) fn probe_answer(span: u128, uptime_s: u64) -> Body {
    Body::ProbeAns(pb::ProbeAns {
        responsible_set: (span >> 64) as u64,
        num_resources: 0,
        uptime: uptime_s.min(u64::from(u32::MAX)) as u32,
    })
}

/// The answer to a RouteQuery: the next hop this node would use for the named id.
pub(crate) fn route_query_answer(
    q: &pb::RouteQueryReq,
    me: NodeId,
    next_hop: impl Fn(Id) -> NextHop,
) -> Result<Body, (ErrorCode, String)> {
    let target = q
        .destination
        .as_ref()
        .and_then(|d| match &d.id {
            Some(pb::destination::Id::Node(b)) | Some(pb::destination::Id::Resource(b)) => {
                Id::from_slice(b)
            }
            _ => None,
        })
        .ok_or((
            ErrorCode::InvalidMessage,
            "RouteQuery without an id".to_string(),
        ))?;
    let next = match next_hop(target) {
        NextHop::Local => me,
        NextHop::Forward(n) => n,
    };
    Ok(Body::RouteQueryAns(pb::RouteQueryAns {
        next_peer: next.to_bytes().to_vec(),
        overlay_specific: Vec::new(),
    }))
}

/// An answer to a topology request the algorithm does not handle.
pub(crate) fn not_topology(body: &Body) -> (ErrorCode, String) {
    (
        ErrorCode::InvalidMessage,
        format!("{} is not a topology request", body.method_name()),
    )
}
