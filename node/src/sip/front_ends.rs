//! Which addresses are SIP front-ends of this overlay (proto/SPEC.md 2.7): each front-end
//! publishes its advertised SIP address under kind SIP-FRONT-END, and a request whose URI
//! names one by address (`sip:bob@192.0.2.7:5060`, what a user writes without a domain) is
//! taken as a request for the user of the domain, wherever bob registered, instead of being
//! refused as a request to a host that is no device.

use super::{Inner, OP_TIMEOUT};
use dashmap::DashMap;
use p2psip_algorithms::storage::KIND_SIP_FRONT_END;
use p2psip_algorithms::Id;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lifetime of a front-end's record; it is stored again every third of it.
pub(super) const LIFETIME_S: u32 = 3600;
/// After a failed store, the next try.
const RETRY: Duration = Duration::from_secs(5);
/// How often a front-end whose node has not joined yet looks again.
const JOIN_POLL: Duration = Duration::from_secs(1);
/// How long an answer is believed: an address found to be a front-end, and one found not
/// to be (a remote party naming new addresses costs one Fetch per address per minute).
const KNOWN_FOR: Duration = Duration::from_secs(600);
const UNKNOWN_FOR: Duration = Duration::from_secs(60);
/// Addresses remembered at most.
const CACHE_MAX: usize = 4096;

/// The resource name of the front-end record for `addr`.
pub(super) fn resource_name(addr: SocketAddr) -> String {
    format!("sip-front-end:{addr}")
}

/// What the front-end knows about other front-ends' addresses.
#[derive(Default)]
pub(super) struct FrontEnds {
    /// By address: whether it is a front-end, and until when that answer holds.
    cache: DashMap<SocketAddr, (bool, Instant)>,
}

impl FrontEnds {
    fn cached(&self, addr: SocketAddr, now: Instant) -> Option<bool> {
        self.cache.get(&addr).filter(|e| e.1 > now).map(|e| e.0)
    }

    fn remember(&self, addr: SocketAddr, is: bool, now: Instant) {
        if self.cache.len() >= CACHE_MAX {
            self.cache.retain(|_, e| e.1 > now);
        }
        if self.cache.len() < CACHE_MAX {
            let until = now + if is { KNOWN_FOR } else { UNKNOWN_FOR };
            self.cache.insert(addr, (is, until));
        }
    }
}

impl Inner {
    /// Whether `addr` is the SIP address of a front-end of this overlay (a record under
    /// kind SIP-FRONT-END names it). An overlay that cannot be asked answers "no".
    pub(super) async fn is_front_end(&self, addr: SocketAddr) -> bool {
        if self.is_own(addr) {
            return true;
        }
        if let Some(is) = self.front_ends.cached(addr, Instant::now()) {
            return is;
        }
        let text = addr.to_string();
        let resource = Id::hash_of(resource_name(addr).as_bytes());
        let is = match self
            .node
            .fetch_kind(resource, KIND_SIP_FRONT_END, OP_TIMEOUT)
            .await
        {
            // Expired records are not returned; signatures and the policy (the key is the
            // signer's Node-ID) were checked by the fetch.
            Ok(ans) => crate::ops::values_of(&ans)
                .iter()
                .any(|v| v.as_slice() == text.as_bytes()),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "SIP: front-end record not fetched");
                return false;
            }
        };
        tracing::debug!(%addr, front_end = is, "SIP: front-end record looked up");
        self.front_ends.remember(addr, is, Instant::now());
        is
    }

    /// Stores this front-end's record (its advertised address) and stores it again every
    /// third of its lifetime, for as long as the front-end runs.
    pub(super) async fn publish_address(self: Arc<Self>) {
        let addr = self.cfg.advertise;
        let name = resource_name(addr);
        loop {
            // Nothing can be stored before the node has joined its overlay.
            loop {
                match self.node.status().await {
                    Ok(st) if st.joined => break,
                    Ok(_) => tokio::time::sleep(JOIN_POLL).await,
                    Err(_) => return,
                }
            }
            let n = name.clone();
            let stored = self
                .node
                .run(OP_TIMEOUT, move |node, t| {
                    let me = node.identity().clone();
                    let (res, v) = crate::ops::build_value(
                        &me,
                        &n,
                        KIND_SIP_FRONT_END,
                        addr.to_string().as_bytes(),
                        t,
                        LIFETIME_S,
                    );
                    node.store(t, res, KIND_SIP_FRONT_END, vec![v], 0)
                })
                .await
                .and_then(crate::runtime::store_answer);
            let next = match stored {
                Ok(_) => {
                    tracing::debug!(%addr, "SIP: front-end address published");
                    Duration::from_secs(u64::from(LIFETIME_S / 3))
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "SIP: front-end address not published yet");
                    RETRY
                }
            };
            tokio::time::sleep(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_cache_is_bounded() {
        let f = FrontEnds::default();
        let t = Instant::now();
        let a: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:5060".parse().unwrap();
        f.remember(a, true, t);
        f.remember(b, false, t);
        assert_eq!(f.cached(a, t), Some(true));
        assert_eq!(f.cached(b, t), Some(false));
        // A "no" is asked again sooner than a "yes".
        let later = t + UNKNOWN_FOR + Duration::from_secs(1);
        assert_eq!(f.cached(b, later), None);
        assert_eq!(f.cached(a, later), Some(true));
        assert_eq!(f.cached(a, t + KNOWN_FOR + Duration::from_secs(1)), None);
        for i in 0..(CACHE_MAX as u32 + 100) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            f.remember(SocketAddr::from((ip, 5060)), false, t);
        }
        assert!(f.cache.len() <= CACHE_MAX, "{}", f.cache.len());
        // Once the old answers expired, new ones are taken again.
        let c: SocketAddr = "192.0.2.3:5060".parse().unwrap();
        f.remember(c, true, later);
        assert_eq!(f.cached(c, later), Some(true));
    }

    #[test]
    fn the_resource_name_writes_the_address_as_socket_addresses_print() {
        assert_eq!(
            resource_name("192.0.2.7:5060".parse().unwrap()),
            "sip-front-end:192.0.2.7:5060"
        );
        assert_eq!(
            resource_name("[2001:db8::1]:5061".parse().unwrap()),
            "sip-front-end:[2001:db8::1]:5061"
        );
    }
}
