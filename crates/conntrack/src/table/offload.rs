//! Flow offload, the core's side: which connections a fast path (Tollgate's
//! XDP program) may forward, and taking their state back, exactly, before the
//! slow path touches them again.
//!
//! The core stays the owner of every connection. An offloaded entry is marked;
//! whenever one of its packets reaches the core, or its timer fires, the core
//! first asks the [`FastPath`] for the connection back and merges what the
//! fast path did (counters, last-seen time, TCP window state) as if it had
//! processed those packets itself; the owner then deletes the fast path's
//! entry (see [`Conntrack::drain_offload_gone`]). While a fast path entry is
//! still *pending* (installed, but packets still come to the slow path until
//! the owner has forwarded every one of them, to keep their order), the core
//! keeps processing normally and the entry stays marked.

use super::entry::{status, L4State};
use super::{Conntrack, NONE, SEC};
use crate::expect::helper_of;
use crate::proto::tcp::TcpFast;
use crate::tuple::ipproto;
use crate::tuple::Tuple;
use crate::HelperKind;

/// What the fast path did with a connection, handed back to the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastState {
    /// When it last forwarded a packet of the connection (the core's clock);
    /// `None` if it forwarded none.
    pub last_seen: Option<u64>,
    /// Packets it forwarded per direction since the last hand-back.
    pub packets: [u64; 2],
    /// Their IP bytes.
    pub bytes: [u64; 2],
    /// TCP: the window state as it left it.
    pub tcp: Option<TcpFast>,
}

/// The answer of [`FastPath::reclaim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// Still pending: the fast path forwarded nothing and changed nothing;
    /// the core's state is current and the entry stays offloaded.
    Pending,
    /// Withdrawn from the fast path: its work, to merge.
    Taken(FastState),
}

/// A fast path as the core sees it (implemented by the dataplane over the
/// XDP program's maps; by a model in tests).
pub trait FastPath: Send {
    /// Withdraws connection `conn` (an entry index) from the fast path and
    /// hands back what it did, unless the entry is still pending (or the
    /// packet at hand, of direction `dir`, predates the fast path's taking
    /// it). After `Taken`, the fast path forwards nothing more of it. `dir`
    /// is `None` for a timer or a removal.
    fn reclaim(&mut self, conn: u32, dir: Option<crate::Direction>) -> Reclaim;
}

/// A connection the fast path may take, as [`Conntrack::offload_candidate`]
/// describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Original-direction tuple.
    pub orig: Tuple,
    /// Reply-direction tuple.
    pub reply: Tuple,
    /// Helper policy matches on (the master's, for a related connection).
    pub helper: Option<HelperKind>,
}

/// An ICMP echo request (code 0) tuple: what opens the ICMP connections the
/// fast path may take (its reply direction is then the echo reply).
fn is_echo_request(t: &Tuple) -> bool {
    let request = match t.family {
        crate::tuple::Family::V4 => 8,
        crate::tuple::Family::V6 => 128,
    };
    t.is_icmp() && t.icmp_type() == request && t.icmp_code() == 0
}

impl Conntrack {
    /// Lets the core take offloaded connections back through `fast`.
    pub fn set_fast_path(&mut self, fast: Option<Box<dyn FastPath>>) {
        self.fast = fast;
    }

    /// Connection `conn` may be offloaded now: confirmed, replied, not
    /// offloaded already nor refused, no helper of its own, no expectations,
    /// and either assured and TCP established with both windows known or
    /// UDP, or an ICMP/ICMPv6 echo (code 0) whose request opened it. Policy
    /// is the caller's to check.
    pub fn offload_candidate(&self, conn: u32) -> Option<Candidate> {
        let e = self.entries.get(conn as usize)?;
        let need = status::CONFIRMED | status::SEEN_REPLY;
        if e.status & need != need
            || e.status & (status::OFFLOADED | status::NO_OFFLOAD) != 0
            || e.helper != 0
            || self.ext[conn as usize].help != NONE
            || self.ext[conn as usize].exp_head != NONE
        {
            return None;
        }
        let orig = self.orig(conn);
        let assured = e.status & status::ASSURED != 0;
        match (orig.proto, &e.l4) {
            (ipproto::TCP, L4State::Tcp(c)) if assured && c.offloadable(&self.cfg.tcp) => {}
            (ipproto::UDP, L4State::Stream(_)) if assured => {}
            // ICMP never becomes assured (the kernel's icmp_packet only
            // refreshes the timeout): a replied echo is as established as it
            // gets. Only echo: the fast path parses no other ICMP.
            (ipproto::ICMP | ipproto::ICMPV6, L4State::Stream(_)) if is_echo_request(&orig) => {}
            _ => return None,
        }
        let helper = if e.status & status::EXPECTED != 0 {
            helper_of(e.master_helper)
        } else {
            None
        };
        Some(Candidate {
            orig,
            reply: orig.invert(),
            helper,
        })
    }

    /// Marks `conn` offloaded (its fast path entry installed, pending).
    pub fn offload_begin(&mut self, conn: u32) {
        if let Some(e) = self.entries.get_mut(conn as usize) {
            if e.status & status::CONFIRMED != 0 {
                e.status |= status::OFFLOADED;
                self.stats.offloaded += 1;
            }
        }
    }

    /// Policy (or the fast path) will not take `conn`: not asked again until
    /// the policy changes.
    pub fn offload_refuse(&mut self, conn: u32) {
        if let Some(e) = self.entries.get_mut(conn as usize) {
            if e.status & status::CONFIRMED != 0 {
                e.status |= status::NO_OFFLOAD;
            }
        }
    }

    /// True if `conn` is offloaded (pending or active).
    pub fn is_offloaded(&self, conn: u32) -> bool {
        self.entries
            .get(conn as usize)
            .is_some_and(|e| e.status & status::OFFLOADED != 0)
    }

    /// Connection `conn`'s TCP tracking state (tests and diagnostics).
    pub fn tcp_conn(&self, conn: u32) -> Option<crate::proto::tcp::TcpConn> {
        match &self.entries.get(conn as usize)?.l4 {
            L4State::Tcp(c) => Some(*c),
            L4State::Stream(_) => None,
        }
    }

    /// The TCP state a fast path starts from when it activates `conn`.
    pub fn offload_tcp(&self, conn: u32) -> Option<TcpFast> {
        match &self.entries.get(conn as usize)?.l4 {
            L4State::Tcp(c) if self.is_offloaded(conn) => Some(c.fast_view()),
            _ => None,
        }
    }

    /// Merges what the fast path did so far while it keeps the connection
    /// (counters, last seen, window state): listings and timeouts stay live.
    /// The fast path must have zeroed the counters it handed over.
    pub fn offload_refresh(&mut self, conn: u32, fs: &FastState) {
        if self.is_offloaded(conn) {
            self.merge_fast(conn, fs, true);
        }
    }

    /// Offloaded connections that left the core (taken back, destroyed): the
    /// owner deletes their fast path entries.
    pub fn drain_offload_gone(&mut self, out: &mut Vec<u32>) {
        out.append(&mut self.offload_gone);
    }

    /// Takes every offloaded connection back (a policy change: what the fast
    /// path forwards was decided under the old policy) and forgets refusals.
    pub fn offload_reset(&mut self) {
        for idx in 0..self.entries.len() {
            let st = self.entries[idx].status;
            if st & status::NO_OFFLOAD != 0 {
                self.entries[idx].status &= !status::NO_OFFLOAD;
            }
            if st & status::OFFLOADED != 0 {
                // idx < entries.len() <= u32::MAX.
                #[allow(clippy::cast_possible_truncation)]
                self.offload_withdraw(idx as u32);
            }
        }
    }

    /// Takes `conn` back from the fast path, pending or not (its owner
    /// stops, or removes it).
    pub fn offload_release(&mut self, conn: u32) {
        if self.is_offloaded(conn) {
            self.offload_withdraw(conn);
        }
    }

    /// Takes `conn` back from the fast path if it is offloaded and not
    /// pending: merges, unmarks, queues its removal. Returns false while it
    /// is still pending.
    pub(super) fn offload_take_back(&mut self, idx: u32, dir: Option<crate::Direction>) -> bool {
        self.take_back(idx, dir, true)
    }

    /// [`Self::offload_take_back`]; `linked`: the entry is on the timer
    /// wheel (not being reaped).
    fn take_back(&mut self, idx: u32, dir: Option<crate::Direction>, linked: bool) -> bool {
        let Some(fast) = self.fast.as_mut() else {
            self.entries[idx as usize].status &= !status::OFFLOADED;
            self.offload_gone.push(idx);
            return true;
        };
        match fast.reclaim(idx, dir) {
            Reclaim::Pending => false,
            Reclaim::Taken(fs) => {
                self.merge_fast(idx, &fs, linked);
                self.entries[idx as usize].status &= !status::OFFLOADED;
                self.offload_gone.push(idx);
                self.stats.offload_returned += 1;
                true
            }
        }
    }

    /// Withdraws `conn` whether pending or not (policy change, removal).
    fn offload_withdraw(&mut self, idx: u32) {
        self.withdraw(idx, true);
    }

    fn withdraw(&mut self, idx: u32, linked: bool) {
        if !self.take_back(idx, None, linked) {
            // Pending: nothing to merge; the owner removes the entry.
            self.entries[idx as usize].status &= !status::OFFLOADED;
            self.offload_gone.push(idx);
        }
    }

    /// Adds the fast path's work to entry `idx` as if the core had done it.
    fn merge_fast(&mut self, idx: u32, fs: &FastState, linked: bool) {
        let tcp_cfg = &self.cfg.tcp;
        let udp_stream = self.cfg.timeouts.udp_stream;
        let orig = self.orig(idx);
        // What the slow path's ICMP path sets with every packet.
        let icmp = orig.is_icmp().then(|| self.icmp_timeout(orig.family));
        let e = &mut self.entries[idx as usize];
        for d in 0..2 {
            e.packets[d] += fs.packets[d];
            e.bytes[d] += fs.bytes[d];
        }
        let timeout = match (&mut e.l4, &fs.tcp) {
            (L4State::Tcp(c), Some(t)) => {
                c.adopt_fast(t);
                c.ack_timeout(tcp_cfg)
            }
            (L4State::Tcp(c), None) => c.ack_timeout(tcp_cfg),
            (L4State::Stream(_), _) => icmp.unwrap_or(udp_stream),
        };
        if let Some(seen) = fs.last_seen {
            let deadline = seen + u64::from(timeout) * SEC;
            if linked {
                self.set_deadline(idx, deadline);
            } else {
                // Being reaped: the wheel relinks it (or destroys it).
                self.entries[idx as usize].deadline = deadline;
            }
        }
    }

    /// Expiry of an offloaded entry: take it back first; true if it must
    /// still go (its deadline, fast path activity included, has passed).
    pub(super) fn offload_expired(&mut self, idx: u32, now: u64) -> bool {
        self.withdraw(idx, false);
        self.entries[idx as usize].deadline <= now
    }

    /// Destroying an offloaded entry: the owner removes its fast path entry.
    pub(super) fn offload_destroyed(&mut self, idx: u32) {
        let e = &mut self.entries[idx as usize];
        if e.status & status::OFFLOADED != 0 {
            e.status &= !status::OFFLOADED;
            self.offload_gone.push(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Pkt;
    use crate::policy::{Action, Policy, Side};
    use crate::{Config, Pipeline};
    use std::sync::{Arc, Mutex};

    /// A fast path as a test drives it: what `reclaim` answers, and what it
    /// was asked.
    #[derive(Default)]
    struct Model {
        pending: bool,
        state: FastState,
        asked: Vec<u32>,
        /// The packet directions it was asked with.
        dirs: Vec<Option<crate::Direction>>,
    }

    struct Shared(Arc<Mutex<Model>>);

    impl FastPath for Shared {
        fn reclaim(&mut self, conn: u32, dir: Option<crate::Direction>) -> Reclaim {
            let mut m = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.asked.push(conn);
            m.dirs.push(dir);
            if m.pending {
                Reclaim::Pending
            } else {
                Reclaim::Taken(std::mem::take(&mut m.state))
            }
        }
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn setup() -> (Pipeline, Arc<Mutex<Model>>) {
        setup_with(Config {
            max_entries: 64,
            ..Config::default()
        })
    }

    fn setup_with(cfg: Config) -> (Pipeline, Arc<Mutex<Model>>) {
        let mut p = Pipeline::new(
            cfg,
            Policy {
                rules: vec![],
                default: Action::Accept,
            },
        );
        let m = Arc::new(Mutex::new(Model::default()));
        p.conntrack_mut()
            .set_fast_path(Some(Box::new(Shared(m.clone()))));
        (p, m)
    }

    /// An assured UDP flow: its entry index.
    fn assured_udp(p: &mut Pipeline) -> u32 {
        let out = Pkt::udp4(A, 1000, B, 53).payload(b"q").build();
        let back = Pkt::udp4(B, 53, A, 1000).payload(b"r").build();
        p.process(Side::Inside, &out, 0);
        p.process(Side::Outside, &back, SEC);
        p.process(Side::Inside, &out, 3 * SEC);
        let c = p.conntrack().connections(3 * SEC).next().map(|c| c.orig);
        assert!(c.is_some());
        (0..64)
            .find(|&i| p.conntrack().offload_candidate(i).is_some())
            .unwrap_or(u32::MAX)
    }

    #[test]
    fn candidates_are_assured_and_helperless() {
        let (mut p, _) = setup();
        let out = Pkt::udp4(A, 1000, B, 53).payload(b"q").build();
        p.process(Side::Inside, &out, 0);
        assert!(
            (0..64).all(|i| p.conntrack().offload_candidate(i).is_none()),
            "unreplied"
        );
        let conn = assured_udp(&mut p);
        assert_ne!(conn, u32::MAX);
        let plan = p
            .offload_plan(conn, Side::Inside, false)
            .map(|x| x.orig_side);
        assert_eq!(plan, Some(Side::Inside));
        p.conntrack_mut().offload_begin(conn);
        assert!(p.conntrack().offload_candidate(conn).is_none(), "once");
        // A policy that drops replies refuses it, until the policy changes.
        let (mut p, _) = setup();
        let conn = assured_udp(&mut p);
        let mut drop_replies = crate::policy::Rule::any(Action::Drop);
        drop_replies.from = Some(Side::Outside);
        drop_replies.states = crate::policy::StateSet::default().with(crate::CtState::Established);
        let mut pol = Policy {
            rules: vec![drop_replies],
            default: Action::Accept,
        };
        p.set_policy(pol.clone());
        assert!(p.offload_plan(conn, Side::Inside, false).is_none());
        assert!(p.conntrack().offload_candidate(conn).is_none(), "refused");
        pol.rules.clear();
        p.set_policy(pol);
        assert!(
            p.offload_plan(conn, Side::Inside, false).is_some(),
            "asked again"
        );
    }

    const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// The only entry of `p` that is a candidate, if any.
    fn candidate(p: &Pipeline) -> Option<u32> {
        (0..64).find(|&i| p.conntrack().offload_candidate(i).is_some())
    }

    #[test]
    fn icmp_echo_is_a_candidate_once_replied() {
        // IPv4: unreplied, no; replied, yes, though never assured.
        let (mut p, _) = setup();
        let req = Pkt::echo4(A, B, 7, 1, false).build();
        p.process(Side::Inside, &req, 0);
        assert_eq!(candidate(&p), None, "unreplied");
        let rep = Pkt::echo4(B, A, 7, 1, true).build();
        p.process(Side::Outside, &rep, SEC);
        let conn = candidate(&p).expect("a replied echo is a candidate");
        let c = p.conntrack().offload_candidate(conn).expect("candidate");
        assert_eq!((c.orig.icmp_type(), c.reply.icmp_type()), (8, 0));
        assert_eq!((c.orig.src_port, c.reply.src_port), (7, 7));
        let info = p.conntrack().connections(SEC).next().expect("entry");
        assert!(!info.assured, "ICMP is never assured");
        // IPv6 likewise.
        let (mut p, _) = setup();
        p.process(Side::Inside, &Pkt::echo6(A6, B6, 9, 1, false).build(), 0);
        assert_eq!(candidate(&p), None, "unreplied v6");
        p.process(Side::Outside, &Pkt::echo6(B6, A6, 9, 1, true).build(), SEC);
        let conn = candidate(&p).expect("a replied v6 echo is a candidate");
        let c = p.conntrack().offload_candidate(conn).expect("candidate");
        assert_eq!((c.orig.icmp_type(), c.reply.icmp_type()), (128, 129));
        // Other queries, replied: not for the fast path. A timestamp
        // request, and an echo with a code other than 0.
        for (ty, code, answer) in [(13, 0, 14), (8, 1, 0)] {
            let (mut p, _) = setup();
            p.process(Side::Inside, &Pkt::icmp4(A, B, ty, code, &[]).build(), 0);
            let back = Pkt::icmp4(B, A, answer, code, &[]).build();
            let r = p.process(Side::Outside, &back, SEC);
            assert_eq!(
                r.state,
                crate::CtState::Established,
                "type {ty} code {code}"
            );
            assert_eq!(candidate(&p), None, "type {ty} code {code}");
        }
        // An ICMPv6 node information query, replied: not either.
        let (mut p, _) = setup();
        p.process(Side::Inside, &Pkt::icmp6(A6, B6, 139, 0, &[]).build(), 0);
        let r = p.process(Side::Outside, &Pkt::icmp6(B6, A6, 140, 0, &[]).build(), SEC);
        assert_eq!(r.state, crate::CtState::Established);
        assert_eq!(candidate(&p), None, "node information");
    }

    #[test]
    fn icmp_merge_applies_the_icmp_timeout() {
        let mut cfg = Config {
            max_entries: 64,
            ..Config::default()
        };
        cfg.timeouts.icmp = 30;
        cfg.timeouts.icmpv6 = 20;
        for v6 in [false, true] {
            let (mut p, m) = setup_with(cfg.clone());
            let (req, rep) = if v6 {
                (
                    Pkt::echo6(A6, B6, 3, 1, false).build(),
                    Pkt::echo6(B6, A6, 3, 1, true).build(),
                )
            } else {
                (
                    Pkt::echo4(A, B, 3, 1, false).build(),
                    Pkt::echo4(B, A, 3, 1, true).build(),
                )
            };
            let timeout = if v6 { 20 } else { 30 };
            p.process(Side::Inside, &req, 0);
            p.process(Side::Outside, &rep, SEC);
            let conn = candidate(&p).expect("candidate");
            p.conntrack_mut().offload_begin(conn);
            // The fast path forwarded 4 echoes, the last at 10 s.
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .state = FastState {
                last_seen: Some(10 * SEC),
                packets: [2, 2],
                bytes: [168, 168],
                tcp: None,
            };
            // The entry's own deadline (1 s + timeout) fires: the merge moves
            // it to 10 s + the ICMP timeout (not UDP's stream timeout).
            p.process_batch(&[], (timeout + 2) * SEC, &mut []);
            let c = p
                .conntrack()
                .connections((timeout + 2) * SEC)
                .next()
                .expect("kept alive by the fast path");
            assert!(!c.offloaded, "taken back by its timer");
            assert_eq!(c.packets, [3, 3]);
            assert_eq!(c.expires_in, 8 * SEC, "v6 {v6}");
            p.process_batch(&[], (timeout + 9) * SEC, &mut []);
            assert_eq!(p.conntrack().len(), 1, "alive until 10 s + {timeout} s");
            p.process_batch(&[], (timeout + 11) * SEC, &mut []);
            assert_eq!(p.conntrack().len(), 0, "expired");
        }
    }

    #[test]
    fn an_echo_takes_its_flow_back_as_a_plain_packet() {
        let (mut p, m) = setup();
        p.process(Side::Inside, &Pkt::echo4(A, B, 5, 1, false).build(), 0);
        p.process(Side::Outside, &Pkt::echo4(B, A, 5, 1, true).build(), SEC);
        let conn = candidate(&p).expect("candidate");
        p.conntrack_mut().offload_begin(conn);
        // Still pending: the echo is tracked on the core's state, the flow
        // stays offloaded. It was asked for with its direction (a packet the
        // fast path may have let the slow path keep), as a UDP one would be.
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending = true;
        let r = p.process(
            Side::Inside,
            &Pkt::echo4(A, B, 5, 2, false).build(),
            2 * SEC,
        );
        assert_eq!(r.verdict, Action::Accept);
        assert!(p.conntrack().is_offloaded(conn));
        assert_eq!(
            m.lock().map(|m| m.dirs.clone()).unwrap_or_default(),
            vec![Some(crate::Direction::Original)]
        );
        let c = p.conntrack().connections(2 * SEC).next().expect("entry");
        assert_eq!(c.packets, [2, 1]);
        assert_eq!(c.expires_in, 30 * SEC, "the ICMP timeout, refreshed");
    }

    #[test]
    fn a_packet_takes_the_flow_back_with_its_work() {
        let (mut p, m) = setup();
        let conn = assured_udp(&mut p);
        p.conntrack_mut().offload_begin(conn);
        let before = p.conntrack().connections(3 * SEC).next().map(|c| c.packets);
        // The fast path forwarded 10 packets, the last at 50 s.
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state = FastState {
            last_seen: Some(50 * SEC),
            packets: [7, 3],
            bytes: [700, 300],
            tcp: None,
        };
        let c = p.conntrack().connections(60 * SEC).next();
        assert!(c.as_ref().is_some_and(|c| c.offloaded));
        // Its entry's own deadline (3 s + 120 s) has not passed; a packet at
        // 60 s takes the flow back first.
        let out = Pkt::udp4(A, 1000, B, 53).payload(b"q").build();
        let r = p.process(Side::Inside, &out, 60 * SEC);
        assert_eq!(r.verdict, Action::Accept);
        let mut gone = Vec::new();
        p.conntrack_mut().drain_offload_gone(&mut gone);
        assert_eq!(gone, vec![conn]);
        let c = p.conntrack().connections(60 * SEC).next().expect("alive");
        assert!(!c.offloaded);
        let b = before.unwrap_or_default();
        assert_eq!(c.packets, [b[0] + 7 + 1, b[1] + 3]);
        assert_eq!(
            m.lock().map(|m| m.asked.clone()).unwrap_or_default(),
            vec![conn]
        );
    }

    #[test]
    fn timers_ask_the_fast_path_first() {
        let (mut p, m) = setup();
        let conn = assured_udp(&mut p);
        p.conntrack_mut().offload_begin(conn);
        // Forwarded until 100 s: alive at 200 s (100 + 120), gone after.
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state = FastState {
            last_seen: Some(100 * SEC),
            packets: [1, 1],
            bytes: [1, 1],
            tcp: None,
        };
        p.process_batch(&[], 200 * SEC, &mut []);
        assert_eq!(p.conntrack().len(), 1, "kept alive by the fast path");
        let mut gone = Vec::new();
        p.conntrack_mut().drain_offload_gone(&mut gone);
        assert_eq!(gone, vec![conn], "taken back when its timer fired");
        p.process_batch(&[], 221 * SEC, &mut []);
        assert_eq!(p.conntrack().len(), 0, "expired");
        // A pending flow expires on its own deadline, and leaves the fast
        // path.
        let (mut p, m) = setup();
        let conn = assured_udp(&mut p);
        p.conntrack_mut().offload_begin(conn);
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending = true;
        p.process_batch(&[], 124 * SEC, &mut []);
        assert_eq!(p.conntrack().len(), 0);
        let mut gone = Vec::new();
        p.conntrack_mut().drain_offload_gone(&mut gone);
        assert_eq!(gone, vec![conn]);
    }

    #[test]
    fn flush_and_policy_changes_release_everything() {
        let (mut p, _) = setup();
        let conn = assured_udp(&mut p);
        p.conntrack_mut().offload_begin(conn);
        p.set_policy(Policy {
            rules: vec![],
            default: Action::Accept,
        });
        let mut gone = Vec::new();
        p.conntrack_mut().drain_offload_gone(&mut gone);
        assert_eq!(gone, vec![conn], "reload");
        assert!(!p.conntrack().is_offloaded(conn));
        p.conntrack_mut().offload_begin(conn);
        p.conntrack_mut().flush();
        p.conntrack_mut().drain_offload_gone(&mut gone);
        assert_eq!(gone, vec![conn, conn], "flush");
    }
}
