//! The bindings a front-end holds (RFC 3261 section 10.3): several devices per AOR, each
//! with its own expiry, identified by its RFC 5626 instance (`+sip.instance`) when it has
//! one, else by its Contact URI; each with its own GRUU (RFC 5627). Pure data: the
//! registrar in `mod.rs` applies a REGISTER here and stores the result in the overlay.

use super::contact::Contact;
use super::Hop;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Devices kept per AOR at one front-end; a REGISTER adding more is refused (403).
pub const MAX_DEVICES: usize = 16;

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
}

impl Device {
    /// Whether `c` names this device: the same instance, else (neither has one) the same
    /// Contact URI.
    fn is(&self, instance: &Option<String>, contact: &str) -> bool {
        match (&self.instance, instance) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.contact == contact,
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
        let at = out.iter().position(|d| d.is(&c.instance, &c.contact));
        if c.expires == 0 {
            if let Some(i) = at {
                out.remove(i);
            }
            continue;
        }
        let d = Device {
            contact: c.contact.clone(),
            prefs: c.prefs.clone(),
            instance: c.instance.clone(),
            hop: c.hop,
            expires: now + Duration::from_secs(u64::from(c.expires)),
            id: device_id(&c.instance, &c.contact),
            path: c.path.clone(),
        };
        match at {
            Some(i) => out[i] = d,
            None if out.len() >= MAX_DEVICES => return Err(Refused::TooManyDevices),
            None => out.push(d),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(contact: &str, instance: Option<&str>, expires: u32) -> Change {
        Change {
            contact: contact.into(),
            prefs: String::new(),
            instance: instance.map(str::to_string),
            hop: Hop::Udp("127.0.0.1:5060".parse().unwrap()),
            expires,
            path: Vec::new(),
        }
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
