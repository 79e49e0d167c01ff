//! The timer wheel: which slots' deadlines fall in which tick, and the list
//! of free slots. Apart from the table because it knows nothing of
//! connections (slots are numbers, deadlines nanoseconds), so that its rules
//! can be read on their own: it depends on nothing else in the crate.
//!
//! Lazy: a slot stays in the bucket of the tick it was linked at when its
//! deadline moves later, and is found there when that bucket's turn comes
//! (the owner then destroys it or links it again); only a deadline moving
//! earlier than its bucket needs a relink. The owner remembers the tick each
//! slot is linked at (beside what the packet path reads anyway, so that the
//! "earlier than its bucket" test costs no load) and hands it back to
//! [`Wheel::unlink`].
//!
//! A slot is on at most one list: a bucket's while its owner holds it, the
//! free list while it is free (the same links serve both).

/// No slot: the end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// Geometry: 2^28 ns (~268 ms) ticks, 4096 buckets (~18 min a turn).
const TICK_SHIFT: u32 = 28;
const WHEEL_BITS: u32 = 12;
/// Buckets in the wheel.
pub(super) const BUCKETS: usize = 1 << WHEEL_BITS;

/// The tick a time (ns) falls in.
pub(super) fn tick_of(ns: u64) -> u32 {
    // Ticks wrap after ~36 years of uptime; truncation is intended.
    #[allow(clippy::cast_possible_truncation)]
    let t = (ns >> TICK_SHIFT) as u32;
    t
}

/// A slot's links in its bucket's list; `next` doubles as the free-list
/// link.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link {
    next: u32,
    prev: u32,
}

impl Link {
    /// Unlinked.
    pub(super) const NIL: Link = Link {
        next: NIL,
        prev: NIL,
    };
}

/// The wheel over slots `0..n`, its buckets and its free list.
pub(super) struct Wheel {
    /// First slot of each bucket's list.
    heads: Vec<u32>,
    /// Per slot, its links.
    links: Vec<Link>,
    /// First free slot.
    free: u32,
    /// Next tick to process.
    cursor: u32,
    started: bool,
}

/// One pass over the buckets due at a time: [`Wheel::sweep`], then while
/// [`Wheel::due`]: [`Wheel::take_due`], walk the bucket, [`Wheel::advance`];
/// then [`Wheel::end`]. The cursor passes a bucket only once it has been
/// walked, so deadlines clamped meanwhile ([`Wheel::clamp`]) go to the
/// bucket being walked at the earliest. Work is bounded by the ticks
/// elapsed, at most one turn of the wheel: after a longer jump every bucket
/// was visited once and the cursor jumps to the pass's tick.
pub(super) struct Sweep {
    now_tick: u32,
    /// Buckets walked so far (at most one turn).
    steps: usize,
}

impl Wheel {
    /// A wheel over `links.len()` slots (the caller allocates them, as it
    /// likes), every one of them free.
    pub(super) fn new(mut links: Vec<Link>) -> Wheel {
        let n = links.len();
        for (i, l) in links.iter_mut().enumerate() {
            *l = Link::NIL;
            // `i + 1 < n`, and slots are numbered in `u32` (the owner's
            // capacity), so the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            if i + 1 < n {
                l.next = i as u32 + 1;
            }
        }
        Wheel {
            heads: vec![NIL; BUCKETS],
            links,
            free: if n == 0 { NIL } else { 0 },
            cursor: 0,
            started: false,
        }
    }

    /// Bytes held per slot: the links, and the buckets shared out.
    pub(super) fn bytes(&self) -> usize {
        self.links.capacity() * core::mem::size_of::<Link>() + self.heads.capacity() * 4
    }

    /// True if a slot is free.
    pub(super) fn has_free(&self) -> bool {
        self.free != NIL
    }

    /// Takes the first free slot off the free list (there must be one).
    pub(super) fn take_free(&mut self) -> u32 {
        let slot = self.free;
        self.free = self.links[slot as usize].next;
        self.links[slot as usize] = Link::NIL;
        slot
    }

    /// Puts `slot` (on no list) on the free list.
    pub(super) fn put_free(&mut self, slot: u32) {
        self.links[slot as usize] = Link {
            next: self.free,
            prev: NIL,
        };
        self.free = slot;
    }

    /// Links `slot` at `tick` (the owner remembers the tick).
    pub(super) fn link(&mut self, slot: u32, tick: u32) {
        let b = tick as usize & (BUCKETS - 1);
        let head = self.heads[b];
        let l = &mut self.links[slot as usize];
        l.next = head;
        l.prev = NIL;
        if head != NIL {
            self.links[head as usize].prev = slot;
        }
        self.heads[b] = slot;
    }

    /// Unlinks `slot`, linked at `tick`.
    pub(super) fn unlink(&mut self, slot: u32, tick: u32) {
        let Link { next, prev } = self.links[slot as usize];
        if prev == NIL {
            self.heads[tick as usize & (BUCKETS - 1)] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
    }

    /// The slot after `slot` in its list ([`NIL`] at the end).
    pub(super) fn next(&self, slot: u32) -> u32 {
        self.links[slot as usize].next
    }

    /// Empties bucket `b` (of [`BUCKETS`]), returning the first slot of its
    /// list: the owner walks it with [`Self::next`], reading each slot's
    /// successor before it frees or relinks the slot.
    pub(super) fn take_bucket(&mut self, b: usize) -> u32 {
        core::mem::replace(&mut self.heads[b], NIL)
    }

    /// Tick to link a deadline at: never behind the wheel's cursor.
    pub(super) fn clamp(&self, deadline: u64) -> u32 {
        let t = tick_of(deadline);
        if self.started && t.wrapping_sub(self.cursor) > u32::MAX / 2 {
            self.cursor
        } else {
            t
        }
    }

    /// Starts a pass over the buckets due at `now`; `None` on the first call,
    /// which starts the wheel at `now` instead.
    pub(super) fn sweep(&mut self, now: u64) -> Option<Sweep> {
        let now_tick = tick_of(now);
        if !self.started {
            self.started = true;
            self.cursor = now_tick;
            return None;
        }
        Some(Sweep { now_tick, steps: 0 })
    }

    /// True if the bucket at the cursor is due in pass `s`.
    pub(super) fn due(&self, s: &Sweep) -> bool {
        self.cursor != s.now_tick
            && s.now_tick.wrapping_sub(self.cursor) <= u32::MAX / 2
            && s.steps < BUCKETS
    }

    /// Empties the bucket at the cursor, as [`Self::take_bucket`].
    pub(super) fn take_due(&mut self) -> u32 {
        self.take_bucket(self.cursor as usize & (BUCKETS - 1))
    }

    /// Moves the cursor past the bucket just walked.
    pub(super) fn advance(&mut self, s: &mut Sweep) {
        self.cursor = self.cursor.wrapping_add(1);
        s.steps += 1;
    }

    /// Ends pass `s`.
    pub(super) fn end(&mut self, s: Sweep) {
        if s.steps == BUCKETS {
            // A jump of a turn or more: every bucket was visited once.
            self.cursor = s.now_tick;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 1 << TICK_SHIFT;

    /// Slots due in one sweep at `now`, in the order the wheel gives them.
    fn due(w: &mut Wheel, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        let Some(mut s) = w.sweep(now) else {
            return out;
        };
        while w.due(&s) {
            let mut cur = w.take_due();
            while cur != NIL {
                out.push(cur);
                cur = w.next(cur);
            }
            w.advance(&mut s);
        }
        w.end(s);
        out
    }

    #[test]
    fn free_slots_come_in_order_and_go_back_first() {
        let mut w = Wheel::new(vec![Link::NIL; 3]);
        assert_eq!([w.take_free(), w.take_free()], [0, 1]);
        w.put_free(0);
        assert_eq!(w.take_free(), 0);
        assert_eq!(w.take_free(), 2);
        assert!(!w.has_free());
        assert!(!Wheel::new(Vec::new()).has_free());
    }

    #[test]
    fn buckets_fall_due_once_their_tick_has_passed() {
        let mut w = Wheel::new(vec![Link::NIL; 4]);
        assert!(w.sweep(0).is_none(), "the first sweep starts the wheel");
        for (slot, at) in [(0, 3 * TICK), (1, TICK), (2, 3 * TICK + 5)] {
            w.link(slot, w.clamp(at));
        }
        assert_eq!(due(&mut w, TICK), Vec::<u32>::new());
        assert_eq!(due(&mut w, 2 * TICK), [1]);
        w.unlink(0, tick_of(3 * TICK));
        assert_eq!(due(&mut w, 4 * TICK), [2]);
        // Behind the cursor: clamped to it.
        assert_eq!(w.clamp(0), 4);
    }

    #[test]
    fn a_long_jump_visits_every_bucket_once() {
        let mut w = Wheel::new(vec![Link::NIL; 2]);
        assert!(w.sweep(0).is_none());
        w.link(0, tick_of(5 * TICK));
        w.link(1, tick_of(TICK * (BUCKETS as u64 + 7)));
        assert_eq!(due(&mut w, TICK * 3 * BUCKETS as u64), [0, 1]);
        assert_eq!(w.cursor, tick_of(TICK * 3 * BUCKETS as u64));
    }
}
