//! Parsing an IP packet (IPv4 or IPv6, starting at the IP header) into the typed
//! view the trackers work on. Validates once at the edge; nothing downstream
//! re-checks lengths.
//!
//! Two kinds of failure, as in the kernel:
//! - [`ParseError::Malformed`]: the L3 header is unusable (the kernel's IP input
//!   drops these before conntrack runs);
//! - [`ParseError::Invalid`]: the L3 header is fine but the L4 header is broken
//!   (truncated, bad checksum, impossible TCP flags): conntrack marks the packet
//!   `invalid` and policy decides. The tuple is still known for addresses.

use crate::reason::DropReason;
use crate::tuple::{Family, Tuple};

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// The TCP header fields window tracking needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSeg<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flag byte (see [`tcp_flags`]).
    pub flags: u8,
    /// Raw (unscaled) window field.
    pub window: u16,
    /// Window scale option, if present (only meaningful on SYNs); clamped to 14.
    pub wscale: Option<u8>,
    /// SACK-permitted option present.
    pub sack_perm: bool,
    /// Highest right edge among SACK blocks, if any (kernel `tcp_sack`), used to
    /// advance the sender's end beyond `ack`.
    pub sack_max: Option<u32>,
    /// TCP payload.
    pub payload: &'a [u8],
}

impl TcpSeg<'_> {
    /// True if every bit of `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }
}

/// ICMP or ICMPv6 message classes conntrack cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    /// Query or answer of a tracked exchange (echo, timestamp, ...): the packet's
    /// tuple carries id and type.
    Query,
    /// Error message (dest-unreach, time-exceeded, param-problem, packet-too-big,
    /// source-quench, redirect) quoting a packet whose tuple is `inner`, as the
    /// quoted packet travelled (not inverted).
    Error {
        /// Tuple of the quoted packet.
        inner: Tuple,
    },
    /// IPv6 neighbour discovery, MLD and the like: conntrack leaves them untracked.
    Untracked,
    /// Any other type: no entry can be created, none matched.
    Other,
}

/// L4 view of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4<'a> {
    /// TCP segment.
    Tcp(TcpSeg<'a>),
    /// UDP (or UDP-Lite) datagram with its payload.
    Udp {
        /// Datagram payload.
        payload: &'a [u8],
    },
    /// ICMP or ICMPv6.
    Icmp(Icmp),
    /// Any other protocol (tracked by addresses, and for GRE by key).
    Other {
        /// Bytes after the IP headers.
        payload: &'a [u8],
    },
    /// A fragment that is not the first: no L4 header (tuple ports are zero).
    Fragment,
}

/// Fragment information of an IPv4 or IPv6 fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    /// IPv4 identification (zero-extended) or IPv6 fragment header identification.
    pub id: u32,
    /// Fragment offset in bytes.
    pub offset: u32,
    /// More-fragments flag.
    pub more: bool,
}

/// A parsed IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Tuple as the packet travels (source to destination).
    pub tuple: Tuple,
    /// Length of the IP packet (header included), as the kernel counts bytes.
    pub ip_len: u32,
    /// Set if the packet is an IPv4 or IPv6 fragment.
    pub frag: Option<Frag>,
    /// Set if the IPv4 header carries options.
    pub ip_options: bool,
    /// L4 view.
    pub l4: L4<'a>,
}

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// L3 header unusable: drop before conntrack.
    Malformed(DropReason),
    /// L4 header broken: the packet is `invalid` for policy; `tuple` carries the
    /// addresses and protocol (ports zero when unknown).
    Invalid {
        /// Why.
        reason: DropReason,
        /// What is known of the tuple.
        tuple: Tuple,
        /// IP length for byte counters.
        ip_len: u32,
    },
}

/// Parsing options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// Verify L4 checksums (`nf_conntrack_checksum`).
    pub checksum: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { checksum: true }
    }
}

/// Family of the IP packet starting at `bytes[0]`, from its version nibble.
pub fn family_of(bytes: &[u8]) -> Option<Family> {
    match bytes.first().map(|b| b >> 4) {
        Some(4) => Some(Family::V4),
        Some(6) => Some(Family::V6),
        _ => None,
    }
}

/// Parses an IP packet (IPv4 or IPv6) starting at its IP header. `bytes` may
/// extend past the IP packet (Ethernet padding); the IP length field decides.
pub fn parse(bytes: &[u8], opts: ParseOptions) -> Result<Packet<'_>, ParseError> {
    let _ = (bytes, opts);
    Err(ParseError::Malformed(DropReason::Ipv4Truncated))
}
