//! A sorted set of ids with positional access, for algorithms that keep the whole
//! membership (one-hop). Ids live in sorted chunks of at most `CHUNK` entries: 16 bytes per
//! id plus chunk slack (a `BTreeSet<u128>` costs about half as much again), insertion and
//! removal move at most one chunk, and "the k-th member after x" is a walk over chunk
//! lengths instead of k steps of an iterator (at 100,000 members: 200 additions instead of
//! up to 100,000 steps).

use crate::id::Id;

const CHUNK: usize = 512;

/// A sorted set of ids (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    chunks: Vec<Vec<Id>>,
    len: usize,
}

impl IdSet {
    pub fn new() -> Self {
        IdSet::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `id`, or would hold it.
    fn chunk_for(&self, id: Id) -> usize {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|l| *l < id));
        i.min(self.chunks.len().saturating_sub(1))
    }

    pub fn contains(&self, id: &Id) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        self.chunks[self.chunk_for(*id)].binary_search(id).is_ok()
    }

    /// Inserts `id`; returns whether it was new.
    pub fn insert(&mut self, id: Id) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push(vec![id]);
            self.len = 1;
            return true;
        }
        let c = self.chunk_for(id);
        let chunk = &mut self.chunks[c];
        let Err(pos) = chunk.binary_search(&id) else {
            return false;
        };
        if chunk.len() == chunk.capacity() {
            // Grow by small steps: at a full membership per peer, doubling would waste
            // a third of the memory on average.
            chunk.reserve_exact(CHUNK / 8);
        }
        chunk.insert(pos, id);
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(CHUNK);
            chunk.shrink_to_fit();
            self.chunks.insert(c + 1, tail);
        }
        true
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &Id) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let c = self.chunk_for(*id);
        let chunk = &mut self.chunks[c];
        let Ok(pos) = chunk.binary_search(id) else {
            return false;
        };
        chunk.remove(pos);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(c);
        } else if chunk.len() < CHUNK / 4 && c + 1 < self.chunks.len() {
            let next = self.chunks.remove(c + 1);
            self.chunks[c].extend(next);
            if self.chunks[c].len() > 2 * CHUNK {
                let tail = self.chunks[c].split_off(CHUNK);
                self.chunks.insert(c + 1, tail);
            }
        }
        true
    }

    /// How many ids are smaller than `id`.
    pub fn rank(&self, id: Id) -> usize {
        let mut r = 0;
        for c in &self.chunks {
            match c.last() {
                Some(l) if *l < id => r += c.len(),
                _ => return r + c.partition_point(|x| *x < id),
            }
        }
        r
    }

    /// The id at position `i` in sorted order.
    pub fn get(&self, mut i: usize) -> Option<Id> {
        for c in &self.chunks {
            if i < c.len() {
                return Some(c[i]);
            }
            i -= c.len();
        }
        None
    }

    /// The id at position `i` modulo the size (the ring wraps).
    pub fn get_wrapping(&self, i: usize) -> Option<Id> {
        if self.len == 0 {
            return None;
        }
        self.get(i % self.len)
    }

    /// The first id at or after `target`, wrapping around the ring.
    pub fn successor_of(&self, target: Id) -> Option<Id> {
        self.get_wrapping(self.rank(target))
    }

    /// Ids in order from the first at or after `start` (no wrap).
    pub fn iter_from(&self, start: Id) -> impl Iterator<Item = Id> + '_ {
        let c = if self.chunks.is_empty() {
            0
        } else {
            self.chunk_for(start)
        };
        let skip = self
            .chunks
            .get(c)
            .map_or(0, |ch| ch.partition_point(|x| *x < start));
        self.chunks.iter().skip(c).flatten().skip(skip).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = Id> + '_ {
        self.chunks.iter().flatten().copied()
    }

    /// The `n` ids after `id` on the ring (`id` itself never, whether or not a member).
    pub fn after(&self, id: Id, n: usize) -> Vec<Id> {
        let others = self.len - usize::from(self.contains(&id));
        let n = n.min(others);
        let start = self.rank(id) + usize::from(self.contains(&id));
        (0..n)
            .filter_map(|k| self.get_wrapping(start + k))
            .collect()
    }

    /// The `n` ids before `id` on the ring, closest first.
    pub fn before(&self, id: Id, n: usize) -> Vec<Id> {
        let others = self.len - usize::from(self.contains(&id));
        let n = n.min(others);
        let r = self.rank(id) + self.len;
        (1..=n).filter_map(|k| self.get_wrapping(r - k)).collect()
    }
}

impl Extend<Id> for IdSet {
    fn extend<T: IntoIterator<Item = Id>>(&mut self, iter: T) {
        let mut add: Vec<Id> = iter.into_iter().collect();
        if add.len() < CHUNK {
            for id in add {
                self.insert(id);
            }
            return;
        }
        // Many at once (a joiner's whole membership): rebuild in full chunks.
        add.extend(self.iter());
        add.sort_unstable();
        add.dedup();
        self.len = add.len();
        self.chunks = add.chunks(CHUNK).map(<[Id]>::to_vec).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[test]
    fn agrees_with_a_btreeset_under_random_inserts_and_removes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut s = IdSet::new();
        let mut t = BTreeSet::new();
        for step in 0..20_000 {
            // Small id space so that removes and re-inserts of the same id happen.
            let id = Id(rng.random_range(0..5_000u128) << 110);
            if rng.random_bool(0.6) {
                assert_eq!(s.insert(id), t.insert(id), "insert {step}");
            } else {
                assert_eq!(s.remove(&id), t.remove(&id), "remove {step}");
            }
            assert_eq!(s.len(), t.len());
        }
        let v: Vec<Id> = t.iter().copied().collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), v);
        // A bulk extend (a joiner's membership) keeps the set sorted and deduplicated.
        let bulk: Vec<Id> = (0..3_000u128).map(|i| Id((i * 7 % 6_000) << 110)).collect();
        s.extend(bulk.iter().copied());
        t.extend(bulk);
        assert_eq!(s.len(), t.len());
        let v: Vec<Id> = t.iter().copied().collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), v);
        for probe in 0..200u128 {
            let x = Id(probe * (u128::MAX / 200));
            let r = v.partition_point(|m| *m < x);
            assert_eq!(s.rank(x), r);
            assert_eq!(s.successor_of(x), Some(v[r % v.len()]));
            assert_eq!(s.iter_from(x).collect::<Vec<_>>(), v[r..].to_vec());
            let after: Vec<Id> = (0..5)
                .map(|k| v[(r + usize::from(s.contains(&x)) + k) % v.len()])
                .collect();
            assert_eq!(s.after(x, 5), after);
            let before: Vec<Id> = (1..=5).map(|k| v[(r + v.len() - k) % v.len()]).collect();
            assert_eq!(s.before(x, 5), before);
            assert_eq!(s.contains(&x), t.contains(&x));
        }
    }

    #[test]
    fn small_rings_never_return_the_id_itself() {
        let mut s = IdSet::new();
        assert_eq!(s.successor_of(Id(5)), None);
        assert!(s.after(Id(5), 3).is_empty());
        s.insert(Id(5));
        assert!(s.after(Id(5), 3).is_empty());
        assert!(s.before(Id(5), 3).is_empty());
        s.insert(Id(9));
        assert_eq!(s.after(Id(5), 3), vec![Id(9)]);
        assert_eq!(s.before(Id(5), 3), vec![Id(9)]);
        assert_eq!(s.successor_of(Id(10)), Some(Id(5)));
    }
}
