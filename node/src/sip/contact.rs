//! Contact header values as RFC 3261 section 20.10 allows them: `*`, or a comma list of
//! entries, each a name-addr (`"Display" <uri>;params`) or an addr-spec (`uri;params`),
//! with header parameters whose values may be quoted strings (RFC 5626's
//! `+sip.instance="<urn:uuid:...>"`, RFC 3840's `methods="INVITE,BYE"`).
//!
//! Ours because rsip 0.4's typed Contact refuses quoted parameter values and comma lists
//! (its tokenizer stops at the first `"` or `,`): the REGISTERs of baresip and linphone
//! with their default settings failed there.

/// One Contact entry: its URI (as written) and its header parameters (values as written,
/// quotes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub uri: String,
    pub params: Vec<(String, Option<String>)>,
}

/// A Contact header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contacts {
    /// `*`: every binding (only with Expires 0).
    Star,
    List(Vec<Contact>),
}

/// Splits `s` at each `sep` that is outside a quoted string and outside `<...>`.
pub(crate) fn split_outside(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start) = (Vec::new(), 0);
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == sep && !quoted && !angle => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Where the `<` opening a name-addr's URI is (not one inside the quoted display name).
fn open_angle(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn params_of(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for p in split_outside(s, ';').into_iter().skip(1) {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (p, None),
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '"') {
            return None;
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    Some(out)
}

/// Parses a Contact header value; None if it is malformed.
pub fn parse(value: &str) -> Option<Contacts> {
    let value = value.trim();
    if value == "*" {
        return Some(Contacts::Star);
    }
    let mut list = Vec::new();
    for entry in split_outside(value, ',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        let (uri, rest) = match open_angle(entry) {
            Some(open) => {
                let close = open + entry[open..].find('>')?;
                (&entry[open + 1..close], &entry[close + 1..])
            }
            None => {
                // addr-spec: the parameters after the URI are the header's.
                let first = split_outside(entry, ';');
                let uri = first.first().copied().unwrap_or("");
                (uri, &entry[uri.len()..])
            }
        };
        let uri = uri.trim();
        if uri.is_empty() || uri.contains(|c: char| c.is_whitespace() || c == '"') {
            return None;
        }
        let params = params_of(&format!("x{rest}"))?;
        list.push(Contact {
            uri: uri.to_string(),
            params,
        });
    }
    Some(Contacts::List(list))
}

impl Contact {
    /// The value of parameter `name` (lower case), quotes taken off; None when absent or
    /// valueless.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| Some(v.as_deref()?.trim_matches('"')))
    }

    /// The `expires` parameter, if any and numeric.
    pub fn expires(&self) -> Option<u32> {
        self.param("expires")?.parse().ok()
    }

    /// The parameters as written (`;name=value...`), `expires` left out.
    pub fn params_text(&self) -> String {
        self.params
            .iter()
            .filter(|(n, _)| n != "expires")
            .map(|(n, v)| match v {
                Some(v) => format!(";{n}={v}"),
                None => format!(";{n}"),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(v: &str) -> Contact {
        match parse(v).unwrap() {
            Contacts::List(mut l) if l.len() == 1 => l.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_forms_phones_send_by_default_parse() {
        let c = one("<sip:alice@10.0.0.1:5070;transport=tcp>;+sip.instance=\"<urn:uuid:0f1e-2d3c>\";reg-id=1;expires=600");
        assert_eq!(c.uri, "sip:alice@10.0.0.1:5070;transport=tcp");
        assert_eq!(c.expires(), Some(600));
        assert_eq!(
            c.params_text(),
            ";+sip.instance=\"<urn:uuid:0f1e-2d3c>\";reg-id=1"
        );
        let c = one("<sip:a@h>;methods=\"INVITE,ACK,BYE\"");
        assert_eq!(
            c.params,
            vec![("methods".into(), Some("\"INVITE,ACK,BYE\"".into()))]
        );
        let c = one("\"Alice, <the> first\" <sip:a@h>;+g.3gpp.icsi-ref=\"urn%3Aurn-7\"");
        assert_eq!(c.uri, "sip:a@h");
        let c = one("sip:a@h:5060;expires=60");
        assert_eq!((c.uri.as_str(), c.expires()), ("sip:a@h:5060", Some(60)));
        let c = one("<sip:a@[2001:db8::1]:5070>;expires=5");
        assert_eq!(c.uri, "sip:a@[2001:db8::1]:5070");
        match parse("<sip:a@h>;expires=1 , <sip:b@h>").unwrap() {
            Contacts::List(l) => assert_eq!(l.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(" * "), Some(Contacts::Star));
    }

    #[test]
    fn malformed_contacts_are_refused() {
        for v in [
            "",
            "<sip:a@h",
            "<sip:a@h>, ",
            "<>",
            "<sip:a@h>;\"x\"=1",
            "sip:a b@h",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
    }
}
