//! The plain path: the established shortcut. A packet of the common cases
//! (an ACK of an established TCP connection, a UDP packet of a known flow,
//! events off, no fragment, not offloaded) is tracked in one pass, without
//! the general path's branches; anything else goes to the general path
//! ([`super::track`]) with what was learnt on the way (the flow hash, the
//! lookup). Apart so that the shortcut can be read, and checked against the
//! general path, as a whole: same answers, same state
//! (`plain_tcp_path_is_the_general_path`, `plain_udp_path_is_the_general_path`).

use super::entry::{entry_helper, packet_state, status, Found, L4State};
use super::track::tcp_timeout;
use super::{Conntrack, Track};
use crate::packet::{Packet, TcpSeg, L4};
use crate::proto::tcp::{self, TcpCtx, TcpVerdict};
use crate::tuple::{ipproto, Direction, Family, Tuple};
use crate::{CtState, HelperKind};

/// What [`Conntrack::try_plain`] made of a packet.
pub(super) enum Plain {
    /// Tracked: a packet of this entry and direction, in this state.
    Done(u32, Direction, Option<HelperKind>, CtState),
    /// The tracker refused it (the entry's TCP state already took the
    /// segment): the general path's handling of the verdict follows.
    Refused(Refusal),
    /// Not the plain case, nothing changed: the general path takes it (with
    /// the flow hash if it was computed).
    General(Option<u64>),
    /// Likewise, with the flow hash and what looking it up found.
    Found(u64, Found),
}

/// A TCP verdict the plain path leaves to [`Conntrack::tcp_refused`]: the
/// entry, the packet's direction and helper, the verdict, the flow hash.
pub(super) struct Refusal {
    idx: u32,
    dir: Direction,
    helper: Option<HelperKind>,
    verdict: TcpVerdict,
    hash: u64,
}

impl Conntrack {
    /// [`Plain::Refused`]: what the general path makes of the verdict.
    #[cold]
    #[inline(never)]
    pub(super) fn plain_refused(&mut self, pkt: &Packet<'_>, now: u64, r: Refusal) -> Track {
        let Refusal {
            idx,
            dir,
            helper,
            verdict,
            hash,
        } = r;
        let track = Track::of_entry(idx, CtState::Established, dir, helper);
        let t = match self.tcp_refused(idx, dir, pkt, now, verdict, track) {
            Some(t) => t,
            None => {
                // As the general path restarts (never for an ACK in
                // ESTABLISHED, which the state table keeps there).
                self.destroy(idx);
                self.stats.search_restart += 1;
                self.new_conn(pkt, hash, now)
            }
        };
        self.invalid_counted(t)
    }

    /// The packet path's common cases in one pass, without the general
    /// path's branches: with events off, a packet (no fragment) of a
    /// connection that is neither offloaded nor expired, and either a TCP
    /// segment with ACK and none of SYN, FIN, RST in ESTABLISHED (replied), or
    /// UDP.
    /// [`Plain::General`] or [`Plain::Found`], having changed nothing, for
    /// anything else. Same answers and same state as the general path
    /// (`plain_tcp_path_is_the_general_path`, `plain_udp_path_is_the_general_path`).
    #[inline(always)]
    pub(super) fn try_plain(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Plain {
        #[cfg(any(test, feature = "differential"))]
        if self.general_only {
            return Plain::General(hash);
        }
        match &pkt.l4 {
            L4::Tcp(seg) if tcp::Index::of(seg.flags) == tcp::Index::Ack => {
                self.plain_tcp(pkt, seg, hash, now)
            }
            L4::Udp { .. } => self.plain_udp(pkt, hash, now),
            _ => Plain::General(hash),
        }
    }

    #[inline(always)]
    fn plain_tcp(
        &mut self,
        pkt: &Packet<'_>,
        seg: &TcpSeg<'_>,
        hash: Option<u64>,
        now: u64,
    ) -> Plain {
        let (idx, dir, st, hash) = match self.plain_entry(pkt, ipproto::TCP, hash, now) {
            Ok(hit) => hit,
            Err(general) => return general,
        };
        let e = &mut self.entries[idx as usize];
        let helper = entry_helper(e);
        let L4State::Tcp(conn) = &mut e.l4 else {
            return Plain::Found(hash, Some((idx, dir)));
        };
        if conn.state != tcp::TcpState::Established {
            return Plain::Found(hash, Some((idx, dir)));
        }
        let ctx = TcpCtx {
            seen_reply: true,
            assured: st & status::ASSURED != 0,
        };
        let verdict = tcp::packet(conn, dir, seg, ctx, &self.cfg.tcp);
        self.stats.found += 1;
        let timeout = match tcp_timeout(verdict, &mut e.status) {
            Ok(t) => t,
            Err(verdict) => {
                return Plain::Refused(Refusal {
                    idx,
                    dir,
                    helper,
                    verdict,
                    hash,
                })
            }
        };
        self.account_packet(idx, dir, pkt, now, timeout);
        self.plain_done(idx, dir, helper, CtState::Established)
    }

    #[inline(always)]
    fn plain_udp(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Plain {
        let (idx, dir, st, _) = match self.plain_entry(pkt, ipproto::UDP, hash, now) {
            Ok(hit) => hit,
            Err(general) => return general,
        };
        let helper = entry_helper(&self.entries[idx as usize]);
        let seen_reply = st & status::SEEN_REPLY != 0;
        let state = packet_state(st, dir);
        self.stats.found += 1;
        let (unreplied, stream) = (self.cfg.timeouts.udp, self.cfg.timeouts.udp_stream);
        let timeout = self.stream_timeout(idx, seen_reply, now, unreplied, stream);
        self.account_packet(idx, dir, pkt, now, Some(timeout));
        self.plain_done(idx, dir, helper, state)
    }

    #[inline(always)]
    fn plain_done(
        &mut self,
        idx: u32,
        dir: Direction,
        helper: Option<HelperKind>,
        state: CtState,
    ) -> Plain {
        #[cfg(any(test, feature = "differential"))]
        {
            self.plain_hits += 1;
        }
        Plain::Done(idx, dir, helper, state)
    }

    /// The plain path's entry for a packet of protocol `proto`: its
    /// index, direction and status, and the flow hash; `Err` with what the
    /// general path needs if it is not a plain case.
    #[inline(always)]
    fn plain_entry(
        &self,
        pkt: &Packet<'_>,
        proto: u8,
        hash: Option<u64>,
        now: u64,
    ) -> Result<(u32, Direction, u8, u64), Plain> {
        let t = &pkt.tuple;
        if t.proto != proto || pkt.frag.is_some() || self.events.on {
            return Err(Plain::General(hash));
        }
        let hash = hash.unwrap_or_else(|| self.hash(t));
        let hit = if t.family == Family::V4 {
            self.lookup4(t, proto, hash)
        } else {
            self.lookup(t, hash)
        };
        let Some((idx, dir)) = hit else {
            return Err(Plain::Found(hash, None));
        };
        let e = &self.entries[idx as usize];
        let st = e.status;
        // TCP: replied (ESTABLISHED is checked by the caller); UDP: any.
        let need = if proto == ipproto::TCP {
            status::SEEN_REPLY
        } else {
            0
        };
        let plain = st & (status::OFFLOADED | need) == need
            && e.deadline > now
            && matches!(
                (proto, &e.l4),
                (ipproto::TCP, L4State::Tcp(_)) | (ipproto::UDP, L4State::Stream(_))
            );
        if !plain {
            return Err(Plain::Found(hash, Some((idx, dir))));
        }
        Ok((idx, dir, st, hash))
    }

    /// [`Self::lookup`] of an IPv4 TCP or UDP tuple.
    #[inline(always)]
    fn lookup4(&self, t: &Tuple, proto: u8, hash: u64) -> Option<(u32, Direction)> {
        // Truncations keep the IPv4 addresses (the low 32 bits).
        #[allow(clippy::cast_possible_truncation)]
        let (src, dst) = (t.src.0 as u32, t.dst.0 as u32);
        for idx in self.index.candidates(hash) {
            let Some(e) = self.entries.get(idx as usize) else {
                continue;
            };
            let e = &e.orig;
            if e.proto != proto || e.v6 {
                continue;
            }
            if e.src == src && e.dst == dst && e.src_port == t.src_port && e.dst_port == t.dst_port
            {
                return Some((idx, Direction::Original));
            }
            if e.src == dst && e.dst == src && e.src_port == t.dst_port && e.dst_port == t.src_port
            {
                return Some((idx, Direction::Reply));
            }
        }
        None
    }
}
