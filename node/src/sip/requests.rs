//! Every message in: checks, dispatch to the REGISTER handler or the proxy, responses
//! relayed back along the Via headers.

use super::*;
use tracing::Instrument as _;

/// Characters of a request's Call-ID its log lines carry.
const CALL_ID_LOGGED: usize = 64;

/// What is wrong with a request's mandatory headers (RFC 3261 section 8.1.1), if anything.
pub(super) fn malformed(req: &Request) -> Option<String> {
    let missing = |h: &str| Some(format!("Missing {h} header"));
    let bad = |h: &str| Some(format!("Malformed {h} header"));
    match req.via_header() {
        Err(_) => return missing("Via"),
        Ok(v) if v.typed().is_err() => return bad("Via"),
        _ => {}
    }
    match req.from_header() {
        Err(_) => return missing("From"),
        Ok(v) if v.typed().is_err() => return bad("From"),
        _ => {}
    }
    match req.to_header() {
        Err(_) => return missing("To"),
        Ok(v) if v.typed().is_err() => return bad("To"),
        _ => {}
    }
    if req.call_id_header().is_err() {
        return missing("Call-ID");
    }
    match req.cseq_header() {
        Err(_) => return missing("CSeq"),
        Ok(c) => match c.typed() {
            Err(_) => return bad("CSeq"),
            Ok(c) if c.method != req.method => {
                return Some("CSeq method is not the request's".into())
            }
            _ => {}
        },
    }
    match req.max_forwards_header() {
        Ok(m) if m.num().is_err() => bad("Max-Forwards"),
        _ => None,
    }
}

/// The option tags the front-end supports (RFC 3327 Path, RFC 5626 outbound, RFC 5627
/// GRUUs).
pub(super) const SUPPORTED: &str = "path, outbound, gruu";

/// What the front-end supports, for an OPTIONS answer.
pub(super) fn capabilities() -> Vec<Header> {
    vec![
        Header::Allow(rsip::headers::Allow::new(raw::ALLOW)),
        Header::Supported(rsip::headers::Supported::new(SUPPORTED)),
        Header::Accept(rsip::headers::Accept::new("application/sdp")),
    ]
}

impl Inner {
    /// Responses are sent on at once, in the order they came (a 180 must not overtake its
    /// 200); requests, which may wait for the overlay, each get a task.
    ///
    /// A request beyond its source's rate (`sip.requests_per_s_per_source`), or beyond
    /// the requests handled at once, is answered 503 with Retry-After instead.
    pub(super) async fn dispatch(self: Arc<Self>, bytes: Vec<u8>, src: Hop) {
        if bytes.starts_with(b"SIP/") {
            self.handle(bytes, src).await;
            return;
        }
        let within_rate = self.within_rate(src);
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        match permit.filter(|_| within_rate) {
            Some(permit) => {
                tokio::spawn(async move {
                    self.handle(bytes, src).await;
                    drop(permit);
                });
            }
            None => self.overloaded(&bytes, src).await,
        }
    }

    /// Whether one more message from `src` is within its rate
    /// (`sip.requests_per_s_per_source`; proxies in front and other nodes have none).
    fn within_rate(&self, src: Hop) -> bool {
        match src {
            Hop::Udp(a) | Hop::Tcp(a) if self.cfg.trusted_proxies.contains(&a.ip()) => true,
            Hop::Udp(a) | Hop::Tcp(a) => self.rate.take(
                a.ip(),
                1,
                u64::from(self.cfg.requests_per_s),
                Instant::now(),
            ),
            Hop::Node(_) => true,
        }
    }

    /// A STUN datagram on the UDP port: a Binding request (an RFC 5626 keep-alive) is
    /// answered with the address it came from, within the source's rate; anything else
    /// is dropped.
    pub(super) async fn stun(self: &Arc<Self>, bytes: &[u8], src: SocketAddr) {
        if !self.within_rate(Hop::Udp(src)) {
            return;
        }
        let Some(answer) = keepalive::stun_answer(bytes, src) else {
            tracing::debug!(%src, "SIP: STUN datagram that is no Binding request dropped");
            return;
        };
        crate::metrics::sip_keepalive(self.node.id, "stun");
        if let Err(e) = self.udp.send_to(&answer, src).await {
            tracing::debug!(%src, error = %e, "SIP: STUN answer not sent");
        }
    }

    /// Answers a request that is not handled now: 503 with Retry-After (never an ACK).
    pub(super) async fn overloaded(self: &Arc<Self>, bytes: &[u8], src: Hop) {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        crate::remote_log!(info, "sip_overloaded", %src, "SIP: request answered 503 (rate or load limit)");
        if let Ok(SipMessage::Request(r)) = SipMessage::try_from(bytes) {
            let retry = vec![Header::RetryAfter(rsip::headers::RetryAfter::new("1"))];
            self.reply(&r, 503, retry, src).await;
        }
    }

    pub(super) async fn handle(self: Arc<Self>, bytes: Vec<u8>, src: Hop) {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            // A keep-alive: CRLFCRLF on a stream is answered with CRLF (RFC 5626 3.5.1).
            if bytes.as_slice() == b"\r\n\r\n" && matches!(src, Hop::Tcp(_)) {
                crate::metrics::sip_keepalive(self.node.id, "crlf");
                let _ = self.send(b"\r\n".to_vec(), src).await;
            }
            return;
        }
        tracing::debug!(
            %src,
            first = %String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or(&[])),
            "SIP: in"
        );
        match SipMessage::try_from(bytes.as_slice()) {
            Ok(SipMessage::Request(r)) => {
                // One span per request: every line logged while it is handled names its
                // method and Call-ID (cut to CALL_ID_LOGGED characters: the sender's).
                let method = r.method.to_string();
                let call_id: String = r
                    .call_id_header()
                    .map(|c| c.value().chars().take(CALL_ID_LOGGED).collect())
                    .unwrap_or_default();
                let span = tracing::info_span!("sip", method = %method, call_id = %call_id);
                if let Err(e) = self.request(r, src).instrument(span.clone()).await {
                    let _in = span.enter();
                    crate::remote_log!(info, "sip_not_handled", %src, %method, error = %e, "SIP: request not handled");
                }
            }
            Ok(SipMessage::Response(r)) => {
                let line = raw::first_line(&bytes).unwrap_or_default().to_string();
                self.response(r, &line).await
            }
            Err(e) => match raw::answer_unparsable(&bytes) {
                Some(answer) => {
                    crate::remote_log!(info, "sip_malformed", %src, error = %e, "SIP: unparsable request answered {}", answer.get(8..11).unwrap_or(""));
                    let _ = self.send(answer.into_bytes(), src).await;
                }
                None => tracing::debug!(%src, error = %e, "SIP: unparsable message dropped"),
            },
        }
    }

    /// A response: to its fork if it answers a forked request; else relayed.
    pub(super) async fn response(self: &Arc<Self>, r: Response, status_line: &str) {
        if !self.forks.is_empty() && self.fork_response(&r, status_line).await {
            return;
        }
        self.relay_response(r, status_line).await
    }

    /// A response: pop our Via, send it on to the next one, its status line as it came.
    pub(super) async fn relay_response(self: &Arc<Self>, mut r: Response, status_line: &str) {
        // One Via per header (a UA may fold them into one, comma-separated: 1#via-parm).
        let mut headers = Headers::default();
        let mut vias = Vec::new();
        for h in r.headers.iter() {
            match h {
                Header::Via(v) => {
                    for part in v
                        .value()
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                    {
                        let one = rsip::headers::Via::new(part);
                        if vias.is_empty() {
                            // Ours, to be popped: not copied.
                        } else {
                            headers.push(Header::Via(one.clone()));
                        }
                        vias.push(one);
                    }
                }
                other => headers.push(other.clone()),
            }
        }
        let Some(top) = vias.first() else {
            tracing::debug!("SIP: response without Via dropped");
            return;
        };
        if r.status_code == StatusCode::Trying {
            return; // hop by hop: not forwarded (RFC 3261 §16.7)
        }
        if !top.uri().is_ok_and(|u| self.is_me(&u)) {
            tracing::debug!(via = %top.value(), "SIP: response whose top Via is not ours dropped");
            return;
        }
        let Some(to) = vias.get(1).and_then(via_target) else {
            tracing::debug!("SIP: response with no Via after ours dropped");
            return;
        };
        r.headers = headers;
        let bytes = raw::with_status_line(r.to_string(), status_line).into_bytes();
        if let Hop::Node(n) = to {
            if self.streams.get(&n).is_none_or(|w| w.is_closed()) {
                // Opening the stream waits for the overlay: not on the receive loop.
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.send(bytes, to).await {
                        tracing::debug!(%to, error = %e, "SIP: response not forwarded");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.send(bytes, to).await {
            tracing::debug!(%to, error = %e, "SIP: response not forwarded");
        }
    }

    pub(super) async fn request(
        self: &Arc<Self>,
        mut req: Request,
        src: Hop,
    ) -> Result<(), SipError> {
        if let std::borrow::Cow::Owned(u) = repaired(&req.uri) {
            req.uri = u;
        }
        // Where the sender really is (RFC 3261 §18.2.1, RFC 3581); a node's Via names it.
        if let Hop::Udp(a) | Hop::Tcp(a) = src {
            self.mark_received(&mut req, a);
            self.know(a, Instant::now() + SOURCE_MEMORY);
        }
        if let Some(why) = malformed(&req) {
            let status = StatusCode::Other(400, raw::phrase(&why));
            self.reply_status(&req, status, vec![], src).await;
            refuse!("{} answered 400: {why}", req.method);
        }
        // The ACK of a final answer we gave ourselves ends here (its To tag is ours).
        if req.method == Method::Ack && to_tag(&req).is_some_and(|t| t.starts_with(raw::LOCAL_TAG))
        {
            return Ok(());
        }
        // The CANCEL, ACK or retransmission of a request we forked.
        if !self.forks_in.is_empty() && self.fork_request(&req, src).await {
            return Ok(());
        }
        let mf = req
            .max_forwards_header()
            .ok()
            .and_then(|h| h.num().ok())
            .unwrap_or(MAX_FORWARDS);
        // OPTIONS for the front-end itself (its address or the bare domain), or one that
        // may go no further: answered here (RFC 3261 sections 11 and 16.3), as the
        // health checks of dispatchers in front want.
        let for_us = req.uri.auth.is_none()
            && (self.is_me(&req.uri)
                || matches!(&req.uri.host_with_port.host, rsip::Host::Domain(d)
                    if d.to_string().eq_ignore_ascii_case(&self.cfg.domain)));
        if req.method == Method::Options && (mf == 0 || for_us) {
            self.reply(&req, 200, capabilities(), src).await;
            return Ok(());
        }
        if mf == 0 {
            self.reply(&req, 483, vec![], src).await;
            return Ok(());
        }
        if mf > MAX_FORWARDS {
            for h in req.headers.iter_mut() {
                if let Header::MaxForwards(m) = h {
                    *m = rsip::headers::MaxForwards::new(MAX_FORWARDS.to_string());
                }
            }
        }
        // Loop detection (RFC 3261 section 16.3 item 4): one of our own Vias whose loop
        // part matches this very request (same Request-URI, dialog and CSeq) means it
        // came round to us again.
        let key = loop_key(&req);
        let me = self.me();
        let looped = req.headers.iter().any(|h| match h {
            Header::Via(v) => v.value().split(',').any(|one| {
                let one = one.trim();
                one.starts_with("SIP/2.0/") && one.contains(&me) && one.contains(&format!(".{key}"))
            }),
            _ => false,
        });
        if looped {
            self.reply(&req, 482, vec![], src).await;
            refuse!("loop detected: {} came back to this front-end", req.uri);
        }
        if !self.authorized(&req, src).await? {
            return Ok(());
        }
        // Loose routing: a top Route naming us is consumed; another one is followed.
        let routes = route_uris(&req);
        let mut routes = routes.into_iter().peekable();
        // Our entries, two where we double-record-routed.
        while routes.peek().is_some_and(|u| self.is_me(u)) {
            routes.next();
            pop_route(&mut req);
        }
        if let Some(next) = routes.next() {
            let to = route_hop(&next).ok_or_else(|| request_err!("Route {next} has no IP host"))?;
            if !self.may_send_to(to) {
                self.reply(&req, 403, vec![], src).await;
                refuse!("Route {next} names neither a node nor a device known here");
            }
            return self.forward(req, to, None).await;
        }
        match req.method {
            Method::Register => self.register(req, src).await,
            _ => self.route(req, src).await,
        }
    }
}
