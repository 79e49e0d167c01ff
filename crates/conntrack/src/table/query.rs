//! The control plane's side of the table: listings of connections
//! (`conntrack -L`) and their removal, flushing, expectations added and
//! removed by hand or by other shards, and sizes. Apart because none of it
//! runs per packet: it may walk the slab.

use super::entry::{status, Entry, L4State, V6Hi};
use super::{wheel, Conntrack, NONE};
use crate::expect::{self, helper_of, ExpectError, ExpectInfo, ExpectSpec, ExpectStats};
use crate::tuple::{Family, Tuple};
use crate::HelperKind;

/// Read-only view of one connection, for listings (`conntrack -L`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Original-direction tuple.
    pub orig: Tuple,
    /// Reply-direction tuple.
    pub reply: Tuple,
    /// TCP state name, if TCP.
    pub tcp_state: Option<&'static str>,
    /// Nanoseconds until expiry.
    pub expires_in: u64,
    /// A reply was seen.
    pub seen_reply: bool,
    /// Assured.
    pub assured: bool,
    /// Helper.
    pub helper: Option<HelperKind>,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// In the fast path (`[OFFLOAD]` in listings).
    pub offloaded: bool,
}

impl Conntrack {
    /// Removes every connection.
    pub fn flush(&mut self) {
        for b in 0..wheel::BUCKETS {
            let mut cur = self.wheel.take_bucket(b);
            while cur != wheel::NIL {
                let next = self.wheel.next(cur);
                self.destroy_unlinked(cur);
                cur = next;
            }
        }
    }

    /// Adds an expectation on behalf of connection `conn` (a [`super::Track::conn`] of an
    /// accepted packet), with its helper's policy.
    pub fn expect(&mut self, conn: u32, spec: &ExpectSpec, now: u64) -> Result<u32, ExpectError> {
        let live = self
            .entries
            .get(conn as usize)
            .is_some_and(|e| e.status & status::CONFIRMED != 0);
        if !live {
            return Err(ExpectError::NoMaster);
        }
        let policy = self.cfg.expect_policy[spec.helper as usize];
        let mut head = self.ext[conn as usize].exp_head;
        let r = self.expects.add(conn, &mut head, spec, policy, now);
        self.ext[conn as usize].exp_head = head;
        r
    }

    /// Operator: adds an expectation whose master is the connection `master`
    /// (either direction's tuple).
    pub fn expect_for(
        &mut self,
        master: &Tuple,
        spec: &ExpectSpec,
        now: u64,
    ) -> Result<u32, ExpectError> {
        let hash = self.hash(master);
        match self.lookup(master, hash) {
            Some((idx, _)) if self.entries[idx as usize].deadline > now => {
                self.expect(idx, spec, now)
            }
            _ => Err(ExpectError::NoMaster),
        }
    }

    /// Operator: removes the expectation with the given id. True if it existed.
    pub fn unexpect(&mut self, id: u32) -> bool {
        let Some(slot) = self.expects.find_id(id) else {
            return false;
        };
        self.unlink_expectation(slot, true);
        true
    }

    /// Removes expectation `slot` from the table and from its master's list
    /// (a mirror has none); `announce`: tell the other shards.
    pub(crate) fn unlink_expectation(&mut self, slot: u32, announce: bool) {
        let master = self.expects.master_of(slot);
        let mut dummy = NONE;
        let head = if master == expect::MIRROR {
            &mut dummy
        } else {
            &mut self.ext[master as usize].exp_head
        };
        if announce {
            self.expects.remove(slot, head);
        } else {
            self.expects.remove_quiet(slot, head);
        }
    }

    /// Makes this table shard `worker` of several: expectations its helpers
    /// create are announced through [`Self::drain_expect_msgs`] and the
    /// other shards' arrive through [`Self::apply_expect_msg`], so the first
    /// packet of an expected connection is related on whichever shard owns it.
    pub fn set_shard(&mut self, worker: u16) {
        self.expects.set_shard(worker);
    }

    /// Moves the expectation messages for the other shards into `out`. Send
    /// them before forwarding the packets that caused them.
    pub fn drain_expect_msgs(&mut self, out: &mut Vec<expect::ExpectMsg>) {
        self.expects.drain_outbox(out);
    }

    /// Applies another shard's expectation message.
    pub fn apply_expect_msg(&mut self, msg: &expect::ExpectMsg, now: u64) {
        match *msg {
            expect::ExpectMsg::Add {
                origin,
                spec,
                expires_in,
            } => self
                .expects
                .add_mirror(origin, &spec, now + expires_in, now),
            expect::ExpectMsg::Remove { origin } => {
                if let Some(slot) = self.expects.find_origin(origin) {
                    self.unlink_expectation(slot, false);
                }
            }
            expect::ExpectMsg::GreKey { .. } => self.mirror_gre_key(msg),
            expect::ExpectMsg::GreTeardown { origin, tuples } => {
                self.mirror_gre_teardown(origin, &tuples);
            }
        }
    }

    /// Live expectations, for listings.
    pub fn expectations(&self, now: u64) -> impl Iterator<Item = ExpectInfo> + '_ {
        self.expects.list(now, move |m| self.orig(m))
    }

    /// Expectation counters.
    pub fn expect_stats(&self) -> &ExpectStats {
        &self.expects.stats
    }

    /// Every confirmed connection, for listings. Walks the slab: control plane only.
    pub fn connections(&self, now: u64) -> impl Iterator<Item = ConnInfo> + '_ {
        self.connections_in(0..self.entries.len(), now)
    }

    /// Live connections from source `a` (0 when no per-source limit is set).
    pub fn source_count(&self, f: Family, a: crate::tuple::Addr) -> u32 {
        self.sources.as_ref().map_or(0, |s| s.get(f, a))
    }

    /// Slots of the index (a power of two).
    pub fn index_slots(&self) -> usize {
        self.index.capacity()
    }

    /// Slots a lookup of `t` reads in the index (see [`crate::index::Index::probe_len`]).
    pub fn probe_len(&self, t: &Tuple) -> usize {
        self.index.probe_len(self.flow_hash(t))
    }

    /// Slots of the slab (the table's capacity): [`Self::connections_in`]
    /// ranges are within `0..slots()`.
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The confirmed connections in a range of slab slots, so a listing of a
    /// large table can be taken in slices between packet batches.
    pub fn connections_in(
        &self,
        range: core::ops::Range<usize>,
        now: u64,
    ) -> impl Iterator<Item = ConnInfo> + '_ {
        let end = range.end.min(self.entries.len());
        let start = range.start.min(end);
        self.entries[start..end]
            .iter()
            .zip(&self.v6hi[start..end])
            .filter(move |(e, _)| e.status & status::CONFIRMED != 0 && e.deadline > now)
            .map(move |(e, hi)| info_of(e, hi, now))
    }

    /// Removes the confirmed connections in a range of slab slots for which
    /// `pred` holds (`conntrack -D` with filters); returns how many.
    pub fn remove_in(
        &mut self,
        range: core::ops::Range<usize>,
        now: u64,
        mut pred: impl FnMut(&ConnInfo) -> bool,
    ) -> usize {
        self.now = now;
        let end = range.end.min(self.entries.len());
        let mut removed = 0;
        for idx in range.start.min(end)..end {
            let e = &self.entries[idx];
            if e.status & status::CONFIRMED == 0 {
                continue;
            }
            if pred(&info_of(e, &self.v6hi[idx], now)) {
                // `idx < entries.len() <= u32::MAX`.
                #[allow(clippy::cast_possible_truncation)]
                self.destroy(idx as u32);
                removed += 1;
            }
        }
        removed
    }
}

pub(super) fn info_of(e: &Entry, hi: &V6Hi, now: u64) -> ConnInfo {
    let orig = e.orig.tuple(hi);
    ConnInfo {
        orig,
        reply: orig.invert(),
        tcp_state: match e.l4 {
            L4State::Tcp(c) => Some(c.state.name()),
            L4State::Stream(_) => None,
        },
        expires_in: e.deadline.saturating_sub(now),
        seen_reply: e.status & status::SEEN_REPLY != 0,
        assured: e.status & status::ASSURED != 0,
        helper: helper_of(e.helper),
        packets: e.packets,
        bytes: e.bytes,
        offloaded: e.status & status::OFFLOADED != 0,
    }
}
