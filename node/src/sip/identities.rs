//! Who signs a SIP registration in the overlay (USER-NODE-MATCH: the signer's user name is
//! the AOR, the dictionary key its Node-ID).
//!
//! - **Enrolled overlays**: each user of the front-end has a key and a certificate the
//!   overlay's CA issued for `sip:<user>@<domain>` (`p2psip ca issue-sip-users`), kept in
//!   `sip.user_certificates` as `<user>.key` and `<user>.pem`. Peers check the certificate
//!   like any other (issued by the CA, valid, not revoked), so the front-end works with
//!   `allow_self_signed = false` and nobody without that certificate can write the user's
//!   registrations.
//! - **Self-signed overlays** (or without that directory): a key for the AOR derived from
//!   the node's own key. Any key may then write any AOR's registrations (docs/security.md).

use crate::sip::SipError;
use p2psip_proto::security::Identity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::security::trust::Trust;

/// Whether `user` may name files of a user-certificates directory: letters, digits and
/// `.` `_` `+` `-`, not starting with a dot, at most 128 bytes.
pub fn file_safe(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && !user.starts_with('.')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// The key and certificate files of `user` in `dir`.
pub fn files_of(dir: &Path, user: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{user}.key")),
        dir.join(format!("{user}.pem")),
    )
}

/// Certified identities of the front-end's users, read from a directory on first use.
pub struct UserCertificates {
    dir: PathBuf,
    trust: Arc<Trust>,
    loaded: Mutex<HashMap<String, Identity>>,
}

/// Users whose identities are remembered at most (a users file is not larger).
const LOADED_MAX: usize = 100_000;

impl UserCertificates {
    pub fn new(dir: PathBuf, trust: Arc<Trust>) -> UserCertificates {
        UserCertificates {
            dir,
            trust,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The identity signing `aor`'s registrations for `user`, its certificate checked now
    /// (expired or revoked ones are refused); the error says what is wrong and what to run.
    pub fn identity(&self, user: &str, aor: &str) -> Result<Identity, String> {
        if !file_safe(user) {
            return Err(format!(
                "user name {user:?} cannot name a certificate file (letters, digits, . _ + -)"
            ));
        }
        let cached = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned();
        let who = match cached {
            Some(w) => w,
            None => {
                let w = self.load(user, aor)?;
                let mut m = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= LOADED_MAX {
                    m.clear();
                }
                m.insert(user.to_string(), w.clone());
                w
            }
        };
        // Revocation and expiry may have changed since it was read.
        let der = who.certificate.as_deref().unwrap_or_default();
        if let Err(why) = p2psip_proto::security::CertificateCheck::binding(&*self.trust, der) {
            self.loaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(user);
            return Err(format!("the certificate of {aor}: {why}"));
        }
        Ok(who)
    }

    fn load(&self, user: &str, aor: &str) -> Result<Identity, String> {
        let (key, pem) = files_of(&self.dir, user);
        let hint = format!(
            "(`p2psip ca issue-sip-users --dir CA --users-file FILE --out {}` issues them)",
            self.dir.display()
        );
        let seed = crate::identity::read_seed(&key)
            .map_err(|e| format!("no key for {aor}: {e:#} {hint}"))?;
        let der = crate::security::trust::read_cert(&pem)
            .map_err(|e| format!("no certificate for {aor}: {e:#} {hint}"))?;
        let binding = self
            .trust
            .check(&der)
            .map_err(|e| format!("{}: {e}", pem.display()))?;
        if binding.user != aor {
            return Err(format!(
                "{} is for {:?}, not {aor:?}",
                pem.display(),
                binding.user
            ));
        }
        if binding.key != *Identity::from_seed(seed, "").key.verifying_key().as_bytes() {
            return Err(format!(
                "{} was issued for another key than {}",
                pem.display(),
                key.display()
            ));
        }
        Ok(Identity::enrolled(seed, &binding, der))
    }
}

/// What [`issue`] did for one user.
pub enum SipUserIssued {
    Issued {
        aor: String,
        issued: crate::ca::Issued,
    },
    /// The user already had a certificate there (kept; `renew` replaces it).
    Kept { aor: String },
}

/// Issues, for each user of `domain` in `users`, a key (`out/<user>.key`, made if absent)
/// and a certificate binding `sip:<user>@<domain>` to it (`out/<user>.pem`): the directory a
/// front-end uses as `sip.user_certificates`. Existing certificates are kept unless `renew`.
/// Each front-end gets its own directory (its registrations are its own dictionary entries).
pub fn issue(
    dir: &Path,
    domain: &str,
    users: &[String],
    out: &Path,
    valid_days: u32,
    renew: bool,
) -> Result<Vec<SipUserIssued>, SipError> {
    if users.is_empty() {
        setting!("no users of the domain {domain:?} to issue certificates for");
    }
    if let Some(bad) = users.iter().find(|u| !file_safe(u)) {
        setting!("user name {bad:?} cannot name a certificate file (letters, digits, . _ + -)");
    }
    crate::security::private_files::create_dir(out)?;
    let mut done = Vec::with_capacity(users.len());
    for user in users {
        let aor = format!("sip:{user}@{}", domain.to_ascii_lowercase());
        let (key, pem) = files_of(out, user);
        if pem.exists() && !renew {
            done.push(SipUserIssued::Kept { aor });
            continue;
        }
        let seed = if key.exists() {
            crate::identity::read_seed(&key)?
        } else {
            let s = crate::identity::generate_seed();
            crate::identity::write_seed(&key, &s)?;
            s
        };
        let public = *p2psip_proto::security::Identity::from_seed(seed, "")
            .key
            .verifying_key()
            .as_bytes();
        let issued = crate::ca::ca_issue(dir, &aor, &public, None, valid_days, 0)?;
        let tmp = pem.with_extension("pem.new");
        std::fs::write(&tmp, &issued.pem)
            .map_err(super::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &pem).map_err(super::io(format!("writing {}", pem.display())))?;
        done.push(SipUserIssued::Issued { aor, issued });
    }
    Ok(done)
}

/// The self-signed identity of `aor` at a node whose key is `node_key`: the same for
/// every refresh, so a refresh replaces the node's entry in the AOR's dictionary.
pub fn derived(node_key: &[u8; 32], aor: &str) -> Identity {
    let mut h = Sha256::new();
    h.update(b"p2psip sip aor\0");
    h.update(node_key);
    h.update(aor.as_bytes());
    Identity::from_seed(h.finalize().into(), aor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_user_names_name_files() {
        for ok in ["alice", "bob.smith", "user_0", "a+b", "x-1"] {
            assert!(file_safe(ok), "{ok}");
        }
        for bad in [
            "",
            "../ca",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            "ä",
            &"x".repeat(129),
        ] {
            assert!(!file_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn derived_identities_are_stable_per_node_and_aor() {
        let k = [7u8; 32];
        let a = derived(&k, "sip:alice@p2psip");
        assert_eq!(a.node_id, derived(&k, "sip:alice@p2psip").node_id);
        assert_ne!(a.node_id, derived(&k, "sip:bob@p2psip").node_id);
        assert_ne!(a.node_id, derived(&[8u8; 32], "sip:alice@p2psip").node_id);
        assert_eq!(a.user, "sip:alice@p2psip");
    }
}
