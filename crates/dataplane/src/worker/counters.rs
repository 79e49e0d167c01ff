//! The worker's counters: what it publishes for the metrics exporter and
//! `ct stats` (relaxed atomics, one writer, any reader), and the names they
//! are published under.

use std::sync::atomic::{AtomicU64, Ordering};

use conntrack::{DropReason, HelperKind, Pipeline};

use crate::xsk::RingStats;

/// A fixed-bucket histogram written by one thread, read by any.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive) of the buckets; the last is `u64::MAX` (+Inf).
    pub bounds: &'static [u64],
    /// Observations per bucket (not cumulative).
    pub buckets: Box<[AtomicU64]>,
    /// Sum of the observed values.
    pub sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }
}

/// Bounds of the batch-size histogram (frames).
pub const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, u64::MAX];
/// Bounds of the batch-time histogram (nanoseconds).
pub const BATCH_NS_BOUNDS: &[u64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    5_000_000,
    u64::MAX,
];

/// Names of [`CoreCounters::stats`], the kernel's `conntrack -S` names.
pub const STAT_NAMES: [&str; 10] = [
    "found",
    "new",
    "invalid",
    "insert_failed",
    "drop",
    "early_drop",
    "search_restart",
    "expired",
    "frag_followed",
    "source_limit",
];

/// Names of [`CoreCounters::expect`].
pub const EXPECT_NAMES: [&str; 5] = [
    "expect_new",
    "expect_create",
    "expect_delete",
    "expect_refused",
    "expect_evicted",
];

const HELPERS: usize = HelperKind::COUNT;

/// The conntrack core's counters as last published by the worker.
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Entries in the table.
    pub entries: AtomicU64,
    /// The table's capacity.
    pub max_entries: AtomicU64,
    /// In [`STAT_NAMES`] order.
    pub stats: [AtomicU64; 10],
    /// In [`EXPECT_NAMES`] order.
    pub expect: [AtomicU64; 5],
    /// Live expectations per helper (`HelperKind as usize`).
    pub expect_live: [AtomicU64; HELPERS],
    /// Messages each helper parsed.
    pub helper_packets: [AtomicU64; HELPERS],
    /// Malformed helper messages.
    pub helper_parse_errors: [AtomicU64; HELPERS],
    /// Expectations each helper created.
    pub helper_expectations: [AtomicU64; HELPERS],
    /// Announcements refused (bounce, family mismatch).
    pub helper_refused: [AtomicU64; HELPERS],
}

/// Counters a worker writes and anyone may read (relaxed atomics: no locks on
/// the packet path).
#[derive(Debug)]
pub struct Counters {
    /// Frames received, per side (inside, outside).
    pub rx: [AtomicU64; 2],
    /// Bytes received (whole frames), per side.
    pub rx_bytes: [AtomicU64; 2],
    /// Frames forwarded, per side they arrived on.
    pub forwarded: [AtomicU64; 2],
    /// Frames dropped by policy or conntrack, per side they arrived on.
    pub dropped: [AtomicU64; 2],
    /// Drops per [`DropReason::index`].
    pub drop_reasons: Box<[AtomicU64]>,
    /// Frames that could not be queued for transmission (no free TX frame).
    pub tx_full: AtomicU64,
    /// Frames handed to the worker that owns their connection.
    pub handoffs: AtomicU64,
    /// Frames other workers handed to this one.
    pub handoffs_in: AtomicU64,
    /// Frames that could not be handed over (queue full, frame too large).
    pub handoff_dropped: AtomicU64,
    /// Frames waiting in this worker's handoff queue (last published).
    pub handoff_depth: AtomicU64,
    /// UMEM frames free in the worker's pool (neither in a fill, RX, TX or
    /// completion ring): near zero means the rings are starved.
    pub umem_free: AtomicU64,
    /// Expectation messages sent to / received from other workers.
    pub expect_msgs: [AtomicU64; 2],
    /// Expectation messages lost to a full queue.
    pub expect_msgs_dropped: AtomicU64,
    /// Frames per received batch.
    pub batch_size: Histogram,
    /// Time to process one batch, nanoseconds.
    pub batch_ns: Histogram,
    /// Control jobs run.
    pub jobs: AtomicU64,
    /// Connection events lost (subscriber too slow or buffer full).
    pub events_dropped: AtomicU64,
    /// The core's counters, republished a few times a second.
    pub core: CoreCounters,
    /// AF_XDP ring statistics per side, republished with the core's.
    pub rings: [[AtomicU64; 6]; 2],
    /// The fast path's counters for this worker's connections (republished).
    pub offload: crate::offload::OffloadCounters,
    /// Packets of installed flows the XDP program gave the slow path, per
    /// [`crate::offload::PUNT_NAMES`] (all workers; published by worker 0).
    pub punts: [AtomicU64; 5],
    /// Frames the XDP program dropped for want of headroom for its prefix
    /// (published by worker 0).
    pub no_mark_room: AtomicU64,
    /// 1 while the fast path is suspended because an interface cannot
    /// transmit redirected frames ([`crate::recheck`]; published by worker 0).
    pub offload_suspended: AtomicU64,
    /// Times it was suspended that way (published by worker 0).
    pub offload_suspensions: AtomicU64,
}

/// Names of [`Counters::rings`]' six fields.
pub const RING_NAMES: [&str; 6] = [
    "rx_dropped",
    "rx_invalid",
    "tx_invalid",
    "rx_ring_full",
    "fill_ring_empty",
    "tx_ring_empty",
];

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rx: Default::default(),
            rx_bytes: Default::default(),
            forwarded: Default::default(),
            dropped: Default::default(),
            drop_reasons: DropReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            tx_full: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            handoffs_in: AtomicU64::new(0),
            handoff_dropped: AtomicU64::new(0),
            handoff_depth: AtomicU64::new(0),
            umem_free: AtomicU64::new(0),
            expect_msgs: Default::default(),
            expect_msgs_dropped: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_ns: Histogram::new(BATCH_NS_BOUNDS),
            jobs: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            core: CoreCounters::default(),
            rings: Default::default(),
            offload: crate::offload::OffloadCounters::default(),
            punts: Default::default(),
            no_mark_room: AtomicU64::new(0),
            offload_suspended: AtomicU64::new(0),
            offload_suspensions: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Copies the pipeline's counters into [`Counters::core`].
    pub fn publish(&self, p: &Pipeline, now: u64) {
        let ct = p.conntrack();
        let c = &self.core;
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&c.entries, ct.len() as u64);
        set(&c.max_entries, u64::from(ct.config().max_entries));
        let s = ct.stats();
        for (a, v) in c.stats.iter().zip([
            s.found,
            s.new,
            s.invalid,
            s.insert_failed,
            s.drop,
            s.early_drop,
            s.search_restart,
            s.expired,
            s.frag_followed,
            s.source_limit,
        ]) {
            set(a, v);
        }
        let e = ct.expect_stats();
        for (a, v) in c.expect.iter().zip([
            e.expect_new,
            e.expect_create,
            e.expect_delete,
            e.expect_refused,
            e.expect_evicted,
        ]) {
            set(a, v);
        }
        let mut live = [0u64; HELPERS];
        for x in ct.expectations(now) {
            if let Some(h) = x.helper {
                live[h as usize] += 1;
            }
        }
        let h = ct.helper_stats();
        for (i, n) in live.iter().enumerate() {
            set(&c.expect_live[i], *n);
            set(&c.helper_packets[i], h.packets[i]);
            set(&c.helper_parse_errors[i], h.parse_errors[i]);
            set(&c.helper_expectations[i], h.expectations[i]);
            set(&c.helper_refused[i], h.refused[i]);
        }
    }

    pub(super) fn publish_rings(&self, side: usize, r: RingStats) {
        for (a, v) in self.rings[side].iter().zip([
            r.rx_dropped,
            r.rx_invalid,
            r.tx_invalid,
            r.rx_ring_full,
            r.fill_ring_empty,
            r.tx_ring_empty,
        ]) {
            a.store(v, Ordering::Relaxed);
        }
    }
}

/// Helpers in `HelperKind as usize` order, for labels.
pub fn helper_names() -> [&'static str; HELPERS] {
    let mut n = [""; HELPERS];
    for h in HelperKind::ALL {
        n[*h as usize] = h.name();
    }
    n
}
