//! Connections per source address, for the optional per-source limit (what
//! nftables' `ct count over N` does per `ip saddr`): a fixed-size
//! open-addressing map from address to count, linear probing with
//! backward-shift deletion, keyed by the table's secret hash. Sized for the
//! whole table, so it never fills: every confirmed connection has one source.

use crate::tuple::{keyed_hash, Addr, Family, HashSecret};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    addr: u128,
    /// Family in bit 31, count in the rest; 0 = empty.
    count: u32,
}

const V6_BIT: u32 = 1 << 31;

/// Live connections per source.
#[derive(Clone, Debug)]
pub struct SourceCounts {
    slots: Vec<Slot>,
    mask: usize,
    secret: HashSecret,
}

impl SourceCounts {
    /// Room for `max` distinct sources (the table's capacity).
    pub fn new(max: u32, secret: HashSecret) -> SourceCounts {
        let n = (max as usize * 2).max(16).next_power_of_two();
        SourceCounts {
            slots: vec![Slot::default(); n],
            mask: n - 1,
            secret,
        }
    }

    fn key(f: Family) -> u32 {
        if f == Family::V6 {
            V6_BIT
        } else {
            0
        }
    }

    fn home(&self, f: Family, a: Addr) -> usize {
        // Truncations split the address into words and keep the low bits.
        #[allow(clippy::cast_possible_truncation)]
        let h = keyed_hash(
            &self.secret,
            &[(a.0 >> 64) as u64, a.0 as u64, u64::from(Self::key(f))],
        ) as usize;
        h & self.mask
    }

    fn find(&self, f: Family, a: Addr) -> Option<usize> {
        let mut pos = self.home(f, a);
        loop {
            let s = self.slots[pos];
            if s.count == 0 {
                return None;
            }
            if s.addr == a.0 && s.count & V6_BIT == Self::key(f) {
                return Some(pos);
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Live connections from `a`.
    pub fn get(&self, f: Family, a: Addr) -> u32 {
        self.find(f, a).map_or(0, |i| self.slots[i].count & !V6_BIT)
    }

    /// One more connection from `a`.
    pub fn inc(&mut self, f: Family, a: Addr) {
        if let Some(i) = self.find(f, a) {
            self.slots[i].count += 1;
            return;
        }
        let mut pos = self.home(f, a);
        while self.slots[pos].count != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.slots[pos] = Slot {
            addr: a.0,
            count: Self::key(f) | 1,
        };
    }

    /// One connection fewer from `a` (removed when none is left).
    pub fn dec(&mut self, f: Family, a: Addr) {
        let Some(i) = self.find(f, a) else { return };
        if self.slots[i].count & !V6_BIT > 1 {
            self.slots[i].count -= 1;
            return;
        }
        // Backward-shift deletion: pull later members of the run back.
        let mut hole = i;
        let mut next = (hole + 1) & self.mask;
        loop {
            let s = self.slots[next];
            if s.count == 0 {
                break;
            }
            let fam = if s.count & V6_BIT != 0 {
                Family::V6
            } else {
                Family::V4
            };
            let home = self.home(fam, Addr(s.addr));
            // Move `s` into the hole if its home is not within (hole, next].
            let dist_next = next.wrapping_sub(home) & self.mask;
            let dist_hole = hole.wrapping_sub(home) & self.mask;
            if dist_hole < dist_next {
                self.slots[hole] = s;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = Slot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Any sequence of increments and decrements agrees with a HashMap.
        #[test]
        fn matches_a_hashmap(ops in proptest::collection::vec((0u8..24, any::<bool>(), any::<bool>()), 0..400)) {
            let mut c = SourceCounts::new(64, HashSecret(1, 2));
            let mut m: HashMap<(bool, u8), u32> = HashMap::new();
            for (a, v6, inc) in ops {
                let f = if v6 { Family::V6 } else { Family::V4 };
                let addr = Addr(u128::from(a) * 0x1_0000_0001);
                let e = m.entry((v6, a)).or_default();
                if inc {
                    c.inc(f, addr);
                    *e += 1;
                } else if *e > 0 {
                    c.dec(f, addr);
                    *e -= 1;
                }
                for ((v6, a), n) in &m {
                    let f = if *v6 { Family::V6 } else { Family::V4 };
                    prop_assert_eq!(c.get(f, Addr(u128::from(*a) * 0x1_0000_0001)), *n);
                }
            }
        }
    }
}
