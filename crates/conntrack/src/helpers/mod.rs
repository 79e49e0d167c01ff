//! The conntrack helpers (the kernel's `nf_conntrack_{ftp,irc,tftp,amanda,sane}.c`
//! and its SIP, PPTP, NetBIOS-NS and SNMP helpers): their registry, and per
//! helper a payload parser and its glue.
//!
//! Each parser reads the bytes of a control connection and returns a typed
//! announcement of the data connection that will follow. They do no I/O,
//! never allocate, never panic on any input and do work linear in the input.
//! Each helper's glue (its `help` function) runs the parser on an accepted
//! packet and turns what it read into expectation requests through a
//! [`HelpCx`]: it makes the helper's own checks (anti-bounce addresses,
//! masks) and leaves the rest (clashes, `max_expected`, timeouts) to the
//! expectation table.
//!
//! Error convention shared by the parsers: `Ok(None)` means "not a message
//! this helper acts on" (most traffic), `Err(ParseErr)` means "this is such a
//! message but it is malformed" (the kernel either drops the packet or ignores
//! it; the caller counts a helper parse error).

pub mod amanda;
pub mod broadcast;
pub mod ftp;
pub mod irc;
pub mod pptp;
pub mod sane;
pub mod sip;
pub mod tftp;

use crate::expect::{ExpectPolicy, ExpectSpec, Mask};
use crate::linebuf::LineBuf;
use crate::tuple::{ipproto, Addr, Family, Tuple};

pub(crate) use crate::table::HelpCx;

/// Declares the helpers from one list: [`HelperKind`] and its `COUNT`,
/// `ALL`, names, well-known ports and dispatch, and [`REGISTRY`].
macro_rules! registry {
    ($(
        $kind:ident $name:literal $glue:ident [$(($proto:ident, $port:literal)),*]
        max $max:literal timeout $timeout:literal;
    )*) => {
        /// Conntrack helpers, by their kernel names; in [`REGISTRY`] order,
        /// which numbers per-helper arrays (`kind as usize`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum HelperKind {
            $(
                #[doc = concat!("`", $name, "`.")]
                $kind,
            )*
        }

        impl HelperKind {
            /// Number of helpers: the size of every per-helper array.
            pub const COUNT: usize = [$(HelperKind::$kind),*].len();

            /// Every helper, in registry order.
            pub const ALL: &'static [HelperKind; HelperKind::COUNT] = &[$(HelperKind::$kind),*];

            /// The helper the kernel registers on the well-known port of a
            /// connection's destination (for automatic assignment).
            pub fn for_port(t: &Tuple) -> Option<HelperKind> {
                Some(match (t.proto, t.dst_port) {
                    $($((ipproto::$proto, $port))|* => HelperKind::$kind,)*
                    _ => return None,
                })
            }

            /// Runs the helper's glue on a packet (a `match`: static calls).
            #[inline]
            pub(crate) fn help(self, cx: &mut HelpCx<'_, '_>) {
                match self {
                    $(HelperKind::$kind => $glue::help(cx),)*
                }
            }
        }

        /// Every helper's constants, indexed by `HelperKind as usize`.
        pub const REGISTRY: [HelperSpec; HelperKind::COUNT] = [$(
            HelperSpec {
                kind: HelperKind::$kind,
                name: $name,
                ports: &[$((ipproto::$proto, $port)),*],
                policy: ExpectPolicy { max_expected: $max, timeout: $timeout },
            },
        )*];
    };
}

// The registry. Adding a helper means: its file here (parser, `help` glue,
// tests; per-connection state, if any, a field of `HelpState` below), its
// module line above, one line below, and its fuzz target (`fuzz/`). Every
// per-helper array, name lookup, config key, metric label and CLI choice
// follows from this list. Order fixes `HelperKind as usize`: append.
//
// kind      name          glue       well-known ports        kernel default expectation policy
registry! {
    Ftp       "ftp"         ftp        [(TCP, 21)]               max 1 timeout 300;
    Tftp      "tftp"        tftp       [(UDP, 69)]               max 1 timeout 300;
    Irc       "irc"         irc        [(TCP, 6667)]             max 8 timeout 300;
    // Audio and video, RTP and RTCP, offered by both parties.
    Sip       "sip"         sip        [(TCP, 5060), (UDP, 5060)] max 8 timeout 180;
    // Four since the kernel learnt STATE streams.
    Amanda    "amanda"      amanda     [(UDP, 10080)]            max 4 timeout 180;
    Sane      "sane"        sane       [(TCP, 6566)]             max 1 timeout 300;
    Pptp      "pptp"        pptp       [(TCP, 1723)]             max 2 timeout 300;
    NetbiosNs "netbios-ns"  broadcast  [(UDP, 137)]              max 1 timeout 3;
    Snmp      "snmp"        broadcast  [(UDP, 161)]              max 1 timeout 30;
}

// Helper codes (`kind + 1`, 0 for none) are stored in a `u8`.
const _: () = assert!(HelperKind::COUNT < u8::MAX as usize);

/// A helper's constants: one row of [`REGISTRY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperSpec {
    /// The helper.
    pub kind: HelperKind,
    /// Kernel name: in config files, the control protocol, metric labels and
    /// listings.
    pub name: &'static str,
    /// (L4 protocol, destination port) pairs it is assigned to automatically.
    pub ports: &'static [(u8, u16)],
    /// The kernel's default expectation policy.
    pub policy: ExpectPolicy,
}

impl HelperKind {
    /// Its row of [`REGISTRY`].
    #[inline]
    pub fn spec(self) -> &'static HelperSpec {
        &REGISTRY[self as usize]
    }

    /// Kernel name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// From a kernel name.
    pub fn from_name(s: &str) -> Option<HelperKind> {
        REGISTRY.iter().find(|h| h.name == s).map(|h| h.kind)
    }

    /// Every kernel name, in registry order, joined by `sep` (for messages).
    pub fn names(sep: &str) -> String {
        REGISTRY.map(|h| h.name).join(sep)
    }
}

/// Per-connection state of a helper.
#[derive(Clone, Debug, Default)]
pub(crate) struct HelpState {
    /// Line reassembly per direction (FTP, IRC).
    pub(crate) lines: [LineBuf; 2],
    pub(crate) sane: sane::SaneState,
    pub(crate) pptp: pptp::PptpState,
}

/// A TCP connection from `src` (any port; any address if `any_src`) to
/// `dst:port`. The caller sets the requesting helper.
pub(crate) fn expected_tcp(
    src: Addr,
    dst: Addr,
    port: u16,
    family: Family,
    any_src: bool,
) -> ExpectSpec {
    ExpectSpec {
        tuple: Tuple {
            src,
            dst,
            src_port: 0,
            dst_port: port,
            proto: ipproto::TCP,
            family,
        },
        mask: Mask {
            src_addr: any_src,
            src_port: true,
            src_prefix: 0,
        },
        helper: HelperKind::Ftp,
        child_helper: None,
        permanent: false,
        timeout: None,
    }
}

/// Why a helper refused a message that looked like one it acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseErr {
    /// The message ends before its required parts (no argument, missing
    /// delimiter, fewer numbers than required).
    #[error("truncated helper message")]
    Truncated,
    /// A character that the syntax does not allow at that place.
    #[error("unexpected character in helper message")]
    BadSyntax,
    /// A number is empty, too long or out of range (octet > 255, port >
    /// 65535, address > u32).
    #[error("number out of range in helper message")]
    BadNumber,
    /// The announced port is 0, which no data connection can use.
    #[error("port 0 announced")]
    ZeroPort,
    /// The address text does not parse (bad IPv6 text, unknown family).
    #[error("bad address in helper message")]
    BadAddress,
}

/// A run of ASCII decimal digits read from the front of a byte string.
///
/// The value saturates instead of wrapping: the kernel accumulates in a
/// fixed-width integer and silently wraps (so `65537` becomes port 1); we keep
/// enough information to reject such numbers instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Digits {
    /// Value of the digits, saturated at `u64::MAX`.
    pub value: u64,
    /// Number of digit bytes consumed (leading zeros included).
    pub len: usize,
}

/// Reads the longest run of ASCII digits at the start of `s`.
pub(crate) fn digits(s: &[u8]) -> Digits {
    let mut value: u64 = 0;
    let mut len = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        len += 1;
    }
    Digits { value, len }
}

/// Reads a non-empty decimal number `<= max` at the start of `s`; returns the
/// value and the number of bytes consumed. Leading zeros are accepted, as the
/// kernel accepts them.
pub(crate) fn number(s: &[u8], max: u64) -> Result<(u64, usize), ParseErr> {
    let d = digits(s);
    if d.len == 0 || d.value > max {
        return Err(ParseErr::BadNumber);
    }
    Ok((d.value, d.len))
}

/// Reads a port number (1..=65535) at the start of `s`.
pub(crate) fn port(s: &[u8]) -> Result<(u16, usize), ParseErr> {
    let (v, n) = number(s, u64::from(u16::MAX))?;
    match u16::try_from(v) {
        Ok(0) => Err(ParseErr::ZeroPort),
        Ok(p) => Ok((p, n)),
        Err(_) => Err(ParseErr::BadNumber),
    }
}

/// Position of the first occurrence of `needle` in `hay` (naive search; the
/// needles are a few bytes and the inputs are bounded by the callers, so this
/// is linear in practice: at most `hay.len() * needle.len()` comparisons).
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_in_kind_order_with_unique_names_and_ports() {
        for (i, h) in REGISTRY.iter().enumerate() {
            assert_eq!(h.kind as usize, i);
            assert_eq!(HelperKind::ALL[i], h.kind);
            assert_eq!(HelperKind::from_name(h.name), Some(h.kind));
            for &(proto, port) in h.ports {
                let t = Tuple {
                    proto,
                    dst_port: port,
                    ..Tuple::default()
                };
                assert_eq!(HelperKind::for_port(&t), Some(h.kind), "{}", h.name);
            }
        }
        assert_eq!(
            HelperKind::names(", "),
            "ftp, tftp, irc, sip, amanda, sane, pptp, netbios-ns, snmp"
        );
        assert_eq!(HelperKind::from_name("FTP"), None);
    }

    #[test]
    fn helpers_digits_saturate_and_count_zeros() {
        assert_eq!(digits(b"00012x"), Digits { value: 12, len: 5 });
        assert_eq!(digits(b"x"), Digits { value: 0, len: 0 });
        let long = [b'9'; 40];
        assert_eq!(digits(&long).value, u64::MAX);
    }

    #[test]
    fn helpers_port_limits() {
        assert_eq!(port(b"65535|"), Ok((65535, 5)));
        assert_eq!(port(b"00021"), Ok((21, 5)));
        assert_eq!(port(b"65536"), Err(ParseErr::BadNumber));
        assert_eq!(port(b"0"), Err(ParseErr::ZeroPort));
        assert_eq!(port(b"000"), Err(ParseErr::ZeroPort));
        assert_eq!(port(b""), Err(ParseErr::BadNumber));
        assert_eq!(port(b"|1"), Err(ParseErr::BadNumber));
    }

    #[test]
    fn helpers_find() {
        assert_eq!(find(b"abcDATA 1", b"DATA "), Some(3));
        assert_eq!(find(b"DAT", b"DATA "), None);
        assert_eq!(find(b"", b"x"), None);
    }
}
