//! Access policies, checked against the verified signer of every stored value
//! (proto/SPEC.md section 6).

use crate::id::Id;
use p2psip_proto::pb::{self, AccessPolicy};

/// Whether `signer` may write `value` at `resource` under `policy`. The error says why not.
pub fn check_policy(
    policy: AccessPolicy,
    resource: Id,
    signer: &pb::SignerIdentity,
    value: &pb::StoredDataValue,
    max_node_multiple: u32,
) -> Result<(), String> {
    let user_ok = || Id::hash_of(signer.user.as_bytes()) == resource;
    let node = Id::from_slice(&signer.node_id);
    match policy {
        AccessPolicy::UserMatch => {
            if user_ok() {
                Ok(())
            } else {
                Err(format!(
                    "USER-MATCH: resource is not hash(\"{}\")",
                    signer.user
                ))
            }
        }
        AccessPolicy::NodeMatch => {
            if node == Some(resource) {
                Ok(())
            } else {
                Err("NODE-MATCH: resource is not the signer's Node-ID".into())
            }
        }
        AccessPolicy::UserNodeMatch => {
            if !user_ok() {
                return Err(format!(
                    "USER-NODE-MATCH: resource is not hash(\"{}\")",
                    signer.user
                ));
            }
            match &value.model {
                Some(pb::stored_data_value::Model::Dictionary(e))
                    if Id::from_slice(&e.key) == node && node.is_some() =>
                {
                    Ok(())
                }
                _ => Err("USER-NODE-MATCH: dictionary key is not the signer's Node-ID".into()),
            }
        }
        AccessPolicy::NodeMultiple => {
            let Some(n) = node else {
                return Err("NODE-MULTIPLE: signer has no Node-ID".into());
            };
            if (0..max_node_multiple).any(|i| node_multiple_resource(n, i) == resource) {
                Ok(())
            } else {
                Err(format!(
                    "NODE-MULTIPLE: resource is not hash(Node-ID || i) for i < {max_node_multiple}"
                ))
            }
        }
        AccessPolicy::NodeIdMatch => match &value.model {
            Some(pb::stored_data_value::Model::Dictionary(e))
                if Id::from_slice(&e.key) == node && node.is_some() =>
            {
                Ok(())
            }
            _ => Err("NODE-ID-MATCH: dictionary key is not the signer's Node-ID".into()),
        },
        AccessPolicy::Unspecified => Err("kind has no access policy".into()),
    }
}

/// The i-th resource a node may write under NODE-MULTIPLE: hash(Node-ID || i).
pub fn node_multiple_resource(node: Id, i: u32) -> Id {
    let mut b = node.to_bytes().to_vec();
    b.extend_from_slice(&i.to_be_bytes());
    Id::hash_of(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: Vec<u8>) -> pb::StoredDataValue {
        pb::StoredDataValue {
            model: Some(pb::stored_data_value::Model::Dictionary(
                pb::DictionaryEntry {
                    key,
                    value: Some(pb::DataValue {
                        exists: true,
                        value: b"record".to_vec(),
                    }),
                },
            )),
        }
    }

    #[test]
    fn node_id_match_takes_any_resource_but_only_the_signers_own_key() {
        let me = Id(0xabc);
        let signer = pb::SignerIdentity {
            node_id: me.to_bytes().to_vec(),
            ..Default::default()
        };
        let p = AccessPolicy::NodeIdMatch;
        for resource in [Id(1), Id(u128::MAX), me] {
            assert!(check_policy(p, resource, &signer, &entry(me.to_bytes().to_vec()), 0).is_ok());
        }
        let other = Id(0xdef).to_bytes().to_vec();
        let e = check_policy(p, Id(1), &signer, &entry(other), 0).unwrap_err();
        assert!(e.contains("NODE-ID-MATCH"), "{e}");
        let single = pb::StoredDataValue {
            model: Some(pb::stored_data_value::Model::Single(pb::DataValue {
                exists: true,
                value: vec![],
            })),
        };
        assert!(check_policy(p, Id(1), &signer, &single, 0).is_err());
    }
}
