//! The system calls Tollgate makes outside the AF_XDP rings ([`crate::xsk`])
//! and the fast path's shared memory ([`crate::offload`]'s `shm`), each
//! behind a safe function: namespaces, eventfds, poll, random words, clocks,
//! interface ioctls, BPF program and map probes, raw sockets. The rest of
//! the crate (and the crates above it) has no `unsafe` of its own: the lint
//! forbids it there, so this file, `xsk.rs` and `offload/shm.rs` are where
//! to audit it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_sys as bpf;

/// An errno as `std::io::Error`.
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Takes ownership of a descriptor a system call just returned (`fd >= 0`),
/// or the errno it set.
fn owned(fd: i32) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor the call just made; nothing else
    // owns it (closed once, on drop).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace of the open file `ns`
/// (`/run/netns/NAME`).
pub fn setns_net(ns: &File) -> std::io::Result<()> {
    // SAFETY: `ns` is an open file; setns only changes the calling thread's
    // network namespace (the kernel checks the file's type).
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into a new network namespace of its own.
pub fn unshare_net() -> std::io::Result<()> {
    // SAFETY: unshare only moves this thread into a new network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking eventfd, as a file (8-byte writes add, reads take all).
pub fn eventfd() -> std::io::Result<File> {
    // SAFETY: eventfd takes no pointers; the result is checked by `owned`.
    owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) }).map(File::from)
}

/// `poll(2)` on `fds` for at most `timeout_ms`: how many are ready, 0 on
/// time-out, negative on error (EINTR).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> i32 {
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` is a valid, exclusively borrowed array of `n` pollfd for
    // the call's duration (a negative fd is ignored by poll).
    unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) }
}

/// Fills `buf` from the kernel's random source; false if it could not
/// (then `buf` holds what it held).
pub fn random(buf: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(got).is_ok_and(|g| g == buf.len())
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the XDP program's
/// `bpf_ktime_get_*ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The interface index of `name` in the calling thread's namespace (0: none).
pub fn if_nametoindex(name: &std::ffi::CStr) -> u32 {
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The kernel's release (`uname -r`), empty if it cannot say.
pub fn uname_release() -> String {
    // SAFETY: all-zero is a valid utsname (arrays of c_char).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname the call fills.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Raises the limit on open files to at least `want` (soft and hard; as
/// far as the hard limit goes when the hard one cannot move): the soft
/// limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write structs we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            lim.rlim_cur
        } else {
            1024
        }
    }
}

/// Sets `handler` (which must only touch atomics: async-signal-safe) for
/// each of `signals`.
pub fn on_signals(signals: &[i32], handler: extern "C" fn(i32)) {
    for &sig in signals {
        // SAFETY: the caller's handler is async-signal-safe (its contract);
        // `signal` replaces the default disposition.
        unsafe {
            libc::signal(sig, handler as *const () as libc::sighandler_t);
        }
    }
}

/// A raw AF_PACKET socket (sends whole Ethernet frames).
pub fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the result is checked.
    owned(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
}

/// Sends `frame` (destination MAC first) out of interface `ifindex` through
/// the packet socket `sock`.
pub fn packet_send(sock: &OwnedFd, ifindex: i32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0800u16.to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    for (d, s) in addr.sll_addr.iter_mut().zip(frame.iter().take(6)) {
        *d = *s;
    }
    // SAFETY: `frame` is valid for its length and `addr` is a sockaddr_ll of
    // the size given; sendto reads both only.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an AF_XDP socket can be made: the errno when not.
pub fn af_xdp_socket() -> Result<(), i32> {
    // SAFETY: socket has no memory preconditions; the result is checked.
    owned(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// An anonymous memory file of `len` bytes (tests map it like a BPF array).
pub fn memfd(name: &std::ffi::CStr, len: usize) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a valid C string; the result is checked.
    let fd = owned(unsafe { libc::memfd_create(name.as_ptr(), 0) })?;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: ftruncate sizes the file we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// What interface `ifindex` says it can do with XDP (`NETDEV_XDP_ACT_*`;
/// 0 when the kernel does not say), through libbpf.
pub fn xdp_query_features(ifindex: i32) -> Result<u64, i32> {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut opts: bpf::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<bpf::bpf_xdp_query_opts>() as bpf::size_t;
    // SAFETY: `opts` is a valid, sized bpf_xdp_query_opts that libbpf
    // writes for the call's duration only.
    let r = unsafe { bpf::bpf_xdp_query(ifindex, 0, &mut opts) };
    if r < 0 {
        return Err(-r);
    }
    Ok(opts.feature_flags)
}

/// Loads `insns` as an XDP program through the verifier; on refusal the
/// errno, with the verifier's log in `log` (NUL-terminated when it fits).
pub fn prog_load_xdp(insns: &[bpf::bpf_insn], log: &mut [u8]) -> Result<OwnedFd, i32> {
    let mut opts = bpf::bpf_prog_load_opts {
        sz: std::mem::size_of::<bpf::bpf_prog_load_opts>() as bpf::size_t,
        log_buf: log.as_mut_ptr().cast(),
        log_size: u32::try_from(log.len()).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: the name and licence are NUL-terminated literals; `insns`
    // lives for the call, its length is passed; `opts` is sized and its log
    // buffer (writable, `log_size` bytes) outlives the call.
    let fd = unsafe {
        bpf::bpf_prog_load(
            bpf::BPF_PROG_TYPE_XDP,
            c"tg_probe".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as bpf::size_t,
            &mut opts,
        )
    };
    if fd < 0 {
        return Err(-fd);
    }
    owned(fd).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// Runs program `prog` once on `frame` with `BPF_PROG_TEST_RUN` (`flags`: 0
/// or `BPF_F_TEST_XDP_LIVE_FRAMES`): its return value, or the errno.
pub fn test_run_once(prog: &OwnedFd, frame: &[u8], flags: u32) -> Result<u32, i32> {
    let mut opts = bpf::bpf_test_run_opts {
        sz: std::mem::size_of::<bpf::bpf_test_run_opts>() as bpf::size_t,
        data_in: frame.as_ptr().cast(),
        data_size_in: u32::try_from(frame.len()).unwrap_or(0),
        repeat: 1,
        flags,
        ..Default::default()
    };
    // SAFETY: `opts` is sized, its input frame lives for the call, and it
    // has no output buffers.
    let r = unsafe { bpf::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if r < 0 {
        return Err(-r);
    }
    Ok(opts.retval)
}

/// Creates a one-entry map of `kind` (4-byte keys, `value`-byte values,
/// `flags`): `Ok` when the kernel accepts it (closed again), else the
/// errno. `mmap`: also maps its memory and unmaps it.
pub fn create_map(kind: bpf::bpf_map_type, value: u32, flags: u32, mmap: bool) -> Result<(), i32> {
    let opts = bpf::bpf_map_create_opts {
        sz: std::mem::size_of::<bpf::bpf_map_create_opts>() as bpf::size_t,
        map_flags: flags,
        ..Default::default()
    };
    // SAFETY: a NUL-terminated name and a sized options struct, both living
    // for the call.
    let fd = unsafe { bpf::bpf_map_create(kind, c"tg_probe".as_ptr(), 4, value, 1, &opts) };
    if fd < 0 {
        return Err(-fd);
    }
    let fd = owned(fd).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    if mmap {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // SAFETY: a fresh shared mapping of the map's one page, unmapped
        // right below and never dereferenced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_errno());
        }
        // SAFETY: `p` is the mapping of `page` bytes made above.
        unsafe { libc::munmap(p, page) };
    }
    Ok(())
}

/// `libbpf_probe_bpf_helper` for XDP programs: supported or not, or the
/// errno when it could not tell.
pub fn libbpf_probe_helper(id: bpf::bpf_func_id) -> Result<bool, i32> {
    // SAFETY: libbpf takes no options here (NULL) and loads and closes a
    // probe program of its own.
    let r = unsafe { bpf::libbpf_probe_bpf_helper(bpf::BPF_PROG_TYPE_XDP, id, std::ptr::null()) };
    if r < 0 {
        Err(-r)
    } else {
        Ok(r == 1)
    }
}

/// `libbpf_probe_bpf_map_type`.
pub fn libbpf_probe_map(kind: bpf::bpf_map_type) -> Result<bool, i32> {
    // SAFETY: libbpf takes no options here (NULL) and creates and closes a
    // probe map of its own.
    let r = unsafe { bpf::libbpf_probe_bpf_map_type(kind, std::ptr::null()) };
    if r < 0 {
        Err(-r)
    } else {
        Ok(r == 1)
    }
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ethtool_channels`: cmd, max rx/tx/other/combined, then the
/// current rx/tx/other/combined counts.
#[repr(C)]
struct EthtoolChannels([u32; 9]);

const ETHTOOL_GDRVINFO: u32 = 3;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Interface ioctls on a datagram socket: they ask the calling thread's
/// network namespace (sysfs would show the namespace it was mounted in).
pub struct Ioctl {
    sock: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl Ioctl {
    /// For interface `name` (None: a name too long, or no socket).
    pub fn new(name: &str) -> Option<Ioctl> {
        let bytes = name.as_bytes();
        if bytes.len() >= libc::IFNAMSIZ {
            return None;
        }
        let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, &b) in n.iter_mut().zip(bytes) {
            *d = b as libc::c_char;
        }
        // SAFETY: socket has no memory preconditions; the result is checked.
        let sock =
            owned(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
                .ok()?;
        Some(Ioctl { sock, name: n })
    }

    fn request(&self) -> libc::ifreq {
        // SAFETY: all-zero is a valid ifreq (a name array and a union of
        // plain data).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = self.name;
        req
    }

    /// `SIOCETHTOOL` with `data`.
    ///
    /// # Safety
    /// `data` must be the whole struct the ethtool command in its first
    /// word reads and writes.
    unsafe fn ethtool<T>(&self, data: &mut T) -> bool {
        let mut req = self.request();
        req.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast();
        // SAFETY: `req` names the interface (NUL-terminated: shorter than
        // IFNAMSIZ, zero-filled) and points at `data`, which outlives the
        // call and is what the command expects (the caller's promise).
        unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) == 0 }
    }

    /// The driver's name (`ethtool -i`).
    pub fn driver(&self) -> Option<String> {
        let mut info = DrvInfo {
            cmd: ETHTOOL_GDRVINFO,
            driver: [0; 32],
            version: [0; 32],
            fw_version: [0; 32],
            bus_info: [0; 32],
            erom_version: [0; 32],
            reserved2: [0; 12],
            n_priv_flags: 0,
            n_stats: 0,
            testinfo_len: 0,
            eedump_len: 0,
            regdump_len: 0,
        };
        // SAFETY: a whole ethtool_drvinfo for ETHTOOL_GDRVINFO.
        if !unsafe { self.ethtool(&mut info) } {
            return None;
        }
        let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
        let name = String::from_utf8_lossy(&info.driver[..end]).into_owned();
        (!name.is_empty()).then_some(name)
    }

    /// Receive queues (`ethtool -l`: rx plus combined channels).
    pub fn rx_queues(&self) -> Option<usize> {
        let mut ch = EthtoolChannels([0; 9]);
        ch.0[0] = ETHTOOL_GCHANNELS;
        // SAFETY: a whole ethtool_channels for ETHTOOL_GCHANNELS.
        if !unsafe { self.ethtool(&mut ch) } {
            return None;
        }
        usize::try_from(ch.0[5].saturating_add(ch.0[8])).ok()
    }

    /// The MTU.
    pub fn mtu(&self) -> Option<u32> {
        let mut req = self.request();
        // SAFETY: `req` names the interface; SIOCGIFMTU writes its MTU into
        // the request.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
            return None;
        }
        // SAFETY: SIOCGIFMTU succeeded: the union holds the MTU.
        u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
    }
}
