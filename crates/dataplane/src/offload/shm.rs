//! The fast path's shared memory: the `flow_state` slots and the `flows4`
//! index, mmap-ed from the XDP program's array maps, and every read and
//! write of them. Who may write what, when, is the parent module's rule
//! (its documentation); each access here says which part of it makes the
//! access sound. With `crate::xsk` and `crate::sys`, the only `unsafe` of
//! the dataplane.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use conntrack::proto::tcp::{TcpDir, TcpFast};

/// `struct tg_tcp_dir`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TcpDirRaw {
    pub(super) end: u32,
    pub(super) maxend: u32,
    pub(super) maxwin: u32,
    pub(super) maxack: u32,
    pub(super) scale: u8,
    pub(super) flags: u8,
    pub(super) pad: u16,
}

/// `struct tg_flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FlowRaw {
    pub(super) ctl: u64,
    pub(super) last_seen: u64,
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    pub(super) tcp: [TcpDirRaw; 2],
    pub(super) last_seq: u32,
    pub(super) last_ack: u32,
    pub(super) last_end: u32,
    pub(super) last_win: u16,
    pub(super) last_dir: u8,
    pub(super) retrans: u8,
    pub(super) proto: u8,
    pub(super) last_ack_valid: u8,
    pub(super) pad: u16,
    pub(super) done: [u32; 2],
    pub(super) ready: u32,
    pub(super) reported_packets: [u64; 2],
    pub(super) reported_bytes: [u64; 2],
    pub(super) stale: u64,
    pub(super) pad3: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<FlowRaw>() == 192);
const _: () = assert!(std::mem::size_of::<TcpDirRaw>() == 20);

/// An mmap-able array map mapped into this process: `len` values of `T`.
pub(super) struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: plain shared memory; every access follows the ownership rules of
// the module documentation (what the program writes too is only touched
// atomically or whole).
unsafe impl<T> Send for Mapped<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps the `len` values of the array map behind `fd`.
    pub(super) fn new(fd: i32, len: usize) -> std::io::Result<Mapped<T>> {
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: a shared read-write mapping of an mmap-able array map of
        // `len` values of `T` (the kernel checks the size); no existing
        // memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<T>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Mapped { ptr, len })
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once
        // (dropped once, after its last user).
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<T>(),
            );
        }
    }
}

/// The `flow_state` array.
pub(super) type Region = Mapped<FlowRaw>;

impl Region {
    fn slot_ptr(&self, slot: u32) -> Option<*mut FlowRaw> {
        let i = slot as usize;
        // SAFETY: `i < len`: the pointer stays inside the mapping.
        (i < self.len).then(|| unsafe { self.ptr.as_ptr().add(i) })
    }

    pub(super) fn ctl(&self, slot: u32) -> Option<&AtomicU64> {
        let p = self.slot_ptr(slot)?;
        // SAFETY: `ctl` is the struct's first field, 8-byte aligned (the
        // array's values are 192-byte strides of a page-aligned mapping), and
        // lives as long as `self`; the program only touches it atomically.
        Some(unsafe { &*(std::ptr::addr_of_mut!((*p).ctl).cast::<AtomicU64>()) })
    }

    /// Copies slot `slot` out (the caller owns it, or only reads fields the
    /// program writes whole).
    pub(super) fn read(&self, slot: u32) -> Option<FlowRaw> {
        let p = self.slot_ptr(slot)?;
        // SAFETY: in the mapping; a volatile read, since the program may
        // write concurrently (fields it writes are naturally aligned and
        // read whole).
        Some(unsafe { std::ptr::read_volatile(p) })
    }

    /// Writes slot `slot` but its `ctl` word (the caller owns the slot).
    pub(super) fn write(&self, slot: u32, v: &FlowRaw) {
        let Some(p) = self.slot_ptr(slot) else { return };
        // SAFETY: in the mapping, and owned by this worker while it is not
        // ACTIVE or BUSY: the program reads it then, never writes it. `ctl`
        // (the first 8 bytes) is left alone.
        unsafe {
            let dst = p.cast::<u8>().add(8);
            let src = std::ptr::from_ref(v).cast::<u8>().add(8);
            std::ptr::copy_nonoverlapping(src, dst, std::mem::size_of::<FlowRaw>() - 8);
        }
    }

    /// Publishes a pending slot: the core's window state `tcp`, then (release)
    /// `add` more packets gone per direction; `ready` bits if given.
    pub(super) fn publish(
        &self,
        slot: u32,
        tcp: Option<TcpFast>,
        add: [u32; 2],
        ready: Option<u32>,
    ) {
        let Some(ptr) = self.slot_ptr(slot) else {
            return;
        };
        // SAFETY: in the mapping; while the slot is PENDING the program only
        // reads it. The window state is written before `done` is published
        // (release), so a program that sees the new `done` sees the state that
        // goes with it.
        unsafe {
            if let Some(t) = tcp {
                let dir = |d: &TcpDir| TcpDirRaw {
                    end: d.end,
                    maxend: d.maxend,
                    maxwin: d.maxwin,
                    maxack: d.maxack,
                    scale: d.scale,
                    flags: d.flags,
                    pad: 0,
                };
                std::ptr::addr_of_mut!((*ptr).tcp)
                    .write_volatile([dir(&t.seen[0]), dir(&t.seen[1])]);
                std::ptr::addr_of_mut!((*ptr).last_dir).write_volatile(t.last_dir);
                std::ptr::addr_of_mut!((*ptr).last_seq).write_volatile(t.last_seq);
                std::ptr::addr_of_mut!((*ptr).last_ack).write_volatile(t.last_ack);
                std::ptr::addr_of_mut!((*ptr).last_end).write_volatile(t.last_end);
                std::ptr::addr_of_mut!((*ptr).last_win).write_volatile(t.last_win);
                std::ptr::addr_of_mut!((*ptr).retrans).write_volatile(t.retrans);
            }
            if let Some(r) = ready {
                std::ptr::addr_of_mut!((*ptr).ready).write_volatile(r);
            }
            std::sync::atomic::fence(Ordering::Release);
            for (d, n) in add.iter().enumerate() {
                if *n > 0 {
                    let done = &*std::ptr::addr_of_mut!((*ptr).done[d])
                        .cast::<std::sync::atomic::AtomicU32>();
                    done.fetch_add(*n, Ordering::Release);
                }
            }
        }
    }

    /// Writes the worker-only counters already handed to the core.
    pub(super) fn write_reported(&self, slot: u32, packets: [u64; 2], bytes: [u64; 2]) {
        let Some(p) = self.slot_ptr(slot) else { return };
        // SAFETY: in the mapping; `reported_*` are worker-only fields the
        // program never reads or writes.
        unsafe {
            std::ptr::addr_of_mut!((*p).reported_packets).write_volatile(packets);
            std::ptr::addr_of_mut!((*p).reported_bytes).write_volatile(bytes);
        }
    }

    /// Counts one more packet of direction `dir` (0, 1) the slow path took
    /// while the flow was pending; false if there is no such slot.
    pub(super) fn add_stale(&self, slot: u32, dir: u8) -> bool {
        let Some(p) = self.slot_ptr(slot) else {
            return false;
        };
        // SAFETY: in the mapping; `stale` is a worker-only field.
        unsafe {
            let st = std::ptr::addr_of_mut!((*p).stale);
            st.write_volatile(st.read_volatile() + (1 << (32 * u32::from(dir & 1))));
        }
        true
    }

    /// Takes one of the packets [`Self::add_stale`] counted for direction
    /// `dir`: true if there was one.
    pub(super) fn take_stale(&self, slot: u32, dir: u8) -> bool {
        let Some(p) = self.slot_ptr(slot) else {
            return false;
        };
        let shift = 32 * u32::from(dir & 1);
        // SAFETY: in the mapping; `stale` is a worker-only field.
        unsafe {
            let st = std::ptr::addr_of_mut!((*p).stale);
            let v = st.read_volatile();
            if (v >> shift) & 0xffff_ffff != 0 {
                st.write_volatile(v - (1 << shift));
                return true;
            }
        }
        false
    }

    /// Forgets the packets [`Self::add_stale`] counted.
    pub(super) fn clear_stale(&self, slot: u32) {
        if let Some(p) = self.slot_ptr(slot) {
            // SAFETY: in the mapping; `stale` is a worker-only field.
            unsafe { std::ptr::addr_of_mut!((*p).stale).write_volatile(0) };
        }
    }

    /// The slot's `done` counts and `ready` bits (both written by the
    /// worker only).
    pub(super) fn done_and_ready(&self, slot: u32) -> Option<([u32; 2], u32)> {
        let p = self.slot_ptr(slot)?;
        // SAFETY: in the mapping; `done` and `ready` are written by the
        // worker only.
        unsafe {
            Some((
                std::ptr::addr_of!((*p).done).read_volatile(),
                std::ptr::addr_of!((*p).ready).read_volatile(),
            ))
        }
    }
}

/// `flows4`: buckets of four entries of four words (src, dst, ports,
/// meta), as bpf/tollgate.h lays them out; the program only reads them.
pub(super) type Index4 = Mapped<[AtomicU32; 16]>;

impl Index4 {
    /// Bucket `b` (modulo the bucket count).
    pub(super) fn at(&self, b: usize) -> &[AtomicU32; 16] {
        let b = b % self.len;
        // SAFETY: `b < len`: inside the mapping, 64-byte aligned (page-aligned
        // mapping, 64-byte values); AtomicU32 has u32's layout; the program
        // only reads these words.
        unsafe { &*self.ptr.as_ptr().add(b) }
    }

    /// `buckets` buckets of `flows4`'s layout in anonymous shared memory
    /// (tests).
    #[cfg(test)]
    pub(super) fn anonymous(buckets: usize) -> std::io::Result<Index4> {
        let fd = crate::sys::memfd(c"tg-flows4-test", buckets * 64)?;
        // The mapping keeps the memory once the file is closed.
        Index4::new(std::os::fd::AsRawFd::as_raw_fd(&fd), buckets)
    }
}
