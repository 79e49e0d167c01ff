//! The two AF_XDP sockets of a queue pair (the same queue on the inside and
//! the outside interface) over one shared UMEM: a received frame that is
//! accepted leaves through the other socket's TX ring as it is, without a
//! copy, and comes back to the shared pool through that socket's completion
//! ring. Each socket has its own fill and completion rings (the kernel's
//! `XDP_SHARED_UMEM` across devices); frames are copied only when they come
//! from elsewhere (another worker's handoff).

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Frames of a queue pair's UMEM: both fill rings full (2 x 2 048) and both
/// TX rings full (2 x 2 048) at once.
pub const FRAMES: u32 = 8192;
/// Frames kept in each fill ring (its size).
const FILL: u32 = 2048;
/// Frames handled per ring operation.
pub const BATCH: usize = 64;

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The interface name is not usable.
    #[error("interface {0:?}: bad name")]
    BadName(String),
    /// UMEM creation failed.
    #[error("UMEM: {0}")]
    Umem(String),
    /// Socket creation failed (no such interface, no XDP support, no permission).
    #[error("AF_XDP socket on {iface} queue {queue}: {err}")]
    Socket {
        /// Interface.
        iface: String,
        /// Queue.
        queue: u32,
        /// What the kernel said.
        err: String,
    },
}

/// How a socket moves frames between the NIC and the UMEM: the config's
/// `xdp_mode`, one type for both.
pub use control::config::XdpMode;

/// One socket of a pair: its rings and what it holds.
struct Sock {
    fq: FillQueue,
    cq: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// Frames in the fill ring (or received and not yet given back).
    in_fill: u32,
    /// Frames handed to TX and not yet completed.
    in_flight: u32,
}

/// What happened to a received batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Frames received.
    pub got: usize,
    /// Frames the caller marked and that went into the other side's TX ring.
    pub forwarded: usize,
    /// Frames the caller marked that found the other TX ring full.
    pub tx_full: usize,
}

/// The inside (0) and outside (1) sockets of one queue, over one UMEM.
pub struct Pair {
    umem: Umem,
    socks: [Sock; 2],
    /// Frames owned by user space and free for any use.
    pool: Vec<FrameDesc>,
    /// Scratch descriptors for receive and completion batches.
    scratch: Vec<FrameDesc>,
    /// The sockets run in zero-copy mode.
    zero_copy: bool,
    /// Every received frame starts with the XDP program's 8-byte mark
    /// ([`crate::bpf::Mark::Prefix`]).
    prefix: bool,
}

impl Pair {
    /// Opens queue `queue` of `inside` and of `outside`. Tollgate's own XDP
    /// program (see [`crate::bpf`]) steers frames to the sockets: libxdp
    /// loads nothing. `Auto` tries zero-copy first, then copy.
    pub fn open(inside: &str, outside: &str, queue: u32, mode: XdpMode) -> Result<Pair, PortError> {
        match mode {
            XdpMode::Copy => Pair::open_with(inside, outside, queue, false),
            XdpMode::ZeroCopy => Pair::open_with(inside, outside, queue, true),
            XdpMode::Auto => Pair::open_with(inside, outside, queue, true)
                .or_else(|_| Pair::open_with(inside, outside, queue, false)),
        }
    }

    /// True if the sockets run in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Says whether the XDP program puts its 8-byte mark in front of every
    /// frame it gives these sockets ([`crate::bpf::Mark::Prefix`]): then
    /// [`Self::receive`] reads it, shows the frames without it, and moves
    /// each frame it sends on over it.
    pub fn set_prefix(&mut self, on: bool) {
        self.prefix = on;
    }

    fn open_with(
        inside: &str,
        outside: &str,
        queue: u32,
        zero_copy: bool,
    ) -> Result<Pair, PortError> {
        if inside == outside {
            return Err(PortError::BadName(format!(
                "{inside}: the inside and outside interfaces must differ"
            )));
        }
        let count = NonZeroU32::new(FRAMES).ok_or_else(|| PortError::Umem("zero frames".into()))?;
        let (umem, pool) = Umem::new(UmemConfig::default(), count, false)
            .map_err(|e| PortError::Umem(e.to_string()))?;
        let a = Pair::socket(&umem, inside, queue, zero_copy)?;
        let b = Pair::socket(&umem, outside, queue, zero_copy)?;
        let mut pair = Pair {
            umem,
            socks: [a, b],
            pool,
            scratch: vec![FrameDesc::default(); BATCH],
            zero_copy,
            prefix: false,
        };
        pair.refill(0);
        pair.refill(1);
        Ok(pair)
    }

    fn socket(umem: &Umem, iface: &str, queue: u32, zero_copy: bool) -> Result<Sock, PortError> {
        let name = std::ffi::CString::new(iface).map_err(|_| PortError::BadName(iface.into()))?;
        let cfg = SocketConfig::builder()
            .bind_flags(
                BindFlags::XDP_USE_NEED_WAKEUP
                    | if zero_copy {
                        BindFlags::XDP_ZEROCOPY
                    } else {
                        BindFlags::XDP_COPY
                    },
            )
            .xdp_flags(XdpFlags::XDP_FLAGS_DRV_MODE)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .build();
        let err = |err: String| PortError::Socket {
            iface: iface.into(),
            queue,
            err,
        };
        // SAFETY: program loading is inhibited (the condition xsk-rs documents
        // for sharing a UMEM), and each (interface, queue) pair is bound once
        // from this UMEM: the two interfaces differ (checked by the caller).
        let (tx, rx, rings) = unsafe { Socket::new(cfg, umem, &Interface::new(name), queue) }
            .map_err(|e| {
                err(if zero_copy {
                    format!("{e} (zero-copy mode: does the driver support it? xdp_mode = \"auto\" falls back to copy)")
                } else {
                    e.to_string()
                })
            })?;
        let (fq, cq) = rings.ok_or_else(|| err("no fill/completion rings".into()))?;
        Ok(Sock {
            fq,
            cq,
            tx,
            rx,
            in_fill: 0,
            in_flight: 0,
        })
    }

    /// The file descriptor of side `side`'s socket (for `poll`).
    pub fn fd(&self, side: usize) -> i32 {
        self.socks[side & 1].rx.fd().as_raw_fd()
    }

    /// Tops side `side`'s fill ring up from the pool.
    fn refill(&mut self, side: usize) {
        let s = &mut self.socks[side & 1];
        let want = (FILL.saturating_sub(s.in_fill) as usize).min(self.pool.len());
        if want == 0 {
            return;
        }
        let from = self.pool.len() - want;
        // SAFETY: pool frames belong to this UMEM and are owned by user space;
        // those produced are truncated from the pool, so each frame is handed
        // to the kernel once and comes back through an RX ring.
        let n = unsafe { s.fq.produce(&self.pool[from..]) };
        if n > 0 {
            self.pool.truncate(from + (want - n));
            s.in_fill += u32::try_from(n).unwrap_or(u32::MAX);
            if s.fq.needs_wakeup() {
                let _ = s.fq.wakeup(s.rx.fd_mut(), 0);
            }
        }
    }

    /// Returns both sockets' completed transmissions to the pool and tops the
    /// fill rings up with them.
    pub fn reclaim(&mut self) {
        for side in 0..2 {
            let s = &mut self.socks[side];
            while s.in_flight > 0 {
                // SAFETY: completed descriptors are TX frames of this UMEM,
                // owned by user space again.
                let got = unsafe { s.cq.consume(&mut self.scratch[..]) };
                if got == 0 {
                    break;
                }
                self.pool.extend_from_slice(&self.scratch[..got]);
                s.in_flight = s
                    .in_flight
                    .saturating_sub(u32::try_from(got).unwrap_or(u32::MAX));
            }
        }
        for side in 0..2 {
            if self.socks[side].in_fill < FILL {
                self.refill(side);
            }
        }
    }

    /// Receives up to [`BATCH`] frames on side `side` and calls `f` once with
    /// all of them, the program's 8-byte mark of each (XDP metadata in front
    /// of the frame, read only if `meta`, else zeros; or the prefix, see
    /// [`Self::set_prefix`]) and a mark per frame, all false; the frames `f`
    /// marks are transmitted on the other side as they are (without a
    /// prefix), the others go back to the pool.
    pub fn receive(
        &mut self,
        side: usize,
        meta: bool,
        f: impl FnOnce(&[&[u8]], &[u64], &mut [bool]),
    ) -> Received {
        let side = side & 1;
        let mut descs = [FrameDesc::default(); BATCH];
        // SAFETY: the descriptors are written by the kernel for this UMEM.
        let got = unsafe { self.socks[side].rx.consume(&mut descs) };
        if got == 0 {
            return Received::default();
        }
        let s = &mut self.socks[side];
        s.in_fill = s
            .in_fill
            .saturating_sub(u32::try_from(got).unwrap_or(u32::MAX));
        let mut marks = [false; BATCH];
        let mut metas = [0u64; BATCH];
        // The program gives a socket no frame without its prefix; a shorter
        // one would be a kernel's bug: seen as empty, it is dropped as
        // truncated.
        let skip = if self.prefix { 8 } else { 0 };
        {
            let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
            for (i, d) in descs[..got].iter().enumerate() {
                // SAFETY: a received frame is ours until it is produced to a
                // TX or fill ring below, after the last use of these slices
                // (they do not leave this block).
                let data = unsafe { self.umem.data(d) }.contents();
                frames[i] = data.get(skip..).unwrap_or(&[]);
                if self.prefix {
                    if let Some(m) = data.get(..8).and_then(|m| m.try_into().ok()) {
                        metas[i] = u64::from_ne_bytes(m);
                    }
                } else if meta {
                    // SAFETY: the kernel puts a frame's data XDP_PACKET_HEADROOM
                    // (256) bytes into its UMEM chunk, XDP metadata right in
                    // front of it: these 8 bytes are inside the same chunk,
                    // ours like the data (read unaligned, copied out).
                    metas[i] = unsafe { data.as_ptr().sub(8).cast::<u64>().read_unaligned() };
                }
            }
            f(&frames[..got], &metas[..got], &mut marks[..got]);
        }
        // Marked frames first, in order, then the rest to the pool.
        let mut out = [FrameDesc::default(); BATCH];
        let mut n = 0;
        for (d, &m) in descs[..got].iter_mut().zip(&marks[..got]) {
            if m {
                if self.prefix {
                    // A descriptor starts where the frame's buffer does: the
                    // frame moves over its prefix (8 bytes, in a buffer the
                    // loop above just read, so in cache).
                    // SAFETY: the frame is ours (received above, not yet in
                    // any ring) and no slice of it is alive any more.
                    let mut data = unsafe { self.umem.data_mut(d) };
                    let len = data.contents().len();
                    data.contents_mut().copy_within(skip.min(len).., 0);
                    data.cursor().set_pos(len.saturating_sub(skip));
                }
                out[n] = *d;
                n += 1;
            } else {
                self.pool.push(*d);
            }
        }
        let other = &mut self.socks[side ^ 1];
        // A ring reservation is all or nothing: ask for what fits.
        let room = if n > 0 {
            (other.tx.nb_free(u32::try_from(n).unwrap_or(u32::MAX)) as usize).min(n)
        } else {
            0
        };
        let sent = if room > 0 {
            // SAFETY: the marked frames were received above and are no longer
            // read; each is handed to the kernel once and comes back through
            // the other socket's completion ring.
            unsafe { other.tx.produce(&out[..room]) }
        } else {
            0
        };
        other.in_flight += u32::try_from(sent).unwrap_or(u32::MAX);
        // What the full TX ring did not take goes back to the pool.
        self.pool.extend_from_slice(&out[sent..n]);
        self.refill(side);
        Received {
            got,
            forwarded: sent,
            tx_full: n - sent,
        }
    }

    /// Queues a copy of `frame` for transmission on side `side`. False
    /// (counted by the caller) when no frame is free, the frame does not fit
    /// or the TX ring is full.
    pub fn send(&mut self, side: usize, frame: &[u8]) -> bool {
        let Some(mut d) = self.pool.pop() else {
            return false;
        };
        // SAFETY: `d` is a pool frame of this UMEM, owned by us until it is
        // produced to the TX ring.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cur = data.cursor();
        if std::io::Write::write_all(&mut cur, frame).is_err() {
            self.pool.push(d);
            return false;
        }
        let s = &mut self.socks[side & 1];
        // SAFETY: the frame holds the packet and is handed to the kernel once;
        // it comes back through the completion ring.
        let ok = unsafe { s.tx.produce(std::slice::from_ref(&d)) } == 1;
        if ok {
            s.in_flight += 1;
        } else {
            self.pool.push(d);
        }
        ok
    }

    /// Kicks the kernel to transmit what side `side` has queued, if needed.
    pub fn flush(&mut self, side: usize) {
        let s = &mut self.socks[side & 1];
        if s.in_flight > 0 && s.tx.needs_wakeup() {
            let _ = s.tx.wakeup();
        }
    }

    /// Frames user space can account for: free, in a fill or RX ring, in a
    /// TX or completion ring. [`FRAMES`] unless one was lost.
    pub fn frames_accounted(&self) -> u32 {
        let pool = u32::try_from(self.pool.len()).unwrap_or(u32::MAX);
        self.socks.iter().fold(pool, |n, s| {
            n.saturating_add(s.in_fill).saturating_add(s.in_flight)
        })
    }

    /// Frames handed to the TX rings and not yet back through a completion
    /// ring, both sides.
    pub fn in_flight(&self) -> u32 {
        self.socks[0]
            .in_flight
            .saturating_add(self.socks[1].in_flight)
    }

    /// Frames free in the pool (for tests and metrics).
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// The kernel's ring statistics for side `side` (zeros if it cannot say).
    pub fn stats(&self, side: usize) -> RingStats {
        self.socks[side & 1]
            .rx
            .fd()
            .xdp_statistics()
            .map(|s| RingStats {
                rx_dropped: s.rx_dropped(),
                rx_invalid: s.rx_invalid_descs(),
                tx_invalid: s.tx_invalid_descs(),
                rx_ring_full: s.rx_ring_full(),
                fill_ring_empty: s.rx_fill_ring_empty_descs(),
                tx_ring_empty: s.tx_ring_empty_descs(),
            })
            .unwrap_or_default()
    }
}

/// `XDP_STATISTICS` of one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames dropped for reasons other than invalid descriptors (no room).
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid: u64,
    /// Invalid TX descriptors.
    pub tx_invalid: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub fill_ring_empty: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty: u64,
}
