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
const TABLE: [[[Next; 10]; 6]; 2] = [
    [
        //  sNO      sSS      sSR      sES      sFW      sCW      sLA      sTW      sCL      sS2
        [
            To(SSS),
            To(SSS),
            IG,
            IG,
            IG,
            IG,
            IG,
            To(SSS),
            To(SSS),
            To(SS2),
        ], // syn
        [IV, IV, To(SSR), IV, IV, IV, IV, IV, IV, To(SSR)], // synack
        [
            IV,
            IV,
            To(SFW),
            To(SFW),
            To(SLA),
            To(SLA),
            To(SLA),
            To(STW),
            To(SCL),
            IV,
        ], // fin
        [
            To(SES),
            IV,
            To(SES),
            To(SES),
            To(SCW),
            To(SCW),
            To(STW),
            To(STW),
            To(SCL),
            IV,
        ], // ack
        [
            IV,
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
        ], // rst
        [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],           // none
    ],
    [
        [IV, To(SS2), IV, IV, IV, IV, IV, To(SSS), IV, To(SS2)], // syn
        [IV, To(SSR), IG, IG, IG, IG, IG, IG, IG, To(SSR)],      // synack
        [
            IV,
            IV,
            To(SFW),
            To(SFW),
            To(SLA),
            To(SLA),
            To(SLA),
            To(STW),
            To(SCL),
            IV,
        ], // fin
        [
            IV,
            IG,
            To(SSR),
            To(SES),
            To(SCW),
            To(SCW),
            To(STW),
            To(STW),
            To(SCL),
            IG,
        ], // ack
        [
            IV,
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
            To(SCL),
        ], // rst
        [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],                // none
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

/// What a fast path (Tollgate's XDP program) needs of an established
/// connection's window tracking to run the in-window check on plain ACK
/// segments exactly as [`packet`] does, and what it hands back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFast {
    /// Window state per direction.
    pub seen: [TcpDir; 2],
    /// The last segment's direction, sequence, ack, end and raw window (for
    /// counting retransmissions).
    pub last_dir: u8,
    /// See `last_dir`.
    pub last_seq: u32,
    /// See `last_dir`.
    pub last_ack: u32,
    /// See `last_dir`.
    pub last_end: u32,
    /// See `last_dir`.
    pub last_win: u16,
    /// Retransmissions of the same segment counted so far.
    pub retrans: u8,
    /// The fast path took at least one segment (its last one was an ACK).
    pub took_any: bool,
}

impl TcpConn {
    /// True if the fast path may take this connection's plain ACK segments:
    /// established, both directions' windows known, window checks enforced
    /// (no liberal flag, globally or on a direction).
    pub fn offloadable(&self, cfg: &TcpConfig) -> bool {
        self.state == TcpState::Established
            && !cfg.be_liberal
            && self
                .seen
                .iter()
                .all(|d| d.maxwin != 0 && d.scale <= 14 && d.flags & flag::BE_LIBERAL == 0)
    }

    /// The state a fast path starts from.
    pub fn fast_view(&self) -> TcpFast {
        TcpFast {
            seen: self.seen,
            last_dir: self.last_dir,
            last_seq: self.last_seq,
            last_ack: self.last_ack,
            last_end: self.last_end,
            last_win: self.last_win,
            retrans: self.retrans,
            took_any: false,
        }
    }

    /// Takes back what the fast path made of the state: as if [`packet`] had
    /// accepted each of its segments.
    pub fn adopt_fast(&mut self, f: &TcpFast) {
        self.seen = f.seen;
        if f.took_any {
            self.last_dir = f.last_dir;
            self.last_seq = f.last_seq;
            self.last_ack = f.last_ack;
            self.last_end = f.last_end;
            self.last_win = f.last_win;
            self.retrans = f.retrans;
            self.last_index = Index::Ack;
        }
    }

    /// The timeout (seconds) [`packet`] gives an established, assured
    /// connection after accepting a plain ACK segment.
    pub fn ack_timeout(&self, cfg: &TcpConfig) -> u32 {
        let unacked = (self.seen[0].flags | self.seen[1].flags) & flag::DATA_UNACKNOWLEDGED != 0;
        let state_tmo = timeout_of(&cfg.timeouts, self.state);
        capped_timeout(cfg, state_tmo, self.retrans, unacked, self.last_win)
    }
}

/// Bytes of [`TcpConn::to_bytes`].
pub const TCP_STATE_BYTES: usize = 56;

impl TcpConn {
    /// The whole tracking state as bytes (a state file across restarts).
    pub fn to_bytes(&self) -> [u8; TCP_STATE_BYTES] {
        let mut b = [0u8; TCP_STATE_BYTES];
        b[0] = self.state as u8;
        for (d, s) in self.seen.iter().enumerate() {
            let o = 1 + d * 18;
            b[o..o + 4].copy_from_slice(&s.end.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&s.maxend.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&s.maxwin.to_le_bytes());
            b[o + 12..o + 16].copy_from_slice(&s.maxack.to_le_bytes());
            b[o + 16] = s.scale;
            b[o + 17] = s.flags;
        }
        b[37] = self.last_dir;
        b[38] = self.last_index as u8;
        b[39] = self.last_wscale;
        b[40] = self.last_flags;
        b[41] = self.retrans;
        b[42..44].copy_from_slice(&self.last_win.to_le_bytes());
        b[44..48].copy_from_slice(&self.last_seq.to_le_bytes());
        b[48..52].copy_from_slice(&self.last_ack.to_le_bytes());
        b[52..56].copy_from_slice(&self.last_end.to_le_bytes());
        b
    }

    /// [`Self::to_bytes`] back; `None` if the bytes cannot be a state
    /// (unknown state or index, scale over 14, short input).
    pub fn from_bytes(b: &[u8]) -> Option<TcpConn> {
        let b = b.get(..TCP_STATE_BYTES)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let state = [
            TcpState::None,
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::Established,
            TcpState::FinWait,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::TimeWait,
            TcpState::Close,
            TcpState::SynSent2,
        ]
        .into_iter()
        .find(|s| *s as u8 == b[0])?;
        let index = [
            Index::Syn,
            Index::SynAck,
            Index::Fin,
            Index::Ack,
            Index::Rst,
            Index::None,
        ]
        .into_iter()
        .find(|i| *i as u8 == b[38])?;
        let mut seen = [TcpDir::default(); 2];
        for (d, s) in seen.iter_mut().enumerate() {
            let o = 1 + d * 18;
            *s = TcpDir {
                end: u32_at(o),
                maxend: u32_at(o + 4),
                maxwin: u32_at(o + 8),
                maxack: u32_at(o + 12),
                scale: b[o + 16],
                flags: b[o + 17],
            };
            if s.scale > 14 {
                return None;
            }
        }
        Some(TcpConn {
            state,
            seen,
            last_dir: b[37] & 1,
            last_index: index,
            last_wscale: b[39].min(14),
            last_flags: b[40],
            retrans: b[41],
            last_win: u16::from_le_bytes([b[42], b[43]]),
            last_seq: u32_at(44),
            last_ack: u32_at(48),
            last_end: u32_at(52),
        })
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
mod tests {
    use super::*;
    use crate::packet::tcp_flags::*;
    use proptest::prelude::*;
    use Direction::{Original as O, Reply as R};

    #[test]
    fn index_table_matches_the_chain_of_tests() {
        for f in 0..=u8::MAX {
            assert_eq!(Index::of(f), Index::slow_of(f), "flags {f:#04x}");
        }
    }

    /// Any `u32`, with 0, 1 and the top values drawn on purpose.
    fn edge_u32() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(u32::MAX),
            Just(66_000),
            any::<u32>()
        ]
    }

    /// Any `u16`, with 0, 1 and the top value drawn on purpose.
    fn edge_u16() -> impl Strategy<Value = u16> {
        prop_oneof![Just(0u16), Just(1), Just(u16::MAX), any::<u16>()]
    }

    fn seg(flags: u8, seq: u32, ack: u32, win: u16, payload: &'static [u8]) -> TcpSeg<'static> {
        TcpSeg {
            seq,
            ack,
            flags,
            window: win,
            wscale: None,
            sack_perm: false,
            sack_max: None,
            payload,
        }
    }

    /// Drives one connection like the table does: SEEN_REPLY/ASSURED bookkeeping.
    struct Conn {
        c: TcpConn,
        ctx: TcpCtx,
        cfg: TcpConfig,
        invalid: usize,
        killed: bool,
    }

    impl Conn {
        fn open(first: TcpSeg<'_>) -> Conn {
            let cfg = TcpConfig::default();
            let (c, _) = new_conn(&first, &cfg).expect("opens");
            Conn {
                c,
                ctx: TcpCtx::default(),
                cfg,
                invalid: 0,
                killed: false,
            }
        }
        fn pkt(&mut self, dir: Direction, s: TcpSeg<'_>) -> TcpVerdict {
            let v = packet(&mut self.c, dir, &s, self.ctx, &self.cfg);
            match v {
                TcpVerdict::Accept { set_assured, .. } => {
                    self.ctx.assured |= set_assured;
                    self.ctx.seen_reply |= dir == R;
                }
                TcpVerdict::Ignore => self.ctx.seen_reply |= dir == R,
                TcpVerdict::Invalid(_) | TcpVerdict::InvalidShrink(_) => self.invalid += 1,
                TcpVerdict::AcceptKill => self.killed = true,
                TcpVerdict::Restart => {}
            }
            v
        }
        fn handshake(client_isn: u32, server_isn: u32) -> Conn {
            let mut c = Conn::open(seg(SYN, client_isn, 0, 64240, b""));
            c.pkt(R, seg(SYN | ACK, server_isn, client_isn + 1, 65160, b""));
            c.pkt(O, seg(ACK, client_isn + 1, server_isn + 1, 502, b""));
            assert_eq!(c.c.state, TcpState::Established);
            assert!(c.ctx.assured);
            c
        }
    }

    #[test]
    fn size_budget() {
        assert!(
            core::mem::size_of::<TcpConn>() <= 64,
            "{}",
            core::mem::size_of::<TcpConn>()
        );
    }

    #[test]
    fn handshake_data_and_close() {
        let mut c = Conn::handshake(1000, 5000);
        assert!(matches!(
            c.pkt(O, seg(ACK | PSH, 1001, 5001, 502, b"GET /")),
            TcpVerdict::Accept { .. }
        ));
        assert!(matches!(
            c.pkt(R, seg(ACK, 5001, 1006, 509, b"")),
            TcpVerdict::Accept { .. }
        ));
        c.pkt(O, seg(FIN | ACK, 1006, 5001, 502, b""));
        assert_eq!(c.c.state, TcpState::FinWait);
        c.pkt(R, seg(ACK, 5001, 1007, 509, b""));
        assert_eq!(c.c.state, TcpState::CloseWait);
        c.pkt(R, seg(FIN | ACK, 5001, 1007, 509, b""));
        assert_eq!(c.c.state, TcpState::LastAck);
        let v = c.pkt(O, seg(ACK, 1007, 5002, 502, b""));
        assert_eq!(c.c.state, TcpState::TimeWait);
        assert_eq!(
            v,
            TcpVerdict::Accept {
                timeout: 120,
                set_assured: false
            }
        );
        assert_eq!(c.invalid, 0);
        // Port reuse: a new SYN on TIME_WAIT restarts.
        assert_eq!(
            c.pkt(O, seg(SYN, 90_000, 0, 64240, b"")),
            TcpVerdict::Restart
        );
    }

    #[test]
    fn unacked_data_caps_timeout_and_established_is_five_days() {
        let mut c = Conn::handshake(1, 100);
        let v = c.pkt(O, seg(ACK, 2, 101, 502, b"data"));
        assert_eq!(
            v,
            TcpVerdict::Accept {
                timeout: 300,
                set_assured: false
            }
        );
        let v = c.pkt(R, seg(ACK, 101, 6, 502, b""));
        assert_eq!(
            v,
            TcpVerdict::Accept {
                timeout: 432_000,
                set_assured: false
            }
        );
    }

    #[test]
    fn window_scaling_needs_both_syns() {
        let mut s = seg(SYN, 1, 0, 1000, b"");
        s.wscale = Some(7);
        let mut c = Conn::open(s);
        c.pkt(R, seg(SYN | ACK, 100, 2, 1000, b""));
        assert_eq!((c.c.seen[0].scale, c.c.seen[1].scale), (0, 0));
        let mut c = Conn::open(s);
        let mut sa = seg(SYN | ACK, 100, 2, 1000, b"");
        sa.wscale = Some(8);
        c.pkt(R, sa);
        assert_eq!((c.c.seen[0].scale, c.c.seen[1].scale), (7, 8));
        c.pkt(O, seg(ACK, 2, 101, 1000, b""));
        // SYN windows are never scaled; the server's next ACK advertises
        // 1000 << 8, and the client may then send 256 kB ahead.
        c.pkt(R, seg(ACK, 101, 2, 1000, b""));
        static BIG: [u8; 1400] = [0; 1400];
        let mut seq = 2u32;
        for _ in 0..100 {
            assert!(matches!(
                c.pkt(O, seg(ACK, seq, 101, 1000, &BIG)),
                TcpVerdict::Accept { .. }
            ));
            seq += 1400;
        }
        assert_eq!(c.invalid, 0);
    }

    #[test]
    fn out_of_window_data_is_invalid_and_changes_nothing() {
        let mut c = Conn::handshake(0, 0);
        let before_state = c.c;
        assert_eq!(
            c.pkt(O, seg(ACK, 10_000_000, 1, 502, b"x")),
            TcpVerdict::Invalid(DropReason::TcpOutOfWindow)
        );
        assert_eq!(c.c, before_state);
        // ACK of data never sent.
        assert!(matches!(
            c.pkt(R, seg(ACK, 1, 50_000, 502, b"")),
            TcpVerdict::Invalid(_)
        ));
        // Overrunning the receive window by less than a window is only ignored
        // (the kernel's "bytes more than expected").
        assert_eq!(
            c.pkt(O, seg(ACK, 100_000, 1, 502, b"x")),
            TcpVerdict::Ignore
        );
    }

    /// PEER_TESTS 1.4 conntrack_ack_loss_stall: a retransmission of data already
    /// acknowledged is not invalid.
    #[test]
    fn retransmission_of_acked_data_is_not_invalid() {
        let mut c = Conn::handshake(0, 0);
        static SEG: [u8; 1460] = [0; 1460];
        let mut seq = 1u32;
        for _ in 0..46 {
            c.pkt(R, seg(ACK, seq, 1, 502, &SEG));
            c.pkt(O, seg(ACK, 1, seq + 1460, 32792, b""));
            seq += 1460;
        }
        let v = c.pkt(R, seg(ACK, 1, 1, 502, &SEG));
        assert_eq!(v, TcpVerdict::Ignore);
        assert_eq!(c.invalid, 0);
    }

    /// PEER_TESTS 1.4 conntrack_rst_invalid: only the exact RST closes; the four
    /// others are invalid and the connection stays established.
    #[test]
    fn rst_exact_and_inexact() {
        // Local client: ISN 0; peer (server) ISN 0.
        let mut c = Conn::handshake(0, 0);
        static D: [u8; 3000] = [0; 3000];
        c.pkt(R, seg(ACK | PSH, 1, 1, 502, &D));
        c.pkt(O, seg(ACK, 1, 3001, 502, b""));
        for s in [0u32, 1_000_000, 42] {
            c.pkt(R, seg(RST, s, 0, 0, b""));
            assert_eq!(c.c.state, TcpState::Established, "rst seq {s}");
        }
        // Data exchange.
        c.pkt(O, seg(ACK | PSH, 1, 3001, 502, &D[..1000]));
        c.pkt(R, seg(ACK, 3001, 1001, 502, b""));
        c.pkt(R, seg(RST | ACK, 3000, 1001, 0, b""));
        assert_eq!(c.c.state, TcpState::Established);
        c.pkt(R, seg(RST | ACK, 3001, 1001, 0, b""));
        assert_eq!(c.c.state, TcpState::Close);
        assert_eq!(c.invalid, 4);
    }

    /// PEER_TESTS 1.4 conntrack_synack_old: a stale SYN-ACK is invalid, the right
    /// one after the retransmitted SYN establishes.
    #[test]
    fn stale_synack() {
        let mut c = Conn::open(seg(SYN, 643_160_522, 0, 65535, b""));
        c.pkt(R, seg(SYN | ACK, 145_758_917, 643_160_523 + 7, 65535, b""));
        assert_eq!(c.invalid, 1);
        assert_eq!(c.c.state, TcpState::SynSent);
        assert_eq!(
            c.pkt(O, seg(SYN, 643_160_522, 0, 65535, b"")),
            TcpVerdict::Ignore
        );
        c.pkt(R, seg(SYN | ACK, 145_758_917, 643_160_523, 65535, b""));
        c.pkt(O, seg(ACK, 643_160_523, 145_758_918, 65535, b""));
        assert_eq!(c.c.state, TcpState::Established);
        assert!(c.ctx.assured);
        assert_eq!(c.invalid, 1);
    }

    /// PEER_TESTS 1.4 conntrack_syn_challenge_ack: a challenge ACK answering a SYN
    /// passes, the client's RST to it is accepted, the retried SYN establishes.
    #[test]
    fn challenge_ack_in_syn_sent() {
        let mut c = Conn::open(seg(SYN, 643_160_522, 0, 65535, b""));
        assert_eq!(
            c.pkt(R, seg(ACK, 145_824_453, 643_160_523, 65535, b"")),
            TcpVerdict::Ignore
        );
        let v = c.pkt(O, seg(RST, 643_160_523, 0, 0, b""));
        assert!(
            matches!(v, TcpVerdict::Accept { .. } | TcpVerdict::AcceptKill),
            "{v:?}"
        );
        assert_eq!(c.invalid, 0);
    }

    /// Simultaneous open (SYN, SYN from the other side, SYN-ACK, ACK).
    #[test]
    fn simultaneous_open() {
        let mut c = Conn::open(seg(SYN, 100, 0, 1000, b""));
        c.pkt(R, seg(SYN, 500, 0, 1000, b""));
        assert_eq!(c.c.state, TcpState::SynSent2);
        c.pkt(O, seg(SYN | ACK, 100, 501, 1000, b""));
        assert_eq!(c.c.state, TcpState::SynRecv);
        c.pkt(R, seg(ACK, 501, 101, 1000, b""));
        assert_eq!(c.c.state, TcpState::Established);
        assert_eq!(c.invalid, 0);
    }

    /// Open vSwitch "tcp pick up": mid-stream with an unseen wscale 7 handshake.
    #[test]
    fn mid_stream_pickup() {
        static A: [u8; 514] = [0; 514];
        static B: [u8; 469] = [0; 469];
        let mut c = Conn::open(seg(ACK | PSH, 1000, 2000, 10, &A));
        c.pkt(R, seg(ACK, 2000, 1514, 10, b""));
        c.pkt(R, seg(ACK | PSH, 2000, 1514, 10, &B));
        c.pkt(O, seg(ACK, 1514, 2469, 10, b""));
        assert_eq!(c.c.state, TcpState::Established);
        c.pkt(O, seg(FIN | ACK, 1514, 2469, 10, b""));
        c.pkt(R, seg(FIN | ACK, 2469, 1515, 10, b""));
        c.pkt(O, seg(ACK, 1515, 2470, 10, b""));
        assert_eq!(c.invalid, 0);
        assert_eq!(c.c.state, TcpState::TimeWait);
        // Without loose, mid-stream cannot open.
        let cfg = TcpConfig {
            loose: false,
            ..TcpConfig::default()
        };
        assert_eq!(
            new_conn(&seg(ACK, 1, 1, 10, b""), &cfg),
            Err(DropReason::TcpNewNotSyn)
        );
        // RST and SYN-ACK never open.
        assert!(new_conn(&seg(RST, 1, 0, 0, b""), &TcpConfig::default()).is_err());
        assert!(new_conn(&seg(SYN | ACK, 1, 1, 10, b""), &TcpConfig::default()).is_err());
    }

    #[test]
    fn rst_answering_syn_kills() {
        let mut c = Conn::open(seg(SYN, 7, 0, 1000, b""));
        assert_eq!(
            c.pkt(R, seg(RST | ACK, 0, 8, 0, b"")),
            TcpVerdict::AcceptKill
        );
    }

    #[test]
    fn sequence_wraparound() {
        let mut c = Conn::handshake(u32::MAX - 10, 5);
        static D: [u8; 100] = [0; 100];
        let v = c.pkt(O, seg(ACK, u32::MAX - 9, 6, 502, &D));
        assert!(matches!(v, TcpVerdict::Accept { .. }));
        let v = c.pkt(R, seg(ACK, 6, (u32::MAX - 9).wrapping_add(100), 502, b""));
        assert!(matches!(v, TcpVerdict::Accept { .. }));
        assert_eq!(c.invalid, 0);
    }

    #[test]
    fn liberal_accepts_out_of_window() {
        let mut c = Conn::handshake(0, 0);
        c.cfg.be_liberal = true;
        assert!(matches!(
            c.pkt(O, seg(ACK, 10_000_000, 1, 502, b"x")),
            TcpVerdict::Accept { .. }
        ));
    }

    #[test]
    fn table_matrix_matches_the_kernel_shape() {
        // Every (direction, index, state) cell is defined, and the states the
        // kernel names for the main transitions are where they should be.
        assert_eq!(
            TABLE[0][Index::Syn as usize][TcpState::None as usize],
            To(TcpState::SynSent)
        );
        assert_eq!(
            TABLE[1][Index::SynAck as usize][TcpState::SynSent as usize],
            To(TcpState::SynRecv)
        );
        assert_eq!(
            TABLE[0][Index::Ack as usize][TcpState::SynRecv as usize],
            To(TcpState::Established)
        );
        assert_eq!(
            TABLE[1][Index::Syn as usize][TcpState::SynSent as usize],
            To(TcpState::SynSent2)
        );
        assert_eq!(
            TABLE[0][Index::Syn as usize][TcpState::Established as usize],
            IG
        );
        assert_eq!(
            TABLE[1][Index::Ack as usize][TcpState::SynSent as usize],
            IG
        );
        for dir in &TABLE {
            for (s, cell) in dir[Index::None as usize].iter().enumerate() {
                assert_eq!(*cell, IV, "none flags in state {s}");
            }
            for cell in &dir[Index::Rst as usize][1..] {
                assert_eq!(*cell, To(TcpState::Close));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// [`established_ack`] from any state an established connection can
        /// hold (windows unknown or known, any scale, flags, last segment,
        /// retransmission count) and any ACK segment, on and around each
        /// bound the window check compares with or anywhere: the verdict and
        /// the state the state table and the whole window check give, under
        /// any timeouts (often equal, to reach each tie) and options.
        #[test]
        fn established_ack_is_the_state_table(
            dirs in proptest::collection::vec(
                (edge_u32(), edge_u32(), edge_u32(), any::<u32>(), 0u8..17, any::<u8>()),
                2,
            ),
            last in (0u8..2, edge_u32(), edge_u32(), edge_u32(), edge_u16(), 0u8..6),
            reply in any::<bool>(),
            extra in any::<u8>(),
            at in (0usize..5, -3i32..=3, 0usize..5, -3i32..=3),
            far in (any::<u32>(), any::<u32>(), -70_000i32..70_000, -70_000i32..70_000),
            win in edge_u16(),
            len in 0usize..3,
            sack in proptest::option::of(prop_oneof![-3i32..=3, -70_000i32..70_000]),
            ctx in (any::<bool>(), any::<bool>()),
            liberal in any::<bool>(),
            max_retrans in 0u8..5,
            tmo in proptest::collection::vec(1u32..6, 3),
            repeat in (any::<bool>(), 0usize..6),
        ) {
            static P: [u8; 1500] = [0; 1500];
            let mut c = TcpConn { state: TcpState::Established, ..TcpConn::default() };
            for (d, (end, maxend, maxwin, maxack, scale, flags)) in c.seen.iter_mut().zip(dirs) {
                *d = TcpDir { end, maxend, maxwin, maxack, scale, flags };
            }
            (c.last_dir, c.last_seq, c.last_ack, c.last_end, c.last_win, c.retrans) = last;
            c.last_index = Index::Ack;
            let dir = if reply { R } else { O };
            let (mine, theirs) = (c.seen[dir.index()], c.seen[1 - dir.index()]);
            // Each bound's value, the ones beside it, far from it, or anywhere.
            let seq_at = [
                mine.maxend,
                mine.end.wrapping_sub(theirs.maxwin),
                mine.end.wrapping_add_signed(far.2),
                mine.end,
                far.0,
            ];
            let ack_at = [
                theirs.end,
                theirs.end.wrapping_sub(mine.maxwin.max(66_000)),
                theirs.maxend,
                theirs.end.wrapping_add_signed(far.3),
                far.1,
            ];
            let seq = seq_at[at.0].wrapping_add_signed(at.1);
            let ack = ack_at[at.2].wrapping_add_signed(at.3);
            let flags = (extra & !(SYN | FIN | RST)) | ACK;
            let mut s = seg(flags, seq, ack, win, &P[..[0, 1, 1500][len]]);
            s.sack_max = sack.map(|x| ack.wrapping_add_signed(x));
            if repeat.0 {
                // The last segment was this one (a retransmission), or
                // differs from it in one field.
                c.last_dir = dir.index() as u8;
                c.last_seq = seq;
                c.last_ack = ack;
                c.last_end = seg_end(&s);
                c.last_win = win;
                match repeat.1 {
                    0 => c.last_dir ^= 1,
                    1 => c.last_seq ^= 1,
                    2 => c.last_ack ^= 1,
                    3 => c.last_end ^= 1,
                    4 => c.last_win ^= 1,
                    _ => {}
                }
            }
            let ctx = TcpCtx { seen_reply: ctx.0, assured: ctx.1 };
            let mut cfg = TcpConfig { be_liberal: liberal, max_retrans, ..TcpConfig::default() };
            cfg.timeouts.established = tmo[0];
            cfg.timeouts.retrans = tmo[1];
            cfg.timeouts.unack = tmo[2];
            let mut expect = c;
            let v_expect = packet_by_table(&mut expect, dir, Index::Ack, &s, ctx, &cfg);
            let v = packet(&mut c, dir, &s, ctx, &cfg);
            prop_assert_eq!(v, v_expect);
            prop_assert_eq!(c, expect);
        }
    }

    proptest! {
        /// The established-ACK shortcut of [`packet`] gives the verdict and the
        /// state the state table gives, whatever the windows, flags and context.
        #[test]
        fn shortcut_matches_state_table(
            segs in proptest::collection::vec(
                (any::<bool>(), 0u8..8, -70_000i32..70_000, -70_000i32..70_000, any::<u16>(), 0usize..3, any::<bool>()),
                1..80,
            ),
            liberal in any::<bool>(),
            sack in any::<bool>(),
        ) {
            static P: [u8; 2000] = [0; 2000];
            let mut c = Conn::handshake(1_000_000, 2_000_000);
            c.cfg.be_liberal = liberal;
            for (reply, pick, dseq, dack, win, len, ctx_flip) in segs {
                // Mostly plain ACKs, near where each side's sequence space is.
                let flags = [ACK, ACK, ACK | PSH, ACK, ACK | FIN, ACK | RST, SYN, ACK][usize::from(pick)];
                let dir = if reply { R } else { O };
                let (mine, theirs) = (c.c.seen[dir.index()], c.c.seen[1 - dir.index()]);
                let mut s = seg(
                    flags,
                    mine.end.wrapping_add_signed(dseq / 64),
                    theirs.end.wrapping_add_signed(dack / 64),
                    win,
                    &P[..[0, 1, 1500][len]],
                );
                if sack {
                    s.sack_max = Some(theirs.end.wrapping_add_signed(dack / 32));
                }
                let ctx = if ctx_flip {
                    TcpCtx { seen_reply: !c.ctx.seen_reply, assured: c.ctx.assured }
                } else {
                    c.ctx
                };
                let mut by_table = c.c;
                let expect = packet_by_table(&mut by_table, dir, Index::of(s.flags), &s, ctx, &c.cfg);
                let got = packet(&mut c.c, dir, &s, ctx, &c.cfg);
                prop_assert_eq!(got, expect);
                prop_assert_eq!(c.c, by_table);
                if let TcpVerdict::Accept { set_assured, .. } = got {
                    c.ctx.assured |= set_assured;
                    c.ctx.seen_reply |= dir == R;
                }
            }
        }

        /// A new connection's SYN: [`first_syn`] gives what the state table
        /// and the whole window check give, whatever the segment (FIN, a
        /// payload, any window and options) and the timeouts.
        #[test]
        fn first_syn_is_the_state_table(
            extra in any::<u8>(),
            seq in any::<u32>(),
            win in prop_oneof![Just(0u16), Just(1), Just(u16::MAX), any::<u16>()],
            wscale in proptest::option::of(any::<u8>()),
            sack_perm in any::<bool>(),
            len in 0usize..3,
            loose in any::<bool>(),
            liberal in any::<bool>(),
            tmo in proptest::collection::vec(1u32..1000, 4),
            max_retrans in any::<u8>(),
        ) {
            const P: [u8; 1500] = [0; 1500];
            let flags = (extra & !(ACK | RST)) | SYN;
            let mut s = seg(flags, seq, 0, win, &P[..[0, 1, 1500][len]]);
            s.wscale = wscale;
            s.sack_perm = sack_perm;
            let mut cfg = TcpConfig { loose, be_liberal: liberal, max_retrans, ..TcpConfig::default() };
            cfg.timeouts.syn_sent = tmo[0];
            cfg.timeouts.retrans = tmo[1];
            cfg.timeouts.unack = tmo[2];
            cfg.timeouts.close = tmo[3];
            let mut expect = TcpConn { last_index: Index::None, ..TcpConn::default() };
            init_syn_sender(&mut expect, &s);
            let verdict = by_table(&mut expect, O, Index::Syn, &s, TcpCtx::default(), &cfg);
            let TcpVerdict::Accept { timeout, set_assured: false } = verdict else {
                return Err(TestCaseError::fail(format!("{verdict:?}")));
            };
            prop_assert_eq!(new_conn(&s, &cfg), Ok((expect, timeout)));
        }

        /// Arbitrary segments never panic, and an invalid verdict leaves the
        /// connection exactly as it was.
        #[test]
        fn invalid_changes_nothing(segs in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u32>(), any::<u32>(), any::<u16>(), 0usize..3), 1..60)) {
            static P: [u8; 2000] = [0; 2000];
            let mut c = Conn::handshake(1_000_000, 2_000_000);
            for (reply, flags, seq, ack, win, len) in segs {
                let flags = flags & (SYN | ACK | FIN | RST | PSH);
                if !crate::packet::tcp_flags_valid(flags) { continue; }
                let dir = if reply { R } else { O };
                let s = seg(flags, seq, ack, win, &P[..[0, 1, 1500][len]]);
                let snapshot = c.c;
                let v = c.pkt(dir, s);
                if matches!(v, TcpVerdict::Invalid(_)) {
                    prop_assert_eq!(c.c.state, snapshot.state);
                    prop_assert_eq!(c.c.seen, snapshot.seen);
                }
            }
        }
    }
}
