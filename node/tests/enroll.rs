//! An enrolled overlay (proto/SPEC.md 5.2): `p2psip ca init` makes its CA, `p2psip ca
//! issue` certifies nodes and users with Node-IDs the CA picks. Enrolled nodes join and
//! their Node-ID is the certificate's; a self-signed node, an expired certificate, a
//! revoked one and another CA's are refused at the handshake (and counted); a node that
//! holds a valid certificate but claims another Node-ID is refused; values are signed with
//! the user's certificate and a user cannot write another user's resource.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_node::security::trust::Trust;
use p2psip_node::{identity, tls};
use p2psip_proto::{pb, Body, Destination, Id, Message, OwnedHeader};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const OVERLAY: &str = "enroll.test";

/// Runs `p2psip ARGS`, asserting success; returns stdout.
fn p2psip(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "p2psip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key` in `ca issue`'s output.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap()
        .to_string()
}

/// A key at `dir/node.key` and a certificate for it at `dir/node.pem` (extra `ca issue`
/// arguments in `extra`); returns `ca issue`'s output.
fn enroll(ca: &Path, dir: &Path, user: &str, extra: &[&str]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("node.key");
    let pem = dir.join("node.pem");
    p2psip(&["keygen", "-o", key.to_str().unwrap()]);
    let mut args = vec!["ca", "issue", "--dir", ca.to_str().unwrap(), "--user", user];
    args.extend([
        "--identity",
        key.to_str().unwrap(),
        "-o",
        pem.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    p2psip(&args)
}

/// Writes `text` as an overlay configuration document and signs it with the CA in `ca`;
/// returns the signed file `<out>`.
fn sign_doc(ca: &Path, text: &str, out: &Path) -> std::path::PathBuf {
    let doc = out.with_extension("toml");
    std::fs::write(&doc, text).unwrap();
    let (ca, doc_s, out_s) = (
        ca.to_str().unwrap(),
        doc.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    p2psip(&[
        "ca",
        "sign-config",
        "--dir",
        ca,
        "--config",
        doc_s,
        "-o",
        out_s,
    ]);
    out.to_path_buf()
}

/// Starts a node in `dir` enrolled with `dir/node.pem` (and the CA's revocation list).
fn start_enrolled(ca: &Path, dir: &Path, boot: &[SocketAddr]) -> NodeProc {
    let config = write_config(dir, OVERLAY, boot, "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "[security]\nca = {:?}\ncertificate = {:?}\nrevoked = {:?}\n",
        ca.join("ca.pem"),
        dir.join("node.pem"),
        ca.join("revoked.txt")
    );
    std::fs::write(&config, text).unwrap();
    spawn_node(dir, config)
}

fn joined(n: &NodeProc) -> bool {
    scrape(n.metrics)
        .is_some_and(|t| metric_sum(&parse_prometheus(&t), "p2psip_overlay_joined", &[]) == 1.0)
}

fn refused(n: &NodeProc, reason: &str) -> f64 {
    metric_sum(
        &parse_prometheus(&scrape(n.metrics).unwrap_or_default()),
        "p2psip_certificates_refused_total",
        &[("reason", reason)],
    )
}

/// TLS credentials from a key directory made by [`enroll`]; `enrolled` picks the CA's
/// certificate, else a self-signed one for the same key.
fn creds(dir: &Path, enrolled: bool) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let seed = identity::read_seed(&dir.join("node.key")).unwrap();
    if !enrolled {
        return identity::tls_credentials(&seed).unwrap();
    }
    let der = p2psip_node::security::trust::read_cert(&dir.join("node.pem")).unwrap();
    (
        vec![CertificateDer::from(der)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity::pkcs8_of(&seed))),
    )
}

/// A raw QUIC connection with the given certificate; this side accepts the CA's nodes.
async fn raw_connect(
    ca: &Path,
    addr: SocketAddr,
    (certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let ca_der = p2psip_node::security::trust::read_cert(&ca.join("ca.pem")).unwrap();
    let trust = Trust::enrolled(OVERLAY, ca_der, Default::default(), true).unwrap();
    let (_, client) = tls::configs(certs, key, Arc::new(trust), "test".into()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client).unwrap(),
    )));
    let sni = format!("o{:08x}.p2psip", p2psip_proto::overlay_id(OVERLAY));
    let conn = ep.connect(addr, &sni).unwrap().await;
    // The server's refusal may only show on the first use of the connection (TLS 1.3 sends
    // the client's certificate after the client considers the handshake done).
    let conn = conn.map_err(|e| e.to_string())?;
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    s.write_all(&ping(Id(1))).await.map_err(|e| e.to_string())?;
    let _ = s.finish();
    match tokio::time::timeout(Duration::from_secs(3), conn.accept_uni()).await {
        Ok(Ok(_)) => Ok((ep, conn)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn ping(via: Id) -> Vec<u8> {
    Message {
        header: OwnedHeader {
            via: vec![Destination::Node(via)],
            ..OwnedHeader::new(
                p2psip_proto::overlay_id(OVERLAY),
                0x5eed,
                Destination::Resource(Id(77)),
            )
        },
        body: Body::PingReq(pb::PingReq {
            padding: vec![],
            ..Default::default()
        }),
        security: None,
    }
    .encode()
    .unwrap()
}

#[test]
fn only_enrolled_nodes_join_and_write() {
    let root = TempDir::new("enroll");
    let ca = root.0.join("ca");
    let ca_s = ca.to_str().unwrap();
    p2psip(&["ca", "init", "--dir", ca_s, "--overlay", OVERLAY]);

    // Two enrolled peers: the Node-ID each runs with is the one its certificate binds.
    let (da, db) = (root.0.join("a"), root.0.join("b"));
    let ia = enroll(&ca, &da, "node-a", &[]);
    let ib = enroll(&ca, &db, "node-b", &[]);
    let a = start_enrolled(&ca, &da, &[]);
    let b = start_enrolled(&ca, &db, &[a.addr]);
    assert!(
        eventually(Duration::from_secs(20), || joined(&b).then_some(())).is_some(),
        "an enrolled node joins"
    );
    assert!(field(&ia, "node_id").starts_with(&a.id), "{ia} / {}", a.id);
    assert!(field(&ib, "node_id").starts_with(&b.id), "{ib} / {}", b.id);
    let own = p2psip(&["id", da.join("node.key").to_str().unwrap()]);
    assert!(
        !own.trim().starts_with(&a.id),
        "the CA's Node-ID, not the hash of the key"
    );

    // Enrollment over HTTPS (`p2psip ca serve`): a user with a password gets a certificate
    // for its key, and the node joins with it; a wrong password gets none.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pw = root.0.join("pw");
    std::fs::write(&pw, "correct horse battery\n").unwrap();
    p2psip(
        &["ca", "add-user", "--dir", ca_s, "--user", "node-h"]
            .into_iter()
            .chain(["--password-file", pw.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let endpoint = rt.spawn(p2psip_node::ca::enrollment::serve(
        ca.clone(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1",
        30,
        Some(tx),
    ));
    let url = format!("https://{}", rt.block_on(rx).unwrap());
    let dh = root.0.join("h");
    std::fs::create_dir_all(&dh).unwrap();
    let key = dh.join("node.key");
    let enroll_h = |password_file: &Path, out: &Path| {
        Command::new(BIN)
            .args(["enroll", "--url", &url, "--user", "node-h", "--ca"])
            .arg(ca.join("ca.pem"))
            .arg("--password-file")
            .arg(password_file)
            .arg("--identity")
            .arg(&key)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    let wrong = root.0.join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let out = enroll_h(&wrong, &dh.join("x.pem"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = enroll_h(&pw, &dh.join("node.pem"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ih = String::from_utf8_lossy(&out.stdout).into_owned();
    let h = start_enrolled(&ca, &dh, &[a.addr]);
    assert!(
        eventually(Duration::from_secs(20), || joined(&h).then_some(())).is_some(),
        "a node enrolled over HTTPS joins"
    );
    assert!(field(&ih, "node_id").starts_with(&h.id), "{ih} / {}", h.id);
    endpoint.abort();

    // Users: alice writes her resource with her certificate; mallory, enrolled too, cannot
    // write alice's (USER-MATCH checks the user her certificate binds).
    let (dal, dm) = (root.0.join("alice"), root.0.join("mallory"));
    let alice_id = field(&enroll(&ca, &dal, "alice", &[]), "node_id");
    enroll(&ca, &dm, "mallory", &[]);
    let as_user = |dir: &Path, args: &[&str]| {
        let mut v = vec![
            "--ca".to_string(),
            ca.join("ca.pem").display().to_string(),
            "--certificate".into(),
            dir.join("node.pem").display().to_string(),
            "--identity".into(),
            dir.join("node.key").display().to_string(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        client(b.addr, OVERLAY, &v)
    };
    let (code, out, err) = as_user(&dal, &["store", "alice", "sip:alice@10.0.0.1"]);
    assert_eq!(code, 0, "alice stores: {out} {err}");
    let (code, out, err) = as_user(&dm, &["store", "alice", "sip:mallory@evil"]);
    assert_ne!(code, 0, "mallory must not write alice's resource: {out}");
    assert!(err.contains("FORBIDDEN: USER-MATCH"), "{err}");
    let (code, out, err) = as_user(&dal, &["fetch", "alice"]);
    assert_eq!((code, out.trim()), (0, "sip:alice@10.0.0.1"), "{err}");
    // A self-signed client is not admitted (it cannot even check the overlay's peers).
    let (code, _, err) = client(a.addr, OVERLAY, &["ping"]);
    assert_ne!(code, 0, "a self-signed client must be refused");
    assert!(err.contains("overlay CA"), "{err}");

    // A self-signed node: it does not join, and says why.
    let ds = root.0.join("selfsigned");
    std::fs::create_dir_all(&ds).unwrap();
    let s = start_node(&ds, OVERLAY, &[a.addr], "127.0.0.1:0");
    let told = eventually(Duration::from_secs(15), || {
        let log = std::fs::read_to_string(&s.stderr_log).ok()?;
        log.contains("overlay CA").then_some(())
    });
    assert!(told.is_some(), "the self-signed node must log the refusal");
    assert!(!joined(&s), "a self-signed node must not join");
    drop(s);

    // Other certificates presented to `a` directly (the test side accepts a's certificate).
    let (dx, dr, dother) = (root.0.join("x"), root.0.join("r"), root.0.join("o"));
    enroll(
        &ca,
        &dx,
        "expired",
        &["--days", "1", "--backdate-days", "3"],
    );
    let r = enroll(&ca, &dr, "revoked", &[]);
    p2psip(&[
        "ca",
        "revoke",
        "--dir",
        ca_s,
        "--serial",
        &field(&r, "serial"),
    ]);
    let other_ca = root.0.join("other-ca");
    p2psip(&[
        "ca",
        "init",
        "--dir",
        other_ca.to_str().unwrap(),
        "--overlay",
        OVERLAY,
    ]);
    enroll(&other_ca, &dother, "stranger", &[]);
    let dv = root.0.join("valid");
    enroll(&ca, &dv, "valid", &[]);
    // The revocation list is read at start: a node started now refuses `r`.
    let dc = root.0.join("c");
    enroll(&ca, &dc, "node-c", &[]);
    let c = start_enrolled(&ca, &dc, &[a.addr]);
    assert!(
        eventually(Duration::from_secs(20), || joined(&c).then_some(())).is_some(),
        "c joins"
    );
    rt.block_on(async {
        for (what, dir, enrolled, reason) in [
            ("a self-signed certificate", &dv, false, "not_enrolled"),
            ("an expired certificate", &dx, true, "expired"),
            ("a revoked certificate", &dr, true, "revoked"),
            ("another CA's certificate", &dother, true, "invalid"),
        ] {
            let before = refused(&c, reason);
            let res = raw_connect(&ca, c.addr, creds(dir, enrolled)).await;
            assert!(res.is_err(), "{what} must be refused");
            let counted = eventually(Duration::from_secs(5), || {
                (refused(&c, reason) > before).then_some(())
            });
            assert!(counted.is_some(), "{what}: not counted as {reason}");
        }

        // A valid certificate, but requests that claim another Node-ID: dropped.
        let (_ep, conn) = raw_connect(&ca, c.addr, creds(&dv, true))
            .await
            .expect("a valid certificate is admitted");
        let dropped = || {
            metric_sum(
                &parse_prometheus(&scrape(c.metrics).unwrap_or_default()),
                "p2psip_messages_dropped_total",
                &[("reason", "forged_origin")],
            )
        };
        let before = dropped();
        let mut st = conn.open_uni().await.unwrap();
        st.write_all(&ping(Id(0x1234))).await.unwrap();
        st.finish().unwrap();
        let seen = eventually(Duration::from_secs(5), || {
            (dropped() > before).then_some(())
        });
        assert!(seen.is_some(), "a claimed Node-ID must be dropped");
    });

    // A signed overlay configuration document, handed to `b` by a client, reaches every
    // peer (ConfigUpdate); its revocation list takes effect at once. One signed by another
    // CA is refused by the first peer and goes no further.
    let dl = root.0.join("late");
    let late = enroll(&ca, &dl, "late", &[]);
    let signed = sign_doc(
        &ca,
        &format!(
            "overlay = \"{OVERLAY}\"\nsequence = 1\nalgorithm = \"chord\"\n\
             operators = [\"{alice_id}\"]\n\
             revoked = [\"{}\"]\n[limits]\nwriter_kind_bytes = 65536\n\
             [[kinds]]\nid = 40\nname = \"STATUS\"\nmodel = \"single\"\n\
             policy = \"user-match\"\nmax_count = 1\nmax_size = 64\n",
            field(&late, "serial")
        ),
        &root.0.join("overlay.signed"),
    );
    let gauge = |n: &NodeProc, name: &str| {
        metric_sum(
            &parse_prometheus(&scrape(n.metrics).unwrap_or_default()),
            name,
            &[],
        )
    };
    assert!(
        rt.block_on(raw_connect(&ca, c.addr, creds(&dl, true)))
            .is_ok(),
        "late is valid"
    );
    // Kind 40 is not defined before the document.
    let (code, _, err) = as_user(&dal, &["store", "alice", "available", "--kind", "40"]);
    assert_ne!(code, 0);
    assert!(err.contains("UNKNOWN_KIND"), "{err}");
    // Diagnostics: before the document names alice an operator, her routing-table is
    // refused (Forbidden, exit status 3); after it, every peer answers her.
    let (code, out, err) = as_user(&dal, &["routing-table"]);
    assert_eq!(
        code, 3,
        "routing-table before alice is an operator: {out} {err}"
    );
    let (code, out, err) = as_user(&dal, &["config-push", signed.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    let spread = eventually(Duration::from_secs(10), || {
        [&a, &b, &c]
            .iter()
            .all(|n| gauge(n, "p2psip_overlay_config_sequence") == 1.0)
            .then_some(())
    });
    assert!(spread.is_some(), "every peer holds document 1");
    let (code, out, err) = as_user(&dal, &["routing-table"]);
    assert_eq!(
        code, 0,
        "routing-table for the document's operator: {out} {err}"
    );
    assert!(out.contains("successors"), "{out}");
    let (code, _, _) = as_user(&dm, &["routing-table"]);
    assert_eq!(code, 3, "mallory is not an operator");
    // The document's kind, with its policy and size limit, is enforced everywhere.
    let (code, out, err) = as_user(&dal, &["store", "alice", "available", "--kind", "40"]);
    assert_eq!(code, 0, "kind 40 defined by the document: {out} {err}");
    let long = "x".repeat(100);
    let (code, _, err) = as_user(&dal, &["store", "alice", &long, "--kind", "40"]);
    assert_ne!(code, 0);
    assert!(err.contains("DATA_TOO_LARGE"), "{err}");
    let before = refused(&c, "revoked");
    assert!(
        rt.block_on(raw_connect(&ca, c.addr, creds(&dl, true)))
            .is_err(),
        "revoked by the document"
    );
    assert!(refused(&c, "revoked") > before);
    let forged_doc = root.0.join("forged.signed");
    sign_doc(
        &other_ca,
        &format!("overlay = \"{OVERLAY}\"\nsequence = 7\n"),
        &forged_doc,
    );
    let (code, out, err) = as_user(&dal, &["config-push", forged_doc.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    let counted = eventually(Duration::from_secs(5), || {
        (gauge(&b, "p2psip_overlay_config_refused_total") >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "b refuses the forged document");
    for n in [&a, &b, &c] {
        assert_eq!(gauge(n, "p2psip_overlay_config_sequence"), 1.0);
    }

    // A node whose own certificate expired does not start, and says why.
    // (`env`: extra environment of the node.)
    let refuses_to_start = |dir: &Path, env: &[(&str, &Path)], why: &str| {
        let out = Command::new(BIN)
            .args(["node", "--overlay", OVERLAY, "--listen", "127.0.0.1:0"])
            .arg("--identity")
            .arg(dir.join("node.key"))
            .arg("--ca")
            .arg(ca.join("ca.pem"))
            .arg("--certificate")
            .arg(dir.join("node.pem"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
    };
    refuses_to_start(&dx, &[], "expired");
    // A node refuses to start against a document for another algorithm.
    let kad = sign_doc(
        &ca,
        &format!("overlay = \"{OVERLAY}\"\nsequence = 2\nalgorithm = \"kademlia\"\n"),
        &root.0.join("kad.signed"),
    );
    refuses_to_start(
        &dv,
        &[("P2PSIP_OVERLAY_CONFIG", kad.as_path())],
        "algorithm \"kademlia\"",
    );

    // The enrolled peers are still up.
    let (code, out, err) = as_user(&dal, &["fetch", "alice"]);
    assert_eq!(code, 0, "{out} {err}");
}
