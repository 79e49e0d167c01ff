//! Running helpers on accepted packets (the kernel's helper hook): the slab of
//! per-connection helper state, the context a helper's glue runs in
//! (`HelpCx`: its packet, its state, what it may ask of the table), the
//! expectations it asked for, and the GRE keys the PPTP helper learns.
//!
//! Which helper runs is the registry's `match` (`HelperKind::help`); each
//! helper's glue, with the anti-bounce checks it makes, lives beside its
//! parser in `crate::helpers`.

use super::entry::status;
use super::{Conntrack, NONE};
use crate::expect::helper_of;
use crate::expect::{ExpectPolicy, ExpectSpec};
use crate::helpers::pptp::{self, PptpState};
use crate::helpers::{HelpState, HelperKind};
use crate::linebuf::LineBuf;
use crate::packet::{Packet, L4};
use crate::table::Track;
use crate::tuple::{Addr, Family, Tuple};

/// Most GRE keys the PPTP helper remembers at once (two per call).
pub(super) const KEYMAP_MAX: usize = 4096;
/// Seconds an unreplied PPTP GRE flow lives (`PPTP_GRE_TIMEOUT`).
pub(super) const PPTP_GRE_TIMEOUT: u32 = 600;
/// Seconds a replied PPTP GRE flow lives (`PPTP_GRE_STREAM_TIMEOUT`).
pub(super) const PPTP_GRE_STREAM_TIMEOUT: u32 = 5 * 24 * 3600;

/// A learnt GRE key: packets from `src` to `dst` with key `dst_key` carry the
/// sender's key `src_key` (the kernel's `nf_ct_gre_keymap`).
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyMap {
    /// The control connection's slot (`MIRROR` for a key another shard
    /// learnt: then `origin` says whose).
    master: u32,
    origin: crate::expect::Origin,
    src: Addr,
    dst: Addr,
    family: Family,
    dst_key: u16,
    src_key: u16,
}

/// Per-helper counters, indexed by `HelperKind as usize`.
type PerHelper = [u64; HelperKind::COUNT];

/// Helper counters, per helper (indexed by `HelperKind as usize`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelperStats {
    /// Packets the helper parsed.
    pub packets: PerHelper,
    /// Malformed helper messages.
    pub parse_errors: PerHelper,
    /// Expectations created.
    pub expectations: PerHelper,
    /// Announcements refused: address not the sender's (bounce), family mismatch.
    pub refused: PerHelper,
    /// Expectations the table refused (full, clash).
    pub expect_failed: PerHelper,
    /// Connections that got no helper state because the helper slab was full.
    pub no_state: PerHelper,
}

/// The slab of helper states, allocated once.
#[derive(Clone, Debug)]
pub(super) struct Helps {
    states: Vec<HelpState>,
    free: Vec<u32>,
}

impl Helps {
    pub(super) fn new(n: u32) -> Helps {
        Helps {
            states: vec![HelpState::default(); n as usize],
            free: (0..n).rev().collect(),
        }
    }

    pub(super) fn alloc(&mut self) -> Option<u32> {
        let i = self.free.pop()?;
        self.states[i as usize] = HelpState::default();
        Some(i)
    }

    pub(super) fn release(&mut self, i: u32) {
        if (i as usize) < self.states.len() {
            self.free.push(i);
        }
    }
}

/// Most announcements one packet may carry (SIP: 8 streams, RTP and RTCP).
const ASKS_MAX: usize = 16;

/// What a helper's glue hands back after one packet, besides what it did
/// through [`HelpCx`] at once.
#[derive(Debug)]
pub(crate) struct Asks {
    specs: [Option<ExpectSpec>; ASKS_MAX],
    n: usize,
    errors: u64,
    refused: u64,
    end_call: bool,
    unregister: Option<Tuple>,
}

impl Asks {
    /// Asks for an expectation (the table sets the asking helper; beyond
    /// `ASKS_MAX` a packet's requests are dropped).
    pub(crate) fn push(&mut self, spec: ExpectSpec) {
        if let Some(slot) = self.specs.get_mut(self.n) {
            *slot = Some(spec);
            self.n += 1;
        }
    }

    /// Counts a malformed helper message.
    pub(crate) fn error(&mut self) {
        self.errors += 1;
    }

    /// Counts a refused announcement (bounce, family mismatch).
    pub(crate) fn refuse(&mut self) {
        self.refused += 1;
    }

    /// The call ends (SIP `BYE`, `CANCEL`): the connection's expectations go.
    pub(crate) fn end_call(&mut self) {
        self.end_call = true;
    }

    /// The expectation for `t` goes (a SIP registration with expires 0).
    pub(crate) fn unregister(&mut self, t: Tuple) {
        self.unregister = Some(t);
    }
}

/// One run of a helper on one accepted packet of a connection it is
/// attached to: what its glue reads, and what it may ask of the table.
pub(crate) struct HelpCx<'a, 'p> {
    ct: &'a mut Conntrack,
    idx: u32,
    help: usize,
    /// The helper.
    pub(crate) kind: HelperKind,
    /// The packet.
    pub(crate) pkt: &'a Packet<'p>,
    /// Its tracking result.
    pub(crate) track: &'a Track,
    /// The connection's original tuple.
    pub(crate) orig: Tuple,
    /// The packet goes in the original direction.
    pub(crate) from_client: bool,
    /// The packet's time.
    pub(crate) now: u64,
    // A reference: the requests are a kilobyte, not to be moved.
    asks: &'a mut Asks,
}

impl<'p> HelpCx<'_, 'p> {
    /// Counts a packet the helper parses.
    pub(crate) fn parsed(&mut self) {
        self.ct.help_stats.packets[self.kind as usize] += 1;
    }

    /// The packet's TCP segment, counted as parsed ([`Self::parsed`]), if it
    /// carries a payload: what the TCP helpers read. `None` (nothing
    /// counted) for one without payload, or not TCP.
    pub(crate) fn tcp_payload(&mut self) -> Option<crate::packet::TcpSeg<'p>> {
        let crate::packet::L4::Tcp(seg) = self.pkt.l4 else {
            return None;
        };
        if seg.payload.is_empty() {
            return None;
        }
        self.parsed();
        Some(seg)
    }

    /// Requests and counts for the table.
    pub(crate) fn asks(&mut self) -> &mut Asks {
        self.asks
    }

    /// The connection's helper state and the requests, borrowed together.
    pub(crate) fn state(&mut self) -> (&mut HelpState, &mut Asks) {
        (&mut self.ct.helps.states[self.help], self.asks)
    }

    /// The line buffer of the packet's direction and the requests.
    pub(crate) fn lines(&mut self) -> (&mut LineBuf, &mut Asks) {
        let dir = usize::from(self.track.reply);
        let (st, asks) = self.state();
        (&mut st.lines[dir], asks)
    }

    /// The helper's expectation policy.
    pub(crate) fn policy(&self) -> ExpectPolicy {
        self.ct.cfg.expect_policy[self.kind as usize]
    }

    /// The FTP helper accepts third-party addresses (`ftp_loose`).
    pub(crate) fn ftp_loose(&self) -> bool {
        self.ct.cfg.ftp_loose
    }

    /// Sets the connection's deadline (nanoseconds).
    pub(crate) fn set_deadline(&mut self, deadline: u64) {
        self.ct.set_deadline(self.idx, deadline);
    }

    /// PPTP: remembers the GRE key of `t` (a call's GRE tuple) and tells the
    /// other shards.
    pub(crate) fn learn_gre_key(&mut self, t: &Tuple) {
        let ct = &mut *self.ct;
        let origin = crate::expect::Origin {
            worker: ct.expects.shard().unwrap_or(0),
            id: self.idx,
        };
        if ct.keymap.len() < KEYMAP_MAX {
            ct.keymap.push(KeyMap {
                master: self.idx,
                origin,
                src: t.src,
                dst: t.dst,
                family: t.family,
                dst_key: t.dst_port,
                src_key: t.src_port,
            });
        }
        ct.expects.announce(crate::expect::ExpectMsg::GreKey {
            origin,
            src: t.src,
            dst: t.dst,
            family: t.family,
            dst_key: t.dst_port,
            src_key: t.src_port,
        });
    }

    /// PPTP: the call `st` ends.
    pub(crate) fn pptp_teardown(&mut self, st: &PptpState) {
        self.ct.pptp_teardown(self.idx, st, self.now);
    }
}

impl Conntrack {
    /// Gives a newly confirmed connection its helper state.
    pub(super) fn attach_helper(&mut self, idx: u32) {
        let Some(kind) = helper_of(self.entries[idx as usize].helper) else {
            return;
        };
        match self.helps.alloc() {
            Some(h) => self.ext[idx as usize].help = h,
            None => self.help_stats.no_state[kind as usize] += 1,
        }
    }

    /// Runs the connection's helper on an accepted packet (call after
    /// [`Conntrack::confirm`]). Expectations it asks for are created here.
    pub fn help(&mut self, track: &Track, pkt: &Packet<'_>, now: u64) {
        if track.conn == NONE || track.state == crate::CtState::Invalid {
            return;
        }
        let idx = track.conn;
        let Some(e) = self.entries.get(idx as usize) else {
            return;
        };
        let help = self.ext[idx as usize].help;
        if e.status & status::CONFIRMED == 0 || help == NONE {
            return;
        }
        // Related ICMP errors carry the master's tuple, not helper payload.
        if matches!(pkt.l4, L4::Icmp(_)) {
            return;
        }
        let Some(kind) = helper_of(e.helper) else {
            return;
        };
        self.run_helper(kind, idx, help, track, pkt, now);
    }

    /// [`Self::help`] past its checks. Kept out of line: most packets have
    /// no helper, and the pipeline's loop stays small without this body.
    #[inline(never)]
    fn run_helper(
        &mut self,
        kind: HelperKind,
        idx: u32,
        help: u32,
        track: &Track,
        pkt: &Packet<'_>,
        now: u64,
    ) {
        let orig = self.entries[idx as usize]
            .orig
            .tuple(&self.v6hi[idx as usize]);
        let mut asks = Asks {
            specs: [None; ASKS_MAX],
            n: 0,
            errors: 0,
            refused: 0,
            end_call: false,
            unregister: None,
        };
        kind.help(&mut HelpCx {
            ct: self,
            idx,
            help: help as usize,
            kind,
            pkt,
            track,
            orig,
            from_client: !track.reply,
            now,
            asks: &mut asks,
        });
        let ks = kind as usize;
        if asks.end_call {
            // BYE or CANCEL: the call's media expectations go.
            let head = core::mem::replace(&mut self.ext[idx as usize].exp_head, NONE);
            if head != NONE {
                self.expects.remove_all(head);
            }
        }
        if let Some(t) = asks.unregister {
            // Expires 0: the binding (and its expectation) goes.
            if let Some(slot) = self.expects.find(&t, now) {
                self.unlink_expectation(slot, true);
            }
        }
        self.help_stats.parse_errors[ks] += asks.errors;
        self.help_stats.refused[ks] += asks.refused;
        for spec in asks.specs.iter().take(asks.n).flatten() {
            let mut spec = *spec;
            // Limits and timeouts are those of the helper that asked.
            spec.helper = kind;
            match self.expect(idx, &spec, now) {
                Ok(_) => self.help_stats.expectations[ks] += 1,
                Err(_) => self.help_stats.expect_failed[ks] += 1,
            }
        }
    }

    /// The source key of an enhanced GRE packet, if the PPTP helper learnt it.
    pub(super) fn gre_src_key(&self, t: &Tuple) -> Option<u16> {
        self.keymap
            .iter()
            .find(|k| {
                k.src == t.src && k.dst == t.dst && k.family == t.family && k.dst_key == t.dst_port
            })
            .map(|k| k.src_key)
    }

    /// A GRE connection was created from one of a call's two expectations: the
    /// other one is no longer needed (the kernel's `pptp_expectfn`).
    pub(super) fn pptp_expected(&mut self, t: &Tuple, now: u64) {
        let inv = t.invert();
        if let Some(slot) = self.expects.find(&inv, now) {
            self.unlink_expectation(slot, true);
        }
    }

    /// Ends a PPTP call: its GRE connections go, its keys are forgotten
    /// (`pptp_destroy_siblings`). Expectations go with them.
    fn pptp_teardown(&mut self, master: u32, st: &PptpState, now: u64) {
        let orig = self.orig(master);
        let tuples = pptp::gre_tuples(&orig, st);
        self.expects
            .announce(crate::expect::ExpectMsg::GreTeardown {
                origin: crate::expect::Origin {
                    worker: self.expects.shard().unwrap_or(0),
                    id: master,
                },
                tuples,
            });
        for t in tuples {
            let hash = self.hash(&t);
            if let Some((idx, _)) = self.lookup(&t, hash) {
                if idx != master {
                    // Killed lazily: it is already gone for every lookup, and the
                    // wheel reaps it. Destroying it here could pull an entry out
                    // of a wheel bucket the caller is walking.
                    self.entries[idx as usize].deadline = 0;
                }
            } else if let Some(slot) = self.expects.find(&t, now) {
                self.unlink_expectation(slot, true);
            }
        }
        self.keymap.retain(|k| k.master != master);
    }

    /// Another shard learnt a PPTP GRE key.
    pub(super) fn mirror_gre_key(&mut self, k: &crate::expect::ExpectMsg) {
        if let crate::expect::ExpectMsg::GreKey {
            origin,
            src,
            dst,
            family,
            dst_key,
            src_key,
        } = *k
        {
            if self.keymap.len() < KEYMAP_MAX {
                self.keymap.push(KeyMap {
                    master: crate::expect::MIRROR,
                    origin,
                    src,
                    dst,
                    family,
                    dst_key,
                    src_key,
                });
            }
        }
    }

    /// Another shard ended a PPTP call: the GRE connections of it that live
    /// here go (lazily, as in [`Self::pptp_teardown`]), and its keys.
    pub(super) fn mirror_gre_teardown(
        &mut self,
        origin: crate::expect::Origin,
        tuples: &[Tuple; 2],
    ) {
        for t in tuples {
            let hash = self.hash(t);
            if let Some((idx, _)) = self.lookup(t, hash) {
                self.entries[idx as usize].deadline = 0;
            }
        }
        self.keymap
            .retain(|k| !(k.master == crate::expect::MIRROR && k.origin == origin));
    }

    /// Called while a connection with helper state is destroyed.
    pub(super) fn helper_destroyed(&mut self, idx: u32, help: u32) {
        if helper_of(self.entries[idx as usize].helper) == Some(HelperKind::Pptp) {
            let st = self.helps.states[help as usize].pptp;
            self.pptp_teardown(idx, &st, 0);
        }
    }

    /// Helper counters.
    pub fn helper_stats(&self) -> &HelperStats {
        &self.help_stats
    }
}
