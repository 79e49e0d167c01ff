//! The general path of a packet (the kernel's `nf_conntrack_in`,
//! `resolve_normal_ct`): the plain shortcut first ([`super::plain`]), then
//! fragments, ICMP errors, lookup, a new connection or an existing one with
//! its L4 tracker; and what policy's verdict then does to it
//! ([`Conntrack::confirm`], [`Conntrack::abort`], the kernel's
//! `__nf_conntrack_confirm`). Apart from the entries because this is the
//! per-packet logic, the part a reader of the kernel compares.

use super::entry::{entry_helper, helper_code, packet_state, status, Entry, Found, L4State, Ns};
use super::frag::{frag_key, FragKey};
use super::plain::Plain;
use super::{help, timeout_ns, Conntrack, EventKind, NONE};
use crate::expect::{self, helper_of};
use crate::packet::{Icmp, Packet, L4};
use crate::proto::tcp::{self, TcpConn, TcpCtx, TcpVerdict};
use crate::reason::DropReason;
use crate::timeouts::SEC;
use crate::tuple::{icmp_type_opens, ipproto, Direction, Family, Tuple};
use crate::{CtState, HelperKind};

/// What [`Conntrack::track`] decided for a packet; pass it to [`Conntrack::confirm`]
/// or [`Conntrack::abort`] once policy has spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Track {
    /// State for policy.
    pub state: CtState,
    /// Reply direction of its entry.
    pub reply: bool,
    /// Why the packet is invalid (with `state == Invalid`) or why it must be
    /// dropped regardless of policy (table full).
    pub reason: Option<DropReason>,
    /// Helper of the connection (of its master for related packets).
    pub helper: Option<HelperKind>,
    /// Conntrack itself requires the drop (table full): policy cannot accept.
    pub must_drop: bool,
    /// The packet's entry (existing, or pending until confirmed), `u32::MAX` if none.
    pub conn: u32,
    pending: u32,
    /// [`Conntrack`]'s insert count when the pending entry was made: if no
    /// insert happened since, none can clash with it.
    epoch: u32,
    hash: u64,
    pub(super) frag: Option<FragKey>,
}

impl Track {
    /// A packet of existing entry `conn`.
    pub(super) fn of_entry(
        conn: u32,
        state: CtState,
        dir: Direction,
        helper: Option<HelperKind>,
    ) -> Track {
        Track {
            state,
            reply: dir == Direction::Reply,
            reason: None,
            helper,
            must_drop: false,
            conn,
            pending: NONE,
            epoch: 0,
            hash: 0,
            frag: None,
        }
    }

    pub(super) fn verdictless(state: CtState, reason: Option<DropReason>) -> Track {
        Track {
            state,
            reply: false,
            reason,
            helper: None,
            must_drop: false,
            conn: NONE,
            pending: NONE,
            epoch: 0,
            hash: 0,
            frag: None,
        }
    }
}

/// The timeout (ns) an accepted TCP segment sets, `None` for an ignored one,
/// marking the entry assured if the tracker says so; `Err` with any other
/// verdict (for [`Conntrack::tcp_refused`]).
#[inline(always)]
pub(super) fn tcp_timeout(verdict: TcpVerdict, st: &mut u8) -> Result<Option<u64>, TcpVerdict> {
    match verdict {
        TcpVerdict::Accept {
            timeout,
            set_assured,
        } => {
            if set_assured {
                *st |= status::ASSURED;
            }
            Ok(Some(timeout_ns(timeout)))
        }
        TcpVerdict::Ignore => Ok(None),
        other => Err(other),
    }
}

impl Conntrack {
    /// Tracks one parsed packet: finds or creates (unconfirmed) its entry and runs
    /// the L4 tracker. Call [`Conntrack::confirm`] if policy accepts the packet,
    /// [`Conntrack::abort`] otherwise. Hashes the packet's tuple itself.
    #[inline]
    pub fn track(&mut self, pkt: &Packet<'_>, now: u64) -> Track {
        self.track_plain_or_general(pkt, None, now)
    }

    /// [`Self::track`] with the packet tuple's [`Self::flow_hash`] already computed
    /// (by a batch that prefetched with it).
    #[inline]
    pub fn track_prehashed(&mut self, pkt: &Packet<'_>, hash: u64, now: u64) -> Track {
        self.track_plain_or_general(pkt, Some(hash), now)
    }

    /// The plain path ([`Self::try_plain`]) if it takes the packet, else the
    /// general path with what the plain one learnt (the hash, the lookup).
    #[inline(always)]
    fn track_plain_or_general(&mut self, pkt: &Packet<'_>, hash: Option<u64>, now: u64) -> Track {
        match self.try_plain(pkt, hash, now) {
            Plain::Done(idx, dir, helper, state) => Track::of_entry(idx, state, dir, helper),
            Plain::Refused(r) => self.plain_refused(pkt, now, r),
            Plain::General(hash) => self.track_general(pkt, hash, None, now),
            Plain::Found(hash, found) => self.track_general(pkt, Some(hash), Some(found), now),
        }
    }

    /// `t`, counted in `invalid` if it is.
    #[inline(always)]
    pub(super) fn invalid_counted(&mut self, t: Track) -> Track {
        if t.state == CtState::Invalid {
            self.count_invalid();
        }
        t
    }

    /// The general path. An enhanced GRE packet gets its missing source key
    /// from the PPTP keymap first (and is looked up afresh, under its full
    /// tuple); then [`Self::track_by_kind`].
    #[inline(always)]
    fn track_general(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        if pkt.tuple.proto == ipproto::GRE && !self.keymap.is_empty() {
            if let Some(src_key) = self.gre_src_key(&pkt.tuple) {
                // Enhanced GRE carries only the receiver's key; the keymap knows
                // the sender's, so both directions make a full tuple.
                let mut p = *pkt;
                p.tuple.src_port = src_key;
                return self.track_by_kind(&p, None, None, now);
            }
        }
        self.track_by_kind(pkt, hash, found, now)
    }

    /// The general path on a complete tuple, by what the packet is: a later
    /// fragment follows its first, an ICMP error relates to the flow it
    /// quotes, an untracked ICMP type stays untracked, anything else is a
    /// flow's packet ([`Self::track_new_or_existing`]). `found`: the lookup
    /// of the packet's tuple under `hash`, if already made.
    fn track_by_kind(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        if let Some(f) = pkt.frag {
            if f.offset != 0 {
                return self.follow_fragment(pkt, f, now);
            }
        }
        let mut t = match pkt.l4 {
            L4::Icmp(Icmp::Error { inner }) => return self.icmp_error(pkt, &inner, now),
            L4::Icmp(Icmp::Untracked) => return Track::verdictless(CtState::Untracked, None),
            _ => self.track_new_or_existing(pkt, hash, found, now),
        };
        if let Some(f) = pkt.frag {
            if f.more {
                t.frag = Some(frag_key(pkt, f));
            }
        }
        self.invalid_counted(t)
    }

    /// A flow's packet: hashes and looks up its tuple (unless done), then
    /// opens a new connection or goes on with the entry found.
    #[inline(always)]
    fn track_new_or_existing(
        &mut self,
        pkt: &Packet<'_>,
        hash: Option<u64>,
        found: Option<Found>,
        now: u64,
    ) -> Track {
        let t = &pkt.tuple;
        let hash = hash.unwrap_or_else(|| self.hash(t));
        let hit = match found {
            Some(hit) => hit,
            None => self.lookup(t, hash),
        };
        match hit {
            None => self.new_conn(pkt, hash, now),
            Some((idx, dir)) => self.track_existing_or_restart(pkt, idx, dir, hash, now),
        }
    }

    /// A packet of entry `idx` (general path). At most one restart: a dead
    /// TCP entry replaced by a new connection. Apart from
    /// [`Self::track_new_or_existing`] so that a new connection's path does
    /// not carry this one's registers.
    #[inline(never)]
    fn track_existing_or_restart(
        &mut self,
        pkt: &Packet<'_>,
        idx: u32,
        dir: Direction,
        hash: u64,
        now: u64,
    ) -> Track {
        if let Some(track) = self.track_existing_once(pkt, idx, dir, hash, now) {
            return track;
        }
        match self.lookup(&pkt.tuple, hash) {
            None => self.new_conn(pkt, hash, now),
            Some((idx, dir)) => self
                .track_existing_once(pkt, idx, dir, hash, now)
                .unwrap_or(Track::verdictless(
                    CtState::Invalid,
                    Some(DropReason::TcpInvalidState),
                )),
        }
    }

    /// [`Self::track_existing_or_restart`] without the restart: takes the
    /// entry back from the fast path if it is offloaded, treats an expired
    /// entry as gone (a new connection), runs the L4 tracker and records an
    /// update event. `None` if the entry was dead and is now destroyed
    /// (search again).
    #[inline(always)]
    fn track_existing_once(
        &mut self,
        pkt: &Packet<'_>,
        idx: u32,
        dir: Direction,
        hash: u64,
        now: u64,
    ) -> Option<Track> {
        if self.entries[idx as usize].status & status::OFFLOADED != 0 {
            // The fast path had it: take its state back before this
            // packet (which it did not want) is tracked. Only a plain
            // packet (a TCP segment with only ACK among SYN, FIN, RST,
            // UDP, or an ICMP echo: the entry's own tuple makes this
            // query one) may be one the fast path let the slow path keep.
            let plain = match pkt.l4 {
                L4::Tcp(seg) => tcp::Index::of(seg.flags) == tcp::Index::Ack,
                L4::Udp { .. } | L4::Icmp(Icmp::Query) => true,
                _ => false,
            };
            self.offload_take_back(idx, plain.then_some(dir));
        }
        if self.entries[idx as usize].deadline <= now {
            // Expired but not yet reaped: gone, as the kernel sees it.
            self.destroy(idx);
            self.stats.expired += 1;
            return Some(self.new_conn(pkt, hash, now));
        }
        self.stats.found += 1;
        let before = if self.events.on {
            Some(self.event_key(idx))
        } else {
            None
        };
        match self.existing(idx, dir, pkt, now) {
            Some(track) => {
                if let Some(b) = before {
                    let live = self.entries[idx as usize].status & status::CONFIRMED != 0;
                    if live && self.event_key(idx) != b {
                        self.now = now;
                        self.emit(EventKind::Update, idx);
                    }
                }
                Some(track)
            }
            None => {
                self.destroy(idx);
                self.stats.search_restart += 1;
                None
            }
        }
    }

    /// A packet of an existing entry. `None` means "restart": the caller destroys
    /// the entry and processes the packet as new.
    #[inline(always)]
    fn existing(&mut self, idx: u32, dir: Direction, pkt: &Packet<'_>, now: u64) -> Option<Track> {
        let (st, master_helper) = {
            let e = &self.entries[idx as usize];
            (e.status, e.master_helper)
        };
        let seen_reply = st & status::SEEN_REPLY != 0;
        let state = packet_state(st, dir);
        let helper = entry_helper(&self.entries[idx as usize]);
        let mut track = Track::of_entry(idx, state, dir, helper);
        let timeout = match pkt.l4 {
            L4::Tcp(seg) => {
                let ctx = TcpCtx {
                    seen_reply,
                    assured: st & status::ASSURED != 0,
                };
                let cfg = &self.cfg.tcp;
                let e = &mut self.entries[idx as usize];
                let L4State::Tcp(conn) = &mut e.l4 else {
                    // A TCP tuple always has TCP state; anything else is corrupt.
                    track.state = CtState::Invalid;
                    track.reason = Some(DropReason::TcpInvalidState);
                    return Some(track);
                };
                #[cfg(any(test, feature = "differential"))]
                let verdict = if self.general_only {
                    tcp::packet_by_table_only(conn, dir, &seg, ctx, cfg)
                } else {
                    tcp::packet(conn, dir, &seg, ctx, cfg)
                };
                #[cfg(not(any(test, feature = "differential")))]
                let verdict = tcp::packet(conn, dir, &seg, ctx, cfg);
                match tcp_timeout(verdict, &mut e.status) {
                    Ok(t) => t,
                    Err(other) => return self.tcp_refused(idx, dir, pkt, now, other, track),
                }
            }
            L4::Udp { .. } => Some(self.stream_timeout(
                idx,
                seen_reply,
                now,
                self.cfg.timeouts.udp,
                self.cfg.timeouts.udp_stream,
            )),
            L4::Other { .. } if pkt.tuple.proto == ipproto::GRE => {
                // A PPTP call's GRE lives longer (the kernel's pptp_expectfn).
                let (unreplied, stream) = if st & status::EXPECTED != 0
                    && helper_of(master_helper) == Some(HelperKind::Pptp)
                {
                    (help::PPTP_GRE_TIMEOUT, help::PPTP_GRE_STREAM_TIMEOUT)
                } else {
                    (self.cfg.timeouts.gre, self.cfg.timeouts.gre_stream)
                };
                Some(self.stream_timeout(idx, seen_reply, now, unreplied, stream))
            }
            L4::Icmp(_) => Some(timeout_ns(self.icmp_timeout(pkt.tuple.family))),
            L4::Other { .. } | L4::Fragment => Some(timeout_ns(self.cfg.timeouts.generic)),
        };
        self.account_packet(idx, dir, pkt, now, timeout);
        Some(track)
    }

    /// The end of an accepted packet: its timeout (if it sets one), its
    /// counters, SEEN_REPLY, and the fast path's hold on the connection.
    #[inline(always)]
    pub(super) fn account_packet(
        &mut self,
        idx: u32,
        dir: Direction,
        pkt: &Packet<'_>,
        now: u64,
        timeout: Option<u64>,
    ) {
        // The deadline, the counters and the status in one borrow of the
        // entry; the wheel (separate fields) is relinked after, if need be.
        let e = &mut self.entries[idx as usize];
        let mut relink = None;
        if let Some(tmo) = timeout {
            let deadline = now + tmo;
            e.deadline = deadline;
            if e.before_its_bucket(deadline) {
                relink = Some(deadline);
            }
        }
        e.packets[dir.index()] += 1;
        e.bytes[dir.index()] += u64::from(pkt.ip_len);
        if dir == Direction::Reply {
            e.status |= status::SEEN_REPLY;
        }
        let offloaded = e.status & status::OFFLOADED != 0;
        if let Some(deadline) = relink {
            self.relink(idx, deadline);
        }
        if offloaded {
            // Still offloaded (pending, or a packet the fast path had
            // already passed): if the connection left the state the fast
            // path handles (a FIN), it goes back to the slow path.
            let fine = match &self.entries[idx as usize].l4 {
                L4State::Tcp(c) => c.offloadable(&self.cfg.tcp),
                L4State::Stream(_) => true,
            };
            if !fine {
                self.offload_release(idx);
            }
        }
    }

    /// A TCP segment the tracker did not accept (nor ignore): invalid,
    /// invalid with a shorter timeout, the end of an unreplied connection, or
    /// a restart (`None`: the caller destroys the entry and starts over).
    #[inline(never)]
    pub(super) fn tcp_refused(
        &mut self,
        idx: u32,
        dir: Direction,
        pkt: &Packet<'_>,
        now: u64,
        verdict: TcpVerdict,
        mut track: Track,
    ) -> Option<Track> {
        let cfg = &self.cfg.tcp;
        let e = &mut self.entries[idx as usize];
        match verdict {
            TcpVerdict::Accept { .. } | TcpVerdict::Ignore => {}
            TcpVerdict::InvalidShrink(r) => {
                let unack = timeout_ns(cfg.timeouts.unack);
                let left = e.deadline.saturating_sub(now);
                if left >= 120 * SEC && left > unack {
                    e.deadline = now + unack;
                    // Moving a deadline earlier must relink the wheel.
                    let d = e.deadline;
                    self.set_deadline(idx, d);
                }
                track.state = CtState::Invalid;
                track.reason = Some(r);
            }
            TcpVerdict::AcceptKill => {
                self.account(idx, dir, pkt);
                self.destroy(idx);
            }
            TcpVerdict::Invalid(r) => {
                track.state = CtState::Invalid;
                track.reason = Some(r);
            }
            TcpVerdict::Restart => return None,
        }
        Some(track)
    }

    /// UDP and GRE: unreplied timeout until a reply, then the stream timeout once
    /// the flow has lived two seconds, which also makes it assured (kernel
    /// `udp_packet`, `gre_packet`).
    pub(super) fn stream_timeout(
        &mut self,
        idx: u32,
        seen_reply: bool,
        now: u64,
        unreplied: u32,
        stream: u32,
    ) -> u64 {
        let e = &mut self.entries[idx as usize];
        if !seen_reply {
            return timeout_ns(unreplied);
        }
        let stream_ts = match e.l4 {
            L4State::Stream(ts) => ts.get(),
            L4State::Tcp(_) => 0,
        };
        if now > stream_ts {
            e.status |= status::ASSURED;
            timeout_ns(stream)
        } else {
            timeout_ns(unreplied)
        }
    }

    pub(super) fn icmp_timeout(&self, f: Family) -> u32 {
        match f {
            Family::V4 => self.cfg.timeouts.icmp,
            Family::V6 => self.cfg.timeouts.icmpv6,
        }
    }

    pub(super) fn account(&mut self, idx: u32, dir: Direction, pkt: &Packet<'_>) {
        let e = &mut self.entries[idx as usize];
        e.packets[dir.index()] += 1;
        e.bytes[dir.index()] += u64::from(pkt.ip_len);
    }

    /// First packet of a flow: may it open an entry, and with which timeout?
    pub(super) fn new_conn(&mut self, pkt: &Packet<'_>, hash: u64, now: u64) -> Track {
        let t = &pkt.tuple;
        // UDP, GRE, ICMP and the rest: a replied flow counts as a stream
        // after two seconds.
        let stream = L4State::Stream(Ns::new(now + 2 * SEC));
        let (l4, timeout) = match pkt.l4 {
            L4::Tcp(seg) => match tcp::new_conn(&seg, &self.cfg.tcp) {
                Ok((conn, tmo)) => (L4State::Tcp(conn), tmo),
                Err(r) => return Track::verdictless(CtState::Invalid, Some(r)),
            },
            L4::Udp { .. } => (stream, self.cfg.timeouts.udp),
            L4::Icmp(Icmp::Query) => {
                if !icmp_type_opens(t.family, t.icmp_type()) {
                    return Track::verdictless(CtState::Invalid, Some(DropReason::IcmpBadType));
                }
                (stream, self.icmp_timeout(t.family))
            }
            L4::Icmp(_) => {
                return Track::verdictless(CtState::Invalid, Some(DropReason::IcmpBadType));
            }
            L4::Other { .. } if t.proto == ipproto::GRE => (stream, self.cfg.timeouts.gre),
            L4::Other { .. } | L4::Fragment => {
                // A TCP first fragment too short for its header still makes
                // a TCP entry (its state table starts from NONE).
                let l4 = if t.proto == ipproto::TCP {
                    L4State::Tcp(TcpConn::default())
                } else {
                    stream
                };
                (l4, self.cfg.timeouts.generic)
            }
        };
        if let Some(sc) = &self.sources {
            if sc.get(t.family, t.src) >= self.cfg.max_per_source {
                self.stats.source_limit += 1;
                let mut tr = Track::verdictless(CtState::New, Some(DropReason::SourceLimit));
                tr.must_drop = true;
                return tr;
            }
        }
        let idx = match self.alloc(hash, now) {
            Ok(i) => i,
            Err(r) => {
                let mut tr = Track::verdictless(CtState::New, Some(r));
                tr.must_drop = true;
                return tr;
            }
        };
        // "Welcome, Mr. Bond": a matching expectation makes the connection
        // related. As in the kernel, the expectation is used up here, whatever
        // policy then decides.
        let mut state = CtState::New;
        let mut helper = None;
        let mut child_helper = 0;
        let mut master_helper = 0;
        if !self.expects.is_empty() {
            if let Some(slot) = self.expects.find(t, now) {
                let (master, child, permanent) = self.expects.get(slot);
                master_helper = if master == expect::MIRROR {
                    self.expects.helper_code(slot)
                } else {
                    self.entries[master as usize].helper
                };
                if !permanent {
                    self.unlink_expectation(slot, true);
                }
                self.expects.stats.expect_new += 1;
                helper = helper_of(master_helper);
                child_helper = helper_code(child);
                state = CtState::Related;
                if helper == Some(HelperKind::Pptp) {
                    self.pptp_expected(t, now);
                }
            }
        }
        let orig = self.store_orig(idx, t);
        let e = &mut self.entries[idx as usize];
        *e = Entry {
            orig,
            status: status::USED,
            helper: 0,
            deadline: now + timeout_ns(timeout),
            l4,
            packets: [1, 0],
            bytes: [u64::from(pkt.ip_len), 0],
            ttick: 0,
            master_helper: 0,
        };
        if state == CtState::Related {
            e.status |= status::EXPECTED;
            e.master_helper = master_helper;
            e.helper = child_helper;
            if t.proto == ipproto::GRE && helper == Some(HelperKind::Pptp) {
                e.deadline = now + timeout_ns(help::PPTP_GRE_TIMEOUT);
            }
        }
        Track {
            state,
            reply: false,
            reason: None,
            helper,
            must_drop: false,
            conn: idx,
            pending: idx,
            epoch: self.inserts,
            hash,
            frag: None,
        }
    }

    /// ICMP error: `related` to the entry of the packet it quotes, else invalid
    /// (kernel `nf_conntrack_inet_error`). The quoted packet travelled towards the
    /// error's sender, so the outer destination must be the quoted source.
    fn icmp_error(&mut self, pkt: &Packet<'_>, inner: &Tuple, now: u64) -> Track {
        let invalid = |s: &mut Self, r| {
            s.stats.invalid += 1;
            Track::verdictless(CtState::Invalid, Some(r))
        };
        if inner.family != pkt.tuple.family {
            return invalid(self, DropReason::IcmpErrorBadInner);
        }
        let hash = self.hash(inner);
        let Some((idx, inner_dir)) = self.lookup(inner, hash) else {
            return invalid(self, DropReason::IcmpErrorNoFlow);
        };
        if self.entries[idx as usize].deadline <= now {
            return invalid(self, DropReason::IcmpErrorNoFlow);
        }
        if pkt.tuple.dst != inner.src {
            return invalid(self, DropReason::IcmpErrorBadInner);
        }
        self.stats.found += 1;
        let e = &self.entries[idx as usize];
        let helper = helper_of(e.helper);
        // The error travels opposite to the packet it quotes.
        let dir = inner_dir.flip();
        self.account(idx, dir, pkt);
        Track::of_entry(idx, CtState::Related, dir, helper)
    }

    /// Policy accepted the packet: a pending entry enters the table (with the
    /// helper policy assigned), and a first fragment's verdict is remembered.
    pub fn confirm(&mut self, track: &Track, helper: Option<HelperKind>, now: u64) {
        let mut conn = NONE;
        if track.pending != NONE {
            let idx = track.pending;
            // Another packet cannot have inserted the tuple meanwhile (one packet at
            // a time per table), but keep the kernel's check: a clash is counted.
            // Only an insert since the packet was tracked can clash.
            if self.inserts != track.epoch && self.lookup(&self.orig(idx), track.hash).is_some() {
                self.stats.insert_failed += 1;
                self.release(idx);
            } else {
                self.index_insert(idx, track.hash);
                self.inserts = self.inserts.wrapping_add(1);
                let e = &mut self.entries[idx as usize];
                e.status |= status::CONFIRMED;
                if helper.is_some() {
                    e.helper = helper_code(helper);
                }
                let deadline = e.deadline;
                let tick = self.wheel.clamp(deadline);
                self.wheel_link(idx, tick);
                self.stats.new += 1;
                if self.sources.is_some() {
                    let t = self.orig(idx);
                    if let Some(sc) = &mut self.sources {
                        sc.inc(t.family, t.src);
                    }
                }
                self.attach_helper(idx);
                if self.events.on {
                    self.now = now;
                    self.emit(EventKind::New, idx);
                }
                conn = idx;
            }
        }
        self.remember_fragment(track, true, conn, now);
    }

    /// Policy dropped the packet: a pending entry is freed, leaving no state.
    pub fn abort(&mut self, track: &Track, now: u64) {
        if track.pending != NONE {
            self.release(track.pending);
        }
        self.remember_fragment(track, false, NONE, now);
    }
}
