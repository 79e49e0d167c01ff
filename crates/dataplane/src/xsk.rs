//! One AF_XDP socket with its own UMEM (copy mode on veth, where zero-copy is
//! not offered): half the frames feed the fill ring, half are free for
//! transmission.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Frames per port: half for receiving, half for transmitting.
pub const FRAMES: u32 = 4096;
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

/// How a socket moves frames between the NIC and the UMEM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Zero-copy where the driver offers it, else copy.
    #[default]
    Auto,
    /// Always copy (works on every driver with XDP).
    Copy,
    /// Zero-copy or fail (the driver must support it).
    ZeroCopy,
}

/// One AF_XDP socket bound to an interface queue.
pub struct Port {
    umem: Umem,
    fq: FillQueue,
    cq: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// Frames free for transmission.
    free: Vec<FrameDesc>,
    /// Scratch descriptors for receive and completion batches.
    scratch: Vec<FrameDesc>,
    /// Frames handed to TX and not yet completed.
    in_flight: u32,
    /// The socket runs in zero-copy mode.
    zero_copy: bool,
}

impl Port {
    /// Opens a socket on `iface`, queue `queue`. Tollgate's own XDP program
    /// (see [`crate::bpf`]) steers frames to it: libxdp loads nothing.
    pub fn open(iface: &str, queue: u32) -> Result<Port, PortError> {
        Port::open_mode(iface, queue, XdpMode::Copy)
    }

    /// [`Port::open`] in the given mode; `Auto` tries zero-copy first.
    pub fn open_mode(iface: &str, queue: u32, mode: XdpMode) -> Result<Port, PortError> {
        match mode {
            XdpMode::Copy => Port::open_with(iface, queue, false),
            XdpMode::ZeroCopy => Port::open_with(iface, queue, true),
            XdpMode::Auto => Port::open_with(iface, queue, true)
                .or_else(|_| Port::open_with(iface, queue, false)),
        }
    }

    /// True if the socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    fn open_with(iface: &str, queue: u32, zero_copy: bool) -> Result<Port, PortError> {
        let name = std::ffi::CString::new(iface).map_err(|_| PortError::BadName(iface.into()))?;
        let count = NonZeroU32::new(FRAMES).ok_or_else(|| PortError::Umem("zero frames".into()))?;
        let (umem, mut descs) = Umem::new(UmemConfig::default(), count, false)
            .map_err(|e| PortError::Umem(e.to_string()))?;
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
        // SAFETY: the UMEM is not shared with another socket on this
        // (interface, queue) pair, the condition xsk-rs documents for `new`.
        let (tx, rx, rings) = unsafe { Socket::new(cfg, &umem, &Interface::new(name), queue) }
            .map_err(|e| PortError::Socket {
                iface: iface.into(),
                queue,
                err: if zero_copy {
                    format!("{e} (zero-copy mode: does the driver support it? xdp_mode = \"auto\" falls back to copy)")
                } else {
                    e.to_string()
                },
            })?;
        let (mut fq, cq) = rings.ok_or_else(|| PortError::Socket {
            iface: iface.into(),
            queue,
            err: "no fill/completion rings".into(),
        })?;
        let free = descs.split_off(descs.len() / 2);
        // SAFETY: these frames belong to this UMEM and are handed to the kernel
        // once; they come back through the RX ring before being reused.
        unsafe {
            fq.produce(&descs);
        }
        let scratch = descs;
        Ok(Port {
            umem,
            fq,
            cq,
            tx,
            rx,
            free,
            scratch,
            in_flight: 0,
            zero_copy,
        })
    }

    /// The socket's file descriptor (for `poll`).
    pub fn fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }

    /// Returns completed transmissions to the free pool.
    pub fn reclaim(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        let n = BATCH.min(self.scratch.len());
        // SAFETY: completed descriptors come from this UMEM's TX frames.
        let got = unsafe { self.cq.consume(&mut self.scratch[..n]) };
        self.free.extend_from_slice(&self.scratch[..got]);
        self.in_flight = self
            .in_flight
            .saturating_sub(u32::try_from(got).unwrap_or(u32::MAX));
    }

    /// Receives up to [`BATCH`] frames and calls `f` once with all of them;
    /// then gives the frames back to the fill ring. Returns how many were
    /// received.
    pub fn receive(&mut self, f: impl FnOnce(&[&[u8]])) -> usize {
        let n = BATCH.min(self.scratch.len());
        // SAFETY: the descriptors are written by the kernel for this UMEM.
        let got = unsafe { self.rx.consume(&mut self.scratch[..n]) };
        if got == 0 {
            return 0;
        }
        let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
        for (slot, d) in frames.iter_mut().zip(&self.scratch[..got]) {
            // SAFETY: a received frame is ours until it is put back in the fill
            // ring below; nothing else reads or writes it meanwhile, and the
            // slices do not outlive this call.
            *slot = unsafe { self.umem.data(d) }.contents();
        }
        f(&frames[..got]);
        // SAFETY: the frames were consumed from RX and are handed back once,
        // after the last use of their slices above.
        unsafe {
            self.fq.produce(&self.scratch[..got]);
        }
        if self.fq.needs_wakeup() {
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
        got
    }

    /// Queues a copy of `frame` for transmission. False (counted by the caller)
    /// when no TX frame is free or the frame does not fit.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let Some(mut d) = self.free.pop() else {
            return false;
        };
        // SAFETY: `d` is a free TX frame of this UMEM, owned by us until it is
        // produced to the TX ring.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cur = data.cursor();
        if std::io::Write::write_all(&mut cur, frame).is_err() {
            self.free.push(d);
            return false;
        }
        // SAFETY: the frame holds the packet and is handed to the kernel once;
        // it comes back through the completion ring.
        let ok = unsafe { self.tx.produce(std::slice::from_ref(&d)) } == 1;
        if ok {
            self.in_flight += 1;
        } else {
            self.free.push(d);
        }
        ok
    }

    /// Kicks the kernel to transmit what is queued, if it needs it.
    pub fn flush(&mut self) {
        if self.in_flight > 0 && self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
    }

    /// The kernel's ring statistics for this socket (zeros if it cannot say).
    pub fn stats(&self) -> RingStats {
        self.rx
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
