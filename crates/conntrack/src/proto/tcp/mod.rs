//! TCP tracking: the kernel's state machine and window tracking
//! (nf_conntrack_proto_tcp.c, after Guido van Rooij's "Real Stateful TCP Packet
//! Filtering in IP Filter").
//!
//! The state table, the window checks and the special cases (stale SYN-ACK,
//! challenge ACKs, port reuse, inexact RSTs) follow the kernel's 6.x behaviour,
//! so that every segment gets the verdict the kernel would give it.

use crate::packet::TcpSeg;
use crate::reason::DropReason;
use crate::timeouts::TcpTimeouts;
use crate::tuple::Direction;

mod fast;
mod persist;

pub use fast::TcpFast;
pub use persist::TCP_STATE_BYTES;

/// TCP tracking options (the kernel's sysctls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// `nf_conntrack_tcp_loose`: pick up connections mid-stream.
    pub loose: bool,
    /// `nf_conntrack_tcp_be_liberal`: only RSTs are checked against the window.
    pub be_liberal: bool,
    /// `nf_conntrack_tcp_max_retrans` (default 3).
    pub max_retrans: u8,
    /// `nf_conntrack_tcp_ignore_invalid_rst`: out-of-window RSTs are not invalid.
    pub ignore_invalid_rst: bool,
    /// Per-state timeouts in seconds.
    pub timeouts: TcpTimeouts,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            loose: true,
            be_liberal: false,
            max_retrans: 3,
            ignore_invalid_rst: false,
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

/// `IP_CT_TCP_FLAG_*` bits of [`TcpDir::flags`] (and the `last_flags` extras).
pub mod flag {
    /// The sender sent a window-scale option.
    pub const WINDOW_SCALE: u8 = 0x01;
    /// The sender sent SACK-permitted.
    pub const SACK_PERM: u8 = 0x02;
    /// The sender sent the first FIN.
    pub const CLOSE_INIT: u8 = 0x04;
    /// Window checks are not enforced for this sender.
    pub const BE_LIBERAL: u8 = 0x08;
    /// The sender has data the receiver has not acknowledged.
    pub const DATA_UNACKNOWLEDGED: u8 = 0x10;
    /// `maxack` holds a value.
    pub const MAXACK_SET: u8 = 0x20;
    /// (last_flags) a challenge ACK may follow the SYN let through in LAST_ACK.
    pub const EXP_CHALLENGE_ACK: u8 = 0x40;
    /// (last_flags) simultaneous open in progress.
    pub const SIMULTANEOUS_OPEN: u8 = 0x80;
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
    /// [`flag`] bits.
    pub flags: u8,
}

/// Which of SYN, SYN-ACK, FIN, ACK, RST (or none) a segment is: the column of
/// the state table (`get_conntrack_index`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Index {
    /// SYN without ACK.
    Syn = 0,
    /// SYN with ACK.
    SynAck = 1,
    /// FIN.
    Fin = 2,
    /// ACK only.
    Ack = 3,
    /// RST.
    Rst = 4,
    /// None of these.
    #[default]
    None = 5,
}

impl Index {
    /// The column of a segment with these flags.
    #[inline]
    pub fn of(flags: u8) -> Index {
        use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};
        /// [`Index::slow_of`] of every combination of the four flags that matter.
        const TABLE: [Index; 32] = {
            let mut t = [Index::None; 32];
            let mut i = 0;
            while i < 32 {
                // `i < 32`: the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                let f = i as u8;
                t[i] = Index::slow_of(f);
                i += 1;
            }
            t
        };
        TABLE[usize::from(flags & (ACK | FIN | RST | SYN))]
    }

    /// [`Index::of`] by the kernel's chain of tests.
    const fn slow_of(flags: u8) -> Index {
        use crate::packet::tcp_flags::*;
        if flags & RST != 0 {
            Index::Rst
        } else if flags & SYN != 0 {
            if flags & ACK != 0 {
                Index::SynAck
            } else {
                Index::Syn
            }
        } else if flags & FIN != 0 {
            Index::Fin
        } else if flags & ACK != 0 {
            Index::Ack
        } else {
            Index::None
        }
    }
}

/// Per-connection TCP state (`ip_ct_tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpConn {
    /// Current state.
    pub state: TcpState,
    /// Window state per direction, indexed by [`Direction::index`].
    pub seen: [TcpDir; 2],
    /// Direction of the last packet that passed the window check or was ignored.
    last_dir: u8,
    last_index: Index,
    last_wscale: u8,
    last_flags: u8,
    retrans: u8,
    last_win: u16,
    last_seq: u32,
    last_ack: u32,
    last_end: u32,
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
    /// Accepted (the kernel's `NF_ACCEPT` without a refresh: ignored segments,
    /// retransmitted SYNs, retransmissions of acknowledged data): the packet
    /// keeps its conntrack state, the entry's timeout is left as it is.
    Ignore,
    /// Accepted, and the entry must be destroyed now (RST answering an unreplied SYN).
    AcceptKill,
    /// Invalid: the entry is left unchanged.
    Invalid(DropReason),
    /// Invalid FIN or RST on an assured entry: also cap the entry's remaining
    /// lifetime at the `unack` timeout when it is longer than that and at least
    /// 120 s (`nf_tcp_handle_invalid`), so dead connections leave sooner.
    InvalidShrink(DropReason),
    /// The entry is dead (port reuse after TIME_WAIT/CLOSE, or a new SYN on a
    /// closing entry): destroy it and process the packet as a new connection.
    Restart,
}

/// Wrap-aware sequence comparisons (`before`/`after`).
#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Sequence number after the segment (`segment_seq_plus_len`).
fn seg_end(seg: &TcpSeg<'_>) -> u32 {
    use crate::packet::tcp_flags::{FIN, SYN};
    // Payloads are below 64 KiB: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let len = seg.payload.len() as u32;
    seg.seq
        .wrapping_add(len)
        .wrapping_add(u32::from(seg.flags & SYN != 0))
        .wrapping_add(u32::from(seg.flags & FIN != 0))
}

/// Reads window scale and SACK-permitted into a direction (`tcp_options`).
fn options(d: &mut TcpDir, seg: &TcpSeg<'_>) {
    d.scale = 0;
    d.flags &= flag::BE_LIBERAL;
    if seg.sack_perm {
        d.flags |= flag::SACK_PERM;
    }
    if let Some(ws) = seg.wscale {
        d.scale = ws.min(14);
        d.flags |= flag::WINDOW_SCALE;
    }
}

const SSS: TcpState = TcpState::SynSent;
const SSR: TcpState = TcpState::SynRecv;
const SES: TcpState = TcpState::Established;
const SFW: TcpState = TcpState::FinWait;
const SCW: TcpState = TcpState::CloseWait;
const SLA: TcpState = TcpState::LastAck;
const STW: TcpState = TcpState::TimeWait;
const SCL: TcpState = TcpState::Close;
const SS2: TcpState = TcpState::SynSent2;

/// A cell of the state table: a state, invalid, or ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    To(TcpState),
    Iv,
    Ig,
}

use Next::{Ig as IG, Iv as IV, To};

/// The kernel's `tcp_conntracks[dir][index][state]`. Columns: NONE, SYN_SENT,
/// SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE,
/// SYN_SENT2. Rows: SYN, SYN-ACK, FIN, ACK, RST, none.
///
/// Original direction: a SYN opens (NONE→SYN_SENT), is retransmitted, or reopens
/// after TIME_WAIT/CLOSE; a SYN inside an open connection is ignored (the peer
/// will answer with RST or a challenge ACK). SYN-ACK from the client is invalid
/// except in simultaneous open. FIN starts or completes the close. ACK completes
/// the handshake, or picks a connection up mid-stream from NONE. RST closes.
/// Reply direction: a SYN answers a SYN in simultaneous open; SYN-ACK is the
/// normal answer and is ignored once past the handshake (late retransmission);
/// an ACK in SYN_SENT may be a challenge ACK or a half-open connection (ignored).
#[rustfmt::skip]
const TABLE: [[[Next; 10]; 6]; 2] = [
    // The original direction.
    [
        //            sNO      sSS      sSR      sES      sFW      sCW      sLA      sTW      sCL      sS2
        /* syn    */ [To(SSS), To(SSS), IG,      IG,      IG,      IG,      IG,      To(SSS), To(SSS), To(SS2)],
        /* synack */ [IV,      IV,      To(SSR), IV,      IV,      IV,      IV,      IV,      IV,      To(SSR)],
        /* fin    */ [IV,      IV,      To(SFW), To(SFW), To(SLA), To(SLA), To(SLA), To(STW), To(SCL), IV],
        /* ack    */ [To(SES), IV,      To(SES), To(SES), To(SCW), To(SCW), To(STW), To(STW), To(SCL), IV],
        /* rst    */ [IV,      To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL)],
        /* none   */ [IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV],
    ],
    // The reply direction.
    [
        //            sNO      sSS      sSR      sES      sFW      sCW      sLA      sTW      sCL      sS2
        /* syn    */ [IV,      To(SS2), IV,      IV,      IV,      IV,      IV,      To(SSS), IV,      To(SS2)],
        /* synack */ [IV,      To(SSR), IG,      IG,      IG,      IG,      IG,      IG,      IG,      To(SSR)],
        /* fin    */ [IV,      IV,      To(SFW), To(SFW), To(SLA), To(SLA), To(SLA), To(STW), To(SCL), IV],
        /* ack    */ [IV,      IG,      To(SSR), To(SES), To(SCW), To(SCW), To(STW), To(STW), To(SCL), IG],
        /* rst    */ [IV,      To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL), To(SCL)],
        /* none   */ [IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV,      IV],
    ],
];

/// `tcp_packet`'s timeout after a segment other than a RST: the state's
/// (`state_tmo`), capped by the retransmission timeout once the same
/// segment came `max_retrans` times, else by the unacknowledged-data
/// timeout while data is unacknowledged, else by the retransmission
/// timeout after a zero window.
#[inline(always)]
fn capped_timeout(
    cfg: &TcpConfig,
    state_tmo: u32,
    retrans: u8,
    unacked: bool,
    last_win: u16,
) -> u32 {
    let t = &cfg.timeouts;
    if retrans >= cfg.max_retrans && state_tmo > t.retrans {
        t.retrans
    } else if unacked && state_tmo > t.unack {
        t.unack
    } else if last_win == 0 && state_tmo > t.retrans {
        t.retrans
    } else {
        state_tmo
    }
}

fn timeout_of(t: &TcpTimeouts, s: TcpState) -> u32 {
    match s {
        TcpState::None => t.syn_sent,
        TcpState::SynSent => t.syn_sent,
        TcpState::SynRecv => t.syn_recv,
        TcpState::Established => t.established,
        TcpState::FinWait => t.fin_wait,
        TcpState::CloseWait => t.close_wait,
        TcpState::LastAck => t.last_ack,
        TcpState::TimeWait => t.time_wait,
        TcpState::Close => t.close,
        TcpState::SynSent2 => t.syn_sent2,
    }
}

/// Result of the window check (`nf_ct_tcp_action`).
enum Window {
    Accept,
    Ignore,
    Invalid,
}

/// `nf_tcp_log_invalid`: a liberal sender (or liberal tracking) turns any
/// failed check into acceptance.
fn failed(conn: &TcpConn, dir: usize, cfg: &TcpConfig, w: Window) -> Window {
    if cfg.be_liberal || conn.seen[dir].flags & flag::BE_LIBERAL != 0 {
        Window::Accept
    } else {
        w
    }
}

fn init_sender(conn: &mut TcpConn, dir: usize, seg: &TcpSeg<'_>, end: u32) {
    let win = u32::from(seg.window);
    let s = &mut conn.seen[dir];
    s.end = end;
    s.maxend = end;
    s.maxwin = win.max(1);
    options(s, seg);
    // RFC 1323: window scaling only if both SYNs carry the option.
    if dir == 1
        && !(conn.seen[1].flags & flag::WINDOW_SCALE != 0
            && conn.seen[0].flags & flag::WINDOW_SCALE != 0)
    {
        conn.seen[0].scale = 0;
        conn.seen[1].scale = 0;
    }
}

/// Van Rooij's window tracking (`tcp_in_window`).
#[inline(always)]
fn in_window(
    conn: &mut TcpConn,
    dir: usize,
    index: Index,
    seg: &TcpSeg<'_>,
    cfg: &TcpConfig,
) -> Window {
    use crate::packet::tcp_flags::{ACK, RST, SYN};
    let rdir = 1 - dir;
    let mut seq = seg.seq;
    let mut ack = seg.ack;
    let mut sack = ack;
    let win_raw = seg.window;
    let mut win = u32::from(win_raw);
    let mut end = seg_end(seg);
    let syn = seg.flags & SYN != 0;
    let has_ack = seg.flags & ACK != 0;

    if conn.seen[rdir].flags & flag::SACK_PERM != 0 {
        if let Some(m) = seg.sack_max {
            if after(m, sack) {
                sack = m;
            }
        }
    }

    if conn.seen[dir].maxwin == 0 {
        if syn {
            // SYN-ACK answering a SYN, or a SYN from the reply direction.
            init_sender(conn, dir, seg, end);
            if !has_ack {
                // Simultaneous open.
                return Window::Accept;
            }
        } else {
            // Mid-stream: the history is lost, take what the packet says.
            let s = &mut conn.seen[dir];
            s.end = end;
            let swin = win << s.scale;
            s.maxwin = swin.max(1);
            s.maxend = end.wrapping_add(s.maxwin);
            let r = &mut conn.seen[rdir];
            if r.maxwin == 0 {
                // Nothing seen the other way yet: let the checks below pass.
                r.end = sack;
                r.maxend = sack;
            } else if sack == r.end.wrapping_add(1) {
                // Likely the answer to a keepalive.
                r.end = r.end.wrapping_add(1);
            }
        }
    } else if syn
        && after(end, conn.seen[dir].end)
        && matches!(conn.state, TcpState::SynSent | TcpState::SynRecv)
    {
        // A reinitialised sender (RFC 793): start this direction over.
        init_sender(conn, dir, seg, end);
        if dir == 1 && !has_ack {
            return Window::Accept;
        }
    }

    if !has_ack {
        ack = conn.seen[rdir].end;
        sack = ack;
    } else if seg.flags & (ACK | RST) == (ACK | RST) && ack == 0 {
        // Broken stacks put ACK with a zero ack number on RSTs.
        ack = conn.seen[rdir].end;
        sack = ack;
    }

    if seg.flags & RST != 0 && seq == 0 && conn.state == TcpState::SynSent {
        // RST answering a SYN.
        seq = conn.seen[dir].end;
        end = seq;
    }

    let sender = conn.seen[dir];
    let receiver = conn.seen[rdir];
    let maxackwin = sender.maxwin.max(66_000);

    if !before(seq, sender.maxend.wrapping_add(1)) {
        let overshot = end.wrapping_sub(sender.maxend).wrapping_add(1);
        let ack_ok = after(sack, receiver.end.wrapping_sub(maxackwin).wrapping_sub(1));
        let in_recv_win = receiver.maxwin != 0
            && after(
                end,
                sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
            );
        if in_recv_win
            && ack_ok
            && overshot <= receiver.maxwin
            && before(sack, receiver.end.wrapping_add(1))
        {
            // A sender overrunning the receive window: remember the data so the
            // receiver's ACK of it is not over the upper bound later.
            let s = &mut conn.seen[dir];
            s.end = end;
            s.flags |= flag::DATA_UNACKNOWLEDGED;
            return failed(conn, dir, cfg, Window::Ignore);
        }
        // SEQ is over the upper bound (beyond the receiver's window).
        return failed(conn, dir, cfg, Window::Invalid);
    }
    if !before(sack, receiver.end.wrapping_add(1)) {
        // ACK is over the upper bound (acknowledges data not seen yet).
        return failed(conn, dir, cfg, Window::Invalid);
    }
    let in_recv_win = receiver.maxwin == 0
        || after(
            end,
            sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
        );
    if !in_recv_win {
        // Retransmission of data already acknowledged: harmless, not invalid.
        return failed(conn, dir, cfg, Window::Ignore);
    }
    if !after(sack, receiver.end.wrapping_sub(maxackwin).wrapping_sub(1)) {
        // ACK under the lower bound (an overly delayed ACK).
        return failed(conn, dir, cfg, Window::Ignore);
    }

    if !syn {
        // Scales are at most 14 (RFC 7323), as every way to set one keeps them.
        win = win.wrapping_shl(u32::from(sender.scale));
    }
    let swin = win.wrapping_add(sack.wrapping_sub(ack));
    let s = &mut conn.seen[dir];
    if s.maxwin < swin {
        s.maxwin = swin;
    }
    if after(end, s.end) {
        s.end = end;
        s.flags |= flag::DATA_UNACKNOWLEDGED;
    }
    if has_ack {
        if s.flags & flag::MAXACK_SET == 0 {
            s.maxack = ack;
            s.flags |= flag::MAXACK_SET;
        } else if after(ack, s.maxack) {
            s.maxack = ack;
        }
    }
    let s_maxend = s.maxend;
    let r = &mut conn.seen[rdir];
    if r.maxwin != 0 && after(end, s_maxend) {
        r.maxwin = r.maxwin.wrapping_add(end.wrapping_sub(s_maxend));
    }
    if after(sack.wrapping_add(win), r.maxend.wrapping_sub(1)) {
        r.maxend = sack.wrapping_add(win);
        if win == 0 {
            r.maxend = r.maxend.wrapping_add(1);
        }
    }
    if ack == r.end {
        r.flags &= !flag::DATA_UNACKNOWLEDGED;
    }

    if index == Index::Ack {
        // Count retransmissions of the same segment.
        if conn.last_dir == dir as u8
            && conn.last_seq == seq
            && conn.last_ack == ack
            && conn.last_end == end
            && conn.last_win == win_raw
        {
            conn.retrans = conn.retrans.saturating_add(1);
        } else {
            conn.last_dir = dir as u8;
            conn.last_seq = seq;
            conn.last_ack = ack;
            conn.last_end = end;
            conn.last_win = win_raw;
            conn.retrans = 0;
        }
    }
    Window::Accept
}

/// `tcp_new` for a SYN: the sender's window state from it.
#[inline(always)]
fn init_syn_sender(conn: &mut TcpConn, seg: &TcpSeg<'_>) {
    let s = &mut conn.seen[0];
    s.end = seg_end(seg);
    s.maxwin = u32::from(seg.window).max(1);
    s.maxend = s.end;
    options(s, seg);
}

/// Decides whether `seg` may create a new entry (`tcp_new` followed by the first
/// run of `tcp_packet`), returning its initial state and the timeout in seconds.
pub fn new_conn(seg: &TcpSeg<'_>, cfg: &TcpConfig) -> Result<(TcpConn, u32), DropReason> {
    let index = Index::of(seg.flags);
    let mut conn = TcpConn {
        last_index: Index::None,
        ..TcpConn::default()
    };
    match TABLE[0][index as usize][TcpState::None as usize] {
        To(TcpState::SynSent) => init_syn_sender(&mut conn, seg),
        To(_) if cfg.loose => {
            // Mid-stream pickup: trust the packet, and be liberal until the
            // window scales (unknown without the handshake) no longer matter.
            let s = &mut conn.seen[0];
            s.end = seg_end(seg);
            s.maxwin = u32::from(seg.window).max(1);
            s.maxend = s.end.wrapping_add(s.maxwin);
            conn.seen[0].flags = flag::SACK_PERM | flag::BE_LIBERAL;
            conn.seen[1].flags = flag::SACK_PERM | flag::BE_LIBERAL;
        }
        To(_) => return Err(DropReason::TcpNewNotSyn),
        IV | IG => return Err(DropReason::TcpInvalidState),
    }
    let verdict = if index == Index::Syn {
        first_syn(&mut conn, seg, cfg)
    } else {
        packet(&mut conn, Direction::Original, seg, TcpCtx::default(), cfg)
    };
    match verdict {
        TcpVerdict::Accept { timeout, .. } => Ok((conn, timeout)),
        TcpVerdict::Ignore => Ok((conn, timeout_of(&cfg.timeouts, conn.state))),
        TcpVerdict::Invalid(r) | TcpVerdict::InvalidShrink(r) => Err(r),
        TcpVerdict::AcceptKill | TcpVerdict::Restart => Err(DropReason::TcpInvalidState),
    }
}

/// `tcp_packet` on the SYN that [`new_conn`] has just made a connection of:
/// the state table says SYN_SENT and none of its special cases applies; the
/// window check passes every bound (the other direction, not seen yet, has
/// end 0 and window 0), and of its updates only one changes anything: the
/// other direction's highest acceptable end becomes the SYN's window, at
/// least 1 (`sack + win` with `sack = 0`). Same answer and state as
/// [`by_table`] (`first_syn_is_the_state_table`), without running it.
#[inline(always)]
fn first_syn(conn: &mut TcpConn, seg: &TcpSeg<'_>, cfg: &TcpConfig) -> TcpVerdict {
    conn.seen[1].maxend = u32::from(seg.window).max(1);
    window_and_state(
        conn,
        0,
        Index::Syn,
        TcpState::None,
        TcpState::SynSent,
        true,
        seg,
        TcpCtx::default(),
        cfg,
    )
}

/// Runs one segment through an existing entry (`tcp_packet`).
#[inline(always)]
pub fn packet(
    conn: &mut TcpConn,
    dir: Direction,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    let d = dir.index();
    let index = Index::of(seg.flags);
    if index == Index::Ack && conn.state == TcpState::Established {
        return established_ack(conn, d, seg, ctx, cfg);
    }
    packet_by_table(conn, dir, index, seg, ctx, cfg)
}

/// [`packet`] of the common case, an ACK (no SYN, FIN or RST) on an
/// established connection: the state table says ESTABLISHED in both
/// directions and none of its special cases applies (they need another
/// state or another flag). Laid out for the case where the sender's window
/// is known and the segment passes all four of [`in_window`]'s bounds:
/// nothing is written before the bounds are checked, so any other case is
/// handed whole to [`ack_general`] on the state as it was. Same answer and
/// state as the state table (`established_ack_is_the_state_table`).
#[inline(always)]
fn established_ack(
    conn: &mut TcpConn,
    d: usize,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    let seq = seg.seq;
    let ack = seg.ack;
    // `seg_end` without SYN or FIN to count; payloads are below 64 KiB.
    #[allow(clippy::cast_possible_truncation)]
    let end = seq.wrapping_add(seg.payload.len() as u32);
    let [d0, d1] = &mut conn.seen;
    let (s, rv) = if d == 0 { (d0, d1) } else { (d1, d0) };
    let mut sack = ack;
    if rv.flags & flag::SACK_PERM != 0 {
        if let Some(m) = seg.sack_max {
            if after(m, sack) {
                sack = m;
            }
        }
    }
    let maxackwin = s.maxwin.max(66_000);
    let in_bounds = s.maxwin != 0
        && before(seq, s.maxend.wrapping_add(1))
        && before(sack, rv.end.wrapping_add(1))
        && (rv.maxwin == 0 || after(end, s.end.wrapping_sub(rv.maxwin).wrapping_sub(1)))
        && after(sack, rv.end.wrapping_sub(maxackwin).wrapping_sub(1));
    if !in_bounds {
        return ack_general(conn, d, seg, ctx, cfg);
    }

    // in_window's updates, for a segment without SYN.
    let win = u32::from(seg.window).wrapping_shl(u32::from(s.scale));
    let swin = win.wrapping_add(sack.wrapping_sub(ack));
    if s.maxwin < swin {
        s.maxwin = swin;
    }
    if after(end, s.end) {
        s.end = end;
        s.flags |= flag::DATA_UNACKNOWLEDGED;
    }
    if s.flags & flag::MAXACK_SET == 0 {
        s.maxack = ack;
        s.flags |= flag::MAXACK_SET;
    } else if after(ack, s.maxack) {
        s.maxack = ack;
    }
    if rv.maxwin != 0 && after(end, s.maxend) {
        rv.maxwin = rv.maxwin.wrapping_add(end.wrapping_sub(s.maxend));
    }
    let top = sack.wrapping_add(win);
    if after(top, rv.maxend.wrapping_sub(1)) {
        rv.maxend = top.wrapping_add(u32::from(win == 0));
    }
    if ack == rv.end {
        rv.flags &= !flag::DATA_UNACKNOWLEDGED;
    }
    let unacked = (s.flags | rv.flags) & flag::DATA_UNACKNOWLEDGED != 0;

    // Retransmissions of the same segment.
    #[allow(clippy::cast_possible_truncation)]
    let dir8 = d as u8;
    if conn.last_dir == dir8
        && conn.last_seq == seq
        && conn.last_ack == ack
        && conn.last_end == end
        && conn.last_win == seg.window
    {
        conn.retrans = conn.retrans.saturating_add(1);
    } else {
        conn.last_dir = dir8;
        conn.last_seq = seq;
        conn.last_ack = ack;
        conn.last_end = end;
        conn.last_win = seg.window;
        conn.retrans = 0;
    }
    conn.last_index = Index::Ack;

    // window_and_state's timeout, for ESTABLISHED and an ACK.
    let t = &cfg.timeouts;
    let mut timeout = capped_timeout(cfg, t.established, conn.retrans, unacked, conn.last_win);
    let mut set_assured = false;
    if !ctx.seen_reply {
        if timeout > t.unack {
            // Picked up mid-stream and never answered: no five-day timeout.
            timeout = t.unack;
        }
    } else if !ctx.assured {
        set_assured = true;
    }
    TcpVerdict::Accept {
        timeout,
        set_assured,
    }
}

/// [`established_ack`]'s cases other than a known window and a segment
/// within every bound: the general window check and state update.
#[cold]
#[inline(never)]
fn ack_general(
    conn: &mut TcpConn,
    d: usize,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    let es = TcpState::Established;
    window_and_state(conn, d, Index::Ack, es, es, false, seg, ctx, cfg)
}

/// [`packet`] without its shortcut: every segment through the state table
/// (differential tests compare the two).
#[cfg(any(test, feature = "differential"))]
pub fn packet_by_table_only(
    conn: &mut TcpConn,
    dir: Direction,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    packet_by_table(conn, dir, Index::of(seg.flags), seg, ctx, cfg)
}

/// [`packet`] of any segment, through the state table.
#[inline(never)]
fn packet_by_table(
    conn: &mut TcpConn,
    dir: Direction,
    index: Index,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    by_table(conn, dir, index, seg, ctx, cfg)
}

/// [`packet_by_table`]'s body, inlined where the caller knows the direction,
/// the flags' column and the status (a new connection's SYN), so that the
/// compiler folds what they decide.
#[inline(always)]
fn by_table(
    conn: &mut TcpConn,
    dir: Direction,
    index: Index,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    let d = dir.index();
    let mut old_state = conn.state;
    let mut new_state = match TABLE[d][index as usize][old_state as usize] {
        To(s) => Some(s),
        IG => None,
        IV => return TcpVerdict::Invalid(DropReason::TcpInvalidState),
    };
    let mut skip_window = false;

    // A SYN reopening a closed or aborted connection: start over.
    if new_state == Some(TcpState::SynSent) && old_state as u8 >= TcpState::TimeWait as u8 {
        if (conn.seen[d].flags | conn.seen[1 - d].flags) & flag::CLOSE_INIT != 0
            || (conn.last_dir == d as u8 && conn.last_index == Index::Rst)
        {
            return TcpVerdict::Restart;
        }
        // Otherwise treated as an ignored packet.
        new_state = None;
    }

    match new_state {
        None => {
            // Ignored: our view may be out of sync with the endpoints'.
            if index == Index::SynAck
                && conn.last_index == Index::Syn
                && conn.last_dir != d as u8
                && seg.ack == conn.last_end
            {
                // This SYN-ACK answers a SYN we ignored: the endpoints are in
                // sync and we are not. Resynchronise from what we noted then.
                old_state = TcpState::SynSent;
                new_state = Some(TcpState::SynRecv);
                let ld = usize::from(conn.last_dir & 1);
                let lf = conn.last_flags & !flag::EXP_CHALLENGE_ACK;
                conn.last_flags = lf;
                let s = &mut conn.seen[ld];
                s.end = conn.last_end;
                s.maxend = conn.last_end;
                s.maxwin = u32::from(conn.last_win).max(1);
                s.scale = conn.last_wscale;
                s.flags = lf;
                let me = &mut conn.seen[d];
                *me = TcpDir {
                    flags: me.flags & flag::BE_LIBERAL,
                    ..TcpDir::default()
                };
            } else {
                conn.last_index = index;
                conn.last_dir = d as u8;
                conn.last_seq = seg.seq;
                conn.last_end = seg_end(seg);
                conn.last_win = seg.window;
                if index == Index::Syn && dir == Direction::Original {
                    // Note the SYN's options: if the server answers it, we resync.
                    let mut seen = TcpDir::default();
                    options(&mut seen, seg);
                    conn.last_flags = 0;
                    conn.last_wscale = 0;
                    if seen.flags & flag::WINDOW_SCALE != 0 {
                        conn.last_flags |= flag::WINDOW_SCALE;
                        conn.last_wscale = seen.scale;
                    }
                    if seen.flags & flag::SACK_PERM != 0 {
                        conn.last_flags |= flag::SACK_PERM;
                    }
                    if old_state == TcpState::LastAck {
                        // An ACK answering this SYN would look like the last ACK.
                        conn.last_flags |= flag::EXP_CHALLENGE_ACK;
                    }
                }
                if old_state == TcpState::SynSent && index == Index::Ack && dir == Direction::Reply
                {
                    // Possibly a challenge ACK answering our SYN.
                    conn.last_ack = seg.ack;
                }
                return TcpVerdict::Ignore;
            }
        }
        Some(TcpState::TimeWait)
            if old_state == TcpState::LastAck
                && index == Index::Ack
                && conn.last_dir != d as u8
                && conn.last_index == Index::Syn
                && conn.last_flags & flag::EXP_CHALLENGE_ACK != 0 =>
        {
            // An RFC 5961 challenge ACK, not the ACK of the last FIN.
            conn.last_flags &= !flag::EXP_CHALLENGE_ACK;
            return TcpVerdict::Ignore;
        }
        Some(TcpState::SynSent2) => {
            conn.last_flags |= flag::SIMULTANEOUS_OPEN;
        }
        Some(TcpState::SynRecv)
            if dir == Direction::Reply
                && index == Index::Ack
                && conn.last_flags & flag::SIMULTANEOUS_OPEN != 0 =>
        {
            // The final ACK of a simultaneous open.
            new_state = Some(TcpState::Established);
        }
        Some(TcpState::Close) if index == Index::Rst => {
            let can_early_drop = matches!(
                old_state,
                TcpState::FinWait
                    | TcpState::LastAck
                    | TcpState::TimeWait
                    | TcpState::Close
                    | TcpState::CloseWait
            );
            if can_early_drop {
                // Closing: the tuple may be reused already, skip the checks.
                skip_window = true;
            } else {
                let peer = conn.seen[1 - d];
                let established = old_state == TcpState::Established;
                // `done`: the kernel leaves the RST case here ("break") and goes
                // straight to the window check.
                let mut done = false;
                if peer.flags & flag::MAXACK_SET != 0 && conn.last_index != Index::Syn {
                    let seq = seg.seq;
                    if seq == 0 && !established {
                        // Likely answers a SYN we let through.
                        done = true;
                    } else if before(seq, peer.maxack) && !cfg.ignore_invalid_rst {
                        return TcpVerdict::Invalid(DropReason::TcpRstInexact);
                    } else if !established
                        || seq == peer.maxack
                        || (conn.last_index == Index::Ack
                            && conn.last_dir == d as u8
                            && seq == conn.last_end)
                    {
                        // Exact, or ends a train of segments it follows exactly.
                        done = true;
                    } else {
                        // Not the exact next sequence number: keep the state so the
                        // peer may answer with a challenge ACK.
                        new_state = Some(old_state);
                    }
                }
                if done {
                    // Window check follows.
                } else if ((ctx.seen_reply && conn.last_index == Index::Syn)
                    || (!ctx.assured && conn.last_index == Index::Ack))
                    && seg.ack == conn.last_end
                {
                    // RST answering a SYN or ACK we let through while ignoring it.
                    skip_window = true;
                } else if old_state == TcpState::SynSent
                    && conn.last_index == Index::Ack
                    && conn.last_dir == Direction::Reply as u8
                    && seg.seq == conn.last_ack
                {
                    // RST answering a challenge ACK we let through.
                    skip_window = true;
                }
            }
        }
        _ => {}
    }
    let Some(new_state) = new_state else {
        return TcpVerdict::Ignore;
    };
    window_and_state(
        conn,
        d,
        index,
        old_state,
        new_state,
        skip_window,
        seg,
        ctx,
        cfg,
    )
}

/// The rest of [`packet`] once the state table has spoken: the window check,
/// the state change and the timeout. Inlined into both callers, so the
/// established-ACK path gets a copy specialised for its constants.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn window_and_state(
    conn: &mut TcpConn,
    d: usize,
    index: Index,
    old_state: TcpState,
    new_state: TcpState,
    skip_window: bool,
    seg: &TcpSeg<'_>,
    ctx: TcpCtx,
    cfg: &TcpConfig,
) -> TcpVerdict {
    use crate::packet::tcp_flags::RST;
    if !skip_window {
        match in_window(conn, d, index, seg, cfg) {
            Window::Accept => {}
            Window::Ignore => return TcpVerdict::Ignore,
            Window::Invalid => {
                // nf_tcp_handle_invalid: FIN/RST answering the other side's FIN/RST.
                if ctx.assured && matches!(index, Index::Fin | Index::Rst) {
                    if conn.last_dir != d as u8
                        && matches!(conn.last_index, Index::Fin | Index::Rst)
                    {
                        return TcpVerdict::InvalidShrink(DropReason::TcpOutOfWindow);
                    }
                    conn.last_index = index;
                    conn.last_dir = d as u8;
                }
                return TcpVerdict::Invalid(DropReason::TcpOutOfWindow);
            }
        }
    }

    conn.last_index = index;
    conn.last_dir = d as u8;
    conn.state = new_state;
    if old_state != new_state && new_state == TcpState::FinWait {
        conn.seen[d].flags |= flag::CLOSE_INIT;
    }

    let t = &cfg.timeouts;
    let state_tmo = timeout_of(t, new_state);
    let unacked = (conn.seen[0].flags | conn.seen[1].flags) & flag::DATA_UNACKNOWLEDGED != 0;
    let retrans_cap = conn.retrans >= cfg.max_retrans && state_tmo > t.retrans;
    let mut timeout = if index == Index::Rst && !retrans_cap {
        t.close
    } else {
        capped_timeout(cfg, state_tmo, conn.retrans, unacked, conn.last_win)
    };

    let mut set_assured = false;
    if !ctx.seen_reply {
        if seg.flags & RST != 0 {
            // The only answer is a RST: nothing was established, forget it now.
            return TcpVerdict::AcceptKill;
        }
        if index == Index::Syn && old_state == TcpState::SynSent {
            // A retransmitted SYN does not renew the timeout (port reuse would
            // otherwise keep the entry alive forever).
            return TcpVerdict::Ignore;
        }
        if new_state == TcpState::Established && timeout > t.unack {
            // Picked up mid-stream and never answered: no five-day timeout.
            timeout = t.unack;
        }
    } else if !ctx.assured
        && matches!(old_state, TcpState::SynRecv | TcpState::Established)
        && new_state == TcpState::Established
    {
        set_assured = true;
    }
    TcpVerdict::Accept {
        timeout,
        set_assured,
    }
}

#[cfg(test)]
mod tests;
