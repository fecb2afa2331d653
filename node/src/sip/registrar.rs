//! The bindings a front-end holds (RFC 3261 section 10.3): several devices per AOR, each
//! with its own expiry, identified by its RFC 5626 instance (`+sip.instance`) when it has
//! one, else by its Contact URI; each with its own GRUU (RFC 5627), public and temporary.
//! A device that registers with RFC 5626 outbound has one binding per flow (per
//! `reg-id`). Pure data: the registrar in `register.rs` applies a REGISTER here and stores
//! the result in the overlay.

use super::contact::Contact;
use super::Hop;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Devices kept per AOR at one front-end; a REGISTER adding more is refused (403).
pub const MAX_DEVICES: usize = 16;
/// Temporary GRUUs kept valid per binding (RFC 5627 section 5.1 keeps every one issued
/// since the last Call-ID change; past this the oldest stops working).
pub const MAX_TEMP_GRUUS: usize = 32;

/// A device bound here.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub contact: String,
    /// The Contact's parameters as registered.
    pub prefs: String,
    /// `+sip.instance` without quotes and angle brackets.
    pub instance: Option<String>,
    /// Where requests for the device go.
    pub hop: Hop,
    pub expires: Instant,
    /// What names the device in its GRUU (`gr=<node>-<this>`).
    pub id: String,
    /// The Path (RFC 3327) the REGISTER came through: requests for the device go through
    /// these proxies, as Route entries, in order.
    pub path: Vec<String>,
    /// RFC 5626: the `reg-id` of an outbound registration; `hop` is then its flow (where
    /// the REGISTER came from, or the edge proxy of `path`), not the Contact's address.
    pub reg_id: Option<u32>,
    /// When this binding was last registered (the newest flow of a device is tried first).
    pub since: Instant,
    /// The Call-ID of the registration, and the temporary GRUUs (their tokens, oldest
    /// first) issued under it.
    pub call_id: String,
    pub temp_gruus: Vec<String>,
}

impl Device {
    /// Whether change `c` replaces this binding: the same instance (and, when both are
    /// outbound flows, the same reg-id: RFC 5626 section 6), else (neither has an
    /// instance) the same Contact URI.
    fn replaced_by(&self, c: &Change) -> bool {
        match (&self.instance, &c.instance) {
            (Some(a), Some(b)) if a == b => match (self.reg_id, c.reg_id) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            },
            (None, None) => self.contact == c.contact,
            _ => false,
        }
    }
}

/// The instance of a Contact entry: `+sip.instance="<urn:uuid:...>"` -> `urn:uuid:...`.
pub fn instance_of(c: &Contact) -> Option<String> {
    c.params.iter().find_map(|(n, v)| {
        if !n.eq_ignore_ascii_case("+sip.instance") {
            return None;
        }
        let v = v.as_deref()?.trim().trim_matches('"');
        let v = v.strip_prefix('<').unwrap_or(v);
        let v = v.strip_suffix('>').unwrap_or(v);
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The GRUU id of a device: 16 hex digits of SHA-256 of its instance (else its Contact).
pub fn device_id(instance: &Option<String>, contact: &str) -> String {
    let key = instance.as_deref().unwrap_or(contact);
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// One Contact of a REGISTER, resolved: what to bind and for how long (0: remove).
#[derive(Debug, Clone)]
pub struct Change {
    pub contact: String,
    pub prefs: String,
    pub instance: Option<String>,
    pub hop: Hop,
    pub expires: u32,
    pub path: Vec<String>,
    /// RFC 5626 reg-id, when the registration is an outbound flow.
    pub reg_id: Option<u32>,
    pub call_id: String,
    /// A new temporary GRUU token to issue (RFC 5627; the registrar draws it at random).
    pub temp_gruu: Option<String>,
}

/// Why a REGISTER was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyDevices,
}

/// Applies `changes` (in order) to `devices`, the AOR's bindings here, at `now`; expired
/// bindings are dropped first. Returns the bindings after.
pub fn apply(devices: &[Device], changes: &[Change], now: Instant) -> Result<Vec<Device>, Refused> {
    let mut out: Vec<Device> = devices
        .iter()
        .filter(|d| d.expires > now)
        .cloned()
        .collect();
    for c in changes {
        let at = out.iter().position(|d| d.replaced_by(c));
        // Temporary GRUUs stay valid across refreshes with the same Call-ID.
        let mut temp_gruus: Vec<String> = out
            .iter()
            .filter(|d| d.replaced_by(c) && d.call_id == c.call_id)
            .flat_map(|d| d.temp_gruus.iter().cloned())
            .collect();
        out.retain(|d| !d.replaced_by(c));
        if c.expires == 0 {
            continue;
        }
        temp_gruus.extend(c.temp_gruu.iter().cloned());
        let excess = temp_gruus.len().saturating_sub(MAX_TEMP_GRUUS);
        temp_gruus.drain(..excess);
        let d = Device {
            contact: c.contact.clone(),
            prefs: c.prefs.clone(),
            instance: c.instance.clone(),
            hop: c.hop,
            expires: now + Duration::from_secs(u64::from(c.expires)),
            id: device_id(&c.instance, &c.contact),
            path: c.path.clone(),
            reg_id: c.reg_id,
            since: now,
            call_id: c.call_id.clone(),
            temp_gruus,
        };
        match at {
            Some(i) => out.insert(i.min(out.len()), d),
            None if out.len() >= MAX_DEVICES => return Err(Refused::TooManyDevices),
            None => out.push(d),
        }
    }
    Ok(out)
}

/// The bindings requests for an AOR go to, of `devices` (its bindings here) at `now`:
/// every unexpired one, except that of the outbound flows of one instance only the
/// newest live one counts (RFC 5626 section 5.3: a request goes to one flow of a device,
/// the next only when that one failed). `alive` says whether a flow still stands.
pub fn targets(devices: &[Device], now: Instant, alive: impl Fn(&Device) -> bool) -> Vec<Device> {
    let mut out: Vec<Device> = Vec::new();
    for d in devices.iter().filter(|d| d.expires > now) {
        if d.reg_id.is_some() && !alive(d) {
            continue;
        }
        let twin = out
            .iter()
            .position(|o| o.reg_id.is_some() && d.reg_id.is_some() && o.instance == d.instance);
        match twin {
            Some(i) if out[i].since < d.since => out[i] = d.clone(),
            Some(_) => {}
            None => out.push(d.clone()),
        }
    }
    // The most recently refreshed first.
    out.sort_by_key(|d| std::cmp::Reverse(d.expires));
    out
}

/// The binding of `devices` that temporary GRUU token `token` names.
pub fn with_temp_gruu<'a>(devices: &'a [Device], token: &str) -> Option<&'a Device> {
    devices
        .iter()
        .find(|d| d.temp_gruus.iter().any(|t| t == token))
}

/// The temporary GRUU tokens of `devices`.
pub fn temp_gruus(devices: &[Device]) -> impl Iterator<Item = &String> {
    devices.iter().flat_map(|d| d.temp_gruus.iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn change(contact: &str, instance: Option<&str>, expires: u32) -> Change {
        Change {
            contact: contact.into(),
            prefs: String::new(),
            instance: instance.map(str::to_string),
            hop: Hop::Udp("127.0.0.1:5060".parse().unwrap()),
            expires,
            path: Vec::new(),
            reg_id: None,
            call_id: "c1".into(),
            temp_gruu: None,
        }
    }

    fn flow(instance: &str, reg_id: u32, port: u16) -> Change {
        Change {
            reg_id: Some(reg_id),
            hop: Hop::Udp(SocketAddr::from(([127, 0, 0, 1], port))),
            ..change("sip:a@192.0.2.1", Some(instance), 600)
        }
    }

    #[test]
    fn each_flow_of_an_instance_is_a_binding_and_one_is_called() {
        let t0 = Instant::now();
        let one = apply(&[], &[flow("urn:uuid:1", 1, 5001)], t0).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        let two = apply(&one, &[flow("urn:uuid:1", 2, 5002)], t1).unwrap();
        assert_eq!(two.len(), 2, "a second flow replaced the first");
        assert_eq!(two[0].id, two[1].id, "one device, one GRUU");
        // The same reg-id again: a new flow replaces its old one.
        let again = apply(&two, &[flow("urn:uuid:1", 1, 5003)], t1).unwrap();
        assert_eq!(again.len(), 2);
        let port = |d: &Device| match d.hop {
            Hop::Udp(a) => a.port(),
            _ => 0,
        };
        // One target per instance: the newest live flow.
        let t = targets(&two, t1, |_| true);
        assert_eq!(t.len(), 1);
        assert_eq!(port(&t[0]), 5002);
        let t = targets(&two, t1, |d| port(d) != 5002);
        assert_eq!(t.len(), 1);
        assert_eq!(port(&t[0]), 5001, "a failed flow was not passed over");
        assert!(targets(&two, t1, |_| false).is_empty());
        // Another instance is another device, called as well.
        let three = apply(&two, &[flow("urn:uuid:2", 1, 5009)], t1).unwrap();
        assert_eq!(targets(&three, t1, |_| true).len(), 2);
        // A registration of the instance without outbound replaces all its flows.
        let plain = apply(
            &three,
            &[change("sip:a@192.0.2.1", Some("urn:uuid:1"), 600)],
            t1,
        )
        .unwrap();
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn temporary_gruus_accumulate_under_one_call_id_and_reset_with_another() {
        let t0 = Instant::now();
        let with = |token: &str, call_id: &str| Change {
            temp_gruu: Some(token.into()),
            call_id: call_id.into(),
            ..change("sip:a@192.0.2.1", Some("urn:uuid:1"), 600)
        };
        let a = apply(&[], &[with("t1", "c1")], t0).unwrap();
        let b = apply(&a, &[with("t2", "c1")], t0).unwrap();
        assert_eq!(b[0].temp_gruus, vec!["t1", "t2"]);
        assert!(with_temp_gruu(&b, "t1").is_some());
        let c = apply(&b, &[with("t3", "c2")], t0).unwrap();
        assert_eq!(
            c[0].temp_gruus,
            vec!["t3"],
            "a new Call-ID keeps old temp-gruus"
        );
        let mut d = c;
        for i in 0..(MAX_TEMP_GRUUS + 5) {
            d = apply(&d, &[with(&format!("x{i}"), "c2")], t0).unwrap();
        }
        assert_eq!(d[0].temp_gruus.len(), MAX_TEMP_GRUUS);
        assert!(with_temp_gruu(&d, "t3").is_none());
        // Unregistered: gone.
        let gone = apply(&d, &[change("sip:a@192.0.2.1", Some("urn:uuid:1"), 0)], t0).unwrap();
        assert!(with_temp_gruu(&gone, "x40").is_none());
        assert_eq!(temp_gruus(&gone).count(), 0);
    }

    #[test]
    fn devices_are_added_refreshed_and_removed_one_by_one() {
        let now = Instant::now();
        let one = apply(&[], &[change("sip:a@10.0.0.1", None, 600)], now).unwrap();
        let two = apply(&one, &[change("sip:a@10.0.0.2", None, 300)], now).unwrap();
        assert_eq!(two.len(), 2, "a second device replaced the first");
        assert_ne!(two[0].id, two[1].id, "two devices, one GRUU");
        // The second removes its own Contact: the first stays.
        let left = apply(&two, &[change("sip:a@10.0.0.2", None, 0)], now).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].contact, "sip:a@10.0.0.1");
        // A refresh replaces, with the new expiry.
        let later = now + Duration::from_secs(100);
        let refreshed = apply(&left, &[change("sip:a@10.0.0.1", None, 600)], later).unwrap();
        assert_eq!(refreshed.len(), 1);
        assert_eq!(refreshed[0].expires, later + Duration::from_secs(600));
        // Expired ones are gone.
        let much_later = now + Duration::from_secs(10_000);
        assert!(apply(&refreshed, &[], much_later).unwrap().is_empty());
    }

    #[test]
    fn an_instance_names_its_device_across_contacts() {
        let now = Instant::now();
        let i = Some("urn:uuid:1");
        let a = apply(&[], &[change("sip:a@10.0.0.1:5060", i, 600)], now).unwrap();
        // The same phone from a new address (it moved): one binding, the new Contact.
        let b = apply(&a, &[change("sip:a@10.0.0.9:5060", i, 600)], now).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].contact, "sip:a@10.0.0.9:5060");
        assert_eq!(b[0].id, a[0].id, "its GRUU stays");
        let c = apply(
            &b,
            &[change("sip:a@10.0.0.9:5060", Some("urn:uuid:2"), 600)],
            now,
        )
        .unwrap();
        assert_eq!(c.len(), 2, "another instance is another device");
    }

    #[test]
    fn devices_per_aor_are_bounded() {
        let now = Instant::now();
        let mut d = Vec::new();
        for i in 0..MAX_DEVICES {
            d = apply(&d, &[change(&format!("sip:a@10.0.0.{i}"), None, 60)], now).unwrap();
        }
        let r = apply(&d, &[change("sip:a@10.0.1.1", None, 60)], now);
        assert_eq!(r, Err(Refused::TooManyDevices));
        // Refreshing one still works.
        assert!(apply(&d, &[change("sip:a@10.0.0.3", None, 60)], now).is_ok());
    }

    #[test]
    fn instances_are_read_from_the_quoted_parameter() {
        let c = super::super::contact::parse(
            "<sip:a@10.0.0.1>;+sip.instance=\"<urn:uuid:f81d4fae>\";reg-id=1",
        );
        let Some(super::super::contact::Contacts::List(l)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(instance_of(&l[0]).as_deref(), Some("urn:uuid:f81d4fae"));
    }
}
