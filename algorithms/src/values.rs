//! Building signed values, as a writer (client or test) does before a Store.

use crate::id::Id;
use crate::time::Time;
use p2psip_proto::pb::{self, stored_data_value::Model};
use p2psip_proto::security::{stored_data_signing_input, Identity};

/// The shape of a value to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueModel {
    Single(Vec<u8>),
    /// `u32::MAX` as index appends.
    Array(u32, Vec<u8>),
    Dictionary(Vec<u8>, Vec<u8>),
    /// A delete (tombstone) of the single value.
    DeleteSingle,
    /// A delete of one dictionary key.
    DeleteKey(Vec<u8>),
}

/// A value signed by `writer` for `resource` and `kind`, stored at `now` for `lifetime_s`.
pub fn signed_value(
    writer: &Identity,
    resource: Id,
    kind: u32,
    now: Time,
    lifetime_s: u32,
    model: ValueModel,
) -> pb::StoredData {
    let dv = |exists: bool, value: Vec<u8>| Some(pb::DataValue { exists, value });
    let model = match model {
        ValueModel::Single(v) => Model::Single(pb::DataValue {
            exists: true,
            value: v,
        }),
        ValueModel::Array(index, v) => Model::Array(pb::ArrayEntry {
            index,
            value: dv(true, v),
        }),
        ValueModel::Dictionary(key, v) => Model::Dictionary(pb::DictionaryEntry {
            key,
            value: dv(true, v),
        }),
        ValueModel::DeleteSingle => Model::Single(pb::DataValue {
            exists: false,
            value: Vec::new(),
        }),
        ValueModel::DeleteKey(key) => Model::Dictionary(pb::DictionaryEntry {
            key,
            value: dv(false, Vec::new()),
        }),
    };
    let value = pb::StoredDataValue { model: Some(model) };
    let storage_time = now.as_millis();
    let signature = writer.sign(&stored_data_signing_input(
        resource,
        kind,
        storage_time,
        &value,
    ));
    pb::StoredData {
        storage_time,
        lifetime: lifetime_s,
        value: Some(value),
        signature: Some(signature),
    }
}
