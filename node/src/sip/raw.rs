//! SIP text the parser (rsip) does not keep or cannot read: a response's status line as
//! the sender wrote it (rsip replaces known codes' reason phrases with its own), and the
//! answer to a request it cannot parse, built from the raw header lines (RFC 3261 section
//! 8.2: 505 for another version, 405 with Allow for an unknown method, 400 with the reason
//! otherwise).

/// The start of every To tag the front-end puts in answers of its own (so that their
/// ACKs are recognised and end here).
pub const LOCAL_TAG: &str = "p2psip-";

/// The methods the front-end takes (the Allow header's value).
pub const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH";

/// The first line of `bytes` (without its line end), if it is printable text.
pub fn first_line(bytes: &[u8]) -> Option<&str> {
    let end = bytes
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(bytes.len());
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    line.chars()
        .all(|c| c == '\t' || !c.is_control())
        .then_some(line)
}

/// `serialized` (a response rsip wrote) with its status line replaced by `status_line`
/// (the one the response arrived with), when that one has the same code.
pub fn with_status_line(serialized: String, status_line: &str) -> String {
    let Some((ours, rest)) = serialized.split_once("\r\n") else {
        return serialized;
    };
    let code = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
    if !status_line.starts_with("SIP/2.0 ") || code(ours) != code(status_line) {
        return serialized;
    }
    format!("{status_line}\r\n{rest}")
}

/// The header lines of a message head, unfolded (RFC 3261 section 7.3.1), as (name, value).
fn header_lines(head: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines().skip(1) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// The full name of a header written in its compact form (RFC 3261 section 7.3.3), or as
/// given.
fn canonical(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "v" | "via" => "Via".into(),
        "f" | "from" => "From".into(),
        "t" | "to" => "To".into(),
        "i" | "call-id" => "Call-ID".into(),
        "cseq" => "CSeq".into(),
        other => other.into(),
    }
}

/// A reason phrase from `why`: printable ASCII, at most 60 characters.
pub fn phrase(why: &str) -> String {
    let p: String = why
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .take(60)
        .collect();
    p.trim().to_string()
}

/// What is wrong in a head the parser refused, as far as its lines show.
fn what_is_wrong(head: &str) -> String {
    let lines: Vec<&str> = head.lines().collect();
    if let Some(i) = lines
        .iter()
        .skip(1)
        .position(|l| !l.is_empty() && !l.starts_with([' ', '\t']) && !l.contains(':'))
    {
        return format!("Malformed header line {}", i + 2);
    }
    if let Some((name, _)) = lines.iter().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let bad = n.trim().is_empty() || n.trim().contains([' ', '\t']);
        bad.then_some((n, v))
    }) {
        return format!("Malformed header name {:?}", name.trim());
    }
    "Malformed request (request line or header values)".into()
}

/// The answer to a request that could not be parsed, or None when none can be sent: not a
/// request line, an ACK (never answered), or no Via to answer along.
pub fn answer_unparsable(bytes: &[u8]) -> Option<String> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let line = first_line(bytes)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(_uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if method.is_empty()
        || !method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
    {
        return None;
    }
    if method.eq_ignore_ascii_case("ACK") {
        return None;
    }
    let known = ALLOW.split(", ").any(|m| m.eq_ignore_ascii_case(method));
    let (status, extra) = if !version.eq_ignore_ascii_case("SIP/2.0") {
        ("505 Version Not Supported".to_string(), String::new())
    } else if !known {
        (
            "405 Method Not Allowed".to_string(),
            format!("Allow: {ALLOW}\r\n"),
        )
    } else {
        (
            format!("400 {}", phrase(&what_is_wrong(&head))),
            String::new(),
        )
    };
    answer(&head, &status, &extra, "e")
}

/// A response `status` (`486 Busy Here`) to the request whose head is `head`: its Vias,
/// From, To (with the tag `LOCAL_TAG` + `tag` if it has none), Call-ID and CSeq, then
/// `extra` header lines; None without a Via.
pub fn answer(head: &str, status: &str, extra: &str, tag: &str) -> Option<String> {
    let mut out = format!("SIP/2.0 {status}\r\n");
    let mut via = false;
    for (name, value) in header_lines(head) {
        let name = canonical(&name);
        match name.as_str() {
            "Via" => {
                via = true;
                out += &format!("Via: {value}\r\n");
            }
            "To" if !value.contains(";tag=") => {
                out += &format!("To: {value};tag={LOCAL_TAG}{tag}\r\n")
            }
            "From" | "To" | "Call-ID" | "CSeq" => out += &format!("{name}: {value}\r\n"),
            _ => {}
        }
    }
    if !via {
        return None;
    }
    out += extra;
    out += "Server: p2psip\r\nContent-Length: 0\r\n\r\n";
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:alice@p2psip SIP/2.0\r\n\
        v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
        f: <sip:bob@p2psip>;tag=1\r\nt: <sip:alice@p2psip>\r\ni: c1\r\nCSeq: 1 OPTIONS\r\n\r\n";

    #[test]
    fn unparsable_requests_get_the_answer_rfc_3261_gives() {
        let r = answer_unparsable(
            &OPTIONS
                .replace("SIP/2.0\r\nv:", "SIP/3.0\r\nv:")
                .into_bytes(),
        )
        .unwrap();
        assert!(r.starts_with("SIP/2.0 505 "), "{r}");
        let r = answer_unparsable(OPTIONS.replacen("OPTIONS", "FOO", 1).as_bytes()).unwrap();
        assert!(
            r.starts_with("SIP/2.0 405 ") && r.contains("Allow: INVITE"),
            "{r}"
        );
        let garbled = OPTIONS.replace("i: c1\r\n", "i: c1\r\nno colon \u{e9}\r\n");
        let r = answer_unparsable(garbled.as_bytes()).unwrap();
        assert!(
            r.starts_with("SIP/2.0 400 Malformed header line 6\r\n"),
            "{r}"
        );
        assert_eq!(phrase("Bad\u{7} CSeq \u{e9}"), "Bad  CSeq");
        // Compact forms come back in full; the To gets a tag.
        for h in [
            "Via: SIP/2.0/UDP 10.0.0.1",
            "From: <sip:bob",
            "Call-ID: c1",
            "CSeq: 1 OPTIONS",
        ] {
            assert!(r.contains(h), "{h} missing: {r}");
        }
        assert!(r.contains("To: <sip:alice@p2psip>;tag="), "{r}");
    }

    #[test]
    fn what_cannot_be_answered_is_not() {
        assert!(answer_unparsable(b"\x16\x03\x01 garbage").is_none());
        assert!(answer_unparsable(OPTIONS.replacen("OPTIONS", "ACK", 1).as_bytes()).is_none());
        let no_via = OPTIONS.replace("v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n", "");
        assert!(answer_unparsable(no_via.as_bytes()).is_none());
        assert!(answer_unparsable(b"OPTIONS sip:a SIP/2.0 extra\r\n\r\n").is_none());
    }

    #[test]
    fn the_status_line_is_kept_when_the_code_matches() {
        let ours = "SIP/2.0 486 BusyHere\r\nVia: x\r\n\r\n".to_string();
        assert_eq!(
            with_status_line(ours.clone(), "SIP/2.0 486 Rejected, sorry"),
            "SIP/2.0 486 Rejected, sorry\r\nVia: x\r\n\r\n"
        );
        assert_eq!(with_status_line(ours.clone(), "SIP/2.0 200 OK"), ours);
        assert_eq!(
            first_line(b"SIP/2.0 180 Ringing\r\nVia: x"),
            Some("SIP/2.0 180 Ringing")
        );
        assert_eq!(first_line(b"SIP/2.0 180 \x01\r\n"), None);
    }
}
