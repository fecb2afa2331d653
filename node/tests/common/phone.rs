//! A phone made of raw SIP over UDP, and lone or paired front-ends with digest users alice
//! and bob: what the SIP tests (`sip_auth.rs`, `sip_outbound.rs`) send and read.
#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use p2psip_node::sip::auth::Algorithm;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub const OVERLAY: &str = "sip-auth.test";
pub const DOMAIN: &str = "p2psip";
/// A UDP socket on 127.0.0.1 with a receive timeout.
pub fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Sends `msg` every 500 ms until a final response to it arrives, for at most 10 s;
/// returns it. Provisional answers (100 Trying to each retransmission of an INVITE) do
/// not count as tries: the front-end may take a few overlay round trips to decide.
pub fn transact(s: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    let mut buf = [0u8; 65535];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        s.send_to(msg.as_bytes(), to).unwrap();
        let resend = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < resend {
            let Ok((n, _)) = s.recv_from(&mut buf) else {
                break;
            };
            let r = String::from_utf8_lossy(&buf[..n]).into_owned();
            if r.starts_with("SIP/2.0 ") && !r.starts_with("SIP/2.0 1") {
                return r;
            }
        }
    }
    panic!("no final response within 10 s to:\n{msg}");
}

pub fn status(r: &str) -> u16 {
    r[8..11].parse().unwrap()
}

/// A REGISTER of `aor_user` at `domain` from socket `s`, with its Contact at `s`.
pub fn register(
    s: &UdpSocket,
    aor_user: &str,
    domain: &str,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let me = s.local_addr().unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{aor_user}{cseq}{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{aor_user}@{domain}>;tag=t{cseq}\r\n\
         To: <sip:{aor_user}@{domain}>\r\n\
         Call-ID: reg-{aor_user}-{}@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{aor_user}@{me}>\r\n\
         Expires: 600\r\n\
         {auth}Content-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    )
}

/// The `name="..."` parameter of the first challenge for `alg` in a 401.
pub fn challenge_param(r: &str, alg: Algorithm, name: &str) -> String {
    let line = r
        .lines()
        .find(|l| {
            l.to_ascii_lowercase().starts_with("www-authenticate:")
                && l.contains(&format!("algorithm={}", alg.name()))
        })
        .unwrap_or_else(|| panic!("no {} challenge in:\n{r}", alg.name()));
    let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    line[start..].split('"').next().unwrap().to_string()
}

/// The Authorization a phone sends for `user`/`password` answering `nonce`.
pub fn digest(alg: Algorithm, user: &str, password: &str, nonce: &str, nc: u32) -> String {
    let uri = format!("sip:{DOMAIN}");
    let ha1 = alg.hex(&format!("{user}:{DOMAIN}:{password}"));
    let ha2 = alg.hex(&format!("REGISTER:{uri}"));
    let nc = format!("{nc:08x}");
    let response = alg.hex(&format!("{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"0a4f113b\"",
        alg.name()
    )
}

/// An INVITE for alice from `s` through the front-end (no body), from a caller of another
/// domain (not challenged: calls into the domain are open).
pub fn invite(s: &UdpSocket, n: u32) -> String {
    let me = s.local_addr().unwrap();
    format!(
        "INVITE sip:alice@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKinv{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:carol@example.net>;tag=c{n}\r\n\
         To: <sip:alice@{DOMAIN}>\r\n\
         Call-ID: inv-{n}@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:carol@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Whether an INVITE arrives at `s` within 2 s.
pub fn rings(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 65535];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if buf[..n].starts_with(b"INVITE ") {
                return true;
            }
        }
    }
    false
}

/// A lone node with its SIP front-end (auth on, the users file holding alice, bob and
/// john.doe,
/// `algorithms` offered), once it has formed its overlay; and the front-end's address.
pub fn front_end(dir: &TempDir, algorithms: &str) -> (NodeProc, SocketAddr) {
    front_end_with(dir, algorithms, "")
}

/// [`front_end`], with `extra` lines added to its `[sip]` table.
pub fn front_end_with(dir: &TempDir, algorithms: &str, extra: &str) -> (NodeProc, SocketAddr) {
    front_end_in(&dir.0, &[], algorithms, extra)
}

/// [`front_end_with`] in the directory `dir`, joining the overlay of `boot` (none: a new
/// overlay), once joined.
pub fn front_end_in(
    dir: &std::path::Path,
    boot: &[SocketAddr],
    algorithms: &str,
    extra: &str,
) -> (NodeProc, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let users = dir.join("sip-users");
    write_users(&users);
    let config = write_config(dir, OVERLAY, boot, "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "[sip]\nenabled = true\nlisten = \"127.0.0.1:0\"\nusers_file = \"{}\"\n\
         digest_algorithms = {algorithms}\n{extra}",
        users.display()
    );
    std::fs::write(&config, text).unwrap();
    let n = spawn_node(dir, config);
    let fe = n.sip_addr().unwrap_or_else(|| {
        panic!(
            "no SIP front-end: {}",
            std::fs::read_to_string(&n.stderr_log).unwrap_or_default()
        )
    });
    let up = |n: &NodeProc| {
        if boot.is_empty() {
            joined_alone(n)
        } else {
            joined(n)
        }
    };
    assert!(
        eventually(Duration::from_secs(20), || up(&n).then_some(())).is_some(),
        "the node never joined its overlay"
    );
    (n, fe)
}

/// Two front-ends of one overlay, offering the digest `algorithms`.
pub fn two_front_ends(dir: &TempDir, algorithms: &str) -> [(NodeProc, SocketAddr); 2] {
    let a = front_end_in(&dir.0.join("fe1"), &[], algorithms, "");
    let b = front_end_in(&dir.0.join("fe2"), &[a.0.addr], algorithms, "");
    [a, b]
}

/// A device of alice: a UDP socket registered at `fe` with RFC 5626 instance `instance`
/// (SHA-256 digest answered); returns the 200.
pub fn register_device(
    s: &UdpSocket,
    fe: SocketAddr,
    instance: &str,
    expires: u32,
    cseq: u32,
) -> String {
    let me = s.local_addr().unwrap();
    let with = |cseq: u32, auth: Option<&str>| {
        register(s, "alice", DOMAIN, cseq, auth)
            .replace(
                &format!("Contact: <sip:alice@{me}>"),
                &format!(
                    "Contact: <sip:alice@{me}>;+sip.instance=\"<urn:uuid:{instance}>\";reg-id=1"
                ),
            )
            .replace("Expires: 600", &format!("Expires: {expires}"))
    };
    let r = transact(s, fe, &with(cseq, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    let r = transact(s, fe, &with(cseq + 1, Some(&auth)));
    assert_eq!(status(&r), 200, "{r}");
    r
}

/// The next request arriving at `s` within 5 s whose method is `method`.
pub fn next_request(s: &UdpSocket, method: &str) -> Option<String> {
    request_within(s, method, Duration::from_secs(5))
}

/// The next request arriving at `s` within `limit` whose method is `method`.
pub fn request_within(s: &UdpSocket, method: &str, limit: Duration) -> Option<String> {
    let mut buf = [0u8; 65535];
    eventually(limit, || {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        m.starts_with(&format!("{method} ")).then_some(m)
    })
}

/// The answer `code reason` a device sends to `req` (its Vias, From, To with a tag,
/// Call-ID, CSeq), to `fe`.
pub fn answer(s: &UdpSocket, fe: SocketAddr, req: &str, code: u16, reason: &str, tag: &str) {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.lines() {
        let lower = l.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            out += &format!("{l}\r\n");
        } else if lower.starts_with("to:") {
            out += &format!("{l};tag={tag}\r\n");
        }
    }
    let me = s.local_addr().unwrap();
    out += &format!("Contact: <sip:alice@{me}>\r\nContent-Length: 0\r\n\r\n");
    s.send_to(out.as_bytes(), fe).unwrap();
}

/// The next response at `s` within 5 s with a final status (not 1xx).
pub fn next_final(s: &UdpSocket) -> Option<String> {
    let mut buf = [0u8; 65535];
    eventually(Duration::from_secs(5), || {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        (m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1")).then_some(m)
    })
}

/// Reads one SIP message from a TCP stream (head, then Content-Length bytes), within 5 s.
pub fn read_tcp_message(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => panic!(
                "no full message on TCP: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        if buf == b"\r\n" {
            buf.clear(); // a keep-alive answer
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Registers `user` from `s` at `fe`, answering the SHA-256 challenge with `password`;
/// each REGISTER is the plain one of [`register`] rewritten by `edit` (another Contact,
/// more headers). Returns the answer to the second (not checked).
pub fn register_edited(
    s: &UdpSocket,
    fe: SocketAddr,
    user: &str,
    password: &str,
    edit: impl Fn(String) -> String,
) -> String {
    let r = transact(s, fe, &edit(register(s, user, DOMAIN, 1, None)));
    assert_eq!(status(&r), 401, "{r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, user, password, &nonce, 1);
    transact(s, fe, &edit(register(s, user, DOMAIN, 2, Some(&auth))))
}

/// The value of header `name` in message `m` (the first such header), if any.
pub fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Writes the users file of the test front-ends at `path` (`p2psip sip add-user`): alice
/// (wonderland), bob (the-builder) and john.doe (dotted-name), realm [`DOMAIN`].
pub fn write_users(path: &std::path::Path) {
    for (u, p) in [
        ("alice", "wonderland"),
        ("bob", "the-builder"),
        ("john.doe", "dotted-name"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["sip", "add-user"])
            .arg(path)
            .args([u, "--realm", DOMAIN])
            .env("P2PSIP_PASSWORD", p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
