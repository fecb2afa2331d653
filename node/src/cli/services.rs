//! `p2psip client services NAME`: the provider of a service the overlay knows (ReDiR,
//! proto/SPEC.md 6.2), the one whose Node-ID is the closest after a key.

use super::client::ClientArgs;
use p2psip_algorithms::redir::Provider;
use serde_json::json;
use std::net::SocketAddr;

fn provider_json(p: &Provider) -> serde_json::Value {
    json!({"address": p.address, "node": format!("{:#}", p.key), "attributes": p.attributes,
           "remaining_s": p.remaining_s})
}

/// Looks up `service`; exit status 4 when no provider is registered.
pub(crate) async fn run(
    a: &ClientArgs,
    peer: SocketAddr,
    service: &str,
    key: Option<&str>,
) -> anyhow::Result<i32> {
    let key = match key {
        Some(k) => Some(crate::ops::parse_node_id(k)?),
        None => None,
    };
    let h = super::joined_client(a, peer, "services").await?;
    // By default the key is this client's Node-ID: callers spread over the providers.
    let key = key.unwrap_or(h.id);
    let res = tokio::time::timeout(
        a.timeout,
        crate::services::lookup(&h.client(), service, key),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", a.timeout))
    .and_then(|r| r.map_err(|e| e.to_string()));
    h.shutdown().await;
    let l = match res {
        Ok(l) => l,
        Err(e) => {
            if a.json {
                println!("{}", json!({"ok": false, "error": e}));
            } else {
                eprintln!("services {service} failed: {e}");
            }
            return Ok(2);
        }
    };
    let others: Vec<&Provider> = l
        .seen
        .iter()
        .filter(|p| Some(p.key) != l.found.as_ref().map(|f| f.key))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"ok": l.found.is_some(), "service": service, "key": format!("{key:#}"),
                   "provider": l.found.as_ref().map(provider_json),
                   "seen": others.iter().map(|p| provider_json(p)).collect::<Vec<_>>()})
        );
    } else {
        match &l.found {
            Some(p) => {
                let attrs = if p.attributes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", p.attributes.join(", "))
                };
                println!(
                    "{service}: {} (provider {:#}, {} s left){attrs}",
                    p.address, p.key, p.remaining_s
                );
            }
            None => println!("no provider of {service}"),
        }
        for p in others {
            println!(
                "  also seen: {} (provider {:#}, {} s left)",
                p.address, p.key, p.remaining_s
            );
        }
    }
    Ok(if l.found.is_some() { 0 } else { 4 })
}
