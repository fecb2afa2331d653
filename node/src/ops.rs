//! What the `client` and `devnet` commands store and fetch: kinds by name, values built
//! and signed for a resource name, answers rendered for people or as JSON.

use p2psip_algorithms::storage::{
    KIND_NODE_VALUE, KIND_SIP_FRONT_END, KIND_SIP_REGISTRATION, KIND_USER_ARRAY, KIND_USER_VALUE,
};
use p2psip_algorithms::{signed_value, Id, Time, ValueModel};
use p2psip_proto::pb::{self, stored_data_value::Model};
use p2psip_proto::security::Identity;
use serde_json::json;

/// The key of a client's name: clients that store under a name sign as that name, with a
/// key derived from it (so the same name always writes as the same identity).
pub fn name_seed(name: &str) -> [u8; 32] {
    let d = <sha2::Sha256 as sha2::Digest>::digest(format!("p2psip-client:{name}"));
    let mut s = [0u8; 32];
    s.copy_from_slice(&d);
    s
}

/// Why a command-line argument or the health check failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("unknown kind {0:?}; known: {KIND_NAMES}, or a number")]
    UnknownKind(String),
    #[error("node id {0:?} is not hex: {1}")]
    NodeIdNotHex(String, hex::FromHexError),
    #[error("node id {0:?}: 32 hex digits (16 bytes) expected, got {1}")]
    NodeIdLength(String, usize),
    #[error("{0}")]
    Duration(String),
    #[error("connecting to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("reading {addr}: {error}")]
    Read { addr: String, error: std::io::Error },
    #[error("no answer from {addr} within {limit:?}")]
    Timeout {
        addr: String,
        limit: std::time::Duration,
    },
    #[error("metrics endpoint answered {0:?}")]
    Status(String),
    #[error("the node has not joined its overlay")]
    NotJoined,
}

/// Kind names accepted on the command line.
pub const KIND_NAMES: &str = "user-value, sip-registration, user-array, node-value, sip-front-end";

/// A kind id from its command-line name (or a number).
pub fn kind_of(name: &str) -> Result<u32, OpsError> {
    Ok(match name {
        "user-value" => KIND_USER_VALUE,
        "sip-registration" => KIND_SIP_REGISTRATION,
        "user-array" => KIND_USER_ARRAY,
        "node-value" => KIND_NODE_VALUE,
        "sip-front-end" => KIND_SIP_FRONT_END,
        other => match other.parse::<u32>() {
            Ok(n) => n,
            Err(_) => return Err(OpsError::UnknownKind(other.into())),
        },
    })
}

/// The command-line name of a kind ("other" for kinds without one).
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_USER_VALUE => "user-value",
        KIND_SIP_REGISTRATION => "sip-registration",
        KIND_USER_ARRAY => "user-array",
        KIND_NODE_VALUE => "node-value",
        KIND_SIP_FRONT_END => "sip-front-end",
        _ => "other",
    }
}

/// The value `writer` stores under `name` for `kind`: the resource is hash(name) (the
/// writer's Node-ID for node-value), and a SIP registration or front-end address is keyed
/// by the writer's Node-ID.
pub fn build_value(
    writer: &Identity,
    name: &str,
    kind: u32,
    value: &[u8],
    now: Time,
    lifetime: u32,
) -> (Id, pb::StoredData) {
    let resource = if kind == KIND_NODE_VALUE {
        writer.node_id
    } else {
        Id::hash_of(name.as_bytes())
    };
    let model = match kind {
        KIND_SIP_REGISTRATION | KIND_SIP_FRONT_END => {
            ValueModel::Dictionary(writer.node_id.to_bytes().to_vec(), value.to_vec())
        }
        KIND_USER_ARRAY => ValueModel::Array(u32::MAX, value.to_vec()),
        _ => ValueModel::Single(value.to_vec()),
    };
    (
        resource,
        signed_value(writer, resource, kind, now, lifetime, model),
    )
}

/// The payloads of the values in a Fetch answer.
pub fn values_of(ans: &pb::FetchAns) -> Vec<Vec<u8>> {
    ans.kind_responses
        .iter()
        .flat_map(|k| k.values.iter())
        .filter_map(|d| match d.value.as_ref()?.model.as_ref()? {
            Model::Single(v) => Some(v.value.clone()),
            Model::Array(e) => e.value.as_ref().map(|v| v.value.clone()),
            Model::Dictionary(e) => e.value.as_ref().map(|v| v.value.clone()),
        })
        .collect()
}

/// JSON for a list of values (UTF-8 where they are, hex otherwise).
pub fn values_json(values: &[Vec<u8>]) -> serde_json::Value {
    json!(values
        .iter()
        .map(|v| match std::str::from_utf8(v) {
            Ok(s) => json!(s),
            Err(_) => json!({ "hex": hex::encode(v) }),
        })
        .collect::<Vec<_>>())
}

/// Parses "500ms", "30s", "5m", "2h" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, OpsError> {
    p2psip_algorithms::time::parse_duration(s).map_err(|e| OpsError::Duration(e.to_string()))
}

/// The container health check: the metrics endpoint answers 200 and reports the node
/// joined (`p2psip_overlay_joined ... 1`). A plain HTTP/1.0 GET, enough for our own
/// endpoint.
pub async fn health(metrics: &str, timeout: std::time::Duration) -> Result<(), OpsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = || metrics.to_string();
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(metrics)
            .await
            .map_err(|error| OpsError::Connect {
                addr: addr(),
                error,
            })?;
        let read = |error| OpsError::Read {
            addr: addr(),
            error,
        };
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").as_bytes())
            .await
            .map_err(read)?;
        let mut body = Vec::new();
        s.take(8 << 20).read_to_end(&mut body).await.map_err(read)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| OpsError::Timeout {
            addr: addr(),
            limit: timeout,
        })??;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(OpsError::Status(
            text.lines().next().unwrap_or("").to_string(),
        ));
    }
    let joined = text
        .lines()
        .filter(|l| l.starts_with("p2psip_overlay_joined"))
        .filter_map(|l| l.rsplit(' ').next())
        .any(|v| v.trim() == "1");
    if !joined {
        return Err(OpsError::NotJoined);
    }
    Ok(())
}

/// A Node-ID written as 32 hex digits (as nodes print theirs).
pub fn parse_node_id(s: &str) -> Result<p2psip_algorithms::NodeId, OpsError> {
    let bytes = hex::decode(s.trim()).map_err(|e| OpsError::NodeIdNotHex(s.into(), e))?;
    p2psip_algorithms::NodeId::from_slice(&bytes)
        .ok_or_else(|| OpsError::NodeIdLength(s.into(), bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("sip-registration").unwrap(), KIND_SIP_REGISTRATION);
        assert_eq!(kind_of("7").unwrap(), 7);
        assert!(kind_of("bogus").is_err());
    }

    #[test]
    fn node_ids_parse_from_32_hex_digits_only() {
        let id = super::parse_node_id("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(format!("{id:#}"), "00112233445566778899aabbccddeeff");
        for bad in [
            "",
            "0011",
            "zz112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeeff00",
        ] {
            assert!(super::parse_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
