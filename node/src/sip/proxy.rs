//! The proxy: finds a callee's devices through the overlay and forwards the request.

use super::*;

/// Where a request for an AOR goes: a device here (through its Path, if it has one) or
/// another front-end.
pub(super) struct Target {
    pub(super) hop: Hop,
    pub(super) uri: rsip::Uri,
    /// Route entries to add (a device's Path).
    pub(super) routes: Vec<String>,
}

impl Target {
    pub(super) fn device(d: &registrar::Device) -> Result<Target, SipError> {
        let uri = rsip::Uri::try_from(d.contact.as_str())?;
        Ok(Target {
            hop: d.path.first().and_then(|p| path_hop(p)).unwrap_or(d.hop),
            uri,
            routes: d.path.clone(),
        })
    }

    /// Sets the Request-URI and adds the Route entries.
    pub(super) fn apply(self, req: &mut Request) {
        req.uri = self.uri;
        for r in self.routes {
            req.headers
                .push(Header::Route(rsip::headers::Route::new(r)));
        }
    }
}

/// Why [`Inner::bind`] bound nothing.
pub(super) enum Unbound {
    TooManyDevices,
    NotStored(String),
}

pub(super) enum Resolved {
    /// Nodes holding unexpired bindings, the freshest first.
    Nodes(Vec<NodeId>),
    Uri(String),
    Expired,
    Nobody,
}

impl Inner {
    /// A request for an AOR: delivered to a device bound here, or carried to the node
    /// that holds the callee's registration.
    pub(super) async fn route(
        self: &Arc<Self>,
        mut req: Request,
        src: Hop,
    ) -> Result<(), SipError> {
        if req.method == Method::Invite {
            // Finding the callee may take a few overlay round trips: 100 Trying stops the
            // previous hop retransmitting the INVITE meanwhile (RFC 3261 §16.2).
            self.reply(&req, 100, vec![], src).await;
        }
        // A device's own address (the remote target of a dialog): straight there. An
        // address that is no device may be a front-end's: this one's, or another's of the
        // overlay (its published record), standing for the domain.
        let mut names_front_end = self.is_me(&req.uri);
        if matches!(req.uri.host_with_port.host, rsip::Host::IpAddr(_)) && !names_front_end {
            let to =
                route_hop(&req.uri).ok_or_else(|| request_err!("no address in {}", req.uri))?;
            if self.may_send_to(to) {
                return self.forward(req, to, None).await;
            }
            names_front_end = match to {
                Hop::Udp(a) | Hop::Tcp(a) => self.is_front_end(a).await,
                Hop::Node(_) => false,
            };
            // Only to devices known here: no open relay, no requests to arbitrary hosts.
            if !names_front_end {
                self.reply(&req, 403, vec![], src).await;
                crate::remote_log!(info, "sip_relay_refused", %src, uri = %req.uri, "SIP: request to a host that is no device known here refused");
                return Ok(());
            }
        }
        let Some(mut aor) = aor_of(&req.uri, &self.cfg.domain) else {
            self.reply(&req, 404, vec![], src).await;
            refuse!("request URI {} names no user", req.uri);
        };
        if let Some((node, token)) = temp_gruu_of(&req.uri) {
            return self.route_temp_gruu(req, src, node, &token).await;
        }
        let gr = gr_param(&req.uri);
        // A URI naming a front-end by address means the user of our domain: the request
        // goes on for the AOR itself (else the front-end holding the binding would take
        // the URI for a device and send it back here).
        if names_front_end {
            let canonical = match &gr {
                Some(g) => format!("{aor};gr={g}"),
                None => aor.clone(),
            };
            req.uri = rsip::Uri::try_from(canonical.as_str())?;
        }
        // Where the AOR is: its devices here and the other front-ends holding some
        // (following URI indirections a few times). A GRUU names one node and device.
        let (gr_node, gr_device) = match gr.as_deref().map(|g| g.split_once('-').unwrap_or((g, "")))
        {
            Some((n, d)) => (Some(n.to_string()), (!d.is_empty()).then(|| d.to_string())),
            None => (None, None),
        };
        let here = gr_node
            .as_deref()
            .is_none_or(|n| n == format!("{:#}", self.node.id));
        let now = Instant::now();
        let mut targets: Vec<Target> = Vec::new();
        let mut expired = false;
        if here {
            let mut devices = self.devices_of(&aor);
            devices.retain(|d| gr_device.as_deref().is_none_or(|g| g == d.id));
            // The most recently refreshed first; of a device's outbound flows only the
            // newest that still stands.
            let live = registrar::targets(&devices, now, |d| self.flow_alive(d));
            expired = live.is_empty() && !devices.is_empty();
            for d in live {
                targets.push(Target::device(&d)?);
            }
        }
        // A GRUU naming this node needs no overlay lookup: its device is here or gone.
        let only_here = gr_node.is_some() && here;
        let mut resolved = Resolved::Nobody;
        for _ in 0..(if only_here { 0 } else { 4 }) {
            resolved = self.resolve(&aor, gr_node.as_deref()).await?;
            match &resolved {
                Resolved::Uri(u) => aor = u.clone(),
                _ => break,
            }
        }
        match resolved {
            Resolved::Uri(_) if targets.is_empty() => {
                self.reply(&req, 482, vec![], src).await;
                refuse!("{aor}: too many URI indirections");
            }
            Resolved::Nodes(nodes) => {
                // Our own entry with no device here: they were lost in a restart (the
                // phones will register again).
                if nodes.contains(&self.node.id) && targets.is_empty() {
                    expired = true;
                }
                for n in nodes.into_iter().filter(|n| *n != self.node.id) {
                    targets.push(Target {
                        hop: Hop::Node(n),
                        uri: req.uri.clone(),
                        routes: Vec::new(),
                    });
                }
            }
            Resolved::Expired => expired = true,
            _ => {}
        }
        if targets.is_empty() {
            if expired {
                self.reply(&req, 480, vec![], src).await;
                refuse!("{aor}: registration expired");
            }
            self.reply(&req, 404, vec![], src).await;
            refuse!("{aor}: not registered");
        }
        if targets.len() > 1 && matches!(req.method, Method::Invite | Method::Message) {
            return self.fork(req, src, targets).await;
        }
        let t = targets.swap_remove(0);
        if let Hop::Node(n) = t.hop {
            if let Err(e) = self.stream_to(n).await {
                self.reply(&req, 480, vec![], src).await;
                return Err(e);
            }
        }
        let hop = t.hop;
        t.apply(&mut req);
        self.forward(req, hop, Some(src)).await
    }

    /// A request to a temporary GRUU (RFC 5627): carried to the node that issued it, which
    /// delivers it to the device the token names (404 for a token it never issued or no
    /// longer keeps, 480 when the device's registration ran out).
    async fn route_temp_gruu(
        self: &Arc<Self>,
        mut req: Request,
        src: Hop,
        node: NodeId,
        token: &str,
    ) -> Result<(), SipError> {
        if node != self.node.id {
            if let Err(e) = self.stream_to(node).await {
                self.reply(&req, 480, vec![], src).await;
                return Err(e);
            }
            return self.forward(req, Hop::Node(node), Some(src)).await;
        }
        let device = self
            .temp_gruus
            .get(token)
            .map(|aor| aor.clone())
            .and_then(|aor| {
                let devices = self.devices_of(&aor);
                registrar::with_temp_gruu(&devices, token).cloned()
            });
        let Some(d) = device else {
            self.reply(&req, 404, vec![], src).await;
            refuse!("temporary GRUU {}: not issued here", req.uri);
        };
        let live = registrar::targets(std::slice::from_ref(&d), Instant::now(), |d| {
            self.flow_alive(d)
        });
        if live.is_empty() {
            self.reply(&req, 480, vec![], src).await;
            refuse!("temporary GRUU {}: its device is gone", req.uri);
        }
        let t = Target::device(&d)?;
        let hop = t.hop;
        t.apply(&mut req);
        self.forward(req, hop, Some(src)).await
    }

    /// Whether the flow of an outbound binding still stands: a TCP connection the phone
    /// has closed does not (the front-end never dials a phone's flow; RFC 5626 section
    /// 5.3), nor, when `sip.flow_timer_s` told phones how often to send keep-alives, a
    /// UDP flow silent for longer than [`flow_silence`] allows. Flows an edge proxy keeps
    /// (Path), and UDP flows of phones given no Flow-Timer, stand until they expire.
    pub(super) fn flow_alive(&self, d: &registrar::Device) -> bool {
        match d.hop {
            Hop::Tcp(a) if d.path.is_empty() => self.tcp.get(&a).is_some_and(|w| !w.is_closed()),
            Hop::Udp(a) if d.path.is_empty() && d.reg_id.is_some() && self.cfg.flow_timer > 0 => {
                self.flows_heard
                    .get(&a)
                    .is_none_or(|t| t.elapsed() <= flow_silence(self.cfg.flow_timer))
            }
            _ => true,
        }
    }

    /// Notes that a datagram came from `src` (a registered UDP flow stays alive by it).
    pub(super) fn heard_from(&self, src: SocketAddr) {
        if let Some(mut t) = self.flows_heard.get_mut(&src) {
            *t = Instant::now();
        }
    }

    /// Starts watching the UDP flow `a` (just registered: heard `now`), if not yet; at
    /// most KNOWN_MAX flows, those silent for an hour forgotten first.
    pub(super) fn watch_flow(&self, a: SocketAddr, now: Instant) {
        if self.flows_heard.len() >= KNOWN_MAX && !self.flows_heard.contains_key(&a) {
            self.flows_heard
                .retain(|_, t| now.saturating_duration_since(*t) < SOURCE_MEMORY);
            if self.flows_heard.len() >= KNOWN_MAX {
                return;
            }
        }
        self.flows_heard.entry(a).or_insert(now);
    }

    pub(super) async fn resolve(&self, aor: &str, gr: Option<&str>) -> Result<Resolved, SipError> {
        let res = Id::hash_of(aor.as_bytes());
        let ans = self
            .node
            .fetch_kind(res, KIND_SIP_REGISTRATION, OP_TIMEOUT)
            .await
            .map_err(|e| request_err!("fetching {aor}: {e}"))?;
        let now = now_ms();
        let mut nodes: Vec<(u64, NodeId)> = Vec::new();
        let mut expired = false;
        for v in crate::ops::values_of(&ans) {
            let Ok(reg) = pb::SipRegistration::decode(v.as_slice()) else {
                continue;
            };
            match reg.target {
                Some(RegTarget::Uri(u)) => return Ok(Resolved::Uri(u)),
                Some(RegTarget::Destination(d)) => {
                    let Some(node) = Id::from_slice(&d.node) else {
                        continue;
                    };
                    if gr.is_some_and(|g| g != format!("{node:#}")) {
                        continue;
                    }
                    if d.expires_at <= now {
                        expired = true;
                    } else {
                        nodes.push((d.expires_at, node));
                    }
                }
                None => {}
            }
        }
        // The freshest first.
        nodes.sort_by_key(|(e, _)| std::cmp::Reverse(*e));
        nodes.dedup_by_key(|(_, n)| *n);
        Ok(if !nodes.is_empty() {
            Resolved::Nodes(nodes.into_iter().map(|(_, n)| n).collect())
        } else if expired {
            Resolved::Expired
        } else {
            Resolved::Nobody
        })
    }

    /// Sends a request on with our Via on top; and, when it came from `record`, our
    /// Record-Route: one naming the transport of each leg (RFC 5658 double record-routing
    /// when the leg towards `to` and the one it came from differ), the top one for the
    /// side `to` is on.
    pub(super) async fn forward(
        self: &Arc<Self>,
        req: Request,
        to: Hop,
        record: Option<Hop>,
    ) -> Result<(), SipError> {
        let (_, req) = self.prepare(req, to, record)?;
        self.send(req.to_string().into_bytes(), to).await
    }

    /// The request [`Inner::forward`] sends, and the branch of our Via in it.
    pub(super) fn prepare(
        &self,
        mut req: Request,
        to: Hop,
        record: Option<Hop>,
    ) -> Result<(String, Request), SipError> {
        let mf = req
            .max_forwards_header()
            .ok()
            .and_then(|h| h.num().ok())
            .unwrap_or(70);
        let top_branch = req
            .via_header()
            .ok()
            .map(|v| v.value().to_string())
            .unwrap_or_default();
        // Stateless proxy branch (RFC 3261 §16.11): the same for retransmissions.
        let branch = format!(
            "{}.{}",
            hex::encode(
                &Sha256::digest(
                    format!("{}|{top_branch}|{}|{to}", self.node.id, req.uri).as_bytes()
                )[..10],
            ),
            loop_key(&req)
        );
        if top_branch.contains(&format!("{COOKIE}{branch}")) {
            refuse!("loop: the request already went through us");
        }
        // Towards a node: TLS (a secure stream: QUIC) and our Node-ID, so that responses
        // and in-dialog requests come back over an application stream too.
        let node = format!(";{NODE_PARAM}={:#}", self.node.id);
        let (transport, via_node) = match to {
            Hop::Udp(_) => ("UDP", ""),
            Hop::Tcp(_) => ("TCP", ""),
            Hop::Node(_) => ("TLS", node.as_str()),
        };
        let mut headers = Headers::default();
        headers.push(Header::Via(rsip::headers::Via::new(format!(
            "SIP/2.0/{transport} {};branch={COOKIE}{branch}{via_node}",
            self.me()
        ))));
        // Only requests that may start a dialog (no To tag yet) are record-routed.
        let initial = to_tag(&req).is_none();
        if let Some(from) = record.filter(|_| req.method != Method::Register && initial) {
            let entry = |leg: Hop| {
                let t = if matches!(leg, Hop::Tcp(_)) {
                    ";transport=tcp"
                } else {
                    ""
                };
                format!("<sip:{}{t};lr{node}>", self.me())
            };
            let (towards, back) = (entry(to), entry(from));
            let same = towards == back;
            headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new(
                towards,
            )));
            if !same {
                headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new(back)));
            }
        }
        for h in req.headers.iter() {
            match h {
                Header::MaxForwards(_) => headers.push(Header::MaxForwards(
                    rsip::headers::MaxForwards::new((mf.saturating_sub(1)).to_string()),
                )),
                other => headers.push(other.clone()),
            }
        }
        if req.max_forwards_header().is_err() {
            headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("69")));
        }
        req.headers = headers;
        Ok((format!("{COOKIE}{branch}"), req))
    }
}

/// How long a UDP flow whose phone was told Flow-Timer `flow_timer` may stay silent before
/// it counts as failed: twice the timer plus 2 s (a phone sends a keep-alive every 80 to
/// 100% of it, RFC 5626 section 4.4.1; one may be lost).
pub(super) fn flow_silence(flow_timer: u32) -> Duration {
    Duration::from_secs(u64::from(flow_timer) * 2 + 2)
}
