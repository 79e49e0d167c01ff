//! The fragment table: the verdicts of first fragments, which the later
//! fragments of the same datagram (without ports, so without a tuple of
//! their own) follow. Apart because it is a table of its own, beside the
//! connections, with its own key and expiry.

use super::entry::status;
use super::{timeout_ns, Conntrack, Track, NONE};
use crate::packet::{Frag, Packet};
use crate::reason::DropReason;
use crate::tuple::{Addr, Direction, Family};
use crate::CtState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct FragKey {
    src: [u64; 2],
    dst: [u64; 2],
    id: u32,
    proto: u8,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FragSlot {
    key: FragKey,
    used: bool,
    deadline: u64,
    /// Outcome of the first fragment, replayed for the others.
    accepted: bool,
    state: u8,
    reply: bool,
    conn: u32,
}

impl Conntrack {
    /// A non-first fragment gets its first fragment's verdict and state.
    pub(super) fn follow_fragment(&mut self, pkt: &Packet<'_>, f: Frag, now: u64) -> Track {
        let key = frag_key(pkt, f);
        let slot = self.frag_slot(&key);
        let s = self.frags[slot];
        if !s.used || s.key != key || s.deadline <= now {
            self.stats.invalid += 1;
            return Track::verdictless(CtState::Invalid, Some(DropReason::FragmentNoFirst));
        }
        if !f.more {
            self.frags[slot].used = false;
        }
        self.stats.frag_followed += 1;
        let state = match s.state {
            0 => CtState::New,
            1 => CtState::Established,
            2 => CtState::Related,
            3 => CtState::Invalid,
            _ => CtState::Untracked,
        };
        if s.conn != NONE && self.entries[s.conn as usize].status & status::CONFIRMED != 0 {
            let dir = if s.reply {
                Direction::Reply
            } else {
                Direction::Original
            };
            self.account(s.conn, dir, pkt);
        }
        let mut t = Track::verdictless(state, None);
        t.reply = s.reply;
        t.must_drop = !s.accepted;
        if t.must_drop {
            t.reason = Some(DropReason::FragmentBad);
        }
        t
    }

    fn frag_slot(&self, k: &FragKey) -> usize {
        let words = [
            k.src[0],
            k.src[1],
            k.dst[0],
            k.dst[1],
            u64::from(k.id) | u64::from(k.proto) << 32 | u64::from(k.v6) << 40 | 2 << 48,
        ];
        // Truncation keeps the low bits, which the mask keeps anyway.
        #[allow(clippy::cast_possible_truncation)]
        let i = crate::tuple::keyed_hash(&self.cfg.hash_secret, &words) as usize;
        i & (self.frags.len() - 1)
    }

    pub(super) fn remember_fragment(&mut self, track: &Track, accepted: bool, conn: u32, now: u64) {
        let Some(key) = track.frag else { return };
        let slot = self.frag_slot(&key);
        self.frags[slot] = FragSlot {
            key,
            used: true,
            deadline: now + timeout_ns(self.cfg.frag_timeout),
            accepted,
            state: track.state as u8,
            reply: track.reply,
            conn,
        };
    }
}

/// A 128-bit address as two words (no 16-byte alignment in a key).
fn halves(a: Addr) -> [u64; 2] {
    // Truncations are the point: the halves of a 128-bit address.
    #[allow(clippy::cast_possible_truncation)]
    [(a.0 >> 64) as u64, a.0 as u64]
}

pub(super) fn frag_key(pkt: &Packet<'_>, f: Frag) -> FragKey {
    FragKey {
        src: halves(pkt.tuple.src),
        dst: halves(pkt.tuple.dst),
        id: f.id,
        proto: pkt.tuple.proto,
        v6: pkt.tuple.family == Family::V6,
    }
}
