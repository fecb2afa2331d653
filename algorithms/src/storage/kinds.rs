//! Kinds: the types of stored data an overlay defines, with data model, access policy and
//! limits (the `KindDescription`s of the overlay configuration).

use p2psip_proto::pb::{self, AccessPolicy, DataModel};
use std::collections::BTreeMap;

/// SIP registrations: dictionary at hash(AOR) keyed by the registering node (RFC 7904).
pub const KIND_SIP_REGISTRATION: u32 = 1;
/// One value per user, at hash(user name).
pub const KIND_USER_VALUE: u32 = 2;
/// An array per user, at hash(user name).
pub const KIND_USER_ARRAY: u32 = 3;
/// One value per node, at its Node-ID.
pub const KIND_NODE_VALUE: u32 = 4;
/// Node-multiple values (e.g. a relay announcing itself at several resources).
pub const KIND_NODE_MULTIPLE: u32 = 5;
/// ReDiR service records (RFC 7374's REDIR kind): a dictionary at each tree node keyed by
/// the provider's Node-ID (NODE-ID-MATCH).
pub const KIND_REDIR: u32 = 104;
/// SIP front-ends' addresses: a dictionary at hash("sip-front-end:" + host:port) keyed by
/// the Node-ID of a front-end that listens there (NODE-ID-MATCH; proto/SPEC.md 2.7).
pub const KIND_SIP_FRONT_END: u32 = 105;

/// One kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    pub id: u32,
    pub name: String,
    pub model: DataModel,
    pub policy: AccessPolicy,
    /// Most values per resource.
    pub max_count: u32,
    /// Largest value payload, bytes.
    pub max_size: u32,
    /// For NODE-MULTIPLE: how many resources one node may write.
    pub max_node_multiple: u32,
}

impl Kind {
    /// The kind as described on the wire.
    pub fn description(&self) -> pb::KindDescription {
        pb::KindDescription {
            kind: self.id,
            name: self.name.clone(),
            data_model: self.model as i32,
            access_policy: self.policy as i32,
            max_count: self.max_count,
            max_size: self.max_size,
            max_node_multiple: self.max_node_multiple,
        }
    }
}

/// The kinds an overlay defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRegistry {
    kinds: BTreeMap<u32, Kind>,
}

impl KindRegistry {
    pub fn empty() -> Self {
        KindRegistry {
            kinds: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, k: Kind) {
        self.kinds.insert(k.id, k);
    }

    pub fn get(&self, id: u32) -> Option<&Kind> {
        self.kinds.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.values()
    }
}

impl Default for KindRegistry {
    /// The default kinds: the SIP usage and a few generic ones.
    fn default() -> Self {
        let mut r = KindRegistry::empty();
        let k = |id, name: &str, model, policy, max_count, max_node_multiple| Kind {
            id,
            name: name.into(),
            model,
            policy,
            max_count,
            max_size: 16 * 1024,
            max_node_multiple,
        };
        r.add(Kind {
            max_size: 4096,
            ..k(
                KIND_SIP_REGISTRATION,
                "SIP-REGISTRATION",
                DataModel::Dictionary,
                AccessPolicy::UserNodeMatch,
                64,
                0,
            )
        });
        r.add(k(
            KIND_USER_VALUE,
            "USER-VALUE",
            DataModel::Single,
            AccessPolicy::UserMatch,
            1,
            0,
        ));
        r.add(k(
            KIND_USER_ARRAY,
            "USER-ARRAY",
            DataModel::Array,
            AccessPolicy::UserMatch,
            256,
            0,
        ));
        r.add(k(
            KIND_NODE_VALUE,
            "NODE-VALUE",
            DataModel::Single,
            AccessPolicy::NodeMatch,
            1,
            0,
        ));
        r.add(k(
            KIND_NODE_MULTIPLE,
            "NODE-MULTIPLE-VALUE",
            DataModel::Single,
            AccessPolicy::NodeMultiple,
            1,
            8,
        ));
        r.add(Kind {
            max_size: 1024,
            ..k(
                KIND_REDIR,
                "REDIR",
                DataModel::Dictionary,
                AccessPolicy::NodeIdMatch,
                64,
                0,
            )
        });
        r.add(Kind {
            max_size: 256,
            ..k(
                KIND_SIP_FRONT_END,
                "SIP-FRONT-END",
                DataModel::Dictionary,
                AccessPolicy::NodeIdMatch,
                16,
                0,
            )
        });
        r
    }
}
