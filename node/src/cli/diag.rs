//! `p2psip client path-track | diag | routing-table | storage`: looking inside a running
//! overlay (proto/SPEC.md 4.1, after RFC 7851).

use super::client::ClientArgs;
use crate::runtime::NodeHandle;
use anyhow::Context;
use clap::Subcommand;
use p2psip_algorithms::path_walk::{End, PathWalk, Step};
use p2psip_algorithms::{Id, NodeId};
use p2psip_proto::diagnostics as kinds;
use p2psip_proto::pb::{self, diagnostic_info::Value};
use p2psip_proto::Body;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;

#[derive(Subcommand)]
pub(crate) enum DiagOp {
    /// The path a request for NAME takes (PathTrack, RFC 7851): the peers it crosses from
    /// the admitting peer on, one line per hop with its Node-ID, address, uptime and load,
    /// ending at the peer responsible for hash(NAME). The walk asks each hop in turn, then
    /// checks it against the via list of one request routed the ordinary way. Exit status
    /// 2 when the walk does not reach the responsible peer.
    PathTrack {
        name: String,
        /// NAME is a Node-ID or Resource-ID (32 hex digits), not a name to hash.
        #[arg(long)]
        id: bool,
        /// Give up after this many hops.
        #[arg(long, default_value_t = 32)]
        max_hops: usize,
    },
    /// Ask a node for diagnostic kinds (a diagnostic Ping). The operators' kinds are
    /// answered only to operators: run with --identity KEY of a Node-ID the overlay names
    /// as one (`[diagnostics] operators`, or the overlay configuration document's
    /// `operators` in an enrolled overlay); others get Forbidden (exit status 3).
    Diag {
        /// The node (32 hex digits); default: the admitting peer.
        node: Option<String>,
        /// Comma-separated kinds (names or numbers); default: every kind. Names:
        /// status, routing-table-size, software-version, machine-uptime, uptime, memory,
        /// stored-bytes, stored-values, messages, routing-table, storage, neighbor-rtt,
        /// nat, addresses.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
    },
    /// The admitting peer's routing table: predecessors, successors and long-range
    /// entries, with the round trip to each linked one (an operators' kind).
    RoutingTable,
    /// What the admitting peer stores: resources, values and bytes, per kind (an
    /// operators' kind).
    Storage,
}

/// Runs one diagnostic command; returns the exit status.
pub(crate) async fn run(a: &ClientArgs, peer: SocketAddr, what: &DiagOp) -> anyhow::Result<i32> {
    let asked = match what {
        DiagOp::Diag { kinds: k, .. } if !k.is_empty() => k
            .iter()
            .map(|n| {
                kinds::kind_by_name(n.trim()).with_context(|| {
                    let known: Vec<&str> = kinds::KINDS.iter().map(|k| k.1).collect();
                    format!("unknown diagnostic kind {n:?}; known: {}", known.join(", "))
                })
            })
            .collect::<anyhow::Result<Vec<u32>>>()?,
        DiagOp::Diag { .. } => kinds::KINDS.iter().map(|k| k.0).collect(),
        DiagOp::RoutingTable => vec![
            kinds::ROUTING_TABLE,
            kinds::ROUTING_TABLE_SIZE,
            kinds::NEIGHBOR_RTT,
        ],
        DiagOp::Storage => vec![kinds::STORAGE],
        DiagOp::PathTrack { .. } => kinds::PATH_TRACK_DEFAULT.to_vec(),
    };
    let target = match what {
        DiagOp::PathTrack { name, id: true, .. } => Some(crate::ops::parse_node_id(name)?),
        DiagOp::PathTrack { name, .. } => Some(Id::hash_of(name.as_bytes())),
        _ => None,
    };
    let node = match what {
        DiagOp::Diag { node: Some(n), .. } => Some(crate::ops::parse_node_id(n)?),
        _ => None,
    };
    let h = super::joined_client(a, peer, "diagnostics").await?;
    let admitting = h.admitting_peer().await?;
    let res = match (what, target) {
        (DiagOp::PathTrack { max_hops, .. }, Some(t)) => {
            path_track(a, &h, admitting, t, *max_hops, asked).await
        }
        _ => diag(a, &h, node.unwrap_or(admitting), asked, what).await,
    };
    h.shutdown().await;
    res
}

/// Sends one request and returns its answer body, or the error as (exit status, text).
async fn ask(
    a: &ClientArgs,
    h: &NodeHandle,
    f: impl FnOnce(
            &mut p2psip_algorithms::OverlayNode,
            p2psip_algorithms::Time,
        ) -> p2psip_algorithms::OpId
        + Send
        + 'static,
) -> Result<Body, (i32, String)> {
    h.client().run(a.timeout, f).await.map_err(|e| {
        let code = if e.code() == Some(pb::ErrorCode::Forbidden) {
            3
        } else {
            2
        };
        (code, e.to_string())
    })
}

fn fail(a: &ClientArgs, what: &str, (code, why): (i32, String)) -> i32 {
    if a.json {
        println!("{}", json!({"ok": false, "error": why}));
    } else {
        eprintln!("{what} failed: {why}");
    }
    code
}

async fn path_track(
    a: &ClientArgs,
    h: &NodeHandle,
    admitting: NodeId,
    target: Id,
    max_hops: usize,
    asked: Vec<u32>,
) -> anyhow::Result<i32> {
    let (mut walk, mut step) = PathWalk::new(target, admitting, max_hops);
    while let Step::Ask(n) = step {
        let k = asked.clone();
        match ask(a, h, move |c, t| c.path_track(t, Some(n), target, k)).await {
            Ok(Body::PathTrackAns(ans)) => step = walk.on_answer(ans),
            Ok(other) => return Ok(fail(a, "path-track", (2, format!("answer {other:?}")))),
            Err(e) => return Ok(fail(a, &format!("path-track at {n}"), e)),
        }
    }
    // One request routed the ordinary way: the responsible peer returns its via list.
    let routed = match ask(a, h, move |c, t| c.path_track(t, None, target, Vec::new())).await {
        Ok(Body::PathTrackAns(ans)) => {
            let mut v: Vec<NodeId> = ans.via.iter().filter_map(|b| Id::from_slice(b)).collect();
            if !v.is_empty() {
                v.remove(0); // the originator: this client
            }
            v.extend(Id::from_slice(&ans.next_hop));
            Some(v)
        }
        _ => None,
    };
    let hops: Vec<NodeId> = walk.hops.iter().map(|h| h.node).collect();
    let same = routed.as_ref().map(|r| *r == hops);
    let end = match walk.end() {
        Some(End::Responsible) => "responsible".to_string(),
        Some(End::Loop(n)) => format!("loop (back to {n})"),
        Some(End::TooLong) => format!("more than {max_hops} hops"),
        Some(End::Invalid(why)) => format!("invalid answer: {why}"),
        None => "unfinished".into(),
    };
    if a.json {
        let hops_json: Vec<Json> = walk
            .hops
            .iter()
            .map(|hop| {
                let mut o = json!({"node": format!("{:#}", hop.node), "next": format!("{:#}", hop.next), "responsible": hop.responsible});
                for d in &hop.diagnostics {
                    let (name, v) = diag_json(d);
                    o[name] = v;
                }
                o
            })
            .collect();
        let via: Option<Vec<String>> = routed.map(|r| r.iter().map(|n| format!("{n:#}")).collect());
        println!(
            "{}",
            json!({"ok": walk.end() == Some(&End::Responsible), "target": format!("{target:#}"),
                   "hops": hops_json, "end": end, "routed": via, "routed_matches": same})
        );
    } else {
        println!("path to {target:#} from the admitting peer:");
        for (i, hop) in walk.hops.iter().enumerate() {
            let get = |k: u32| {
                hop.diagnostics
                    .iter()
                    .find(|d| d.kind == k)
                    .and_then(|d| d.value.clone())
            };
            let addr = match get(kinds::ADDRESSES) {
                Some(Value::Addresses(x)) => x.addresses.join(","),
                _ => "-".into(),
            };
            let up = match get(kinds::APP_UPTIME) {
                Some(Value::Number(s)) => format!("up {s} s"),
                _ => "up ?".into(),
            };
            let load = match get(kinds::STATUS_INFO) {
                Some(Value::Number(n)) => format!("load {n} msg/s"),
                _ => "load ?".into(),
            };
            let tag = if hop.responsible { "  responsible" } else { "" };
            println!("{:>3}  {:#}  {addr}  {up}  {load}{tag}", i + 1, hop.node);
        }
        let check = match same {
            Some(true) => "a routed request crossed the same peers",
            Some(false) => "a routed request crossed other peers (the tables are changing)",
            None => "no routed request came back to compare with",
        };
        println!("end: {end} after {} hops; {check}", walk.hops.len());
    }
    Ok(if walk.end() == Some(&End::Responsible) {
        0
    } else {
        2
    })
}

async fn diag(
    a: &ClientArgs,
    h: &NodeHandle,
    node: NodeId,
    asked: Vec<u32>,
    what: &DiagOp,
) -> anyhow::Result<i32> {
    let infos = match ask(a, h, move |c, t| c.diagnose(t, node, asked)).await {
        Ok(Body::PingAns(p)) => p.diagnostics,
        Ok(other) => return Ok(fail(a, "diag", (2, format!("answer {other:?}")))),
        Err(e) => return Ok(fail(a, "diag", e)),
    };
    if a.json {
        let mut o = json!({"ok": true, "node": format!("{node:#}")});
        for d in &infos {
            let (name, v) = diag_json(d);
            o[name] = v;
        }
        println!("{o}");
        return Ok(0);
    }
    match what {
        DiagOp::RoutingTable => print_routing_table(node, &infos),
        DiagOp::Storage => print_storage(node, &infos),
        _ => {
            println!("node {node:#}");
            for d in &infos {
                let (name, v) = diag_json(d);
                println!("  {name}: {v}");
            }
        }
    }
    Ok(0)
}

fn find(infos: &[pb::DiagnosticInfo], kind: u32) -> Option<&Value> {
    infos.iter().find(|d| d.kind == kind)?.value.as_ref()
}

fn print_routing_table(node: NodeId, infos: &[pb::DiagnosticInfo]) {
    let rtts: std::collections::HashMap<Vec<u8>, u32> = match find(infos, kinds::NEIGHBOR_RTT) {
        Some(Value::NeighborRtts(r)) => r
            .neighbors
            .iter()
            .map(|n| (n.node.clone(), n.rtt_us))
            .collect(),
        _ => Default::default(),
    };
    let Some(Value::RoutingTable(rt)) = find(infos, kinds::ROUTING_TABLE) else {
        println!("node {node:#}: no routing table in the answer");
        return;
    };
    println!("node {node:#} ({}): {} links", rt.algorithm, rt.links);
    let show = |title: &str, ids: &[Vec<u8>], total: usize| {
        println!("{title} ({total}):");
        for id in ids {
            let rtt = rtts.get(id).map_or(String::new(), |us| {
                format!("  rtt {:.2} ms", f64::from(*us) / 1000.0)
            });
            println!("  {}{rtt}", hex::encode(id));
        }
    };
    show("predecessors", &rt.predecessors, rt.predecessors.len());
    show("successors", &rt.successors, rt.successors.len());
    show("long-range entries", &rt.fingers, rt.fingers_total as usize);
    if (rt.fingers_total as usize) > rt.fingers.len() {
        println!(
            "  ... {} more",
            rt.fingers_total as usize - rt.fingers.len()
        );
    }
}

fn print_storage(node: NodeId, infos: &[pb::DiagnosticInfo]) {
    let Some(Value::Storage(s)) = find(infos, kinds::STORAGE) else {
        println!("node {node:#}: no storage figures in the answer");
        return;
    };
    println!(
        "node {node:#}: {} resources, {} values, {} bytes",
        s.resources, s.values, s.bytes
    );
    for k in &s.kinds {
        println!(
            "  kind {} ({}): {} resources, {} values",
            k.kind,
            crate::ops::kind_name(k.kind),
            k.resources,
            k.values
        );
    }
}

/// A diagnostic answer as a JSON field: its kind's name and its value.
fn diag_json(d: &pb::DiagnosticInfo) -> (String, Json) {
    let name = kinds::kind_name(d.kind).map_or_else(|| format!("kind-{}", d.kind), String::from);
    let ids = |v: &[Vec<u8>]| -> Json { v.iter().map(hex::encode).collect::<Vec<_>>().into() };
    let v = match &d.value {
        None => Json::Null,
        Some(Value::Number(n)) => json!(n),
        Some(Value::Text(t)) => json!(t),
        Some(Value::RoutingTable(r)) => {
            json!({"algorithm": r.algorithm, "predecessors": ids(&r.predecessors),
            "successors": ids(&r.successors), "fingers": ids(&r.fingers), "fingers_total": r.fingers_total, "links": r.links})
        }
        Some(Value::Storage(s)) => {
            json!({"resources": s.resources, "values": s.values, "bytes": s.bytes,
            "kinds": s.kinds.iter().map(|k| json!({"kind": k.kind, "name": crate::ops::kind_name(k.kind), "resources": k.resources, "values": k.values})).collect::<Vec<_>>()})
        }
        Some(Value::Messages(m)) => {
            json!({"sent": m.sent, "received": m.received, "forwarded": m.forwarded, "served": m.served, "dropped": m.dropped})
        }
        Some(Value::NeighborRtts(r)) => json!(r
            .neighbors
            .iter()
            .map(|n| json!({"node": hex::encode(&n.node), "rtt_ms": f64::from(n.rtt_us) / 1000.0}))
            .collect::<Vec<_>>()),
        Some(Value::Nat(n)) => json!({"reflexive": n.reflexive, "state": n.state}),
        Some(Value::Addresses(x)) => json!(x.addresses),
    };
    (name, v)
}
