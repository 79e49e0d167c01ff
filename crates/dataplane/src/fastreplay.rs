//! The XDP fast path driven packet by packet, without NICs: Tollgate's XDP
//! program run with `BPF_PROG_TEST_RUN` in front of a pipeline, the offload
//! table kept by the worker's own [`Offloader`], as a worker with
//! `offload = true` does, after every packet with empty rings. A packet the
//! program forwards itself (`XDP_REDIRECT`) is accepted as established; any
//! other goes through the pipeline, which may then hand its flow to the
//! program. `tollgate replay --offload` and the kernel differential with
//! the fast path on run on this. Root only (loading BPF).
//!
//! Clocks: the program stamps packets with the kernel's monotonic clock, the
//! pipeline runs on the caller's `now` (a capture's timestamps, say). Before
//! each packet the offloader's clock is set to `now`; when `now` leaps ahead
//! of the real time elapsed (an idle gap in a capture), every flow is taken
//! back first, so that the last-seen times the program recorded are read on
//! the clock they were written with and timeouts stay exact. A leap is the
//! offset between real time and `now` shrinking below the smallest seen so
//! far: delays between the caller's reading of its clock and ours (this
//! thread preempted) only ever grow the offset, so they never count.

use std::time::Instant;

use conntrack::packet::{self, ParseOptions};
use conntrack::policy::{Action, Side};
use conntrack::{CtState, PacketResult, Pipeline};

use crate::bpf::{action, XdpProgram};
use crate::offload::Offloader;

/// A leap of the caller's clock ahead of real time beyond which flows are
/// taken back before the packet (ns).
const LEAP_NS: i64 = 1_000_000;

/// The program and a pipeline behind it.
pub struct FastReplay {
    prog: XdpProgram,
    off: Offloader,
    pipeline: Pipeline,
    /// The interface index standing for the side that is not lo's.
    other: i32,
    epoch: Instant,
    /// The smallest real time minus `now` seen since the last leap.
    offset: Option<i64>,
    /// Packets the program forwarded itself.
    pub forwarded: u64,
    /// Packets it gave the pipeline.
    pub punted: u64,
    /// Times every flow was taken back for a leap of the clock.
    pub leaps: u64,
    /// Hold pending flows: as if the RX rings were never found empty, so
    /// that the program never takes a flow over (tests of that wait).
    pub hold: bool,
}

/// Why the fast path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FastReplayError {
    /// Not root, or no BPF.
    #[error("the XDP fast path needs root (BPF_PROG_TEST_RUN, a network namespace): {0}")]
    Setup(String),
    /// A test run failed.
    #[error("running the XDP program: {0}")]
    Run(String),
}

impl FastReplay {
    /// Moves the calling thread into a network namespace of its own, where
    /// lo and a veth pair stand for the two ports, loads the program with
    /// the fast path on and puts it in front of `pipeline`.
    pub fn new(mut pipeline: Pipeline) -> Result<FastReplay, FastReplayError> {
        let setup = |e: String| FastReplayError::Setup(e);
        crate::sys::unshare_net().map_err(|e| setup(format!("unshare: {e}")))?;
        let ok = std::process::Command::new("ip")
            .args([
                "link", "add", "tgfra", "type", "veth", "peer", "name", "tgfrb",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(setup("creating a veth pair (ip link add)".into()));
        }
        let other = crate::bpf::ifindex("tgfra").map_err(|e| setup(e.to_string()))?;
        let mut prog = XdpProgram::load(true).map_err(|e| setup(e.to_string()))?;
        let checksum = pipeline.conntrack().config().checksum;
        prog.set_side(0, 1).map_err(|e| setup(e.to_string()))?;
        prog.set_side(1, other).map_err(|e| setup(e.to_string()))?;
        prog.set_offload(true, checksum)
            .map_err(|e| setup(e.to_string()))?;
        prog.set_redirect(true).map_err(|e| setup(e.to_string()))?;
        let maps = prog.offload_maps().map_err(|e| setup(e.to_string()))?;
        let off = Offloader::new(maps, 0, 1);
        pipeline
            .conntrack_mut()
            .set_fast_path(Some(off.reclaimer()));
        Ok(FastReplay {
            prog,
            off,
            pipeline,
            other,
            epoch: Instant::now(),
            offset: None,
            forwarded: 0,
            punted: 0,
            leaps: 0,
            hold: false,
        })
    }

    /// The pipeline (its table holds offloaded flows as the core sees them:
    /// [`Self::finish`] takes them back first).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The offloader and the pipeline, for what a worker does between
    /// packets (timers, listings, a policy reload).
    pub fn parts(&mut self) -> (&mut Offloader, &mut Pipeline) {
        (&mut self.off, &mut self.pipeline)
    }

    /// The program (its punt counters).
    pub fn program(&self) -> &XdpProgram {
        &self.prog
    }

    /// The program, to run or configure it directly (measurements).
    pub fn program_mut(&mut self) -> &mut XdpProgram {
        &mut self.prog
    }

    /// Makes the next test runs arrive on `side`: the program tells the
    /// sides apart by ingress interface, and a test run's ingress is lo.
    pub fn ingress(&mut self, side: Side) -> Result<(), FastReplayError> {
        let run = |e: crate::bpf::BpfError| FastReplayError::Run(e.to_string());
        let (lo, other) = match side {
            Side::Inside => (0, 1),
            Side::Outside => (1, 0),
        };
        // The other side first: the two never share an interface.
        self.prog.set_side(other, self.other).map_err(run)?;
        self.prog.set_side(lo, 1).map_err(run)
    }

    /// The offloader.
    pub fn offloader(&self) -> &Offloader {
        &self.off
    }

    /// Takes every flow back from the program.
    pub fn finish(&mut self) {
        self.off.clear(&mut self.pipeline);
    }

    /// One IP packet arriving on `side` at `now`: the program first, the
    /// pipeline if the program gives it up.
    pub fn process(
        &mut self,
        side: Side,
        l3: &[u8],
        now: u64,
    ) -> Result<PacketResult, FastReplayError> {
        let real = i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX);
        let offset = real.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        match self.offset {
            Some(min) if offset < min.saturating_sub(LEAP_NS) => {
                if !self.off.is_empty() {
                    self.off.clear(&mut self.pipeline);
                    self.leaps += 1;
                }
                self.offset = Some(offset);
            }
            Some(min) => self.offset = Some(min.min(offset)),
            None => self.offset = Some(offset),
        }
        self.off.set_clock(now);
        self.ingress(side)?;
        let run = |e: crate::bpf::BpfError| FastReplayError::Run(e.to_string());
        let frame = conntrack::build::ethernet(l3, &[]);
        let (rv, meta) = self.prog.test_run_meta(&frame).map_err(run)?;
        let result = if rv == action::REDIRECT {
            self.forwarded += 1;
            PacketResult {
                verdict: Action::Accept,
                state: CtState::Established,
                reply: self.reply(side, l3),
                reason: None,
            }
        } else {
            if rv != action::PASS {
                return Err(FastReplayError::Run(format!("XDP action {rv}")));
            }
            self.punted += 1;
            if let Some(m) = meta {
                let m = u64::from_le_bytes(m);
                // A packet the program saw while its flow was pending.
                if m & 0xffff == 0x7467 && (m >> 16) & 0xff == 1 {
                    let slot = u32::try_from(m >> 32).unwrap_or(u32::MAX);
                    let dir = u8::try_from((m >> 24) & 0xff).unwrap_or(0);
                    self.off.pending_done(slot, dir);
                }
            }
            let mut out = [PacketResult {
                verdict: Action::Drop,
                state: CtState::Invalid,
                reply: false,
                reason: None,
            }];
            self.pipeline.process_batch(&[(side, l3)], now, &mut out);
            self.off
                .after_batch(&mut self.pipeline, side, &out, true, now);
            out[0]
        };
        // Both "rings" are empty after each packet: pending flows may go.
        self.off.collect_gone(&mut self.pipeline);
        if !self.hold {
            self.off.drained(0);
            self.off.drained(1);
            self.off.publish_all(&self.pipeline, now);
        }
        Ok(result)
    }

    /// Whether a packet the program forwarded went the reply way: its
    /// tuple's key in the program's table says.
    fn reply(&self, side: Side, l3: &[u8]) -> bool {
        packet::parse(l3, ParseOptions::default())
            .ok()
            .and_then(|p| self.off.direction(&p.tuple, side))
            .unwrap_or(false)
    }
}
