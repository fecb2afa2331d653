//! Digest authentication of SIP requests (RFC 3261 section 22, RFC 7616, RFC 8760):
//! SHA-256 and MD5, qop=auth, nonces that carry their own time and a MAC (no state to
//! issue one), expiry with stale=true, replay protection by nonce count, and failed
//! attempts limited per source address and per user.
//!
//! Credentials are a users file in htdigest form, `user:realm:HA1` (Apache's htdigest and
//! Kamailio's `ha1` column hold MD5's HA1, 32 hex digits); a line whose HA1 has 64 hex
//! digits holds SHA-256's HA1 for the same user. `p2psip sip add-user` writes both.
//!
//! The credential parser is ours: rsip's typed Authorization header parses the nonce
//! count as a decimal u8 (it is 8 hex digits, RFC 7616 3.4) and re-serialises the digest
//! URI, which must be hashed exactly as the client sent it.

mod users;

pub use self::users::*;

use crate::sip::SipError;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a nonce is good for; after it, a correct answer gets 401 with stale=true.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Failed attempts per source address, and per user, in one window before further
/// attempts are refused with 403 until the window ends.
pub const FAILURES_MAX: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Nonces whose counts are remembered, and sources/users whose failures are, at most.
const REMEMBERED_MAX: usize = 65_536;

/// What to do with a request after checking its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right: the request comes from this user.
    Authenticated(String),
    /// No usable credentials: challenge (401/407); `stale` when only the nonce expired.
    Challenge { stale: bool },
    /// Too many failed attempts from this source or for this user: 403 (the reason says
    /// which), without a challenge.
    Refused(&'static str),
}

/// Failed attempts in the current window of one key.
#[derive(Debug, Default)]
struct Failures {
    by_ip: HashMap<IpAddr, (u64, u32)>,
    by_user: HashMap<String, (u64, u32)>,
}

/// Issues challenges and checks answers for one realm.
pub struct Authenticator {
    pub realm: String,
    users: Users,
    /// Offered in this order (most preferred first).
    algorithms: Vec<Algorithm>,
    secret: [u8; 32],
    /// Highest nonce count seen per nonce still alive.
    counts: Mutex<HashMap<String, u32>>,
    failures: Mutex<Failures>,
    /// Proxies in front (`sip.trusted_proxies`): every phone behind one shares its
    /// address, so failures from it count per user only.
    trusted: Vec<IpAddr>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    pub fn new(realm: &str, users: Users, algorithms: Vec<Algorithm>) -> Authenticator {
        Authenticator {
            realm: realm.into(),
            secret: users.nonce_secret(realm).unwrap_or_else(rand::random),
            users,
            algorithms,
            counts: Mutex::default(),
            failures: Mutex::default(),
            trusted: Vec::new(),
        }
    }

    /// Failed attempts from these addresses count per user, not per address.
    pub fn with_trusted_proxies(mut self, trusted: Vec<IpAddr>) -> Authenticator {
        self.trusted = trusted;
        self
    }

    fn mac(&self, issued: u64, salt: u64) -> String {
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        m.update(&issued.to_be_bytes());
        m.update(&salt.to_be_bytes());
        m.update(self.realm.as_bytes());
        hex::encode(&m.finalize().into_bytes()[..16])
    }

    /// A fresh nonce: the time it was issued, a random salt (no two challenges share a
    /// nonce, so no two clients share its counts) and a MAC over both.
    fn nonce_at(&self, issued: u64) -> String {
        let salt: u64 = rand::random();
        format!("{issued:016x}{salt:016x}{}", self.mac(issued, salt))
    }

    /// Whether `nonce` is one of ours: Some(expired) if so.
    fn nonce_state(&self, nonce: &str, now: u64) -> Option<bool> {
        if nonce.len() != 64 || !nonce.is_ascii() {
            return None;
        }
        let issued = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let salt = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        // Not a secret comparison of interest: the MAC only proves we issued the nonce.
        if nonce[32..] != self.mac(issued, salt) || issued > now.saturating_add(5) {
            return None;
        }
        Some(now.saturating_sub(issued) > NONCE_LIFETIME.as_secs())
    }

    /// The WWW-Authenticate / Proxy-Authenticate values to send, one per algorithm.
    pub fn challenges(&self, stale: bool) -> Vec<String> {
        let nonce = self.nonce_at(unix_now());
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Whether `src` or `user` is past its failed attempts for this window.
    fn limited(&self, src: IpAddr, user: Option<&str>, now: u64) -> Option<&'static str> {
        let f = self.failures.lock().ok()?;
        let over = |e: Option<&(u64, u32)>| {
            e.is_some_and(|(start, n)| {
                now.saturating_sub(*start) < FAILURE_WINDOW.as_secs() && *n >= FAILURES_MAX
            })
        };
        if !self.trusted.contains(&src) && over(f.by_ip.get(&src)) {
            return Some("too many failed attempts from this address");
        }
        if user.is_some_and(|u| over(f.by_user.get(u))) {
            return Some("too many failed attempts for this user");
        }
        None
    }

    fn failed(&self, src: IpAddr, user: &str, now: u64) {
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        let window = FAILURE_WINDOW.as_secs();
        fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, (u64, u32)>, k: K, now: u64, w: u64) {
            if m.len() >= REMEMBERED_MAX {
                m.retain(|_, (start, _)| now.saturating_sub(*start) < w);
                if m.len() >= REMEMBERED_MAX {
                    return;
                }
            }
            let e = m.entry(k).or_insert((now, 0));
            if now.saturating_sub(e.0) >= w {
                *e = (now, 0);
            }
            e.1 = e.1.saturating_add(1);
        }
        if !self.trusted.contains(&src) {
            bump(&mut f.by_ip, src, now, window);
        }
        bump(&mut f.by_user, user.to_string(), now, window);
    }

    /// Checks the credentials of a `method` request from `src` (the header's value, if
    /// any).
    pub fn check(&self, method: &str, header: Option<&str>, src: IpAddr) -> Verdict {
        self.check_at(method, header, src, unix_now())
    }

    fn check_at(&self, method: &str, header: Option<&str>, src: IpAddr, now: u64) -> Verdict {
        let creds = header.and_then(Credentials::parse);
        let user = creds.as_ref().and_then(|c| c.get("username"));
        if let Some(why) = self.limited(src, user, now) {
            return Verdict::Refused(why);
        }
        let Some(c) = creds.as_ref() else {
            return Verdict::Challenge { stale: false };
        };
        let field = |n| c.get(n).unwrap_or("");
        let (user, nonce, uri, response) = (
            field("username"),
            field("nonce"),
            field("uri"),
            field("response"),
        );
        // Credentials for another realm, or a nonce we did not issue: challenge afresh
        // (not a failure: a phone may hold a stale one from another server).
        if field("realm") != self.realm {
            return Verdict::Challenge { stale: false };
        }
        let Some(expired) = self.nonce_state(nonce, now) else {
            return Verdict::Challenge { stale: false };
        };
        let alg = match c.get("algorithm") {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        };
        let Some(alg) = alg.filter(|a| self.algorithms.contains(a)) else {
            return Verdict::Challenge { stale: false };
        };
        let Some(ha1) = self.users.ha1(user, &self.realm, alg) else {
            self.failed(src, user, now);
            return Verdict::Challenge { stale: false };
        };
        let ha2 = alg.hex(&format!("{method}:{uri}"));
        let qop = c.get("qop");
        let (expected, count) = match qop {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (nc, cnonce) = (field("nc"), field("cnonce"));
                let Some(count) = (nc.len() == 8)
                    .then(|| u32::from_str_radix(nc, 16).ok())
                    .flatten()
                else {
                    return Verdict::Challenge { stale: false };
                };
                (
                    alg.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
                    count,
                )
            }
            // RFC 2069 answers (no qop): each nonce is good for one request.
            None => (alg.hex(&format!("{ha1}:{nonce}:{ha2}")), 1),
            Some(_) => return Verdict::Challenge { stale: false },
        };
        if !expected.eq_ignore_ascii_case(response) {
            self.failed(src, user, now);
            return Verdict::Challenge { stale: false };
        }
        if expired {
            return Verdict::Challenge { stale: true };
        }
        // Replay protection: the count must grow for every request under one nonce.
        let Ok(mut counts) = self.counts.lock() else {
            return Verdict::Challenge { stale: false };
        };
        if counts.len() >= REMEMBERED_MAX && !counts.contains_key(nonce) {
            counts.retain(|n, _| self.nonce_state(n, now) == Some(false));
            if counts.len() >= REMEMBERED_MAX {
                return Verdict::Challenge { stale: true };
            }
        }
        let last = counts.entry(nonce.to_string()).or_insert(0);
        if count <= *last {
            return Verdict::Challenge { stale: true };
        }
        *last = count;
        Verdict::Authenticated(user.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn front_ends_with_the_same_users_share_the_nonce_secret_and_no_one_else() {
        let users = |pw: &str| {
            let mut u = Users::default();
            u.insert_password("alice", "example.com", pw);
            u.insert_password("bob", "example.com", "builder1");
            u
        };
        let a = Authenticator::new("example.com", users("wonderland"), vec![Algorithm::Md5]);
        let b = Authenticator::new("example.com", users("wonderland"), vec![Algorithm::Md5]);
        assert_eq!(a.secret, b.secret);
        let nonce = a.nonce_at(unix_now());
        assert_eq!(b.nonce_state(&nonce, unix_now()), Some(false));
        // Another password, another realm, or no users: another secret.
        let c = Authenticator::new("example.com", users("changed!"), vec![Algorithm::Md5]);
        assert_ne!(a.secret, c.secret);
        assert_eq!(c.nonce_state(&nonce, unix_now()), None);
        let d = Authenticator::new("example.org", users("wonderland"), vec![Algorithm::Md5]);
        assert_ne!(a.secret, d.secret);
        let e = Authenticator::new("example.com", Users::default(), vec![Algorithm::Md5]);
        let f = Authenticator::new("example.com", Users::default(), vec![Algorithm::Md5]);
        assert_ne!(e.secret, f.secret, "without users the secret is random");
    }

    fn auth() -> Authenticator {
        let mut users = Users::default();
        users.insert_password("alice", "example.org", "wonderland");
        users.insert_password("bob", "example.org", "builder");
        Authenticator::new(
            "example.org",
            users,
            vec![Algorithm::Sha256, Algorithm::Md5],
        )
    }

    /// A client's answer to `nonce`, as RFC 7616 section 3.4.1 computes it.
    fn answer(alg: Algorithm, user: &str, pass: &str, nonce: &str, nc: &str) -> String {
        let ha1 = alg.hex(&format!("{user}:example.org:{pass}"));
        let ha2 = alg.hex("REGISTER:sip:example.org");
        let resp = alg.hex(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"example.org\", nonce=\"{nonce}\", \
             uri=\"sip:example.org\", response=\"{resp}\", algorithm={}, qop=auth, \
             nc={nc}, cnonce=\"abc\"",
            alg.name()
        )
    }

    fn nonce_of(challenge: &str) -> String {
        challenge.split("nonce=\"").nth(1).unwrap()[..64].to_string()
    }

    #[test]
    fn the_rfc_7616_example_response_is_reproduced() {
        // RFC 7616 section 3.9.1 (GET /dir/index.html, Mufasa / Circle of Life).
        let ha1 = Algorithm::Sha256.hex("Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = Algorithm::Sha256.hex("GET:/dir/index.html");
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let r = Algorithm::Sha256.hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let ha1 = Algorithm::Md5.hex("Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = Algorithm::Md5.hex("GET:/dir/index.html");
        let r = Algorithm::Md5.hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn right_credentials_pass_wrong_ones_are_challenged_then_refused() {
        let a = auth();
        assert_eq!(
            a.check("REGISTER", None, SRC),
            Verdict::Challenge { stale: false }
        );
        let ch = a.challenges(false);
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        let nonce = nonce_of(&ch[0]);
        for (alg, nc) in [
            (Algorithm::Sha256, "00000001"),
            (Algorithm::Md5, "00000002"),
        ] {
            let h = answer(alg, "alice", "wonderland", &nonce, nc);
            assert_eq!(
                a.check("REGISTER", Some(&h), SRC),
                Verdict::Authenticated("alice".into()),
                "{alg:?}"
            );
        }
        // The same count again is a replay.
        let again = answer(Algorithm::Md5, "alice", "wonderland", &nonce, "00000002");
        assert_eq!(
            a.check("REGISTER", Some(&again), SRC),
            Verdict::Challenge { stale: true }
        );
        // Wrong passwords: challenged, then refused for the window.
        for i in 0..FAILURES_MAX {
            let h = answer(
                Algorithm::Sha256,
                "bob",
                "guess",
                &nonce,
                &format!("{:08x}", i + 1),
            );
            assert_eq!(
                a.check("REGISTER", Some(&h), SRC),
                Verdict::Challenge { stale: false }
            );
        }
        let right = answer(Algorithm::Sha256, "bob", "builder", &nonce, "00000009");
        assert!(matches!(
            a.check("REGISTER", Some(&right), SRC),
            Verdict::Refused(_)
        ));
        let elsewhere: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(
            matches!(
                a.check("REGISTER", Some(&right), elsewhere),
                Verdict::Refused(_)
            ),
            "the user is limited from every address"
        );
    }

    #[test]
    fn expired_and_foreign_nonces_are_challenged_afresh() {
        let a = auth();
        let old = a.nonce_at(unix_now() - NONCE_LIFETIME.as_secs() - 10);
        let h = answer(Algorithm::Sha256, "alice", "wonderland", &old, "00000001");
        assert_eq!(
            a.check("REGISTER", Some(&h), SRC),
            Verdict::Challenge { stale: true }
        );
        let forged = format!("{:016x}{}", unix_now(), "0".repeat(48));
        let h = answer(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &forged,
            "00000001",
        );
        assert_eq!(
            a.check("REGISTER", Some(&h), SRC),
            Verdict::Challenge { stale: false }
        );
        let other = Authenticator::new("example.org", Users::default(), vec![Algorithm::Md5]);
        let theirs = nonce_of(&other.challenges(false)[0]);
        let h = answer(
            Algorithm::Sha256,
            "alice",
            "wonderland",
            &theirs,
            "00000001",
        );
        assert_eq!(
            a.check("REGISTER", Some(&h), SRC),
            Verdict::Challenge { stale: false },
            "another server's nonce"
        );
    }

    #[test]
    fn credentials_parse_quoted_escaped_and_bare_values() {
        let c = Credentials::parse(
            "Digest username=\"a\\\"b\",realm=\"r, s\", nc=00000001 ,qop=auth, uri=\"sip:x\"",
        )
        .unwrap();
        assert_eq!(c.get("username"), Some("a\"b"));
        assert_eq!(c.get("realm"), Some("r, s"));
        assert_eq!(c.get("nc"), Some("00000001"));
        assert_eq!(c.get("qop"), Some("auth"));
        assert_eq!(c.get("uri"), Some("sip:x"));
        assert!(Credentials::parse("Basic YWxhZGRpbjpvcGVuc2VzYW1l").is_none());
        assert!(Credentials::parse("Digest username=\"unterminated").is_none());
        assert!(Credentials::parse("Digest").is_none());
    }

    #[test]
    fn users_files_hold_htdigest_lines_for_both_algorithms() {
        let text = Users::lines_for("alice", "example.org", "wonderland").unwrap();
        let users = Users::parse(&format!("# users\n\n{text}")).unwrap();
        assert_eq!(users.len(), 2);
        // Apache's htdigest line for the same user (MD5 HA1).
        assert!(text.starts_with(&format!(
            "alice:example.org:{}\n",
            Algorithm::Md5.hex("alice:example.org:wonderland")
        )));
        assert!(Users::parse("alice:example.org:xyz").is_err());
        assert!(Users::parse("alice").is_err());
        assert!(Users::lines_for("a:b", "r", "p").is_err());
    }
}
