//! The PPTP helper through the pipeline: a control session negotiates call
//! ids, the GRE of the call is related both ways (keys learnt from the control
//! connection), and the call's end takes its GRE connections away.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use conntrack::build::Pkt;
use conntrack::packet::tcp_flags::{ACK, PSH, SYN};
use conntrack::policy::{Action, Policy, PortRange, ProtoMatch, Rule, Side, StateSet};
use conntrack::tuple::ipproto;
use conntrack::{Config, CtState, HelperKind, PacketResult, Pipeline};

const PNS: [u8; 4] = [10, 1, 1, 11];
const PAC: [u8; 4] = [10, 1, 1, 10];

fn pipeline(helper: bool) -> Pipeline {
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related);
    let mut ctl = Rule::any(Action::Accept);
    ctl.from = Some(Side::Inside);
    ctl.states = StateSet::default().with(CtState::New);
    ctl.proto = ProtoMatch::Proto(ipproto::TCP);
    ctl.dport = vec![PortRange { lo: 1723, hi: 1723 }];
    ctl.helper = helper.then_some(HelperKind::Pptp);
    Pipeline::new(
        Config::default(),
        Policy {
            rules: vec![est, ctl],
            default: Action::Drop,
        },
    )
}

/// A PPTP control message: 12-byte header and a zeroed body with `fill`.
fn ctl(msg: u16, len: usize, fill: &[(usize, u8)]) -> Vec<u8> {
    let mut m = u16::try_from(12 + len).unwrap().to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 1, 0x1a, 0x2b, 0x3c, 0x4d]);
    m.extend_from_slice(&msg.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    let mut body = vec![0u8; len];
    for &(at, v) in fill {
        body[at] = v;
    }
    m.extend_from_slice(&body);
    m
}

/// Enhanced GRE (version 1) carrying PPP with the receiver's call id.
fn gre(src: [u8; 4], dst: [u8; 4], call_id: u16) -> Vec<u8> {
    let mut h = vec![0x20, 0x01, 0x88, 0x0b, 0, 4];
    h.extend_from_slice(&call_id.to_be_bytes());
    h.extend_from_slice(&[0xff, 0x03, 0x00, 0x21]);
    Pkt::raw4(src, dst, ipproto::GRE).payload(&h).build()
}

struct Session {
    p: Pipeline,
    cseq: u32,
    sseq: u32,
    now: u64,
}

impl Session {
    fn new(helper: bool) -> Session {
        let mut s = Session {
            p: pipeline(helper),
            cseq: 1000,
            sseq: 5000,
            now: 1,
        };
        s.tcp(true, SYN, &[]);
        s.cseq += 1;
        s.tcp(false, SYN | ACK, &[]);
        s.sseq += 1;
        s.tcp(true, ACK, &[]);
        s
    }

    fn tcp(&mut self, from_pns: bool, flags: u8, payload: &[u8]) -> PacketResult {
        self.now += 1_000_000;
        let b = if from_pns {
            let ack = if flags == SYN { 0 } else { self.sseq };
            Pkt::tcp4(PNS, 40000, PAC, 1723)
                .flags(flags)
                .seq(self.cseq)
                .ack(ack)
        } else {
            Pkt::tcp4(PAC, 1723, PNS, 40000)
                .flags(flags)
                .seq(self.sseq)
                .ack(self.cseq)
        }
        .payload(payload)
        .build();
        let side = if from_pns {
            Side::Inside
        } else {
            Side::Outside
        };
        let r = self.p.process(side, &b, self.now);
        let n = u32::try_from(payload.len()).unwrap();
        if from_pns {
            self.cseq += n;
        } else {
            self.sseq += n;
        }
        assert_eq!(r.verdict, Action::Accept, "{r:?}");
        r
    }

    fn msg(&mut self, from_pns: bool, m: Vec<u8>) {
        self.tcp(from_pns, PSH | ACK, &m);
    }

    fn gre(&mut self, from_pns: bool, call_id: u16) -> PacketResult {
        self.now += 1_000_000;
        let (b, side) = if from_pns {
            (gre(PNS, PAC, call_id), Side::Inside)
        } else {
            (gre(PAC, PNS, call_id), Side::Outside)
        };
        self.p.process(side, &b, self.now)
    }

    /// Start-Control-Connection, then an outgoing call PNS 0x0102 ↔ PAC 0x0304.
    fn call(&mut self) {
        self.msg(true, ctl(1, 144, &[]));
        self.msg(false, ctl(2, 144, &[(2, 1)]));
        self.msg(true, ctl(7, 144, &[(0, 1), (1, 2)]));
        self.msg(false, ctl(8, 20, &[(0, 3), (1, 4), (2, 1), (3, 2), (4, 1)]));
    }
}

#[test]
fn gre_of_a_call_is_related_both_ways() {
    let mut s = Session::new(true);
    s.call();
    // The PAC sends first here: GRE to the PNS carries the PNS's call id.
    let r = s.gre(false, 0x0102);
    assert_eq!((r.state, r.verdict), (CtState::Related, Action::Accept));
    let r = s.gre(true, 0x0304);
    assert_eq!((r.state, r.reply), (CtState::Established, true));
    // A GRE packet with a key nobody negotiated is a new, unrelated flow.
    let r = s.gre(false, 0x0999);
    assert_eq!((r.state, r.verdict), (CtState::New, Action::Drop));
    // The other direction's expectation went away with the first GRE packet.
    assert_eq!(s.p.conntrack().expectations(s.now).count(), 0);
    // Call-Disconnect-Notify ends the call: its GRE is gone.
    s.msg(false, ctl(13, 136, &[(0, 3), (1, 4)]));
    let r = s.gre(false, 0x0102);
    assert_eq!((r.state, r.verdict), (CtState::New, Action::Drop));
}

#[test]
fn without_the_helper_the_call_is_blocked() {
    let mut s = Session::new(false);
    s.call();
    let r = s.gre(false, 0x0102);
    assert_eq!((r.state, r.verdict), (CtState::New, Action::Drop));
}

#[test]
fn a_refused_call_opens_nothing() {
    let mut s = Session::new(true);
    s.msg(true, ctl(1, 144, &[]));
    s.msg(false, ctl(2, 144, &[(2, 1)]));
    s.msg(true, ctl(7, 144, &[(0, 1), (1, 2)]));
    // Result code 2 (general error).
    s.msg(false, ctl(8, 20, &[(0, 3), (1, 4), (2, 1), (3, 2), (4, 2)]));
    assert_eq!(s.p.conntrack().expectations(s.now).count(), 0);
    let r = s.gre(false, 0x0102);
    assert_eq!(r.verdict, Action::Drop);
}

#[test]
fn gre_carrying_something_else_than_ppp_is_invalid() {
    let mut h = vec![0x20, 0x01, 0x08, 0x00, 0, 4, 0, 1];
    h.extend_from_slice(&[0; 4]);
    let b = Pkt::raw4(PNS, PAC, ipproto::GRE).payload(&h).build();
    let r = pipeline(true).process(Side::Inside, &b, 1);
    assert_eq!(r.state, CtState::Invalid);
    assert_eq!(r.reason.map(|r| r.as_str()), Some("gre_bad_protocol"));
}
