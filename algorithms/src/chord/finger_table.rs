//! The finger table: entry `i` holds a node near `id + 2^(127-i)`, so that each hop can at
//! least halve the remaining distance.

use crate::id::{add, distance, Id};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerTable {
    me: Id,
    entries: Vec<Option<Id>>,
}

impl FingerTable {
    pub fn new(me: Id, size: usize) -> Self {
        FingerTable {
            me,
            entries: vec![None; size],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The start of interval `i`: `me + 2^(127-i)`.
    pub fn interval_start(&self, i: usize) -> Id {
        add(self.me, 1u128 << (127 - i))
    }

    /// A random target inside interval `i`, `[me + 2^(127-i), me + 2^(128-i))`, from a
    /// random `r` (RELOAD's advice: random fingers spread the load).
    pub fn random_target(&self, i: usize, r: u128) -> Id {
        let width = 1u128 << (127 - i);
        add(self.interval_start(i), r % width)
    }

    /// The interval index a node falls in, if the table covers it.
    pub fn index_of(&self, id: Id) -> Option<usize> {
        let d = distance(self.me, id);
        if d == 0 {
            return None;
        }
        let i = d.leading_zeros() as usize;
        (i < self.entries.len()).then_some(i)
    }

    pub fn get(&self, i: usize) -> Option<Id> {
        self.entries.get(i).copied().flatten()
    }

    pub fn set(&mut self, i: usize, id: Id) {
        if id != self.me {
            if let Some(e) = self.entries.get_mut(i) {
                *e = Some(id);
            }
        }
    }

    /// Fills the entry of the interval `id` falls in, if that entry is empty.
    pub fn offer(&mut self, id: Id) {
        if let Some(i) = self.index_of(id) {
            if self.entries[i].is_none() {
                self.entries[i] = Some(id);
            }
        }
    }

    /// Clears every entry holding `id`; returns whether any did.
    pub fn remove(&mut self, id: Id) -> bool {
        let mut hit = false;
        for e in self.entries.iter_mut() {
            if *e == Some(id) {
                *e = None;
                hit = true;
            }
        }
        hit
    }

    /// Every entry, with duplicates.
    pub fn iter(&self) -> impl Iterator<Item = Id> + '_ {
        self.entries.iter().flatten().copied()
    }

    /// Distinct entries in table order.
    pub fn distinct(&self) -> Vec<Id> {
        let mut v: Vec<Id> = Vec::new();
        for id in self.iter() {
            if !v.contains(&id) {
                v.push(id);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_placement() {
        let me = Id(0);
        let mut f = FingerTable::new(me, 16);
        assert_eq!(f.interval_start(0), Id(1 << 127));
        assert_eq!(f.index_of(Id(1 << 127)), Some(0));
        assert_eq!(f.index_of(Id((1 << 126) + 5)), Some(1));
        assert_eq!(f.index_of(Id(1)), None); // far below interval 15
        let t = f.random_target(3, u128::MAX);
        assert_eq!(f.index_of(t), Some(3));
        f.offer(Id(1 << 120));
        assert_eq!(f.get(7), Some(Id(1 << 120)));
        assert!(f.remove(Id(1 << 120)));
        assert_eq!(f.get(7), None);
    }
}
