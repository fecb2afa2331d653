//! What the transport has delivered and the runtime has not handled yet, in two lanes:
//! copies between neighbours (replica pushes and handovers, and their answers) and the
//! rest. After a burst of stores a peer holds hundreds of copies to take in; a client's
//! request that arrived behind them no longer waits for all of them at every hop
//! (docs/benchmarks.md, "Against OpenDHT": gets timed out behind the replication
//! backlog). Each batch takes everything else first and keeps a quarter of its room for
//! copies, so copies are never starved.

use crate::transport::NetEvent;
use p2psip_proto::body::method_name;
use p2psip_proto::{parse_header, split_contents, DestRef};
use std::collections::VecDeque;

/// Events handled before one flush (and so one storage commit) at most.
pub(super) const BATCH_MAX: usize = 64;

/// Events the inbox takes from the transport's queue at once, at most (that queue is
/// bounded too: `limits.event_queue`).
pub(super) const DRAIN_MAX: usize = 4096;

#[derive(Default)]
pub(super) struct Inbox {
    urgent: VecDeque<NetEvent>,
    copies: VecDeque<NetEvent>,
}

impl Inbox {
    pub(super) fn push(&mut self, ev: NetEvent) {
        match &ev {
            NetEvent::Message { bytes, .. } if is_copy(bytes) => self.copies.push_back(ev),
            _ => self.urgent.push_back(ev),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.copies.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.urgent.len() + self.copies.len()
    }

    /// The next batch: at most `max` events, the other events first in their order of
    /// arrival, then copies in theirs; copies get at least a quarter of the room when
    /// any wait.
    pub(super) fn batch(&mut self, max: usize) -> Vec<NetEvent> {
        let max = max.max(1);
        let for_copies = self.copies.len().min(max.div_ceil(4));
        let urgent = self.urgent.len().min(max - for_copies);
        let copies = self.copies.len().min(max - urgent);
        let mut out: Vec<NetEvent> = self.urgent.drain(..urgent).collect();
        out.extend(self.copies.drain(..copies));
        out
    }
}

/// Whether a message is a copy between neighbours: a Store (or its answer) whose only
/// destination is the receiver and whose only via entry is the link's other end. A
/// client's store is addressed to a Resource-ID, and its answer carries the via list of
/// the way back, so neither is one.
pub(super) fn is_copy(bytes: &[u8]) -> bool {
    let Ok(h) = parse_header(bytes) else {
        return false;
    };
    if h.destination_len() != 1
        || h.via_len() != 1
        || !matches!(h.first_destination(), Some(DestRef::Node(_)))
    {
        return false;
    }
    split_contents(&h, bytes).is_ok_and(|c| method_name(c.code) == "store")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::transport::limits::{Queued, StreamBudget};
    use p2psip_proto::{encode_parts, pb, Body, Destination, OwnedHeader};
    use std::sync::Arc;

    fn msg(dest: Destination, via: Vec<Destination>, body: Body) -> Vec<u8> {
        let mut h = OwnedHeader::new(1, 7, dest);
        h.via = via;
        encode_parts(&h, body.code(), &body.encode_to_vec(), &[]).unwrap()
    }

    fn ev(bytes: Vec<u8>) -> NetEvent {
        let budget = Arc::new(StreamBudget::default());
        NetEvent::Message {
            from: p2psip_algorithms::Id(1),
            bytes,
            queued: Queued::take(&budget, 0, 1).unwrap(),
        }
    }

    fn store() -> Body {
        Body::StoreReq(pb::StoreReq::default())
    }

    fn fetch() -> Body {
        Body::FetchReq(pb::FetchReq::default())
    }

    #[test]
    fn copies_are_told_from_client_requests() {
        let (me, other) = (p2psip_algorithms::Id(5), p2psip_algorithms::Id(9));
        let node = |n| Destination::Node(n);
        // A replica push: straight from the neighbour to this node.
        assert!(is_copy(&msg(node(me), vec![node(other)], store())));
        // Its answer, straight back.
        let ans = Body::StoreAns(pb::StoreAns::default());
        assert!(is_copy(&msg(node(me), vec![node(other)], ans)));
        // A client's store, addressed to a Resource-ID.
        let res = Destination::Resource(p2psip_algorithms::Id(77));
        assert!(!is_copy(&msg(res, vec![node(other)], store())));
        // Passed on by a peer: two via entries.
        assert!(!is_copy(&msg(
            node(me),
            vec![node(other), node(me)],
            store()
        )));
        // Not a store.
        assert!(!is_copy(&msg(node(me), vec![node(other)], fetch())));
        assert!(!is_copy(b"not a message"));
    }

    #[test]
    fn a_request_behind_a_backlog_of_copies_goes_first_and_copies_still_move() {
        let (me, other) = (p2psip_algorithms::Id(5), p2psip_algorithms::Id(9));
        let copy = || {
            ev(msg(
                Destination::Node(me),
                vec![Destination::Node(other)],
                store(),
            ))
        };
        let res = Destination::Resource(p2psip_algorithms::Id(77));
        let get = ev(msg(res.clone(), vec![Destination::Node(other)], fetch()));
        let mut inbox = Inbox::default();
        for _ in 0..200 {
            inbox.push(copy());
        }
        inbox.push(get);
        assert_eq!(inbox.len(), 201);
        // The client's request is in the first batch, first; copies fill the rest.
        let first = inbox.batch(BATCH_MAX);
        assert_eq!(first.len(), BATCH_MAX);
        let is_copy_ev =
            |e: &NetEvent| matches!(e, NetEvent::Message { bytes, .. } if is_copy(bytes));
        assert!(!is_copy_ev(&first[0]));
        assert_eq!(
            first.iter().filter(|e| is_copy_ev(e)).count(),
            BATCH_MAX - 1
        );
        // With other events always waiting, copies still get a quarter of each batch.
        let mut taken = 0;
        while !inbox.is_empty() {
            for _ in 0..100 {
                inbox.push(ev(msg(
                    res.clone(),
                    vec![Destination::Node(other)],
                    fetch(),
                )));
            }
            let b = inbox.batch(BATCH_MAX);
            taken += b.iter().filter(|e| is_copy_ev(e)).count();
            assert!(b.len() <= BATCH_MAX);
            if inbox.copies.is_empty() {
                break;
            }
            assert_eq!(b.iter().filter(|e| is_copy_ev(e)).count(), BATCH_MAX / 4);
        }
        assert_eq!(taken + BATCH_MAX - 1, 200, "every copy was handled");
    }
}
