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

use crate::expect::{
    self, ExpectError, ExpectInfo, ExpectPolicy, ExpectSpec, ExpectStats, Expectations,
};
use crate::index::Index;
use crate::packet::{Frag, Icmp, Packet, TcpSeg, L4};
use crate::proto::tcp::{self, TcpConfig, TcpConn, TcpCtx, TcpVerdict};
use crate::reason::DropReason;
use crate::timeouts::{Timeouts, SEC};
use crate::tuple::{
    icmp_type_opens, ipproto, Addr, Direction, Family, HashKeys, HashSecret, Tuple,
};
use crate::{CtState, HelperKind};

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
    pub expect_policy: [ExpectPolicy; 9],
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
            expect_policy: core::array::from_fn(|i| {
                expect::default_policy(HelperKind::ALL.get(i).copied().unwrap_or(HelperKind::Ftp))
            }),
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

/// Entry status bits (`IPS_*`).
mod status {
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
struct Stored {
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    v6: bool,
}

/// The upper 96 bits of an entry's two addresses (zero for IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct V6Hi {
    src: [u32; 3],
    dst: [u32; 3],
}

/// An address as its upper 96 bits and its low 32.
fn split(a: Addr) -> ([u32; 3], u32) {
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
    fn from(t: &Tuple) -> (Stored, V6Hi) {
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
    fn tuple(&self, hi: &V6Hi) -> Tuple {
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

/// Timer wheel links of an entry; `next` doubles as the free-list link.
/// Beside the entries: only the wheel and the free list walk them.
#[derive(Clone, Copy, Debug)]
struct Links {
    next: u32,
    prev: u32,
    /// A confirmed entry's index tag (its flow hash's upper half): where its
    /// removal from the index starts, without hashing its tuple again.
    tag: u32,
}

/// A time in ns kept as two 32-bit halves (alignment 4, so that it shares
/// its bytes with the TCP state in [`L4State`] without widening the entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ns([u32; 2]);

impl Ns {
    fn new(ns: u64) -> Ns {
        // Truncations split the value into its halves.
        #[allow(clippy::cast_possible_truncation)]
        Ns([(ns >> 32) as u32, ns as u32])
    }
    fn get(self) -> u64 {
        u64::from(self.0[0]) << 32 | u64::from(self.0[1])
    }
}

/// Per-protocol state of an entry. The variants share their bytes, and the
/// discriminant hides in the TCP state's spare values.
#[derive(Clone, Copy, Debug)]
enum L4State {
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
/// wheel's links ([`Links`]), helper and expectation links ([`Ext`]).
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
struct Entry {
    orig: Stored,
    status: u8,
    /// 0 = none, else `HelperKind as u8 + 1`.
    helper: u8,
    /// Expiry time (ns).
    deadline: u64,
    /// Protocol state.
    l4: L4State,
    /// Packets and bytes per direction.
    packets: [u64; 2],
    bytes: [u64; 2],
    /// Absolute wheel tick the entry is linked at.
    ttick: u32,
    /// Helper of the master, for an expected connection (policy matches on it).
    master_helper: u8,
}

/// What only helpers and expectations use of a connection, beside its
/// [`Entry`] so the packet path does not load it. `NONE` in both while the
/// entry is free.
#[derive(Clone, Copy, Debug)]
struct Ext {
    /// First of this connection's expectations (a master's list).
    exp_head: u32,
    /// Slot of this connection's helper state, `NONE` if none.
    help: u32,
}

impl Ext {
    const NONE: Ext = Ext {
        exp_head: NONE,
        help: NONE,
    };
}

impl Entry {
    /// True if `deadline` falls before the wheel bucket a confirmed entry
    /// sits in (so the wheel must be relinked; later deadlines wait lazily).
    #[inline]
    fn before_its_bucket(&self, deadline: u64) -> bool {
        self.status & status::CONFIRMED != 0
            && tick_of(deadline).wrapping_sub(self.ttick) > u32::MAX / 2
    }
}

fn helper_code(h: Option<HelperKind>) -> u8 {
    h.map_or(0, |h| h as u8 + 1)
}

use expect::helper_of;

#[path = "help.rs"]
mod help;
#[path = "offload.rs"]
pub mod offload;
#[path = "state.rs"]
pub mod state;
pub use help::HelperStats;
pub use offload::{Candidate, FastPath, FastState, Reclaim};

/// What [`Conntrack::track`] decided for a packet; pass it to [`Conntrack::confirm`]
/// or [`Conntrack::abort`] once policy has spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Track {
    /// State for policy.
    pub state: CtState,
    /// Reply direction of its entry.
    pub reply: bool,
    /// Why the packet is invalid (with `state == Invalid`) or why it must be
    /// dropped regardless of policy (table full).
    pub reason: Option<DropReason>,
    /// Helper of the connection (of its master for related packets).
    pub helper: Option<HelperKind>,
    /// Conntrack itself requires the drop (table full): policy cannot accept.
    pub must_drop: bool,
    /// The packet's entry (existing, or pending until confirmed), `u32::MAX` if none.
    pub conn: u32,
    pending: u32,
    /// [`Conntrack`]'s insert count when the pending entry was made: if no
    /// insert happened since, none can clash with it.
    epoch: u32,
    hash: u64,
    frag: Option<FragKey>,
}

impl Track {
    /// A packet of existing entry `conn`.
    fn of_entry(conn: u32, state: CtState, dir: Direction, helper: Option<HelperKind>) -> Track {
        Track {
            state,
            reply: dir == Direction::Reply,
            reason: None,
            helper,
            must_drop: false,
            conn,
            pending: NONE,
            epoch: 0,
            hash: 0,
            frag: None,
        }
    }

    fn verdictless(state: CtState, reason: Option<DropReason>) -> Track {
        Track {
            state,
            reply: false,
            reason,
            helper: None,
            must_drop: false,
            conn: NONE,
            pending: NONE,
            epoch: 0,
            hash: 0,
            frag: None,
        }
    }
}

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

/// What [`Conntrack::track_plain`] made of a packet.
enum Plain {
    /// Tracked: a packet of this entry and direction, in this state.
    Done(u32, Direction, Option<HelperKind>, CtState),
    /// The tracker refused it (the entry's TCP state already took the
    /// segment): the general path's handling of the verdict follows.
    Refused(Refusal),
    /// Not the plain case, nothing changed: the general path takes it (with
    /// the flow hash if it was computed).
    General(Option<u64>),
    /// Likewise, with the flow hash and what looking it up found.
    Found(u64, Found),
}

/// A TCP verdict the plain path leaves to [`Conntrack::tcp_refused`]: the
/// entry, the packet's direction and helper, the verdict, the flow hash.
struct Refusal {
    idx: u32,
    dir: Direction,
    helper: Option<HelperKind>,
    verdict: TcpVerdict,
    hash: u64,
}

/// An entry and the direction a packet has in it; `None`: no entry.
type Found = Option<(u32, Direction)>;

/// The timeout (ns) an accepted TCP segment sets, `None` for an ignored one,
/// marking the entry assured if the tracker says so; `Err` with any other
/// verdict (for [`Conntrack::tcp_refused`]).
#[inline(always)]
fn tcp_timeout(verdict: TcpVerdict, st: &mut u8) -> Result<Option<u64>, TcpVerdict> {
    match verdict {
        TcpVerdict::Accept {
            timeout,
            set_assured,
        } => {
            if set_assured {
                *st |= status::ASSURED;
            }
            Ok(Some(timeout_ns(timeout)))
        }
        TcpVerdict::Ignore => Ok(None),
        other => Err(other),
    }
}

/// The state of a packet in direction `dir` of an entry with status `st`:
/// established once replied (or a reply), else related if expected, else new.
#[inline(always)]
fn packet_state(st: u8, dir: Direction) -> CtState {
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
fn entry_helper(e: &Entry) -> Option<HelperKind> {
    if e.status & status::EXPECTED != 0 {
        helper_of(e.master_helper)
    } else {
        helper_of(e.helper)
    }
}

// ---- the fragment table: verdicts of first fragments, followed by the rest ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct FragKey {
    src: [u64; 2],
    dst: [u64; 2],
    id: u32,
    proto: u8,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct FragSlot {
    key: FragKey,
    used: bool,
    deadline: u64,
    /// Outcome of the first fragment, replayed for the others.
    accepted: bool,
    state: u8,
    reply: bool,
    conn: u32,
}

/// Timer wheel geometry: 2^28 ns (~268 ms) ticks, 4096 buckets (~18 min a turn).
const TICK_SHIFT: u32 = 28;
const WHEEL_BITS: u32 = 12;
const WHEEL: usize = 1 << WHEEL_BITS;

fn tick_of(ns: u64) -> u32 {
    // Ticks wrap after ~36 years of uptime; truncation is intended.
    #[allow(clippy::cast_possible_truncation)]
    let t = (ns >> TICK_SHIFT) as u32;
    t
}

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
    /// Per entry, its timer wheel (or free list) links.
    links: Vec<Links>,
    /// Per entry, the upper bits of its addresses.
    v6hi: Vec<V6Hi>,
    index: Index,
    free: u32,
    /// Entries in use (confirmed or pending).
    count: u32,
    wheel: Vec<u32>,
    /// Next wheel tick to process.
    wheel_tick: u32,
    wheel_started: bool,
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

/// What happened to a connection (`conntrack -E`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Confirmed: entered the table.
    New,
    /// TCP state, seen-reply or assured changed.
    Update,
    /// Left the table (expired, closed, evicted, flushed).
    Destroy,
}

impl EventKind {
    /// The kernel's event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::New => "new",
            EventKind::Update => "update",
            EventKind::Destroy => "destroy",
        }
    }
}

/// One connection event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// The connection as it is after the event (before it, for destroy).
    pub conn: ConnInfo,
}

/// The event buffer: bounded, drained by the owner after each batch; events
/// beyond its capacity are counted, never blocking the packet path.
#[derive(Debug, Default)]
struct Events {
    on: bool,
    buf: Vec<Event>,
    lost: u64,
}

/// Events buffered between two drains at most.
pub const EVENT_BUFFER: usize = 4096;

fn timeout_ns(secs: u32) -> u64 {
    u64::from(secs) * SEC
}

impl Conntrack {
    /// A table with the given configuration, all memory allocated now.
    pub fn new(cfg: Config) -> Self {
        let cap = cfg.max_entries.max(1);
        let entries = crate::mem::huge_vec(cap as usize, Entry::default());
        let mut links = crate::mem::huge_vec(
            cap as usize,
            Links {
                next: NONE,
                prev: NONE,
                tag: 0,
            },
        );
        for (i, l) in links.iter_mut().enumerate() {
            // `i + 1 < cap <= u32::MAX`, so the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            if i + 1 < cap as usize {
                l.next = i as u32 + 1;
            }
        }
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
            links,
            v6hi,
            index: Index::new(slots),
            free: 0,
            count: 0,
            wheel: vec![NONE; WHEEL],
            wheel_tick: 0,
            wheel_started: false,
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
    /// segment through the state table (not [`tcp::packet`]'s shortcut for
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

    /// Starts or stops recording connection events.
    pub fn set_events(&mut self, on: bool) {
        self.events.on = on;
        if on {
            self.events.buf.reserve(EVENT_BUFFER);
        } else {
            self.events.buf = Vec::new();
        }
    }

    /// Moves the recorded events into `out` (appending); returns how many
    /// events were lost to a full buffer since the last call.
    pub fn drain_events(&mut self, out: &mut Vec<Event>) -> u64 {
        out.append(&mut self.events.buf);
        core::mem::take(&mut self.events.lost)
    }

    fn emit(&mut self, kind: EventKind, idx: u32) {
        if self.events.buf.len() >= EVENT_BUFFER {
            self.events.lost += 1;
            return;
        }
        let mut conn = info_of(
            &self.entries[idx as usize],
            &self.v6hi[idx as usize],
            self.now,
        );
        if kind == EventKind::Destroy {
            conn.expires_in = 0;
        }
        self.events.buf.push(Event { kind, conn });
    }

    /// What an update event reports on: status bits and TCP state.
    fn event_key(&self, idx: u32) -> (u8, u8) {
        let e = &self.entries[idx as usize];
        let tcp = match e.l4 {
            L4State::Tcp(c) => c.state as u8,
            L4State::Stream(_) => 0,
        };
        (e.status, tcp)
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
            + self.links.capacity() * core::mem::size_of::<Links>()
            + self.v6hi.capacity() * core::mem::size_of::<V6Hi>()
            + self.index.capacity() * 8
            + self.wheel.capacity() * 4;
        total / self.entries.len().max(1)
    }

    // ---------------------------------------------------------------- index

    #[inline(always)]
    fn hash(&self, t: &Tuple) -> u64 {
        t.flow_hash_keyed(&self.hash_keys)
    }

    /// Finds the entry holding `t` in either direction. Compares the stored
    /// original tuple field by field with the packet's tuple and with its
    /// inverse, without building either as a new value.
    #[inline(always)]
    fn lookup(&self, t: &Tuple, hash: u64) -> Option<(u32, Direction)> {
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
    fn orig(&self, idx: u32) -> Tuple {
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
    fn store_orig(&mut self, idx: u32, t: &Tuple) -> Stored {
        let (stored, hi) = Stored::from(t);
        if stored.v6 {
            self.v6hi[idx as usize] = hi;
        }
        stored
    }

    /// Sets entry `idx`'s original tuple.
    fn set_orig(&mut self, idx: u32, t: &Tuple) {
        self.entries[idx as usize].orig = self.store_orig(idx, t);
    }

    /// Removes entry `idx` from the index.
    fn index_remove(&mut self, idx: u32) {
        let tag = self.links[idx as usize].tag;
        self.index.remove(u64::from(tag) << 32, idx);
    }

    /// Puts confirmed entry `idx` in the index under `hash`.
    fn index_insert(&mut self, idx: u32, hash: u64) {
        self.index.insert(hash, idx);
        // The tag is the upper half.
        #[allow(clippy::cast_possible_truncation)]
        let tag = (hash >> 32) as u32;
        self.links[idx as usize].tag = tag;
    }

    /// The flow hash of a packet's tuple, for [`Self::prefetch`] and [`Self::track_hashed`].
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

    // ---------------------------------------------------------------- timer wheel

    fn wheel_link(&mut self, idx: u32, tick: u32) {
        let b = tick as usize & (WHEEL - 1);
        let head = self.wheel[b];
        self.entries[idx as usize].ttick = tick;
        let l = &mut self.links[idx as usize];
        l.next = head;
        l.prev = NONE;
        if head != NONE {
            self.links[head as usize].prev = idx;
        }
        self.wheel[b] = idx;
    }

    fn wheel_unlink(&mut self, idx: u32) {
        let Links { next, prev, .. } = self.links[idx as usize];
        let tick = self.entries[idx as usize].ttick;
        if prev == NONE {
            self.wheel[tick as usize & (WHEEL - 1)] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NONE {
            self.links[next as usize].prev = prev;
        }
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
        let t = self.clamp_tick(deadline);
        self.wheel_unlink(idx);
        self.wheel_link(idx, t);
    }

    /// Tick to link a deadline at: never behind the wheel's cursor.
    fn clamp_tick(&self, deadline: u64) -> u32 {
        let t = tick_of(deadline);
        if self.wheel_started && t.wrapping_sub(self.wheel_tick) > u32::MAX / 2 {
            self.wheel_tick
        } else {
            t
        }
    }

    /// Reaps entries whose deadline has passed, one wheel tick (~268 ms) at a
    /// time. Work is bounded by the ticks elapsed (at most one turn of the wheel)
    /// plus the entries linked in those buckets; it never scans the table. Lookups
    /// check deadlines exactly, so reaping late never changes a verdict.
    pub fn expire(&mut self, now: u64) -> usize {
        self.now = now;
        let now_tick = tick_of(now);
        if !self.wheel_started {
            self.wheel_started = true;
            self.wheel_tick = now_tick;
            return 0;
        }
        let mut expired = 0;
        let mut steps = 0usize;
        while self.wheel_tick != now_tick
            && now_tick.wrapping_sub(self.wheel_tick) <= u32::MAX / 2
            && steps < WHEEL
        {
            let b = self.wheel_tick as usize & (WHEEL - 1);
            let mut cur = core::mem::replace(&mut self.wheel[b], NONE);
            while cur != NONE {
                let next = self.links[cur as usize].next;
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
                    // deadline > now, so its tick is at or after `now_tick`, which is
                    // after the bucket being processed.
                    self.wheel_link(cur, tick_of(deadline));
                }
                cur = next;
            }
            self.wheel_tick = self.wheel_tick.wrapping_add(1);
            steps += 1;
        }
        if steps == WHEEL {
            // A jump of a turn or more: every bucket was visited once.
            self.wheel_tick = now_tick;
        }
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

    // ---------------------------------------------------------------- allocation

    fn alloc(&mut self, hash: u64, now: u64) -> Result<u32, DropReason> {
        if self.free == NONE && !self.early_drop(hash, now) {
            self.stats.drop += 1;
            return Err(DropReason::TableFull);
        }
        let idx = self.free;
        self.free = self.links[idx as usize].next;
        self.links[idx as usize] = Links {
            next: NONE,
            prev: NONE,
            tag: 0,
        };
        // The caller writes the whole entry.
        self.entries[idx as usize].status = status::USED;
        self.ext[idx as usize] = Ext::NONE;
        self.count += 1;
        Ok(idx)
    }

    fn release(&mut self, idx: u32) {
        self.entries[idx as usize].status = 0;
        self.links[idx as usize] = Links {
            next: self.free,
            prev: NONE,
            tag: 0,
        };
        self.free = idx;
        self.count -= 1;
    }

    /// Removes a confirmed entry: index, wheel, slab.
    fn destroy(&mut self, idx: u32) {
        self.wheel_unlink(idx);
        self.destroy_unlinked(idx);
    }

    fn destroy_unlinked(&mut self, idx: u32) {
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

    // ---------------------------------------------------------------- per packet

    /// Tracks one parsed packet: finds or creates (unconfirmed) its entry and runs
    /// the L4 tracker. Call [`Conntrack::confirm`] if policy accepts the packet,
    /// [`Conntrack::abort`] otherwise.
    #[inline]
    pub fn track(&mut self, pkt: &Packet<'_>, now: u64) -> Track {
        self.track_any(pkt, None, now)
    }

    /// [`Self::track`] with the packet tuple's [`Self::flow_hash`] already computed
    /// (by a batch that prefetched it).
    #[inline]
    pub fn track_hashed(&mut self, pkt: &Packet<'_>, hash: u64, now: u64) -> Track {
        self.track_any(pkt, Some(hash), now)
    }

    #[inline(always)]
    fn track_any(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Track {
        match self.track_plain(pkt, hash, now) {
            Plain::Done(idx, dir, helper, state) => Track::of_entry(idx, state, dir, helper),
            Plain::Refused(r) => self.plain_refused(pkt, now, r),
            Plain::General(hash) => self.track_inner(pkt, hash, None, now),
            Plain::Found(hash, found) => self.track_inner(pkt, Some(hash), Some(found), now),
        }
    }

    /// [`Plain::Refused`]: what the general path makes of the verdict.
    #[cold]
    #[inline(never)]
    fn plain_refused(&mut self, pkt: &Packet<'_>, now: u64, r: Refusal) -> Track {
        let Refusal {
            idx,
            dir,
            helper,
            verdict,
            hash,
        } = r;
        let track = Track::of_entry(idx, CtState::Established, dir, helper);
        let t = match self.tcp_refused(idx, dir, pkt, now, verdict, track) {
            Some(t) => t,
            None => {
                // As the general path restarts (never for an ACK in
                // ESTABLISHED, which the state table keeps there).
                self.destroy(idx);
                self.stats.search_restart += 1;
                self.new_conn(pkt, hash, now)
            }
        };
        self.invalid_counted(t)
    }

    /// `t`, counted in `invalid` if it is.
    #[inline(always)]
    fn invalid_counted(&mut self, t: Track) -> Track {
        if t.state == CtState::Invalid {
            self.count_invalid();
        }
        t
    }

    #[inline(always)]
    fn track_inner(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        if pkt.tuple.proto == ipproto::GRE && !self.keymap.is_empty() {
            if let Some(src_key) = self.gre_src_key(&pkt.tuple) {
                // Enhanced GRE carries only the receiver's key; the keymap knows
                // the sender's, so both directions make a full tuple.
                let mut p = *pkt;
                p.tuple.src_port = src_key;
                return self.track_inner_keyed(&p, None, None, now);
            }
        }
        self.track_inner_keyed(pkt, hash, found, now)
    }

    /// `found`: the lookup of the packet's tuple under `hash`, if already made.
    fn track_inner_keyed(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        if let Some(f) = pkt.frag {
            if f.offset != 0 {
                return self.follow_fragment(pkt, f, now);
            }
        }
        let mut t = match pkt.l4 {
            L4::Icmp(Icmp::Error { inner }) => return self.icmp_error(pkt, &inner, now),
            L4::Icmp(Icmp::Untracked) => return Track::verdictless(CtState::Untracked, None),
            _ => self.track_flow(pkt, hash, found, now),
        };
        if let Some(f) = pkt.frag {
            if f.more {
                t.frag = Some(frag_key(pkt, f));
            }
        }
        self.invalid_counted(t)
    }

    #[inline(always)]
    fn track_flow(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        let t = &pkt.tuple;
        let hash = hash.unwrap_or_else(|| self.hash(t));
        let hit = match found {
            Some(hit) => hit,
            None => self.lookup(t, hash),
        };
        match hit {
            None => self.new_conn(pkt, hash, now),
            Some((idx, dir)) => self.track_found(pkt, idx, dir, hash, now),
        }
    }

    /// A packet of entry `idx` (general path). At most one restart: a dead
    /// TCP entry replaced by a new connection. Apart from [`Self::track_flow`]
    /// so that a new connection's path does not carry this one's registers.
    #[inline(never)]
    fn track_found(
        &mut self,
        pkt: &Packet<'_>,
        idx: u32,
        dir: Direction,
        hash: u64,
        now: u64,
    ) -> Track {
        if let Some(track) = self.track_found_once(pkt, idx, dir, hash, now) {
            return track;
        }
        match self.lookup(&pkt.tuple, hash) {
            None => self.new_conn(pkt, hash, now),
            Some((idx, dir)) => {
                self.track_found_once(pkt, idx, dir, hash, now)
                    .unwrap_or(Track::verdictless(
                        CtState::Invalid,
                        Some(DropReason::TcpInvalidState),
                    ))
            }
        }
    }

    /// [`Self::track_found`] once: `None` if the entry was dead and is now
    /// destroyed (search again).
    #[inline(always)]
    fn track_found_once(
        &mut self,
        pkt: &Packet<'_>,
        idx: u32,
        dir: Direction,
        hash: u64,
        now: u64,
    ) -> Option<Track> {
        if self.entries[idx as usize].status & status::OFFLOADED != 0 {
            // The fast path had it: take its state back before this
            // packet (which it did not want) is tracked. Only a plain
            // packet (a TCP segment with only ACK among SYN, FIN, RST,
            // UDP, or an ICMP echo: the entry's own tuple makes this
            // query one) may be one the fast path let the slow path keep.
            let plain = match pkt.l4 {
                L4::Tcp(seg) => tcp::Index::of(seg.flags) == tcp::Index::Ack,
                L4::Udp { .. } | L4::Icmp(Icmp::Query) => true,
                _ => false,
            };
            self.offload_take_back(idx, plain.then_some(dir));
        }
        if self.entries[idx as usize].deadline <= now {
            // Expired but not yet reaped: gone, as the kernel sees it.
            self.destroy(idx);
            self.stats.expired += 1;
            return Some(self.new_conn(pkt, hash, now));
        }
        self.stats.found += 1;
        let before = if self.events.on {
            Some(self.event_key(idx))
        } else {
            None
        };
        match self.existing(idx, dir, pkt, now) {
            Some(track) => {
                if let Some(b) = before {
                    let live = self.entries[idx as usize].status & status::CONFIRMED != 0;
                    if live && self.event_key(idx) != b {
                        self.now = now;
                        self.emit(EventKind::Update, idx);
                    }
                }
                Some(track)
            }
            None => {
                self.destroy(idx);
                self.stats.search_restart += 1;
                None
            }
        }
    }

    /// A packet of an existing entry. `None` means "restart": the caller destroys
    /// the entry and processes the packet as new.
    #[inline(always)]
    fn existing(&mut self, idx: u32, dir: Direction, pkt: &Packet<'_>, now: u64) -> Option<Track> {
        let (st, master_helper) = {
            let e = &self.entries[idx as usize];
            (e.status, e.master_helper)
        };
        let seen_reply = st & status::SEEN_REPLY != 0;
        let state = packet_state(st, dir);
        let helper = entry_helper(&self.entries[idx as usize]);
        let mut track = Track::of_entry(idx, state, dir, helper);
        let timeout = match pkt.l4 {
            L4::Tcp(seg) => {
                let ctx = TcpCtx {
                    seen_reply,
                    assured: st & status::ASSURED != 0,
                };
                let cfg = &self.cfg.tcp;
                let e = &mut self.entries[idx as usize];
                let L4State::Tcp(conn) = &mut e.l4 else {
                    // A TCP tuple always has TCP state; anything else is corrupt.
                    track.state = CtState::Invalid;
                    track.reason = Some(DropReason::TcpInvalidState);
                    return Some(track);
                };
                #[cfg(any(test, feature = "differential"))]
                let verdict = if self.general_only {
                    tcp::packet_by_table_only(conn, dir, &seg, ctx, cfg)
                } else {
                    tcp::packet(conn, dir, &seg, ctx, cfg)
                };
                #[cfg(not(any(test, feature = "differential")))]
                let verdict = tcp::packet(conn, dir, &seg, ctx, cfg);
                match tcp_timeout(verdict, &mut e.status) {
                    Ok(t) => t,
                    Err(other) => return self.tcp_refused(idx, dir, pkt, now, other, track),
                }
            }
            L4::Udp { .. } => Some(self.stream_timeout(
                idx,
                seen_reply,
                now,
                self.cfg.timeouts.udp,
                self.cfg.timeouts.udp_stream,
            )),
            L4::Other { .. } if pkt.tuple.proto == ipproto::GRE => {
                // A PPTP call's GRE lives longer (the kernel's pptp_expectfn).
                let (unreplied, stream) = if st & status::EXPECTED != 0
                    && helper_of(master_helper) == Some(HelperKind::Pptp)
                {
                    (help::PPTP_GRE_TIMEOUT, help::PPTP_GRE_STREAM_TIMEOUT)
                } else {
                    (self.cfg.timeouts.gre, self.cfg.timeouts.gre_stream)
                };
                Some(self.stream_timeout(idx, seen_reply, now, unreplied, stream))
            }
            L4::Icmp(_) => Some(timeout_ns(self.icmp_timeout(pkt.tuple.family))),
            L4::Other { .. } | L4::Fragment => Some(timeout_ns(self.cfg.timeouts.generic)),
        };
        self.account_packet(idx, dir, pkt, now, timeout);
        Some(track)
    }

    /// The end of an accepted packet: its timeout (if it sets one), its
    /// counters, SEEN_REPLY, and the fast path's hold on the connection.
    #[inline(always)]
    fn account_packet(
        &mut self,
        idx: u32,
        dir: Direction,
        pkt: &Packet<'_>,
        now: u64,
        timeout: Option<u64>,
    ) {
        // The deadline, the counters and the status in one borrow of the
        // entry; the wheel (separate fields) is relinked after, if need be.
        let e = &mut self.entries[idx as usize];
        let mut relink = None;
        if let Some(tmo) = timeout {
            let deadline = now + tmo;
            e.deadline = deadline;
            if e.before_its_bucket(deadline) {
                relink = Some(deadline);
            }
        }
        e.packets[dir.index()] += 1;
        e.bytes[dir.index()] += u64::from(pkt.ip_len);
        if dir == Direction::Reply {
            e.status |= status::SEEN_REPLY;
        }
        let offloaded = e.status & status::OFFLOADED != 0;
        if let Some(deadline) = relink {
            self.relink(idx, deadline);
        }
        if offloaded {
            // Still offloaded (pending, or a packet the fast path had
            // already passed): if the connection left the state the fast
            // path handles (a FIN), it goes back to the slow path.
            let fine = match &self.entries[idx as usize].l4 {
                L4State::Tcp(c) => c.offloadable(&self.cfg.tcp),
                L4State::Stream(_) => true,
            };
            if !fine {
                self.offload_release(idx);
            }
        }
    }

    /// A TCP segment the tracker did not accept (nor ignore): invalid,
    /// invalid with a shorter timeout, the end of an unreplied connection, or
    /// a restart (`None`: the caller destroys the entry and starts over).
    #[inline(never)]
    fn tcp_refused(
        &mut self,
        idx: u32,
        dir: Direction,
        pkt: &Packet<'_>,
        now: u64,
        verdict: TcpVerdict,
        mut track: Track,
    ) -> Option<Track> {
        let cfg = &self.cfg.tcp;
        let e = &mut self.entries[idx as usize];
        match verdict {
            TcpVerdict::Accept { .. } | TcpVerdict::Ignore => {}
            TcpVerdict::InvalidShrink(r) => {
                let unack = timeout_ns(cfg.timeouts.unack);
                let left = e.deadline.saturating_sub(now);
                if left >= 120 * SEC && left > unack {
                    e.deadline = now + unack;
                    // Moving a deadline earlier must relink the wheel.
                    let d = e.deadline;
                    self.set_deadline(idx, d);
                }
                track.state = CtState::Invalid;
                track.reason = Some(r);
            }
            TcpVerdict::AcceptKill => {
                self.account(idx, dir, pkt);
                self.destroy(idx);
            }
            TcpVerdict::Invalid(r) => {
                track.state = CtState::Invalid;
                track.reason = Some(r);
            }
            TcpVerdict::Restart => return None,
        }
        Some(track)
    }

    /// The packet path's common cases in one pass, without the general
    /// path's branches: with events off, a packet (no fragment) of a
    /// connection that is neither offloaded nor expired, and either a TCP
    /// segment with ACK and none of SYN, FIN, RST in ESTABLISHED (replied), or
    /// UDP.
    /// [`Plain::General`] or [`Plain::Found`], having changed nothing, for
    /// anything else. Same answers and same state as the general path
    /// (`plain_tcp_path_is_the_general_path`, `plain_udp_path_is_the_general_path`).
    #[inline(always)]
    fn track_plain(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Plain {
        #[cfg(any(test, feature = "differential"))]
        if self.general_only {
            return Plain::General(hash);
        }
        match &pkt.l4 {
            L4::Tcp(seg) if tcp::Index::of(seg.flags) == tcp::Index::Ack => {
                self.plain_tcp(pkt, seg, hash, now)
            }
            L4::Udp { .. } => self.plain_udp(pkt, hash, now),
            _ => Plain::General(hash),
        }
    }

    #[inline(always)]
    fn plain_tcp(
        &mut self,
        pkt: &Packet<'_>,
        seg: &TcpSeg<'_>,
        hash: Option<u64>,
        now: u64,
    ) -> Plain {
        let (idx, dir, st, hash) = match self.plain_entry(pkt, ipproto::TCP, hash, now) {
            Ok(hit) => hit,
            Err(general) => return general,
        };
        let e = &mut self.entries[idx as usize];
        let helper = entry_helper(e);
        let L4State::Tcp(conn) = &mut e.l4 else {
            return Plain::Found(hash, Some((idx, dir)));
        };
        if conn.state != tcp::TcpState::Established {
            return Plain::Found(hash, Some((idx, dir)));
        }
        let ctx = TcpCtx {
            seen_reply: true,
            assured: st & status::ASSURED != 0,
        };
        let verdict = tcp::packet(conn, dir, seg, ctx, &self.cfg.tcp);
        self.stats.found += 1;
        let timeout = match tcp_timeout(verdict, &mut e.status) {
            Ok(t) => t,
            Err(verdict) => {
                return Plain::Refused(Refusal {
                    idx,
                    dir,
                    helper,
                    verdict,
                    hash,
                })
            }
        };
        self.account_packet(idx, dir, pkt, now, timeout);
        self.plain_done(idx, dir, helper, CtState::Established)
    }

    #[inline(always)]
    fn plain_udp(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Plain {
        let (idx, dir, st, _) = match self.plain_entry(pkt, ipproto::UDP, hash, now) {
            Ok(hit) => hit,
            Err(general) => return general,
        };
        let helper = entry_helper(&self.entries[idx as usize]);
        let seen_reply = st & status::SEEN_REPLY != 0;
        let state = packet_state(st, dir);
        self.stats.found += 1;
        let (unreplied, stream) = (self.cfg.timeouts.udp, self.cfg.timeouts.udp_stream);
        let timeout = self.stream_timeout(idx, seen_reply, now, unreplied, stream);
        self.account_packet(idx, dir, pkt, now, Some(timeout));
        self.plain_done(idx, dir, helper, state)
    }

    #[inline(always)]
    fn plain_done(
        &mut self,
        idx: u32,
        dir: Direction,
        helper: Option<HelperKind>,
        state: CtState,
    ) -> Plain {
        #[cfg(any(test, feature = "differential"))]
        {
            self.plain_hits += 1;
        }
        Plain::Done(idx, dir, helper, state)
    }

    /// The plain path's entry for a packet of protocol `proto`: its
    /// index, direction and status, and the flow hash; `Err` with what the
    /// general path needs if it is not a plain case.
    #[inline(always)]
    fn plain_entry(
        &self,
        pkt: &Packet<'_>,
        proto: u8,
        hash: Option<u64>,
        now: u64,
    ) -> Result<(u32, Direction, u8, u64), Plain> {
        let t = &pkt.tuple;
        if t.proto != proto || pkt.frag.is_some() || self.events.on {
            return Err(Plain::General(hash));
        }
        let hash = hash.unwrap_or_else(|| self.hash(t));
        let hit = if t.family == Family::V4 {
            self.lookup4(t, proto, hash)
        } else {
            self.lookup(t, hash)
        };
        let Some((idx, dir)) = hit else {
            return Err(Plain::Found(hash, None));
        };
        let e = &self.entries[idx as usize];
        let st = e.status;
        // TCP: replied (ESTABLISHED is checked by the caller); UDP: any.
        let need = if proto == ipproto::TCP {
            status::SEEN_REPLY
        } else {
            0
        };
        let plain = st & (status::OFFLOADED | need) == need
            && e.deadline > now
            && matches!(
                (proto, &e.l4),
                (ipproto::TCP, L4State::Tcp(_)) | (ipproto::UDP, L4State::Stream(_))
            );
        if !plain {
            return Err(Plain::Found(hash, Some((idx, dir))));
        }
        Ok((idx, dir, st, hash))
    }

    /// [`Self::lookup`] of an IPv4 TCP or UDP tuple.
    #[inline(always)]
    fn lookup4(&self, t: &Tuple, proto: u8, hash: u64) -> Option<(u32, Direction)> {
        // Truncations keep the IPv4 addresses (the low 32 bits).
        #[allow(clippy::cast_possible_truncation)]
        let (src, dst) = (t.src.0 as u32, t.dst.0 as u32);
        for idx in self.index.candidates(hash) {
            let Some(e) = self.entries.get(idx as usize) else {
                continue;
            };
            let e = &e.orig;
            if e.proto != proto || e.v6 {
                continue;
            }
            if e.src == src && e.dst == dst && e.src_port == t.src_port && e.dst_port == t.dst_port
            {
                return Some((idx, Direction::Original));
            }
            if e.src == dst && e.dst == src && e.src_port == t.dst_port && e.dst_port == t.src_port
            {
                return Some((idx, Direction::Reply));
            }
        }
        None
    }

    /// UDP and GRE: unreplied timeout until a reply, then the stream timeout once
    /// the flow has lived two seconds, which also makes it assured (kernel
    /// `udp_packet`, `gre_packet`).
    fn stream_timeout(
        &mut self,
        idx: u32,
        seen_reply: bool,
        now: u64,
        unreplied: u32,
        stream: u32,
    ) -> u64 {
        let e = &mut self.entries[idx as usize];
        if !seen_reply {
            return timeout_ns(unreplied);
        }
        let stream_ts = match e.l4 {
            L4State::Stream(ts) => ts.get(),
            L4State::Tcp(_) => 0,
        };
        if now > stream_ts {
            e.status |= status::ASSURED;
            timeout_ns(stream)
        } else {
            timeout_ns(unreplied)
        }
    }

    fn icmp_timeout(&self, f: Family) -> u32 {
        match f {
            Family::V4 => self.cfg.timeouts.icmp,
            Family::V6 => self.cfg.timeouts.icmpv6,
        }
    }

    fn account(&mut self, idx: u32, dir: Direction, pkt: &Packet<'_>) {
        let e = &mut self.entries[idx as usize];
        e.packets[dir.index()] += 1;
        e.bytes[dir.index()] += u64::from(pkt.ip_len);
    }

    /// First packet of a flow: may it open an entry, and with which timeout?
    fn new_conn(&mut self, pkt: &Packet<'_>, hash: u64, now: u64) -> Track {
        let t = &pkt.tuple;
        // UDP, GRE, ICMP and the rest: a replied flow counts as a stream
        // after two seconds.
        let stream = L4State::Stream(Ns::new(now + 2 * SEC));
        let (l4, timeout) = match pkt.l4 {
            L4::Tcp(seg) => match tcp::new_conn(&seg, &self.cfg.tcp) {
                Ok((conn, tmo)) => (L4State::Tcp(conn), tmo),
                Err(r) => return Track::verdictless(CtState::Invalid, Some(r)),
            },
            L4::Udp { .. } => (stream, self.cfg.timeouts.udp),
            L4::Icmp(Icmp::Query) => {
                if !icmp_type_opens(t.family, t.icmp_type()) {
                    return Track::verdictless(CtState::Invalid, Some(DropReason::IcmpBadType));
                }
                (stream, self.icmp_timeout(t.family))
            }
            L4::Icmp(_) => {
                return Track::verdictless(CtState::Invalid, Some(DropReason::IcmpBadType));
            }
            L4::Other { .. } if t.proto == ipproto::GRE => (stream, self.cfg.timeouts.gre),
            L4::Other { .. } | L4::Fragment => {
                // A TCP first fragment too short for its header still makes
                // a TCP entry (its state table starts from NONE).
                let l4 = if t.proto == ipproto::TCP {
                    L4State::Tcp(TcpConn::default())
                } else {
                    stream
                };
                (l4, self.cfg.timeouts.generic)
            }
        };
        if let Some(sc) = &self.sources {
            if sc.get(t.family, t.src) >= self.cfg.max_per_source {
                self.stats.source_limit += 1;
                let mut tr = Track::verdictless(CtState::New, Some(DropReason::SourceLimit));
                tr.must_drop = true;
                return tr;
            }
        }
        let idx = match self.alloc(hash, now) {
            Ok(i) => i,
            Err(r) => {
                let mut tr = Track::verdictless(CtState::New, Some(r));
                tr.must_drop = true;
                return tr;
            }
        };
        // "Welcome, Mr. Bond": a matching expectation makes the connection
        // related. As in the kernel, the expectation is used up here, whatever
        // policy then decides.
        let mut state = CtState::New;
        let mut helper = None;
        let mut child_helper = 0;
        let mut master_helper = 0;
        if !self.expects.is_empty() {
            if let Some(slot) = self.expects.find(t, now) {
                let (master, child, permanent) = self.expects.get(slot);
                master_helper = if master == expect::MIRROR {
                    self.expects.helper_code(slot)
                } else {
                    self.entries[master as usize].helper
                };
                if !permanent {
                    self.unlink_expectation(slot, true);
                }
                self.expects.stats.expect_new += 1;
                helper = helper_of(master_helper);
                child_helper = helper_code(child);
                state = CtState::Related;
                if helper == Some(HelperKind::Pptp) {
                    self.pptp_expected(t, now);
                }
            }
        }
        let orig = self.store_orig(idx, t);
        let e = &mut self.entries[idx as usize];
        *e = Entry {
            orig,
            status: status::USED,
            helper: 0,
            deadline: now + timeout_ns(timeout),
            l4,
            packets: [1, 0],
            bytes: [u64::from(pkt.ip_len), 0],
            ttick: 0,
            master_helper: 0,
        };
        if state == CtState::Related {
            e.status |= status::EXPECTED;
            e.master_helper = master_helper;
            e.helper = child_helper;
            if t.proto == ipproto::GRE && helper == Some(HelperKind::Pptp) {
                e.deadline = now + timeout_ns(help::PPTP_GRE_TIMEOUT);
            }
        }
        Track {
            state,
            reply: false,
            reason: None,
            helper,
            must_drop: false,
            conn: idx,
            pending: idx,
            epoch: self.inserts,
            hash,
            frag: None,
        }
    }

    /// ICMP error: `related` to the entry of the packet it quotes, else invalid
    /// (kernel `nf_conntrack_inet_error`). The quoted packet travelled towards the
    /// error's sender, so the outer destination must be the quoted source.
    fn icmp_error(&mut self, pkt: &Packet<'_>, inner: &Tuple, now: u64) -> Track {
        let invalid = |s: &mut Self, r| {
            s.stats.invalid += 1;
            Track::verdictless(CtState::Invalid, Some(r))
        };
        if inner.family != pkt.tuple.family {
            return invalid(self, DropReason::IcmpErrorBadInner);
        }
        let hash = self.hash(inner);
        let Some((idx, inner_dir)) = self.lookup(inner, hash) else {
            return invalid(self, DropReason::IcmpErrorNoFlow);
        };
        if self.entries[idx as usize].deadline <= now {
            return invalid(self, DropReason::IcmpErrorNoFlow);
        }
        if pkt.tuple.dst != inner.src {
            return invalid(self, DropReason::IcmpErrorBadInner);
        }
        self.stats.found += 1;
        let e = &self.entries[idx as usize];
        let helper = helper_of(e.helper);
        // The error travels opposite to the packet it quotes.
        let dir = inner_dir.flip();
        self.account(idx, dir, pkt);
        Track::of_entry(idx, CtState::Related, dir, helper)
    }

    /// A non-first fragment gets its first fragment's verdict and state.
    fn follow_fragment(&mut self, pkt: &Packet<'_>, f: Frag, now: u64) -> Track {
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

    fn remember_fragment(&mut self, track: &Track, accepted: bool, conn: u32, now: u64) {
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

    /// Policy accepted the packet: a pending entry enters the table (with the
    /// helper policy assigned), and a first fragment's verdict is remembered.
    pub fn confirm(&mut self, track: &Track, helper: Option<HelperKind>, now: u64) {
        let mut conn = NONE;
        if track.pending != NONE {
            let idx = track.pending;
            // Another packet cannot have inserted the tuple meanwhile (one packet at
            // a time per table), but keep the kernel's check: a clash is counted.
            // Only an insert since the packet was tracked can clash.
            if self.inserts != track.epoch && self.lookup(&self.orig(idx), track.hash).is_some() {
                self.stats.insert_failed += 1;
                self.release(idx);
            } else {
                self.index_insert(idx, track.hash);
                self.inserts = self.inserts.wrapping_add(1);
                let e = &mut self.entries[idx as usize];
                e.status |= status::CONFIRMED;
                if helper.is_some() {
                    e.helper = helper_code(helper);
                }
                let deadline = e.deadline;
                let tick = self.clamp_tick(deadline);
                self.wheel_link(idx, tick);
                self.stats.new += 1;
                if self.sources.is_some() {
                    let t = self.orig(idx);
                    if let Some(sc) = &mut self.sources {
                        sc.inc(t.family, t.src);
                    }
                }
                self.attach_helper(idx);
                if self.events.on {
                    self.now = now;
                    self.emit(EventKind::New, idx);
                }
                conn = idx;
            }
        }
        self.remember_fragment(track, true, conn, now);
    }

    /// Policy dropped the packet: a pending entry is freed, leaving no state.
    pub fn abort(&mut self, track: &Track, now: u64) {
        if track.pending != NONE {
            self.release(track.pending);
        }
        self.remember_fragment(track, false, NONE, now);
    }

    /// Removes every connection.
    pub fn flush(&mut self) {
        for b in 0..WHEEL {
            let mut cur = core::mem::replace(&mut self.wheel[b], NONE);
            while cur != NONE {
                let next = self.links[cur as usize].next;
                self.destroy_unlinked(cur);
                cur = next;
            }
        }
    }

    /// Adds an expectation on behalf of connection `conn` (a [`Track::conn`] of an
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

    /// Slots a lookup of `t` reads in the index (see [`Index::probe_len`]).
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

    /// Events lost to a full buffer and not yet reported by
    /// [`Self::drain_events`].
    pub fn events_pending_lost(&self) -> u64 {
        self.events.lost
    }
}

fn info_of(e: &Entry, hi: &V6Hi, now: u64) -> ConnInfo {
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

/// Cache prefetch hint; a no-op where the target has none.
#[inline(always)]
fn prefetch<T>(r: &T) {
    prefetch_addr(core::ptr::from_ref(r).cast::<u8>());
}

#[inline(always)]
fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it never faults (not even on an invalid
    // address) and neither reads nor writes memory as the program can observe.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A 128-bit address as two words (no 16-byte alignment in a key).
fn halves(a: Addr) -> [u64; 2] {
    // Truncations are the point: the halves of a 128-bit address.
    #[allow(clippy::cast_possible_truncation)]
    [(a.0 >> 64) as u64, a.0 as u64]
}

fn frag_key(pkt: &Packet<'_>, f: Frag) -> FragKey {
    FragKey {
        src: halves(pkt.tuple.src),
        dst: halves(pkt.tuple.dst),
        id: f.id,
        proto: pkt.tuple.proto,
        v6: pkt.tuple.family == Family::V6,
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
