//! PPTP control messages (RFC 2637; the kernel's `nf_conntrack_pptp.c`).
//!
//! The control connection (TCP 1723, from the PNS to the PAC) negotiates call
//! ids; the data then flows as enhanced GRE whose key is the receiver's call
//! id. Like the kernel, the parser reads the control message that starts a
//! segment and ignores messages shorter than their fixed size.

use super::{HelpCx, ParseErr};
use crate::expect::{ExpectSpec, Mask};
use crate::tuple::{ipproto, Tuple};
use crate::CtState;

/// `PPTP_MAGIC_COOKIE`.
const MAGIC: u32 = 0x1A2B_3C4D;
/// Length of the PPTP header plus the control header.
const HEADER: usize = 12;

/// A control message, with what the helper needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PptpMsg {
    /// Start-Control-Connection-Request.
    StartRequest,
    /// Start-Control-Connection-Reply; `ok` if the result code is success.
    StartReply {
        /// Result code 1.
        ok: bool,
    },
    /// Stop-Control-Connection-Request.
    StopRequest,
    /// Stop-Control-Connection-Reply.
    StopReply {
        /// Result code 1.
        ok: bool,
    },
    /// Echo-Request or Echo-Reply, WAN-Error-Notify, Set-Link-Info.
    Keepalive,
    /// Outgoing-Call-Request (PNS → PAC).
    OutCallRequest {
        /// The PNS's call id.
        call_id: u16,
    },
    /// Outgoing-Call-Reply (PAC → PNS).
    OutCallReply {
        /// The PAC's call id.
        call_id: u16,
        /// The PNS's call id it answers.
        peer_call_id: u16,
        /// Result code 1 (connected).
        connected: bool,
    },
    /// Incoming-Call-Request (PAC → PNS).
    InCallRequest {
        /// The PAC's call id.
        call_id: u16,
    },
    /// Incoming-Call-Reply (PNS → PAC).
    InCallReply {
        /// The PNS's call id.
        call_id: u16,
        /// The PAC's call id it answers.
        peer_call_id: u16,
        /// Result code 1 (accept).
        accepted: bool,
    },
    /// Incoming-Call-Connected (PAC → PNS).
    InCallConnected {
        /// The PNS's call id.
        peer_call_id: u16,
    },
    /// Call-Clear-Request (PNS → PAC).
    CallClearRequest,
    /// Call-Disconnect-Notify (PAC → PNS).
    CallDisconnectNotify {
        /// The call going away.
        call_id: u16,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses the control message at the start of a segment. `Ok(None)`: not a
/// control message, or shorter than its type's fixed size (the kernel ignores
/// those too); `Err`: a control message of an unknown type.
pub fn parse(seg: &[u8]) -> Result<Option<PptpMsg>, ParseErr> {
    let (Some(kind), Some(magic)) = (
        be16(seg, 2),
        seg.get(4..8)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
            .map(u32::from_be_bytes),
    ) else {
        return Ok(None);
    };
    if kind != 1 || magic != MAGIC {
        return Ok(None);
    }
    let Some(msg) = be16(seg, 8) else {
        return Ok(None);
    };
    let body = seg.get(HEADER..).unwrap_or(&[]);
    // Fixed body sizes (message length minus the 12 header bytes), RFC 2637.
    let min = match msg {
        1 | 2 => 144,
        3 | 4 => 4,
        5 => 4,
        6 => 8,
        7 => 144,
        8 => 20,
        9 => 208,
        10 => 12,
        11 => 16,
        12 => 4,
        13 => 136,
        14 => 28,
        15 => 12,
        _ => return Err(ParseErr::BadSyntax),
    };
    if body.len() < min {
        return Ok(None);
    }
    let id = |at| be16(body, at).unwrap_or(0);
    let result_ok = |at| body.get(at) == Some(&1);
    Ok(Some(match msg {
        1 => PptpMsg::StartRequest,
        2 => PptpMsg::StartReply { ok: result_ok(2) },
        3 => PptpMsg::StopRequest,
        4 => PptpMsg::StopReply { ok: result_ok(0) },
        7 => PptpMsg::OutCallRequest { call_id: id(0) },
        8 => PptpMsg::OutCallReply {
            call_id: id(0),
            peer_call_id: id(2),
            connected: result_ok(4),
        },
        9 => PptpMsg::InCallRequest { call_id: id(0) },
        10 => PptpMsg::InCallReply {
            call_id: id(0),
            peer_call_id: id(2),
            accepted: result_ok(4),
        },
        11 => PptpMsg::InCallConnected {
            peer_call_id: id(0),
        },
        12 => PptpMsg::CallClearRequest,
        13 => PptpMsg::CallDisconnectNotify { call_id: id(0) },
        _ => PptpMsg::Keepalive,
    }))
}

/// Control-session state (`pptp_ctrlsess_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Session {
    /// No session.
    #[default]
    None,
    /// Start requested.
    Requested,
    /// Start confirmed.
    Confirmed,
    /// Stop requested.
    StopRequested,
    /// A reply said no.
    Error,
}

/// Call state (`pptp_ctrlcall_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Call {
    /// No call.
    #[default]
    None,
    /// Outgoing call requested.
    OutRequested,
    /// Outgoing call connected.
    OutConfirmed,
    /// Incoming call requested.
    InRequested,
    /// Incoming call answered.
    InReplied,
    /// Incoming call connected.
    InConfirmed,
    /// Hang-up requested.
    ClearRequested,
}

/// Per-connection PPTP state (`nf_ct_pptp_master`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PptpState {
    /// Session state.
    pub session: Session,
    /// Call state.
    pub call: Call,
    /// The PNS's call id.
    pub pns_call_id: u16,
    /// The PAC's call id.
    pub pac_call_id: u16,
}

/// What the helper must do after a control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PptpAction {
    /// Nothing.
    None,
    /// Expect GRE both ways with these call ids.
    ExpectGre {
        /// The PNS's call id.
        pns: u16,
        /// The PAC's call id.
        pac: u16,
    },
    /// The call ended: remove its GRE connections and expectations.
    TearDown,
}

/// Runs the kernel's state machine on one message; `from_pns` is the original
/// direction of the control connection (the kernel assumes PNS → PAC too).
/// Messages out of place are ignored, as the kernel ignores them.
pub fn on_message(st: &mut PptpState, from_pns: bool, msg: PptpMsg) -> PptpAction {
    use PptpMsg as M;
    match (from_pns, msg) {
        (true, M::StartRequest) if st.session == Session::None => st.session = Session::Requested,
        (true, M::StopRequest) => st.session = Session::StopRequested,
        (true, M::OutCallRequest { call_id }) if st.session == Session::Confirmed => {
            st.call = Call::OutRequested;
            st.pns_call_id = call_id;
        }
        (
            true,
            M::InCallReply {
                call_id,
                peer_call_id,
                accepted,
            },
        ) if matches!(st.call, Call::InRequested | Call::InReplied)
            && st.pac_call_id == peer_call_id =>
        {
            if accepted {
                st.call = Call::InReplied;
                st.pns_call_id = call_id;
            } else {
                st.call = Call::None;
            }
        }
        (true, M::CallClearRequest) if st.session == Session::Confirmed => {
            st.call = Call::ClearRequested
        }
        (false, M::StartReply { ok })
            if matches!(st.session, Session::Requested | Session::Confirmed) =>
        {
            st.session = if ok {
                Session::Confirmed
            } else {
                Session::Error
            };
        }
        (false, M::StopReply { ok })
            if matches!(
                st.session,
                Session::None | Session::Error | Session::StopRequested
            ) =>
        {
            st.session = if ok { Session::None } else { Session::Error };
        }
        (
            false,
            M::OutCallReply {
                call_id,
                peer_call_id,
                connected,
            },
        ) if st.session == Session::Confirmed
            && matches!(st.call, Call::OutRequested | Call::OutConfirmed)
            && st.pns_call_id == peer_call_id =>
        {
            if connected {
                st.call = Call::OutConfirmed;
                st.pac_call_id = call_id;
                return PptpAction::ExpectGre {
                    pns: peer_call_id,
                    pac: call_id,
                };
            }
            st.call = Call::None;
        }
        (false, M::InCallRequest { call_id }) if st.session == Session::Confirmed => {
            st.call = Call::InRequested;
            st.pac_call_id = call_id;
        }
        (false, M::InCallConnected { peer_call_id })
            if st.session == Session::Confirmed
                && matches!(st.call, Call::InReplied | Call::InConfirmed)
                && st.pns_call_id == peer_call_id =>
        {
            st.call = Call::InConfirmed;
            return PptpAction::ExpectGre {
                pns: peer_call_id,
                pac: st.pac_call_id,
            };
        }
        (false, M::CallDisconnectNotify { .. }) => {
            st.call = Call::None;
            return PptpAction::TearDown;
        }
        _ => {}
    }
    PptpAction::None
}

/// The two GRE tuples of a PPTP call on control connection `orig`.
pub(crate) fn gre_tuples(orig: &Tuple, st: &PptpState) -> [Tuple; 2] {
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

/// The glue: on an established control connection, a call that comes up
/// expects its two GRE flows (and their keys are learnt); a call that ends
/// is torn down.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    if cx.track.state != CtState::Established {
        return;
    }
    let Some(seg) = cx.tcp_payload() else {
        return;
    };
    match parse(seg.payload) {
        Ok(None) => {}
        Err(_) => cx.asks().error(),
        Ok(Some(msg)) => {
            let from_client = cx.from_client;
            let (st, _) = cx.state();
            let action = on_message(&mut st.pptp, from_client, msg);
            let st = st.pptp;
            match action {
                PptpAction::None => {}
                PptpAction::ExpectGre { .. } => {
                    let kind = cx.kind;
                    for t in gre_tuples(&cx.orig, &st) {
                        cx.asks().push(ExpectSpec {
                            tuple: t,
                            mask: Mask::default(),
                            helper: kind,
                            child_helper: None,
                            permanent: false,
                            timeout: None,
                        });
                        cx.learn_gre_key(&t);
                    }
                }
                PptpAction::TearDown => cx.pptp_teardown(&st),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A control message with a zeroed body of `len` bytes; `fill` sets bytes.
    pub(crate) fn ctl(msg: u16, len: usize, fill: &[(usize, u8)]) -> Vec<u8> {
        let total = u16::try_from(HEADER + len).unwrap();
        let mut m = total.to_be_bytes().to_vec();
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&MAGIC.to_be_bytes());
        m.extend_from_slice(&msg.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        let mut body = vec![0u8; len];
        for &(at, v) in fill {
            body[at] = v;
        }
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn outgoing_call_expects_gre() {
        let mut st = PptpState::default();
        let step = |st: &mut PptpState, from_pns, m: Vec<u8>| {
            on_message(st, from_pns, parse(&m).unwrap().unwrap())
        };
        assert_eq!(step(&mut st, true, ctl(1, 144, &[])), PptpAction::None);
        assert_eq!(
            step(&mut st, false, ctl(2, 144, &[(2, 1)])),
            PptpAction::None
        );
        assert_eq!(st.session, Session::Confirmed);
        step(&mut st, true, ctl(7, 144, &[(0, 0x12), (1, 0x34)]));
        assert_eq!(st.pns_call_id, 0x1234);
        let a = step(
            &mut st,
            false,
            ctl(8, 20, &[(0, 0), (1, 9), (2, 0x12), (3, 0x34), (4, 1)]),
        );
        assert_eq!(
            a,
            PptpAction::ExpectGre {
                pns: 0x1234,
                pac: 9
            }
        );
        assert_eq!(
            step(&mut st, false, ctl(13, 136, &[(1, 9)])),
            PptpAction::TearDown
        );
    }

    #[test]
    fn out_of_order_and_short_messages_are_ignored() {
        let mut st = PptpState::default();
        // A reply before any request: no session, no GRE.
        let m = parse(&ctl(8, 20, &[(4, 1)])).unwrap().unwrap();
        assert_eq!(on_message(&mut st, false, m), PptpAction::None);
        // Too short for its type: ignored.
        assert_eq!(parse(&ctl(8, 10, &[])), Ok(None));
        // Not control / bad magic: ignored.
        let mut bad = ctl(1, 144, &[]);
        bad[4] = 0;
        assert_eq!(parse(&bad), Ok(None));
        // Unknown control type: an error to count.
        assert_eq!(parse(&ctl(99, 16, &[])), Err(ParseErr::BadSyntax));
    }

    #[test]
    fn corpus_control_session() {
        // tcpdump's pptp.pcap: Start-Control-Connection-Request, 156 bytes.
        let mut st = PptpState::default();
        let m = parse(&ctl(1, 144, &[])).unwrap().unwrap();
        on_message(&mut st, true, m);
        assert_eq!(st.session, Session::Requested);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300), from_pns in any::<bool>()) {
            let mut st = PptpState::default();
            if let Ok(Some(m)) = parse(&b) {
                let _ = on_message(&mut st, from_pns, m);
            }
            let mut c = ctl(b.first().map_or(1, |&x| u16::from(x % 16)), b.len(), &[]);
            c.truncate(b.len());
            let _ = parse(&c);
        }
    }
}
