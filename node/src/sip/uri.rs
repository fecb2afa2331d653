//! Addressing: AORs, GRUUs, Route, Path, Via and Record-Route entries, and where each leads.

use super::*;

/// Where a SIP message came from or goes: a device over UDP or TCP, or another node over
/// an application stream (QUIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Node(NodeId),
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Udp(a) => write!(f, "udp:{a}"),
            Hop::Tcp(a) => write!(f, "tcp:{a}"),
            Hop::Node(n) => write!(f, "node:{n}"),
        }
    }
}

/// `uri` with its user part where it belongs. rsip 0.4 reads a user part holding a dot
/// (`sip:john.doe@example.com`, `sip:tgruu.<node>.<token>@p2psip`) as part of the host,
/// with no user: such a host is split at its last `@` here.
pub(super) fn repaired(uri: &rsip::Uri) -> std::borrow::Cow<'_, rsip::Uri> {
    let rsip::Host::Domain(d) = &uri.host_with_port.host else {
        return std::borrow::Cow::Borrowed(uri);
    };
    let d = d.to_string();
    let Some((user, host)) = d.rsplit_once('@').filter(|_| uri.auth.is_none()) else {
        return std::borrow::Cow::Borrowed(uri);
    };
    let mut fixed = uri.clone();
    fixed.auth = Some(rsip::Auth {
        user: user.to_string(),
        password: None,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    fixed.host_with_port.host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rsip::Host::IpAddr(ip),
        Err(_) => rsip::Host::Domain(rsip::Domain::from(host.to_string())),
    };
    std::borrow::Cow::Owned(fixed)
}

/// Canonical AOR of a SIP URI: `sip:user@domain`, with an IP host replaced by the
/// configured domain.
pub(super) fn aor_of(uri: &rsip::Uri, domain: &str) -> Option<String> {
    let uri = repaired(uri);
    let user = uri.auth.as_ref()?.user.clone();
    let host = match &uri.host_with_port.host {
        rsip::Host::Domain(d) => d.to_string(),
        rsip::Host::IpAddr(_) => domain.to_string(),
    };
    Some(format!("sip:{user}@{}", host.to_ascii_lowercase()))
}

pub(super) fn gr_param(uri: &rsip::Uri) -> Option<String> {
    uri.params.iter().find_map(|p| match p {
        rsip::Param::Other(name, Some(v)) if name.value().eq_ignore_ascii_case("gr") => {
            Some(v.value().to_string())
        }
        _ => None,
    })
}

/// The node and token a temporary GRUU names (`sip:tgruu.<node>.<token>@domain;gr`, RFC
/// 5627 section 3: a bare `gr` parameter), if `uri` is one.
pub(super) fn temp_gruu_of(uri: &rsip::Uri) -> Option<(NodeId, String)> {
    let bare_gr = uri.params.iter().any(|p| match p {
        rsip::Param::Other(name, None) => name.value().eq_ignore_ascii_case("gr"),
        _ => false,
    });
    let uri = repaired(uri);
    let user = &uri.auth.as_ref()?.user;
    let rest = user.strip_prefix(register::TEMP_GRUU_PREFIX)?;
    let (node, token) = rest.split_once('.')?;
    if !bare_gr || node.len() != 32 || token.is_empty() || token.len() > 64 {
        return None;
    }
    let node = u128::from_str_radix(node, 16).ok().map(Id)?;
    Some((node, token.to_ascii_lowercase()))
}

pub(super) fn uri_addr(uri: &rsip::Uri) -> Option<SocketAddr> {
    let uri = repaired(uri);
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => d.to_string().parse().ok()?,
    };
    let port = uri
        .host_with_port
        .port
        .as_ref()
        .map_or(5060, |p| *p.value());
    Some(SocketAddr::new(ip, port))
}

/// The node a Via or Route entry names with its `node` parameter.
pub(super) fn node_param(params: &[rsip::Param]) -> Option<NodeId> {
    params.iter().find_map(|p| match p {
        rsip::Param::Other(n, Some(v)) if n.value().eq_ignore_ascii_case(NODE_PARAM) => {
            u128::from_str_radix(v.value(), 16).ok().map(Id)
        }
        _ => None,
    })
}

/// Where a request following Route entry `uri` goes.
pub(super) fn route_hop(uri: &rsip::Uri) -> Option<Hop> {
    if let Some(n) = node_param(&uri.params) {
        return Some(Hop::Node(n));
    }
    let a = uri_addr(uri)?;
    let tcp = uri.params.iter().any(|p| {
        matches!(p, rsip::Param::Transport(t) if *t == rsip::Transport::Tcp)
            || p.to_string().eq_ignore_ascii_case(";transport=tcp")
    });
    Some(if tcp { Hop::Tcp(a) } else { Hop::Udp(a) })
}

/// Where a request following Path entry `entry` (`<sip:proxy;lr>`) goes.
pub(super) fn path_hop(entry: &str) -> Option<Hop> {
    route_hop(&path_uri(entry)?)
}

/// The URI of Path entry `entry` (`<sip:proxy;lr;ob>`; header parameters after `>` are
/// not the URI's).
pub(super) fn path_uri(entry: &str) -> Option<rsip::Uri> {
    let uri = entry.trim().trim_start_matches('<').split('>').next()?;
    rsip::Uri::try_from(uri).ok()
}

/// The tag of a request's To header: none before a dialog exists.
pub(super) fn to_tag(req: &Request) -> Option<String> {
    let to = req.to_header().ok()?.value().to_string();
    to.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_string())
    })
}

/// Where a response goes after we pop our Via: the node the next Via names, else its
/// received/rport or sent-by.
pub(super) fn via_target(v: &rsip::headers::Via) -> Option<Hop> {
    let t = v.typed().ok()?;
    if let Some(n) = node_param(&t.params) {
        return Some(Hop::Node(n));
    }
    let tcp = matches!(t.transport, rsip::Transport::Tcp);
    let mut addr = uri_addr(&t.uri)?;
    for p in &t.params {
        match p {
            rsip::Param::Received(r) => {
                if let Ok(ip) = r.value().parse() {
                    addr.set_ip(ip);
                }
            }
            rsip::Param::Other(n, Some(v)) if n.value().eq_ignore_ascii_case("rport") => {
                if let Ok(port) = v.value().parse() {
                    addr.set_port(port);
                }
            }
            _ => {}
        }
    }
    Some(if tcp { Hop::Tcp(addr) } else { Hop::Udp(addr) })
}

/// What identifies a request for loop detection (RFC 3261 section 16.3 item 4): its
/// Request-URI, Call-ID, From tag and CSeq number (not its Vias).
pub(super) fn loop_key(req: &Request) -> String {
    let call_id = req
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let from = req
        .from_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let tag = from
        .split(";tag=")
        .nth(1)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("");
    let cseq = req
        .cseq_header()
        .map(|h| {
            h.value()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    hex::encode(&Sha256::digest(format!("{}|{call_id}|{tag}|{cseq}", req.uri).as_bytes())[..6])
}

pub(super) fn route_uris(req: &Request) -> Vec<rsip::Uri> {
    req.headers
        .iter()
        .filter_map(|h| match h {
            Header::Route(r) => r.typed().ok(),
            _ => None,
        })
        .flat_map(|r| r.uris().iter().map(|u| u.uri.clone()).collect::<Vec<_>>())
        .collect()
}

/// Removes the first Route entry (one URI of the first Route header).
pub(super) fn pop_route(req: &mut Request) {
    let mut done = false;
    let mut out = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Route(r) if !done => {
                done = true;
                if let Ok(t) = r.typed() {
                    let rest: Vec<String> =
                        t.uris().iter().skip(1).map(|u| u.to_string()).collect();
                    if !rest.is_empty() {
                        out.push(Header::Route(rsip::headers::Route::new(rest.join(", "))));
                    }
                }
            }
            other => out.push(other.clone()),
        }
    }
    req.headers = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sip::tests::INVITE;

    #[test]
    fn aor_of_names_the_user_at_the_domain() {
        let u = rsip::Uri::try_from("sip:Alice@10.0.0.5:5060").unwrap();
        assert_eq!(aor_of(&u, "p2psip").as_deref(), Some("sip:Alice@p2psip"));
        let u = rsip::Uri::try_from("sip:bob@Example.COM").unwrap();
        assert_eq!(aor_of(&u, "p2psip").as_deref(), Some("sip:bob@example.com"));
        let u = rsip::Uri::try_from("sip:10.0.0.5").unwrap();
        assert_eq!(aor_of(&u, "p2psip"), None);
        let u = rsip::Uri::try_from("sip:alice@p2psip;gr=abc").unwrap();
        assert_eq!(gr_param(&u).as_deref(), Some("abc"));
    }

    #[test]
    fn user_parts_with_dots_are_users() {
        for (text, aor, addr) in [
            (
                "sip:john.doe@Example.com",
                Some("sip:john.doe@example.com"),
                None,
            ),
            (
                "sip:john.doe@10.0.0.5:5070",
                Some("sip:john.doe@p2psip"),
                Some("10.0.0.5:5070"),
            ),
            (
                "sip:alice@10.0.0.5",
                Some("sip:alice@p2psip"),
                Some("10.0.0.5:5060"),
            ),
            ("sip:host.example.com", None, None),
        ] {
            let u = rsip::Uri::try_from(text).unwrap();
            assert_eq!(aor_of(&u, "p2psip").as_deref(), aor, "{text}");
            assert_eq!(uri_addr(&u), addr.map(|a| a.parse().unwrap()), "{text}");
            // Written back as it came.
            assert_eq!(
                repaired(&u).to_string().to_ascii_lowercase(),
                text.to_ascii_lowercase()
            );
        }
    }

    #[test]
    fn temporary_gruus_name_their_node_and_token() {
        let node = "0123456789abcdef0123456789abcdef";
        let u = rsip::Uri::try_from(format!("sip:tgruu.{node}.a1b2@p2psip;gr").as_str()).unwrap();
        assert_eq!(
            temp_gruu_of(&u),
            Some((Id(0x0123456789abcdef0123456789abcdef), "a1b2".to_string()))
        );
        for not in [
            format!("sip:tgruu.{node}.a1b2@p2psip"),
            format!("sip:tgruu.{node}.a1b2@p2psip;gr=x"),
            format!("sip:tgruu.{node}@p2psip;gr"),
            "sip:tgruu.xyz.a1b2@p2psip;gr".to_string(),
            format!("sip:alice.{node}.a1b2@p2psip;gr"),
        ] {
            let u = rsip::Uri::try_from(not.as_str()).unwrap();
            assert_eq!(temp_gruu_of(&u), None, "{not}");
        }
    }

    #[test]
    fn routes_are_read_in_order_and_popped_one_at_a_time() {
        let SipMessage::Request(mut r) = SipMessage::try_from(INVITE.as_bytes()).unwrap() else {
            panic!("not a request");
        };
        let routes = route_uris(&r);
        assert_eq!(
            routes.iter().filter_map(uri_addr).collect::<Vec<_>>(),
            vec![
                "10.0.0.5:5060".parse::<SocketAddr>().unwrap(),
                "10.0.0.7:5060".parse().unwrap()
            ]
        );
        pop_route(&mut r);
        let routes = route_uris(&r);
        assert_eq!(routes.len(), 1);
        assert_eq!(uri_addr(&routes[0]), "10.0.0.7:5060".parse().ok());
    }

    #[test]
    fn entries_naming_a_node_lead_to_its_application_stream() {
        let n = Id(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let v = rsip::headers::Via::new(format!(
            "SIP/2.0/TLS 10.0.0.7:5060;branch=z9hG4bKabc;node={n:#}"
        ));
        assert_eq!(via_target(&v), Some(Hop::Node(n)));
        let r = rsip::Uri::try_from(format!("sip:10.0.0.7:5060;lr;node={n:#}").as_str()).unwrap();
        assert_eq!(route_hop(&r), Some(Hop::Node(n)));
        let r = rsip::Uri::try_from("sip:10.0.0.7:5070;lr;transport=tcp").unwrap();
        assert_eq!(
            route_hop(&r),
            Some(Hop::Tcp("10.0.0.7:5070".parse().unwrap()))
        );
        let r = rsip::Uri::try_from("sip:10.0.0.7;lr").unwrap();
        assert_eq!(
            route_hop(&r),
            Some(Hop::Udp("10.0.0.7:5060".parse().unwrap()))
        );
        // A malformed node parameter is not a node.
        let v = rsip::headers::Via::new("SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKabc;node=xyz");
        assert_eq!(
            via_target(&v),
            Some(Hop::Udp("10.0.0.7:5060".parse().unwrap()))
        );
    }
}
