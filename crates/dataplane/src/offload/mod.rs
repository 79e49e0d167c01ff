//! The workers' side of the XDP fast path (bpf/xsk_redirect.bpf.c,
//! bpf/tollgate.h): installing a connection's two tuples, activating it once
//! the slow path has forwarded every packet it still had (so a flow's
//! packets stay in order), taking it back for the core ([`Reclaimer`], the
//! core's [`FastPath`]), removing it, and reading its activity for listings
//! and timeouts.
//!
//! A worker owns the slots `base .. base + cap`; connection `conn` of its
//! table uses slot `base + conn` (connections at or beyond `cap` stay on
//! the slow path). Slot state moves FREE → PENDING (worker) → ACTIVE
//! (worker) → WITHDRAWN (program or worker) → FREE (worker). While ACTIVE,
//! only the program writes the slot, under its BUSY lock; otherwise only the
//! worker does.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use conntrack::pipeline::{OffloadPlan, PacketResult, BATCH};
use conntrack::policy::Action;
use conntrack::policy::Side;
use conntrack::proto::tcp::{TcpDir, TcpFast};
use conntrack::table::{FastPath, FastState, Reclaim};
use conntrack::tuple::Family;
use conntrack::CtState;
use conntrack::{Pipeline, Tuple};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

mod shm;
use shm::{FlowRaw, Index4, Region, TcpDirRaw};

/// Slots of the offload table (`TG_OFFLOAD_SLOTS`).
pub const SLOTS: u32 = 131_072;

/// How long a flow waits, pending, for a moment when none of its packets is
/// on the slow path (so the fast path cannot overtake one). A flow that
/// never pauses (a bulk transfer filling the worker's ring) is then taken by
/// the program anyway: the packets still in the ring at that instant may
/// leave after newer ones (counted in `overtaken`).
pub const FORCE_NS: u64 = 200_000_000;

const SHIFT: u32 = 60;
const PENDING: u64 = 1;
const ACTIVE: u64 = 2;
const BUSY: u64 = 3;
const WITHDRAWN: u64 = 4;

/// `TG_FLOWS4_BUCKETS` (bpf/tollgate.h).
const FLOWS4_BUCKETS: u32 = 524_288;
const E4_VALID: u32 = 1 << 31;
const E4_CLAIMED: u32 = 1 << 30;
const E4_GEN_SHIFT: u32 = 21;
const E4_GEN_MASK: u32 = 0x1ff << E4_GEN_SHIFT;
const E4_ICMP: u32 = 1 << 20;
const E4_UDP: u32 = 1 << 19;
const E4_SIDE: u32 = 1 << 18;
/// The bits of `meta` that are part of the key (`TG_E4_KEY_MASK`).
const E4_KEY_MASK: u32 = E4_ICMP | E4_UDP | E4_SIDE;
const E4_REF_MASK: u32 = (1 << 18) - 1;
const _: () = assert!(
    (E4_VALID | E4_CLAIMED) & E4_GEN_MASK == 0
        && (E4_VALID | E4_CLAIMED | E4_GEN_MASK) & E4_KEY_MASK == 0
        && (E4_KEY_MASK | E4_GEN_MASK) & E4_REF_MASK == 0
);

/// An IPv4 key of `flows4`: source, destination and ports as the packet
/// carries them (read as native words), and the key bits of `meta`
/// (`E4_KEY_MASK`: protocol and side).
type Key4 = (u32, u32, u32, u32);

/// How a tuple entering on a side is found by the program: IPv4 in
/// `flows4`, IPv6 in the `flows` hash map (`struct tg_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowKey {
    V4(Key4),
    V6([u8; 40]),
}

/// `tg_mix` (bpf/tollgate.h).
fn mix(h: u32, w: u32) -> u32 {
    let h = (h ^ w).wrapping_mul(0x9e37_79b1);
    h ^ (h >> 16)
}

/// `tg_flows4_hash` (bpf/tollgate.h): the bucket of an IPv4 key.
fn flows4_hash(seed: u32, src: u32, dst: u32, ports: u32, want: u32) -> u32 {
    let mut h = mix(mix(mix(mix(seed, src), dst), ports), want);
    h ^= h >> 13;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 16;
    h & (FLOWS4_BUCKETS - 1)
}

impl Index4 {
    fn bucket(&self, seed: u32, k: Key4) -> &[AtomicU32; 16] {
        self.at(flows4_hash(seed, k.0, k.1, k.2, k.3) as usize)
    }

    /// Publishes `k -> rf` in a free entry of its bucket (or in place of
    /// `k`'s entry, as a map update would: never two entries for one key);
    /// false if the bucket is full.
    fn insert(&self, seed: u32, k: Key4, rf: u32) -> bool {
        if let Some((e, m)) = self.find(seed, k) {
            let gen = (m & E4_GEN_MASK).wrapping_add(1 << E4_GEN_SHIFT) & E4_GEN_MASK;
            e[3].store(E4_VALID | gen | k.3 | (rf & E4_REF_MASK), Ordering::Release);
            return true;
        }
        let b = self.bucket(seed, k);
        for e in b.chunks_exact(4) {
            let m = e[3].load(Ordering::Acquire);
            if m & (E4_VALID | E4_CLAIMED) != 0 {
                continue;
            }
            // Claimed (other workers write this bucket too).
            if e[3]
                .compare_exchange(
                    m,
                    E4_CLAIMED | (m & E4_GEN_MASK),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            e[0].store(k.0, Ordering::Relaxed);
            e[1].store(k.1, Ordering::Relaxed);
            e[2].store(k.2, Ordering::Relaxed);
            let gen = (m & E4_GEN_MASK).wrapping_add(1 << E4_GEN_SHIFT) & E4_GEN_MASK;
            e[3].store(E4_VALID | gen | k.3 | (rf & E4_REF_MASK), Ordering::Release);
            return true;
        }
        false
    }

    /// The entry of `k`, as (entry's words, its meta).
    fn find(&self, seed: u32, k: Key4) -> Option<(&[AtomicU32], u32)> {
        let b = self.bucket(seed, k);
        b.chunks_exact(4).find_map(|e| {
            let m = e[3].load(Ordering::Acquire);
            let hit = m & E4_VALID != 0
                && m & E4_KEY_MASK == k.3
                && e[0].load(Ordering::Relaxed) == k.0
                && e[1].load(Ordering::Relaxed) == k.1
                && e[2].load(Ordering::Relaxed) == k.2;
            hit.then_some((e, m))
        })
    }

    /// Removes `k` (only its owner removes it).
    fn remove(&self, seed: u32, k: Key4) {
        if let Some((e, m)) = self.find(seed, k) {
            e[3].store(m & E4_GEN_MASK, Ordering::Release);
        }
    }
}

/// The program's offload maps as user space holds them.
#[derive(Clone)]
pub struct Maps {
    flows: Arc<MapHandle>,
    flows4: Arc<Index4>,
    seed: u32,
    punts: Arc<MapHandle>,
    region: Arc<Region>,
}

impl Maps {
    /// Maps `flow_state` and `flows4` and keeps a handle on `flows`;
    /// `seed` is the program's `flows4_seed`.
    pub fn new<T: std::fmt::Debug, T4: std::fmt::Debug, U: std::fmt::Debug, V: std::fmt::Debug>(
        flows: &libbpf_rs::MapImpl<'_, T>,
        flows4: &libbpf_rs::MapImpl<'_, T4>,
        flow_state: &libbpf_rs::MapImpl<'_, U>,
        punts: &libbpf_rs::MapImpl<'_, V>,
        seed: u32,
    ) -> std::io::Result<Maps> {
        let h = MapHandle::try_from(flows).map_err(std::io::Error::other)?;
        let punts = MapHandle::try_from(punts).map_err(std::io::Error::other)?;
        let flows4 = Arc::new(Index4::new(
            flows4.as_fd().as_raw_fd(),
            FLOWS4_BUCKETS as usize,
        )?);
        let region = Region::new(flow_state.as_fd().as_raw_fd(), SLOTS as usize)?;
        Ok(Maps {
            flows: Arc::new(h),
            flows4,
            seed,
            punts: Arc::new(punts),
            region: Arc::new(region),
        })
    }
}

impl Maps {
    /// Publishes `k -> rf` (slot << 1 | direction) to the program.
    fn put(&self, k: &FlowKey, rf: u32) -> bool {
        match k {
            FlowKey::V4(k) => self.flows4.insert(self.seed, *k, rf),
            FlowKey::V6(k) => self
                .flows
                .update(k, &rf.to_ne_bytes(), MapFlags::ANY)
                .is_ok(),
        }
    }

    /// Takes `k` away from the program.
    fn del(&self, k: &FlowKey) {
        match k {
            FlowKey::V4(k) => self.flows4.remove(self.seed, *k),
            FlowKey::V6(k) => {
                let _ = self.flows.delete(k);
            }
        }
    }

    /// What the program finds for `k`: slot << 1 | direction.
    fn get(&self, k: &FlowKey) -> Option<u32> {
        match k {
            FlowKey::V4(k) => self
                .flows4
                .find(self.seed, *k)
                .map(|(_, m)| m & E4_REF_MASK),
            FlowKey::V6(k) => {
                let v = self.flows.lookup(k, MapFlags::ANY).ok()??;
                let v: [u8; 4] = v.get(..4)?.try_into().ok()?;
                Some(u32::from_ne_bytes(v))
            }
        }
    }
}

/// How the program finds a tuple entering on `side`.
fn key(t: &Tuple, side: Side) -> FlowKey {
    if t.family == Family::V4 {
        // An IPv4 address lives in the low 32 bits; the program reads the
        // packet's bytes as native words.
        #[allow(clippy::cast_possible_truncation)]
        let (s, d) = (t.src.0 as u32, t.dst.0 as u32);
        // ICMP: the echo id, then type and code, as the header carries
        // them (the tuple's `dst_port` is type << 8 | code).
        let [a, b] = t.src_port.to_be_bytes();
        let [c, d2] = t.dst_port.to_be_bytes();
        let proto = match t.proto {
            conntrack::tuple::ipproto::UDP => E4_UDP,
            conntrack::tuple::ipproto::ICMP => E4_ICMP,
            _ => 0,
        };
        let outside = if side == Side::Outside { E4_SIDE } else { 0 };
        return FlowKey::V4((
            u32::from_ne_bytes(s.to_be_bytes()),
            u32::from_ne_bytes(d.to_be_bytes()),
            u32::from_ne_bytes([a, b, c, d2]),
            proto | outside,
        ));
    }
    FlowKey::V6(key6(t, side))
}

/// `struct tg_key` of a tuple entering on `side`.
fn key6(t: &Tuple, side: Side) -> [u8; 40] {
    let mut k = [0u8; 40];
    match t.family {
        Family::V4 => {
            // An IPv4 address lives in the low 32 bits.
            #[allow(clippy::cast_possible_truncation)]
            let (s, d) = (t.src.0 as u32, t.dst.0 as u32);
            k[0..4].copy_from_slice(&s.to_be_bytes());
            k[16..20].copy_from_slice(&d.to_be_bytes());
        }
        Family::V6 => {
            k[0..16].copy_from_slice(&t.src.0.to_be_bytes());
            k[16..32].copy_from_slice(&t.dst.0.to_be_bytes());
        }
    }
    k[32..34].copy_from_slice(&t.src_port.to_be_bytes());
    k[34..36].copy_from_slice(&t.dst_port.to_be_bytes());
    k[36] = t.proto;
    k[37] = side as u8;
    k
}

/// Takes `slot` from the program: WITHDRAWN unless it is pending or free.
/// Returns the state it was in (`BUSY` is waited out).
fn withdraw(region: &Region, slot: u32) -> u64 {
    let Some(ctl) = region.ctl(slot) else {
        return 0;
    };
    for _ in 0..10_000_000u32 {
        let c = ctl.load(Ordering::Acquire);
        match c >> SHIFT {
            ACTIVE => {
                if ctl
                    .compare_exchange(c, WITHDRAWN << SHIFT, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return ACTIVE;
                }
            }
            // The program holds it for a few instructions.
            BUSY => std::hint::spin_loop(),
            s => return s,
        }
    }
    // Never observed: a program does not hold the lock across packets.
    ctl.store(WITHDRAWN << SHIFT, Ordering::Release);
    BUSY
}

/// What the program did with a withdrawn (or being refreshed) slot, as the
/// core merges it; updates the reported counters.
fn take_activity(region: &Region, slot: u32, offset: i128, full: bool) -> FastState {
    let Some(mut f) = region.read(slot) else {
        return FastState::default();
    };
    let mut fs = FastState::default();
    for d in 0..2 {
        fs.packets[d] = f.packets[d].saturating_sub(f.reported_packets[d]);
        fs.bytes[d] = f.bytes[d].saturating_sub(f.reported_bytes[d]);
        f.reported_packets[d] = f.packets[d];
        f.reported_bytes[d] = f.bytes[d];
    }
    if f.last_seen != 0 {
        let core = i128::from(f.last_seen) - offset;
        fs.last_seen = u64::try_from(core.max(0)).ok();
    }
    if f.proto == conntrack::tuple::ipproto::TCP {
        let dir = |r: &TcpDirRaw| TcpDir {
            end: r.end,
            maxend: r.maxend,
            maxwin: r.maxwin,
            maxack: r.maxack,
            scale: r.scale,
            flags: r.flags,
        };
        fs.tcp = Some(TcpFast {
            seen: [dir(&f.tcp[0]), dir(&f.tcp[1])],
            last_dir: f.last_dir,
            last_seq: f.last_seq,
            last_ack: f.last_ack,
            last_end: f.last_end,
            last_win: f.last_win,
            retrans: f.retrans,
            took_any: f.last_ack_valid != 0,
        });
    }
    if full {
        // Withdrawn: the worker owns the slot, write the reported counts back.
        region.write(slot, &f);
    } else {
        // Active: only the worker-owned counters are written.
        region.write_reported(slot, f.reported_packets, f.reported_bytes);
    }
    fs
}

/// The core's view of a worker's fast path: withdraws a connection and
/// hands its state back.
pub struct Reclaimer {
    region: Arc<Region>,
    base: u32,
    cap: u32,
    offset: Arc<std::sync::atomic::AtomicI64>,
}

impl FastPath for Reclaimer {
    fn reclaim(&mut self, conn: u32, dir: Option<conntrack::Direction>) -> Reclaim {
        if conn >= self.cap {
            return Reclaim::Taken(FastState::default());
        }
        let slot = self.base + conn;
        if let Some(d) = dir {
            // A packet sent to the slow path while the flow was pending: the
            // core tracks it on its own state (current, unless the program
            // took the flow meanwhile and the packet was overtaken); the
            // program keeps the flow.
            if self
                .region
                .take_stale(slot, u8::from(d == conntrack::Direction::Reply))
            {
                return Reclaim::Pending;
            }
        }
        match withdraw(&self.region, slot) {
            PENDING => Reclaim::Pending,
            ACTIVE | WITHDRAWN | BUSY => Reclaim::Taken(take_activity(
                &self.region,
                slot,
                i128::from(self.offset.load(Ordering::Relaxed)),
                true,
            )),
            _ => Reclaim::Taken(FastState::default()),
        }
    }
}

/// Why the program gave packets of installed flows to the slow path (the
/// `punts` map's slots).
pub const PUNT_NAMES: [&str; 5] = ["pending", "not_plain", "window", "inactive", "busy"];

/// Per-worker offload counters (published as metrics).
#[derive(Debug, Default)]
pub struct OffloadCounters {
    /// Connections installed (pending).
    pub installed: AtomicU64,
    /// Installs refused by the map (full) or beyond the worker's slots.
    pub install_failed: AtomicU64,
    /// Pending connections made active.
    pub activated: AtomicU64,
    /// Connections removed from the fast path.
    pub removed: AtomicU64,
    /// Connections in the fast path now.
    pub entries: AtomicU64,
    /// Packets of pending flows the slow path forwarded for the program.
    pub pending_taken: AtomicU64,
    /// Pending flows the program took before the slow path had caught up
    /// (the worker stopped waiting: see [`FORCE_NS`]).
    pub forced: AtomicU64,
    /// Packets overtaken that way (the order of these few can change).
    pub overtaken: AtomicU64,
    /// Packets and bytes the fast path forwarded (as reported to the core).
    pub packets: AtomicU64,
    /// See `packets`.
    pub bytes: AtomicU64,
}

impl OffloadCounters {
    /// Copies every counter into `to`.
    pub fn copy_to(&self, to: &OffloadCounters) {
        for (a, b) in [
            (&self.installed, &to.installed),
            (&self.install_failed, &to.install_failed),
            (&self.activated, &to.activated),
            (&self.removed, &to.removed),
            (&self.entries, &to.entries),
            (&self.pending_taken, &to.pending_taken),
            (&self.forced, &to.forced),
            (&self.overtaken, &to.overtaken),
            (&self.packets, &to.packets),
            (&self.bytes, &to.bytes),
        ] {
            b.store(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// A worker's offload table.
pub struct Offloader {
    maps: Maps,
    base: u32,
    cap: u32,
    /// Installed connections: the keys to delete.
    keys: Vec<Option<[FlowKey; 2]>>,
    /// Drain epochs of each side's RX ring at install, per connection.
    epochs: Vec<[u64; 2]>,
    /// When each connection was installed (the core's clock).
    since: Vec<u64>,
    pending: Vec<u32>,
    /// Packets (connection, direction) the slow path took while their flow
    /// was pending, since the last publication.
    took: Vec<(u32, u8)>,
    /// Slots given credits in the current batch.
    credited: Vec<u32>,
    installed: Vec<u32>,
    gone: Vec<u32>,
    /// Times each side's RX ring was found empty.
    drained: [u64; 2],
    /// CLOCK_MONOTONIC (the program's bpf_ktime_get_coarse_ns, a tick behind
    /// at most) minus the core's clock.
    offset: Arc<std::sync::atomic::AtomicI64>,
    /// Counters.
    pub counters: Arc<OffloadCounters>,
}

impl Offloader {
    /// The offload table of worker `worker` of `workers` over `maps`.
    pub fn new(maps: Maps, worker: usize, workers: usize) -> Offloader {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        let cap = SLOTS / workers;
        let base = u32::try_from(worker).unwrap_or(0).saturating_mul(cap);
        Offloader {
            maps,
            base,
            cap,
            keys: vec![None; cap as usize],
            epochs: vec![[0; 2]; cap as usize],
            since: vec![0; cap as usize],
            pending: Vec::with_capacity(64),
            took: Vec::with_capacity(64),
            credited: Vec::with_capacity(64),
            installed: Vec::with_capacity(1024),
            gone: Vec::with_capacity(64),
            drained: [0; 2],
            offset: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            counters: Arc::new(OffloadCounters::default()),
        }
    }

    /// The core's side of this table (give it to the worker's conntrack).
    pub fn reclaimer(&self) -> Box<dyn FastPath> {
        Box::new(Reclaimer {
            region: self.maps.region.clone(),
            base: self.base,
            cap: self.cap,
            offset: self.offset.clone(),
        })
    }

    /// The core's clock is `now` ns at this instant.
    pub fn set_clock(&self, now: u64) {
        let off = i64::try_from(crate::sys::monotonic_ns())
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        self.offset.store(off, Ordering::Relaxed);
    }

    /// How many times each side's RX ring was found empty.
    pub fn drains(&self) -> [u64; 2] {
        self.drained
    }

    /// Side `side`'s RX ring was found empty.
    pub fn drained(&mut self, side: usize) {
        self.drained[side & 1] += 1;
    }

    /// A frame the program sent while its flow was pending (metadata kind
    /// `TG_META_PENDING`) is about to go through the slow path, in this
    /// batch: the core tracks it on its own state, without taking the flow
    /// back from the program even if the program has taken it meanwhile
    /// (the worker stopped waiting: the frame was overtaken). While the flow
    /// is pending, it counts once the batch has left
    /// ([`Self::publish_pending`]). Call [`Self::after_batch`] after the batch.
    pub fn pending_done(&mut self, slot: u32, dir: u8) {
        if slot < self.base || slot - self.base >= self.cap {
            return;
        }
        let region = &self.maps.region;
        if !region.add_stale(slot, dir & 1) {
            return;
        }
        self.credited.push(slot);
        let pending = region
            .ctl(slot)
            .is_some_and(|c| c.load(Ordering::Acquire) >> SHIFT == PENDING);
        if pending {
            self.took.push((slot - self.base, dir & 1));
            self.counters.pending_taken.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.overtaken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The batch the [`Self::pending_done`] frames belonged to has been
    /// tracked: credits a frame did not use (not tracked: malformed, not
    /// IP) must not excuse a later one.
    fn end_batch(&mut self) {
        for slot in self.credited.drain(..) {
            self.maps.region.clear_stale(slot);
        }
    }

    /// Readies slot of connection `conn` for `plan` (pending, window state
    /// to come) and returns the two keys to insert; `None` if it cannot take
    /// it (no slot, or the slot is still being freed).
    fn prepare(&mut self, p: &mut Pipeline, conn: u32, plan: &OffloadPlan) -> Option<[FlowKey; 2]> {
        if conn >= self.cap {
            p.conntrack_mut().offload_refuse(conn);
            self.counters.install_failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = self.base + conn;
        let region = &self.maps.region;
        let ctl = region.ctl(slot)?;
        if ctl.load(Ordering::Acquire) >> SHIFT != 0 {
            // Still held from a previous connection on this index (its
            // removal is queued) or prepared already in this batch.
            return None;
        }
        let c = &plan.candidate;
        let f = FlowRaw {
            proto: c.orig.proto,
            ..FlowRaw::default()
        };
        region.write(slot, &f);
        ctl.store(PENDING << SHIFT, Ordering::Release);
        Some([
            key(&c.orig, plan.orig_side),
            key(&c.reply, plan.orig_side.other()),
        ])
    }

    /// A prepared install the map refused: undone, not asked again.
    fn fail(&mut self, p: &mut Pipeline, conn: u32, keys: &[FlowKey; 2]) {
        let slot = self.base + conn;
        for k in keys {
            // Only what this install put there.
            if self.maps.get(k).is_some_and(|v| v >> 1 == slot) {
                self.maps.del(k);
            }
        }
        if let Some(ctl) = self.maps.region.ctl(self.base + conn) {
            ctl.store(0, Ordering::Release);
        }
        p.conntrack_mut().offload_refuse(conn);
        self.counters.install_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A prepared install whose keys are in the map: the core hands the
    /// connection over.
    fn finish(&mut self, p: &mut Pipeline, conn: u32, keys: [FlowKey; 2], now: u64) {
        self.keys[conn as usize] = Some(keys);
        self.epochs[conn as usize] = self.drained;
        self.since[conn as usize] = now;
        p.conntrack_mut().offload_begin(conn);
        self.pending.push(conn);
        self.installed.push(conn);
        self.counters.installed.fetch_add(1, Ordering::Relaxed);
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
    }

    /// Installs connection `conn` as `plan` describes it (pending), or
    /// refuses it (no slot, map full). The caller has checked the plan.
    pub fn install(&mut self, p: &mut Pipeline, conn: u32, plan: &OffloadPlan, now: u64) -> bool {
        let Some(keys) = self.prepare(p, conn, plan) else {
            return false;
        };
        let slot = self.base + conn;
        let ok = keys.iter().enumerate().all(|(dir, k)| {
            self.maps
                .put(k, slot << 1 | u32::try_from(dir).unwrap_or(0))
        });
        if ok {
            self.finish(p, conn, keys, now);
        } else {
            self.fail(p, conn, &keys);
        }
        ok
    }

    /// After a batch has left: gives the program, for each pending
    /// connection the batch had packets of, the core's current window state
    /// and how many of the packets it sent the slow path have gone. Only
    /// those connections are visited (a burst of installs costs nothing per
    /// batch); [`Self::publish_all`] does the rest.
    pub fn publish_pending(&mut self, p: &Pipeline) {
        if self.pending.is_empty() {
            self.took.clear();
            return;
        }
        let took = self.take_took();
        let region = self.maps.region.clone();
        let ct = p.conntrack();
        for &(conn, add) in &took {
            let slot = self.base + conn;
            let pending = region
                .ctl(slot)
                .is_some_and(|c| c.load(Ordering::Acquire) >> SHIFT == PENDING);
            if pending && ct.is_offloaded(conn) {
                region.publish(slot, ct.offload_tcp(conn), add, None);
            }
        }
    }

    /// When the rings are idle and a few times a second: every pending
    /// connection gets its state published with which RX rings have been
    /// empty since its install (the program makes the flow active with the
    /// next packet once every one has gone, so the order of a flow's packets
    /// holds), or the go-ahead after [`FORCE_NS`]; those the program took
    /// leave the list.
    pub fn publish_all(&mut self, p: &Pipeline, now: u64) {
        if self.pending.is_empty() {
            self.took.clear();
            return;
        }
        let took = self.take_took();
        let ct = p.conntrack();
        let region = self.maps.region.clone();
        let drained = self.drained;
        let counters = self.counters.clone();
        self.pending.retain(|&conn| {
            let slot = self.base + conn;
            let Some(ctl) = region.ctl(slot) else {
                return false;
            };
            if !ct.is_offloaded(conn) {
                return false;
            }
            let c = ctl.load(Ordering::Acquire);
            let state = c >> SHIFT;
            if state != PENDING {
                // The program took it.
                if matches!(state, ACTIVE | BUSY | WITHDRAWN) {
                    counters.activated.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
            let Some((done, before)) = region.done_and_ready(slot) else {
                return false;
            };
            let at = self.epochs[conn as usize];
            let mut ready = u32::from(drained[0] > at[0]) | u32::from(drained[1] > at[1]) << 1;
            let add = took
                .binary_search_by_key(&conn, |&(c, _)| c)
                .map_or([0; 2], |i| took[i].1);
            let q = [c & ((1 << 30) - 1), (c >> 30) & ((1 << 30) - 1)];
            let caught_up = (0..2).all(|d| {
                u64::from(done[d]) + u64::from(add[d]) == q[d]
                    && (q[d] > 0 || ready & (1 << d) != 0)
            });
            if !caught_up && now.saturating_sub(self.since[conn as usize]) > FORCE_NS {
                ready |= 4;
                if before & 4 == 0 {
                    counters.forced.fetch_add(1, Ordering::Relaxed);
                }
            }
            region.publish(slot, ct.offload_tcp(conn), add, Some(ready));
            true
        });
    }

    /// The packets the slow path took for pending flows since the last
    /// publication, per connection (sorted), emptied.
    fn take_took(&mut self) -> Vec<(u32, [u32; 2])> {
        let mut took = std::mem::take(&mut self.took);
        took.sort_unstable_by_key(|&(c, _)| c);
        let mut out: Vec<(u32, [u32; 2])> = Vec::with_capacity(took.len());
        for (c, d) in took.drain(..) {
            match out.last_mut() {
                Some((lc, n)) if *lc == c => n[usize::from(d & 1)] += 1,
                _ => {
                    let mut n = [0; 2];
                    n[usize::from(d & 1)] = 1;
                    out.push((c, n));
                }
            }
        }
        // Keep the buffer's capacity.
        self.took = took;
        out
    }

    /// Removes from the program the connections the core let go.
    pub fn collect_gone(&mut self, p: &mut Pipeline) {
        p.conntrack_mut().drain_offload_gone(&mut self.gone);
        if self.gone.is_empty() {
            return;
        }
        let region = self.maps.region.clone();
        let gone = std::mem::take(&mut self.gone);
        let mut kbuf = Vec::with_capacity(gone.len() * 80);
        let mut freed = Vec::with_capacity(gone.len());
        for &conn in &gone {
            if conn >= self.cap {
                continue;
            }
            let slot = self.base + conn;
            withdraw(&region, slot);
            if let Some(keys) = self.keys[conn as usize].take() {
                for k in &keys {
                    match k {
                        FlowKey::V6(k) => kbuf.extend_from_slice(k),
                        k => self.maps.del(k),
                    }
                }
                self.counters.removed.fetch_add(1, Ordering::Relaxed);
                self.counters.entries.fetch_sub(1, Ordering::Relaxed);
            }
            freed.push(slot);
        }
        // One system call for all; one by one if some key was missing.
        let n = u32::try_from(kbuf.len() / 40).unwrap_or(u32::MAX);
        if n > 0
            && self
                .maps
                .flows
                .delete_batch(&kbuf, n, MapFlags::ANY, MapFlags::ANY)
                .is_err()
        {
            for k in kbuf.chunks_exact(40) {
                let _ = self.maps.flows.delete(k);
            }
        }
        // Only now may the slots take new connections.
        for slot in freed {
            if let Some(ctl) = region.ctl(slot) {
                ctl.store(0, Ordering::Release);
            }
        }
        if gone.len() > 16 {
            let set: std::collections::HashSet<u32> = gone.iter().copied().collect();
            self.installed.retain(|c| !set.contains(c));
            self.pending.retain(|c| !set.contains(c));
        } else {
            self.installed.retain(|c| !gone.contains(c));
            self.pending.retain(|c| !gone.contains(c));
        }
        self.gone = gone;
        self.gone.clear();
    }

    /// Hands the activity of active connections to the core (listings,
    /// timeouts), without taking them back.
    pub fn refresh(&mut self, p: &mut Pipeline) {
        let region = self.maps.region.clone();
        let offset = i128::from(self.offset.load(Ordering::Relaxed));
        let (mut packets, mut bytes) = (0, 0);
        for &conn in &self.installed {
            let slot = self.base + conn;
            if region
                .ctl(slot)
                .is_none_or(|c| !matches!(c.load(Ordering::Acquire) >> SHIFT, ACTIVE | BUSY))
            {
                continue;
            }
            let fs = take_activity(&region, slot, offset, false);
            packets += fs.packets[0] + fs.packets[1];
            bytes += fs.bytes[0] + fs.bytes[1];
            p.conntrack_mut().offload_refresh(conn, &fs);
        }
        self.counters.packets.fetch_add(packets, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// After a batch went through the pipeline (`results`, one per packet,
    /// all entered on `side`): forgets the credits of [`Self::pending_done`]
    /// the batch did not use and, if `offering`, offers the fast path the
    /// connection of every packet accepted as established. The worker and
    /// `tollgate replay --offload` both end their batches here.
    pub fn after_batch(
        &mut self,
        p: &mut Pipeline,
        side: Side,
        results: &[PacketResult],
        offering: bool,
        now: u64,
    ) {
        self.end_batch();
        let n = results.len().min(BATCH);
        if !offering || n == 0 {
            return;
        }
        let mut conns = [u32::MAX; BATCH];
        let mut reply = [false; BATCH];
        for (i, r) in results[..n].iter().enumerate() {
            if r.verdict == Action::Accept && r.state == CtState::Established {
                conns[i] = p.batch_conns()[i];
                reply[i] = r.reply;
            }
        }
        self.consider(p, side, &conns[..n], &reply[..n], now);
    }

    /// Offers the accepted packets of a batch's connections to the fast
    /// path: `conns` and `reply` per packet, all entered on `side`. The keys
    /// of every connection taken go into the map in one system call.
    fn consider(&mut self, p: &mut Pipeline, side: Side, conns: &[u32], reply: &[bool], now: u64) {
        let mut batch: Vec<(u32, [FlowKey; 2])> = Vec::new();
        for (&conn, &r) in conns.iter().zip(reply) {
            if conn == u32::MAX || conn >= self.cap || p.conntrack().is_offloaded(conn) {
                continue;
            }
            if let Some(plan) = p.offload_plan(conn, side, r) {
                if let Some(keys) = self.prepare(p, conn, &plan) {
                    batch.push((conn, keys));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        // IPv4 keys go straight into flows4; IPv6 ones into the hash map,
        // all in one system call.
        let mut kbuf = Vec::new();
        let mut vbuf = Vec::new();
        let mut put4 = vec![true; batch.len()];
        for (i, (conn, keys)) in batch.iter().enumerate() {
            let slot = self.base + conn;
            for (dir, k) in keys.iter().enumerate() {
                let rf = slot << 1 | u32::try_from(dir).unwrap_or(0);
                match k {
                    FlowKey::V6(k) => {
                        kbuf.extend_from_slice(k);
                        vbuf.extend_from_slice(&rf.to_ne_bytes());
                    }
                    k => put4[i] &= self.maps.put(k, rf),
                }
            }
        }
        let n = u32::try_from(kbuf.len() / 40).unwrap_or(u32::MAX);
        let all = n == 0
            || self
                .maps
                .flows
                .update_batch(&kbuf, &vbuf, n, MapFlags::ANY, MapFlags::ANY)
                .is_ok();
        for ((conn, keys), ok4) in batch.into_iter().zip(put4) {
            let slot = self.base + conn;
            // After a failed batch, one by one: some may have gone in.
            let ok = ok4
                && (all
                    || keys.iter().enumerate().all(|(dir, k)| {
                        !matches!(k, FlowKey::V6(_))
                            || self
                                .maps
                                .put(k, slot << 1 | u32::try_from(dir).unwrap_or(0))
                    }));
            if ok {
                self.finish(p, conn, keys, now);
            } else {
                self.fail(p, conn, &keys);
            }
        }
    }

    /// Packets of installed flows the program gave the slow path, per
    /// [`PUNT_NAMES`] (all workers, all CPUs).
    /// The sixth: frames the program dropped for want of headroom for its
    /// prefix ([`crate::bpf::Mark::Prefix`]).
    pub fn punts(&self) -> [u64; 6] {
        crate::bpf::percpu_sums(&*self.maps.punts)
    }

    /// Connections pending and active now.
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    /// Which way a packet with tuple `t` arriving on `side` goes in its
    /// offloaded flow: `Some(true)` the reply way, `Some(false)` the
    /// original way, `None` when the program has no such flow.
    pub fn direction(&self, t: &Tuple, side: Side) -> Option<bool> {
        self.maps.get(&key(t, side)).map(|v| v & 1 == 1)
    }

    /// True if none is installed.
    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// Removes every installed connection (the worker stops).
    pub fn clear(&mut self, p: &mut Pipeline) {
        for conn in self.installed.clone() {
            if p.conntrack().is_offloaded(conn) {
                p.conntrack_mut().offload_release(conn);
            }
        }
        self.collect_gone(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `buckets` buckets of `flows4`'s layout in anonymous shared memory.
    fn index(buckets: usize) -> Index4 {
        Index4::anonymous(buckets).expect("mapped")
    }

    fn k(port: u32, want: u32) -> Key4 {
        (0x0100_000a, 0x0200_000a, port, want)
    }

    #[test]
    fn flows4_entries_claimed_found_and_freed() {
        // One bucket: every key lands in it.
        let idx = index(1);
        for p in 0..4 {
            assert!(idx.insert(7, k(p, 0), p * 2 + 1), "entry {p}");
        }
        assert!(!idx.insert(7, k(9, 0), 99), "a full bucket refuses");
        // A key already there is updated in place, not added again.
        assert!(idx.insert(7, k(3, 0), 77), "full, but the key is there");
        let (_, m) = idx.find(7, k(3, 0)).expect("found");
        assert_eq!(m & E4_REF_MASK, 77);
        assert!(idx.insert(7, k(3, 0), 3 * 2 + 1));
        for p in 0..4 {
            let (_, m) = idx.find(7, k(p, 0)).expect("found");
            assert_eq!(m & E4_REF_MASK, p * 2 + 1);
            assert_ne!(m & E4_VALID, 0);
        }
        // The protocol and SIDE bits are part of the key.
        assert!(idx.find(7, k(1, E4_UDP)).is_none());
        assert!(idx.find(7, k(1, E4_ICMP)).is_none());
        assert!(idx.find(7, k(1, E4_SIDE)).is_none());
        // A freed entry takes another key, one generation on.
        let (_, before) = idx.find(7, k(2, 0)).expect("found");
        idx.remove(7, k(2, 0));
        assert!(idx.find(7, k(2, 0)).is_none());
        assert!(idx.insert(7, k(9, E4_UDP), 42));
        let (_, after) = idx.find(7, k(9, E4_UDP)).expect("found");
        assert_eq!(after & E4_REF_MASK, 42);
        assert_ne!(
            after & E4_GEN_MASK,
            before & E4_GEN_MASK,
            "generation moved"
        );
        // Removing a key that is not there changes nothing.
        idx.remove(7, k(5, 0));
        for p in [0, 1, 3] {
            assert!(idx.find(7, k(p, 0)).is_some());
        }
    }

    #[test]
    fn icmp_keys_carry_id_type_and_code_as_the_header_does() {
        use conntrack::tuple::{ipproto, Addr};
        let req = Tuple {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            src_port: 0x1234,
            dst_port: 8 << 8,
            proto: ipproto::ICMP,
            family: Family::V4,
        };
        // An echo request's header from byte 4: id 0x1234; its first two
        // bytes: type 8, code 0.
        let ports = u32::from_ne_bytes([0x12, 0x34, 8, 0]);
        let src = u32::from_ne_bytes([10, 0, 0, 1]);
        let dst = u32::from_ne_bytes([10, 0, 0, 2]);
        assert_eq!(
            key(&req, Side::Inside),
            FlowKey::V4((src, dst, ports, E4_ICMP))
        );
        // The reply: the same id, type 0, coming from the outside.
        let ports = u32::from_ne_bytes([0x12, 0x34, 0, 0]);
        assert_eq!(
            key(&req.invert(), Side::Outside),
            FlowKey::V4((dst, src, ports, E4_ICMP | E4_SIDE))
        );
        // A TCP tuple with the same numbers is another key.
        let tcp = Tuple {
            proto: ipproto::TCP,
            ..req
        };
        assert_ne!(key(&tcp, Side::Inside), key(&req, Side::Inside));
        // IPv6: struct tg_key, ports likewise, protocol 58.
        let req6 = Tuple {
            src: Addr::v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            dst: Addr::v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            src_port: 0x1234,
            dst_port: 128 << 8,
            proto: ipproto::ICMPV6,
            family: Family::V6,
        };
        let FlowKey::V6(k6) = key(&req6.invert(), Side::Outside) else {
            panic!("an IPv6 key")
        };
        assert_eq!(k6[15], 2);
        assert_eq!(k6[31], 1);
        assert_eq!(&k6[32..38], &[0x12, 0x34, 129, 0, 58, 1]);
    }

    #[test]
    fn flows4_hash_spreads_keys_and_depends_on_the_seed() {
        let mut seen = std::collections::HashSet::new();
        for p in 0..1000u32 {
            seen.insert(flows4_hash(1, 0x0100_000a, 0x0200_000a, p << 16, 0));
        }
        assert!(seen.len() > 990, "{} buckets for 1000 ports", seen.len());
        let moved = (0..1000u32)
            .filter(|&p| {
                flows4_hash(1, 0x0100_000a, 0x0200_000a, p, 0)
                    != flows4_hash(2, 0x0100_000a, 0x0200_000a, p, 0)
            })
            .count();
        assert!(moved > 990, "another seed, other buckets: {moved}");
        assert!(flows4_hash(u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX) < FLOWS4_BUCKETS);
    }
}
