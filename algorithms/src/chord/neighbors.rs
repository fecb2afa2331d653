//! Successor and predecessor lists, kept sorted by ring distance from the local node.

use crate::id::{distance, Id};

/// Which side of the ring a list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Successors: sorted by clockwise distance from the local node.
    Succ,
    /// Predecessors: sorted by counter-clockwise distance from the local node.
    Pred,
}

/// A bounded, sorted list of neighbours on one side of the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborList {
    me: Id,
    side: Side,
    max: usize,
    ids: Vec<Id>,
}

impl NeighborList {
    pub fn new(me: Id, side: Side, max: usize) -> Self {
        NeighborList {
            me,
            side,
            max,
            ids: Vec::with_capacity(max + 1),
        }
    }

    fn key(&self, id: Id) -> u128 {
        match self.side {
            Side::Succ => distance(self.me, id),
            Side::Pred => distance(id, self.me),
        }
    }

    /// The entries, closest first.
    pub fn ids(&self) -> &[Id] {
        &self.ids
    }

    pub fn first(&self) -> Option<Id> {
        self.ids.first().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: Id) -> bool {
        self.ids.contains(&id)
    }

    /// Whether inserting `id` would keep it in the list.
    pub fn would_enter(&self, id: Id) -> bool {
        if id == self.me || self.contains(id) {
            return false;
        }
        self.ids.len() < self.max || self.ids.last().is_some_and(|l| self.key(id) < self.key(*l))
    }

    /// Inserts `id` in order and trims the list; returns whether the list changed.
    pub fn insert(&mut self, id: Id) -> bool {
        if !self.would_enter(id) {
            return false;
        }
        let k = self.key(id);
        let pos = self.ids.partition_point(|x| self.key(*x) < k);
        self.ids.insert(pos, id);
        self.ids.truncate(self.max);
        true
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: Id) -> bool {
        let before = self.ids.len();
        self.ids.retain(|x| *x != id);
        before != self.ids.len()
    }

    /// Replaces the list with `first` followed by `rest` (as a neighbour reported them),
    /// sorted and trimmed; returns whether it changed.
    pub fn replace(&mut self, first: Id, rest: &[Id]) -> bool {
        let old = std::mem::take(&mut self.ids);
        self.insert(first);
        for id in rest {
            self.insert(*id);
        }
        old != self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_sorted_and_bounded() {
        let mut s = NeighborList::new(Id(100), Side::Succ, 3);
        for x in [50u128, 150, 120, 300, 101] {
            s.insert(Id(x));
        }
        assert_eq!(s.ids(), &[Id(101), Id(120), Id(150)]);
        assert!(!s.would_enter(Id(400)));
        assert!(s.would_enter(Id(110)));
        let mut p = NeighborList::new(Id(100), Side::Pred, 2);
        for x in [50u128, 150, 99, 300] {
            p.insert(Id(x));
        }
        assert_eq!(p.ids(), &[Id(99), Id(50)]);
        assert!(p.remove(Id(99)));
        assert_eq!(p.first(), Some(Id(50)));
    }
}
