//! The REGISTER handler: bindings checked, kept per device and stored in the overlay.

use super::*;

impl Inner {
    /// REGISTER: the binding is kept here and stored in the overlay under hash(AOR).
    pub(super) async fn register(self: &Arc<Self>, req: Request, src: Hop) -> Result<(), SipError> {
        let to = req.to_header()?.typed()?;
        let Some(aor) = aor_of(&to.uri, &self.cfg.domain) else {
            self.reply(&req, 400, vec![], src).await;
            refuse!("REGISTER To has no user part");
        };
        let Some(user) = self.domain_user(&to.uri) else {
            self.reply(&req, 403, vec![], src).await;
            refuse!(
                "REGISTER for {aor}: this front-end serves the domain {}",
                self.cfg.domain
            );
        };
        if let Some(auth) = &self.cfg.auth {
            if !self.authenticate(&req, src, auth, &user, false).await? {
                return Ok(());
            }
        }
        let default_expires = req
            .expires_header()
            .and_then(|e| e.seconds().ok())
            .unwrap_or(3600);
        let explicit_expires = req.expires_header().and_then(|e| e.seconds().ok());
        // Every Contact of every Contact header, each a change of one binding.
        let mut changes = Vec::new();
        let mut star = false;
        for h in req.contact_headers() {
            match contact::parse(h.value()) {
                Some(contact::Contacts::Star) => star = true,
                Some(contact::Contacts::List(l)) if !l.is_empty() => {
                    for c in l {
                        let expires = c.expires().unwrap_or(default_expires);
                        changes.push((c, expires));
                    }
                }
                _ => {
                    self.reply(&req, 400, vec![], src).await;
                    refuse!("REGISTER of {aor}: malformed Contact {:?}", h.value());
                }
            }
        }
        // The proxies the REGISTER came through (RFC 3327), nearest the phone last.
        let path: Vec<String> = req
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Other(n, v) if n.eq_ignore_ascii_case("path") => Some(v.clone()),
                _ => None,
            })
            .flat_map(|v| {
                contact::split_outside(&v, ',')
                    .into_iter()
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        // RFC 5626: flows are asked for with `Supported: outbound` and a reg-id; RFC 5627
        // temporary GRUUs with `Supported: gruu`.
        let outbound = supports(&req, "outbound");
        let gruu = supports(&req, "gruu");
        let call_id = req
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        // The registrar is the first hop (one Via), or an edge proxy keeps the flow (the
        // first Path URI has `ob`).
        let direct = via_count(&req) == 1;
        let edge_keeps_flow = path.first().is_some_and(|p| has_ob(p));
        let path_hop = match path.first() {
            Some(first) => match path_hop(first) {
                Some(h @ (Hop::Udp(_) | Hop::Tcp(_))) => Some(h),
                _ => {
                    self.reply(&req, 400, vec![], src).await;
                    refuse!("REGISTER of {aor}: Path {first} names no address");
                }
            },
            None => None,
        };
        let changes: Vec<registrar::Change> = if star {
            // RFC 3261 section 10.3 step 6: `*` only alone, with Expires 0.
            if explicit_expires != Some(0) || !changes.is_empty() {
                self.reply(&req, 400, vec![], src).await;
                refuse!("REGISTER of {aor}: Contact * needs Expires: 0 and no other Contact");
            }
            self.devices_of(&aor)
                .into_iter()
                .map(|d| registrar::Change {
                    contact: d.contact,
                    prefs: d.prefs,
                    instance: d.instance,
                    hop: d.hop,
                    expires: 0,
                    path: d.path,
                    reg_id: d.reg_id,
                    call_id: call_id.clone(),
                    temp_gruu: None,
                })
                .collect()
        } else {
            let mut out = Vec::with_capacity(changes.len());
            for (c, expires) in changes {
                let curi = match rsip::Uri::try_from(c.uri.as_str()) {
                    Ok(u) => u,
                    Err(_) if expires == 0 => rsip::Uri::default(),
                    Err(_) => {
                        self.reply(&req, 400, vec![], src).await;
                        refuse!("REGISTER of {aor}: Contact URI {} not understood", c.uri);
                    }
                };
                if expires > 0 && expires < self.cfg.min_expires {
                    let extra = vec![Header::MinExpires(rsip::headers::MinExpires::new(
                        self.cfg.min_expires.to_string(),
                    ))];
                    self.reply(&req, 423, extra, src).await;
                    return Ok(());
                }
                let instance = registrar::instance_of(&c);
                let reg_id = c
                    .param("reg-id")
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|_| outbound && instance.is_some());
                if reg_id.is_some() && !direct && !edge_keeps_flow {
                    // RFC 5626 section 6: a proxy between the phone and us that does not
                    // keep the flow; the phone may register without outbound instead.
                    let status = StatusCode::Other(439, "First Hop Lacks Outbound Support".into());
                    self.reply_status(&req, status, vec![], src).await;
                    refuse!("REGISTER of {aor}: outbound asked for through a proxy without it");
                }
                // An outbound flow is where the REGISTER came from (or its edge proxy,
                // through the Path); a device on TCP is reached on its connection; a
                // Contact asking for TCP over TCP wherever the REGISTER came from; else at
                // its Contact address.
                let hop = match (src, route_hop(&curi)) {
                    _ if reg_id.is_some() && direct => src,
                    (Hop::Tcp(a), _) => Hop::Tcp(a),
                    (_, Some(h @ Hop::Tcp(_))) => h,
                    (_, Some(Hop::Udp(a))) => Hop::Udp(a),
                    // A `node` parameter in a phone's Contact means nothing.
                    (_, Some(Hop::Node(_))) | (_, None) => match (uri_addr(&curi), src) {
                        (Some(a), _) | (None, Hop::Udp(a)) => Hop::Udp(a),
                        _ if expires == 0 => src,
                        _ => {
                            self.reply(&req, 400, vec![], src).await;
                            refuse!("{aor}: Contact {} has no address", c.uri);
                        }
                    },
                };
                let temp_gruu = (gruu && instance.is_some() && expires > 0)
                    .then(|| hex::encode(rand::random::<[u8; 10]>()));
                out.push(registrar::Change {
                    instance,
                    prefs: c.params_text(),
                    contact: c.uri,
                    hop,
                    expires: expires.min(self.cfg.max_expires),
                    path: path.clone(),
                    reg_id,
                    call_id: call_id.clone(),
                    temp_gruu,
                });
            }
            out
        };
        if changes.is_empty() {
            // A query: answer with the current bindings.
            let extra = self.contact_header_for(&aor);
            self.reply(&req, 200, extra, src).await;
            return Ok(());
        }
        let devices = match self.bind(&aor, &user, &changes).await {
            Ok(d) => d,
            Err(Unbound::TooManyDevices) => {
                let status = StatusCode::Other(403, "Too Many Devices".into());
                self.reply_status(&req, status, vec![], src).await;
                refuse!(
                    "REGISTER of {aor}: more than {} devices",
                    registrar::MAX_DEVICES
                );
            }
            Err(Unbound::NotStored(why)) => {
                self.reply(&req, 503, vec![], src).await;
                refuse!("storing the registration of {aor} failed: {why}");
            }
        };
        if let (Some(Hop::Udp(a) | Hop::Tcp(a)), Some(until)) =
            (path_hop, devices.iter().map(|d| d.expires).max())
        {
            self.know(a, until);
        }
        for c in &changes {
            if c.expires == 0 {
                crate::remote_log!(info, "sip_unregistered", %aor, contact = %c.contact, "SIP: unregistered");
            } else {
                crate::remote_log!(info, "sip_registered", %aor, contact = %c.contact, expires = c.expires, devices = devices.len(), "SIP: registered");
            }
        }
        let mut extra = self.contact_header_for(&aor);
        if !path.is_empty() {
            extra.push(Header::Other("Path".into(), path.join(", ")));
        }
        if changes.iter().any(|c| c.reg_id.is_some() && c.expires > 0) {
            extra.push(Header::Require(rsip::headers::Require::new("outbound")));
            if direct && self.cfg.flow_timer > 0 {
                extra.push(Header::Other(
                    "Flow-Timer".into(),
                    self.cfg.flow_timer.to_string(),
                ));
            }
        }
        extra.push(Header::Supported(rsip::headers::Supported::new(
            requests::SUPPORTED,
        )));
        self.reply(&req, 200, extra, src).await;
        Ok(())
    }

    /// Applies `changes` to `aor`'s devices here, stores the result in the overlay and
    /// remembers the devices' addresses as ones requests may go to; the devices after.
    pub(super) async fn bind(
        self: &Arc<Self>,
        aor: &str,
        user: &str,
        changes: &[registrar::Change],
    ) -> Result<Vec<registrar::Device>, Unbound> {
        let now = Instant::now();
        let (before, devices) = {
            let mut e = self.bindings.entry(aor.to_string()).or_default();
            let d = registrar::apply(&e, changes, now).map_err(|_| Unbound::TooManyDevices)?;
            (std::mem::replace(&mut *e, d.clone()), d)
        };
        // The temporary GRUU index follows the bindings.
        for t in registrar::temp_gruus(&before) {
            if registrar::with_temp_gruu(&devices, t).is_none() {
                self.temp_gruus.remove(t);
            }
        }
        for t in registrar::temp_gruus(&devices) {
            self.temp_gruus.insert(t.clone(), aor.to_string());
        }
        if devices.is_empty() {
            self.bindings.remove_if(aor, |_, v| v.is_empty());
        }
        self.store_bindings(aor, user, &devices, now)
            .await
            .map_err(Unbound::NotStored)?;
        for d in &devices {
            if let Hop::Udp(a) | Hop::Tcp(a) = d.hop {
                self.know(a, d.expires);
            }
            // Only with a Flow-Timer does a silent flow fail ([`Inner::flow_alive`]).
            if let (Hop::Udp(a), Some(_), true, 1..) =
                (d.hop, d.reg_id, d.path.is_empty(), self.cfg.flow_timer)
            {
                self.watch_flow(a, now);
            }
        }
        Ok(devices)
    }

    /// The devices of `aor` bound here (expired ones included).
    pub(super) fn devices_of(&self, aor: &str) -> Vec<registrar::Device> {
        self.bindings
            .get(aor)
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The GRUU of device `d` of `aor` here (RFC 5627 pub-gruu).
    pub(super) fn gruu(&self, aor: &str, d: &registrar::Device) -> String {
        format!("{aor};gr={:#}-{}", self.node.id, d.id)
    }

    /// The temporary GRUU of token `token` issued here (RFC 5627 temp-gruu): it names this
    /// node, so that any front-end can carry a request to it, and a random token, not the
    /// user.
    pub(super) fn temp_gruu(&self, token: &str) -> String {
        format!(
            "sip:{TEMP_GRUU_PREFIX}{:#}.{token}@{};gr",
            self.node.id, self.cfg.domain
        )
    }

    /// Stores this front-end's entry of `aor` in the overlay: every device bound here
    /// (none: an expired entry, so that calls get 480), signed for the AOR.
    pub(super) async fn store_bindings(
        self: &Arc<Self>,
        aor: &str,
        user: &str,
        devices: &[registrar::Device],
        now: Instant,
    ) -> Result<(), String> {
        let now_wall = now_ms();
        let at = |i: Instant| now_wall + i.saturating_duration_since(now).as_millis() as u64;
        let pb_devices: Vec<pb::SipDevice> = devices
            .iter()
            .map(|d| pb::SipDevice {
                contact: d.contact.clone(),
                instance: d.instance.clone().unwrap_or_default(),
                expires_at: at(d.expires),
                gruu: self.gruu(aor, d),
            })
            .collect();
        let first = pb_devices.first().cloned().unwrap_or_default();
        let latest = devices.iter().map(|d| d.expires).max().unwrap_or(now);
        let value = pb::SipRegistration {
            target: Some(RegTarget::Destination(pb::SipDestination {
                node: self.node.id.to_bytes().to_vec(),
                contact: first.contact,
                contact_prefs: devices.first().map(|d| d.prefs.clone()).unwrap_or_default(),
                expires_at: at(latest),
                gruu: first.gruu,
                devices: pb_devices,
            })),
        }
        .encode_to_vec();
        let resource = Id::hash_of(aor.as_bytes());
        let left = latest.saturating_duration_since(now).as_secs();
        let lifetime = u32::try_from(left)
            .unwrap_or(u32::MAX)
            .saturating_add(EXPIRED_GRACE_S);
        let signer = match &self.certified {
            Some(c) => Some(c.identity(user, aor)?),
            None => None,
        };
        let name = aor.to_string();
        let stored = self
            .node
            .run(OP_TIMEOUT, move |n, t| {
                let who = signer
                    .unwrap_or_else(|| identities::derived(&n.identity().key.to_bytes(), &name));
                let (res, v) = crate::ops::build_value(
                    &who,
                    &name,
                    KIND_SIP_REGISTRATION,
                    &value,
                    t,
                    lifetime,
                );
                debug_assert_eq!(res, resource);
                n.store(t, res, KIND_SIP_REGISTRATION, vec![v], 0)
            })
            .await
            .and_then(crate::runtime::store_answer);
        stored.map(|_| ()).map_err(|e| e.to_string())
    }

    /// The Contact headers of the 200 to a REGISTER: every binding of `aor` here, with
    /// its expiry and GRUU.
    pub(super) fn contact_header_for(&self, aor: &str) -> Vec<Header> {
        let now = Instant::now();
        self.devices_of(aor)
            .iter()
            .filter(|d| d.expires > now)
            .map(|d| {
                let left = d.expires.saturating_duration_since(now).as_secs();
                let instance = d
                    .instance
                    .as_ref()
                    .map(|i| format!(";+sip.instance=\"<{i}>\""))
                    .unwrap_or_default();
                let reg_id = d.reg_id.map(|r| format!(";reg-id={r}")).unwrap_or_default();
                let temp = d
                    .temp_gruus
                    .last()
                    .map(|t| format!(";temp-gruu=\"{}\"", self.temp_gruu(t)))
                    .unwrap_or_default();
                Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>;expires={left}{instance}{reg_id};pub-gruu=\"{}\"{temp}",
                    d.contact,
                    self.gruu(aor, d)
                )))
            })
            .collect()
    }
}

/// The user part temporary GRUUs start with: `tgruu.<node>.<token>`.
pub(super) const TEMP_GRUU_PREFIX: &str = "tgruu.";

/// Whether `req` lists option tag `tag` in a Supported header (`k` in compact form).
fn supports(req: &Request, tag: &str) -> bool {
    req.headers.iter().any(|h| {
        let v = match h {
            Header::Supported(s) => s.value(),
            Header::Other(n, v) if n.eq_ignore_ascii_case("k") => v.as_str(),
            _ => return false,
        };
        v.split(',').any(|t| t.trim().eq_ignore_ascii_case(tag))
    })
}

/// How many Via values `req` carries (headers may hold comma lists).
fn via_count(req: &Request) -> usize {
    req.headers
        .iter()
        .map(|h| match h {
            Header::Via(v) => contact::split_outside(v.value(), ',').len(),
            _ => 0,
        })
        .sum()
}

/// Whether Path entry `entry` (`<sip:proxy;lr;ob>`) carries the `ob` URI parameter.
fn has_ob(entry: &str) -> bool {
    path_uri(entry).is_some_and(|u| {
        u.params.iter().any(|p| match p {
            rsip::Param::Other(name, _) => name.value().eq_ignore_ascii_case("ob"),
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> Request {
        let text = format!(
            "REGISTER sip:p2psip SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n{extra}\
             From: <sip:a@p2psip>;tag=1\r\nTo: <sip:a@p2psip>\r\nCall-ID: x\r\n\
             CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        match SipMessage::try_from(text.as_str()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("a response"),
        }
    }

    #[test]
    fn option_tags_vias_and_ob_are_read_as_written() {
        assert!(supports(&req("Supported: path, outbound\r\n"), "outbound"));
        assert!(supports(&req("k: gruu\r\n"), "gruu"));
        assert!(!supports(&req("Supported: outbound-x\r\n"), "outbound"));
        assert!(!supports(&req(""), "outbound"));
        assert_eq!(via_count(&req("")), 1);
        assert_eq!(
            via_count(&req("Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2, SIP/2.0/TCP 10.0.0.3;branch=z9hG4bK3\r\n")),
            3
        );
        assert!(has_ob("<sip:edge.example;lr;ob>"));
        assert!(has_ob(" <sip:10.0.0.1:5060;ob;lr>"));
        assert!(!has_ob("<sip:edge.example;lr>;ob"));
        assert!(!has_ob("<sip:ob.example;lr>"));
    }
}
