//! Services located through the overlay (ReDiR, RFC 7374; proto/SPEC.md 6.2): the node
//! registers the `[[services]]` of its configuration and refreshes them every third of
//! their lifetime; [`lookup`] finds the provider of a service closest after a key. The
//! walks themselves are `p2psip_algorithms::redir`; this module only runs their requests.

use crate::config::ServiceSection;
use crate::runtime::{self, NodeClient};
use ::metrics::counter;
use p2psip_algorithms::redir::{entries_of, Lookup, Registration, Step};
use p2psip_algorithms::storage::KIND_REDIR;
use p2psip_algorithms::Id;
use p2psip_proto::security::Identity;
use std::time::Duration;

/// Why a registration or lookup walk failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no tree node took the record")]
    NotStored,
    #[error("fetch: {0}")]
    Fetch(runtime::OpError),
}

/// How long one request of a walk may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// After a failed registration, the next try.
const RETRY: Duration = Duration::from_secs(5);

async fn fetch(
    node: &NodeClient,
    resource: Id,
) -> Result<Vec<(Vec<u8>, Vec<u8>, u32)>, runtime::OpError> {
    let f = node
        .fetch_kind(resource, KIND_REDIR, REQUEST_TIMEOUT)
        .await?;
    Ok(entries_of(&f, runtime::now()))
}

/// Runs one registration walk of `s` signed by `identity`; returns the tree nodes stored at.
pub async fn register(
    node: &NodeClient,
    identity: &Identity,
    s: &ServiceSection,
) -> Result<usize, ServiceError> {
    let (mut reg, mut step) = Registration::new(
        &s.name,
        identity.clone(),
        &s.address,
        s.attributes.clone(),
        s.lifetime_s,
    );
    loop {
        step = match step {
            Step::Fetch { resource, .. } => {
                // A node that cannot be read is taken as empty: the record is stored anyway.
                let entries = fetch(node, resource).await.unwrap_or_default();
                reg.on_fetched(&entries, runtime::now())
            }
            Step::Store {
                resource, value, ..
            } => {
                let stored = node
                    .store(resource, KIND_REDIR, vec![*value], REQUEST_TIMEOUT)
                    .await;
                reg.on_stored(stored.is_ok())
            }
            Step::Done => break,
        };
    }
    if reg.stored.is_empty() {
        return Err(ServiceError::NotStored);
    }
    Ok(reg.stored.len())
}

/// Keeps every service of `services` registered until the node stops.
pub fn spawn(node: NodeClient, identity: Identity, services: Vec<ServiceSection>, label: String) {
    for s in services {
        let (node, identity, label) = (node.clone(), identity.clone(), label.clone());
        tokio::spawn(async move {
            let refresh = Duration::from_secs(u64::from(s.lifetime_s / 3).max(10));
            let mut first = true;
            loop {
                let wait = match register(&node, &identity, &s).await {
                    Ok(n) => {
                        if first {
                            tracing::info!(service = %s.name, address = %s.address, tree_nodes = n, "service registered");
                            first = false;
                        }
                        counter!("p2psip_service_registrations_total", "node" => label.clone(), "service" => s.name.clone(), "outcome" => "ok").increment(1);
                        refresh
                    }
                    Err(e) => {
                        tracing::debug!(service = %s.name, "service registration: {e}; trying again");
                        counter!("p2psip_service_registrations_total", "node" => label.clone(), "service" => s.name.clone(), "outcome" => "failed").increment(1);
                        RETRY
                    }
                };
                if node.is_closed() {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// Finds the provider of `service` whose Node-ID is the closest at or after `key`.
pub async fn lookup(node: &NodeClient, service: &str, key: Id) -> Result<Lookup, ServiceError> {
    let (mut l, mut step) = Lookup::new(service, key);
    while let Step::Fetch { resource, .. } = step {
        let entries = match fetch(node, resource).await {
            Ok(e) => e,
            Err(e) => {
                counter!("p2psip_service_lookups_total", "outcome" => "failed").increment(1);
                return Err(ServiceError::Fetch(e));
            }
        };
        step = l.on_fetched(&entries);
    }
    let outcome = if l.found.is_some() { "found" } else { "none" };
    counter!("p2psip_service_lookups_total", "outcome" => outcome).increment(1);
    Ok(l)
}
