//! `p2psip doctor`: a reachability report for this host against given peers. From one UDP
//! socket it opens a QUIC link to each peer; each tells the address it sees the link at
//! (proto/SPEC.md 2.8). From those reflexive addresses: is there a NAT, and does it map
//! each destination to a new port (symmetric, so other nodes can reach this host only
//! through a relay)?

use crate::config::Config;
use crate::identity;
use crate::transport::{local_ip_towards, NetEvent, Reach, Transport};
use clap::Args;
use p2psip_algorithms::NodeId;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// A peer of the overlay, host:port; give two or more (on different hosts) to tell
    /// whether a NAT maps each destination anew.
    #[arg(long = "peer", required = true)]
    pub(crate) peers: Vec<String>,
    /// Overlay name (must match the peers').
    #[arg(long, env = "P2PSIP_OVERLAY", default_value = "p2psip.example")]
    pub(crate) overlay: String,
    /// Local address to send from (default: any address, a port the kernel picks).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub(crate) listen: SocketAddr,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up on the peers that have not answered after this long.
    #[arg(long, default_value = "5s", value_parser = crate::ops::parse_duration)]
    pub(crate) timeout: Duration,
}

/// What one peer told us.
#[derive(Debug, Default, Clone)]
struct Seen {
    linked: bool,
    observed: Option<SocketAddr>,
    rtt: Option<Duration>,
    error: Option<String>,
    /// A stream relayed through this peer back to us: its round trip, or why it failed.
    relay: Option<Result<Duration, String>>,
}

/// The application number of the doctor's relay probe (the stream comes back to the
/// doctor itself; no other node serves it).
const APP_DOCTOR: u32 = 0x0d0c_7000;
const PROBE: &[u8] = b"p2psip doctor relay probe";

/// Opens a stream to ourselves through the relay at `relay` (a peer we have a link to:
/// it carries the stream back over that link) and checks that the probe comes back.
async fn relay_check(
    t: &Arc<Transport>,
    me: NodeId,
    relay: SocketAddr,
    limit: Duration,
) -> Result<Duration, String> {
    let mut incoming = t.serve_app(APP_DOCTOR);
    let server = tokio::spawn(async move {
        if let Some(mut s) = incoming.recv().await {
            let mut limited = tokio::io::AsyncReadExt::take(&mut s.recv, 1024);
            let _ = tokio::io::copy(&mut limited, &mut s.send).await;
            let _ = s.send.finish();
        }
    });
    let reach = Reach {
        direct: Vec::new(),
        relay: Some(relay),
        reflexive: false,
    };
    let began = std::time::Instant::now();
    let run = async {
        let (mut send, mut recv, _) = t
            .open_app(me, &reach, APP_DOCTOR)
            .await
            .map_err(|e| e.to_string())?;
        send.write_all(PROBE).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let back = recv
            .read_to_end(PROBE.len() + 1)
            .await
            .map_err(|e| match e {
                quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))
                    if code.into_inner() == u64::from(crate::transport::RESET_RELAY_REFUSED) =>
                {
                    "the peer refuses to relay (relaying off, or at its limit)".to_string()
                }
                other => format!("the stream failed: {other}"),
            })?;
        if back != PROBE {
            return Err(format!("{} bytes came back, not the probe", back.len()));
        }
        Ok(began.elapsed())
    };
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
    server.abort();
    out
}

/// The verdict from the reflexive addresses: (name, exit status, explanation).
fn verdict(local: &BTreeSet<SocketAddr>, observed: &[SocketAddr]) -> (&'static str, i32, String) {
    let distinct: BTreeSet<SocketAddr> = observed.iter().copied().collect();
    if observed.is_empty() {
        return (
            "unreachable",
            3,
            "no peer was reached over UDP (QUIC): a firewall, a wrong address, or no peer running"
                .into(),
        );
    }
    if distinct.iter().all(|a| local.contains(a)) {
        return (
            "public",
            0,
            "peers see this host at its own address: no NAT, others can connect to it".into(),
        );
    }
    if distinct.len() > 1 {
        let list: Vec<String> = distinct.iter().map(|a| a.to_string()).collect();
        return (
            "symmetric",
            2,
            format!("the NAT maps each destination to a new address ({}): others reach this host only through a relay", list.join(", ")),
        );
    }
    let one = distinct
        .iter()
        .next()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if observed.len() < 2 {
        return (
            "nat",
            0,
            format!("behind a NAT (seen at {one}); one peer answered, so whether the mapping varies by destination is not known"),
        );
    }
    (
        "cone",
        0,
        format!("behind a NAT that keeps one mapping for every destination ({one}): hole punching works"),
    )
}

/// Runs the report; returns the exit status: 0 reachable directly (public, or a NAT that
/// keeps its mapping), 2 symmetric NAT (relays needed, and one works), 3 no peer reached,
/// 4 symmetric NAT and no peer relays.
pub(crate) async fn run(a: DoctorArgs) -> anyhow::Result<i32> {
    let mut peers = Vec::new();
    for p in &a.peers {
        peers.push(crate::runtime::resolve(p).await?);
    }
    let cfg = Config {
        overlay: a.overlay.clone(),
        ..Config::default()
    };
    let creds = identity::credentials(&cfg, identity::generate_seed())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let transport = Transport::bind(&cfg, a.listen, &creds, tx)?;
    let port = transport.local_addr()?.port();
    let mut local: BTreeSet<SocketAddr> = BTreeSet::new();
    for p in &peers {
        if let Some(ip) = local_ip_towards(*p) {
            local.insert(SocketAddr::new(ip, port));
        }
        transport.connect(*p, None);
    }
    let mut seen: BTreeMap<SocketAddr, Seen> =
        peers.iter().map(|p| (*p, Seen::default())).collect();
    let mut by_node = BTreeMap::new();
    let done = |s: &BTreeMap<SocketAddr, Seen>| {
        s.values()
            .all(|x| x.error.is_some() || x.observed.is_some())
    };
    let deadline = tokio::time::Instant::now() + a.timeout;
    while !done(&seen) {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            _ => break,
        };
        match ev {
            NetEvent::LinkUp { node, addr, .. } => {
                by_node.insert(node, addr);
                if let Some(s) = seen.get_mut(&addr) {
                    s.linked = true;
                }
            }
            NetEvent::Observed { by, addr } => {
                if let Some(s) = by_node.get(&by).and_then(|p| seen.get_mut(p)) {
                    s.observed = Some(addr);
                }
            }
            NetEvent::ConnectFailed { addr, reason, .. } => {
                if let Some(s) = seen.get_mut(&addr) {
                    s.error = Some(reason);
                }
            }
            NetEvent::LinkDown { node, refused } => {
                if let Some(s) = by_node.get(&node).and_then(|p| seen.get_mut(p)) {
                    if s.observed.is_none() {
                        s.error = Some(refused.unwrap_or_else(|| "the link closed".into()));
                    }
                }
            }
            _ => {}
        }
    }
    for (node, rtt) in transport.link_rtts() {
        if let Some(s) = by_node.get(&node).and_then(|p| seen.get_mut(p)) {
            s.rtt = Some(rtt);
        }
    }
    let me = creds.identity.node_id;
    for (p, s) in seen.iter_mut().filter(|(_, s)| s.linked) {
        s.relay = Some(relay_check(&transport, me, *p, a.timeout).await);
    }
    let relays = seen
        .values()
        .filter(|s| matches!(s.relay, Some(Ok(_))))
        .count();
    let observed: Vec<SocketAddr> = seen.values().filter_map(|s| s.observed).collect();
    let (name, mut code, why) = verdict(&local, &observed);
    if code == 2 && relays == 0 {
        // Symmetric, and no peer relays: nothing can reach this host.
        code = 4;
    }
    let reached = seen.values().filter(|s| s.linked).count();
    if a.json {
        let per: Vec<_> = seen
            .iter()
            .map(|(p, s)| {
                json!({"peer": p.to_string(), "reached": s.linked,
                "observed": s.observed.map(|o| o.to_string()),
                "rtt_ms": s.rtt.map(|r| r.as_secs_f64() * 1000.0), "error": s.error,
                "relay_ms": s.relay.as_ref().and_then(|r| r.as_ref().ok()).map(|d| d.as_secs_f64() * 1000.0),
                "relay_error": s.relay.as_ref().and_then(|r| r.as_ref().err())})
            })
            .collect();
        println!(
            "{}",
            json!({"nat": name, "explanation": why, "udp": reached > 0, "reached": reached, "relays": relays,
                   "local": local.iter().map(|l| l.to_string()).collect::<Vec<_>>(), "peers": per})
        );
    } else {
        let locals: Vec<String> = local.iter().map(|l| l.to_string()).collect();
        println!("this host sends from {}", locals.join(", "));
        for (p, s) in &seen {
            match (&s.observed, &s.error) {
                (Some(o), _) => println!(
                    "  {p}: reached over UDP, rtt {:.2} ms, sees this host at {o}",
                    s.rtt.map_or(0.0, |r| r.as_secs_f64() * 1000.0)
                ),
                (None, Some(e)) => println!("  {p}: not reached: {e}"),
                (None, None) if s.linked => {
                    println!("  {p}: reached, but it did not say where it sees this host")
                }
                (None, None) => println!("  {p}: no answer within {:?}", a.timeout),
            }
        }
        for (p, s) in &seen {
            match &s.relay {
                Some(Ok(d)) => println!(
                    "  relay through {p}: works ({:.2} ms round trip)",
                    d.as_secs_f64() * 1000.0
                ),
                Some(Err(e)) => println!("  relay through {p}: fails: {e}"),
                None => {}
            }
        }
        println!(
            "UDP: {reached} of {} peers reached; relays: {relays} of them carry a stream",
            seen.len()
        );
        println!("NAT: {name}: {why}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    #[test]
    fn the_verdict_follows_the_reflexive_addresses() {
        let local: BTreeSet<SocketAddr> = [a("10.0.0.2:5000")].into_iter().collect();
        assert_eq!(verdict(&local, &[]).0, "unreachable");
        assert_eq!(
            verdict(&local, &[a("10.0.0.2:5000"), a("10.0.0.2:5000")]).0,
            "public"
        );
        let cone = [a("203.0.113.9:5000"), a("203.0.113.9:5000")];
        assert_eq!(
            verdict(&local, &cone),
            ("cone", 0, verdict(&local, &cone).2)
        );
        let sym = [a("203.0.113.9:61001"), a("203.0.113.9:61002")];
        assert_eq!(verdict(&local, &sym).1, 2);
        assert_eq!(verdict(&local, &sym[..1]).0, "nat");
    }
}
