//! A sorted set of ids with positional access, for algorithms that keep the whole
//! membership (one-hop). Ids live in sorted chunks of at most `CHUNK` entries: 16 bytes per
//! id plus chunk slack (a `BTreeSet<u128>` costs about half as much again), insertion and
//! removal move at most one chunk, and "the k-th member after x" is a walk over chunk
//! lengths instead of k steps of an iterator (at 100,000 members: 200 additions instead of
//! up to 100,000 steps).
//!
//! Many sets over the same ids (a simulator holding 100,000 peers that each know the whole
//! membership) can share a [`Universe`]: a sorted list of the ids that may appear, kept
//! once. A set built on it holds one bit per universe id (with counts per block of 512 bits
//! in a Fenwick tree, for rank and select in O(log)), 1/128 of the sorted-chunk cost; ids
//! outside the universe still go to the chunks. The two give the same answers (the tests
//! compare them): which one a set uses changes its memory, never what it contains.

use crate::id::Id;
use std::sync::Arc;

const CHUNK: usize = 512;
/// Words (of 64 bits) per Fenwick block.
const BLOCK_WORDS: usize = 8;

/// The ids sets may share (see the module documentation): sorted, without duplicates.
#[derive(Clone, Default)]
pub struct Universe(Arc<Shared>);

#[derive(Default)]
struct Shared {
    ids: Vec<Id>,
    /// `starts[b]`: the first position whose id's top `bits` bits are `b` or more (ids
    /// are uniform hashes, so a position is found in a bucket of about one id).
    starts: Vec<u32>,
    bits: u32,
}

impl Universe {
    pub fn new(mut ids: Vec<Id>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let bits = ids.len().max(2).ilog2().clamp(4, 20);
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        for (p, id) in ids.iter().enumerate() {
            let b = (id.0 >> (128 - bits)) as usize;
            while starts.len() <= b {
                starts.push(p as u32);
            }
        }
        starts.resize((1 << bits) + 1, ids.len() as u32);
        Universe(Arc::new(Shared { ids, starts, bits }))
    }

    pub fn len(&self) -> usize {
        self.0.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.ids.is_empty()
    }

    fn ids(&self) -> &[Id] {
        &self.0.ids
    }

    /// How many universe ids are smaller than `id`.
    fn lower(&self, id: Id) -> usize {
        let u = &self.0;
        if u.ids.is_empty() {
            return 0;
        }
        let b = (id.0 >> (128 - u.bits)) as usize;
        let (lo, hi) = (u.starts[b] as usize, u.starts[b + 1] as usize);
        lo + u.ids[lo..hi].partition_point(|x| *x < id)
    }

    fn index_of(&self, id: &Id) -> Option<usize> {
        let p = self.lower(*id);
        (self.0.ids.get(p) == Some(id)).then_some(p)
    }
}

impl std::fmt::Debug for Universe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Universe({} ids)", self.len())
    }
}

/// Two configurations that share a universe are the same one.
impl PartialEq for Universe {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Membership bits over a universe, with a Fenwick tree of per-block counts.
#[derive(Debug, Clone)]
struct Bits {
    universe: Universe,
    words: Vec<u64>,
    /// 1-based Fenwick tree over blocks of `BLOCK_WORDS` words.
    fen: Vec<u32>,
    len: usize,
}

impl Bits {
    fn new(universe: Universe) -> Self {
        let words = universe.len().div_ceil(64);
        let blocks = words.div_ceil(BLOCK_WORDS);
        Bits {
            universe,
            words: vec![0; words],
            fen: vec![0; blocks + 1],
            len: 0,
        }
    }

    fn blocks(&self) -> usize {
        self.fen.len() - 1
    }

    fn test(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    fn add(&mut self, block: usize, delta: i32) {
        let mut i = block + 1;
        while i < self.fen.len() {
            self.fen[i] = self.fen[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Sets bit `i` to `on`; returns whether it changed.
    fn set(&mut self, i: usize, on: bool) -> bool {
        if self.test(i) == on {
            return false;
        }
        self.words[i / 64] ^= 1 << (i % 64);
        self.add(i / 64 / BLOCK_WORDS, if on { 1 } else { -1 });
        if on {
            self.len += 1;
        } else {
            self.len -= 1;
        }
        true
    }

    /// Recomputes the counts after bits were set word by word.
    fn rebuild(&mut self) {
        self.fen.iter_mut().for_each(|c| *c = 0);
        self.len = 0;
        for b in 0..self.blocks() {
            let words = &self.words[b * BLOCK_WORDS..((b + 1) * BLOCK_WORDS).min(self.words.len())];
            let c: u32 = words.iter().map(|w| w.count_ones()).sum();
            self.len += c as usize;
            let i = b + 1;
            self.fen[i] += c;
            let up = i + (i & i.wrapping_neg());
            if up < self.fen.len() {
                let carry = self.fen[i];
                self.fen[up] += carry;
            }
        }
    }

    /// Set bits before universe position `p`.
    fn rank_pos(&self, p: usize) -> usize {
        let (w, block) = (p / 64, p / 64 / BLOCK_WORDS);
        let mut r = 0usize;
        let mut i = block;
        while i > 0 {
            r += self.fen[i] as usize;
            i -= i & i.wrapping_neg();
        }
        r += self.words[block * BLOCK_WORDS..w]
            .iter()
            .map(|x| x.count_ones() as usize)
            .sum::<usize>();
        if !p.is_multiple_of(64) {
            r += (self.words[w] & ((1u64 << (p % 64)) - 1)).count_ones() as usize;
        }
        r
    }

    fn rank(&self, id: Id) -> usize {
        self.rank_pos(self.universe.lower(id))
    }

    /// The universe position of the `k`-th set bit.
    fn select(&self, k: usize) -> Option<usize> {
        if k >= self.len {
            return None;
        }
        let (mut pos, mut rem) = (0usize, k);
        let mut step = self.blocks().next_power_of_two();
        while step > 0 {
            if pos + step <= self.blocks() && (self.fen[pos + step] as usize) <= rem {
                pos += step;
                rem -= self.fen[pos] as usize;
            }
            step >>= 1;
        }
        for w in pos * BLOCK_WORDS..self.words.len() {
            let mut x = self.words[w];
            let c = x.count_ones() as usize;
            if rem < c {
                for _ in 0..rem {
                    x &= x - 1;
                }
                return Some(w * 64 + x.trailing_zeros() as usize);
            }
            rem -= c;
        }
        None
    }

    fn get(&self, k: usize) -> Option<Id> {
        self.select(k).map(|p| self.universe.ids()[p])
    }

    /// Members in order from universe position `p`.
    fn iter_pos(&self, p: usize) -> impl Iterator<Item = Id> + '_ {
        let mut w = p / 64;
        let mut cur = self.words.get(w).map_or(0, |x| x & (u64::MAX << (p % 64)));
        std::iter::from_fn(move || loop {
            if cur != 0 {
                let b = cur.trailing_zeros() as usize;
                cur &= cur - 1;
                return Some(self.universe.ids()[w * 64 + b]);
            }
            w += 1;
            cur = *self.words.get(w)?;
        })
    }
}

/// A sorted set of ids (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    own: Chunks,
    bits: Option<Bits>,
}

impl IdSet {
    pub fn new() -> Self {
        IdSet::default()
    }

    /// An empty set that keeps the ids of `universe` as bits.
    pub fn with_universe(universe: Universe) -> Self {
        IdSet {
            own: Chunks::default(),
            bits: (!universe.is_empty()).then(|| Bits::new(universe)),
        }
    }

    pub fn len(&self) -> usize {
        self.own.len + self.bits.as_ref().map_or(0, |b| b.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The universe position of `id`, when the set keeps it as a bit.
    fn slot(&self, id: &Id) -> Option<(&Bits, usize)> {
        let b = self.bits.as_ref()?;
        b.universe.index_of(id).map(|i| (b, i))
    }

    pub fn contains(&self, id: &Id) -> bool {
        match self.slot(id) {
            Some((b, i)) => b.test(i),
            None => self.own.contains(id),
        }
    }

    /// Inserts `id`; returns whether it was new.
    pub fn insert(&mut self, id: Id) -> bool {
        match self.slot(&id).map(|(_, i)| i) {
            Some(i) => self.bits.as_mut().is_some_and(|b| b.set(i, true)),
            None => self.own.insert(id),
        }
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &Id) -> bool {
        match self.slot(id).map(|(_, i)| i) {
            Some(i) => self.bits.as_mut().is_some_and(|b| b.set(i, false)),
            None => self.own.remove(id),
        }
    }

    /// How many ids are smaller than `id`.
    pub fn rank(&self, id: Id) -> usize {
        self.own.rank(id) + self.bits.as_ref().map_or(0, |b| b.rank(id))
    }

    /// The id at position `i` in sorted order.
    pub fn get(&self, i: usize) -> Option<Id> {
        let b = match &self.bits {
            Some(b) if b.len > 0 => b,
            _ => return self.own.get(i),
        };
        if self.own.len == 0 {
            return b.get(i);
        }
        if i >= self.len() {
            return None;
        }
        // The smallest a with a + (own ids below bit a) > i: the answer lies below bit a.
        let f = |a: usize| b.get(a).map_or(usize::MAX, |x| a + self.own.rank(x));
        let (mut lo, mut hi) = (0, b.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if f(mid) > i {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo > 0 && f(lo - 1) == i {
            b.get(lo - 1)
        } else {
            self.own.get(i - lo)
        }
    }

    /// The id at position `i` modulo the size (the ring wraps).
    pub fn get_wrapping(&self, i: usize) -> Option<Id> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        self.get(i % n)
    }

    /// The first id at or after `target`, wrapping around the ring.
    pub fn successor_of(&self, target: Id) -> Option<Id> {
        self.get_wrapping(self.rank(target))
    }

    /// Ids in order from the first at or after `start` (no wrap).
    pub fn iter_from(&self, start: Id) -> impl Iterator<Item = Id> + '_ {
        let mut own = self.own.iter_from(start).peekable();
        let mut bits = self
            .bits
            .as_ref()
            .map(|b| b.iter_pos(b.universe.lower(start)))
            .into_iter()
            .flatten()
            .peekable();
        std::iter::from_fn(move || match (own.peek(), bits.peek()) {
            (Some(a), Some(b)) if a < b => own.next(),
            (_, Some(_)) => bits.next(),
            (Some(_), None) => own.next(),
            (None, None) => None,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Id> + '_ {
        self.iter_from(Id(0))
    }

    /// The `n` ids after `id` on the ring (`id` itself never, whether or not a member).
    pub fn after(&self, id: Id, n: usize) -> Vec<Id> {
        let here = usize::from(self.contains(&id));
        let n = n.min(self.len() - here);
        let start = self.rank(id) + here;
        (0..n)
            .filter_map(|k| self.get_wrapping(start + k))
            .collect()
    }

    /// The `n` ids before `id` on the ring, closest first.
    pub fn before(&self, id: Id, n: usize) -> Vec<Id> {
        let here = usize::from(self.contains(&id));
        let n = n.min(self.len() - here);
        let r = self.rank(id) + self.len();
        (1..=n).filter_map(|k| self.get_wrapping(r - k)).collect()
    }
}

impl Extend<Id> for IdSet {
    fn extend<T: IntoIterator<Item = Id>>(&mut self, iter: T) {
        let add: Vec<Id> = iter.into_iter().collect();
        let Some(b) = self.bits.as_mut() else {
            return self.own.extend_from(add);
        };
        if add.len() < CHUNK {
            for id in add {
                self.insert(id);
            }
            return;
        }
        // Many at once (a joiner's whole membership, a warm start): one walk along the
        // universe for sorted input, then the counts once.
        let mut add = add;
        if !add.is_sorted() {
            add.sort_unstable();
        }
        let u = b.universe.clone();
        let ids = u.ids();
        let (mut p, mut rest) = (0, Vec::new());
        for id in add {
            while p < ids.len() && ids[p] < id {
                p += 1;
            }
            if p < ids.len() && ids[p] == id {
                b.words[p / 64] |= 1 << (p % 64);
            } else {
                rest.push(id);
            }
        }
        b.rebuild();
        self.own.extend_from(rest);
    }
}

/// Ids in sorted chunks (the ids of an [`IdSet`] that its universe does not hold).
#[derive(Debug, Clone, Default)]
struct Chunks {
    chunks: Vec<Vec<Id>>,
    len: usize,
}

impl Chunks {
    /// The chunk that holds `id`, or would hold it.
    fn chunk_for(&self, id: Id) -> usize {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|l| *l < id));
        i.min(self.chunks.len().saturating_sub(1))
    }

    fn contains(&self, id: &Id) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        self.chunks[self.chunk_for(*id)].binary_search(id).is_ok()
    }

    /// Inserts `id`; returns whether it was new.
    fn insert(&mut self, id: Id) -> bool {
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
    fn remove(&mut self, id: &Id) -> bool {
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
    fn rank(&self, id: Id) -> usize {
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
    fn get(&self, mut i: usize) -> Option<Id> {
        for c in &self.chunks {
            if i < c.len() {
                return Some(c[i]);
            }
            i -= c.len();
        }
        None
    }

    /// Ids in order from the first at or after `start` (no wrap).
    fn iter_from(&self, start: Id) -> impl Iterator<Item = Id> + '_ {
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

    fn extend_from(&mut self, mut add: Vec<Id>) {
        if add.len() < CHUNK {
            for id in add {
                self.insert(id);
            }
            return;
        }
        // Many at once (a joiner's whole membership): rebuild in full chunks.
        add.extend(self.chunks.iter().flatten().copied());
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

    /// The three ways a set can hold its ids: all in chunks, all as universe bits, and
    /// split between the two (ids outside the universe).
    fn variants() -> Vec<(&'static str, IdSet)> {
        let all: Vec<Id> = (0..6_000u128).map(|i| Id(i << 110)).collect();
        let half: Vec<Id> = all
            .iter()
            .copied()
            .filter(|x| (x.0 >> 110) % 2 == 0)
            .collect();
        vec![
            ("chunks", IdSet::new()),
            ("bits", IdSet::with_universe(Universe::new(all))),
            ("mixed", IdSet::with_universe(Universe::new(half))),
        ]
    }

    #[test]
    fn agrees_with_a_btreeset_under_random_inserts_and_removes() {
        for (name, mut s) in variants() {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let mut t = BTreeSet::new();
            for step in 0..20_000 {
                // Small id space so that removes and re-inserts of the same id happen.
                let id = Id(rng.random_range(0..5_000u128) << 110);
                if rng.random_bool(0.6) {
                    assert_eq!(s.insert(id), t.insert(id), "{name}: insert {step}");
                } else {
                    assert_eq!(s.remove(&id), t.remove(&id), "{name}: remove {step}");
                }
                assert_eq!(s.len(), t.len());
            }
            let v: Vec<Id> = t.iter().copied().collect();
            assert_eq!(s.iter().collect::<Vec<_>>(), v, "{name}");
            // A bulk extend (a joiner's membership) keeps the set sorted and deduplicated.
            let bulk: Vec<Id> = (0..3_000u128).map(|i| Id((i * 7 % 6_000) << 110)).collect();
            s.extend(bulk.iter().copied());
            t.extend(bulk);
            // Ids between the universe's (never in it), so that chunks hold some.
            for i in 0..40u128 {
                let odd = Id(((i * 97) << 110) + 1);
                assert_eq!(s.insert(odd), t.insert(odd));
            }
            assert_eq!(s.len(), t.len(), "{name}");
            let v: Vec<Id> = t.iter().copied().collect();
            assert_eq!(s.iter().collect::<Vec<_>>(), v, "{name}");
            for (i, x) in v.iter().enumerate() {
                assert_eq!(s.get(i), Some(*x), "{name}: get {i}");
            }
            assert_eq!(s.get(v.len()), None);
            for probe in 0..200u128 {
                let x = Id(probe * (u128::MAX / 200));
                let r = v.partition_point(|m| *m < x);
                assert_eq!(s.rank(x), r, "{name}");
                assert_eq!(s.successor_of(x), Some(v[r % v.len()]));
                assert_eq!(s.iter_from(x).collect::<Vec<_>>(), v[r..].to_vec());
                let after: Vec<Id> = (0..5)
                    .map(|k| v[(r + usize::from(s.contains(&x)) + k) % v.len()])
                    .collect();
                assert_eq!(s.after(x, 5), after, "{name}");
                let before: Vec<Id> = (1..=5).map(|k| v[(r + v.len() - k) % v.len()]).collect();
                assert_eq!(s.before(x, 5), before, "{name}");
                assert_eq!(s.contains(&x), t.contains(&x));
            }
        }
    }

    #[test]
    fn bits_cost_a_bit_per_universe_id() {
        let u = Universe::new((0..100_000u128).map(|i| Id(i << 100)).collect());
        let mut s = IdSet::with_universe(u.clone());
        s.extend((0..100_000u128).map(|i| Id(i << 100)));
        assert_eq!(s.len(), 100_000);
        let b = s.bits.as_ref().map(|b| b.words.len() * 8 + b.fen.len() * 4);
        // 12,500 bytes of bits and 196 blocks of counts, against 1.6 MB of ids.
        assert_eq!(b, Some(12_504 + 197 * 4));
        assert_eq!(s.own.len, 0);
    }

    #[test]
    fn small_rings_never_return_the_id_itself() {
        for (_, s) in variants() {
            small_ring(s);
        }
        let u = Universe::new(vec![Id(5), Id(9)]);
        small_ring(IdSet::with_universe(u));
    }

    fn small_ring(mut s: IdSet) {
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
