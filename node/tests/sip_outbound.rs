//! RFC 5626 (SIP Outbound) and RFC 5627 temporary GRUUs at the front-end: phones behind
//! NATs are called over the flow they registered on, keep-alives on the SIP port are
//! answered, a device's flows are tried newest first and one at a time, and temporary
//! GRUUs reach their device without naming its AOR. Raw SIP over UDP and TCP on
//! 127.0.0.1 against real `p2psip node` processes, and baresip with `sipnat=outbound`.
#![allow(clippy::unwrap_used)]

mod common;

use common::phone::*;
use common::*;
use p2psip_node::sip::auth::Algorithm;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// The REGISTER of [`register`] rewritten so that its Contact is `contact` (with
/// `params`) and it says `Supported: outbound, gruu` when `outbound`.
fn with_contact(contact: &str, params: &str, outbound: bool) -> impl Fn(String) -> String {
    let (contact, params) = (contact.to_string(), params.to_string());
    move |m: String| {
        let start = m.find("Contact: ").unwrap();
        let end = start + m[start..].find("\r\n").unwrap();
        let mut m = format!("{}Contact: <{contact}>{params}{}", &m[..start], &m[end..]);
        if outbound {
            m = m.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nSupported: outbound, gruu, path\r\n",
            );
        }
        m
    }
}

/// A phone behind a NAT: its Contact names its private address (192.0.2.10 here, where
/// nothing answers), its REGISTER comes from the NAT's mapping (the test's socket). With
/// RFC 5626 outbound, the 200 says `Require: outbound` and calls come over the flow, to
/// the socket the REGISTER came from, with the Contact as Request-URI. (Before: the
/// INVITE went to the Contact's address and the phone never rang.)
#[test]
fn a_phone_behind_a_nat_is_called_over_its_outbound_flow() {
    let dir = TempDir::new("sip-ob-nat");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let phone = socket();
    let contact = "sip:alice@192.0.2.10:5060";
    let r = register_edited(
        &phone,
        fe,
        "alice",
        "wonderland",
        with_contact(
            contact,
            ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000a11c>\";reg-id=1",
            true,
        ),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        header(&r, "Require").is_some_and(|v| v.contains("outbound")),
        "the 200 does not say Require: outbound:\n{r}"
    );
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = next_request(&phone, "INVITE").expect("the INVITE did not come over the flow");
    assert!(inv.starts_with(&format!("INVITE {contact} ")), "{inv}");
    // Without outbound (no Supported: outbound) the Contact is where calls go, as RFC
    // 3261 says: the reg-id means nothing then.
    let bob = socket();
    let r = register_edited(
        &bob,
        fe,
        "bob",
        "the-builder",
        with_contact(
            "sip:bob@192.0.2.11:5060",
            ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000b0b>\";reg-id=1",
            false,
        ),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(header(&r, "Require").is_none(), "{r}");
}

/// A STUN Binding request (RFC 5389) on the front-end's SIP UDP port, as phones send for
/// RFC 5626 keep-alives, is answered with a Binding success response whose
/// XOR-MAPPED-ADDRESS is where the request came from; other bytes that are no SIP stay
/// unanswered. (Before: no answer at all, and phones took the flow for failed.)
#[test]
fn stun_keepalives_on_the_sip_port_are_answered() {
    let dir = TempDir::new("sip-ob-stun");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let s = socket();
    let me = s.local_addr().unwrap();
    let txid: [u8; 12] = *b"p2psip-test1";
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&txid);
    let mut buf = [0u8; 1500];
    let mut got = None;
    for _ in 0..10 {
        s.send_to(&req, fe).unwrap();
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            assert_eq!(from, fe);
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    let ans = got.expect("no answer to a STUN Binding request on the SIP port");
    assert!(ans.len() >= 20, "{ans:?}");
    assert_eq!(&ans[0..2], &[0x01, 0x01], "not a Binding success: {ans:?}");
    assert_eq!(&ans[4..8], &[0x21, 0x12, 0xa4, 0x42], "no magic cookie");
    assert_eq!(&ans[8..20], &txid, "another transaction id");
    // Walk the attributes to XOR-MAPPED-ADDRESS (0x0020).
    let len = u16::from_be_bytes([ans[2], ans[3]]) as usize;
    assert_eq!(ans.len(), 20 + len);
    let mut at = 20;
    let mut mapped = None;
    while at + 4 <= ans.len() {
        let t = u16::from_be_bytes([ans[at], ans[at + 1]]);
        let l = u16::from_be_bytes([ans[at + 2], ans[at + 3]]) as usize;
        let v = &ans[at + 4..at + 4 + l];
        if t == 0x0020 && v[1] == 0x01 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let ip: [u8; 4] = [v[4] ^ 0x21, v[5] ^ 0x12, v[6] ^ 0xa4, v[7] ^ 0x42];
            mapped = Some(SocketAddr::from((ip, port)));
        }
        at += 4 + l.div_ceil(4) * 4;
    }
    assert_eq!(
        mapped,
        Some(me),
        "XOR-MAPPED-ADDRESS is not the request's source"
    );
    // A Binding *response* (or any other STUN class) sent to the front-end is not answered.
    let mut stray = req.clone();
    stray[1] = 0x01;
    stray[0] = 0x01;
    s.send_to(&stray, fe).unwrap();
    assert!(
        s.recv_from(&mut buf).is_err(),
        "a stray STUN response was answered"
    );
}

/// RFC 5626 section 6: a REGISTER asking for outbound that came through a proxy (two Vias)
/// which did not say it keeps the flow (no Path whose URI has `ob`) gets 439; through one
/// that did, it is accepted (`Require: outbound`) and calls go through that proxy.
#[test]
fn outbound_through_a_proxy_without_outbound_support_gets_439() {
    let dir = TempDir::new("sip-ob-439");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let proxy = socket();
    let me = proxy.local_addr().unwrap();
    let through_proxy = |path: &'static str| {
        let base = with_contact(
            "sip:alice@192.0.2.10:5060",
            ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0000000000ed>\";reg-id=1",
            true,
        );
        move |m: String| {
            let m = base(m);
            // The proxy's Via on top of the phone's; the phone's keeps its branch.
            let m = m.replacen(
                "Via: ",
                &format!("Via: SIP/2.0/UDP {me};branch=z9hG4bKproxy1\r\nVia: "),
                1,
            );
            let m = m.replace("Via: SIP/2.0/UDP 127.0.0.1", "Via: SIP/2.0/UDP 192.0.2.10");
            if path.is_empty() {
                m
            } else {
                m.replace(
                    "Max-Forwards: 70\r\n",
                    &format!("Max-Forwards: 70\r\nPath: {path}\r\n"),
                )
            }
        }
    };
    let r = transact(
        &proxy,
        fe,
        &through_proxy("")(register(&proxy, "alice", DOMAIN, 1, None)),
    );
    // Whether it is challenged first or refused at once, it is never accepted.
    let r = if status(&r) == 401 {
        let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
        let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
        transact(
            &proxy,
            fe,
            &through_proxy("")(register(&proxy, "alice", DOMAIN, 2, Some(&auth))),
        )
    } else {
        r
    };
    assert_eq!(status(&r), 439, "{r}");
    let path: &'static str = Box::leak(format!("<sip:{me};lr;ob>").into_boxed_str());
    let r = register_edited(&proxy, fe, "alice", "wonderland", through_proxy(path));
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        header(&r, "Require").is_some_and(|v| v.contains("outbound")),
        "{r}"
    );
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = next_request(&proxy, "INVITE").expect("the call did not go through the edge proxy");
    assert!(inv.contains(&format!("Route: <sip:{me};lr;ob>")), "{inv}");
}

/// One device (one instance) with two flows: reg-id 1 over UDP, then reg-id 2 over TCP.
/// A call goes to one flow only, the newest (RFC 5626 section 5.3: no forking across the
/// flows of one instance); when the TCP connection is gone, the next call takes the UDP
/// flow instead of dialling the phone's TCP source port. (Before: the second REGISTER
/// replaced the first, and with its connection gone the call went nowhere.)
#[test]
fn a_device_is_called_on_its_newest_live_flow() {
    let dir = TempDir::new("sip-ob-flows");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let instance = ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000f10e>\"";
    let udp = socket();
    let r = register_edited(
        &udp,
        fe,
        "alice",
        "wonderland",
        with_contact(
            "sip:alice@192.0.2.10:5060",
            &format!("{instance};reg-id=1"),
            true,
        ),
    );
    assert_eq!(status(&r), 200, "{r}");
    // The same phone's second flow, over TCP.
    let mut tcp = std::net::TcpStream::connect(fe).unwrap();
    let tme = tcp.local_addr().unwrap();
    let edit = with_contact(
        "sip:alice@192.0.2.10:5060;transport=tcp",
        &format!("{instance};reg-id=2"),
        true,
    );
    let tcp_reg = |cseq: u32, auth: Option<&str>| {
        edit(register(&udp, "alice", DOMAIN, cseq, auth))
            .replace(
                &format!("Via: SIP/2.0/UDP {}", udp.local_addr().unwrap()),
                &format!("Via: SIP/2.0/TCP {tme}"),
            )
            .replace("Call-ID: reg-", "Call-ID: tcp-reg-")
    };
    tcp.write_all(tcp_reg(1, None).as_bytes()).unwrap();
    let r = read_tcp_message(&mut tcp);
    assert_eq!(status(&r), 401, "{r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    tcp.write_all(tcp_reg(2, Some(&auth)).as_bytes()).unwrap();
    let r = read_tcp_message(&mut tcp);
    assert_eq!(status(&r), 200, "{r}");
    let contacts = r
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("contact:"))
        .count();
    assert_eq!(contacts, 2, "two flows, two bindings:\n{r}");
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = read_tcp_message(&mut tcp);
    assert!(inv.starts_with("INVITE "), "{inv}");
    assert!(
        next_request(&udp, "INVITE").is_none(),
        "the call was forked to both flows of one device"
    );
    // The TCP flow fails: once the front-end has seen it close, the next call takes the
    // UDP one. A call placed before that went into the closed flow: call again, a bounded
    // number of times (no sleep standing in for the front-end's noticing).
    drop(tcp);
    let inv = (2..22)
        .find_map(|n| {
            carol.send_to(invite(&carol, n).as_bytes(), fe).unwrap();
            request_within(&udp, "INVITE", Duration::from_millis(250))
        })
        .expect("the call did not fall back to the UDP flow");
    assert!(
        inv.starts_with("INVITE sip:alice@192.0.2.10:5060 "),
        "{inv}"
    );
}

/// A STUN Binding request (an RFC 5626 keep-alive over UDP) with transaction id `n`.
fn stun_keepalive(n: u8) -> Vec<u8> {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(b"p2psip-ka-0");
    req.push(n);
    req
}

/// With `sip.flow_timer_s` set, the front-end tells phones how often to send keep-alives
/// and takes a UDP flow that stays silent for twice that plus 2 s as failed (RFC 5626
/// section 5.3: the next flow is used). One device with two UDP flows: reg-id 2, the
/// newest, goes silent; reg-id 1 keeps sending STUN keep-alives: the call comes over
/// flow 1. When flow 1 goes silent too, a call gets 480 at once instead of being sent
/// into a dead flow. (Before: a UDP flow counted as standing until its registration
/// expired, and the call went to the silent flow.)
#[test]
fn a_udp_flow_gone_silent_is_not_called() {
    let dir = TempDir::new("sip-ob-silent");
    let (_n, fe) = front_end_with(&dir, "[\"SHA-256\"]", "flow_timer_s = 1\n");
    let instance = ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000516e>\"";
    let flows = [socket(), socket()];
    for (i, s) in flows.iter().enumerate() {
        let r = register_edited(
            s,
            fe,
            "alice",
            "wonderland",
            with_contact(
                "sip:alice@192.0.2.10:5060",
                &format!("{instance};reg-id={}", i + 1),
                true,
            ),
        );
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(header(&r, "Flow-Timer"), Some("1"), "{r}");
    }
    // 5 s: flow 2 silent all along, flow 1 sending a keep-alive every 500 ms (what a phone
    // told Flow-Timer: 1 does). The passing time is what is under test.
    let mut buf = [0u8; 1500];
    for n in 0..10u8 {
        flows[0].send_to(&stun_keepalive(n), fe).unwrap();
        let _ = flows[0].recv_from(&mut buf);
        std::thread::sleep(Duration::from_millis(500));
    }
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = next_request(&flows[0], "INVITE").expect("the call did not come over the live flow");
    assert!(
        inv.starts_with("INVITE sip:alice@192.0.2.10:5060 "),
        "{inv}"
    );
    assert!(
        next_request(&flows[1], "INVITE").is_none(),
        "the call went to the silent flow too"
    );
    // Both silent for 5 s: 480, and nothing is sent into either flow.
    std::thread::sleep(Duration::from_secs(5));
    let r = transact(&carol, fe, &invite(&carol, 2));
    let r = if status(&r) == 100 {
        next_final(&carol).expect("no final answer")
    } else {
        r
    };
    assert_eq!(status(&r), 480, "{r}");
    for f in &flows {
        assert!(
            next_request(f, "INVITE").is_none(),
            "an INVITE went into a silent flow"
        );
    }
}

/// RFC 5627 temporary GRUUs: a REGISTER saying `Supported: gruu` gets a `temp-gruu` besides
/// the `pub-gruu`; it does not name the AOR, each refresh gives a new one, earlier ones keep
/// working while the Call-ID stays, and one reaches its device through another front-end.
#[test]
fn temporary_gruus_reach_their_device_and_do_not_name_the_user() {
    let dir = TempDir::new("sip-tgruu");
    let [(a, fe1), (b, fe2)] = two_front_ends(&dir, "[\"SHA-256\"]");
    let logs = || {
        format!(
            "{}\n----\n{}",
            std::fs::read_to_string(&a.stderr_log).unwrap_or_default(),
            std::fs::read_to_string(&b.stderr_log).unwrap_or_default()
        )
    };
    let phone = socket();
    let me = phone.local_addr().unwrap();
    let edit = with_contact(
        &format!("sip:alice@{me}"),
        ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000467a>\"",
        true,
    );
    let temp_of = |r: &str| {
        let start = r
            .find("temp-gruu=\"")
            .unwrap_or_else(|| panic!("no temp-gruu:\n{r}"))
            + 11;
        r[start..].split('"').next().unwrap().to_string()
    };
    let r = register_edited(&phone, fe1, "alice", "wonderland", &edit);
    assert_eq!(status(&r), 200, "{r}");
    let t1 = temp_of(&r);
    assert!(
        !t1.contains("alice"),
        "a temporary GRUU names its user: {t1}"
    );
    assert!(t1.ends_with(";gr"), "{t1}");
    let r = register_edited(&phone, fe1, "alice", "wonderland", &edit);
    let t2 = temp_of(&r);
    assert_ne!(t1, t2, "a refresh gave the same temporary GRUU");
    // Both reach the phone, through either front-end.
    let carol = socket();
    for (n, (t, fe)) in [(&t1, fe2), (&t2, fe1), (&t1, fe1)].into_iter().enumerate() {
        let msg = invite(&carol, 10 + n as u32).replacen(
            &format!("INVITE sip:alice@{DOMAIN} "),
            &format!("INVITE {t} "),
            1,
        );
        carol.send_to(msg.as_bytes(), fe).unwrap();
        let inv = next_request(&phone, "INVITE")
            .unwrap_or_else(|| panic!("{t} through {fe} did not reach the phone\n{}", logs()));
        assert!(inv.starts_with(&format!("INVITE sip:alice@{me} ")), "{inv}");
    }
    // A made-up one reaches nobody.
    let at = t1.find('@').unwrap();
    let last = if t1.as_bytes()[at - 1] == b'0' {
        "1"
    } else {
        "0"
    };
    let bogus = format!("{}{last}{}", &t1[..at - 1], &t1[at..]);
    let msg = invite(&carol, 20).replacen(
        &format!("INVITE sip:alice@{DOMAIN} "),
        &format!("INVITE {bogus} "),
        1,
    );
    carol.send_to(msg.as_bytes(), fe1).unwrap();
    let got = next_final(&carol).expect("no answer for a made-up temporary GRUU");
    assert!(got.starts_with("SIP/2.0 404"), "{got}");
    assert!(next_request(&phone, "INVITE").is_none());
}

/// baresip with RFC 5626 on (`sipnat=outbound`) over UDP: it registers, keeps its flow up
/// with STUN keep-alives every few seconds (the front-end's `sip.flow_timer_s`), which the
/// front-end answers (its keep-alive counter grows; baresip registers once), and a call
/// to it is answered over the flow. (Before: no `Require: outbound`, so no keep-alives,
/// and none would have been answered.)
#[test]
fn baresip_with_outbound_keeps_its_flow_and_is_called_over_it() {
    if !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-ob-baresip");
    let (n, fe) = front_end_with(&dir, "[\"MD5\"]", "flow_timer_s = 2\n");
    let mut alice = baresip::Phone::new(
        &dir.0,
        "alice",
        &format!(
            "<sip:alice@{DOMAIN}>;outbound=\"sip:{fe}\";sipnat=outbound;auth_pass=wonderland;regint=600;answermode=auto"
        ),
    );
    alice.start(14, &[]);
    assert!(
        alice.wait_for("200 OK", Duration::from_secs(8)),
        "baresip did not register:\n{}",
        alice.output()
    );
    // Keep-alives flow for a while; then a call.
    let keepalives = |n: &NodeProc| {
        let m = scrape(n.metrics).unwrap_or_default();
        metric_sum(
            &parse_prometheus(&m),
            "p2psip_sip_keepalives_total",
            &[("kind", "stun")],
        )
    };
    let seen = eventually(Duration::from_secs(8), || {
        (keepalives(&n) >= 2.0).then_some(())
    });
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let answered = next_final(&carol);
    let out = alice.finish(Duration::from_secs(20));
    assert!(seen.is_some(), "no STUN keep-alive answered in 8 s:\n{out}");
    let got = answered.expect("the call to baresip got no final answer");
    assert!(got.starts_with("SIP/2.0 200"), "{got}\n{out}");
    assert_eq!(
        out.matches("200 OK (p2psip)").count(),
        1,
        "baresip registered more than once (a lost flow):\n{out}"
    );
}

/// A user name with a dot (`sip:john.doe@p2psip`) registers and is called. (Before: rsip
/// read `john.doe@p2psip` as a host with no user, and the REGISTER got 400.)
#[test]
fn a_user_name_with_a_dot_registers_and_is_called() {
    let dir = TempDir::new("sip-dotted");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let john = socket();
    let r = register_edited(&john, fe, "john.doe", "dotted-name", |m| m);
    assert_eq!(status(&r), 200, "{r}");
    let carol = socket();
    let msg = invite(&carol, 1).replace("alice@", "john.doe@");
    carol.send_to(msg.as_bytes(), fe).unwrap();
    let inv = next_request(&john, "INVITE").expect("john.doe was not called");
    assert!(inv.starts_with("INVITE sip:john.doe@"), "{inv}");
}

/// What the front-end logs about a request carries its method and Call-ID (a span per
/// SIP request), so that an operator finds every line of one call or registration.
#[test]
fn log_lines_of_a_request_name_its_call_id() {
    let dir = TempDir::new("sip-log-span");
    let (n, fe) = front_end(&dir, "[\"SHA-256\"]");
    let phone = socket();
    let r = register_edited(&phone, fe, "alice", "wonderland", |m| m);
    assert_eq!(status(&r), 200, "{r}");
    let call_id = header(&r, "Call-ID").unwrap().to_string();
    let logged = eventually(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&n.stderr_log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("SIP: registered"))
            .map(str::to_string)
    })
    .expect("no registration logged");
    assert!(
        logged.contains(&call_id) && logged.contains("REGISTER"),
        "the registration's log line names neither its Call-ID ({call_id}) nor its method:\n{logged}"
    );
}
