//! TCP tracking: the kernel's state machine and window tracking
//! (nf_conntrack_proto_tcp.c, after Guido van Rooij's "Real Stateful TCP Packet
//! Filtering in IP Filter").
//!
//! INTERFACE ONLY (being implemented).

use crate::packet::TcpSeg;
use crate::reason::DropReason;
use crate::timeouts::TcpTimeouts;
use crate::tuple::Direction;

/// TCP tracking options (the kernel's sysctls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// `nf_conntrack_tcp_loose`: pick up connections mid-stream.
    pub loose: bool,
    /// `nf_conntrack_tcp_be_liberal`: only RSTs are checked against the window.
    pub be_liberal: bool,
    /// `nf_conntrack_tcp_max_retrans` (default 3).
    pub max_retrans: u8,
    /// Per-state timeouts in seconds.
    pub timeouts: TcpTimeouts,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            loose: true,
            be_liberal: false,
            max_retrans: 3,
            timeouts: TcpTimeouts::default(),
        }
    }
}

/// TCP conntrack states, as the kernel names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TcpState {
    /// No state yet.
    #[default]
    None,
    /// SYN seen in the original direction.
    SynSent,
    /// SYN-ACK seen.
    SynRecv,
    /// Handshake complete.
    Established,
    /// FIN seen.
    FinWait,
    /// FIN seen in one direction, acked.
    CloseWait,
    /// FIN seen in both directions.
    LastAck,
    /// Last ACK seen.
    TimeWait,
    /// RST seen, or closed.
    Close,
    /// SYN seen in the reply direction (simultaneous open).
    SynSent2,
}

impl TcpState {
    /// The kernel's name (`conntrack -L`).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }
}

/// Window-tracking state of one direction (`ip_ct_tcp_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpDir {
    /// Highest sequence number sent + length (`td_end`).
    pub end: u32,
    /// Highest `ack + window` seen from the peer (`td_maxend`).
    pub maxend: u32,
    /// Largest window advertised (`td_maxwin`).
    pub maxwin: u32,
    /// Highest ack sent (`td_maxack`).
    pub maxack: u32,
    /// Window scale (`td_scale`).
    pub scale: u8,
    /// `IP_CT_TCP_FLAG_*` bits.
    pub flags: u8,
}

/// Per-connection TCP state (`ip_ct_tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpConn {
    /// Current state.
    pub state: TcpState,
    /// Window state per direction, indexed by [`Direction::index`].
    pub seen: [TcpDir; 2],
}

/// What the connection's status says, as the tracker needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpCtx {
    /// A packet was seen in the reply direction (`IPS_SEEN_REPLY`).
    pub seen_reply: bool,
    /// The entry is assured (`IPS_ASSURED`).
    pub assured: bool,
}

/// Outcome of one segment on an existing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpVerdict {
    /// Accepted; the entry's timeout becomes `timeout` seconds from now.
    Accept {
        /// New timeout in seconds.
        timeout: u32,
        /// The entry becomes assured now.
        set_assured: bool,
    },
    /// Accepted, and the entry must be destroyed now (RST answering an unreplied SYN).
    AcceptKill,
    /// Invalid: the entry is left unchanged.
    Invalid(DropReason),
    /// The entry is dead (port reuse after TIME_WAIT/CLOSE, or a new SYN on a
    /// closing entry): destroy it and process the packet as a new connection.
    Restart,
}

/// Decides whether `seg` may create a new entry (`tcp_new`), returning its initial
/// state and the timeout in seconds.
pub fn new_conn(seg: &TcpSeg<'_>, cfg: &TcpConfig) -> Result<(TcpConn, u32), DropReason> {
    let _ = (seg, cfg);
    Err(DropReason::TcpNewNotSyn)
}

/// Runs one segment through an existing entry (`tcp_packet`).
pub fn packet(
    conn: &mut TcpConn,
    dir: Direction,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    let _ = (conn, dir, seg, ctx, cfg);
    TcpVerdict::Invalid(DropReason::TcpInvalidState)
}
