//! Recursive symmetric routing (proto/SPEC.md section 8): every received message is
//! delivered here, passed on with the forwarding step, or answered with an error.

use super::recovery::Resend;
use super::OverlayNode;
use crate::id::NodeId;
use crate::time::Time;
use crate::topology::NextHop;
use p2psip_proto::limits::DEFAULT_TTL;
use p2psip_proto::pb::{self, ErrorCode};
use p2psip_proto::security::{sign_message, verify_message_memo};
use p2psip_proto::{
    encode_parts, forward_parsed, is_request, parse_header, split_contents, Body, Contents,
    DestRef, Destination, Header, OwnedHeader, ParseError, Rewrite,
};
use std::collections::HashMap;

/// Buckets kept before the full ones are forgotten (a forgotten bucket is a full one).
const MAX_BUCKETS: usize = 8192;

/// Direct answers per second to originators this node has no link to (each costs a
/// connection attempt to the address the originator named).
pub(super) const DIRECT_DIALS_PER_S: u32 = 50;

/// Takes a token from `key`'s bucket (`rate` per second, `burst` deep; 0: no limit).
/// Buckets are created full; when more than [`MAX_BUCKETS`] are kept, those that have
/// refilled are forgotten, so many made-up originators cost a bounded map.
fn take_token<K: std::hash::Hash + Eq>(
    buckets: &mut HashMap<K, (f64, Time)>,
    key: K,
    rate: u32,
    burst: u32,
    now: Time,
) -> bool {
    if rate == 0 {
        return true;
    }
    let burst = f64::from(burst.max(1));
    let rate = f64::from(rate);
    if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
        buckets.retain(|_, b| b.0 + now.since(b.1).as_secs_f64() * rate < burst);
        if buckets.len() >= MAX_BUCKETS {
            // As many originators busy at once as the map holds: newcomers wait.
            return false;
        }
    }
    let b = buckets.entry(key).or_insert((burst, now));
    let elapsed = now.since(b.1).as_secs_f64();
    b.0 = (b.0 + elapsed * rate).min(burst);
    b.1 = now;
    if b.0 >= 1.0 {
        b.0 -= 1.0;
        true
    } else {
        false
    }
}

/// The addressing of an answer: its first hop and header (the request's reversed via
/// list), and the size the requester accepts (0: any).
pub(super) struct Reply {
    first: NodeId,
    header: OwnedHeader,
    max_len: u32,
    /// Sent straight to the originator at this address (a DIRECT_RESPONSE option).
    direct: Option<std::net::SocketAddr>,
}

impl OverlayNode {
    /// Routes one received message.
    pub(super) fn process(&mut self, from: NodeId, bytes: &[u8]) {
        let h = match parse_header(bytes) {
            Ok(h) => h,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if h.overlay != self.overlay_id {
            self.stats.wrong_overlay += 1;
            return;
        }
        let Ok(c) = split_contents(&h, bytes) else {
            // Without intact contents the code is unknown: nothing is answered.
            self.stats.malformed += 1;
            return;
        };
        let req = is_request(c.code);
        if req && from != self.me && !self.admit_link(from) {
            // One neighbour's requests, whatever originators they name.
            self.stats.rate_limited += 1;
            self.stats.link_limited += 1;
            self.answer_error(
                &h,
                ErrorCode::RateLimited,
                "too many requests over this link",
            );
            return;
        }
        if req && from != self.me && h.via_len() == 1 {
            // The link's authenticated peer is the originator: it must not claim another id.
            if h.via().next() != Some(DestRef::Node(from)) {
                self.stats.forged += 1;
                return;
            }
            if !self.admit_origin(from) {
                self.stats.rate_limited += 1;
                self.answer_error(
                    &h,
                    ErrorCode::RateLimited,
                    "too many requests from this node",
                );
                return;
            }
        }
        let Some(first) = h.first_destination() else {
            self.stats.malformed += 1;
            return;
        };
        match first {
            DestRef::Node(id) if id == self.me => {
                if h.destination_len() > 1 {
                    self.pass_on(from, bytes, &h, req, true);
                } else {
                    self.deliver(from, &h, c);
                }
            }
            _ if !req => {
                // An answer must name this node first; anything else is misrouted.
                self.stats.malformed += 1;
            }
            _ if !self.topology.is_peer() => {
                // Clients never route for others.
                self.stats.malformed += 1;
            }
            _ => self.pass_on(from, bytes, &h, req, false),
        }
    }

    /// Takes a token from the bucket of `origin` (the verified originator of a request);
    /// false when it is empty (proto/SPEC.md section 3).
    fn admit_origin(&mut self, origin: NodeId) -> bool {
        let (rate, burst) = (self.cfg.origin_rate, self.cfg.origin_burst);
        take_token(&mut self.buckets, origin, rate, burst, self.now)
    }

    /// Takes a token from the bucket of the link to `neighbour`, which every request that
    /// comes over it pays for, whatever originator it names.
    fn admit_link(&mut self, neighbour: NodeId) -> bool {
        let (rate, burst) = (self.cfg.link_rate, self.cfg.link_burst);
        take_token(&mut self.link_buckets, neighbour, rate, burst, self.now)
    }

    /// Whether `origin` may have request `tx` in flight through this node: a
    /// retransmission always may; a new one only below `origin_max_in_flight`. Entries
    /// older than the originator's whole retransmission schedule are forgotten.
    fn room_in_flight(&mut self, origin: NodeId, tx: u64) -> bool {
        let cap = self.cfg.origin_max_in_flight;
        if cap == 0 {
            return true;
        }
        let horizon = self.cfg.max_request_timeout * (2u32 << self.cfg.retransmissions.min(6));
        let now = self.now;
        let m = self.inflight.entry(origin).or_default();
        if m.len() >= cap {
            m.retain(|_, at| now.since(*at) < horizon);
        }
        m.contains_key(&tx) || m.len() < cap
    }

    /// Decides where a request (or a popped answer) goes next and sends it there.
    fn pass_on(&mut self, from: NodeId, bytes: &[u8], h: &Header<'_>, req: bool, pop: bool) {
        let next = if pop {
            h.destinations().nth(1)
        } else {
            h.first_destination()
        };
        let to = match next {
            None => return,
            Some(DestRef::Node(n)) if n == self.me => {
                self.stats.malformed += 1;
                return;
            }
            // Answers travel the reversed via list: every entry is a node we have a link to.
            // A request goes straight to a neighbour and is routed towards any other node.
            Some(DestRef::Node(n))
                if !req || self.topology.is_neighbor(n) || self.links.contains(&n) =>
            {
                n
            }
            Some(DestRef::Node(n)) => match self.topology.next_hop(n) {
                NextHop::Forward(x) => x,
                NextHop::Local => {
                    self.answer_error(h, ErrorCode::NotFound, "no such node in the overlay");
                    return;
                }
            },
            Some(DestRef::Resource(r)) => match self.topology.next_hop(r) {
                // Never send a request back to its originator: a peer that routes the target
                // to the originator (a joining peer's retransmitted Join reaching its
                // admitting peer, which already counts the joiner as its predecessor) is the
                // one that must answer.
                NextHop::Forward(x) if req && !pop && h.via().next() == Some(DestRef::Node(x)) => {
                    if let Ok(c) = split_contents(h, bytes) {
                        self.deliver(from, h, c);
                    }
                    return;
                }
                NextHop::Forward(x) => x,
                NextHop::Local if !self.topology.is_joined() && !pop => {
                    // A peer still joining holds none of its future range: it must not
                    // answer for it. The originator's retransmission finds it joined.
                    self.stats.not_ready += 1;
                    return;
                }
                NextHop::Local => {
                    if let Ok(c) = split_contents(h, bytes) {
                        self.deliver(from, h, c);
                    }
                    return;
                }
            },
            Some(DestRef::Opaque(_)) => {
                self.answer_error(h, ErrorCode::NotFound, "unknown opaque destination");
                return;
            }
        };
        if req {
            // A node that already forwarded this request (anywhere but as its originator)
            // has found a loop.
            if h.via().skip(1).any(|v| v == DestRef::Node(self.me)) {
                self.stats.loops += 1;
                return;
            }
        }
        // A request its originator (our link's peer) has us pass on takes one of its
        // in-flight slots until the answer comes back.
        let originated_here = req && from != self.me && h.via_len() == 1;
        if originated_here && !self.room_in_flight(from, h.transaction_id) {
            self.stats.rate_limited += 1;
            self.answer_error(
                h,
                ErrorCode::RateLimited,
                "too many requests in flight from this node",
            );
            return;
        }
        let me = Destination::Node(self.me);
        let rw = Rewrite {
            push_via: req.then_some(&me),
            pop_destination: pop,
        };
        let mut out = Vec::with_capacity(bytes.len() + 17);
        match forward_parsed(bytes, h, rw, &mut out) {
            Ok(()) => {
                self.stats.forwarded += 1;
                if originated_here && self.cfg.origin_max_in_flight > 0 {
                    self.inflight
                        .entry(from)
                        .or_default()
                        .insert(h.transaction_id, self.now);
                } else if !req {
                    if let Some(m) = self.inflight.get_mut(&to) {
                        m.remove(&h.transaction_id);
                    }
                }
                self.transmit(to, out);
                if req {
                    let bytes = bytes.to_vec();
                    self.remember_sent(to, Resend::Forward { from, bytes });
                }
            }
            Err(ParseError::TtlExceeded | ParseError::ListTooLong { .. }) if req => {
                self.stats.ttl_exceeded += 1;
                self.answer_error(h, ErrorCode::TtlExceeded, "TTL exceeded");
            }
            Err(e) if req => self.answer_error(h, e.error_code(), &e.to_string()),
            Err(_) => self.stats.malformed += 1,
        }
    }

    /// A message for this node: serve a request, or complete a transaction.
    pub(super) fn deliver(&mut self, from: NodeId, h: &Header<'_>, c: Contents<'_>) {
        let (code, body) = (c.code, c.body);
        if is_request(code) {
            let claimed = h.via().next().and_then(|d| d.id()).unwrap_or(from);
            // Straight from the linked node that sent it (its handshake proved its id).
            let direct = h.via_len() == 1 && claimed == from;
            let origin = match self.signed_by(from, claimed, h, c) {
                Ok(o) => o,
                Err(e) => {
                    self.stats.bad_signatures += 1;
                    let why = format!("message signature of {claimed}: {e}");
                    self.answer_error(h, ErrorCode::Forbidden, &why);
                    return;
                }
            };
            if !direct && origin != self.me && !self.admit_origin(origin) {
                // Came through other peers: the limit is the verified originator's.
                self.stats.rate_limited += 1;
                self.answer_error(
                    h,
                    ErrorCode::RateLimited,
                    "too many requests from this node",
                );
                return;
            }
            // A writer's store (not a copy between replicas): its answer waits while
            // replication lags (`replication_backlog`).
            let mut primary = false;
            let answer = match Body::decode(code, body) {
                Ok(b) => {
                    self.stats.served += 1;
                    primary = matches!(&b, Body::StoreReq(s) if s.replica_number == 0);
                    self.serve(origin, b, h, direct)
                }
                Err(e) => Err((ErrorCode::InvalidMessage, e.to_string())),
            };
            match answer {
                Ok(b) if matches!(b, Body::StoreAns(_)) && self.store.uncommitted() => {
                    // Answered once the storage has committed what this store wrote.
                    if let Some(r) = self.reply_as_destination(h) {
                        self.held.push((r, b, primary));
                    }
                }
                Ok(b) if primary && matches!(b, Body::StoreAns(_)) => {
                    if let Some(r) = self.reply_as_destination(h) {
                        self.answer_store(r, b);
                    }
                }
                Ok(b) => {
                    if let Some(r) = self.reply_as_destination(h) {
                        self.send_reply(r, &b);
                    }
                }
                Err((code, info)) => {
                    self.stats.errors_sent += 1;
                    if let Some(r) = self.reply_as_destination(h) {
                        self.send_reply(r, &Body::error(code, info));
                    }
                }
            }
            if !self.held_replication.is_empty() && !self.store.uncommitted() {
                self.release_replication();
            }
        } else {
            let responder = h.via().next().and_then(|d| d.id());
            if !self.txs.contains_key(&h.transaction_id) {
                self.stats.stray_answers += 1;
                return;
            }
            if self.answer_checks_out(from, responder, h, c).is_err() {
                self.stats.forged_answers += 1;
                return;
            }
            let hops = if responder == Some(self.me) {
                0
            } else {
                u32::from(DEFAULT_TTL.saturating_sub(h.ttl)) + 1
            };
            let outcome = match Body::decode(code, body) {
                Ok(Body::ErrorAns(e)) => Err(e),
                Ok(b) => Ok(b),
                Err(e) => Err(pb::ErrorAns {
                    code: ErrorCode::InvalidMessage as i32,
                    info: e.to_string().into_bytes(),
                }),
            };
            self.on_answer(h.transaction_id, responder, hops, outcome);
        }
    }

    /// The verified originator of a request: the node its via list names first, once the
    /// security block proves that node signed it. Messages of this node to itself need no
    /// proof; with `sign_messages` off the claim is taken as it is.
    fn signed_by(
        &mut self,
        from: NodeId,
        claimed: NodeId,
        h: &Header<'_>,
        c: Contents<'_>,
    ) -> Result<NodeId, String> {
        if !self.cfg.sign_messages || (from == self.me && claimed == self.me) {
            return Ok(claimed);
        }
        // Straight from the node it names over that node's own link, whose handshake
        // proved its Node-ID: the link authenticates it (proto/SPEC.md 5.4).
        if c.security.is_empty() && claimed == from && h.via_len() == 1 {
            return Ok(claimed);
        }
        let signer = verify_message_memo(
            c.security,
            self.overlay_id,
            h.transaction_id,
            c.code,
            c.body,
            self.cfg.verify.binding(),
            &mut self.keys,
            Some(&self.prechecked),
        )
        .map_err(|e| e.to_string())?;
        if signer != claimed {
            return Err(format!("signed by {signer}, not by the originator"));
        }
        Ok(signer)
    }

    /// Whether an answer may complete its transaction: signed by the responder it names,
    /// and, for a request sent to a Node-ID, that responder is the node (an error may come
    /// from any hop on the way, signed by it).
    fn answer_checks_out(
        &mut self,
        from: NodeId,
        responder: Option<NodeId>,
        h: &Header<'_>,
        c: Contents<'_>,
    ) -> Result<(), String> {
        let Some(r) = responder else {
            return Err("an answer that names no responder".into());
        };
        if !self.cfg.sign_messages || (from == self.me && r == self.me) {
            return Ok(());
        }
        let signer = self.signed_by(from, r, h, c)?;
        if c.code == p2psip_proto::ERROR_CODE {
            return Ok(());
        }
        let tx = self.txs.get(&h.transaction_id);
        if let Some(want) = tx.and_then(|t| t.addressee()) {
            if want != signer {
                return Err(format!(
                    "an answer from {signer} to a request for node {want}"
                ));
            }
        }
        if let Some(target) = tx.and_then(|t| t.target_resource()) {
            if signer != self.me && !self.topology.plausible_responder(target, signer) {
                return Err(format!(
                    "an answer from {signer}, which cannot be responsible for {target}"
                ));
            }
        }
        Ok(())
    }

    /// Answers a request along its reversed via list.
    fn answer(&mut self, req: &Header<'_>, body: &Body) {
        if let Some(r) = self.reply_to(req) {
            self.send_reply(r, body);
        }
    }

    /// Where and how an answer to `req` goes (None: the via list names no node).
    pub(super) fn reply_to(&self, req: &Header<'_>) -> Option<Reply> {
        let mut dest: Vec<Destination> = req.via().map(|d| d.to_owned()).collect();
        dest.reverse();
        let Some(Destination::Node(first)) = dest.first().cloned() else {
            return None;
        };
        let header = OwnedHeader {
            via: vec![Destination::Node(self.me)],
            destinations: dest,
            max_response_len: 0,
            ..OwnedHeader::new(
                self.overlay_id,
                req.transaction_id,
                Destination::Node(first),
            )
        };
        Some(Reply {
            first,
            header,
            max_len: req.max_response_len,
            direct: None,
        })
    }

    /// The reply of the node a request was for: straight to its originator when the
    /// request asks for it with a DIRECT_RESPONSE option and came through other peers
    /// (proto/SPEC.md 8.1), else along the reversed via list. A direct answer keeps the
    /// request's TTL, so the originator still counts the hops the request took.
    pub(super) fn reply_as_destination(&mut self, req: &Header<'_>) -> Option<Reply> {
        self.direct_reply(req).or_else(|| self.reply_to(req))
    }

    /// The direct reply to `req`, when it asks for one and may have it.
    fn direct_reply(&mut self, req: &Header<'_>) -> Option<Reply> {
        if !self.cfg.serve_direct_responses || req.via_len() < 2 {
            return None;
        }
        let addr = req
            .options()
            .find(|o| o.kind == p2psip_proto::options::DIRECT_RESPONSE)
            .and_then(|o| p2psip_proto::options::decode_address(o.value))?;
        let Some(DestRef::Node(origin)) = req.via().next() else {
            return None;
        };
        if origin == self.me {
            return None;
        }
        // Connecting to the address an option names costs a handshake sent there: at most
        // DIRECT_DIALS_PER_S answers a second go to originators without a link, so that
        // options naming someone else's address reflect little (proto/SPEC.md 8.1).
        if !self.links.contains(&origin) {
            let now = self.now;
            let (rate, burst) = (DIRECT_DIALS_PER_S, DIRECT_DIALS_PER_S);
            if !take_token(&mut self.direct_dials, (), rate, burst, now) {
                return None;
            }
        }
        let header = OwnedHeader {
            ttl: req.ttl,
            via: vec![Destination::Node(self.me)],
            destinations: vec![Destination::Node(origin)],
            max_response_len: 0,
            ..OwnedHeader::new(
                self.overlay_id,
                req.transaction_id,
                Destination::Node(origin),
            )
        };
        Some(Reply {
            first: origin,
            header,
            max_len: req.max_response_len,
            direct: Some(addr),
        })
    }

    pub(super) fn send_reply(&mut self, r: Reply, body: &Body) {
        let encoded = body.encode_to_vec();
        if r.max_len != 0
            && !matches!(body, Body::ErrorAns(_))
            && encoded.len() > r.max_len as usize
        {
            self.stats.errors_sent += 1;
            let e = Body::error(
                ErrorCode::ResponseTooLarge,
                "answer exceeds max_response_len",
            );
            self.send_reply(Reply { max_len: 0, ..r }, &e);
            return;
        }
        let sec = if self.link_proves(r.first, &r.header.destinations) {
            Vec::new()
        } else {
            self.security_block(r.header.transaction_id, body.code(), &encoded)
        };
        if let Ok(bytes) = encode_parts(&r.header, body.code(), &encoded, &sec) {
            if let Some(addr) = r.direct {
                // Where the transport reaches the originator if it has no link to it.
                self.stats.direct_responses += 1;
                self.events.push_back(super::Event::PeerCandidates {
                    node: r.first,
                    candidates: vec![super::host_candidate(addr)],
                });
            }
            self.transmit(r.first, bytes);
        }
    }

    /// Whether a message to `destinations` sent to `first_hop` needs no signature: its only
    /// destination is that node, which receives it over its own link from this node, whose
    /// handshake proved both Node-IDs (proto/SPEC.md 5.4, "Link-authenticated messages").
    pub(super) fn link_proves(&self, first_hop: NodeId, destinations: &[Destination]) -> bool {
        !self.cfg.sign_direct_messages
            && first_hop != self.me
            && matches!(destinations, [Destination::Node(n)] if *n == first_hop)
    }

    /// The security block of a message this node sends: its signature, or nothing when
    /// `sign_messages` is off.
    pub(super) fn security_block(&self, tx: u64, code: u16, body: &[u8]) -> Vec<u8> {
        if !self.cfg.sign_messages {
            return Vec::new();
        }
        sign_message(&self.identity, self.overlay_id, tx, code, body)
    }

    pub(super) fn answer_error(&mut self, req: &Header<'_>, code: ErrorCode, info: &str) {
        self.stats.errors_sent += 1;
        self.answer(req, &Body::error(code, info));
    }
}
