//! The fast-path view of a TCP connection: what Tollgate's XDP program
//! mirrors of the window tracking to take an established connection's
//! plain ACK segments itself, and how the core takes its work back. Apart
//! because it is a contract with code outside the crate (the program's
//! in-window check must stay what [`super::packet`] does), read beside that
//! program rather than beside the state machine.

use super::{capped_timeout, flag, timeout_of, Index, TcpConfig, TcpConn, TcpDir, TcpState};

/// What a fast path (Tollgate's XDP program) needs of an established
/// connection's window tracking to run the in-window check on plain ACK
/// segments exactly as [`super::packet`] does, and what it hands back.
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

    /// Takes back what the fast path made of the state: as if [`super::packet`] had
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

    /// The timeout (seconds) [`super::packet`] gives an established, assured
    /// connection after accepting a plain ACK segment.
    pub fn ack_timeout(&self, cfg: &TcpConfig) -> u32 {
        let unacked = (self.seen[0].flags | self.seen[1].flags) & flag::DATA_UNACKNOWLEDGED != 0;
        let state_tmo = timeout_of(&cfg.timeouts, self.state);
        capped_timeout(cfg, state_tmo, self.retrans, unacked, self.last_win)
    }
}
