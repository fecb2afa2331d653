//! The REGISTER handler: bindings checked, kept per device and stored in the overlay.

use super::*;

impl Inner {
    /// REGISTER: the binding is kept here and stored in the overlay under hash(AOR).
    pub(super) async fn register(self: &Arc<Self>, req: Request, src: Hop) -> anyhow::Result<()> {
        let to = req.to_header()?.typed()?;
        let Some(aor) = aor_of(&to.uri, &self.cfg.domain) else {
            self.reply(&req, 400, vec![], src).await;
            bail!("REGISTER To has no user part");
        };
        let Some(user) = self.domain_user(&to.uri) else {
            self.reply(&req, 403, vec![], src).await;
            bail!(
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
                    bail!("REGISTER of {aor}: malformed Contact {:?}", h.value());
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
        let path_hop = match path.first() {
            Some(first) => match path_hop(first) {
                Some(h @ (Hop::Udp(_) | Hop::Tcp(_))) => Some(h),
                _ => {
                    self.reply(&req, 400, vec![], src).await;
                    bail!("REGISTER of {aor}: Path {first} names no address");
                }
            },
            None => None,
        };
        let changes: Vec<registrar::Change> = if star {
            // RFC 3261 section 10.3 step 6: `*` only alone, with Expires 0.
            if explicit_expires != Some(0) || !changes.is_empty() {
                self.reply(&req, 400, vec![], src).await;
                bail!("REGISTER of {aor}: Contact * needs Expires: 0 and no other Contact");
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
                        bail!("REGISTER of {aor}: Contact URI {} not understood", c.uri);
                    }
                };
                if expires > 0 && expires < self.cfg.min_expires {
                    let extra = vec![Header::MinExpires(rsip::headers::MinExpires::new(
                        self.cfg.min_expires.to_string(),
                    ))];
                    self.reply(&req, 423, extra, src).await;
                    return Ok(());
                }
                // A device on TCP is reached on its connection; a Contact asking for TCP
                // over TCP wherever the REGISTER came from; else at its Contact address.
                let hop = match (src, route_hop(&curi)) {
                    (Hop::Tcp(a), _) => Hop::Tcp(a),
                    (_, Some(h @ Hop::Tcp(_))) => h,
                    (_, Some(Hop::Udp(a))) => Hop::Udp(a),
                    // A `node` parameter in a phone's Contact means nothing.
                    (_, Some(Hop::Node(_))) | (_, None) => match (uri_addr(&curi), src) {
                        (Some(a), _) | (None, Hop::Udp(a)) => Hop::Udp(a),
                        _ if expires == 0 => src,
                        _ => {
                            self.reply(&req, 400, vec![], src).await;
                            bail!("{aor}: Contact {} has no address", c.uri);
                        }
                    },
                };
                out.push(registrar::Change {
                    instance: registrar::instance_of(&c),
                    prefs: c.params_text(),
                    contact: c.uri,
                    hop,
                    expires: expires.min(self.cfg.max_expires),
                    path: path.clone(),
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
                bail!(
                    "REGISTER of {aor}: more than {} devices",
                    registrar::MAX_DEVICES
                );
            }
            Err(Unbound::NotStored(why)) => {
                self.reply(&req, 503, vec![], src).await;
                bail!("storing the registration of {aor} failed: {why}");
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
        let devices = {
            let mut e = self.bindings.entry(aor.to_string()).or_default();
            let d = registrar::apply(&e, changes, now).map_err(|_| Unbound::TooManyDevices)?;
            *e = d.clone();
            d
        };
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
        let stored = tokio::time::timeout(
            OP_TIMEOUT,
            self.node.op(move |n, t| {
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
            }),
        )
        .await;
        match stored {
            Ok(Ok(Event::Completed { outcome: Ok(_), .. })) => Ok(()),
            Err(_) => Err("timed out".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(Event::Completed {
                outcome: Err(e), ..
            })) => Err(format!("{e:?}")),
            Ok(Ok(_)) => Err("unexpected event".into()),
        }
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
                Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>;expires={left}{instance};pub-gruu=\"{}\"",
                    d.contact,
                    self.gruu(aor, d)
                )))
            })
            .collect()
    }
}
