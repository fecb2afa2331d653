//! Digest authentication and abuse limits of the SIP front-end (docs/security.md, "SIP
//! users"): one `p2psip node` with its front-end on 127.0.0.1 and a users file holding
//! alice and bob; raw SIP over UDP as a phone (or an attacker) sends it, and baresip.
#![allow(clippy::unwrap_used)]

mod common;

use common::phone::*;
use common::*;
use p2psip_node::sip::auth::Algorithm;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

#[test]
fn registrations_need_the_users_own_credentials() {
    let dir = TempDir::new("sip-auth");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    // No credentials: 401 with a SHA-256 and an MD5 challenge, SHA-256 first.
    let r = transact(&alice, fe, &register(&alice, "alice", DOMAIN, 1, None));
    assert_eq!(status(&r), 401, "{r}");
    let sha = r.find("algorithm=SHA-256").unwrap();
    let md5 = r.find("algorithm=MD5").unwrap();
    assert!(sha < md5, "SHA-256 is offered first: {r}");
    assert!(r.contains("qop=\"auth\""), "{r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    // A wrong password: 401 again.
    let wrong = digest(Algorithm::Sha256, "alice", "rabbit-hole", &nonce, 1);
    let r = transact(
        &alice,
        fe,
        &register(&alice, "alice", DOMAIN, 2, Some(&wrong)),
    );
    assert_eq!(status(&r), 401, "{r}");
    // The right one (SHA-256): 200.
    let right = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 2);
    let r = transact(
        &alice,
        fe,
        &register(&alice, "alice", DOMAIN, 3, Some(&right)),
    );
    assert_eq!(status(&r), 200, "{r}");
    // The same answer again (a replay): challenged, stale.
    let r = transact(
        &alice,
        fe,
        &register(&alice, "alice", DOMAIN, 4, Some(&right)),
    );
    assert_eq!(status(&r), 401, "{r}");
    assert!(r.contains("stale=true"), "{r}");
    // MD5 (what older phones answer) works too.
    let md5_nonce = challenge_param(&r, Algorithm::Md5, "nonce");
    let right_md5 = digest(Algorithm::Md5, "alice", "wonderland", &md5_nonce, 1);
    let r = transact(
        &alice,
        fe,
        &register(&alice, "alice", DOMAIN, 5, Some(&right_md5)),
    );
    assert_eq!(status(&r), 200, "{r}");

    // The take-over: mallory registers alice's AOR with her own Contact.
    let mallory = socket();
    let r = transact(&mallory, fe, &register(&mallory, "alice", DOMAIN, 1, None));
    assert_eq!(status(&r), 401, "a REGISTER without credentials: {r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    // bob's own valid credentials do not register alice.
    let bobs = digest(Algorithm::Sha256, "bob", "the-builder", &nonce, 1);
    let r = transact(
        &mallory,
        fe,
        &register(&mallory, "alice", DOMAIN, 2, Some(&bobs)),
    );
    assert_eq!(status(&r), 403, "bob's credentials for alice's AOR: {r}");
    // A domain this front-end does not serve.
    let r = transact(
        &mallory,
        fe,
        &register(&mallory, "alice", "evil.example", 3, None),
    );
    assert_eq!(status(&r), 403, "another domain: {r}");
    // Calls to alice still ring alice, not mallory.
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    assert!(rings(&alice), "alice's phone did not ring");
    assert!(!rings(&mallory), "the call went to mallory");

    // Guessing: after 5 failed attempts in a minute, even the right password is refused.
    let mut last = 0;
    for i in 0..6u32 {
        let r = transact(
            &mallory,
            fe,
            &register(&mallory, "bob", DOMAIN, 10 + i, None),
        );
        if status(&r) == 403 {
            last = 403;
            break;
        }
        let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
        let guess = digest(Algorithm::Sha256, "bob", &format!("guess-{i}"), &nonce, 1);
        let r = transact(
            &mallory,
            fe,
            &register(&mallory, "bob", DOMAIN, 20 + i, Some(&guess)),
        );
        last = status(&r);
        if last == 403 {
            break;
        }
        assert_eq!(last, 401, "{r}");
    }
    assert_eq!(last, 403, "guessing is never limited");
    let r = transact(&mallory, fe, &register(&mallory, "bob", DOMAIN, 40, None));
    assert_eq!(
        status(&r),
        403,
        "a limited source gets no new challenge: {r}"
    );
}

/// baresip (Debian's, its default module set with uuid) registers alice with her
/// password, the default MD5 challenge; with a wrong password it is refused.
#[test]
fn baresip_registers_with_its_password_and_not_without() {
    if !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-baresip");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let account = |pw: &str| format!("<sip:alice@{fe}>;auth_pass={pw};regint=600");
    // -t: quit after 4 s (baresip unregisters on the way out).
    let good = baresip::Phone::new(&dir.0, "alice", &account("wonderland")).run(4, &[]);
    assert!(good.contains("200 OK"), "baresip did not register:\n{good}");
    let bad = baresip::Phone::new(&dir.0, "mallory", &account("guess")).run(4, &[]);
    assert!(
        !bad.contains("200 OK"),
        "a wrong password registered:\n{bad}"
    );
    assert!(bad.contains("401") || bad.contains("403"), "{bad}");
}

/// Runs `p2psip ARGS`, asserting success; returns stdout.
fn p2psip(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "p2psip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An enrolled overlay that admits only its CA's certificates (`allow_self_signed` off,
/// the default): two front-ends, each with the certificates the CA issued for its SIP
/// users (`p2psip ca issue-sip-users`). baresip phones register with their passwords (alice
/// at one front-end, bob at the other), bob calls alice, she answers, he hangs up. Without
/// the certificates the front-end refuses to start and says what to run (before, it
/// started, and every registration was refused by the storing peers: 503).
#[test]
fn enrolled_overlay_registrations_are_signed_by_the_users_certificates() {
    if !baresip::available() {
        return;
    }
    use std::ffi::OsStr;
    let dir = TempDir::new("sip-enrolled");
    let ca = dir.0.join("ca");
    let users = dir.0.join("sip-users");
    p2psip(&[
        OsStr::new("ca"),
        OsStr::new("init"),
        OsStr::new("--dir"),
        ca.as_os_str(),
        OsStr::new("--overlay"),
        OsStr::new(OVERLAY),
    ]);
    for (u, p) in [("alice", "wonderland"), ("bob", "the-builder")] {
        let out = std::process::Command::new(BIN)
            .args(["sip", "add-user"])
            .arg(&users)
            .args([u, "--realm", DOMAIN])
            .env("P2PSIP_PASSWORD", p)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // A node directory with its enrolled key and its users' certificates; the config's
    // [sip] table with `sip_extra`.
    let node_config = |name: &str, boot: &[SocketAddr], sip_extra: &str| -> std::path::PathBuf {
        let d = dir.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let key = d.join("node.key");
        p2psip(&[OsStr::new("keygen"), OsStr::new("-o"), key.as_os_str()]);
        p2psip(&[
            OsStr::new("ca"),
            OsStr::new("issue"),
            OsStr::new("--dir"),
            ca.as_os_str(),
            OsStr::new("--user"),
            OsStr::new(name),
            OsStr::new("--identity"),
            key.as_os_str(),
            OsStr::new("-o"),
            d.join("node.pem").as_os_str(),
        ]);
        let config = write_config(&d, OVERLAY, boot, "127.0.0.1:0");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text += &format!(
            "[security]\nca = {:?}\ncertificate = {:?}\n\
             [sip]\nenabled = true\nlisten = \"127.0.0.1:0\"\nusers_file = {:?}\n{sip_extra}",
            ca.join("ca.pem"),
            d.join("node.pem"),
            users
        );
        std::fs::write(&config, text).unwrap();
        config
    };
    // Without certificates for its users: a clear refusal at start.
    let config = node_config("bare", &[], "");
    let mut c = std::process::Command::new(BIN)
        .args(["node", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.0.join("bare"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(20), || c.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = c.kill();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        exited.is_some_and(|s| !s.success()) && err.contains("issue-sip-users"),
        "a front-end whose registrations cannot be stored started (or said nothing useful): {err}"
    );

    let mut nodes = Vec::new();
    let mut fes = Vec::new();
    for name in ["fe1", "fe2"] {
        let certs = dir.0.join(name).join("sip-certs");
        let out = p2psip(&[
            OsStr::new("ca"),
            OsStr::new("issue-sip-users"),
            OsStr::new("--dir"),
            ca.as_os_str(),
            OsStr::new("--users-file"),
            users.as_os_str(),
            OsStr::new("--domain"),
            OsStr::new(DOMAIN),
            OsStr::new("--out"),
            certs.as_os_str(),
        ]);
        assert!(
            out.contains("sip:alice@p2psip issued") && out.contains("sip:bob@p2psip issued"),
            "{out}"
        );
        let boot: Vec<SocketAddr> = nodes.iter().map(|n: &NodeProc| n.addr).collect();
        let config = node_config(name, &boot, &format!("user_certificates = {certs:?}\n"));
        let n = spawn_node(&dir.0.join(name), config);
        fes.push(n.sip_addr().expect("no SIP front-end"));
        nodes.push(n);
    }
    assert!(
        eventually(Duration::from_secs(30), || (joined_alone(&nodes[0])
            && joined(&nodes[1]))
        .then_some(()))
        .is_some(),
        "the enrolled front-ends never formed their overlay"
    );
    // No password: 401, as anywhere.
    let s = socket();
    assert_eq!(
        status(&transact(
            &s,
            fes[0],
            &register(&s, "alice", DOMAIN, 1, None)
        )),
        401
    );

    baresip_call(&dir, fes[0], fes[1], "", "", &nodes);
}

/// baresip alice (answering by herself) registered at front-end `fe_a` and bob at `fe_b`
/// (`alice_uri_params` / `bob_uri_params` added to their outbound proxy URIs, e.g.
/// `;transport=tcp`): bob calls alice, she answers, he hangs up after a few seconds.
/// Asserts both saw the call established and alice saw it end.
fn baresip_call(
    dir: &TempDir,
    fe_a: SocketAddr,
    fe_b: SocketAddr,
    alice_uri_params: &str,
    bob_uri_params: &str,
    nodes: &[NodeProc],
) {
    let logs = || {
        nodes
            .iter()
            .map(|n| std::fs::read_to_string(&n.stderr_log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let account = |user: &str, pw: &str, fe: SocketAddr, params: &str, extra: &str| {
        format!(
            "<sip:{user}@{DOMAIN}>;outbound=\"sip:{fe}{params}\";auth_pass={pw};regint=600{extra}"
        )
    };
    let mut alice = baresip::Phone::new(
        &dir.0,
        "alice",
        &account(
            "alice",
            "wonderland",
            fe_a,
            alice_uri_params,
            ";answermode=auto",
        ),
    );
    let mut bob = baresip::Phone::new(
        &dir.0,
        "bob",
        &account("bob", "the-builder", fe_b, bob_uri_params, ""),
    );
    alice.start(20, &[]);
    assert!(
        alice.wait_for("200 OK", Duration::from_secs(10)),
        "alice did not register:\n{}\n{}",
        alice.output(),
        logs()
    );
    // bob dials at once (his INVITE is challenged: 407, answered with his password) and
    // hangs up when he quits after 6 s.
    let b = bob.run(6, &[&format!("/dial sip:alice@{DOMAIN}")]);
    assert!(b.contains("200 OK"), "bob did not register:\n{b}");
    assert!(
        b.contains("Call established: sip:alice@p2psip"),
        "bob's call was not answered:\n{b}\n{}",
        logs()
    );
    assert!(
        alice.wait_for("terminated", Duration::from_secs(10)),
        "alice's call did not end with bob's BYE:\n{}",
        alice.output()
    );
    let a = alice.finish(Duration::from_secs(20));
    assert!(a.contains("Call established: sip:bob@p2psip"), "{a}");
}

/// The same call with both phones on TCP (issue 23 item 5: the Record-Route named no
/// transport, so TCP phones sent ACK and BYE over UDP).
#[test]
fn baresip_phones_call_each_other_over_tcp() {
    if !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-baresip-tcp");
    let [a, b] = two_front_ends(&dir, "[\"MD5\"]");
    let (fe_a, fe_b) = (a.1, b.1);
    let nodes = [a.0, b.0];
    baresip_call(&dir, fe_a, fe_b, ";transport=tcp", ";transport=tcp", &nodes);
}

/// Across two front-ends with mixed transports: alice on TCP, bob on UDP.
#[test]
fn baresip_phones_call_each_other_over_mixed_transports() {
    if !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-baresip-mixed");
    let [a, b] = two_front_ends(&dir, "[\"MD5\"]");
    let (fe_a, fe_b) = (a.1, b.1);
    let nodes = [a.0, b.0];
    baresip_call(&dir, fe_a, fe_b, ";transport=tcp", "", &nodes);
}

// ---- the front-end cannot be abused ---------------------------------------------------

/// A request with `method`, Request-URI `uri` and Max-Forwards `mf`, from `s`.
fn request(s: &UdpSocket, method: &str, uri: &str, mf: u32, n: u32) -> String {
    let me = s.local_addr().unwrap();
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKabuse{n}\r\n\
         Max-Forwards: {mf}\r\n\
         From: <sip:mallory@example.net>;tag=m{n}\r\n\
         To: <{uri}>\r\n\
         Call-ID: abuse-{n}@test\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:mallory@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Registers `user` (its Contact at `s`) at `fe`, answering the SHA-256 challenge with
/// `password`; asserts the 200.
fn register_user(s: &UdpSocket, fe: SocketAddr, user: &str, password: &str) {
    let r = transact(s, fe, &register(s, user, DOMAIN, 1, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, user, password, &nonce, 1);
    let r = transact(s, fe, &register(s, user, DOMAIN, 2, Some(&auth)));
    assert_eq!(status(&r), 200, "{r}");
}

/// Registers alice (SHA-256 answer to the front-end's challenge) with Contact `contact`.
fn register_alice_at(s: &UdpSocket, fe: SocketAddr, contact: &str) {
    let r = transact(s, fe, &register(s, "alice", DOMAIN, 1, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    let me = s.local_addr().unwrap().to_string();
    let msg = register(s, "alice", DOMAIN, 2, Some(&auth)).replace(
        &format!("Contact: <sip:alice@{me}>"),
        &format!("Contact: <{contact}>"),
    );
    let r = transact(s, fe, &msg);
    assert_eq!(status(&r), 200, "{r}");
}

/// A request naming a host that is neither a registered device nor a node of the overlay
/// is refused with 403, and nothing is sent there (the front-end is no open relay).
#[test]
fn requests_to_arbitrary_hosts_are_refused_and_nothing_is_sent() {
    let dir = TempDir::new("sip-relay");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let victim = socket();
    let target = victim.local_addr().unwrap();
    let mallory = socket();
    for (i, method) in ["OPTIONS", "INVITE", "MESSAGE"].into_iter().enumerate() {
        let uri = format!("sip:service@{target}");
        let r = transact(&mallory, fe, &request(&mallory, method, &uri, 70, i as u32));
        assert_eq!(status(&r), 403, "{method} to {uri}: {r}");
    }
    let mut buf = [0u8; 2048];
    assert!(
        victim.recv_from(&mut buf).is_err(),
        "a request reached the named host: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// alice's Contact names the front-end itself: a call to her would come back to it.
/// It answers 482 (Loop Detected) at once instead of passing the INVITE round until
/// Max-Forwards runs out, also when Max-Forwards is huge.
#[test]
fn a_request_that_would_loop_through_the_front_end_gets_482() {
    let dir = TempDir::new("sip-loop");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    register_alice_at(&alice, fe, &format!("sip:alice@{fe}"));
    let carol = socket();
    for (i, mf) in [70u32, 5000].into_iter().enumerate() {
        let started = std::time::Instant::now();
        let r = transact(
            &carol,
            fe,
            &request(
                &carol,
                "INVITE",
                &format!("sip:alice@{DOMAIN}"),
                mf,
                10 + i as u32,
            ),
        );
        assert_eq!(status(&r), 482, "Max-Forwards {mf}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

/// A response datagram whose next Via is a TCP address that never completes a handshake
/// (a listener whose backlog is full drops further SYNs): the front-end still answers
/// other requests at once, on UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_towards_a_dead_tcp_address_does_not_stall_the_front_end() {
    let dir = TempDir::new("sip-stall");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    // A listener with a backlog of 1, filled and never accepted from.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let dead = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(dead),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let mallory = socket();
    let response = format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP {fe};branch=z9hG4bKnotreallyours\r\n\
         Via: SIP/2.0/TCP {dead};branch=z9hG4bKdead\r\n\
         From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:b@{DOMAIN}>;tag=2\r\n\
         Call-ID: stall@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    for _ in 0..3 {
        mallory.send_to(response.as_bytes(), fe).unwrap();
    }
    let alice = socket();
    let started = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        transact(&alice, fe, &register(&alice, "alice", DOMAIN, 1, None))
    })
    .await
    .unwrap();
    assert_eq!(status(&r), 401, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the front-end took {:?} to answer",
        started.elapsed()
    );
    drop(listener);
}

/// 1,100 idle TCP connections from one address, against caps of 1,000 in all and 200 per
/// address and a 2 s idle timeout: connections past the caps are closed at once, idle
/// ones after the timeout; a keep-alive CRLFCRLF gets CRLF (RFC 5626); UDP and TCP SIP
/// from elsewhere keep being answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_capped_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("sip-tcp");
    let (_n, fe) = front_end_with(
        &dir,
        "[\"MD5\"]",
        "tcp_max_connections = 1000\ntcp_max_connections_per_ip = 200\ntcp_idle_timeout_s = 2\n",
    );
    let mut held = Vec::new();
    for _ in 0..1100 {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(fe)).await
        {
            Ok(Ok(c)) => held.push(c),
            other => panic!("connect: {other:?}"),
        }
    }
    // Past the per-address cap the front-end closes the connection as it accepts it: a
    // read ends. One deadline for all (the accept loop may lag behind a loaded machine;
    // only a connection left open waits it out).
    let mut closed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in held.iter_mut().skip(200) {
        let mut b = [0u8; 16];
        if let Ok(Ok(0)) | Ok(Err(_)) = tokio::time::timeout_at(deadline, c.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 900,
        "connections past 200 from one address left open"
    );
    // From another address, TCP still works (keep-alive answered) and UDP too.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut c = other.connect(fe).await.unwrap();
    c.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut pong))
        .await
        .expect("no answer to CRLFCRLF")
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    let r = tokio::task::spawn_blocking(move || {
        let alice = socket();
        transact(&alice, fe, &register(&alice, "alice", DOMAIN, 1, None))
    })
    .await
    .unwrap();
    assert_eq!(status(&r), 401, "{r}");
    // The idle ones within the cap are closed after the idle timeout.
    let mut first = held.swap_remove(0);
    let mut b = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(5), first.read(&mut b)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection is still open after 5 s: {end:?}"
    );
}

/// A request whose Via carries `received` and `rport` naming a third party: the answer
/// goes back to where the request came from (RFC 3581), not to the named address.
#[test]
fn received_and_rport_in_a_request_cannot_redirect_the_answer() {
    let dir = TempDir::new("sip-rport");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let victim = socket();
    let v = victim.local_addr().unwrap();
    let mallory = socket();
    let m = mallory.local_addr().unwrap();
    let msg = register(&mallory, "alice", DOMAIN, 1, None).replace(
        &format!("Via: SIP/2.0/UDP {m};branch="),
        &format!(
            "Via: SIP/2.0/UDP {m};received={};rport={};branch=",
            v.ip(),
            v.port()
        ),
    );
    assert!(msg.contains("rport="), "{msg}");
    let r = transact(&mallory, fe, &msg);
    assert_eq!(status(&r), 401, "{r}");
    let mut buf = [0u8; 4096];
    assert!(
        victim.recv_from(&mut buf).is_err(),
        "the answer went to the address the Via named"
    );
}

/// An INVITE (or MESSAGE) whose From is a user of the domain needs that user's
/// credentials: none -> 407 with a challenge; bob's for a From of alice -> 403; alice's
/// own -> the call goes on (here to bob's phone).
#[test]
fn calls_from_users_of_the_domain_are_challenged() {
    let dir = TempDir::new("sip-407");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let bob = socket();
    register_user(&bob, fe, "bob", "the-builder");
    let alice = socket();
    let me = alice.local_addr().unwrap();
    let call = |n: u32, proxy_auth: Option<&str>| {
        let pa = proxy_auth
            .map(|a| format!("Proxy-Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "INVITE sip:bob@{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bKcall{n}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@{DOMAIN}>;tag=a{n}\r\n\
             To: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: call-{n}@test\r\n\
             CSeq: {n} INVITE\r\n\
             Contact: <sip:alice@{me}>\r\n\
             {pa}Content-Length: 0\r\n\r\n"
        )
    };
    let r = transact(&alice, fe, &call(1, None));
    assert_eq!(status(&r), 407, "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("proxy-authenticate: digest"),
        "{r}"
    );
    let nonce = {
        let start = r.find("nonce=\"").unwrap() + 7;
        r[start..start + 64].to_string()
    };
    let answer = |user: &str, pass: &str, nc: u32| {
        let alg = Algorithm::Sha256;
        let uri = format!("sip:bob@{DOMAIN}");
        let ha1 = alg.hex(&format!("{user}:{DOMAIN}:{pass}"));
        let ha2 = alg.hex(&format!("INVITE:{uri}"));
        let nc = format!("{nc:08x}");
        let resp = alg.hex(&format!("{ha1}:{nonce}:{nc}:77:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{resp}\", algorithm=SHA-256, qop=auth, nc={nc}, cnonce=\"77\""
        )
    };
    let r = transact(&alice, fe, &call(2, Some(&answer("bob", "the-builder", 1))));
    assert_eq!(status(&r), 403, "bob's credentials in alice's name: {r}");
    alice
        .send_to(
            call(3, Some(&answer("alice", "wonderland", 2))).as_bytes(),
            fe,
        )
        .unwrap();
    assert!(rings(&bob), "alice's authenticated call did not reach bob");
}

/// One source sending 400 requests at once against a limit of 50 a second: at most about
/// the limit are handled, the excess is answered 503 with Retry-After, and another source
/// is still answered.
#[test]
fn a_flooding_source_gets_503_with_retry_after() {
    let dir = TempDir::new("sip-rate");
    let (_n, fe) = front_end_with(&dir, "[\"MD5\"]", "requests_per_s_per_source = 50\n");
    let flood = socket();
    for i in 0..400u32 {
        let msg = request(
            &flood,
            "OPTIONS",
            &format!("sip:nobody{i}@{DOMAIN}"),
            70,
            1000 + i,
        );
        flood.send_to(msg.as_bytes(), fe).unwrap();
    }
    let (mut limited, mut retry_after, mut other) = (0, 0, 0);
    let mut buf = [0u8; 65535];
    while let Ok((n, _)) = flood.recv_from(&mut buf) {
        let r = String::from_utf8_lossy(&buf[..n]);
        if r.starts_with("SIP/2.0 503") {
            limited += 1;
            if r.to_ascii_lowercase().contains("retry-after: ") {
                retry_after += 1;
            }
        } else if !r.starts_with("SIP/2.0 100") {
            other += 1;
        }
    }
    // Some of a 400-datagram burst are lost in the kernel's receive buffer, before the
    // front-end sees them: the bound is on what it answered.
    eprintln!("  {limited} answered 503, {other} handled");
    assert!(limited >= 100, "only {limited} of 400 answered 503");
    assert_eq!(retry_after, limited, "503 without Retry-After");
    assert!(
        other <= 100,
        "{other} handled within a limit of 50 a second"
    );
    // Another address (the limit is per IP address; the whole of 127/8 is loopback).
    let alice = UdpSocket::bind("127.0.0.2:0").unwrap();
    alice
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let r = transact(&alice, fe, &register(&alice, "alice", DOMAIN, 1, None));
    assert_eq!(status(&r), 401, "another source: {r}");
}

/// The Contact forms phones send by default (RFC 5626 `+sip.instance` and `reg-id`,
/// quoted feature tags, a display name, comma lists) register (issue 23's item 1: they
/// were dropped without an answer); `Contact: *` with a non-zero Expires gets 400.
#[test]
fn contacts_with_quoted_parameters_and_lists_register() {
    let dir = TempDir::new("sip-contacts");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let alice = socket();
    let me = alice.local_addr().unwrap();
    let forms = [
        format!("<sip:alice@{me}>;+sip.instance=\"<urn:uuid:0f1e2d3c-aaaa-bbbb-cccc-000000000001>\";reg-id=1"),
        format!("<sip:alice@{me};transport=udp>;methods=\"INVITE,ACK,BYE,CANCEL,OPTIONS\";expires=600"),
        format!("\"Alice Liddell\" <sip:alice@{me}>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel\""),
        format!("<sip:alice@{me}>;expires=300, <sip:alice@{me}>;expires=300"),
    ];
    for (i, contact) in forms.iter().enumerate() {
        let cseq = 10 * i as u32;
        let r = transact(
            &alice,
            fe,
            &register(&alice, "alice", DOMAIN, cseq + 1, None),
        );
        assert_eq!(status(&r), 401, "{r}");
        let nonce = challenge_param(&r, Algorithm::Md5, "nonce");
        let auth = digest(Algorithm::Md5, "alice", "wonderland", &nonce, 1);
        let msg = register(&alice, "alice", DOMAIN, cseq + 2, Some(&auth)).replace(
            &format!("Contact: <sip:alice@{me}>"),
            &format!("Contact: {contact}"),
        );
        let r = transact(&alice, fe, &msg);
        assert_eq!(status(&r), 200, "Contact: {contact}\n{r}");
    }
    // Contact: * is only for removing every binding (Expires: 0).
    let r = transact(&alice, fe, &register(&alice, "alice", DOMAIN, 100, None));
    let nonce = challenge_param(&r, Algorithm::Md5, "nonce");
    let auth = digest(Algorithm::Md5, "alice", "wonderland", &nonce, 1);
    let msg = register(&alice, "alice", DOMAIN, 101, Some(&auth))
        .replace(&format!("Contact: <sip:alice@{me}>"), "Contact: *");
    let r = transact(&alice, fe, &msg);
    assert_eq!(status(&r), 400, "Contact: * with Expires 600: {r}");
}

/// OPTIONS addressed to the front-end itself (its address, or the domain) is answered
/// 200 with Allow, as a dispatcher's health check wants (issue 23 item 2: it got 404);
/// so is an OPTIONS with Max-Forwards 0.
#[test]
fn options_to_the_front_end_itself_get_200() {
    let dir = TempDir::new("sip-options");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let s = socket();
    for (i, (uri, mf)) in [
        (format!("sip:{fe}"), 70),
        (format!("sip:{DOMAIN}"), 70),
        (format!("sip:nobody@{DOMAIN}"), 0),
    ]
    .into_iter()
    .enumerate()
    {
        let r = transact(&s, fe, &request(&s, "OPTIONS", &uri, mf, 2000 + i as u32));
        assert_eq!(status(&r), 200, "OPTIONS {uri} (Max-Forwards {mf}): {r}");
        assert!(r.contains("Allow: "), "{r}");
    }
}

/// Requests the front-end cannot take get an answer saying why, not silence (issue 23
/// item 7): another SIP version 505, an unknown method 405 with Allow, a malformed or
/// missing mandatory header 400 with the reason in the phrase.
#[test]
fn malformed_requests_get_400_505_405() {
    let dir = TempDir::new("sip-malformed");
    let (_n, fe) = front_end(&dir, "[\"MD5\"]");
    let s = socket();
    let base = request(&s, "OPTIONS", &format!("sip:alice@{DOMAIN}"), 70, 3000);
    let cases: Vec<(String, u16, &str)> = vec![
        (base.replace(" SIP/2.0\r\n", " SIP/3.0\r\n"), 505, "version"),
        (
            base.replacen("OPTIONS", "FROBNICATE", 1)
                .replace("1 OPTIONS", "1 FROBNICATE"),
            405,
            "method",
        ),
        (
            base.replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS"),
            400,
            "CSeq",
        ),
        (base.replace("To: <sip:alice@p2psip>\r\n", ""), 400, "To"),
        (
            base.replace("Call-ID: abuse-3000@test\r\n", ""),
            400,
            "Call-ID",
        ),
        (
            base.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nno colon here\r\n",
            ),
            400,
            "header",
        ),
    ];
    for (msg, code, what) in cases {
        let r = transact(&s, fe, &msg);
        assert_eq!(status(&r), code, "{what}: {r}\nfor\n{msg}");
        let line = r.lines().next().unwrap();
        if code == 405 {
            assert!(r.contains("Allow: "), "{r}");
        }
        if code == 400 {
            assert!(
                line.to_ascii_lowercase()
                    .contains(&what.to_ascii_lowercase()),
                "the reason phrase does not say what is wrong: {line}"
            );
        }
        assert!(
            r.contains("Call-ID: abuse-3000@test") || what == "Call-ID",
            "{r}"
        );
    }
}

/// A phone's reason phrase reaches the caller as the phone wrote it (issue 23 item 7:
/// `486 Rejected` arrived as `486 BusyHere`).
#[test]
fn reason_phrases_pass_through_untouched() {
    let dir = TempDir::new("sip-reason");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    let me = alice.local_addr().unwrap();
    register_alice_at(&alice, fe, &format!("sip:alice@{me}"));
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let mut buf = [0u8; 65535];
    let invite_at_alice = next_request(&alice, "INVITE").expect("the INVITE never reached alice");
    // alice answers 486 with her own phrase, copying the headers a UAS copies.
    answer(
        &alice,
        fe,
        &invite_at_alice,
        486,
        "Rejected by Alice, Sorry",
        "alice1",
    );
    let got = eventually(Duration::from_secs(5), || {
        let (n, _) = carol.recv_from(&mut buf).ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        m.starts_with("SIP/2.0 486").then_some(m)
    })
    .expect("carol never got the 486");
    assert_eq!(
        got.lines().next().unwrap(),
        "SIP/2.0 486 Rejected by Alice, Sorry",
        "{got}"
    );
}

/// A phone behind a dispatcher that spreads requests over the front-ends (Kamailio's
/// round-robin) answers fe1's challenge at fe2: fe2 takes the answer, as front-ends with
/// the same users file share the secret their nonces are made with (it got a new 401 with
/// stale=true, and the next answer could land on yet another front-end).
#[test]
fn a_challenge_from_one_front_end_is_answered_at_another() {
    let dir = TempDir::new("sip-nonce-shared");
    let [(_a, fe1), (_b, fe2)] = two_front_ends(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    let r = transact(&alice, fe1, &register(&alice, "alice", DOMAIN, 1, None));
    assert_eq!(status(&r), 401, "{r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    let r = transact(
        &alice,
        fe2,
        &register(&alice, "alice", DOMAIN, 2, Some(&auth)),
    );
    assert_eq!(status(&r), 200, "fe2 refused fe1's nonce:\n{r}");
    // A wrong password is still refused there.
    let r = transact(&alice, fe1, &register(&alice, "alice", DOMAIN, 3, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let bad = digest(Algorithm::Sha256, "alice", "wrong-password", &nonce, 1);
    let r = transact(
        &alice,
        fe2,
        &register(&alice, "alice", DOMAIN, 4, Some(&bad)),
    );
    assert_eq!(status(&r), 401, "{r}");
}

/// The harness itself: a front-end that answers every retransmission of an INVITE with
/// 100 Trying and decides after 1.5 s (an overlay lookup on a loaded machine) is waited
/// for. CI failed once when twenty quick 100s used up every try before the 403 came.
#[test]
fn transact_waits_past_provisional_answers() {
    let server = socket();
    let to = server.local_addr().unwrap();
    let phone = socket();
    let helper = std::thread::spawn(move || {
        let mut buf = [0u8; 65535];
        let start = std::time::Instant::now();
        let mut from = None;
        while start.elapsed() < Duration::from_millis(1500) {
            if let Ok((_, src)) = server.recv_from(&mut buf) {
                server.send_to(b"SIP/2.0 100 Trying\r\n\r\n", src).unwrap();
                from = Some(src);
            }
        }
        let src = from.expect("no request arrived");
        server
            .send_to(b"SIP/2.0 403 Forbidden\r\n\r\n", src)
            .unwrap();
    });
    let r = transact(
        &phone,
        to,
        &request(&phone, "INVITE", "sip:x@127.0.0.1", 70, 1),
    );
    assert_eq!(status(&r), 403, "{r}");
    helper.join().unwrap();
}

/// A call to an AOR written with a front-end's IP:port (`sip:alice@<fe1>`, what a user
/// tries first without a domain), alice registered at the other front-end: it rings her
/// (issue 23 item 3: it bounced between the two front-ends 72 times to a 483).
#[test]
fn an_aor_naming_a_front_end_address_reaches_the_user_registered_elsewhere() {
    let dir = TempDir::new("sip-aor-ip");
    let [(_a, fe1), (_b, fe2)] = two_front_ends(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    let me = alice.local_addr().unwrap();
    register_alice_at(&alice, fe2, &format!("sip:alice@{me}"));
    invite_rings_alice(&alice, fe1, &format!("sip:alice@{fe1}"), 7);
}

/// The same with the address of *another* front-end of the overlay: carol's phone sends
/// to fe1 `sip:alice@<fe2>` (or any front-end's address): the front-ends publish their SIP
/// addresses in the overlay (kind SIP-FRONT-END), so fe1 takes it as the domain instead of
/// refusing it as a host that is no device (it answered 403).
#[test]
fn an_aor_naming_another_front_ends_address_is_taken_as_the_domain() {
    let dir = TempDir::new("sip-aor-other-fe");
    let [(a, fe1), (_b, fe2)] = two_front_ends(&dir, "[\"SHA-256\", \"MD5\"]");
    let fe3 = front_end_in(&dir.0.join("fe3"), &[a.addr], "[\"SHA-256\", \"MD5\"]", "");
    // Each front-end publishes its address once it has joined.
    for fe in [fe2, fe3.1] {
        let published = eventually(Duration::from_secs(20), || {
            let name = format!("sip-front-end:{fe}");
            let (code, out, _) = client(
                a.addr,
                OVERLAY,
                &["fetch", &name, "--kind", "sip-front-end"],
            );
            (code == 0 && out.contains(&fe.to_string())).then_some(())
        });
        assert!(published.is_some(), "{fe} never published its address");
    }
    let alice = socket();
    let me = alice.local_addr().unwrap();
    register_alice_at(&alice, fe2, &format!("sip:alice@{me}"));
    // The URI names the front-end alice registered at, and one she has nothing to do with.
    invite_rings_alice(&alice, fe1, &format!("sip:alice@{fe2}"), 8);
    invite_rings_alice(&alice, fe1, &format!("sip:alice@{}", fe3.1), 9);
    // A host that is no front-end and no device is still refused, and gets nothing.
    let victim = socket();
    let carol = socket();
    let uri = format!("sip:alice@{}", victim.local_addr().unwrap());
    let r = transact(&carol, fe1, &request(&carol, "INVITE", &uri, 70, 41));
    assert_eq!(status(&r), 403, "{uri}: {r}");
}

/// carol (a new socket) sends to `fe` INVITE number `n` for `uri`; it reaches alice (at `alice`)
/// in at most three Vias, not an error.
fn invite_rings_alice(alice: &UdpSocket, fe: SocketAddr, uri: &str, n: u32) {
    let carol = socket();
    let msg = invite(&carol, n).replace(
        &format!("INVITE sip:alice@{DOMAIN} "),
        &format!("INVITE {uri} "),
    );
    carol.send_to(msg.as_bytes(), fe).unwrap();
    let mut buf = [0u8; 65535];
    let got = eventually(Duration::from_secs(8), || {
        if let Ok((n, _)) = carol.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("SIP/2.0 4") || m.starts_with("SIP/2.0 5") {
                return Some(Err(m));
            }
        }
        alice.recv_from(&mut buf).ok().and_then(|(n, _)| {
            buf[..n]
                .starts_with(b"INVITE ")
                .then(|| Ok(String::from_utf8_lossy(&buf[..n]).into_owned()))
        })
    });
    match got {
        Some(Ok(inv)) => {
            let hops = inv
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                .count();
            assert!(
                hops <= 3,
                "{uri}: the INVITE went round: {hops} Vias\n{inv}"
            );
        }
        Some(Err(answer)) => {
            panic!("{uri}: carol got an error instead of ringing alice:\n{answer}")
        }
        None => panic!("{uri}: the INVITE never reached alice"),
    }
}

/// Each leg keeps its transport (issue 23 item 5): a phone registered over TCP gets the
/// INVITE on its connection with a Record-Route that says `transport=tcp` (and, the caller
/// being on UDP, a second one without it: RFC 5658 double record-routing); a Contact with
/// `;transport=tcp` registered over UDP is called over TCP.
#[test]
fn record_route_and_contact_keep_the_transport() {
    use std::io::Write;
    let dir = TempDir::new("sip-transport");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    // alice registers over TCP.
    let mut alice = std::net::TcpStream::connect(fe).unwrap();
    let me = alice.local_addr().unwrap();
    let reg = |cseq: u32, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bKtcpreg{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@{DOMAIN}>;tag=t{cseq}\r\n\
             To: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: tcp-reg@test\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:alice@{me};transport=tcp>\r\n\
             Expires: 600\r\n\
             {auth}Content-Length: 0\r\n\r\n"
        )
    };
    alice.write_all(reg(1, None).as_bytes()).unwrap();
    let r = read_tcp_message(&mut alice);
    assert_eq!(status(&r), 401, "{r}");
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    alice.write_all(reg(2, Some(&auth)).as_bytes()).unwrap();
    let r = read_tcp_message(&mut alice);
    assert_eq!(status(&r), 200, "{r}");
    // carol calls over UDP; the INVITE reaches alice on her connection.
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = read_tcp_message(&mut alice);
    assert!(inv.starts_with("INVITE "), "{inv}");
    let rr: Vec<&str> = inv
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("record-route:"))
        .collect();
    let all = rr.join(" | ");
    assert!(
        rr.first()
            .is_some_and(|l| l.to_ascii_lowercase().contains("transport=tcp")),
        "the Record-Route alice uses names no TCP: {all}"
    );
    assert!(
        all.matches(&fe.to_string()).count() == 2,
        "one Record-Route for a TCP and a UDP leg: {all}"
    );
    // bob registers over UDP with a TCP Contact: the call to him comes over TCP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_contact = listener.local_addr().unwrap();
    let bob = socket();
    let r = transact(&bob, fe, &register(&bob, "bob", DOMAIN, 1, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "bob", "the-builder", &nonce, 1);
    let bob_me = bob.local_addr().unwrap();
    let msg = register(&bob, "bob", DOMAIN, 2, Some(&auth)).replace(
        &format!("Contact: <sip:bob@{bob_me}>"),
        &format!("Contact: <sip:bob@{tcp_contact};transport=tcp>"),
    );
    assert_eq!(status(&transact(&bob, fe, &msg)), 200);
    carol
        .send_to(
            invite(&carol, 2)
                .replace("INVITE sip:alice@", "INVITE sip:bob@")
                .replace("To: <sip:alice@", "To: <sip:bob@")
                .as_bytes(),
            fe,
        )
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let conn = eventually(Duration::from_secs(5), || listener.accept().ok());
    let (mut conn, _) = conn.expect("the call to a TCP Contact did not come over TCP");
    conn.set_nonblocking(false).unwrap();
    let inv = read_tcp_message(&mut conn);
    assert!(inv.starts_with("INVITE sip:bob@"), "{inv}");
}

// ---- several devices per AOR, forking ---------------------------------------------------

/// Three devices of alice: d1 at one front-end, d2 and d3 at the other (issue 23 item 6:
/// a second device replaced the first, across front-ends the freshest binding took every
/// call). One INVITE rings all three; d3 answers, the caller gets its 200 and the others
/// a CANCEL. d2 unregisters its own Contact: calls still ring d1 and d3. Each device has
/// its own GRUU, and a call to d1's rings d1 alone.
#[test]
fn an_invite_forks_to_every_device_and_the_first_answer_wins() {
    let dir = TempDir::new("sip-fork");
    let [(_a, fe1), (_b, fe2)] = two_front_ends(&dir, "[\"SHA-256\", \"MD5\"]");
    let (d1, d2, d3) = (socket(), socket(), socket());
    let r1 = register_device(&d1, fe1, "d1", 600, 1);
    register_device(&d2, fe2, "d2", 600, 1);
    let r3 = register_device(&d3, fe2, "d3", 600, 1);
    let contacts = r3
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("contact:"))
        .count();
    assert_eq!(contacts, 2, "the 200 lists both of fe2's devices:\n{r3}");
    let gruu_of = |r: &str| {
        let start = r.find("pub-gruu=\"").unwrap() + 10;
        r[start..].split('"').next().unwrap().to_string()
    };
    let g1 = gruu_of(&r1);
    assert_ne!(g1, gruu_of(&r3), "two devices with one GRUU");
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe1).unwrap();
    let i1 = next_request(&d1, "INVITE").expect("d1 did not ring");
    let i2 = next_request(&d2, "INVITE").expect("d2 did not ring");
    let i3 = next_request(&d3, "INVITE").expect("d3 did not ring");
    answer(&d3, fe2, &i3, 200, "OK", "d3");
    let got = next_final(&carol).expect("carol got no final answer");
    assert!(got.starts_with("SIP/2.0 200"), "{got}");
    assert!(got.contains("tag=d3"), "the 200 is not d3's: {got}");
    // The others are cancelled; they answer 487 as phones do, and are ACKed.
    for (d, inv, fe, tag) in [(&d1, &i1, fe1, "d1"), (&d2, &i2, fe2, "d2")] {
        let c = next_request(d, "CANCEL").unwrap_or_else(|| panic!("{tag} got no CANCEL"));
        answer(d, fe, &c, 200, "OK", tag);
        answer(d, fe, inv, 487, "Request Terminated", tag);
        assert!(
            next_request(d, "ACK").is_some(),
            "{tag}'s 487 was not ACKed"
        );
    }
    let mut buf = [0u8; 4096];
    carol
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    while let Ok((n, _)) = carol.recv_from(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]);
        assert!(
            !m.starts_with("SIP/2.0 487"),
            "the cancelled branches' 487 reached the caller"
        );
    }
    carol
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // d2 removes its own binding: d1 and d3 still ring.
    register_device(&d2, fe2, "d2", 0, 10);
    carol.send_to(invite(&carol, 2).as_bytes(), fe1).unwrap();
    let i1 = next_request(&d1, "INVITE").expect("d1 no longer rings after d2 left");
    let i3 = next_request(&d3, "INVITE").expect("d3 no longer rings after d2 left");
    assert!(
        next_request(&d2, "INVITE").is_none(),
        "d2 rang after unregistering"
    );
    // Both busy: the caller gets one 486.
    answer(&d1, fe1, &i1, 486, "Busy Here", "d1");
    answer(&d3, fe2, &i3, 486, "Busy Here", "d3");
    let got = next_final(&carol).expect("carol got no final answer");
    assert!(got.starts_with("SIP/2.0 486"), "{got}");
    // d1's GRUU reaches d1 alone.
    let to_gruu = invite(&carol, 3).replacen(
        &format!("INVITE sip:alice@{DOMAIN} "),
        &format!("INVITE {g1} "),
        1,
    );
    carol.send_to(to_gruu.as_bytes(), fe2).unwrap();
    assert!(
        next_request(&d1, "INVITE").is_some(),
        "d1's GRUU did not reach d1"
    );
    assert!(next_request(&d3, "INVITE").is_none(), "d1's GRUU rang d3");
}

/// Two baresip phones registered as alice (their own instances, the uuid module), at two
/// front-ends, and bob at a third place: his call rings both; the one answering gets the
/// call, the other is cancelled.
#[test]
fn baresip_two_devices_of_one_user_both_ring() {
    if !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-baresip-fork");
    let [(_a, fe1), (_b, fe2)] = two_front_ends(&dir, "[\"MD5\"]");
    let account = |user: &str, pw: &str, fe: SocketAddr, extra: &str| {
        format!("<sip:{user}@{DOMAIN}>;outbound=\"sip:{fe}\";auth_pass={pw};regint=600{extra}")
    };
    let mut answering = baresip::Phone::new(
        &dir.0,
        "alice-desk",
        &account("alice", "wonderland", fe1, ";answermode=auto"),
    );
    let mut ringing = baresip::Phone::new(
        &dir.0,
        "alice-mobile",
        &account("alice", "wonderland", fe2, ""),
    );
    let mut bob = baresip::Phone::new(&dir.0, "bob", &account("bob", "the-builder", fe2, ""));
    ringing.start(20, &[]);
    assert!(
        ringing.wait_for("200 OK", Duration::from_secs(10)),
        "{}",
        ringing.output()
    );
    // The one answering registers last: it would have replaced the other before.
    answering.start(20, &[]);
    assert!(
        answering.wait_for("200 OK", Duration::from_secs(10)),
        "{}",
        answering.output()
    );
    let b = bob.run(6, &[&format!("/dial sip:alice@{DOMAIN}")]);
    assert!(
        b.contains("Call established: sip:alice@p2psip"),
        "bob's call was not answered:\n{b}"
    );
    let a = answering.finish(Duration::from_secs(30));
    assert!(a.contains("Call established: sip:bob@p2psip"), "{a}");
    let r = ringing.finish(Duration::from_secs(30));
    assert!(
        r.contains("Incoming call from"),
        "the other device of alice did not ring:\n{r}"
    );
    assert!(
        !r.contains("Call established"),
        "the other device got the call too:\n{r}"
    );
    assert!(
        r.contains("session closed"),
        "the ringing device was not cancelled:\n{r}"
    );
}

/// Path (RFC 3327): a REGISTER relayed by an edge proxy that adds `Path: <sip:EDGE;lr>`
/// is stored with the binding; a call to alice goes to the edge proxy with that Route and
/// her Contact as Request-URI (issue 23 item 4: it went straight to her Contact, around the
/// proxy, which fails for phones behind it). The 200 returns the Path.
#[test]
fn calls_to_a_device_registered_through_an_edge_proxy_go_through_it() {
    let dir = TempDir::new("sip-path");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let edge = socket();
    let e = edge.local_addr().unwrap();
    // alice's phone, behind the edge: an address the front-end cannot reach.
    let phone = socket();
    let p = phone.local_addr().unwrap();
    let path = format!("Path: <sip:{e};lr>\r\n");
    let reg = |cseq: u32, auth: Option<&str>| {
        register(&edge, "alice", DOMAIN, cseq, auth)
            .replace(
                &format!("Contact: <sip:alice@{e}>"),
                &format!("Contact: <sip:alice@{p}>"),
            )
            .replace(
                "Expires: 600\r\n",
                &format!("Expires: 600\r\n{path}Supported: path\r\n"),
            )
    };
    let r = transact(&edge, fe, &reg(1, None));
    let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
    let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
    let r = transact(&edge, fe, &reg(2, Some(&auth)));
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        r.contains(&format!("Path: <sip:{e};lr>")),
        "the 200 lacks the Path: {r}"
    );
    let carol = socket();
    carol.send_to(invite(&carol, 1).as_bytes(), fe).unwrap();
    let inv = next_request(&edge, "INVITE").expect("the INVITE did not go through the edge proxy");
    assert!(inv.starts_with(&format!("INVITE sip:alice@{p} ")), "{inv}");
    assert!(
        inv.contains(&format!("Route: <sip:{e};lr>")),
        "no Route to the edge: {inv}"
    );
    let mut buf = [0u8; 2048];
    assert!(
        phone.recv_from(&mut buf).is_err(),
        "the INVITE went around the edge proxy"
    );
}

/// The ACK for a final answer the front-end gave itself (a 407 challenge, a 404) ends
/// there (RFC 3261 section 17.2.1): it reached the callee before, and linphone answered
/// such a stray ACK with 405, which came back to the caller.
#[test]
fn the_ack_of_a_local_answer_is_not_forwarded() {
    let dir = TempDir::new("sip-ack");
    let (_n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let bob = socket();
    register_user(&bob, fe, "bob", "the-builder");
    // alice@p2psip calls bob without credentials: 407 from the front-end.
    let alice = socket();
    let me = alice.local_addr().unwrap();
    let inv = format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKack1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{DOMAIN}>;tag=a1\r\n\
         To: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: ack-1@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let r = transact(&alice, fe, &inv);
    assert_eq!(status(&r), 407, "{r}");
    let to = r
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("to:"))
        .unwrap()
        .to_string();
    let ack = inv
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(&format!("To: <sip:bob@{DOMAIN}>"), to.trim());
    alice.send_to(ack.as_bytes(), fe).unwrap();
    assert!(
        next_request(&bob, "ACK").is_none(),
        "the ACK of the 407 reached bob"
    );
}

/// linphonec with its default configuration (one account, its own Contact with
/// +sip.instance, GRUU support) registers with its password, answers bob's call
/// (baresip) and, calling bob itself, hangs up.
#[test]
fn linphonec_registers_answers_calls_and_hangs_up() {
    if !linphone::available() || !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-linphone");
    let (n, fe) = front_end(&dir, "[\"MD5\"]");
    let mut alice = linphone::Linphone::start(&dir.0, "alice", "alice", DOMAIN, "wonderland", fe);
    assert!(
        alice.wait_log("LinphoneRegistrationOk", Duration::from_secs(15)),
        "linphonec did not register:\n{}",
        alice
            .log()
            .lines()
            .filter(|l| l.starts_with("SIP/2.0") || l.starts_with("REGISTER"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let bob_account = |extra: &str| {
        format!("<sip:bob@{DOMAIN}>;outbound=\"sip:{fe}\";auth_pass=the-builder;regint=600{extra}")
    };
    // bob calls alice; linphonec answers; bob hangs up when he quits.
    let b = baresip::Phone::new(&dir.0, "bob", &bob_account(""))
        .run(6, &[&format!("/dial sip:alice@{DOMAIN}")]);
    assert!(
        b.contains("Call established: sip:alice@p2psip"),
        "linphonec did not answer bob:\n{b}\n{}",
        std::fs::read_to_string(&n.stderr_log).unwrap_or_default()
    );
    assert!(
        !b.contains("405"),
        "a stray request reached linphonec:\n{b}"
    );
    assert!(
        alice.wait_output("ended", Duration::from_secs(10)),
        "bob's hang-up did not reach linphonec:\n{}",
        alice.output()
    );
    // alice calls bob (answering by himself) and hangs up.
    let mut bob = baresip::Phone::new(&dir.0, "bob2", &bob_account(";answermode=auto"));
    bob.start(10, &[]);
    assert!(
        bob.wait_for("200 OK", Duration::from_secs(10)),
        "{}",
        bob.output()
    );
    alice.command(&format!("call sip:bob@{DOMAIN}"));
    assert!(
        bob.wait_for(
            "Call established: sip:alice@p2psip",
            Duration::from_secs(10)
        ),
        "linphonec's call did not reach bob:\n{}\n{}",
        bob.output(),
        alice.output()
    );
    // Hang up once linphonec has the call's media up (its own event).
    assert!(
        alice.wait_output(
            "Media streams established with sip:bob@p2psip",
            Duration::from_secs(10)
        ),
        "{}",
        alice.output()
    );
    alice.command("terminate");
    // bob's answer to alice's BYE (From alice: the call she made), in linphonec's SIP
    // log (baresip does not always print the end of a call hung up this soon).
    let bye_answered = |log: &str| {
        let lines: Vec<&str> = log.lines().collect();
        lines.iter().enumerate().any(|(i, l)| {
            let block = &lines[i..lines.len().min(i + 16)];
            l.starts_with("SIP/2.0 200")
                && block
                    .iter()
                    .any(|h| h.starts_with("CSeq:") && h.ends_with(" BYE"))
                && block
                    .iter()
                    .any(|h| h.starts_with("From:") && h.contains("sip:alice@"))
        })
    };
    assert!(
        !bye_answered(&alice.log()),
        "a BYE of alice's before she hung up"
    );
    assert!(
        eventually(Duration::from_secs(10), || bye_answered(&alice.log())
            .then_some(()))
        .is_some(),
        "linphonec's BYE was not answered:\n{}",
        bob.finish(Duration::from_secs(20))
    );
}

/// Kamailio's dispatcher in front of three front-ends (issue 23 item 2: OPTIONS to a
/// front-end got 404, so the dispatcher marked every one down and answered calls 503):
/// its OPTIONS pings mark all three up; baresip phones registered through Kamailio
/// (which adds Path) call each other, and the call to the phone goes through Kamailio
/// (issue 23 item 4: it went around it, to the Contact).
#[test]
fn kamailio_dispatches_to_the_front_ends_and_the_call_goes_through_it() {
    if !kamailio::available() || !baresip::available() {
        return;
    }
    let dir = TempDir::new("sip-kamailio");
    let a = front_end_in(&dir.0.join("fe1"), &[], "[\"MD5\"]", "");
    let boot = [a.0.addr];
    let b = front_end_in(&dir.0.join("fe2"), &boot, "[\"MD5\"]", "");
    let c = front_end_in(&dir.0.join("fe3"), &boot, "[\"MD5\"]", "");
    let kam = kamailio::Kamailio::start(&dir.0.join("kamailio"), &[a.1, b.1, c.1]);
    assert!(
        kam.all_up(3, Duration::from_secs(15)),
        "the dispatcher did not mark the front-ends up: {:?}\n{}",
        kam.destinations(),
        kam.log()
    );
    let account = |user: &str, pw: &str, extra: &str| {
        format!(
            "<sip:{user}@{DOMAIN}>;outbound=\"sip:{}\";auth_pass={pw};regint=600{extra}",
            kam.addr
        )
    };
    let mut alice = baresip::Phone::new(
        &dir.0,
        "alice",
        &account("alice", "wonderland", ";answermode=auto"),
    );
    alice.start(20, &[]);
    assert!(
        alice.wait_for("200 OK", Duration::from_secs(10)),
        "alice did not register through Kamailio:\n{}\n{}",
        alice.output(),
        kam.log()
    );
    let bob = baresip::Phone::new(&dir.0, "bob", &account("bob", "the-builder", ""))
        .run(6, &[&format!("/dial sip:alice@{DOMAIN}")]);
    let logs = [&a.0, &b.0, &c.0]
        .iter()
        .map(|n| std::fs::read_to_string(&n.stderr_log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n----\n");
    assert!(
        bob.contains("Call established: sip:alice@p2psip"),
        "the call through Kamailio was not answered:\n{bob}\n{}\n{logs}",
        kam.log()
    );
    assert!(
        kam.log().contains("kamailio: routed INVITE to sip:alice"),
        "the INVITE to alice's phone did not go through Kamailio (her Path):\n{}",
        kam.log()
    );
}

/// Behind a proxy every phone shares its address: one phone with a wrong password got
/// the proxy's address limited (5 failures a minute), and every other user behind it was
/// refused with it. Listed in `sip.trusted_proxies`, the proxy's failures count per user
/// only: bob is limited, alice still registers.
#[test]
fn failures_through_a_trusted_proxy_count_per_user() {
    let run = |dir: &TempDir, extra: &str| -> (u16, u16) {
        let (_n, fe) = front_end_with(dir, "[\"SHA-256\", \"MD5\"]", extra);
        let s = socket();
        for i in 0..6 {
            let r = transact(&s, fe, &register(&s, "bob", DOMAIN, 10 * i + 1, None));
            if status(&r) == 403 {
                break;
            }
            let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
            let auth = digest(Algorithm::Sha256, "bob", "wrong-guess", &nonce, 1);
            transact(
                &s,
                fe,
                &register(&s, "bob", DOMAIN, 10 * i + 2, Some(&auth)),
            );
        }
        // bob now, with his right password: refused while limited.
        let r = transact(&s, fe, &register(&s, "bob", DOMAIN, 99, None));
        let bob = if status(&r) == 401 {
            let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
            let auth = digest(Algorithm::Sha256, "bob", "the-builder", &nonce, 1);
            status(&transact(
                &s,
                fe,
                &register(&s, "bob", DOMAIN, 100, Some(&auth)),
            ))
        } else {
            status(&r)
        };
        let r = transact(&s, fe, &register(&s, "alice", DOMAIN, 101, None));
        if status(&r) != 401 {
            return (bob, status(&r));
        }
        let nonce = challenge_param(&r, Algorithm::Sha256, "nonce");
        let auth = digest(Algorithm::Sha256, "alice", "wonderland", &nonce, 1);
        let alice = status(&transact(
            &s,
            fe,
            &register(&s, "alice", DOMAIN, 102, Some(&auth)),
        ));
        (bob, alice)
    };
    let plain = TempDir::new("sip-proxy-plain");
    assert_eq!(
        run(&plain, ""),
        (403, 403),
        "without the setting the address is limited"
    );
    let trusted = TempDir::new("sip-proxy-trusted");
    assert_eq!(
        run(&trusted, "trusted_proxies = [\"127.0.0.1\"]\n"),
        (403, 200),
        "through a trusted proxy bob is limited, alice is not"
    );
}

/// A front-end that restarted lost its bindings, but its entry of alice's is still in the
/// overlay: a call to her gets 480 (Temporarily Unavailable: her phone will register again),
/// not 404, as before several devices per AOR.
#[test]
fn a_call_to_a_binding_lost_in_a_restart_gets_480() {
    let dir = TempDir::new("sip-restart");
    let (mut n, fe) = front_end(&dir, "[\"SHA-256\", \"MD5\"]");
    let alice = socket();
    let me = alice.local_addr().unwrap();
    register_alice_at(&alice, fe, &format!("sip:alice@{me}"));
    let config = n.config.clone();
    let _ = n.child.kill();
    let _ = n.child.wait();
    drop(n);
    let n = spawn_node(&dir.0, config);
    assert!(
        eventually(Duration::from_secs(20), || joined_alone(&n).then_some(())).is_some(),
        "the node did not come back"
    );
    let fe = n.sip_addr().expect("no SIP front-end after the restart");
    let carol = socket();
    let r = transact(&carol, fe, &invite(&carol, 1));
    assert_eq!(status(&r), 480, "{r}");
}
