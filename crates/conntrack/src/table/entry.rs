//! Entries: what a connection is in the table (the entry a packet reads and
//! writes, and what lies beside it), where it is found (the index, keyed by
//! the flow hash, compared field by field with the stored tuple) and its
//! life in the slab (allocation, release, destruction, early drop). Apart
//! from the per-packet logic because everything else builds on it.

use super::wheel;
use super::{Conntrack, EventKind, NONE};
use crate::expect::helper_of;
use crate::proto::tcp::TcpConn;
use crate::reason::DropReason;
use crate::tuple::{Addr, Direction, Family, Tuple};
use crate::{CtState, HelperKind};

/// Entry status bits (`IPS_*`).
pub(super) mod status {
    /// Entry holds a connection (confirmed or pending).
    pub const USED: u8 = 1;
    /// In the index.
    pub const CONFIRMED: u8 = 2;
    /// A reply was seen (`IPS_SEEN_REPLY`).
    pub const SEEN_REPLY: u8 = 4;
    /// Assured: never early-dropped (`IPS_ASSURED`).
    pub const ASSURED: u8 = 8;
    /// Created from an expectation (`IPS_EXPECTED`).
    pub const EXPECTED: u8 = 16;
    /// Installed in the fast path (`IPS_OFFLOAD`).
    pub const OFFLOADED: u8 = 32;
    /// Not to be offloaded (policy said no) until the policy changes.
    pub const NO_OFFLOAD: u8 = 64;
}

/// The original tuple as an entry stores it: an IPv4 tuple whole (14
/// bytes), an IPv6 one with the low 32 bits of each address only; the rest
/// of an IPv6 address is in [`V6Hi`], beside the entries, so IPv4 lookups
/// and the entry itself stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct Stored {
    pub(super) src: u32,
    pub(super) dst: u32,
    pub(super) src_port: u16,
    pub(super) dst_port: u16,
    pub(super) proto: u8,
    pub(super) v6: bool,
}

/// The upper 96 bits of an entry's two addresses (zero for IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct V6Hi {
    pub(super) src: [u32; 3],
    pub(super) dst: [u32; 3],
}

/// An address as its upper 96 bits and its low 32.
pub(super) fn split(a: Addr) -> ([u32; 3], u32) {
    // Truncations are the point: 32-bit pieces of a 128-bit address.
    #[allow(clippy::cast_possible_truncation)]
    (
        [(a.0 >> 96) as u32, (a.0 >> 64) as u32, (a.0 >> 32) as u32],
        a.0 as u32,
    )
}

fn join(hi: [u32; 3], lo: u32) -> Addr {
    Addr(
        u128::from(hi[0]) << 96
            | u128::from(hi[1]) << 64
            | u128::from(hi[2]) << 32
            | u128::from(lo),
    )
}

impl Stored {
    pub(super) fn from(t: &Tuple) -> (Stored, V6Hi) {
        let (src_hi, src) = split(t.src);
        let (dst_hi, dst) = split(t.dst);
        (
            Stored {
                src,
                dst,
                src_port: t.src_port,
                dst_port: t.dst_port,
                proto: t.proto,
                v6: t.family == Family::V6,
            },
            V6Hi {
                src: src_hi,
                dst: dst_hi,
            },
        )
    }
    /// The tuple; `hi` is read for IPv6 only (an IPv4 entry's [`V6Hi`] is
    /// not kept up to date).
    pub(super) fn tuple(&self, hi: &V6Hi) -> Tuple {
        let zero = V6Hi::default();
        let hi = if self.v6 { hi } else { &zero };
        Tuple {
            src: join(hi.src, self.src),
            dst: join(hi.dst, self.dst),
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            family: if self.v6 { Family::V6 } else { Family::V4 },
        }
    }
}

/// A time in ns kept as two 32-bit halves (alignment 4, so that it shares
/// its bytes with the TCP state in [`L4State`] without widening the entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Ns([u32; 2]);

impl Ns {
    pub(super) fn new(ns: u64) -> Ns {
        // Truncations split the value into its halves.
        #[allow(clippy::cast_possible_truncation)]
        Ns([(ns >> 32) as u32, ns as u32])
    }
    pub(super) fn get(self) -> u64 {
        u64::from(self.0[0]) << 32 | u64::from(self.0[1])
    }
}

/// Per-protocol state of an entry. The variants share their bytes, and the
/// discriminant hides in the TCP state's spare values.
#[derive(Clone, Copy, Debug)]
pub(super) enum L4State {
    /// TCP window tracking.
    Tcp(TcpConn),
    /// UDP and GRE: time (ns) after which a replied flow counts as a stream
    /// (the kernel's `stream_ts`).
    Stream(Ns),
}

impl Default for L4State {
    fn default() -> Self {
        L4State::Stream(Ns::default())
    }
}

/// One connection: what a packet reads and writes, in two cache lines
/// (128 bytes aligned to 64). What a packet of an IPv4 connection does not
/// need is beside it: the upper bits of IPv6 addresses ([`V6Hi`]), the timer
/// wheel's links ([`wheel::Link`]), the index tag, helper and expectation links
/// ([`Ext`]).
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
pub(super) struct Entry {
    pub(super) orig: Stored,
    pub(super) status: u8,
    /// 0 = none, else `HelperKind as u8 + 1`.
    pub(super) helper: u8,
    /// Expiry time (ns).
    pub(super) deadline: u64,
    /// Protocol state.
    pub(super) l4: L4State,
    /// Packets and bytes per direction.
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    /// Absolute wheel tick the entry is linked at.
    pub(super) ttick: u32,
    /// Helper of the master, for an expected connection (policy matches on it).
    pub(super) master_helper: u8,
}

/// What only helpers and expectations use of a connection, beside its
/// [`Entry`] so the packet path does not load it. `NONE` in both while the
/// entry is free.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ext {
    /// First of this connection's expectations (a master's list).
    pub(super) exp_head: u32,
    /// Slot of this connection's helper state, `NONE` if none.
    pub(super) help: u32,
}

impl Ext {
    pub(super) const NONE: Ext = Ext {
        exp_head: NONE,
        help: NONE,
    };
}

impl Entry {
    /// True if `deadline` falls before the wheel bucket a confirmed entry
    /// sits in (so the wheel must be relinked; later deadlines wait lazily).
    #[inline]
    pub(super) fn before_its_bucket(&self, deadline: u64) -> bool {
        self.status & status::CONFIRMED != 0
            && wheel::tick_of(deadline).wrapping_sub(self.ttick) > u32::MAX / 2
    }
}
pub(super) fn helper_code(h: Option<HelperKind>) -> u8 {
    h.map_or(0, |h| h as u8 + 1)
}

/// The state of a packet in direction `dir` of an entry with status `st`:
/// established once replied (or a reply), else related if expected, else new.
#[inline(always)]
pub(super) fn packet_state(st: u8, dir: Direction) -> CtState {
    if dir == Direction::Reply || st & status::SEEN_REPLY != 0 {
        CtState::Established
    } else if st & status::EXPECTED != 0 {
        CtState::Related
    } else {
        CtState::New
    }
}

/// The helper a packet of entry `e` answers to in policy (its master's, for
/// a related connection).
#[inline(always)]
pub(super) fn entry_helper(e: &Entry) -> Option<HelperKind> {
    if e.status & status::EXPECTED != 0 {
        helper_of(e.master_helper)
    } else {
        helper_of(e.helper)
    }
}

/// An entry and the direction a packet has in it; `None`: no entry.
pub(super) type Found = Option<(u32, Direction)>;

impl Conntrack {
    #[inline(always)]
    pub(super) fn hash(&self, t: &Tuple) -> u64 {
        t.flow_hash_keyed(&self.hash_keys)
    }

    /// Finds the entry holding `t` in either direction. Compares the stored
    /// original tuple field by field with the packet's tuple and with its
    /// inverse, without building either as a new value.
    #[inline(always)]
    pub(super) fn lookup(&self, t: &Tuple, hash: u64) -> Option<(u32, Direction)> {
        // Truncations keep the low 32 bits, the part an entry holds.
        #[allow(clippy::cast_possible_truncation)]
        let (src, dst) = (t.src.0 as u32, t.dst.0 as u32);
        let v6 = t.family == Family::V6;
        // The inverse's ports: swapped, except for ICMP (same id, answer type).
        let (inv_sport, inv_dport) = if t.is_icmp() {
            let inv = t.invert();
            (inv.src_port, inv.dst_port)
        } else {
            (t.dst_port, t.src_port)
        };
        for idx in self.index.candidates(hash) {
            let Some(e) = self.entries.get(idx as usize) else {
                continue;
            };
            let e = &e.orig;
            if e.proto != t.proto || e.v6 != v6 {
                continue;
            }
            // IPv4: the addresses are whole in the entry. IPv6: their upper
            // bits too must match (one more line, for IPv6 only).
            let hi = |a: Addr, b: Addr| {
                !v6 || self
                    .v6hi
                    .get(idx as usize)
                    .is_some_and(|h| h.src == split(a).0 && h.dst == split(b).0)
            };
            if e.src == src
                && e.dst == dst
                && e.src_port == t.src_port
                && e.dst_port == t.dst_port
                && hi(t.src, t.dst)
            {
                return Some((idx, Direction::Original));
            }
            if e.src == dst
                && e.dst == src
                && e.src_port == inv_sport
                && e.dst_port == inv_dport
                && hi(t.dst, t.src)
            {
                return Some((idx, Direction::Reply));
            }
        }
        None
    }

    /// Entry `idx`'s original tuple (an IPv4 one without reading [`V6Hi`]).
    pub(super) fn orig(&self, idx: u32) -> Tuple {
        let s = &self.entries[idx as usize].orig;
        if s.v6 {
            s.tuple(&self.v6hi[idx as usize])
        } else {
            s.tuple(&V6Hi::default())
        }
    }

    /// Stores `t` as entry `idx`'s original tuple: the upper address bits
    /// beside the entry for IPv6 (IPv4 leaves them as they are); returns
    /// what goes into the entry.
    pub(super) fn store_orig(&mut self, idx: u32, t: &Tuple) -> Stored {
        let (stored, hi) = Stored::from(t);
        if stored.v6 {
            self.v6hi[idx as usize] = hi;
        }
        stored
    }

    /// Sets entry `idx`'s original tuple.
    pub(super) fn set_orig(&mut self, idx: u32, t: &Tuple) {
        self.entries[idx as usize].orig = self.store_orig(idx, t);
    }

    /// Removes entry `idx` from the index.
    fn index_remove(&mut self, idx: u32) {
        let tag = self.tags[idx as usize];
        self.index.remove(u64::from(tag) << 32, idx);
    }

    /// Puts confirmed entry `idx` in the index under `hash`.
    pub(super) fn index_insert(&mut self, idx: u32, hash: u64) {
        self.index.insert(hash, idx);
        // The tag is the upper half.
        #[allow(clippy::cast_possible_truncation)]
        let tag = (hash >> 32) as u32;
        self.tags[idx as usize] = tag;
    }

    pub(super) fn alloc(&mut self, hash: u64, now: u64) -> Result<u32, DropReason> {
        if !self.wheel.has_free() && !self.early_drop(hash, now) {
            self.stats.drop += 1;
            return Err(DropReason::TableFull);
        }
        let idx = self.wheel.take_free();
        // The caller writes the whole entry.
        self.entries[idx as usize].status = status::USED;
        self.ext[idx as usize] = Ext::NONE;
        self.count += 1;
        Ok(idx)
    }

    pub(super) fn release(&mut self, idx: u32) {
        self.entries[idx as usize].status = 0;
        self.wheel.put_free(idx);
        self.count -= 1;
    }

    /// Removes a confirmed entry: index, wheel, slab.
    pub(super) fn destroy(&mut self, idx: u32) {
        self.wheel_unlink(idx);
        self.destroy_unlinked(idx);
    }

    pub(super) fn destroy_unlinked(&mut self, idx: u32) {
        self.offload_destroyed(idx);
        if self.entries[idx as usize].status & status::CONFIRMED != 0 {
            if self.events.on {
                self.emit(EventKind::Destroy, idx);
            }
            if self.sources.is_some() {
                let t = self.orig(idx);
                if let Some(sc) = &mut self.sources {
                    sc.dec(t.family, t.src);
                }
            }
            self.index_remove(idx);
        }
        let head = core::mem::replace(&mut self.ext[idx as usize].exp_head, NONE);
        if head != NONE {
            self.expects.remove_all(head);
        }
        let help = core::mem::replace(&mut self.ext[idx as usize].help, NONE);
        if help != NONE {
            self.helper_destroyed(idx, help);
            self.helps.release(help);
        }
        self.release(idx);
    }

    /// Evicts one non-assured entry near `hash` (the kernel samples the
    /// neighbouring buckets too). Returns true if room was made.
    fn early_drop(&mut self, hash: u64, now: u64) -> bool {
        let entries = &self.entries;
        let mut victim = NONE;
        self.index.neighbours(hash, 8, |idx| {
            let e = &entries[idx as usize];
            let evictable = e.status & status::ASSURED == 0 || e.deadline <= now;
            if evictable {
                victim = idx;
            }
            evictable
        });
        if victim == NONE {
            return false;
        }
        self.destroy(victim);
        self.stats.early_drop += 1;
        true
    }
}
