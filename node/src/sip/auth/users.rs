//! Who the users are: the htdigest users file (`user:realm:HA1`, MD5 or SHA-256), the
//! digest algorithms offered, and the credentials a request carries.

use super::*;

/// A digest algorithm (RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "SHA-256" => Some(Algorithm::Sha256),
            "MD5" => Some(Algorithm::Md5),
            _ => None,
        }
    }

    /// Lower-case hex of the algorithm's hash of `s`.
    pub fn hex(self, s: &str) -> String {
        match self {
            Algorithm::Sha256 => hex::encode(Sha256::digest(s.as_bytes())),
            Algorithm::Md5 => hex::encode(Md5::digest(s.as_bytes())),
        }
    }

    pub(super) fn of_ha1(ha1: &str) -> Option<Algorithm> {
        if !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match ha1.len() {
            32 => Some(Algorithm::Md5),
            64 => Some(Algorithm::Sha256),
            _ => None,
        }
    }
}

/// The algorithms a configuration names, in its order.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, SipError> {
    let algs = names
        .iter()
        .map(|n| {
            Algorithm::parse(n).ok_or_else(|| {
                SipError::Setting(format!(
                    "sip.digest_algorithms: \"SHA-256\" or \"MD5\", not {n:?}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if algs.is_empty() {
        setting!("sip.digest_algorithms names no algorithm");
    }
    Ok(algs)
}

/// The users of a realm: their HA1 per algorithm.
#[derive(Debug, Default, Clone)]
pub struct Users {
    ha1: HashMap<(String, String, Algorithm), String>,
}

impl Users {
    /// Reads a users file (`user:realm:HA1` lines; `#` comments and blank lines skipped).
    pub fn load(path: &Path) -> Result<Users, SipError> {
        let text = std::fs::read_to_string(path).map_err(super::super::io(format!(
            "reading the SIP users file {}",
            path.display()
        )))?;
        Users::parse(&text)
            .map_err(|e| SipError::Setting(format!("SIP users file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Users, SipError> {
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (Some(user), Some(realm), Some(ha1)) = (parts.next(), parts.next(), parts.next())
            else {
                setting!("line {}: not user:realm:HA1", i + 1);
            };
            let Some(alg) = Algorithm::of_ha1(ha1) else {
                setting!(
                    "line {}: HA1 of {user} is neither 32 (MD5) nor 64 (SHA-256) hex digits",
                    i + 1
                );
            };
            if user.is_empty() || realm.is_empty() {
                setting!("line {}: empty user or realm", i + 1);
            }
            users.ha1.insert(
                (user.to_string(), realm.to_string(), alg),
                ha1.to_ascii_lowercase(),
            );
        }
        Ok(users)
    }

    /// The users file lines for `user` in `realm` with `password` (MD5, then SHA-256).
    pub fn lines_for(user: &str, realm: &str, password: &str) -> Result<String, SipError> {
        if user.is_empty() || user.contains([':', '\n', '@']) || realm.contains([':', '\n']) {
            setting!("a user name holds no ':' '@' or newline, a realm no ':' or newline");
        }
        let secret = format!("{user}:{realm}:{password}");
        Ok(format!(
            "{user}:{realm}:{}\n{user}:{realm}:{}\n",
            Algorithm::Md5.hex(&secret),
            Algorithm::Sha256.hex(&secret)
        ))
    }

    pub fn insert_password(&mut self, user: &str, realm: &str, password: &str) {
        let secret = format!("{user}:{realm}:{password}");
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            self.ha1
                .insert((user.into(), realm.into(), alg), alg.hex(&secret));
        }
    }

    /// The secret nonces are made with, the same at every front-end with the same users
    /// of `realm`: a challenge one front-end issued can be answered at another (a
    /// dispatcher that spreads requests over them). Derived from the users' HA1s, which
    /// only those who could answer any challenge know; None without users.
    pub(super) fn nonce_secret(&self, realm: &str) -> Option<[u8; 32]> {
        let mut entries: Vec<(&str, &str, &str)> = self
            .ha1
            .iter()
            .filter(|((_, r, _), _)| r == realm)
            .map(|((u, _, alg), ha1)| (u.as_str(), alg.name(), ha1.as_str()))
            .collect();
        if entries.is_empty() {
            return None;
        }
        entries.sort_unstable();
        let mut h = Sha256::new();
        h.update(b"p2psip SIP nonce secret\0");
        h.update(realm.as_bytes());
        for (user, alg, ha1) in entries {
            for part in [user, alg, ha1] {
                h.update(b"\0");
                h.update(part.as_bytes());
            }
        }
        Some(h.finalize().into())
    }

    pub(super) fn ha1(&self, user: &str, realm: &str, alg: Algorithm) -> Option<&String> {
        self.ha1.get(&(user.to_string(), realm.to_string(), alg))
    }

    /// The users of `realm`, sorted.
    pub fn names(&self, realm: &str) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self
            .ha1
            .keys()
            .filter(|(_, r, _)| r == realm)
            .map(|(u, _, _)| u)
            .collect();
        set.into_iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.ha1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ha1.is_empty()
    }
}

/// Adds `user` of `realm` with `password` to the users file at `path` (replacing its
/// earlier lines; the file is created mode 0600).
pub fn add_user(path: &Path, user: &str, realm: &str, password: &str) -> Result<(), SipError> {
    if password.len() < 8 {
        setting!("a password of at least 8 characters is required");
    }
    let lines = Users::lines_for(user, realm, password)?;
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(super::super::io(format!("reading {}", path.display()))(e)),
    };
    let prefix = format!("{user}:{realm}:");
    let mut text: String = old
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&lines);
    Users::parse(&text)
        .map_err(|e| SipError::Setting(format!("{} is not a users file: {e}", path.display())))?;
    crate::security::private_files::replace(path, text.as_bytes())
        .map_err(|e| SipError::Setting(format!("writing {}: {e}", path.display())))
}

/// The parameters of a `Digest` Authorization (or Proxy-Authorization) header value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Credentials {
    params: Vec<(String, String)>,
}

impl Credentials {
    /// Parses `Digest k=v, k="v", ...` (RFC 7616 section 3.4: tokens or quoted strings
    /// with `\` escapes). None if it is not a Digest value or is malformed.
    pub fn parse(value: &str) -> Option<Credentials> {
        let v = value.trim_start();
        let (scheme, mut rest) = v.split_at(v.find(|c: char| c.is_ascii_whitespace())?);
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
            if rest.is_empty() {
                break;
            }
            let eq = rest.find('=')?;
            let name = rest[..eq].trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
                return None;
            }
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(q) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => out.push(chars.next()?.1),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                value = out;
                rest = &q[end?..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_string();
                rest = &rest[end..];
            }
            if params.len() >= 32 {
                return None;
            }
            params.push((name, value));
        }
        Some(Credentials { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
