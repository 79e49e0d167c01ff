//! A run-to-completion worker: frames from one side go through the pipeline
//! and, when accepted, out of the other side. Idle, it sleeps in `poll()`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use capture::ether::{self, ETH_P_IP, ETH_P_IPV6};
use conntrack::policy::{Action, Side};
use conntrack::Pipeline;

use crate::bpf::{BpfError, XdpProgram};
use crate::xsk::{Port, PortError};

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The XDP program.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// An AF_XDP socket.
    #[error(transparent)]
    Port(#[from] PortError),
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
}

/// Counters a worker writes and anyone may read (relaxed atomics: no locks on
/// the packet path).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received, per side (inside, outside).
    pub rx: [AtomicU64; 2],
    /// Frames forwarded, per side they arrived on.
    pub forwarded: [AtomicU64; 2],
    /// Frames dropped by policy or conntrack, per side they arrived on.
    pub dropped: [AtomicU64; 2],
    /// Frames that could not be queued for transmission (no free TX frame).
    pub tx_full: AtomicU64,
}

/// A worker over one queue pair.
pub struct Worker {
    /// Detached (links dropped) when the worker goes.
    _programs: Vec<XdpProgram>,
    inside: Port,
    outside: Port,
    pipeline: Pipeline,
    non_ip: Action,
    bypass: bool,
    counters: Arc<Counters>,
}

impl Worker {
    /// Opens both sockets and attaches the XDP program that steers each
    /// interface's frames to them. Must run in the interfaces' namespace.
    pub fn open(
        cfg: &WorkerConfig,
        pipeline: Pipeline,
        counters: Arc<Counters>,
    ) -> Result<Worker, WorkerError> {
        let inside = Port::open(&cfg.inside, cfg.queue)?;
        let outside = Port::open(&cfg.outside, cfg.queue)?;
        // An XSKMAP slot is a queue index, and a frame may only be redirected
        // to a socket bound to its own interface: one program (and map) per
        // interface.
        let mut programs = Vec::with_capacity(2);
        for (iface, port) in [(&cfg.inside, &inside), (&cfg.outside, &outside)] {
            let mut p = XdpProgram::load()?;
            p.set_socket(cfg.queue, port.fd())?;
            p.set_redirect(true)?;
            p.attach(iface)?;
            programs.push(p);
        }
        Ok(Worker {
            _programs: programs,
            inside,
            outside,
            pipeline,
            non_ip: cfg.non_ip,
            bypass: cfg.bypass,
            counters,
        })
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [
                libc::pollfd {
                    fd: self.inside.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.outside.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            if ready <= 0 {
                continue;
            }
            let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.step(Side::Inside, now);
            self.step(Side::Outside, now);
        }
    }

    /// Moves one batch from `side` to the other side.
    fn step(&mut self, side: Side, now: u64) {
        let (rx, tx) = match side {
            Side::Inside => (&mut self.inside, &mut self.outside),
            Side::Outside => (&mut self.outside, &mut self.inside),
        };
        tx.reclaim();
        let s = side as usize;
        let (pipeline, non_ip, c, bypass) =
            (&mut self.pipeline, self.non_ip, &self.counters, self.bypass);
        let got = rx.receive(|frame| {
            let verdict = match ether::parse(frame) {
                _ if bypass => Action::Accept,
                Ok(f) if f.ethertype == ETH_P_IP || f.ethertype == ETH_P_IPV6 => {
                    pipeline
                        .process(side, frame.get(f.l3_offset..).unwrap_or(&[]), now)
                        .verdict
                }
                Ok(_) => non_ip,
                Err(_) => Action::Drop,
            };
            if verdict == Action::Accept {
                if tx.send(frame) {
                    c.forwarded[s].fetch_add(1, Ordering::Relaxed);
                } else {
                    c.tx_full.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                c.dropped[s].fetch_add(1, Ordering::Relaxed);
            }
        });
        if got > 0 {
            c.rx[s].fetch_add(got as u64, Ordering::Relaxed);
            tx.flush();
        }
    }
}
