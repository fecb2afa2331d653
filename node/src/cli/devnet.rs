//! `p2psip devnet`: a local overlay doing real work (the README's main command).

use super::{init_logs, LogArgs};
use crate::config::Config;
use crate::ops::{build_value, kind_of, parse_duration, values_of};
use crate::runtime::{self, NodeHandle, Role};
use crate::{identity, metrics};
use anyhow::{bail, Context};
use clap::Args;
use p2psip_algorithms::{Event, Id};
use p2psip_proto::Body;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A sample registration not stored within this is reported as failed.
const STORE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub(crate) struct DevnetArgs {
    /// Number of peers.
    #[arg(long, default_value_t = 5)]
    pub(crate) nodes: usize,
    /// Number of sample SIP users to register.
    #[arg(long, default_value_t = 20)]
    pub(crate) users: usize,
    /// DHT algorithm: chord, kademlia or onehop.
    #[arg(long, default_value = "chord")]
    pub(crate) algorithm: String,
    /// Stop after this long (e.g. 30s); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Prometheus endpoint for all peers (each series has a node label); port 0: one the
    /// kernel picks, printed in the "metrics:" line.
    #[arg(long, default_value = "127.0.0.1:9470")]
    pub(crate) metrics: String,
    /// First UDP port; peers take consecutive ports (0: any free ports).
    #[arg(long, default_value_t = 0)]
    pub(crate) base_port: u16,
    /// Turns on a SIP front-end (registrar and proxy) on every peer, on 127.0.0.1 from
    /// this UDP/TCP port up (5060: peers get 5060, 5061, ...; 0: any free ports). SIP
    /// phones or SIPp register and call through any of them.
    #[arg(long)]
    pub(crate) sip: Option<u16>,
    /// SIP users file (htdigest lines, `p2psip sip add-user`) the front-ends authenticate
    /// REGISTER against (realm p2psip); without it devnet makes users user0..user9 of
    /// the domain p2psip with random passwords and prints them.
    #[arg(long, requires = "sip")]
    pub(crate) sip_users: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

/// The SIP domain (and digest realm) of devnet's front-ends: the default one, which the
/// SIPp scenarios under node/tests/sip use.
pub(crate) const DEVNET_DOMAIN: &str = "p2psip";

/// Sends an INVITE for `user` at devnet's domain to front-end `fe` (from a caller of
/// another domain, so unchallenged) and returns the first final answer's status line.
pub(crate) async fn devnet_call(fe: SocketAddr, user: &str) -> anyhow::Result<String> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let me = s.local_addr()?;
    let invite = format!(
        "INVITE sip:{user}@{DEVNET_DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKdevnet{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:devnet@devnet.example>;tag=d\r\n\
         To: <sip:{user}@{DEVNET_DOMAIN}>\r\nCall-ID: devnet-{}@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:devnet@{me}>\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    let mut buf = vec![0u8; 65_535];
    for _ in 0..4 {
        s.send_to(invite.as_bytes(), fe).await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, s.recv_from(&mut buf)).await {
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if line.starts_with("SIP/2.0 ") && !line.starts_with("SIP/2.0 1") {
                return Ok(line.trim_start_matches("SIP/2.0 ").to_string());
            }
        }
    }
    bail!("no final answer")
}

pub(crate) async fn run(a: DevnetArgs) -> anyhow::Result<()> {
    init_logs(
        a.log.log_format.as_deref().unwrap_or("human"),
        a.log.log_level.as_deref().unwrap_or("warn"),
    );
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let metrics_addr: SocketAddr = a.metrics.parse().context("--metrics")?;
    let base = Config {
        algorithm: a.algorithm.clone(),
        overlay: "devnet.p2psip".into(),
        // A local lab: every diagnostic kind is answered to anyone (`client diag`).
        diagnostics: crate::config::DiagnosticsSection {
            open: true,
            ..Default::default()
        },
        ..Config::default()
    };
    // The arguments are checked before anything binds a port.
    base.validate()?;
    let metrics_addr = metrics::install(metrics_addr).await?;
    println!(
        "p2psip devnet: starting {} peers ({}) on 127.0.0.1",
        a.nodes, a.algorithm
    );
    let t0 = Instant::now();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..a.nodes {
        let port = if a.base_port == 0 {
            0
        } else {
            a.base_port.saturating_add(i as u16)
        };
        let cfg = Config {
            listen: format!("127.0.0.1:{port}"),
            bootstrap: nodes
                .first()
                .map(|n| vec![n.addr.to_string()])
                .unwrap_or_default(),
            ..base.clone()
        };
        let h = runtime::spawn(cfg, Role::Peer, identity::generate_seed()).await?;
        h.wait_joined(Duration::from_secs(20)).await?;
        nodes.push(h);
    }
    // Wait for a consistent ring: each peer's first successor is the next id.
    let mut ids: Vec<Id> = nodes.iter().map(|n| n.id).collect();
    ids.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for n in &nodes {
            let st = n.status().await?;
            let k = ids.iter().position(|x| *x == n.id).unwrap_or(0);
            let want = ids[(k + 1) % ids.len()];
            if ids.len() > 1 && st.routing.successors.first() != Some(&want) {
                ok = false;
            }
        }
        if ok || Instant::now() > deadline {
            println!(
                "  {} peers joined, ring {} after {:.1?}",
                nodes.len(),
                if ok { "consistent" } else { "still converging" },
                t0.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut front_ends = Vec::new();
    let sip_auth = match (&a.sip, &a.sip_users) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(crate::sip::auth::Users::load(f)?),
        (Some(_), None) => {
            let mut users = crate::sip::auth::Users::default();
            println!("  SIP users (digest realm {DEVNET_DOMAIN}):");
            for u in 0..10 {
                let pw = hex::encode(rand::random::<[u8; 6]>());
                users.insert_password(&format!("user{u}"), DEVNET_DOMAIN, &pw);
                println!("    user{u}@{DEVNET_DOMAIN}  password {pw}");
            }
            Some(users)
        }
    }
    .map(|users| {
        std::sync::Arc::new(crate::sip::auth::Authenticator::new(
            DEVNET_DOMAIN,
            users,
            // What baresip 1.0 and SIPp answer (config.rs, sip.digest_algorithms).
            vec![crate::sip::auth::Algorithm::Md5],
        ))
    });
    if let Some(sip_base) = a.sip {
        for (i, n) in nodes.iter().enumerate() {
            let port = if sip_base == 0 {
                0
            } else {
                sip_base.saturating_add(i as u16)
            };
            let mut s = crate::sip::SipSettings::from_config(
                &crate::config::SipSection {
                    enabled: true,
                    listen: format!("127.0.0.1:{port}"),
                    domain: DEVNET_DOMAIN.into(),
                    auth: false,
                    // Every SIPp and phone here is 127.0.0.1: no per-address rate.
                    requests_per_s_per_source: 0,
                    ..Default::default()
                },
                n.advertised,
            )?;
            s.auth = sip_auth.clone();
            let fe = crate::sip::start(n.client(), s).await?;
            println!("  SIP front-end of peer {} on udp/tcp {}", n.id, fe.addr);
            front_ends.push(fe);
        }
    }
    for n in &nodes {
        let st = n.status().await?;
        println!(
            "    peer {} at {}  successor {}  predecessor {}",
            n.id,
            n.addr,
            st.routing
                .successors
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            st.routing
                .predecessors
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
    }
    // Sample SIP users: registered at the front-ends when there are some (real bindings,
    // a stand-in phone answering them), else stored directly as SIP-REGISTRATION values;
    // each looked up through another peer.
    let kind = kind_of("sip-registration")?;
    let mut stored = 0;
    let mut store_ms = Vec::new();
    let sample_phone = if front_ends.is_empty() {
        None
    } else {
        Some(crate::sip::sample::spawn().await?)
    };
    for u in 0..a.users {
        let user = format!("sample{u}");
        let aor = format!("sip:{user}@{DEVNET_DOMAIN}");
        let started = Instant::now();
        let ok = match &sample_phone {
            Some((phone, _)) => {
                let contact = format!("sip:{user}@{phone}");
                match front_ends[u % front_ends.len()]
                    .register_device(&user, &contact, 3600)
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        println!("  register {aor}: {e}");
                        false
                    }
                }
            }
            None => {
                let via = &nodes[u % nodes.len()];
                let value = p2psip_proto::pb::SipRegistration {
                    target: Some(p2psip_proto::pb::sip_registration::Target::Destination(
                        p2psip_proto::pb::SipDestination {
                            node: via.id.to_bytes().to_vec(),
                            contact: format!("sip:{user}@127.0.0.1:{}", 5060 + u),
                            expires_at: (runtime::now().0 / 1000).saturating_add(3_600_000),
                            ..Default::default()
                        },
                    )),
                };
                let who = crate::sip::identities::derived(&identity::generate_seed(), &aor);
                let (res, v) = build_value(
                    &who,
                    &aor,
                    kind,
                    &prost::Message::encode_to_vec(&value),
                    runtime::now(),
                    3600,
                );
                match via.client().store(res, kind, vec![v], STORE_LIMIT).await {
                    Ok(_) => true,
                    Err(e) => {
                        println!("  register {aor}: {e}");
                        false
                    }
                }
            }
        };
        if ok {
            stored += 1;
            store_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut found = 0;
    let mut fetch_ms = Vec::new();
    let mut hops_sum = 0;
    for u in 0..a.users {
        let aor = format!("sip:sample{u}@{DEVNET_DOMAIN}");
        let res = Id::hash_of(aor.as_bytes());
        let via = &nodes[(u + 1 + nodes.len() / 2) % nodes.len()];
        if let Event::Completed {
            outcome: Ok(Body::FetchAns(f)),
            latency,
            hops,
            ..
        } = via.op(move |n, t| n.fetch_kind(t, res, kind)).await?
        {
            let contact = values_of(&f).iter().find_map(|v| {
                match prost::Message::decode(v.as_slice()) {
                    Ok(p2psip_proto::pb::SipRegistration {
                        target: Some(p2psip_proto::pb::sip_registration::Target::Destination(d)),
                    }) => Some(d.contact),
                    _ => None,
                }
            });
            if let Some(contact) = contact {
                found += 1;
                hops_sum += hops;
                fetch_ms.push(latency.as_secs_f64() * 1000.0);
                if u < 3 {
                    println!(
                        "    {aor} -> {contact} (via peer {}, {hops} hops, {:.2} ms)",
                        via.id,
                        latency.as_secs_f64() * 1000.0
                    );
                }
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "  registered {stored}/{} SIP users (median store {:.2} ms); found {found}/{} through other peers (median fetch {:.2} ms, mean {:.2} hops)",
        a.users,
        med(&mut store_ms),
        a.users,
        med(&mut fetch_ms),
        hops_sum as f64 / found.max(1) as f64
    );
    if a.users > 0 && front_ends.len() > 1 {
        // A call to a sample user through a front-end that does not hold its binding.
        let fe = front_ends[front_ends.len() - 1].addr;
        match devnet_call(fe, "sample0").await {
            Ok(answer) => println!("  call sip:sample0@{DEVNET_DOMAIN} through {fe}: {answer} (the sample phone's answer)"),
            Err(e) => println!("  call sip:sample0@{DEVNET_DOMAIN} through {fe}: {}", super::report(&e)),
        }
    }
    println!("  metrics: http://{metrics_addr}/metrics");
    println!("  try: cargo run --release -p p2psip-node --bin p2psip -- client --peer {} --overlay devnet.p2psip fetch sip:sample0@{DEVNET_DOMAIN} --kind sip-registration", nodes[0].addr);
    println!("  and: ... client --peer {} --overlay devnet.p2psip path-track sip:sample0@{DEVNET_DOMAIN}  (or diag, routing-table, storage)", nodes[0].addr);
    if let Some(fe) = front_ends.first() {
        println!(
            "  phones: account <sip:user0@{DEVNET_DOMAIN}>;outbound=\"sip:{}\";auth_pass=PASSWORD (baresip); call sip:sample0@{DEVNET_DOMAIN} (answers 486 Busy Here)",
            fe.addr
        );
    }
    match a.duration {
        Some(d) => {
            println!("  running for {d:?}");
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            println!("  running until Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("  stopping: every peer leaves gracefully");
    for n in nodes {
        n.shutdown().await;
    }
    if found < a.users || stored < a.users {
        bail!(
            "devnet: {} registrations stored, {} found of {}",
            stored,
            found,
            a.users
        );
    }
    Ok(())
}
