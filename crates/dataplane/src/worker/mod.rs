//! A run-to-completion worker: frames from one side go through the pipeline
//! and, when accepted, out of the other side. Idle, it sleeps in `poll()`.
//!
//! The worker owns its pipeline (conntrack shard and policy); nothing else
//! touches it. The control plane reaches it through a [`Mailbox`]: jobs run
//! on the worker between two batches, on its own pipeline, and answer through
//! channels of their own. The worker writes its counters into [`Counters`]
//! (relaxed atomics, one writer) and republishes the core's counters there a
//! few times a second; the metrics exporter only reads them.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use capture::ether::{self, FrameError, ETH_P_IP, ETH_P_IPV6};
use conntrack::expect::ExpectMsg;
use conntrack::pipeline::BATCH;
use conntrack::policy::{Action, Side};
use conntrack::{DropReason, Event, PacketResult, Pipeline};

use crate::bpf::{BpfError, Mark, XdpProgram};
use crate::offload::Offloader;
use crate::recheck::{OffloadStatus, Watcher};
use crate::xsk::{Pair, PortError};

mod counters;
mod fabric;
mod mailbox;

pub use counters::*;
pub use fabric::{handoff_queue, Fabric, Handoff, HANDOFF_MAX};
use mailbox::wake;
pub use mailbox::{mailbox, Inbox, Job, Mailbox, PostError};

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The XDP program.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// An AF_XDP socket.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The offload re-check's thread.
    #[error("offload re-check thread: {0}")]
    Thread(std::io::Error),
}

/// What a worker needs to start.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The inside interface.
    pub inside: String,
    /// The outside interface.
    pub outside: String,
    /// Queue of both interfaces this worker owns.
    pub queue: u32,
    /// What happens to non-IP frames.
    pub non_ip: Action,
    /// Forward everything without looking (the bench's "pure forwarding").
    pub bypass: bool,
    /// Copy or zero-copy sockets.
    pub mode: crate::xsk::XdpMode,
    /// Established flows forwarded by the XDP program (the fast path).
    pub offload: bool,
    /// Spin on the rings instead of sleeping in `poll()` when they are
    /// empty: no wake-up per packet at low rates, the core always busy.
    pub busy_poll: bool,
}

/// How often the worker republishes the core's counters (ns).
const PUBLISH_NS: u64 = 200_000_000;

/// With busy polling, how often empty rings count as idle (the fast path's
/// pending flows are published then).
const IDLE_NS: u64 = 1_000_000;

/// A worker's view of the offload re-check ([`crate::recheck`]).
struct Suspension {
    status: Arc<OffloadStatus>,
    /// The worker offers no flow and reads no metadata (the program, its
    /// offload off, writes none).
    paused: bool,
    /// Resumed, seen at this time with each side's drain count then: the
    /// worker offers flows again once both RX rings have been empty since
    /// (every frame in them carries metadata), or after [`FORCE_NS`].
    resuming: Option<(u64, [u64; 2])>,
}

/// A worker over one queue pair.
pub struct Worker {
    /// Detached (links dropped) when the worker goes (`Worker::open`).
    _programs: Option<Programs>,
    /// The inside (0) and outside (1) sockets of the queue, one UMEM.
    pair: Pair,
    pipeline: Pipeline,
    non_ip: Action,
    bypass: bool,
    busy_poll: bool,
    counters: Arc<Counters>,
    results: Vec<PacketResult>,
    events: Vec<Event>,
    id: usize,
    fabric: Option<Arc<Fabric>>,
    msgs: Vec<ExpectMsg>,
    handed: Vec<Handoff>,
    /// The fast path's table, when offload is on.
    offload: Option<Offloader>,
    /// The offload re-check's verdict, when offload is on.
    suspension: Option<Suspension>,
}

/// The XDP program of a set of workers; dropping it detaches it. Keep it
/// until every worker has stopped. With offload on, a [`Watcher`] thread
/// holds it and re-checks the interfaces while it runs.
pub struct Programs {
    _program: Option<XdpProgram>,
    _watcher: Option<Watcher>,
}

impl Programs {
    /// Keeps `prog` attached; with offload on, hands it to a re-check of
    /// `cfg`'s interfaces publishing into `status`.
    fn keep(
        prog: XdpProgram,
        cfg: &WorkerConfig,
        status: &Arc<OffloadStatus>,
    ) -> Result<Programs, WorkerError> {
        if !cfg.offload {
            return Ok(Programs {
                _program: Some(prog),
                _watcher: None,
            });
        }
        let names = [cfg.inside.clone(), cfg.outside.clone()];
        let w = Watcher::start(prog, names, status.clone()).map_err(WorkerError::Thread)?;
        Ok(Programs {
            _program: None,
            _watcher: Some(w),
        })
    }
}

/// How long a worker waits, after the fast path resumed, for both RX rings
/// to have been empty before it offers flows again anyway (frames handled
/// while the program's offload was off, so without metadata, have left the
/// rings long before).
const FORCE_NS: u64 = crate::offload::FORCE_NS;

/// Opens one worker per queue of `queues` on both interfaces of `cfg` (its
/// `queue` is ignored), with one XDP program per interface steering each
/// queue to its worker's socket. With a `fabric`, worker `i` (of
/// `queues[i]`) owns the connections the fabric's sharding gives it, and
/// hands the frames of others' connections over. Must run in the interfaces'
/// namespace; the workers may then move to threads of their own.
pub fn open_workers(
    cfg: &WorkerConfig,
    queues: &[u32],
    pipelines: Vec<Pipeline>,
    counters: Vec<Arc<Counters>>,
    fabric: Option<Arc<Fabric>>,
) -> Result<(Vec<Worker>, Programs), WorkerError> {
    let mut prog = XdpProgram::load(cfg.offload)?;
    let status = Arc::new(OffloadStatus::default());
    let mut workers = Vec::with_capacity(queues.len());
    for (i, ((&q, mut p), c)) in queues.iter().zip(pipelines).zip(counters).enumerate() {
        let mut pair = Pair::open(&cfg.inside, &cfg.outside, q, cfg.mode)?;
        pair.set_prefix(prog.mark() == Mark::Prefix);
        prog.set_socket(0, q, pair.fd(0))?;
        prog.set_socket(1, q, pair.fd(1))?;
        if fabric.as_ref().is_some_and(|f| f.workers() > 1) {
            // At most 65 536 workers: origins are 16 bits.
            #[allow(clippy::cast_possible_truncation)]
            p.conntrack_mut().set_shard(i as u16);
        }
        let mut w = Worker::from_pair(cfg, pair, p, c);
        w.id = i;
        w.fabric.clone_from(&fabric);
        workers.push(w);
    }
    if cfg.offload {
        let maps = prog.offload_maps()?;
        for (i, w) in workers.iter_mut().enumerate() {
            w.enable_offload(Offloader::new(maps.clone(), i, queues.len()));
            w.follow(status.clone());
        }
    }
    // Steer frames only once every queue has its socket.
    prog.attach(0, &cfg.inside)?;
    prog.attach(1, &cfg.outside)?;
    if cfg.offload {
        crate::bpf::check_redirect_targets([&cfg.inside, &cfg.outside])?;
    }
    prog.set_offload(cfg.offload, workers.first().is_none_or(|w| w.checksum()))?;
    prog.set_redirect(true)?;
    let programs = Programs::keep(prog, cfg, &status)?;
    Ok((workers, programs))
}

impl Worker {
    /// Opens both sockets and attaches the XDP program that steers each
    /// interface's frames to them. Must run in the interfaces' namespace.
    pub fn open(
        cfg: &WorkerConfig,
        pipeline: Pipeline,
        counters: Arc<Counters>,
    ) -> Result<Worker, WorkerError> {
        let mut pair = Pair::open(&cfg.inside, &cfg.outside, cfg.queue, cfg.mode)?;
        // One program on both interfaces: it tells the sides apart by the
        // ingress interface and shares its maps between them.
        let mut p = XdpProgram::load(cfg.offload)?;
        pair.set_prefix(p.mark() == Mark::Prefix);
        p.set_socket(0, cfg.queue, pair.fd(0))?;
        p.set_socket(1, cfg.queue, pair.fd(1))?;
        p.attach(0, &cfg.inside)?;
        p.attach(1, &cfg.outside)?;
        if cfg.offload {
            crate::bpf::check_redirect_targets([&cfg.inside, &cfg.outside])?;
        }
        let checksum = pipeline.conntrack().config().checksum;
        p.set_offload(cfg.offload, checksum)?;
        let offload = if cfg.offload {
            Some(Offloader::new(p.offload_maps()?, 0, 1))
        } else {
            None
        };
        p.set_redirect(true)?;
        let status = Arc::new(OffloadStatus::default());
        let programs = Programs::keep(p, cfg, &status)?;
        let mut w = Worker::from_pair(cfg, pair, pipeline, counters);
        w._programs = Some(programs);
        if let Some(o) = offload {
            w.enable_offload(o);
            w.follow(status);
        }
        Ok(w)
    }

    fn from_pair(
        cfg: &WorkerConfig,
        pair: Pair,
        pipeline: Pipeline,
        counters: Arc<Counters>,
    ) -> Worker {
        Worker {
            _programs: None,
            pair,
            pipeline,
            non_ip: cfg.non_ip,
            bypass: cfg.bypass,
            busy_poll: cfg.busy_poll,
            counters,
            id: 0,
            fabric: None,
            msgs: Vec::with_capacity(64),
            handed: Vec::with_capacity(BATCH),
            offload: None,
            suspension: None,
            results: vec![
                PacketResult {
                    verdict: Action::Drop,
                    state: conntrack::CtState::Invalid,
                    reply: false,
                    reason: None,
                };
                BATCH
            ],
            events: Vec::with_capacity(conntrack::table::EVENT_BUFFER),
        }
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        self.run_with(stop, None);
    }

    /// Runs until `stop` is set, serving the control plane through `inbox`.
    pub fn run_with(&mut self, stop: &AtomicBool, inbox: Option<&Inbox>) {
        self.run_from(stop, inbox, Instant::now());
    }

    /// [`Self::run_with`] with the clock's origin given: workers that share
    /// expectations must share it (an expectation's deadline travels as time
    /// left, but timeouts compare against each worker's clock).
    pub fn run_from(&mut self, stop: &AtomicBool, inbox: Option<&Inbox>, start: Instant) {
        let mut last_publish = 0;
        let mut last_idle = 0;
        // Busy polling: poll() only looks (no sleep) and the idle work below
        // runs at most every IDLE_NS instead of after every empty look.
        let idle_timeout = if self.busy_poll { 0 } else { 100 };
        if let Some(o) = &self.offload {
            o.set_clock(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [
                libc::pollfd {
                    fd: self.pair.fd(0),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.pair.fd(1),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: inbox.map_or(-1, |i| i.wake.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Frames waiting in a TX ring come back through the completion
            // ring, not as something to read: look again soon.
            let timeout = if self.pair.in_flight() > 0 {
                idle_timeout.min(1)
            } else {
                idle_timeout
            };
            let ready = crate::sys::poll(&mut fds, timeout);
            let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.follow_suspension(now);
            if self.fabric.is_some() {
                // What the other workers announced comes first: a frame they
                // forwarded may have caused the packets about to be read.
                self.take_msgs(now);
                self.take_handoffs(now);
                // Timers run even when no packet arrives: what they remove
                // (a dead master's expectations) is announced.
                self.pipeline.conntrack_mut().expire(now);
                self.post_msgs();
            }
            if ready <= 0 {
                // Nothing to read. Under overload every frame can be in a TX
                // ring, none in the fill rings: then nothing can arrive, and
                // the completions were only ever collected after a receive.
                // Collect them (which refills the fill rings) and kick the
                // TX rings here too, or the worker never starts again.
                self.pair.reclaim();
                self.pair.flush(0);
                self.pair.flush(1);
            }
            if ready > 0 {
                self.step(Side::Inside, now);
                self.step(Side::Outside, now);
            } else if let Some(o) = self
                .offload
                .as_mut()
                .filter(|_| !self.busy_poll || now.saturating_sub(last_idle) >= IDLE_NS)
            {
                last_idle = now;
                // Both rings empty: pending flows have nothing left behind.
                o.drained(0);
                o.drained(1);
                o.publish_all(&self.pipeline, now);
            }
            if let Some(inbox) = inbox {
                if fds[2].revents != 0 {
                    inbox.clear_wake();
                }
                while let Ok(job) = inbox.jobs.try_recv() {
                    job(&mut self.pipeline, now);
                    self.counters.jobs.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(o) = &mut self.offload {
                    // A flush or a reload may have taken flows back.
                    o.collect_gone(&mut self.pipeline);
                }
                self.forward_events(inbox);
            }
            if now.saturating_sub(last_publish) >= PUBLISH_NS {
                last_publish = now;
                if let Some(o) = &mut self.offload {
                    // Live counters and timeouts for offloaded flows; timers
                    // may have taken some back.
                    o.refresh(&mut self.pipeline);
                    o.collect_gone(&mut self.pipeline);
                    o.publish_all(&self.pipeline, now);
                }
                self.publish(now);
            }
        }
        if let Some(o) = &mut self.offload {
            o.clear(&mut self.pipeline);
        }
        let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.publish(now);
    }

    /// UMEM frames the worker can account for (free, in its fill and RX
    /// rings, in its TX and completion rings): always [`crate::xsk::FRAMES`]
    /// unless a frame was lost.
    pub fn frames_accounted(&self) -> u32 {
        self.pair.frames_accounted()
    }

    /// The worker's pipeline (its conntrack table).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Hands established flows to the XDP fast path through `o`.
    pub fn enable_offload(&mut self, o: Offloader) {
        self.pipeline
            .conntrack_mut()
            .set_fast_path(Some(o.reclaimer()));
        self.offload = Some(o);
    }

    /// Follows the offload re-check's `status` (offload on).
    fn follow(&mut self, status: Arc<OffloadStatus>) {
        self.suspension = Some(Suspension {
            status,
            paused: false,
            resuming: None,
        });
    }

    /// Follows the re-check (one atomic load): suspended, takes every flow
    /// back from the program and offers none; resumed, offers flows again
    /// once the frames the program handled while suspended have left the
    /// rings.
    fn follow_suspension(&mut self, now: u64) {
        let (Some(s), Some(o)) = (&mut self.suspension, &mut self.offload) else {
            return;
        };
        if s.status.suspended() {
            s.resuming = None;
            if !s.paused {
                s.paused = true;
                o.clear(&mut self.pipeline);
            }
        } else if s.paused {
            let drains = o.drains();
            match s.resuming {
                None => s.resuming = Some((now, drains)),
                Some((at, then)) => {
                    if (drains[0] > then[0] && drains[1] > then[1])
                        || now.saturating_sub(at) >= FORCE_NS
                    {
                        s.paused = false;
                        s.resuming = None;
                    }
                }
            }
        }
    }

    /// True if the worker offers flows to the fast path now.
    fn offering(&self) -> bool {
        self.offload.is_some() && self.suspension.as_ref().is_none_or(|s| !s.paused)
    }

    /// The fast path's counters, when offload is on.
    pub fn offload_counters(&self) -> Option<Arc<crate::offload::OffloadCounters>> {
        self.offload.as_ref().map(|o| o.counters.clone())
    }

    /// The core verifies L4 checksums (so must the fast path).
    pub fn checksum(&self) -> bool {
        self.pipeline.conntrack().config().checksum
    }

    /// True if both sockets run in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.pair.zero_copy()
    }

    fn publish(&self, now: u64) {
        self.counters.publish(&self.pipeline, now);
        if let Some(f) = &self.fabric {
            self.counters
                .handoff_depth
                .store(f.handoff_rx[self.id].len() as u64, Ordering::Relaxed);
        }
        self.counters
            .umem_free
            .store(self.pair.pool_len() as u64, Ordering::Relaxed);
        if let Some(o) = &self.offload {
            o.counters.copy_to(&self.counters.offload);
            if self.id == 0 {
                let punts = o.punts();
                for (c, v) in self.counters.punts.iter().zip(punts) {
                    c.store(v, Ordering::Relaxed);
                }
                self.counters
                    .no_mark_room
                    .store(punts[5], Ordering::Relaxed);
                if let Some(s) = &self.suspension {
                    let c = &self.counters;
                    c.offload_suspended
                        .store(u64::from(s.status.suspended()), Ordering::Relaxed);
                    c.offload_suspensions
                        .store(s.status.suspensions(), Ordering::Relaxed);
                }
            }
        }
        self.counters.publish_rings(0, self.pair.stats(0));
        self.counters.publish_rings(1, self.pair.stats(1));
    }

    fn forward_events(&mut self, inbox: &Inbox) {
        let lost = self.pipeline.conntrack_mut().drain_events(&mut self.events);
        let mut dropped = lost;
        if let Some(tx) = &inbox.events {
            for e in self.events.drain(..) {
                if tx.try_send((inbox.worker, e)).is_err() {
                    dropped += 1;
                }
            }
        } else {
            dropped += self.events.len() as u64;
            self.events.clear();
        }
        if dropped > 0 {
            self.counters
                .events_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Applies the expectation messages other workers sent.
    fn take_msgs(&mut self, now: u64) {
        let Some(f) = &self.fabric else { return };
        let mut n = 0;
        while let Ok(m) = f.msg_rx[self.id].try_recv() {
            self.pipeline.conntrack_mut().apply_expect_msg(&m, now);
            n += 1;
        }
        if n > 0 {
            self.counters.expect_msgs[1].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sends this worker's expectation messages to every other worker.
    fn post_msgs(&mut self) {
        let Some(f) = &self.fabric else { return };
        self.pipeline
            .conntrack_mut()
            .drain_expect_msgs(&mut self.msgs);
        if self.msgs.is_empty() {
            return;
        }
        let (mut sent, mut lost) = (0, 0);
        for (i, tx) in f.msg_tx.iter().enumerate() {
            if i == self.id {
                continue;
            }
            for m in &self.msgs {
                if tx.try_send(*m).is_ok() {
                    sent += 1;
                } else {
                    lost += 1;
                }
            }
        }
        self.msgs.clear();
        self.counters.expect_msgs[0].fetch_add(sent, Ordering::Relaxed);
        if lost > 0 {
            self.counters
                .expect_msgs_dropped
                .fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// Runs the frames other workers handed over and forwards them.
    fn take_handoffs(&mut self, now: u64) {
        let Some(f) = self.fabric.clone() else { return };
        loop {
            while self.handed.len() < BATCH {
                match f.handoff_rx[self.id].try_recv() {
                    Ok(h) => self.handed.push(h),
                    Err(_) => break,
                }
            }
            if self.handed.is_empty() {
                return;
            }
            self.pair.reclaim();
            let c = &self.counters;
            c.handoffs_in
                .fetch_add(self.handed.len() as u64, Ordering::Relaxed);
            let mut ips: [(Side, &[u8]); BATCH] = [(Side::Inside, &[]); BATCH];
            let mut at = [usize::MAX; BATCH];
            let mut n = 0;
            for (i, h) in self.handed.iter().enumerate() {
                let frame = h.frame();
                if let Ok(e) = ether::parse(frame) {
                    ips[n] = (h.side, frame.get(e.l3_offset..).unwrap_or(&[]));
                    at[i] = n;
                    n += 1;
                }
            }
            self.pipeline
                .process_batch(&ips[..n], now, &mut self.results[..n]);
            for (i, h) in self.handed.iter().enumerate() {
                let s = h.side as usize;
                let r = (at[i] != usize::MAX).then(|| self.results[at[i]]);
                match r {
                    Some(r) if r.verdict == Action::Accept => {
                        if self.pair.send(s ^ 1, h.frame()) {
                            c.forwarded[s].fetch_add(1, Ordering::Relaxed);
                        } else {
                            c.tx_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    r => {
                        let reason = r
                            .and_then(|r| r.reason)
                            .unwrap_or(DropReason::FrameTruncated);
                        c.drop_reasons[reason.index()].fetch_add(1, Ordering::Relaxed);
                        c.dropped[s].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.handed.clear();
            self.post_msgs();
            self.pair.flush(0);
            self.pair.flush(1);
        }
    }

    /// Moves one batch from `side` to the other side.
    fn step(&mut self, side: Side, now: u64) {
        self.pair.reclaim();
        let s = side as usize;
        // Suspended, the program writes no metadata: stale bytes, not read.
        let offering = self.offering();
        let (pipeline, non_ip, c, bypass, results, id, offload) = (
            &mut self.pipeline,
            self.non_ip,
            &self.counters,
            self.bypass,
            &mut self.results,
            self.id,
            &mut self.offload,
        );
        let fabric = self.fabric.as_deref().filter(|f| f.workers() > 1);
        let mut woken = 0u64;
        let t0 = Instant::now();
        let mut dropped = 0u64;
        let rcv = self.pair.receive(s, offering, |frames, metas, marks| {
            let mut bytes = 0u64;
            // IP packets of the batch go through the pipeline together.
            let mut ips: [(Side, &[u8]); BATCH] = [(side, &[]); BATCH];
            // What happens to each frame: its index in `ips`, or one of these.
            const HANDED: u8 = 254;
            // Not IP, and why (named here, at the frame's one parse).
            const NOT_IP: u8 = 255;
            const VLAN_TOO_DEEP: u8 = 253;
            const TRUNCATED: u8 = 252;
            // An EtherType naming the other IP family than the header's.
            const V4_BAD_HEADER: u8 = 251;
            const V6_BAD_HEADER: u8 = 250;
            let mut disp = [NOT_IP; BATCH];
            let mut n_ip = 0;
            for (i, f) in frames.iter().enumerate() {
                bytes += f.len() as u64;
                if bypass {
                    continue;
                }
                let h = match ether::parse(f) {
                    Ok(h) => h,
                    Err(e) => {
                        disp[i] = if e == FrameError::VlanTooDeep {
                            VLAN_TOO_DEEP
                        } else {
                            TRUNCATED
                        };
                        continue;
                    }
                };
                if h.ethertype != ETH_P_IP && h.ethertype != ETH_P_IPV6 {
                    continue;
                }
                let l3 = f.get(h.l3_offset..).unwrap_or(&[]);
                match conntrack::packet::ethertype_mismatch(h.ethertype, l3) {
                    Some(DropReason::Ipv6BadHeader) => {
                        disp[i] = V6_BAD_HEADER;
                        continue;
                    }
                    Some(_) => {
                        disp[i] = V4_BAD_HEADER;
                        continue;
                    }
                    None => {}
                }
                if let Some(fab) = fabric {
                    let owner = fab.sharding.owner(l3).unwrap_or(id);
                    if owner != id {
                        disp[i] = HANDED;
                        let sent = Handoff::new(side, f)
                            .is_some_and(|ho| fab.handoff_tx[owner].try_send(ho).is_ok());
                        if sent {
                            c.handoffs.fetch_add(1, Ordering::Relaxed);
                            woken |= 1 << (owner % 64);
                        } else {
                            c.handoff_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                }
                ips[n_ip] = (side, l3);
                // n_ip < BATCH <= 64.
                #[allow(clippy::cast_possible_truncation)]
                {
                    disp[i] = n_ip as u8;
                }
                n_ip += 1;
            }
            if let Some(o) = offload.as_mut().filter(|_| offering) {
                for &m in metas {
                    // struct tg_meta: magic, kind, dir, slot.
                    if m & 0xffff == 0x7467 && (m >> 16) & 0xff == 1 {
                        #[allow(clippy::cast_possible_truncation)]
                        o.pending_done((m >> 32) as u32, (m >> 24) as u8);
                    }
                }
            }
            if n_ip > 0 {
                pipeline.process_batch(&ips[..n_ip], now, &mut results[..n_ip]);
            }
            if let Some(o) = offload {
                o.after_batch(pipeline, side, &results[..n_ip], offering, now);
            }
            for i in 0..frames.len() {
                let (verdict, reason) = if bypass {
                    (Action::Accept, None)
                } else if disp[i] == HANDED {
                    continue;
                } else {
                    match disp[i] {
                        NOT_IP => (non_ip, Some(DropReason::NonIp)),
                        VLAN_TOO_DEEP => (Action::Drop, Some(DropReason::VlanTooDeep)),
                        TRUNCATED => (Action::Drop, Some(DropReason::FrameTruncated)),
                        V4_BAD_HEADER => (Action::Drop, Some(DropReason::Ipv4BadHeader)),
                        V6_BAD_HEADER => (Action::Drop, Some(DropReason::Ipv6BadHeader)),
                        k => {
                            let r = results[usize::from(k)];
                            (r.verdict, r.reason)
                        }
                    }
                };
                if verdict == Action::Accept {
                    marks[i] = true;
                } else {
                    dropped += 1;
                    let r = reason.unwrap_or(DropReason::PolicyDefault);
                    c.drop_reasons[r.index()].fetch_add(1, Ordering::Relaxed);
                }
            }
            c.rx_bytes[s].fetch_add(bytes, Ordering::Relaxed);
        });
        let got = rcv.got;
        if let Some(o) = &mut self.offload {
            if got < BATCH {
                o.drained(s);
            }
        }
        if got > 0 {
            let c = &self.counters;
            if rcv.forwarded > 0 {
                c.forwarded[s].fetch_add(rcv.forwarded as u64, Ordering::Relaxed);
            }
            if rcv.tx_full > 0 {
                c.tx_full.fetch_add(rcv.tx_full as u64, Ordering::Relaxed);
            }
            if dropped > 0 {
                c.dropped[s].fetch_add(dropped, Ordering::Relaxed);
            }
            c.rx[s].fetch_add(got as u64, Ordering::Relaxed);
            // Announce new expectations before the frames that caused them
            // leave, so the connection they expect finds them on any worker.
            self.post_msgs();
            if let Some(f) = &self.fabric {
                for (i, fd) in f.wake.iter().enumerate() {
                    if woken & (1 << (i % 64)) != 0 {
                        wake(fd);
                    }
                }
            }
            self.pair.flush(s ^ 1);
            if let Some(o) = &mut self.offload {
                // The frames the slow path had for pending flows have left:
                // those flows may go to the fast path now.
                o.collect_gone(&mut self.pipeline);
                o.publish_pending(&self.pipeline);
            }
            let c = &self.counters;
            c.batch_size.observe(got as u64);
            c.batch_ns
                .observe(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
}
