//! The in-memory [`Storage`]: an ordered map, so handovers can walk id ranges.

use super::{KindData, Storage};
use crate::id::Id;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: BTreeMap<(Id, u32), KindData>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStore {
    fn get(&self, resource: Id, kind: u32) -> Option<KindData> {
        self.map.get(&(resource, kind)).cloned()
    }

    fn put(&mut self, resource: Id, kind: u32, data: KindData) {
        self.map.insert((resource, kind), data);
    }

    fn remove(&mut self, resource: Id, kind: u32) -> Option<KindData> {
        self.map.remove(&(resource, kind))
    }

    fn keys(&self) -> Vec<(Id, u32)> {
        self.map.keys().copied().collect()
    }

    fn value_count(&self) -> usize {
        self.map.values().map(|k| k.values.len()).sum()
    }
}
