//! ReDiR service discovery (RFC 7374; proto/SPEC.md 6.2): providers of a service
//! ("turn", "voicemail", ...) register in a tree of REDIR dictionaries stored in the
//! overlay; a lookup finds the provider whose Node-ID is the closest successor of a key
//! (the caller's own Node-ID by default, so that callers spread over the providers).
//!
//! Level `l` of a service's tree splits the id space into `BRANCHING^l` equal intervals;
//! tree node `(l, j)` holds the records of providers whose keys fall in interval `j` and
//! is stored at Resource-ID `tree_resource(service, l, j)`. Both walks are sans-IO: the
//! caller fetches and stores what each [`Step`] says and feeds the outcome back.

use crate::id::Id;
use crate::values::{signed_value, ValueModel};
use p2psip_proto::pb;
use p2psip_proto::security::Identity;
use prost::Message as _;

/// Children per tree node (RFC 7374's default).
pub const BRANCHING: u64 = 10;
/// Where registrations and lookups start (RFC 7374's default).
pub const STARTING_LEVEL: u32 = 2;
/// The deepest level: 10^16 intervals of 2^128 / 10^16 ids each.
pub const MAX_LEVEL: u32 = 16;
/// Levels one walk visits at most (a bound on the requests of one registration).
pub const MAX_STEPS: usize = 2 * MAX_LEVEL as usize + 2;

/// The index of the tree node at `level` whose interval holds `key`:
/// floor(key * BRANCHING^level / 2^128), computed exactly.
pub fn node_index(key: Id, level: u32) -> u64 {
    let level = level.min(MAX_LEVEL);
    let m: u128 = u128::from(BRANCHING).pow(level);
    let (hi, lo) = (key.0 >> 64, key.0 & u128::from(u64::MAX));
    // key * m / 2^128 = (hi * m + (lo * m) / 2^64) / 2^64, each product below 2^118.
    let mid = hi * m + ((lo * m) >> 64);
    (mid >> 64) as u64
}

/// The Resource-ID of tree node `(level, node)` of `service`.
pub fn tree_resource(service: &str, level: u32, node: u64) -> Id {
    let mut b = Vec::with_capacity(service.len() + 20);
    b.extend_from_slice(b"redir\0");
    b.extend_from_slice(service.as_bytes());
    b.push(0);
    b.extend_from_slice(&level.to_be_bytes());
    b.extend_from_slice(&node.to_be_bytes());
    Id::hash_of(&b)
}

/// A provider's record, decoded, with its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub key: Id,
    pub address: String,
    pub attributes: Vec<String>,
    /// Seconds of lifetime left when it was fetched (0: not known).
    pub remaining_s: u32,
}

/// The records of a fetched tree node that belong there: decodable, of this service,
/// level and node, keyed by the provider that signed them (the dictionary key, which
/// NODE-ID-MATCH binds to the signer) and with that key in the node's interval.
pub fn records_of(
    service: &str,
    level: u32,
    node: u64,
    values: &[(Vec<u8>, Vec<u8>, u32)],
) -> Vec<Provider> {
    let mut out: Vec<Provider> = values
        .iter()
        .filter_map(|(dict_key, bytes, remaining_s)| {
            let r = pb::RedirServiceProvider::decode(bytes.as_slice()).ok()?;
            let key = Id::from_slice(&r.service_provider)?;
            let ok = Id::from_slice(dict_key) == Some(key)
                && r.namespace == service
                && r.level == level
                && r.node == node
                && node_index(key, level) == node;
            ok.then_some(Provider {
                key,
                address: r.address,
                attributes: r.attributes,
                remaining_s: *remaining_s,
            })
        })
        .collect();
    out.sort_by_key(|p| p.key);
    out.dedup_by_key(|p| p.key);
    out
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Fetch the REDIR dictionary at `resource` (tree node `(level, node)`) and pass its
    /// entries to `on_fetched`.
    Fetch { level: u32, node: u64, resource: Id },
    /// Store `value` (kind REDIR) at `resource` and call `on_stored`.
    Store {
        level: u32,
        node: u64,
        resource: Id,
        value: Box<pb::StoredData>,
    },
    /// The walk is over.
    Done,
}

fn fetch(service: &str, key: Id, level: u32) -> Step {
    let node = node_index(key, level);
    Step::Fetch {
        level,
        node,
        resource: tree_resource(service, level, node),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Up,
    Down,
}

/// A provider's registration (RFC 7374 section 4.3): store at the starting level and
/// upward while this provider's key is the lowest or highest in the tree node, then
/// downward from the level below the start while the node holds other providers too.
pub struct Registration {
    service: String,
    identity: Identity,
    address: String,
    attributes: Vec<String>,
    lifetime_s: u32,
    phase: Phase,
    level: u32,
    /// The other providers of the node fetched last.
    others: Vec<Provider>,
    steps: usize,
    /// Tree nodes stored at: (level, node).
    pub stored: Vec<(u32, u64)>,
}

impl Registration {
    pub fn new(
        service: &str,
        identity: Identity,
        address: &str,
        attributes: Vec<String>,
        lifetime_s: u32,
    ) -> (Registration, Step) {
        let key = identity.node_id;
        let r = Registration {
            service: service.to_string(),
            identity,
            address: address.to_string(),
            attributes,
            lifetime_s,
            phase: Phase::Up,
            level: STARTING_LEVEL,
            others: Vec::new(),
            steps: 1,
            stored: Vec::new(),
        };
        (r, fetch(service, key, STARTING_LEVEL))
    }

    fn key(&self) -> Id {
        self.identity.node_id
    }

    /// The record this provider stores at tree node `(level, node)`.
    fn value(&self, level: u32, node: u64, now: crate::time::Time) -> pb::StoredData {
        let rec = pb::RedirServiceProvider {
            service_provider: self.key().to_bytes().to_vec(),
            namespace: self.service.clone(),
            level,
            node,
            address: self.address.clone(),
            attributes: self.attributes.clone(),
        };
        signed_value(
            &self.identity,
            tree_resource(&self.service, level, node),
            crate::storage::KIND_REDIR,
            now,
            self.lifetime_s,
            ValueModel::Dictionary(self.key().to_bytes().to_vec(), rec.encode_to_vec()),
        )
    }

    /// The entries of the tree node asked for (dictionary key, value, seconds left), or
    /// none when the fetch failed or found nothing.
    pub fn on_fetched(
        &mut self,
        entries: &[(Vec<u8>, Vec<u8>, u32)],
        now: crate::time::Time,
    ) -> Step {
        let node = node_index(self.key(), self.level);
        let key = self.key();
        self.others = records_of(&self.service, self.level, node, entries)
            .into_iter()
            .filter(|p| p.key != key)
            .collect();
        Step::Store {
            level: self.level,
            node,
            resource: tree_resource(&self.service, self.level, node),
            value: Box::new(self.value(self.level, node, now)),
        }
    }

    /// The store asked for is done (or failed: the walk goes on, the next refresh
    /// repairs it).
    pub fn on_stored(&mut self, ok: bool) -> Step {
        let key = self.key();
        if ok {
            self.stored.push((self.level, node_index(key, self.level)));
        }
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Step::Done;
        }
        match self.phase {
            Phase::Up => {
                let lowest = self.others.iter().all(|p| p.key > key);
                let highest = self.others.iter().all(|p| p.key < key);
                if (lowest || highest) && self.level > 0 {
                    self.level -= 1;
                    return fetch(&self.service, key, self.level);
                }
                self.phase = Phase::Down;
                self.level = STARTING_LEVEL + 1;
                fetch(&self.service, key, self.level)
            }
            Phase::Down => {
                if !self.others.is_empty() && self.level < MAX_LEVEL {
                    self.level += 1;
                    fetch(&self.service, key, self.level)
                } else {
                    Step::Done
                }
            }
        }
    }
}

/// A lookup (RFC 7374 section 4.4): at the starting level the tree node holding the key
/// has every provider of its interval; the closest one at or after the key is the
/// answer. None there: one level up, where each child interval's lowest and highest
/// providers are, and so on to level 0, where the lowest provider of all is the answer
/// when none follows the key (the id space wraps around).
pub struct Lookup {
    service: String,
    key: Id,
    level: u32,
    /// Every provider seen on the way.
    pub seen: Vec<Provider>,
    pub found: Option<Provider>,
}

impl Lookup {
    pub fn new(service: &str, key: Id) -> (Lookup, Step) {
        let l = Lookup {
            service: service.to_string(),
            key,
            level: STARTING_LEVEL,
            seen: Vec::new(),
            found: None,
        };
        (l, fetch(service, key, STARTING_LEVEL))
    }

    pub fn on_fetched(&mut self, entries: &[(Vec<u8>, Vec<u8>, u32)]) -> Step {
        let node = node_index(self.key, self.level);
        let recs = records_of(&self.service, self.level, node, entries);
        for r in &recs {
            if !self.seen.iter().any(|s| s.key == r.key) {
                self.seen.push(r.clone());
            }
        }
        if let Some(p) = recs.iter().find(|p| p.key >= self.key) {
            self.found = Some(p.clone());
            return Step::Done;
        }
        if self.level == 0 {
            self.found = recs.first().cloned();
            return Step::Done;
        }
        self.level -= 1;
        fetch(&self.service, self.key, self.level)
    }
}

/// The entries of a REDIR fetch answer: (dictionary key, value, seconds of lifetime left
/// at `now`), live values only.
pub fn entries_of(ans: &pb::FetchAns, now: crate::time::Time) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
    let now_ms = now.as_millis();
    ans.kind_responses
        .iter()
        .filter(|k| k.kind == crate::storage::KIND_REDIR)
        .flat_map(|k| k.values.iter())
        .filter_map(|sd| {
            let Some(pb::stored_data_value::Model::Dictionary(e)) =
                sd.value.as_ref().and_then(|v| v.model.as_ref())
            else {
                return None;
            };
            let v = e.value.as_ref().filter(|v| v.exists)?;
            let ends = sd
                .storage_time
                .saturating_add(u64::from(sd.lifetime).saturating_mul(1000));
            let left = (ends.saturating_sub(now_ms) / 1000).min(u64::from(u32::MAX)) as u32;
            Some((e.key.clone(), v.value.clone(), left))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Time;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn levels_split_the_id_space_into_nested_intervals() {
        assert_eq!(node_index(Id(0), 2), 0);
        assert_eq!(node_index(Id(u128::MAX), 0), 0);
        assert_eq!(node_index(Id(u128::MAX), 1), 9);
        assert_eq!(node_index(Id(u128::MAX), 2), 99);
        assert_eq!(node_index(Id(u128::MAX), MAX_LEVEL), 10u64.pow(16) - 1);
        assert_eq!(node_index(Id(u128::MAX / 2), 1), 4);
        let mut x: u128 = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                .wrapping_add(1);
            for l in 0..MAX_LEVEL {
                // A child lies in its parent.
                assert_eq!(node_index(Id(x), l + 1) / BRANCHING, node_index(Id(x), l));
            }
        }
        assert_ne!(tree_resource("turn", 2, 5), tree_resource("turn", 2, 6));
        assert_ne!(
            tree_resource("turn", 2, 5),
            tree_resource("voicemail", 2, 5)
        );
    }

    /// An in-memory overlay: tree node resource -> provider key -> record bytes.
    #[derive(Default)]
    struct Tree(BTreeMap<Id, BTreeMap<Vec<u8>, Vec<u8>>>);

    impl Tree {
        fn entries(&self, r: Id) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
            self.0
                .get(&r)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone(), 60)).collect())
                .unwrap_or_default()
        }
        fn register(&mut self, seed: u64) -> (Id, usize) {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_be_bytes());
            let id = Identity::from_seed(s, "");
            let key = id.node_id;
            let (mut reg, mut step) = Registration::new("turn", id, "192.0.2.1:3478", vec![], 60);
            let mut requests = 1;
            loop {
                step = match step {
                    Step::Fetch { resource, .. } => {
                        reg.on_fetched(&self.entries(resource), Time(0))
                    }
                    Step::Store {
                        resource, value, ..
                    } => {
                        let Some(pb::stored_data_value::Model::Dictionary(e)) =
                            value.value.and_then(|v| v.model)
                        else {
                            panic!("not a dictionary entry")
                        };
                        self.0
                            .entry(resource)
                            .or_default()
                            .insert(e.key, e.value.unwrap().value);
                        reg.on_stored(true)
                    }
                    Step::Done => break,
                };
                requests += 1;
            }
            (key, requests)
        }
        fn lookup(&self, key: Id) -> (Option<Id>, usize) {
            let (mut l, mut step) = Lookup::new("turn", key);
            let mut fetches = 0;
            while let Step::Fetch { resource, .. } = step {
                fetches += 1;
                step = l.on_fetched(&self.entries(resource));
            }
            (l.found.map(|p| p.key), fetches)
        }
    }

    #[test]
    fn every_lookup_finds_the_closest_successor_among_the_providers() {
        for n in [1usize, 2, 7, 50, 300] {
            let mut tree = Tree::default();
            let mut keys = BTreeSet::new();
            let mut most = 0;
            for i in 0..n {
                let (k, reqs) = tree.register(1000 + i as u64);
                keys.insert(k);
                most = most.max(reqs);
            }
            assert!(
                most <= 2 * MAX_STEPS,
                "{most} requests for one registration"
            );
            let mut x: u128 = 77;
            let mut worst = 0;
            for _ in 0..500 {
                x = x
                    .wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15)
                    .wrapping_add(3);
                let want = keys
                    .range(Id(x)..)
                    .next()
                    .or_else(|| keys.iter().next())
                    .copied();
                let (got, fetches) = tree.lookup(Id(x));
                assert_eq!(got, want, "{n} providers, key {x:#x}");
                worst = worst.max(fetches);
            }
            assert!(worst <= STARTING_LEVEL as usize + 1, "{worst} fetches");
        }
    }

    #[test]
    fn records_out_of_place_are_ignored() {
        let id = Identity::from_seed([3; 32], "");
        let (mut reg, step) = Registration::new("turn", id.clone(), "a:1", vec![], 60);
        let Step::Fetch { level, node, .. } = step else {
            panic!()
        };
        let Step::Store { value, .. } = reg.on_fetched(&[], Time(0)) else {
            panic!()
        };
        let Some(pb::stored_data_value::Model::Dictionary(e)) = value.value.and_then(|v| v.model)
        else {
            panic!()
        };
        let bytes = e.value.unwrap().value;
        let good = (e.key.clone(), bytes.clone(), 60);
        assert_eq!(
            records_of("turn", level, node, std::slice::from_ref(&good)).len(),
            1
        );
        // Under another provider's key, of another service, level or node: ignored.
        let forged = (Id(7).to_bytes().to_vec(), bytes.clone(), 60);
        assert!(records_of("turn", level, node, &[forged]).is_empty());
        assert!(records_of("voicemail", level, node, std::slice::from_ref(&good)).is_empty());
        assert!(records_of("turn", level + 1, node, std::slice::from_ref(&good)).is_empty());
        assert!(records_of("turn", level, node + 1, &[good]).is_empty());
        assert!(records_of("turn", level, node, &[(e.key, vec![0xff, 0xff], 60)]).is_empty());
    }
}
