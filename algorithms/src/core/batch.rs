//! Batch verification of the signatures of messages that arrived together
//! (proto/SPEC.md 5.4): a driver that holds several received messages at once hands them
//! to [`OverlayNode::prepare`] before it hands each to `handle_message`. The signatures
//! this node will check (of the messages it will serve or that complete its own
//! transactions, and of the values of the Stores among them and of the Fetch answers to
//! it) are verified in one batch; each message's own check then takes the result from a
//! memo. Nothing else changes: a message the batch did not cover, or whose signature
//! failed, is checked alone as before, so `prepare` may be skipped (the simulator
//! delivers one message at a time and does).

use super::OverlayNode;
use crate::id::{Id, NodeId};
use crate::storage::{holds_as_is, VerifyMode};
use crate::topology::NextHop;
use p2psip_proto::pb;
use p2psip_proto::security::{stored_data_signing_input, verify_batch, Binding, KeyCache, Pending};
use p2psip_proto::{is_request, parse_header, split_contents, Body, DestRef};

/// Which memo a verified signature goes to.
#[derive(Clone, Copy)]
enum For {
    /// A message's or a stored value's: remembered for this batch only.
    Batch,
    /// A fetched value's: remembered like every value a fetch brought.
    Fetched,
}

impl OverlayNode {
    /// Verifies, in one batch, the signatures this node will check in `batch` (messages
    /// received together, each with the node of the link it came over). Optional; see
    /// the module documentation.
    pub fn prepare(&mut self, batch: &[(NodeId, &[u8])]) {
        self.prechecked.clear();
        let values = !matches!(self.cfg.verify, VerifyMode::Skip);
        if batch.len() < 2 || (!self.cfg.sign_messages && !values) {
            return;
        }
        // The decoded-key cache leaves the node while `collect` reads the rest of it.
        let mut keys = std::mem::take(&mut self.keys);
        let how = self.cfg.verify.binding();
        let mut pending: Vec<(For, Pending)> = Vec::new();
        for (from, bytes) in batch {
            self.collect(*from, bytes, how, values, &mut keys, &mut pending);
        }
        pending.retain(|(f, p)| match f {
            For::Batch => true,
            For::Fetched => !self.verified.contains(&p.digest()),
        });
        let (fors, checks): (Vec<For>, Vec<Pending>) = pending.into_iter().unzip();
        let (made, good) = verify_batch(&checks, &mut keys);
        self.keys = keys;
        if made == 0 {
            return;
        }
        self.stats.signature_batches += 1;
        if made > 1 {
            self.stats.signature_batch_failures += 1;
        }
        for ((f, p), ok) in fors.iter().zip(&checks).zip(good) {
            if !ok {
                continue;
            }
            self.stats.signatures_batched += 1;
            match f {
                For::Batch => self.prechecked.insert(p.digest()),
                For::Fetched => self.verified.insert(p.digest()),
            }
        }
    }

    /// The signatures of one received message that this node will check.
    fn collect(
        &self,
        from: NodeId,
        bytes: &[u8],
        how: Binding<'_>,
        values: bool,
        keys: &mut KeyCache,
        out: &mut Vec<(For, Pending)>,
    ) {
        let Ok(h) = parse_header(bytes) else { return };
        if h.overlay != self.overlay_id || h.destination_len() != 1 {
            return;
        }
        let Ok(c) = split_contents(&h, bytes) else {
            return;
        };
        let req = is_request(c.code);
        let here = match h.first_destination() {
            Some(DestRef::Node(n)) => n == self.me,
            Some(DestRef::Resource(r)) => {
                req && self.topology.is_peer()
                    && self.topology.is_joined()
                    && matches!(self.topology.next_hop(r), NextHop::Local)
            }
            _ => false,
        };
        let tx = (!req).then(|| self.txs.get(&h.transaction_id)).flatten();
        if !here || (!req && tx.is_none()) {
            return;
        }
        let claimed = h.via().next().and_then(|d| d.id()).unwrap_or(from);
        let unsigned = c.security.is_empty() || (from == self.me && claimed == self.me);
        if self.cfg.sign_messages && !unsigned {
            let (tid, code, body) = (h.transaction_id, c.code, c.body);
            let overlay = self.overlay_id;
            if let Some(p) = Pending::of_message(c.security, overlay, tid, code, body, how, keys) {
                out.push((For::Batch, p));
            }
        }
        if !values {
            return;
        }
        let (resource, kinds, memo, copy) = match Body::decode(c.code, c.body) {
            Ok(Body::StoreReq(s)) if req => (
                Id::from_slice(&s.resource),
                s.kind_data
                    .into_iter()
                    .map(|k| (k.kind, k.values))
                    .collect::<Vec<_>>(),
                For::Batch,
                s.replica_number > 0,
            ),
            Ok(Body::FetchAns(a)) => {
                let Some(Ok(Body::FetchReq(f))) = tx.map(|t| Body::decode(t.code(), t.body()))
                else {
                    return;
                };
                (
                    Id::from_slice(&f.resource),
                    a.kind_responses
                        .into_iter()
                        .map(|k| (k.kind, k.values))
                        .collect(),
                    For::Fetched,
                    false,
                )
            }
            _ => return,
        };
        let Some(resource) = resource else { return };
        for (kind, vals) in kinds {
            // A copy's values held as they are are taken without a check (apply_store).
            let held = copy
                .then(|| Some((self.cfg.kinds.get(kind)?, self.store.get(resource, kind)?)))
                .flatten();
            for sd in vals {
                if held
                    .as_ref()
                    .is_some_and(|(k, data)| holds_as_is(data, k, &sd))
                {
                    continue;
                }
                if let Some(p) = value_check(resource, kind, &sd, how, keys) {
                    out.push((memo, p));
                }
            }
        }
    }
}

/// The check of a stored value's signature. Array entries are left out: one appended by
/// its writer was signed under another index than the one it is stored at (SPEC 6.2), and
/// a batch that held it would fail.
fn value_check(
    resource: Id,
    kind: u32,
    sd: &pb::StoredData,
    how: Binding<'_>,
    keys: &mut KeyCache,
) -> Option<Pending> {
    let value = sd.value.as_ref()?;
    if matches!(value.model, Some(pb::stored_data_value::Model::Array(_))) {
        return None;
    }
    let input = stored_data_signing_input(resource, kind, sd.storage_time, value);
    Pending::of(sd.signature.as_ref()?, input, how, keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::transactions::tests::holder;
    use crate::client::ClientTopology;
    use crate::core::{CoreConfig, Event, OverlayNode};
    use crate::storage::{MemoryStore, KIND_USER_VALUE};
    use crate::topology::LinkEvent;
    use crate::{signed_value, Id, NodeId, Time, ValueModel};
    use p2psip_proto::pb::ErrorCode;
    use p2psip_proto::security::Identity;

    /// A lone peer and `n` clients linked to it that sign every message.
    fn peer_and_clients(n: u8) -> (OverlayNode, Vec<(OverlayNode, Identity)>) {
        let me = Identity::from_seed([7; 32], "peer");
        let peer_id = me.node_id;
        let store = Box::new(MemoryStore::new());
        let mut peer = holder(CoreConfig::default(), me, &[], store, 1, Time(0));
        let t = Time(1_000_000);
        let clients = (0..n)
            .map(|i| {
                let id = Identity::from_seed([i + 10; 32], format!("u{i}"));
                let cfg = CoreConfig {
                    sign_direct_messages: true,
                    ..CoreConfig::default()
                };
                let topology = Box::new(ClientTopology::new(id.node_id));
                let store = Box::new(MemoryStore::new());
                let mut c = OverlayNode::new(cfg, id.clone(), topology, store, u64::from(i) + 2);
                c.start(t, &[peer_id]);
                c.handle_link(t, LinkEvent::Up(peer_id));
                peer.handle_link(t, LinkEvent::Up(id.node_id));
                while c.poll_event().is_some() {}
                (c, id)
            })
            .collect();
        (peer, clients)
    }

    /// Each client stores one value at its own resource, all arriving at the peer
    /// together; `bad_value` and `bad_message` name clients whose value or message
    /// signature is damaged. Returns each client's outcome.
    fn round(
        peer: &mut OverlayNode,
        clients: &mut [(OverlayNode, Identity)],
        t: Time,
        bad_value: Option<usize>,
        bad_message: Option<usize>,
    ) -> Vec<Result<(), ErrorCode>> {
        let mut arrived: Vec<(NodeId, Vec<u8>)> = Vec::new();
        for (i, (c, id)) in clients.iter_mut().enumerate() {
            let res = Id::hash_of(id.user.as_bytes());
            let model = ValueModel::Single(format!("at {t:?}").into_bytes());
            let mut v = signed_value(id, res, KIND_USER_VALUE, t, 60, model);
            if bad_value == Some(i) {
                v.signature.as_mut().unwrap().value[3] ^= 1;
            }
            c.store(t, res, KIND_USER_VALUE, vec![v], 0);
            while let Some(mut m) = c.poll_transmit() {
                if bad_message == Some(i) {
                    // The security block comes last and the signature last in it.
                    let last = m.bytes.len() - 1;
                    m.bytes[last] ^= 1;
                }
                arrived.push((id.node_id, m.bytes));
            }
        }
        let batch: Vec<(NodeId, &[u8])> = arrived.iter().map(|(f, b)| (*f, b.as_slice())).collect();
        peer.prepare(&batch);
        for (from, bytes) in &batch {
            peer.handle_message(t, *from, bytes);
        }
        while let Some(m) = peer.poll_transmit() {
            let (c, _) = clients
                .iter_mut()
                .find(|(_, id)| id.node_id == m.to)
                .unwrap();
            c.handle_message(t, peer.id(), &m.bytes);
        }
        clients
            .iter_mut()
            .map(|(c, _)| loop {
                match c.poll_event() {
                    Some(Event::Completed { outcome, .. }) => {
                        break outcome.map(|_| ()).map_err(|e| e.code)
                    }
                    Some(_) => continue,
                    None => panic!("a store was never answered"),
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_check_takes_the_good_signatures_and_refuses_the_bad_ones() {
        let (mut peer, mut clients) = peer_and_clients(4);
        // Four stores, each with a signed message and a signed value: one batch of 8.
        let t = Time(2_000_000);
        let all = round(&mut peer, &mut clients, t, None, None);
        assert_eq!(all, vec![Ok(()); 4]);
        let s = peer.stats().clone();
        assert_eq!(
            (
                s.signature_batches,
                s.signature_batch_failures,
                s.signatures_batched
            ),
            (1, 0, 8)
        );
        assert_eq!(s.bad_signatures, 0);
        // A damaged value signature and a damaged message signature among them: the batch
        // fails, each is checked alone, the other six are taken and those two refused.
        let t = Time(3_000_000);
        let some = round(&mut peer, &mut clients, t, Some(1), Some(2));
        assert_eq!(
            some,
            vec![
                Ok(()),
                Err(ErrorCode::Forbidden),
                Err(ErrorCode::Forbidden),
                Ok(())
            ]
        );
        let s = peer.stats().clone();
        assert_eq!(
            (
                s.signature_batches,
                s.signature_batch_failures,
                s.signatures_batched
            ),
            (2, 1, 14)
        );
        assert_eq!(s.bad_signatures, 1, "the damaged message signature");
        // Nothing of the last batch vouches for the next one: the same damaged message
        // sent alone is refused again.
        let t = Time(4_000_000);
        let again = round(&mut peer, &mut clients[2..3], t, None, Some(0));
        assert_eq!(again, vec![Err(ErrorCode::Forbidden)]);
    }
}
