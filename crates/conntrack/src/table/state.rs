//! The table's connections as bytes, to keep them across a restart (an
//! upgrade): every confirmed connection with its tuple, status, helper,
//! remaining lifetime, counters and TCP tracking state, in fixed-size
//! little-endian records behind a header. Expectations and helpers' parsing
//! state are not kept (a helper starts afresh on its connection).
//!
//! Import checks every record (it is read from a file): a record that cannot
//! be a connection is skipped and counted, never trusted.

use super::entry::{status, Entry, Ext, L4State, Ns};
use super::{Conntrack, SEC};
use crate::expect::helper_of;
use crate::proto::tcp::{TcpConn, TCP_STATE_BYTES};
use crate::tuple::{ipproto, Addr, Family, Tuple};

/// First bytes of a state file (format version 1).
pub const MAGIC: &[u8; 8] = b"TGCTST01";
/// Bytes of one connection record.
pub const RECORD: usize = 160;
/// Header: magic, record count (u64).
pub const HEADER: usize = 16;
/// Longest remaining lifetime an imported connection may claim (30 days).
const MAX_LEFT_NS: u64 = 30 * 86_400 * SEC;

/// Why a state file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state file of this format.
    #[error("not a Tollgate state file (bad magic)")]
    Magic,
    /// Shorter than its header says.
    #[error("truncated: {have} bytes, the header announces {want}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes announced.
        want: usize,
    },
}

/// A state file's header for `count` records.
pub fn header(count: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&(count as u64).to_le_bytes());
    h
}

/// The records of a state file.
pub fn records(file: &[u8]) -> Result<&[u8], StateError> {
    if file.len() < HEADER || &file[..8] != MAGIC {
        return Err(StateError::Magic);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&file[8..16]);
    let count = usize::try_from(u64::from_le_bytes(n)).unwrap_or(usize::MAX);
    let want = count
        .checked_mul(RECORD)
        .and_then(|b| b.checked_add(HEADER))
        .unwrap_or(usize::MAX);
    if file.len() < want {
        return Err(StateError::Truncated {
            have: file.len(),
            want,
        });
    }
    Ok(&file[HEADER..want])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    u128::from_le_bytes(a)
}

/// The original-direction tuple of a record (to find its owner before
/// importing it), if it has a sound one.
pub fn record_tuple(r: &[u8]) -> Option<Tuple> {
    let r = r.get(..RECORD)?;
    let v6 = match r[37] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let (src, dst) = (u128_at(r, 0), u128_at(r, 16));
    if !v6 && (src >> 32 != 0 || dst >> 32 != 0) {
        return None;
    }
    Some(Tuple {
        src: Addr(src),
        dst: Addr(dst),
        src_port: u16::from_le_bytes([r[32], r[33]]),
        dst_port: u16::from_le_bytes([r[34], r[35]]),
        proto: r[36],
        family: if v6 { Family::V6 } else { Family::V4 },
    })
}

impl Conntrack {
    /// Appends a record for every confirmed connection to `out` (lifetimes
    /// relative to `now`); returns how many.
    pub fn export_state(&self, now: u64, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for (e, hi) in self.entries.iter().zip(&self.v6hi) {
            if e.status & status::CONFIRMED == 0 || e.deadline <= now {
                continue;
            }
            let mut r = [0u8; RECORD];
            let t = e.orig.tuple(hi);
            r[0..16].copy_from_slice(&t.src.0.to_le_bytes());
            r[16..32].copy_from_slice(&t.dst.0.to_le_bytes());
            r[32..34].copy_from_slice(&t.src_port.to_le_bytes());
            r[34..36].copy_from_slice(&t.dst_port.to_le_bytes());
            r[36] = t.proto;
            r[37] = u8::from(t.family == Family::V6);
            r[38] = e.status & (status::SEEN_REPLY | status::ASSURED | status::EXPECTED);
            r[39] = e.helper;
            r[40] = e.master_helper;
            r[48..56].copy_from_slice(&(e.deadline - now).to_le_bytes());
            for d in 0..2 {
                r[64 + 8 * d..72 + 8 * d].copy_from_slice(&e.packets[d].to_le_bytes());
                r[80 + 8 * d..88 + 8 * d].copy_from_slice(&e.bytes[d].to_le_bytes());
            }
            match &e.l4 {
                L4State::Tcp(c) => {
                    r[41] = 1;
                    r[96..96 + TCP_STATE_BYTES].copy_from_slice(&c.to_bytes());
                }
                L4State::Stream(ts) => {
                    // Time left until the flow counts as a stream (may be past).
                    let left = i128::from(ts.get()) - i128::from(now);
                    let left =
                        i64::try_from(left).unwrap_or(if left < 0 { i64::MIN } else { i64::MAX });
                    r[56..64].copy_from_slice(&left.to_le_bytes());
                }
            }
            out.extend_from_slice(&r);
            n += 1;
        }
        n
    }

    /// Imports the records of [`Self::export_state`] (as read back by
    /// [`records`]) at time `now`: returns (imported, skipped). Records that
    /// cannot be connections, duplicates of a tuple already present, and
    /// those beyond the table's capacity are skipped.
    pub fn import_state(&mut self, recs: &[u8], now: u64) -> (usize, usize) {
        let (mut done, mut skipped) = (0, 0);
        for r in recs.chunks_exact(RECORD) {
            if self.import_one(r, now) {
                done += 1;
            } else {
                skipped += 1;
            }
        }
        (done, skipped)
    }

    fn import_one(&mut self, r: &[u8], now: u64) -> bool {
        let Some(t) = record_tuple(r) else {
            return false;
        };
        let helper = r[39];
        let master_helper = r[40];
        if (helper != 0 && helper_of(helper).is_none())
            || (master_helper != 0 && helper_of(master_helper).is_none())
        {
            return false;
        }
        let left = u64_at(r, 48);
        if left == 0 {
            return false;
        }
        let l4 = match (r[41], t.proto) {
            (1, ipproto::TCP) => match TcpConn::from_bytes(&r[96..96 + TCP_STATE_BYTES]) {
                Some(c) => L4State::Tcp(c),
                None => return false,
            },
            (0, p) if p != ipproto::TCP => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&r[56..64]);
                let rel = i64::from_le_bytes(a);
                let ts = i128::from(now) + i128::from(rel);
                L4State::Stream(Ns::new(u64::try_from(ts.max(0)).unwrap_or(u64::MAX)))
            }
            _ => return false,
        };
        let hash = self.hash(&t);
        if self.lookup(&t, hash).is_some() || !self.wheel.has_free() {
            return false;
        }
        let Ok(idx) = self.alloc(hash, now) else {
            return false;
        };
        let deadline = now.saturating_add(left.min(MAX_LEFT_NS));
        self.entries[idx as usize] = Entry {
            status: status::USED
                | status::CONFIRMED
                | (r[38] & (status::SEEN_REPLY | status::ASSURED | status::EXPECTED)),
            helper,
            deadline,
            l4,
            packets: [u64_at(r, 64), u64_at(r, 72)],
            bytes: [u64_at(r, 80), u64_at(r, 88)],
            ttick: 0,
            master_helper,
            ..Entry::default()
        };
        self.set_orig(idx, &t);
        self.ext[idx as usize] = Ext::NONE;
        self.index_insert(idx, hash);
        self.inserts = self.inserts.wrapping_add(1);
        let tick = self.wheel.clamp(deadline);
        self.wheel_link(idx, tick);
        if let Some(sc) = &mut self.sources {
            sc.inc(t.family, t.src);
        }
        self.attach_helper(idx);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Pkt;
    use crate::packet::tcp_flags::{ACK, SYN};
    use crate::policy::{Action, Policy, Side};
    use crate::{Config, Pipeline};
    use proptest::prelude::*;

    fn pipeline() -> Pipeline {
        Pipeline::new(
            Config {
                max_entries: 256,
                ..Config::default()
            },
            Policy {
                rules: vec![],
                default: Action::Accept,
            },
        )
    }

    /// A TCP connection through its handshake and some data, and a UDP flow.
    fn traffic(p: &mut Pipeline, at: u64) {
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let seg = |fl, s, k, from_a: bool| {
            if from_a {
                Pkt::tcp4(a, 4000, b, 80).flags(fl).seq(s).ack(k).build()
            } else {
                Pkt::tcp4(b, 80, a, 4000).flags(fl).seq(s).ack(k).build()
            }
        };
        p.process(Side::Inside, &seg(SYN, 100, 0, true), at);
        p.process(Side::Outside, &seg(SYN | ACK, 500, 101, false), at + 1);
        p.process(Side::Inside, &seg(ACK, 101, 501, true), at + 2);
        p.process(
            Side::Inside,
            &Pkt::udp4(a, 53, b, 53).payload(b"q").build(),
            at + 3,
        );
        p.process(
            Side::Outside,
            &Pkt::udp4(b, 53, a, 53).payload(b"r").build(),
            at + 4,
        );
    }

    #[test]
    fn a_table_survives_export_and_import() {
        let mut p = pipeline();
        traffic(&mut p, SEC);
        let now = 10 * SEC;
        let mut out = header(0).to_vec();
        let n = p.conntrack().export_state(now, &mut out);
        out[..HEADER].copy_from_slice(&header(n));
        assert_eq!(n, 2);
        if let Some(dir) = std::env::var_os("TG_STATE_SEED_DIR") {
            // The fuzz target's seed (fuzz/seeds/state_import).
            let _ = std::fs::write(std::path::Path::new(&dir).join("two_connections"), &out);
        }
        let mut q = pipeline();
        // Later: the new instance's clock is elsewhere.
        let later = 1_000 * SEC;
        let (done, skipped) = q
            .conntrack_mut()
            .import_state(records(&out).expect("records"), later);
        assert_eq!((done, skipped), (2, 0));
        let mut a: Vec<_> = p.conntrack().connections(now).collect();
        let mut b: Vec<_> = q.conntrack().connections(later).collect();
        a.sort_by_key(|c| c.orig.proto);
        b.sort_by_key(|c| c.orig.proto);
        assert_eq!(a, b, "same connections, same time left");
        let tcp = |p: &Pipeline| {
            (0..256).find_map(|i| {
                p.conntrack()
                    .tcp_conn(i)
                    .filter(|c| c.state != Default::default())
            })
        };
        assert_eq!(tcp(&p), tcp(&q), "TCP tracking state");
        // The next segment of the connection is established in the new one.
        let next = Pkt::tcp4([10, 0, 0, 2], 80, [10, 0, 0, 1], 4000)
            .flags(ACK)
            .seq(501)
            .ack(101)
            .payload(b"hello")
            .build();
        let r = q.process(Side::Outside, &next, later + 1);
        assert_eq!(r.state, crate::CtState::Established);
        // Importing again: duplicates are skipped.
        assert_eq!(
            q.conntrack_mut()
                .import_state(records(&out).expect("records"), later),
            (0, 2)
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert_eq!(records(b"nope"), Err(StateError::Magic));
        let mut f = header(3).to_vec();
        f.extend_from_slice(&[0u8; RECORD]);
        assert!(matches!(records(&f), Err(StateError::Truncated { .. })));
    }

    proptest! {
        /// Any bytes as records: never a panic, never an entry that is not
        /// a connection the table can hold.
        #[test]
        fn garbage_records_are_skipped_or_sound(bytes in proptest::collection::vec(any::<u8>(), 0..RECORD * 6)) {
            let mut p = pipeline();
            let (done, skipped) = p.conntrack_mut().import_state(&bytes, SEC);
            prop_assert!(done + skipped <= bytes.len() / RECORD + 1);
            prop_assert_eq!(p.conntrack().len(), done);
            for c in p.conntrack().connections(SEC) {
                prop_assert!(c.expires_in > 0);
            }
            // The table still works.
            traffic(&mut p, 2 * SEC);
        }
    }
}
