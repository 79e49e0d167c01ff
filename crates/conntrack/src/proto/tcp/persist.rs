//! The persistence encoding of a TCP connection's tracking state: the
//! fixed-size little-endian bytes the table's state file keeps across a
//! restart (`table::state`), and their checked decoding. Apart because it
//! is a file format, which must stay readable by the next version whatever
//! the tracker's in-memory layout becomes.

use super::{Index, TcpConn, TcpDir, TcpState};

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
