//! An open-addressing hash index of `u32` ids, shared by the connection table
//! and the expectation table. Linear probing with backward-shift deletion (no
//! tombstones, so probe runs stay short however long the table lives); each slot
//! holds the hash's upper 32 bits as a tag beside the id, so a probe rarely
//! touches an entry that does not match. The home slot comes from the tag's
//! low bits, so a slot alone says where it belongs: deletion moves slots back
//! without reading any entry. (Ids sharing a home share those bits of their
//! tags; the rest, 32 minus log2 of the slots, still tell them apart: 11 bits
//! at two million slots.)

/// The index. Capacity is fixed at creation (a power of two).
#[derive(Clone, Debug)]
pub struct Index {
    /// 0 = empty, else `(hash >> 32) << 32 | (id + 1)`.
    slots: Vec<u64>,
    mask: usize,
}

/// Home slot of a hash: the low bits of its tag (the upper 32 bits).
#[inline]
fn home(hash: u64, mask: usize) -> usize {
    (hash >> 32) as usize & mask
}

#[inline]
fn id_of(slot: u64) -> u32 {
    #[allow(clippy::cast_possible_truncation)]
    let low = slot as u32;
    low.wrapping_sub(1)
}

/// See [`Index::candidates`].
pub struct Candidates<'a> {
    slots: &'a [u64],
    mask: usize,
    pos: usize,
    tag: u64,
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    #[inline(always)]
    fn next(&mut self) -> Option<u32> {
        loop {
            let s = *self.slots.get(self.pos)?;
            if s == 0 {
                return None;
            }
            self.pos = (self.pos + 1) & self.mask;
            if s >> 32 == self.tag {
                return Some(id_of(s));
            }
        }
    }
}

impl Index {
    /// An index with at least `slots` slots (rounded up to a power of two).
    pub fn new(slots: usize) -> Index {
        let n = slots.max(2).next_power_of_two();
        Index {
            slots: crate::mem::huge_vec(n, 0),
            mask: n - 1,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots a lookup of `hash` reads before it reaches an empty one (how
    /// long the probe run at its home is): a diagnostic for tests and benches.
    pub fn probe_len(&self, hash: u64) -> usize {
        let mut pos = home(hash, self.mask);
        let mut n = 1;
        while self.slots[pos] != 0 && n <= self.slots.len() {
            pos = (pos + 1) & self.mask;
            n += 1;
        }
        n
    }

    /// Reference to the home slot of `hash` (for prefetching).
    pub fn home_slot(&self, hash: u64) -> &u64 {
        &self.slots[home(hash, self.mask)]
    }

    /// The id in the home slot of `hash`, if any (for prefetching its entry).
    pub fn first(&self, hash: u64) -> Option<u32> {
        let s = self.slots[home(hash, self.mask)];
        (s != 0).then(|| id_of(s))
    }

    /// Calls `f` on every id whose tag matches `hash`, in probe order, until `f`
    /// returns `Some`.
    #[inline(always)]
    pub fn find<R>(&self, hash: u64, f: impl FnMut(u32) -> Option<R>) -> Option<R> {
        self.candidates(hash).find_map(f)
    }

    /// The ids whose tag matches `hash`, in probe order (a caller whose match
    /// test is too big for the compiler to inline as a closure loops over
    /// them itself rather than call [`Self::find`]).
    #[inline(always)]
    pub fn candidates(&self, hash: u64) -> Candidates<'_> {
        Candidates {
            slots: &self.slots,
            mask: self.mask,
            pos: home(hash, self.mask),
            tag: hash >> 32,
        }
    }

    /// Visits up to `max` occupied slots starting at the home of `hash` (skipping
    /// at most `max * 8` empty ones): a random sample of neighbours.
    pub fn neighbours(&self, hash: u64, max: usize, mut f: impl FnMut(u32) -> bool) -> bool {
        let mut pos = home(hash, self.mask);
        let (mut seen, mut scanned) = (0, 0);
        while seen < max && scanned < max * 8 {
            let s = self.slots[pos];
            scanned += 1;
            if s != 0 {
                seen += 1;
                if f(id_of(s)) {
                    return true;
                }
            }
            pos = (pos + 1) & self.mask;
        }
        false
    }

    /// Inserts `id` under `hash`. The caller keeps the load below 1.
    pub fn insert(&mut self, hash: u64, id: u32) {
        let mut pos = home(hash, self.mask);
        while self.slots[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.slots[pos] = (hash >> 32) << 32 | u64::from(id + 1);
    }

    /// Removes `id`, inserted under `hash`.
    pub fn remove(&mut self, hash: u64, id: u32) {
        let mut pos = home(hash, self.mask);
        loop {
            let s = self.slots[pos];
            if s == 0 {
                return;
            }
            if id_of(s) == id {
                break;
            }
            pos = (pos + 1) & self.mask;
        }
        let mut hole = pos;
        let mut next = (hole + 1) & self.mask;
        loop {
            let s = self.slots[next];
            if s == 0 {
                break;
            }
            // The slot's tag is its hash's upper half: its home.
            let h = home(s, self.mask);
            // Move it back into the hole unless its home lies in (hole, next].
            if hole.wrapping_sub(h) & self.mask <= next.wrapping_sub(h) & self.mask {
                self.slots[hole] = s;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a model, with a tiny index and clustered hashes so probe runs wrap.
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u32..40, any::<bool>(), 0u64..8), 1..300)) {
            let mut idx = Index::new(64);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (id, ins, h) in ops {
                // Few homes, near the end (homes come from the upper half),
                // and ids of one home with equal tags.
                let hash = (60 + h) << 32 | (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff);
                if ins {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(id) {
                        idx.insert(hash, id);
                        v.insert(hash);
                    }
                } else if let Some(hash) = model.remove(&id) {
                    idx.remove(hash, id);
                }
                for (&id, &hash) in &model {
                    prop_assert_eq!(idx.find(hash, |c| (c == id).then_some(c)), Some(id));
                }
            }
        }
    }
}
