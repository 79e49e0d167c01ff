//! Running helpers on accepted packets (the kernel's helper hook): per-connection
//! helper state, the glue from each parser's announcements to expectations, and
//! the anti-bounce checks.
//!
//! Who may be announced, as in the kernel:
//! - FTP `PORT`/`EPRT` (client) and `227` (server) name an address that must be
//!   the sender's own (else a third host could be "bounced" into), unless
//!   `ftp_loose` is set; `229` names only a port on the server. The expected
//!   connection comes from the other end of the control connection, any source
//!   port, to the announced address and port. An address of the other family
//!   than the control connection is refused.
//! - IRC DCC offers (client to server) name the client's own address; the peer
//!   that will connect is unknown: any source address and port.
//! - TFTP requests expect the server's answer from any port back to the client's.
//! - SANE and Amanda announce a port on the connection's original destination
//!   that its original source will connect to (Amanda: in the reply direction).

use super::entry::status;
use super::{Conntrack, NONE};
use crate::expect::helper_of;
use crate::expect::{ExpectSpec, Mask};
use crate::helpers::pptp::{self, PptpAction, PptpState};
use crate::helpers::sip::{self, Method};
use crate::helpers::{amanda, ftp, irc, sane, tftp};
use crate::linebuf::LineBuf;
use crate::packet::{Packet, L4};
use crate::table::Track;
use crate::tuple::{ipproto, Addr, Family, Tuple};
use crate::HelperKind;

/// Per-connection state of a helper.
#[derive(Clone, Debug, Default)]
pub(super) struct HelpState {
    /// Line reassembly per direction (FTP, IRC).
    lines: [LineBuf; 2],
    sane: sane::SaneState,
    pptp: PptpState,
}

/// Most GRE keys the PPTP helper remembers at once (two per call).
pub(super) const KEYMAP_MAX: usize = 4096;
/// Seconds a SIP signalling flow over UDP lives after each message (the
/// kernel's `sip_timeout`): registrations and calls outlast the UDP timeout.
pub(super) const SIP_TIMEOUT: u32 = 3600;
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

/// Helper counters, per helper (indexed by `HelperKind as usize`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelperStats {
    /// Packets the helper parsed.
    pub packets: [u64; 9],
    /// Malformed helper messages.
    pub parse_errors: [u64; 9],
    /// Expectations created.
    pub expectations: [u64; 9],
    /// Announcements refused: address not the sender's (bounce), family mismatch.
    pub refused: [u64; 9],
    /// Expectations the table refused (full, clash).
    pub expect_failed: [u64; 9],
    /// Connections that got no helper state because the helper slab was full.
    pub no_state: [u64; 9],
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

fn ip_to_addr(ip: std::net::IpAddr) -> (Family, Addr) {
    Addr::from_ip(ip)
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
        let orig = e.orig.tuple(&self.v6hi[idx as usize]);
        let help = help as usize;
        let from_client = !track.reply;
        // At most 16 announcements per packet (SIP: 8 streams, RTP and RTCP).
        let mut asks: [Option<ExpectSpec>; 16] = [None; 16];
        let mut end_call = false;
        let mut unregister: Option<Tuple> = None;
        let mut n = 0;
        let mut push = |spec: ExpectSpec| {
            if let Some(slot) = asks.get_mut(n) {
                *slot = Some(spec);
                n += 1;
            }
        };
        let ks = kind as usize;
        let mut errors = 0u64;
        let mut refused = 0u64;
        match (kind, pkt.l4) {
            (HelperKind::Ftp, L4::Tcp(seg)) if !seg.payload.is_empty() => {
                self.help_stats.packets[ks] += 1;
                let dir = usize::from(track.reply);
                let sender = pkt.tuple;
                let loose = self.cfg.ftp_loose;
                self.helps.states[help].lines[dir].feed(seg.seq, seg.payload, |line| {
                    match ftp::parse_line(line, from_client) {
                        Ok(None) => {}
                        Err(_) => errors += 1,
                        Ok(Some(cmd)) => {
                            let (fam, addr) = match cmd.addr {
                                Some(ip) => ip_to_addr(ip),
                                // 229: the server's own address.
                                None => (sender.family, sender.src),
                            };
                            if fam != sender.family || (!loose && addr != sender.src) {
                                refused += 1;
                                return;
                            }
                            push(expected_tcp(
                                sender.dst,
                                addr,
                                cmd.port,
                                sender.family,
                                false,
                            ));
                        }
                    }
                });
            }
            (HelperKind::Irc, L4::Tcp(seg)) if !seg.payload.is_empty() => {
                self.help_stats.packets[ks] += 1;
                let dir = usize::from(track.reply);
                let sender = pkt.tuple;
                self.helps.states[help].lines[dir].feed(seg.seq, seg.payload, |line| {
                    if !from_client {
                        return;
                    }
                    // The kernel acts on the first offer naming the sender.
                    let mut saw_err = false;
                    for offer in irc::offers(line) {
                        match offer {
                            Err(_) => saw_err = true,
                            Ok(o) => {
                                let (fam, addr) = ip_to_addr(o.addr);
                                if fam != sender.family || addr != sender.src {
                                    refused += 1;
                                    continue;
                                }
                                push(expected_tcp(Addr(0), addr, o.port, fam, true));
                                return;
                            }
                        }
                    }
                    if saw_err {
                        errors += 1;
                    }
                });
            }
            (HelperKind::Tftp, L4::Udp { payload }) if from_client => {
                self.help_stats.packets[ks] += 1;
                match tftp::parse(payload) {
                    Ok(Some(_)) => push(ExpectSpec {
                        tuple: Tuple {
                            src: orig.dst,
                            dst: orig.src,
                            src_port: 0,
                            dst_port: orig.src_port,
                            proto: ipproto::UDP,
                            family: orig.family,
                        },
                        mask: Mask {
                            src_addr: false,
                            src_port: true,
                            src_prefix: 0,
                        },
                        helper: HelperKind::Tftp,
                        child_helper: None,
                        permanent: false,
                        timeout: None,
                    }),
                    Ok(None) => {}
                    Err(_) => errors += 1,
                }
            }
            (HelperKind::Amanda, L4::Udp { payload }) if !from_client => {
                // Only the answer (reply direction) names ports; it may come late,
                // so the master lives 300 s (the kernel's `master_timeout`).
                self.help_stats.packets[ks] += 1;
                self.set_deadline(idx, now + 300 * crate::timeouts::SEC);
                let ports = amanda::parse(payload);
                if ports.error().is_some() {
                    errors += 1;
                }
                for &(_, port) in ports.as_slice() {
                    push(expected_tcp(orig.src, orig.dst, port, orig.family, false));
                }
            }
            (HelperKind::Sane, L4::Tcp(seg)) if !seg.payload.is_empty() => {
                self.help_stats.packets[ks] += 1;
                let st = &mut self.helps.states[help].sane;
                if let Some(port) = sane::on_payload(st, from_client, seg.payload) {
                    push(expected_tcp(orig.src, orig.dst, port, orig.family, false));
                }
            }
            (HelperKind::Pptp, L4::Tcp(seg))
                if !seg.payload.is_empty() && track.state == crate::CtState::Established =>
            {
                self.help_stats.packets[ks] += 1;
                match pptp::parse(seg.payload) {
                    Ok(None) => {}
                    Err(_) => errors += 1,
                    Ok(Some(msg)) => {
                        let st = &mut self.helps.states[help].pptp;
                        match pptp::on_message(st, from_client, msg) {
                            PptpAction::None => {}
                            PptpAction::ExpectGre { .. } => {
                                let st = *st;
                                for t in Self::pptp_gre_tuples(&orig, &st) {
                                    push(ExpectSpec {
                                        tuple: t,
                                        mask: Mask::default(),
                                        helper: kind,
                                        child_helper: None,
                                        permanent: false,
                                        timeout: None,
                                    });
                                    let origin = crate::expect::Origin {
                                        worker: self.expects.shard().unwrap_or(0),
                                        id: idx,
                                    };
                                    if self.keymap.len() < KEYMAP_MAX {
                                        self.keymap.push(KeyMap {
                                            master: idx,
                                            origin,
                                            src: t.src,
                                            dst: t.dst,
                                            family: t.family,
                                            dst_key: t.dst_port,
                                            src_key: t.src_port,
                                        });
                                    }
                                    self.expects.announce(crate::expect::ExpectMsg::GreKey {
                                        origin,
                                        src: t.src,
                                        dst: t.dst,
                                        family: t.family,
                                        dst_key: t.dst_port,
                                        src_key: t.src_port,
                                    });
                                }
                            }
                            PptpAction::TearDown => {
                                let st = *st;
                                self.pptp_teardown(idx, &st, now);
                            }
                        }
                    }
                }
            }
            (
                HelperKind::Sip,
                L4::Udp { payload } | L4::Tcp(crate::packet::TcpSeg { payload, .. }),
            ) if !payload.is_empty() => {
                self.help_stats.packets[ks] += 1;
                let sender = pkt.tuple;
                let stream = matches!(pkt.l4, L4::Tcp(_));
                if !stream {
                    self.set_deadline(idx, now + u64::from(SIP_TIMEOUT) * crate::timeouts::SEC);
                }
                let mut rest = payload;
                while !rest.is_empty() {
                    let (msg, used) = match sip::parse(rest) {
                        Ok(x) => x,
                        // The rest of a message continues in the next segment.
                        Err(crate::helpers::ParseErr::Truncated) if stream => break,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    };
                    if matches!(msg.request, Some(Method::Bye | Method::Cancel)) {
                        end_call = true;
                    } else if msg.request.is_none()
                        && (200..300).contains(&msg.status)
                        && msg.cseq_method == Method::Register
                    {
                        // A registration: the UA (this answer's receiver) may
                        // be called by the registrar at its Contact.
                        if let Some(c) = msg.contact {
                            let (fam, addr) = ip_to_addr(c.addr);
                            let expires = c.expires.or(msg.expires).unwrap_or(3600);
                            if fam != sender.family || addr != sender.dst {
                                // Third-party registrations are not followed.
                                refused += 1;
                            } else {
                                let tuple = Tuple {
                                    src: sender.src,
                                    dst: addr,
                                    src_port: 0,
                                    dst_port: c.port,
                                    proto: sender.proto,
                                    family: fam,
                                };
                                if expires == 0 {
                                    unregister = Some(tuple);
                                } else {
                                    push(ExpectSpec {
                                        tuple,
                                        mask: Mask {
                                            src_addr: false,
                                            src_port: true,
                                            src_prefix: 0,
                                        },
                                        helper: kind,
                                        child_helper: Some(HelperKind::Sip),
                                        permanent: true,
                                        timeout: Some(expires),
                                    });
                                }
                            }
                        }
                    } else if msg.carries_offer_or_answer() {
                        for m in msg.media() {
                            let (fam, addr) = ip_to_addr(m.addr);
                            // Direct media: only the sender's own address, and
                            // only from the other signalling party.
                            if fam != sender.family || addr != sender.src {
                                refused += 1;
                                continue;
                            }
                            for port in [m.port, m.rtcp_port] {
                                push(ExpectSpec {
                                    tuple: Tuple {
                                        src: sender.dst,
                                        dst: addr,
                                        src_port: 0,
                                        dst_port: port,
                                        proto: ipproto::UDP,
                                        family: fam,
                                    },
                                    mask: Mask {
                                        src_addr: false,
                                        src_port: true,
                                        src_prefix: 0,
                                    },
                                    helper: kind,
                                    child_helper: None,
                                    permanent: false,
                                    timeout: None,
                                });
                            }
                        }
                    }
                    if !stream || used == 0 || used >= rest.len() {
                        break;
                    }
                    rest = &rest[used..];
                }
            }
            (HelperKind::NetbiosNs | HelperKind::Snmp, L4::Udp { .. }) if from_client => {
                // Broadcast queries: answers come from whichever hosts of the
                // subnet reply, to the client's port (kernel
                // `nf_conntrack_broadcast_help`, which only acts on queries to a
                // directed broadcast address).
                let Some(prefix) = broadcast_prefix(pkt.tuple.dst, pkt.tuple.family) else {
                    return;
                };
                self.help_stats.packets[ks] += 1;
                push(ExpectSpec {
                    tuple: Tuple {
                        src: pkt.tuple.dst,
                        dst: pkt.tuple.src,
                        src_port: pkt.tuple.dst_port,
                        dst_port: pkt.tuple.src_port,
                        proto: ipproto::UDP,
                        family: pkt.tuple.family,
                    },
                    mask: Mask {
                        src_addr: false,
                        src_port: false,
                        src_prefix: prefix,
                    },
                    helper: kind,
                    child_helper: None,
                    permanent: true,
                    timeout: None,
                });
                // The query's own entry lives as long as its expectation.
                let tmo = u64::from(self.cfg.expect_policy[ks].timeout) * crate::timeouts::SEC;
                self.set_deadline(idx, now + tmo);
            }
            _ => {}
        }
        if end_call {
            // BYE or CANCEL: the call's media expectations go.
            let head = core::mem::replace(&mut self.ext[idx as usize].exp_head, NONE);
            if head != NONE {
                self.expects.remove_all(head);
            }
        }
        if let Some(t) = unregister {
            // Expires 0: the binding (and its expectation) goes.
            if let Some(slot) = self.expects.find(&t, now) {
                self.unlink_expectation(slot, true);
            }
        }
        self.help_stats.parse_errors[ks] += errors;
        self.help_stats.refused[ks] += refused;
        for spec in asks.iter().take(n).flatten() {
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

    /// The two GRE tuples of a PPTP call on control connection `orig`.
    fn pptp_gre_tuples(orig: &Tuple, st: &PptpState) -> [Tuple; 2] {
        let pns_to_pac = Tuple {
            src: orig.src,
            dst: orig.dst,
            src_port: st.pns_call_id,
            dst_port: st.pac_call_id,
            proto: ipproto::GRE,
            family: orig.family,
        };
        [pns_to_pac, pns_to_pac.invert()]
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
        let tuples = Self::pptp_gre_tuples(&orig, st);
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

/// A TCP connection from `src` (any port; any address if `any_src`) to
/// `dst:port`. The caller sets the requesting helper.
fn expected_tcp(src: Addr, dst: Addr, port: u16, family: Family, any_src: bool) -> ExpectSpec {
    ExpectSpec {
        tuple: Tuple {
            src,
            dst,
            src_port: 0,
            dst_port: port,
            proto: ipproto::TCP,
            family,
        },
        mask: Mask {
            src_addr: any_src,
            src_port: true,
            src_prefix: 0,
        },
        helper: HelperKind::Ftp,
        child_helper: None,
        permanent: false,
        timeout: None,
    }
}

/// The prefix length of the subnet whose directed broadcast address `dst` is
/// (host bits all ones), for IPv4; `None` for anything else. A bridge has no
/// interface address to read the mask from, as the kernel does, so the mask is
/// inferred from the address itself: whole trailing 255 octets mark the host
/// part (x.y.z.255 is a /24's broadcast even where it could be a /20's), and
/// below an octet the trailing one bits do (x.y.z.127 is a /25's). The limited
/// broadcast 255.255.255.255 names no subnet and, as in the kernel, gets no
/// expectation.
fn broadcast_prefix(dst: Addr, family: Family) -> Option<u8> {
    if family != Family::V4 {
        return None;
    }
    let a = u32::try_from(dst.0).ok()?;
    let ones = a.trailing_ones();
    if !(2..32).contains(&ones) {
        return None;
    }
    let host = if ones >= 8 { ones / 8 * 8 } else { ones };
    u8::try_from(32 - host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_prefixes() {
        assert_eq!(
            broadcast_prefix(Addr::v4([192, 168, 239, 255]), Family::V4),
            Some(24)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([10, 255, 255, 255]), Family::V4),
            Some(8)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([172, 16, 255, 255]), Family::V4),
            Some(16)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([10, 0, 0, 127]), Family::V4),
            Some(25)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([255, 255, 255, 255]), Family::V4),
            None
        );
        assert_eq!(broadcast_prefix(Addr::v4([10, 0, 0, 1]), Family::V4), None);
        assert_eq!(broadcast_prefix(Addr(u128::MAX), Family::V6), None);
    }
}
