//! What the running kernel and each interface offer Tollgate, asked rather
//! than assumed, and what Tollgate chooses from it.
//!
//! [`Kernel::probe`] loads a few tiny programs and creates a few one-entry
//! maps and one socket, and closes them all before it returns: nothing it
//! does outlives the call. [`Interface::probe`] only asks (netlink, ethtool,
//! sysfs). [`choose`] is a pure function from the features and the settings
//! to the variant Tollgate runs, one line of reason per choice;
//! `tollgate check --system` prints all of it, `tollgate run` and
//! `tollgate lab` log the choices once at start.
//!
//! `TOLLGATE_FORCE_NO_META=1` makes the probe report `bpf_xdp_adjust_meta`
//! as unavailable, so the prefix fallback can be exercised on kernels that
//! have the helper.

use std::os::fd::OwnedFd;

use libbpf_sys as sys;

use crate::sys as os;
use crate::xsk::XdpMode;

/// The environment variable that hides `bpf_xdp_adjust_meta` from the probe.
pub const FORCE_NO_META: &str = "TOLLGATE_FORCE_NO_META";

/// `NETDEV_XDP_ACT_*`: what an interface says it can do with XDP.
pub mod act {
    /// XDP_PASS, XDP_DROP, XDP_TX, XDP_ABORTED in the driver (native XDP).
    pub const BASIC: u64 = 1;
    /// XDP_REDIRECT out of the driver's XDP program.
    pub const REDIRECT: u64 = 2;
    /// Transmits frames redirected to it (`ndo_xdp_xmit`).
    pub const NDO_XMIT: u64 = 4;
    /// AF_XDP zero-copy.
    pub const XSK_ZEROCOPY: u64 = 8;
    /// The program runs on the NIC.
    pub const HW_OFFLOAD: u64 = 16;
    /// Multi-buffer frames on receive.
    pub const RX_SG: u64 = 32;
    /// Multi-buffer frames through `ndo_xdp_xmit`.
    pub const NDO_XMIT_SG: u64 = 64;

    /// The names of the flags, in bit order.
    pub const NAMES: [(u64, &str); 7] = [
        (BASIC, "basic"),
        (REDIRECT, "redirect"),
        (NDO_XMIT, "ndo-xmit"),
        (XSK_ZEROCOPY, "xsk-zerocopy"),
        (HW_OFFLOAD, "hw-offload"),
        (RX_SG, "rx-sg"),
        (NDO_XMIT_SG, "ndo-xmit-sg"),
    ];
}

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Available.
    Yes,
    /// Not available.
    No,
    /// Could not be told (not allowed to ask, or the kernel does not say).
    Unknown,
}

impl Status {
    /// `yes`, `no` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Yes => "yes",
            Status::No => "no",
            Status::Unknown => "unknown",
        }
    }

    fn of(b: bool) -> Status {
        if b {
            Status::Yes
        } else {
            Status::No
        }
    }

    fn of_opt(b: Option<bool>) -> Status {
        b.map_or(Status::Unknown, Status::of)
    }
}

/// One line of the report: a feature, whether it is there, the evidence,
/// and what Tollgate does with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The feature.
    pub feature: String,
    /// Whether it is there.
    pub status: Status,
    /// The evidence: flag values, the errno, the version.
    pub detail: String,
    /// What Tollgate does with it.
    pub choice: String,
}

fn row(feature: &str, status: Status, detail: impl Into<String>, choice: impl Into<String>) -> Row {
    Row {
        feature: feature.to_string(),
        status,
        detail: detail.into(),
        choice: choice.into(),
    }
}

/// The running kernel's answers. The booleans are true only when the
/// feature was seen to work; [`KernelFeatures::rows`] holds the evidence
/// (and tells "no" from "could not ask").
#[derive(Clone, Debug, Default)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// The release's leading `major.minor.patch`, if it has one.
    pub version: Option<(u32, u32, u32)>,
    /// An XDP program can be loaded (privileges, and BPF at all).
    pub bpf_load: bool,
    /// Why not, when it cannot.
    pub bpf_load_error: Option<String>,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// XDP programs may call `bpf_xdp_adjust_meta` (false also when
    /// [`FORCE_NO_META`] hides it).
    pub adjust_meta: bool,
    /// `bpf_xdp_adjust_meta` is hidden by [`FORCE_NO_META`].
    pub meta_forced_off: bool,
    /// XDP programs may call `bpf_xdp_adjust_head`.
    pub adjust_head: bool,
    /// XDP programs may call `bpf_xdp_adjust_tail`.
    pub adjust_tail: bool,
    /// XDP programs may call `bpf_redirect_map`.
    pub redirect_map: bool,
    /// XDP programs may call `bpf_loop`.
    pub bpf_loop: bool,
    /// XDP programs may call `bpf_ktime_get_coarse_ns`.
    pub ktime_coarse: bool,
    /// XDP programs may call `bpf_csum_diff`.
    pub csum_diff: bool,
    /// `BPF_MAP_TYPE_XSKMAP` maps can be created.
    pub xskmap: bool,
    /// `BPF_MAP_TYPE_DEVMAP` maps can be created.
    pub devmap: bool,
    /// Arrays with `BPF_F_MMAPABLE` can be created and mapped.
    pub mmapable_array: bool,
    /// Hashes with `BPF_F_NO_PREALLOC` can be created.
    pub hash_no_prealloc: bool,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` maps can be created.
    pub percpu_array: bool,
    /// `BPF_PROG_TEST_RUN` runs XDP programs.
    pub test_run: bool,
    /// ... also with `BPF_F_TEST_XDP_LIVE_FRAMES`.
    pub test_run_live: bool,
    /// `socket(AF_XDP, SOCK_RAW, 0)` works.
    pub af_xdp: bool,
    /// Why not, when it does not.
    pub af_xdp_error: Option<String>,
    /// AF_XDP sockets take `XDP_USE_NEED_WAKEUP` (Linux 5.4).
    pub need_wakeup: bool,
    /// One UMEM can be shared by sockets of different devices (Linux 5.10).
    pub shared_umem: bool,
    /// One row per feature, in the order of the report.
    pub rows: Vec<Row>,
}

/// Asks the running kernel.
pub struct Kernel;

/// Asks about one network interface (in the calling thread's namespace).
pub struct Interface;

/// What one interface offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceFeatures {
    /// Its name.
    pub name: String,
    /// Its index; `None`: no such interface here.
    pub ifindex: Option<i32>,
    /// Its driver (ethtool), if it says.
    pub driver: Option<String>,
    /// `NETDEV_XDP_ACT_*` flags; `None`: the kernel does not say (before
    /// Linux 6.3) or the query failed ([`Self::xdp_error`]).
    pub xdp_flags: Option<u64>,
    /// Why the XDP features could not be asked.
    pub xdp_error: Option<String>,
    /// Receive queues (sysfs).
    pub rx_queues: Option<usize>,
    /// Its MTU (sysfs).
    pub mtu: Option<u32>,
}

impl InterfaceFeatures {
    fn flag(&self, bit: u64) -> Option<bool> {
        self.xdp_flags.map(|f| f & bit != 0)
    }

    /// The driver runs XDP programs itself (else the kernel's generic,
    /// skb-based XDP).
    pub fn native(&self) -> Option<bool> {
        self.flag(act::BASIC)
    }

    /// AF_XDP zero-copy is possible.
    pub fn zero_copy(&self) -> Option<bool> {
        self.flag(act::XSK_ZEROCOPY)
    }

    /// It transmits frames the fast path redirects to it.
    pub fn redirect_target(&self) -> Option<bool> {
        self.flag(act::NDO_XMIT)
    }

    /// It receives multi-buffer frames in XDP.
    pub fn multi_buffer(&self) -> Option<bool> {
        self.flag(act::RX_SG)
    }

    fn driver_name(&self) -> &str {
        self.driver.as_deref().unwrap_or("unknown")
    }

    /// The report's rows for this interface.
    pub fn rows(&self) -> Vec<Row> {
        let n = &self.name;
        let Some(idx) = self.ifindex else {
            return vec![row(
                &format!("{n}: exists"),
                Status::No,
                "no such interface in this network namespace",
                "Tollgate cannot run on it",
            )];
        };
        let mut rows = vec![row(
            &format!("{n}: exists"),
            Status::Yes,
            format!(
                "ifindex {idx}, driver {}, {} rx queue(s), mtu {}",
                self.driver_name(),
                self.rx_queues.map_or("?".into(), |q| q.to_string()),
                self.mtu.map_or("?".into(), |m| m.to_string())
            ),
            "one worker per queue (queues = \"all\")",
        )];
        let flags_detail = match (self.xdp_flags, &self.xdp_error) {
            (Some(f), _) => format!("0x{f:x} {}", flag_names(f)),
            (None, Some(e)) => e.clone(),
            (None, None) => "the kernel does not report them (before Linux 6.3)".into(),
        };
        rows.push(row(
            &format!("{n}: XDP features"),
            if self.xdp_flags.is_some() {
                Status::Yes
            } else {
                Status::Unknown
            },
            flags_detail,
            "the choices below follow from them",
        ));
        rows.push(row(
            &format!("{n}: native XDP"),
            Status::of_opt(self.native()),
            "NETDEV_XDP_ACT_BASIC",
            match self.native() {
                Some(true) => "program attached in the driver",
                Some(false) => "generic (skb) XDP: slower, copy mode only",
                None => "the kernel picks: native if the driver has it, else generic",
            },
        ));
        rows.push(row(
            &format!("{n}: AF_XDP zero-copy"),
            Status::of_opt(self.zero_copy()),
            "NETDEV_XDP_ACT_XSK_ZEROCOPY",
            match self.zero_copy() {
                Some(true) => "xdp_mode auto: zero-copy",
                Some(false) => "xdp_mode auto: copy",
                None => "xdp_mode auto: zero-copy tried first, then copy",
            },
        ));
        rows.push(row(
            &format!("{n}: redirect target"),
            Status::of_opt(self.redirect_target()),
            "NETDEV_XDP_ACT_NDO_XMIT",
            match self.redirect_target() {
                Some(false) => "offload = true is refused on it",
                _ => "the fast path (offload) may send frames out of it",
            },
        ));
        rows.push(row(
            &format!("{n}: multi-buffer"),
            Status::of_opt(self.multi_buffer()),
            "NETDEV_XDP_ACT_RX_SG",
            "not used: frames must fit one 4096-byte buffer (MTU at most 3498)",
        ));
        rows
    }
}

/// `"basic|redirect|..."` for flags `f` (unknown bits in hex).
pub fn flag_names(f: u64) -> String {
    let mut names: Vec<String> = act::NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = act::NAMES.iter().fold(0, |a, (bit, _)| a | bit);
    if f & !known != 0 {
        names.push(format!("0x{:x}", f & !known));
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// The symbolic name and text of an errno, e.g. `EPERM (Operation not
/// permitted)`.
pub fn errno_text(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        // The kernel's internal ENOTSUPP, which libc does not name.
        524 => return "ENOTSUPP (operation not supported by the kernel)".into(),
        _ => return std::io::Error::from_raw_os_error(e).to_string(),
    };
    let text = std::io::Error::from_raw_os_error(e).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    format!("{name} ({text})")
}

/// The leading `major.minor.patch` of a kernel release string.
pub fn parse_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = [0u32; 3];
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    for (i, p) in parts.iter_mut().enumerate() {
        match it.next() {
            Some(s) if !s.is_empty() => *p = s.parse().ok()?,
            _ if i >= 2 => break,
            _ => return None,
        }
    }
    Some((parts[0], parts[1], parts[2]))
}

fn uname_release() -> String {
    os::uname_release()
}

// --- raw BPF instructions -------------------------------------------------

const BPF_ALU64_MOV_K: u8 = 0x07 | 0xb0;
const BPF_JMP_CALL: u8 = 0x05 | 0x80;
const BPF_JMP_EXIT: u8 = 0x05 | 0x90;

/// XDP action codes the probes' programs return.
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

fn insn(code: u8, dst: u8, imm: i32) -> sys::bpf_insn {
    sys::bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: sys::bpf_insn::new_bitfield_1(dst, 0),
        off: 0,
        imm,
    }
}

/// `r0 = action; exit`.
fn returning(action: i32) -> Vec<sys::bpf_insn> {
    vec![insn(BPF_ALU64_MOV_K, 0, action), insn(BPF_JMP_EXIT, 0, 0)]
}

/// `r2 = arg; call helper(r1 = ctx, r2); r0 = XDP_PASS; exit`.
pub fn calling(helper: u32, arg: i32) -> Vec<sys::bpf_insn> {
    vec![
        insn(BPF_ALU64_MOV_K, 2, arg),
        insn(BPF_JMP_CALL, 0, i32::try_from(helper).unwrap_or(i32::MAX)),
        insn(BPF_ALU64_MOV_K, 0, XDP_PASS),
        insn(BPF_JMP_EXIT, 0, 0),
    ]
}

/// Why a program was refused: the errno and the verifier's last words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The errno.
    pub errno: i32,
    /// The verifier log's last non-empty line, if any.
    pub verifier: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", errno_text(self.errno))?;
        if !self.verifier.is_empty() {
            write!(f, ": {}", self.verifier)?;
        }
        Ok(())
    }
}

/// Loads `insns` as an XDP program through the verifier.
pub fn load_xdp(insns: &[sys::bpf_insn]) -> Result<OwnedFd, LoadError> {
    let mut log = vec![0u8; 16 * 1024];
    os::prog_load_xdp(insns, &mut log).map_err(|errno| {
        let text =
            String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())])
                .into_owned();
        let verifier = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("processed "))
            .unwrap_or("")
            .trim()
            .to_string();
        LoadError { errno, verifier }
    })
}

/// Runs program `prog` once on a 64-byte frame with `BPF_PROG_TEST_RUN`
/// (`flags`: 0 or `BPF_F_TEST_XDP_LIVE_FRAMES`); its return value.
fn test_run(prog: &OwnedFd, flags: u32) -> Result<u32, i32> {
    let mut frame = [0u8; 64];
    // An Ethernet header: broadcast to a locally administered source, IPv4.
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    os::test_run_once(prog, &frame, flags)
}

/// Creates a one-entry map: `Ok` when the kernel accepts it (it is closed
/// again), else the errno. `mmap`: also map its memory and unmap it.
fn create_map(kind: sys::bpf_map_type, value: u32, flags: u32, mmap: bool) -> Result<(), i32> {
    os::create_map(kind, value, flags, mmap)
}

/// Whether XDP programs may call helper `id`, or why it could not be told.
/// The helpers the fast path's marks depend on are asked with a real load
/// of a program calling them (the context and one number, as Tollgate
/// calls them): libbpf's probe only recognises some verifiers' wordings of
/// a refusal and takes any other failure as "supported".
fn helper(id: sys::bpf_func_id) -> Result<bool, i32> {
    let arg = match id {
        sys::BPF_FUNC_xdp_adjust_meta | sys::BPF_FUNC_xdp_adjust_head => Some(-8),
        sys::BPF_FUNC_xdp_adjust_tail => Some(8),
        _ => None,
    };
    if let Some(arg) = arg {
        return match load_xdp(&calling(id, arg)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == libc::EPERM => Err(e.errno),
            Err(_) => Ok(false),
        };
    }
    os::libbpf_probe_helper(id)
}

/// `libbpf_probe_bpf_map_type`.
fn map_type(kind: sys::bpf_map_type) -> Result<bool, i32> {
    os::libbpf_probe_map(kind)
}

/// Creates and closes an AF_XDP socket: the errno when it cannot.
fn af_xdp_socket() -> Result<(), i32> {
    os::af_xdp_socket()
}

fn at_least(v: Option<(u32, u32, u32)>, major: u32, minor: u32) -> Option<bool> {
    v.map(|(a, b, _)| (a, b) >= (major, minor))
}

fn forced_no_meta() -> bool {
    std::env::var(FORCE_NO_META).as_deref() == Ok("1")
}

/// A helper the probe asks about: its field, name, id, the kernel that
/// brought it to XDP and what Tollgate does with it (when there, when not).
struct HelperProbe {
    name: &'static str,
    id: sys::bpf_func_id,
    since: &'static str,
    yes: &'static str,
    no: &'static str,
    unknown: &'static str,
}

const REQUIRED: &str = "required: the XDP program calls it";

const HELPERS: [HelperProbe; 7] = [
    HelperProbe {
        name: "bpf_xdp_adjust_meta",
        id: sys::BPF_FUNC_xdp_adjust_meta,
        since: "4.15",
        yes: "fast-path marks in XDP metadata",
        no: "fast-path marks in a frame prefix (if bpf_xdp_adjust_head)",
        unknown: "decides where the fast-path marks go",
    },
    HelperProbe {
        name: "bpf_xdp_adjust_head",
        id: sys::BPF_FUNC_xdp_adjust_head,
        since: "4.10",
        yes: "the prefix fallback for the fast-path marks",
        no: "no prefix fallback",
        unknown: "the prefix fallback for the fast-path marks",
    },
    HelperProbe {
        name: "bpf_xdp_adjust_tail",
        id: sys::BPF_FUNC_xdp_adjust_tail,
        since: "4.18",
        yes: "not used",
        no: "not used",
        unknown: "not used",
    },
    HelperProbe {
        name: "bpf_redirect_map",
        id: sys::BPF_FUNC_redirect_map,
        since: "4.14",
        yes: "frames to the sockets and the fast path out",
        no: REQUIRED,
        unknown: REQUIRED,
    },
    HelperProbe {
        name: "bpf_loop",
        id: sys::BPF_FUNC_loop,
        since: "5.17",
        yes: "the fast path waits on a busy flow with it",
        no: REQUIRED,
        unknown: REQUIRED,
    },
    HelperProbe {
        name: "bpf_ktime_get_coarse_ns",
        id: sys::BPF_FUNC_ktime_get_coarse_ns,
        since: "5.11",
        yes: "the fast path's last-seen times",
        no: REQUIRED,
        unknown: REQUIRED,
    },
    HelperProbe {
        name: "bpf_csum_diff",
        id: sys::BPF_FUNC_csum_diff,
        since: "4.6",
        yes: "the fast path verifies checksums with it",
        no: REQUIRED,
        unknown: REQUIRED,
    },
];

const REQUIRED_MAP: &str = "required: the XDP program declares it";

/// How a map type is probed.
enum How {
    /// `libbpf_probe_bpf_map_type`.
    Libbpf(sys::bpf_map_type),
    /// Created (and mapped) here, with flags libbpf's probe does not set.
    Create {
        kind: sys::bpf_map_type,
        flags: u32,
        mmap: bool,
    },
}

/// A map type the probe asks about.
struct MapProbe {
    name: &'static str,
    since: &'static str,
    how: How,
    yes: &'static str,
}

const MAPS: [MapProbe; 5] = [
    MapProbe {
        name: "XSKMAP",
        since: "4.18",
        how: How::Libbpf(sys::BPF_MAP_TYPE_XSKMAP),
        yes: "frames to the AF_XDP sockets",
    },
    MapProbe {
        name: "DEVMAP",
        since: "4.14",
        how: How::Libbpf(sys::BPF_MAP_TYPE_DEVMAP),
        yes: "the fast path's egress ports",
    },
    MapProbe {
        name: "ARRAY + BPF_F_MMAPABLE",
        since: "5.5",
        how: How::Create {
            kind: sys::BPF_MAP_TYPE_ARRAY,
            flags: sys::BPF_F_MMAPABLE,
            mmap: true,
        },
        yes: "the fast path's flow tables, shared with the workers",
    },
    MapProbe {
        name: "HASH + BPF_F_NO_PREALLOC",
        since: "4.6",
        how: How::Create {
            kind: sys::BPF_MAP_TYPE_HASH,
            flags: sys::BPF_F_NO_PREALLOC,
            mmap: false,
        },
        yes: "the fast path's flow index",
    },
    MapProbe {
        name: "PERCPU_ARRAY",
        since: "4.6",
        how: How::Libbpf(sys::BPF_MAP_TYPE_PERCPU_ARRAY),
        yes: "the fast path's punt counters",
    },
];

impl Kernel {
    /// Asks the running kernel everything the report shows.
    pub fn probe() -> KernelFeatures {
        let mut k = KernelFeatures {
            release: uname_release(),
            ..KernelFeatures::default()
        };
        k.version = parse_version(&k.release);
        k.rows.push(row(
            "kernel release",
            Status::of(!k.release.is_empty()),
            k.release.clone(),
            "Tollgate needs Linux 5.17 or later (bpf_loop)",
        ));

        // Loading anything at all: privileges, and BPF itself.
        match load_xdp(&returning(XDP_PASS)) {
            Ok(_) => k.bpf_load = true,
            Err(e) => {
                let mut why = e.to_string();
                if matches!(e.errno, libc::EPERM | libc::EACCES) {
                    why.push_str(": run as root (or with CAP_BPF and CAP_NET_ADMIN)");
                }
                k.bpf_load_error = Some(why);
            }
        }
        k.rows.push(row(
            "load XDP programs",
            Status::of(k.bpf_load),
            k.bpf_load_error.clone().unwrap_or_else(|| {
                // SAFETY: geteuid has no preconditions.
                format!("a 2-instruction XDP program loaded (euid {})", os::euid())
            }),
            if k.bpf_load {
                "Tollgate loads its XDP program"
            } else {
                "Tollgate cannot run"
            },
        ));

        k.btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
        k.rows.push(row(
            "BTF",
            Status::of(k.btf),
            "/sys/kernel/btf/vmlinux",
            "not needed: Tollgate's programs carry their own BTF and no CO-RE relocations",
        ));

        let unknown = |what: &str| {
            format!(
                "{what}: cannot tell ({})",
                if k.bpf_load {
                    "probe failed"
                } else {
                    "cannot load BPF programs"
                }
            )
        };
        let forced = forced_no_meta();
        for h in &HELPERS {
            let (status, mut detail, found) = if !k.bpf_load {
                (Status::Unknown, unknown("libbpf_probe_bpf_helper"), false)
            } else {
                match helper(h.id) {
                    Ok(true) => (Status::Yes, format!("helper #{}", h.id), true),
                    Ok(false) => (
                        Status::No,
                        format!(
                            "helper #{}: the verifier refuses it in XDP programs (Linux {}+)",
                            h.id, h.since
                        ),
                        false,
                    ),
                    Err(e) => (
                        Status::Unknown,
                        format!("libbpf_probe_bpf_helper: {}", errno_text(e)),
                        false,
                    ),
                }
            };
            let mut status = status;
            let mut found = found;
            if h.id == sys::BPF_FUNC_xdp_adjust_meta && forced {
                detail = format!(
                    "forced by {FORCE_NO_META} (the kernel: {})",
                    status.as_str()
                );
                status = Status::No;
                found = false;
                k.meta_forced_off = true;
            }
            match h.id {
                sys::BPF_FUNC_xdp_adjust_meta => k.adjust_meta = found,
                sys::BPF_FUNC_xdp_adjust_head => k.adjust_head = found,
                sys::BPF_FUNC_xdp_adjust_tail => k.adjust_tail = found,
                sys::BPF_FUNC_redirect_map => k.redirect_map = found,
                sys::BPF_FUNC_loop => k.bpf_loop = found,
                sys::BPF_FUNC_ktime_get_coarse_ns => k.ktime_coarse = found,
                _ => k.csum_diff = found,
            }
            let choice = match status {
                Status::Yes => h.yes,
                Status::No => h.no,
                Status::Unknown => h.unknown,
            };
            k.rows.push(row(h.name, status, detail, choice));
        }

        for (i, m) in MAPS.iter().enumerate() {
            let (status, detail, found) = if !k.bpf_load {
                (Status::Unknown, unknown("map creation"), false)
            } else {
                match m.how {
                    How::Libbpf(kind) => match map_type(kind) {
                        Ok(true) => (Status::Yes, "libbpf_probe_bpf_map_type".into(), true),
                        Ok(false) => (
                            Status::No,
                            format!("the kernel refuses the map type (Linux {}+)", m.since),
                            false,
                        ),
                        Err(e) => (
                            Status::Unknown,
                            format!("libbpf_probe_bpf_map_type: {}", errno_text(e)),
                            false,
                        ),
                    },
                    How::Create { kind, flags, mmap } => match create_map(kind, 8, flags, mmap) {
                        Ok(()) => (
                            Status::Yes,
                            if mmap {
                                "created and mapped a 1-entry array".into()
                            } else {
                                "created a 1-entry map".into()
                            },
                            true,
                        ),
                        Err(e) => (
                            Status::No,
                            format!("{} (Linux {}+)", errno_text(e), m.since),
                            false,
                        ),
                    },
                }
            };
            match i {
                0 => k.xskmap = found,
                1 => k.devmap = found,
                2 => k.mmapable_array = found,
                3 => k.hash_no_prealloc = found,
                _ => k.percpu_array = found,
            }
            k.rows.push(row(
                m.name,
                status,
                detail,
                if found { m.yes } else { REQUIRED_MAP },
            ));
        }

        // BPF_PROG_TEST_RUN, plain and with live frames.
        let (status, detail) = if !k.bpf_load {
            (Status::Unknown, unknown("BPF_PROG_TEST_RUN"))
        } else {
            match load_xdp(&returning(XDP_PASS)).map_err(|e| e.to_string()) {
                Ok(prog) => match test_run(&prog, 0) {
                    Ok(rv) if rv == XDP_PASS as u32 => {
                        k.test_run = true;
                        (Status::Yes, "a 64-byte frame: XDP_PASS".into())
                    }
                    Ok(rv) => (
                        Status::No,
                        format!("the program returned {rv}, not XDP_PASS"),
                    ),
                    Err(e) => (Status::No, errno_text(e)),
                },
                Err(e) => (Status::Unknown, format!("loading the test program: {e}")),
            }
        };
        k.rows.push(row(
            "BPF_PROG_TEST_RUN (XDP)",
            status,
            detail,
            if k.test_run {
                "tollgate replay --offload runs the XDP program with it"
            } else {
                "tollgate replay --offload is unavailable"
            },
        ));
        let (status, detail) = if !k.bpf_load {
            (Status::Unknown, unknown("BPF_PROG_TEST_RUN"))
        } else {
            match load_xdp(&returning(XDP_DROP)).map_err(|e| e.to_string()) {
                Ok(prog) => match test_run(&prog, sys::BPF_F_TEST_XDP_LIVE_FRAMES) {
                    Ok(_) => {
                        k.test_run_live = true;
                        (
                            Status::Yes,
                            "a 64-byte frame on lo, dropped by the program".into(),
                        )
                    }
                    Err(e) => (Status::No, format!("{} (Linux 5.18+)", errno_text(e))),
                },
                Err(e) => (Status::Unknown, format!("loading the test program: {e}")),
            }
        };
        k.rows.push(row(
            "BPF_PROG_TEST_RUN live frames",
            status,
            detail,
            if k.test_run_live {
                "the bench's XDP traffic generator can send with it"
            } else {
                "the bench's XDP traffic generator cannot send with it"
            },
        ));

        // AF_XDP.
        match af_xdp_socket() {
            Ok(()) => k.af_xdp = true,
            Err(e) => {
                let mut why = errno_text(e);
                if e == libc::EPERM {
                    why.push_str(": needs root (CAP_NET_RAW)");
                } else if e == libc::EAFNOSUPPORT {
                    why.push_str(": kernel built without CONFIG_XDP_SOCKETS (Linux 4.18+)");
                }
                k.af_xdp_error = Some(why);
            }
        }
        k.rows.push(row(
            "AF_XDP sockets",
            Status::of(k.af_xdp),
            k.af_xdp_error
                .clone()
                .unwrap_or_else(|| "socket(AF_XDP, SOCK_RAW, 0)".into()),
            if k.af_xdp {
                "the workers' sockets"
            } else {
                "Tollgate cannot run"
            },
        ));
        let by_version = |min: (u32, u32), what: &str| -> (Status, String, bool) {
            if !k.af_xdp {
                return (Status::No, "no AF_XDP sockets".into(), false);
            }
            match at_least(k.version, min.0, min.1) {
                Some(b) => (
                    Status::of(b),
                    format!("{what} since Linux {}.{}", min.0, min.1),
                    b,
                ),
                None => (
                    Status::Unknown,
                    format!(
                        "{what} since Linux {}.{}; release not understood",
                        min.0, min.1
                    ),
                    false,
                ),
            }
        };
        let (status, detail, b) = by_version((5, 4), "bind flag XDP_USE_NEED_WAKEUP");
        k.need_wakeup = b;
        k.rows.push(row(
            "AF_XDP need_wakeup",
            status,
            detail,
            if b {
                "sockets bound with it: no system call per frame when busy"
            } else {
                "required: the sockets are bound with it"
            },
        ));
        let (status, detail, b) = by_version((5, 10), "XDP_SHARED_UMEM across devices");
        k.shared_umem = b;
        k.rows.push(row(
            "AF_XDP shared UMEM",
            status,
            detail,
            if b {
                "one UMEM per queue pair: forwarding without a copy"
            } else {
                "required: a queue pair's two sockets share one UMEM"
            },
        ));
        k
    }
}

impl Interface {
    /// Asks what interface `name` (in the calling thread's network
    /// namespace) offers.
    pub fn probe(name: &str) -> InterfaceFeatures {
        let mut f = InterfaceFeatures {
            name: name.to_string(),
            ..InterfaceFeatures::default()
        };
        let Ok(idx) = crate::bpf::ifindex(name) else {
            return f;
        };
        f.ifindex = Some(idx);
        if let Some(io) = os::Ioctl::new(name) {
            f.driver = io.driver();
            f.rx_queues = io.rx_queues();
            f.mtu = io.mtu();
        }
        match crate::bpf::xdp_features(idx) {
            Ok(Some(flags)) => f.xdp_flags = Some(flags),
            // libbpf leaves the flags 0 both when the kernel has no netdev
            // family (before 6.3: it does not say) and when the device has
            // no XDP feature at all (lo): the release tells them apart.
            Ok(None) => {
                f.xdp_flags = at_least(parse_version(&uname_release()), 6, 3)
                    .unwrap_or(false)
                    .then_some(0);
            }
            Err(e) => f.xdp_error = Some(e.to_string()),
        }
        f
    }
}

// --- choices ----------------------------------------------------------------

/// Where the XDP program leaves the marks the workers read for fast-path
/// flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaMode {
    /// XDP metadata in front of the frame (`bpf_xdp_adjust_meta`).
    Meta,
    /// 8 bytes in front of the frame, as part of it (`bpf_xdp_adjust_head`).
    Prefix,
    /// Neither helper: offload cannot run.
    None,
}

/// A [`MetaMode`] and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaChoice {
    /// The mode.
    pub mode: MetaMode,
    /// One line: what and why.
    pub reason: String,
}

/// The metadata rule: `bpf_xdp_adjust_meta` if the kernel allows it, else
/// a prefix if it allows `bpf_xdp_adjust_head`, else none (offload is
/// refused).
pub fn choose_meta(k: &KernelFeatures) -> MetaChoice {
    if !k.bpf_load {
        return MetaChoice {
            mode: MetaMode::None,
            reason: "metadata: cannot tell (BPF programs cannot be loaded)".into(),
        };
    }
    if k.adjust_meta {
        return MetaChoice {
            mode: MetaMode::Meta,
            reason: "metadata: XDP metadata in front of the frame (bpf_xdp_adjust_meta)".into(),
        };
    }
    let why = if k.meta_forced_off {
        format!("forced by {FORCE_NO_META}=1")
    } else {
        "kernel refuses bpf_xdp_adjust_meta".into()
    };
    if k.adjust_head {
        MetaChoice {
            mode: MetaMode::Prefix,
            reason: format!(
                "metadata: none ({why}): fast-path marks carried in a frame prefix (bpf_xdp_adjust_head)"
            ),
        }
    } else {
        MetaChoice {
            mode: MetaMode::None,
            reason: format!(
                "metadata: none ({why}, and bpf_xdp_adjust_head too): offload = true is refused"
            ),
        }
    }
}

/// Asks the kernel for the two helpers the metadata rule needs (honouring
/// [`FORCE_NO_META`]) and applies it. Cheap: a few tiny program loads.
pub fn meta_choice() -> MetaChoice {
    let mut k = KernelFeatures {
        bpf_load: load_xdp(&returning(XDP_PASS)).is_ok(),
        ..KernelFeatures::default()
    };
    if k.bpf_load {
        k.meta_forced_off = forced_no_meta();
        k.adjust_meta = !k.meta_forced_off && helper(sys::BPF_FUNC_xdp_adjust_meta) == Ok(true);
        k.adjust_head = helper(sys::BPF_FUNC_xdp_adjust_head) == Ok(true);
    }
    choose_meta(&k)
}

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `offload`: the XDP fast path.
    pub offload: bool,
    /// `xdp_mode`.
    pub mode: XdpMode,
}

impl Settings {
    /// The settings of a worker configuration.
    pub fn of(cfg: &crate::WorkerConfig) -> Settings {
        Settings {
            offload: cfg.offload,
            mode: cfg.mode,
        }
    }
}

/// One choice: its topic and a line saying what and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// `XDP`, `AF_XDP`, `metadata`, `offload`...
    pub topic: &'static str,
    /// What is chosen and why.
    pub line: String,
}

/// The variant Tollgate runs on these features with these settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The metadata choice.
    pub meta: MetaChoice,
    /// Every choice, one line each.
    pub choices: Vec<Choice>,
    /// Why Tollgate cannot run, if it cannot (empty: it can).
    pub fatal: Vec<String>,
}

impl Plan {
    /// True if Tollgate can run (perhaps degraded).
    pub fn can_run(&self) -> bool {
        self.fatal.is_empty()
    }

    /// The choices on one line (the start-up log line).
    pub fn summary(&self) -> String {
        let mut s = self
            .choices
            .iter()
            .map(|c| c.line.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if !self.fatal.is_empty() {
            s.push_str("; CANNOT RUN: ");
            s.push_str(&self.fatal.join("; "));
        }
        s
    }
}

fn names(ifs: &[&InterfaceFeatures]) -> String {
    ifs.iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join("/")
}

/// Groups interfaces by what is said about each, `(what, why)`, keeping
/// the first one's order: `"{what} on {names} ({why})"` per group, joined
/// with `", "`.
fn grouped(
    ifs: &[InterfaceFeatures],
    text: impl Fn(&InterfaceFeatures) -> (String, String),
) -> String {
    let mut groups: Vec<((String, String), Vec<&InterfaceFeatures>)> = Vec::new();
    for i in ifs {
        let t = text(i);
        match groups.iter_mut().find(|(g, _)| *g == t) {
            Some((_, v)) => v.push(i),
            None => groups.push((t, vec![i])),
        }
    }
    groups
        .iter()
        .map(|((what, why), v)| format!("{what} on {} ({why})", names(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns the features and the settings into the variant Tollgate runs,
/// one line of reason per choice, and what stops it from running. Pure.
pub fn choose(k: &KernelFeatures, ifs: &[InterfaceFeatures], s: &Settings) -> Plan {
    let mut choices = Vec::new();
    let mut fatal = Vec::new();
    let mut add = |topic, line: String| choices.push(Choice { topic, line });

    if k.bpf_load {
        let missing: Vec<&str> = [
            (k.redirect_map, "bpf_redirect_map"),
            (k.bpf_loop, "bpf_loop"),
            (k.ktime_coarse, "bpf_ktime_get_coarse_ns"),
            (k.csum_diff, "bpf_csum_diff"),
            (k.xskmap, "XSKMAP"),
            (k.devmap, "DEVMAP"),
            (k.mmapable_array, "mmapable ARRAY"),
            (k.hash_no_prealloc, "HASH without preallocation"),
            (k.percpu_array, "PERCPU_ARRAY"),
        ]
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, n)| *n)
        .collect();
        if missing.is_empty() {
            add("BPF", "BPF: Tollgate's XDP program loads here".into());
        } else {
            let m = missing.join(", ");
            add("BPF", format!("BPF: the XDP program cannot load (no {m})"));
            fatal.push(format!(
                "the kernel lacks what Tollgate's XDP program uses: {m} (Linux 5.17 or later has all of it)"
            ));
        }
    } else {
        let why = k.bpf_load_error.clone().unwrap_or_else(|| "refused".into());
        add("BPF", format!("BPF: XDP programs cannot be loaded ({why})"));
        fatal.push(format!("XDP programs cannot be loaded: {why}"));
    }

    if k.af_xdp {
        let mut extra = Vec::new();
        if !k.need_wakeup {
            extra.push("no need_wakeup");
        }
        if !k.shared_umem {
            extra.push("no UMEM shared across devices");
        }
        if extra.is_empty() {
            add(
                "AF_XDP",
                "AF_XDP: need_wakeup on, one UMEM per queue pair shared by both sides".into(),
            );
        } else {
            let e = extra.join(", ");
            add("AF_XDP", format!("AF_XDP: cannot open a queue pair ({e})"));
            fatal.push(format!(
                "AF_XDP sockets lack what Tollgate binds them with: {e} (Linux 5.10 or later)"
            ));
        }
    } else {
        let why = k.af_xdp_error.clone().unwrap_or_else(|| "refused".into());
        add("AF_XDP", format!("AF_XDP: no sockets ({why})"));
        fatal.push(format!("AF_XDP sockets cannot be created: {why}"));
    }

    let present: Vec<InterfaceFeatures> = ifs
        .iter()
        .filter(|i| i.ifindex.is_some())
        .cloned()
        .collect();
    for i in ifs.iter().filter(|i| i.ifindex.is_none()) {
        fatal.push(format!("interface {} does not exist", i.name));
    }
    if present.is_empty() {
        add(
            "XDP",
            "XDP: no interface given (--interface NAME, or --config with [interfaces])".into(),
        );
    } else {
        let line = grouped(&present, |i| {
            let d = i.driver_name();
            match i.native() {
                Some(true) => ("native".into(), format!("driver {d}")),
                Some(false) => (
                    "generic/skb".into(),
                    format!("driver {d}: no native XDP, slower"),
                ),
                None => (
                    "native or generic".into(),
                    format!("driver {d}; the kernel does not say which"),
                ),
            }
        });
        add("XDP", format!("XDP {line}"));

        let line = match s.mode {
            XdpMode::Copy => "AF_XDP copy mode (xdp_mode = \"copy\")".to_string(),
            XdpMode::ZeroCopy => {
                let no: Vec<&InterfaceFeatures> = present
                    .iter()
                    .filter(|i| i.zero_copy() == Some(false))
                    .collect();
                if no.is_empty() {
                    "AF_XDP zero-copy mode (xdp_mode = \"zerocopy\")".to_string()
                } else {
                    fatal.push(format!(
                        "xdp_mode = \"zerocopy\" but {} offer(s) no AF_XDP zero-copy: use \"auto\" or \"copy\"",
                        names(&no)
                    ));
                    format!("AF_XDP zero-copy refused on {}", names(&no))
                }
            }
            XdpMode::Auto => {
                let all = present.iter().all(|i| i.zero_copy() == Some(true));
                let none = present.iter().find(|i| i.zero_copy() == Some(false));
                if all {
                    "AF_XDP zero-copy mode (the drivers offer it)".to_string()
                } else if let Some(i) = none {
                    match &i.driver {
                        Some(d) => format!(
                            "AF_XDP copy mode (no zero-copy in driver {d} of {})",
                            i.name
                        ),
                        None => format!(
                            "AF_XDP copy mode (no zero-copy in the driver of {})",
                            i.name
                        ),
                    }
                } else {
                    "AF_XDP zero-copy tried first, copy if refused (the kernel does not say)"
                        .to_string()
                }
            }
        };
        add("AF_XDP mode", line);
    }

    let meta = choose_meta(k);
    if s.offload {
        add("metadata", meta.reason.clone());
        if meta.mode == MetaMode::None && k.bpf_load {
            fatal.push(
                "offload = true needs bpf_xdp_adjust_meta or bpf_xdp_adjust_head; the kernel refuses both: set offload = false"
                    .into(),
            );
        }
        let refuse: Vec<&InterfaceFeatures> = present
            .iter()
            .filter(|i| i.redirect_target() == Some(false))
            .collect();
        if refuse.is_empty() {
            add(
                "offload",
                "offload: on, established flows forwarded in XDP".into(),
            );
        } else {
            for i in &refuse {
                fatal.push(format!(
                    "offload: {} {}; set offload = false or fix the interface",
                    i.name,
                    crate::bpf::NO_XMIT
                ));
            }
            add(
                "offload",
                format!(
                    "offload: refused ({} cannot take redirected frames)",
                    names(&refuse)
                ),
            );
        }
    } else {
        add(
            "metadata",
            format!("{}; used only with offload = true", meta.reason),
        );
        add("offload", "offload: off (offload = false)".into());
    }
    Plan {
        meta,
        choices,
        fatal,
    }
}

/// Probes the kernel and `ifaces` (in the calling thread's namespace) and
/// chooses for `settings`.
pub fn probe_all(
    ifaces: &[&str],
    settings: &Settings,
) -> (KernelFeatures, Vec<InterfaceFeatures>, Plan) {
    let k = Kernel::probe();
    let ifs: Vec<InterfaceFeatures> = ifaces.iter().map(|n| Interface::probe(n)).collect();
    let plan = choose(&k, &ifs, settings);
    (k, ifs, plan)
}

/// The start-up log line for worker configuration `cfg`: the kernel and
/// every choice.
pub fn startup_line(cfg: &crate::WorkerConfig) -> String {
    let (k, _, plan) = probe_all(&[&cfg.inside, &cfg.outside], &Settings::of(cfg));
    format!("kernel {}: {}", k.release, plan.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel with everything.
    fn full() -> KernelFeatures {
        KernelFeatures {
            release: "6.18.0".into(),
            version: Some((6, 18, 0)),
            bpf_load: true,
            btf: true,
            adjust_meta: true,
            adjust_head: true,
            adjust_tail: true,
            redirect_map: true,
            bpf_loop: true,
            ktime_coarse: true,
            csum_diff: true,
            xskmap: true,
            devmap: true,
            mmapable_array: true,
            hash_no_prealloc: true,
            percpu_array: true,
            test_run: true,
            test_run_live: true,
            af_xdp: true,
            need_wakeup: true,
            shared_umem: true,
            ..KernelFeatures::default()
        }
    }

    /// A veth as Linux 6.x describes it (native, redirect, no zero-copy;
    /// `xmit`: its peer has GRO or XDP).
    fn veth(name: &str, xmit: bool) -> InterfaceFeatures {
        InterfaceFeatures {
            name: name.into(),
            ifindex: Some(7),
            driver: Some("veth".into()),
            xdp_flags: Some(
                act::BASIC | act::REDIRECT | act::RX_SG | if xmit { act::NDO_XMIT } else { 0 },
            ),
            ..InterfaceFeatures::default()
        }
    }

    fn lines(p: &Plan) -> String {
        p.choices
            .iter()
            .map(|c| c.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    const AUTO: Settings = Settings {
        offload: false,
        mode: XdpMode::Auto,
    };
    const OFFLOAD: Settings = Settings {
        offload: true,
        mode: XdpMode::Auto,
    };

    #[test]
    fn veth_pair_everything_there() {
        let p = choose(&full(), &[veth("tg0", true), veth("tg1", true)], &OFFLOAD);
        assert!(p.can_run(), "{:?}", p.fatal);
        assert_eq!(p.meta.mode, MetaMode::Meta);
        let l = lines(&p);
        assert!(l.contains("XDP native on tg0/tg1 (driver veth)"), "{l}");
        assert!(
            l.contains("AF_XDP copy mode (no zero-copy in driver veth of tg0)"),
            "{l}"
        );
        assert!(l.contains("offload: on"), "{l}");
        assert!(
            p.summary().contains("bpf_xdp_adjust_meta"),
            "{}",
            p.summary()
        );
    }

    #[test]
    fn no_adjust_meta_falls_back_to_a_prefix() {
        let k = KernelFeatures {
            adjust_meta: false,
            ..full()
        };
        let p = choose(&k, &[veth("tg0", true), veth("tg1", true)], &OFFLOAD);
        assert!(p.can_run(), "{:?}", p.fatal);
        assert_eq!(p.meta.mode, MetaMode::Prefix);
        assert_eq!(
            p.meta.reason,
            "metadata: none (kernel refuses bpf_xdp_adjust_meta): fast-path marks carried in a frame prefix (bpf_xdp_adjust_head)"
        );
        // Forced off says so.
        let k = KernelFeatures {
            meta_forced_off: true,
            ..k
        };
        let m = choose_meta(&k);
        assert_eq!(m.mode, MetaMode::Prefix);
        assert!(
            m.reason.contains("forced by TOLLGATE_FORCE_NO_META=1"),
            "{}",
            m.reason
        );
    }

    #[test]
    fn neither_helper_refuses_offload_only() {
        let k = KernelFeatures {
            adjust_meta: false,
            adjust_head: false,
            ..full()
        };
        let ifs = [veth("tg0", true), veth("tg1", true)];
        let p = choose(&k, &ifs, &OFFLOAD);
        assert_eq!(p.meta.mode, MetaMode::None);
        assert!(!p.can_run());
        assert!(
            p.fatal.iter().any(|f| f.contains("set offload = false")),
            "{:?}",
            p.fatal
        );
        // Without offload the same kernel runs.
        let p = choose(&k, &ifs, &AUTO);
        assert!(p.can_run(), "{:?}", p.fatal);
        assert_eq!(p.meta.mode, MetaMode::None);
        assert!(lines(&p).contains("offload: off"));
    }

    #[test]
    fn no_privileges_or_no_af_xdp_cannot_run() {
        let k = KernelFeatures {
            bpf_load: false,
            bpf_load_error: Some("EPERM (Operation not permitted)".into()),
            ..full()
        };
        let p = choose(&k, &[], &AUTO);
        assert!(!p.can_run());
        assert!(p.fatal[0].contains("EPERM"), "{:?}", p.fatal);
        assert_eq!(p.meta.mode, MetaMode::None);
        assert!(p.meta.reason.contains("cannot tell"), "{}", p.meta.reason);

        let k = KernelFeatures {
            af_xdp: false,
            af_xdp_error: Some("EAFNOSUPPORT".into()),
            ..full()
        };
        let p = choose(&k, &[], &AUTO);
        assert_eq!(p.fatal.len(), 1, "{:?}", p.fatal);
        assert!(p.fatal[0].contains("AF_XDP sockets cannot be created: EAFNOSUPPORT"));
    }

    #[test]
    fn old_kernels_lack_what_the_program_and_sockets_use() {
        let k = KernelFeatures {
            bpf_loop: false,
            shared_umem: false,
            ..full()
        };
        let p = choose(&k, &[], &AUTO);
        assert_eq!(p.fatal.len(), 2, "{:?}", p.fatal);
        assert!(p.fatal[0].contains("bpf_loop"), "{:?}", p.fatal);
        assert!(
            p.fatal[1].contains("no UMEM shared across devices"),
            "{:?}",
            p.fatal
        );
    }

    #[test]
    fn zero_copy_modes() {
        let mut zc = veth("ice0", true);
        zc.driver = Some("ice".into());
        zc.xdp_flags = zc.xdp_flags.map(|f| f | act::XSK_ZEROCOPY);
        let mut zc1 = zc.clone();
        zc1.name = "ice1".into();
        let p = choose(&full(), &[zc.clone(), zc1.clone()], &AUTO);
        assert!(lines(&p).contains("AF_XDP zero-copy mode (the drivers offer it)"));

        let zerocopy = Settings {
            offload: false,
            mode: XdpMode::ZeroCopy,
        };
        assert!(choose(&full(), &[zc.clone(), zc1], &zerocopy).can_run());
        let p = choose(&full(), &[zc, veth("tg1", true)], &zerocopy);
        assert!(!p.can_run());
        assert!(
            p.fatal[0].contains("tg1 offer(s) no AF_XDP zero-copy"),
            "{:?}",
            p.fatal
        );

        // A kernel that does not say: tried, not refused.
        let mut quiet = veth("old0", true);
        quiet.xdp_flags = None;
        let p = choose(&full(), std::slice::from_ref(&quiet), &zerocopy);
        assert!(p.can_run(), "{:?}", p.fatal);
        let p = choose(&full(), &[quiet], &AUTO);
        let l = lines(&p);
        assert!(l.contains("zero-copy tried first"), "{l}");
        assert!(l.contains("native or generic on old0"), "{l}");
        let copy = Settings {
            offload: false,
            mode: XdpMode::Copy,
        };
        let p = choose(&full(), &[veth("tg0", true)], &copy);
        assert!(lines(&p).contains("AF_XDP copy mode (xdp_mode = \"copy\")"));
    }

    #[test]
    fn generic_only_and_missing_interfaces() {
        let lo = InterfaceFeatures {
            name: "lo".into(),
            ifindex: Some(1),
            xdp_flags: Some(0),
            ..InterfaceFeatures::default()
        };
        let gone = InterfaceFeatures {
            name: "gone0".into(),
            ..InterfaceFeatures::default()
        };
        let p = choose(&full(), &[veth("tg0", true), lo, gone], &AUTO);
        let l = lines(&p);
        assert!(l.contains("XDP native on tg0 (driver veth)"), "{l}");
        assert!(
            l.contains("generic/skb on lo (driver unknown: no native XDP, slower)"),
            "{l}"
        );
        assert_eq!(p.fatal, vec!["interface gone0 does not exist".to_string()]);
    }

    #[test]
    fn offload_needs_redirect_targets() {
        let p = choose(&full(), &[veth("tg0", true), veth("tg1", false)], &OFFLOAD);
        assert_eq!(p.fatal.len(), 1, "{:?}", p.fatal);
        assert!(
            p.fatal[0].starts_with("offload: tg1 cannot transmit"),
            "{:?}",
            p.fatal
        );
        assert!(lines(&p).contains("offload: refused (tg1 cannot take redirected frames)"));
        // Offload off: no matter.
        assert!(choose(&full(), &[veth("tg0", true), veth("tg1", false)], &AUTO).can_run());
    }

    #[test]
    fn versions_flags_errnos() {
        assert_eq!(parse_version("6.18.44-fc-v1252"), Some((6, 18, 44)));
        assert_eq!(parse_version("5.4.0"), Some((5, 4, 0)));
        assert_eq!(parse_version("6.1-rc3"), Some((6, 1, 0)));
        assert_eq!(parse_version("6"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(flag_names(0), "none");
        assert_eq!(flag_names(1 | 2 | 4), "basic|redirect|ndo-xmit");
        assert_eq!(flag_names(8 | 0x100), "xsk-zerocopy|0x100");
        assert_eq!(errno_text(libc::EPERM), "EPERM (Operation not permitted)");
        assert!(errno_text(524).starts_with("ENOTSUPP"));
        assert_eq!(at_least(Some((5, 10, 0)), 5, 10), Some(true));
        assert_eq!(at_least(Some((5, 9, 99)), 5, 10), Some(false));
    }

    #[test]
    fn interface_rows_say_what_is_missing() {
        let rows = veth("tg0", false).rows();
        let find = |f: &str| {
            rows.iter()
                .find(|r| r.feature == f)
                .unwrap_or_else(|| panic!("no row {f}: {rows:?}"))
        };
        assert_eq!(find("tg0: native XDP").status, Status::Yes);
        assert_eq!(find("tg0: AF_XDP zero-copy").status, Status::No);
        assert_eq!(find("tg0: redirect target").status, Status::No);
        assert_eq!(
            find("tg0: XDP features").detail,
            "0x23 basic|redirect|rx-sg"
        );
        let gone = InterfaceFeatures {
            name: "x".into(),
            ..InterfaceFeatures::default()
        }
        .rows();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].status, Status::No);
    }

    // --- on this machine (root) -------------------------------------------

    fn root() -> bool {
        testkit::root_or_skip("probing the kernel")
    }

    /// The probe's answer for a helper agrees with loading a program that
    /// calls it (`r1` = ctx, `r2` = -8), as the verifier sees it.
    #[test]
    fn helper_probe_agrees_with_the_verifier() {
        if !root() {
            return;
        }
        let k = Kernel::probe();
        assert!(k.bpf_load, "{:?}", k.bpf_load_error);
        let meta = load_xdp(&calling(sys::BPF_FUNC_xdp_adjust_meta, -8));
        if k.meta_forced_off {
            assert!(!k.adjust_meta);
        } else {
            assert_eq!(k.adjust_meta, meta.is_ok(), "verifier: {meta:?}");
        }
        if let Err(e) = &meta {
            assert!(
                e.verifier.contains("bpf_xdp_adjust_meta") || e.verifier.contains("func"),
                "the verifier refused for another reason: {e}"
            );
        }
        let head = load_xdp(&calling(sys::BPF_FUNC_xdp_adjust_head, -8));
        assert_eq!(k.adjust_head, head.is_ok(), "verifier: {head:?}");
        // A call to a helper XDP programs may never use is refused, and
        // the refusal is the helper's (the loader itself works).
        let bad = load_xdp(&calling(sys::BPF_FUNC_skb_store_bytes, 0));
        let e = bad.expect_err("XDP programs cannot call bpf_skb_store_bytes");
        assert_eq!(e.errno, libc::EINVAL, "{e}");
        assert!(!e.verifier.is_empty(), "no verifier message");
        assert_eq!(helper(sys::BPF_FUNC_skb_store_bytes), Ok(false));
        // The rows say the same as the fields.
        let row = k
            .rows
            .iter()
            .find(|r| r.feature == "bpf_xdp_adjust_meta")
            .expect("row");
        assert_eq!(row.status == Status::Yes, k.adjust_meta);
        assert_eq!(
            meta_choice().mode,
            choose_meta(&k).mode,
            "the quick probe and the full one disagree"
        );
    }

    #[test]
    fn kernel_probe_on_this_machine() {
        if !root() {
            return;
        }
        let k = Kernel::probe();
        assert!(k.version.is_some(), "{}", k.release);
        assert!(k.af_xdp, "{:?}", k.af_xdp_error);
        // Tollgate's own program loads here, so what it uses is there.
        crate::bpf::XdpProgram::load(true).expect("Tollgate's XDP program");
        for (ok, what) in [
            (k.redirect_map, "redirect_map"),
            (k.bpf_loop, "bpf_loop"),
            (k.xskmap, "xskmap"),
            (k.mmapable_array, "mmapable"),
            (k.hash_no_prealloc, "no_prealloc"),
            (k.percpu_array, "percpu"),
        ] {
            assert!(ok, "{what}: {:?}", k.rows);
        }
        assert_eq!(k.rows.len(), 1 + 2 + HELPERS.len() + MAPS.len() + 2 + 3);
        assert!(k
            .rows
            .iter()
            .all(|r| !r.detail.is_empty() && !r.choice.is_empty()));
    }

    /// A network namespace of its own with a veth pair in it, both removed
    /// when dropped (also when the test fails).
    struct Netns(String);

    impl Netns {
        fn with_veth(tag: &str, a: &str, b: &str) -> Netns {
            let name = format!("tgp{}{tag}", std::process::id());
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .expect("ip");
                assert!(
                    out.status.success(),
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            ip(&["netns", "add", &name]);
            let ns = Netns(name);
            ip(&[
                "-n", &ns.0, "link", "add", a, "type", "veth", "peer", "name", b,
            ]);
            ip(&["-n", &ns.0, "link", "set", a, "up"]);
            ip(&["-n", &ns.0, "link", "set", b, "up"]);
            ns
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }

    #[test]
    fn interface_probe_on_a_veth_pair() {
        if !root() {
            return;
        }
        let ns = Netns::with_veth("i", "pa0", "pa1");
        let path = format!("/run/netns/{}", ns.0);
        let (a, gone) = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns file");
            // Only this thread moves, and it ends right after.
            crate::sys::setns_net(&f).expect("setns");
            (Interface::probe("pa0"), Interface::probe("pa9"))
        })
        .join()
        .expect("probe thread");
        assert!(a.ifindex.is_some());
        assert_eq!(a.driver.as_deref(), Some("veth"));
        assert_eq!(a.rx_queues, Some(1));
        assert_eq!(a.mtu, Some(1500));
        if Kernel::probe().version >= Some((6, 3, 0)) {
            // veth runs XDP in its driver and has no zero-copy.
            assert_eq!(a.native(), Some(true), "{:x?}", a.xdp_flags);
            assert_eq!(a.zero_copy(), Some(false), "{:x?}", a.xdp_flags);
        }
        assert_eq!(gone.ifindex, None);
        let p = choose(&Kernel::probe(), &[a, gone], &AUTO);
        assert_eq!(p.fatal, vec!["interface pa9 does not exist".to_string()]);
    }
}
