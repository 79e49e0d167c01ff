//! The conntrack table: a fixed-capacity slab of entries, an open-addressing
//! index keyed by the direction-free [`FlowKey`], a lazy timer wheel for expiry,
//! and the per-packet logic that ties the L4 trackers together (the kernel's
//! `nf_conntrack_in` / `resolve_normal_ct` / `__nf_conntrack_confirm`).
//!
//! Memory is allocated once in [`Conntrack::new`]; the packet path never
//! allocates. One index slot serves both directions of a connection, because
//! the key is the same for a tuple and its inverse.
//!
//! Lifecycle of an entry, as in the kernel: [`Conntrack::track`] of a packet
//! that opens a connection fills a free entry but leaves it *unconfirmed* (not
//! in the index); [`Conntrack::confirm`] inserts it once policy accepted the
//! packet, [`Conntrack::abort`] frees it when policy dropped it, so a dropped
//! first packet leaves nothing behind.
//!
//! The pieces, along the seams of that work: `entry` (what an entry is, the
//! index, the slab), `wheel` (the timer, on its own), `track` (the general
//! path of a packet, and confirmation), `plain` (the established shortcut),
//! `frag` (later fragments follow the first), `events` (`conntrack -E`),
//! `query` (listings and operator actions), `help` (helpers on accepted
//! packets), [`offload`] (the fast path's connections), [`state`] (the
//! connections as bytes across a restart).

mod entry;
mod events;
mod frag;
mod help;
pub mod offload;
mod plain;
mod query;
pub mod state;
mod track;
mod wheel;

#[cfg(test)]
mod tests;

pub use events::{Event, EventKind, EVENT_BUFFER};
pub(crate) use help::HelpCx;
pub use help::HelperStats;
pub use offload::{Candidate, FastPath, FastState, Reclaim};
pub use query::ConnInfo;
pub use track::Track;

use crate::expect::{ExpectPolicy, Expectations};
use crate::index::Index;
use crate::proto::tcp::TcpConfig;
use crate::timeouts::{Timeouts, SEC};
use crate::tuple::{HashKeys, HashSecret, Tuple};
use crate::HelperKind;
use entry::{status, Entry, Ext, V6Hi};
use events::Events;
use frag::FragSlot;
use wheel::{Link, Wheel};

/// Conntrack configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Fixed capacity of the table (`nf_conntrack_max`).
    pub max_entries: u32,
    /// TCP options and timeouts.
    pub tcp: TcpConfig,
    /// Other protocols' timeouts.
    pub timeouts: Timeouts,
    /// Verify L4 checksums (`nf_conntrack_checksum`).
    pub checksum: bool,
    /// Secret for the table hash.
    pub hash_secret: HashSecret,
    /// Slots of the fragment table (first-fragment verdicts awaiting later fragments).
    pub frag_slots: u32,
    /// Seconds a fragment verdict is kept (the kernel's `ipfrag_time`).
    pub frag_timeout: u32,
    /// Capacity of the expectation table (`nf_conntrack_expect_max`).
    pub expect_max: u32,
    /// Per-helper expectation policy, indexed by `HelperKind as usize`.
    pub expect_policy: [ExpectPolicy; HelperKind::COUNT],
    /// Connections that can have helper state at once (each holds two 512-byte
    /// line buffers).
    pub helper_slots: u32,
    /// FTP: accept announced addresses other than the sender's (the kernel's
    /// `nf_conntrack_ftp loose=1`); off by default (anti-bounce).
    pub ftp_loose: bool,
    /// Most live connections one source address may have (nftables'
    /// `ct count over N` per `ip saddr`); 0: no limit. A new connection
    /// beyond it is dropped with reason `source_limit`.
    pub max_per_source: u32,
    /// Assign helpers by well-known port to new connections no rule gave one
    /// (the kernel's old `nf_conntrack_helper=1`); off by default: helpers
    /// are assigned by policy rules.
    pub auto_helpers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_entries: 262_144,
            tcp: TcpConfig::default(),
            timeouts: Timeouts::default(),
            checksum: true,
            hash_secret: HashSecret::default(),
            frag_slots: 4096,
            frag_timeout: 30,
            expect_max: 4096,
            helper_slots: 4096,
            ftp_loose: false,
            max_per_source: 0,
            auto_helpers: false,
            expect_policy: crate::helpers::REGISTRY.map(|h| h.policy),
        }
    }
}

/// Kernel-named counters (`conntrack -S`), plus the entry count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups that found an entry.
    pub found: u64,
    /// Connections created and confirmed (`insert`).
    pub new: u64,
    /// Packets marked invalid.
    pub invalid: u64,
    /// Confirmations that failed because the tuple was taken meanwhile.
    pub insert_failed: u64,
    /// New packets dropped because the table was full.
    pub drop: u64,
    /// Entries evicted to make room for a new one.
    pub early_drop: u64,
    /// Lookups restarted: a dead TCP entry replaced by a new connection on the
    /// same tuple (port reuse).
    pub search_restart: u64,
    /// Entries that timed out.
    pub expired: u64,
    /// Non-first fragments that followed their first fragment's verdict.
    pub frag_followed: u64,
    /// New connections refused because their source had `max_per_source`.
    pub source_limit: u64,
    /// Connections handed to the fast path.
    pub offloaded: u64,
    /// Connections taken back from the fast path with its state.
    pub offload_returned: u64,
}

const NONE: u32 = u32::MAX;

/// The table.
pub struct Conntrack {
    cfg: Config,
    /// `cfg.hash_secret`'s constants, derived once.
    hash_keys: HashKeys,
    stats: Stats,
    entries: Vec<Entry>,
    /// Connections inserted into the index so far (wrapping).
    inserts: u32,
    /// Per entry, what helpers and expectations use.
    ext: Vec<Ext>,
    /// Per entry in the index, its tag there (its flow hash's upper half):
    /// where its removal from the index starts, without hashing its tuple
    /// again. Written when the entry enters the index.
    tags: Vec<u32>,
    /// Per entry, the upper bits of its addresses.
    v6hi: Vec<V6Hi>,
    index: Index,
    /// Entries in use (confirmed or pending).
    count: u32,
    /// Deadlines, and the free entries.
    wheel: Wheel,
    frags: Vec<FragSlot>,
    expects: Expectations,
    reaped: Vec<(u32, u32)>,
    helps: help::Helps,
    help_stats: help::HelperStats,
    /// GRE source keys learnt by the PPTP helper (the kernel's keymap).
    keymap: Vec<help::KeyMap>,
    /// Connections per source, when `max_per_source` is set.
    sources: Option<crate::limit::SourceCounts>,
    /// Connection events (`conntrack -E`), recorded only while enabled.
    events: Events,
    /// Latest `now` seen (for event timestamps and expiry in events).
    now: u64,
    /// The fast path offloaded connections are taken back from.
    fast: Option<Box<dyn FastPath>>,
    /// Offloaded connections that left the core, for the owner to remove
    /// from the fast path.
    offload_gone: Vec<u32>,
    /// Tests: every packet through the general path (to compare the plain
    /// path with it).
    #[cfg(any(test, feature = "differential"))]
    general_only: bool,
    /// Tests: packets the plain path tracked.
    #[cfg(any(test, feature = "differential"))]
    plain_hits: u64,
}

fn timeout_ns(secs: u32) -> u64 {
    u64::from(secs) * SEC
}

impl Conntrack {
    /// A table with the given configuration, all memory allocated now.
    pub fn new(cfg: Config) -> Self {
        let cap = cfg.max_entries.max(1);
        let entries = crate::mem::huge_vec(cap as usize, Entry::default());
        let wheel = Wheel::new(crate::mem::huge_vec(cap as usize, Link::NIL));
        let tags = crate::mem::huge_vec(cap as usize, 0u32);
        let ext = crate::mem::huge_vec(cap as usize, Ext::NONE);
        let v6hi = crate::mem::huge_vec(cap as usize, V6Hi::default());
        // Load factor at most 3/4 even when full: with 32-bit tags in the slots a
        // probe reads entries only on a tag match, and 8 slots share a cache line.
        let slots = (cap as usize + cap as usize / 3 + 1).next_power_of_two();
        let frag_slots = cfg.frag_slots.max(1).next_power_of_two() as usize;
        let (cfg_expect_max, secret) = (cfg.expect_max, cfg.hash_secret);
        let helper_slots = cfg.helper_slots;
        let cfg_max_per_source = cfg.max_per_source;
        Conntrack {
            hash_keys: cfg.hash_secret.keys(),
            cfg,
            stats: Stats::default(),
            entries,
            inserts: 0,
            ext,
            tags,
            v6hi,
            index: Index::new(slots),
            count: 0,
            wheel,
            frags: vec![FragSlot::default(); frag_slots],
            expects: Expectations::new(cfg_expect_max, secret),
            reaped: Vec::with_capacity(16),
            helps: help::Helps::new(helper_slots),
            help_stats: help::HelperStats::default(),
            keymap: Vec::with_capacity(help::KEYMAP_MAX),
            sources: (cfg_max_per_source > 0).then(|| crate::limit::SourceCounts::new(cap, secret)),
            events: Events::default(),
            now: 0,
            fast: None,
            offload_gone: Vec::with_capacity(64),
            #[cfg(any(test, feature = "differential"))]
            general_only: false,
            #[cfg(any(test, feature = "differential"))]
            plain_hits: 0,
        }
    }

    /// Differential testing (feature `differential`): every packet through
    /// the general path if `on`, none through the plain one, and every TCP
    /// segment through the state table (not [`crate::proto::tcp::packet`]'s shortcut for
    /// an established connection's ACK).
    #[cfg(feature = "differential")]
    pub fn set_general_only(&mut self, on: bool) {
        self.general_only = on;
    }

    /// Differential testing: packets the plain path tracked so far.
    #[cfg(feature = "differential")]
    pub fn plain_hits(&self) -> u64 {
        self.plain_hits
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Connections in the table (confirmed ones and at most one pending).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Counts a packet the parser found invalid (it never reaches [`Self::track`]).
    pub fn count_invalid(&mut self) {
        self.stats.invalid += 1;
    }

    /// True if no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of memory the table holds per connection of capacity (entries,
    /// index and wheel; the fragment table is separate and fixed).
    pub fn bytes_per_entry(&self) -> usize {
        let total = self.entries.capacity() * core::mem::size_of::<Entry>()
            + self.ext.capacity() * core::mem::size_of::<Ext>()
            + self.tags.capacity() * 4
            + self.v6hi.capacity() * core::mem::size_of::<V6Hi>()
            + self.index.capacity() * 8
            + self.wheel.bytes();
        total / self.entries.len().max(1)
    }

    /// The flow hash of a packet's tuple, for [`Self::prefetch`] and [`Self::track_prehashed`].
    pub fn flow_hash(&self, t: &Tuple) -> u64 {
        self.hash(t)
    }

    /// Batch helper, stage 1: start loading the index slot of `hash`.
    pub fn prefetch_index(&self, hash: u64) {
        prefetch(self.index.home_slot(hash));
    }

    /// Batch helper, stage 2: start loading the entry the index slot of `hash`
    /// points to (usually the right one: the first probe hits at load <= 1/2),
    /// every cache line of it: a packet reads all of them.
    pub fn prefetch_entry(&self, hash: u64) {
        if let Some(e) = self
            .index
            .first(hash)
            .and_then(|i| self.entries.get(i as usize))
        {
            // Entries are aligned to their two lines.
            let p = core::ptr::from_ref(e).cast::<u8>();
            prefetch_addr(p);
            prefetch_addr(p.wrapping_add(64));
        }
    }

    /// Links entry `idx` at wheel tick `tick`, which the entry remembers.
    fn wheel_link(&mut self, idx: u32, tick: u32) {
        self.entries[idx as usize].ttick = tick;
        self.wheel.link(idx, tick);
    }

    fn wheel_unlink(&mut self, idx: u32) {
        let tick = self.entries[idx as usize].ttick;
        self.wheel.unlink(idx, tick);
    }

    /// Sets an entry's deadline. The wheel is only touched when the deadline moves
    /// earlier than the bucket the entry sits in; later deadlines are found lazily
    /// when that bucket fires, so a busy flow costs one store per packet.
    #[inline]
    fn set_deadline(&mut self, idx: u32, deadline: u64) {
        let e = &mut self.entries[idx as usize];
        e.deadline = deadline;
        if e.before_its_bucket(deadline) {
            self.relink(idx, deadline);
        }
    }

    /// Moves a confirmed entry to the wheel bucket of an earlier deadline.
    #[cold]
    #[inline(never)]
    fn relink(&mut self, idx: u32, deadline: u64) {
        let t = self.wheel.clamp(deadline);
        self.wheel_unlink(idx);
        self.wheel_link(idx, t);
    }

    /// Reaps entries whose deadline has passed, one wheel tick (~268 ms) at a
    /// time. Work is bounded by the ticks elapsed (at most one turn of the wheel)
    /// plus the entries linked in those buckets; it never scans the table. Lookups
    /// check deadlines exactly, so reaping late never changes a verdict.
    pub fn expire(&mut self, now: u64) -> usize {
        self.now = now;
        let Some(mut sweep) = self.wheel.sweep(now) else {
            return 0;
        };
        let mut expired = 0;
        while self.wheel.due(&sweep) {
            let mut cur = self.wheel.take_due();
            while cur != wheel::NIL {
                let next = self.wheel.next(cur);
                let mut deadline = self.entries[cur as usize].deadline;
                if deadline <= now && self.entries[cur as usize].status & status::OFFLOADED != 0 {
                    // The fast path may have kept it alive: ask it first.
                    self.offload_expired(cur, now);
                    deadline = self.entries[cur as usize].deadline;
                }
                if deadline <= now {
                    self.destroy_unlinked(cur);
                    self.stats.expired += 1;
                    expired += 1;
                } else {
                    // deadline > now, so its tick is at or after now's, which is
                    // after the bucket being processed.
                    self.wheel_link(cur, wheel::tick_of(deadline));
                }
                cur = next;
            }
            self.wheel.advance(&mut sweep);
        }
        self.wheel.end(sweep);
        if !self.expects.is_empty() {
            let mut reaped = core::mem::take(&mut self.reaped);
            self.expects.expired_slots(now, 8, &mut reaped);
            for &(slot, _) in &reaped {
                self.unlink_expectation(slot, false);
            }
            reaped.clear();
            self.reaped = reaped;
        }
        expired
    }
}

/// Cache prefetch hint; a no-op where the target has none.
#[inline(always)]
fn prefetch<T>(r: &T) {
    prefetch_addr(core::ptr::from_ref(r).cast::<u8>());
}

#[inline(always)]
fn prefetch_addr(p: *const u8) {
    crate::mem::prefetch(p);
}
