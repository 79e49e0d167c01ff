//! The FTP helper through the whole pipeline, on built packets: active and
//! passive mode over IPv4 and IPv6, commands split across segments, bounce
//! attempts and address-family mismatches.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use conntrack::build::Pkt;
use conntrack::packet::tcp_flags::{ACK, PSH, SYN};
use conntrack::policy::{Action, Policy, PortRange, ProtoMatch, Rule, Side, StateSet};
use conntrack::tuple::ipproto;
use conntrack::{Config, CtState, HelperKind, PacketResult, Pipeline};

const C: [u8; 4] = [10, 0, 0, 1];
const S: [u8; 4] = [192, 0, 2, 21];
const C6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const S6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];

/// Strict policy: established/related pass, inside may open FTP control
/// connections (with the helper when asked) and nothing else.
fn pipeline(helper: bool) -> Pipeline {
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related);
    let mut ftp = Rule::any(Action::Accept);
    ftp.from = Some(Side::Inside);
    ftp.states = StateSet::default().with(CtState::New);
    ftp.proto = ProtoMatch::Proto(ipproto::TCP);
    ftp.dport = vec![PortRange { lo: 21, hi: 21 }];
    ftp.helper = helper.then_some(HelperKind::Ftp);
    Pipeline::new(
        Config::default(),
        Policy {
            rules: vec![est, ftp],
            default: Action::Drop,
        },
    )
}

/// Drives a control connection: handshake, then lines each side sends.
struct Ctl {
    p: Pipeline,
    v6: bool,
    cseq: u32,
    sseq: u32,
    now: u64,
}

impl Ctl {
    fn new(helper: bool, v6: bool) -> Ctl {
        Ctl::with_pipeline(pipeline(helper), v6)
    }

    fn with_pipeline(p: Pipeline, v6: bool) -> Ctl {
        let mut c = Ctl {
            p,
            v6,
            cseq: 100,
            sseq: 900,
            now: 1,
        };
        assert_eq!(c.send(true, SYN, b"").state, CtState::New);
        c.cseq += 1;
        c.send(false, SYN | ACK, b"");
        c.sseq += 1;
        c.send(true, ACK, b"");
        c
    }

    fn pkt(&self, from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (seq, ack) = if from_client {
            (self.cseq, self.sseq)
        } else {
            (self.sseq, self.cseq)
        };
        let p = match (self.v6, from_client) {
            (false, true) => Pkt::tcp4(C, 40000, S, 21),
            (false, false) => Pkt::tcp4(S, 21, C, 40000),
            (true, true) => Pkt::tcp6(C6, 40000, S6, 21),
            (true, false) => Pkt::tcp6(S6, 21, C6, 40000),
        };
        let ackv = if flags & SYN != 0 && flags & ACK == 0 {
            0
        } else {
            ack
        };
        p.flags(flags).seq(seq).ack(ackv).payload(payload).build()
    }

    fn send(&mut self, from_client: bool, flags: u8, payload: &[u8]) -> PacketResult {
        let b = self.pkt(from_client, flags, payload);
        self.now += 1_000_000;
        let side = if from_client {
            Side::Inside
        } else {
            Side::Outside
        };
        let r = self.p.process(side, &b, self.now);
        let len = u32::try_from(payload.len()).unwrap();
        if from_client {
            self.cseq += len;
        } else {
            self.sseq += len;
        }
        r
    }

    fn line(&mut self, from_client: bool, text: &str) {
        let r = self.send(from_client, PSH | ACK, text.as_bytes());
        assert_eq!(r.verdict, Action::Accept, "{text}: {r:?}");
    }

    /// State of the first packet of a data connection from `src` to `dst:dport`.
    fn data(&mut self, src: &[u8], sport: u16, dst: &[u8], dport: u16, side: Side) -> CtState {
        let b = if src.len() == 4 {
            let s: [u8; 4] = src.try_into().unwrap();
            let d: [u8; 4] = dst.try_into().unwrap();
            Pkt::tcp4(s, sport, d, dport).flags(SYN).seq(7).build()
        } else {
            let s: [u8; 16] = src.try_into().unwrap();
            let d: [u8; 16] = dst.try_into().unwrap();
            Pkt::tcp6(s, sport, d, dport).flags(SYN).seq(7).build()
        };
        self.now += 1_000_000;
        let r = self.p.process(side, &b, self.now);
        if r.state == CtState::Related {
            assert_eq!(r.verdict, Action::Accept);
        }
        r.state
    }
}

#[test]
fn passive_227_data_connection_is_related() {
    let mut c = Ctl::new(true, false);
    c.line(false, "220 ready\r\n");
    c.line(true, "PASV\r\n");
    c.line(false, "227 Entering Passive Mode (192,0,2,21,195,80).\r\n");
    assert_eq!(c.data(&C, 50000, &S, 50000, Side::Inside), CtState::Related);
    let h = c.p.conntrack().helper_stats();
    assert_eq!(h.expectations[HelperKind::Ftp as usize], 1);
}

#[test]
fn active_port_data_connection_from_server_is_related_and_needs_the_helper() {
    for helper in [true, false] {
        let mut c = Ctl::new(helper, false);
        c.line(true, "PORT 10,0,0,1,195,81\r\n");
        c.line(false, "200 PORT command successful\r\n");
        let st = c.data(&S, 20, &C, 50001, Side::Outside);
        assert_eq!(st == CtState::Related, helper, "helper {helper}: {st:?}");
    }
}

#[test]
fn command_split_across_segments() {
    let mut c = Ctl::new(true, false);
    c.line(true, "PORT 10,0,");
    c.line(true, "0,1,195");
    c.line(true, ",82\r\nNOOP\r\n");
    assert_eq!(c.data(&S, 20, &C, 50002, Side::Outside), CtState::Related);
}

#[test]
fn bounce_attempts_create_nothing() {
    let mut c = Ctl::new(true, false);
    // PORT naming a third host (FTP bounce), and a 227 naming another server.
    c.line(true, "PORT 198,51,100,7,0,25\r\n");
    c.line(
        false,
        "227 Entering Passive Mode (198,51,100,8,195,83).\r\n",
    );
    assert_eq!(
        c.data(&S, 20, &[198, 51, 100, 7], 25, Side::Outside),
        CtState::New
    );
    assert_eq!(c.p.conntrack().expectations(c.now).count(), 0);
    assert_eq!(
        c.p.conntrack().helper_stats().refused[HelperKind::Ftp as usize],
        2
    );
}

#[test]
fn eprt_and_epsv_over_ipv6() {
    let mut c = Ctl::new(true, true);
    c.line(true, "EPRT |2|fd00::1|50004|\r\n");
    assert_eq!(c.data(&S6, 20, &C6, 50004, Side::Outside), CtState::Related);
    c.line(true, "EPSV\r\n");
    c.line(false, "229 Entering Extended Passive Mode (|||50005|)\r\n");
    assert_eq!(
        c.data(&C6, 50006, &S6, 50005, Side::Inside),
        CtState::Related
    );
}

#[test]
fn address_family_mismatch_is_refused() {
    let mut c = Ctl::new(true, false);
    c.line(true, "EPRT |2|fd00::1|50007|\r\n");
    assert_eq!(c.p.conntrack().expectations(c.now).count(), 0);
    assert_eq!(
        c.p.conntrack().helper_stats().refused[HelperKind::Ftp as usize],
        1
    );
}

#[test]
fn malformed_commands_are_counted_not_fatal() {
    let mut c = Ctl::new(true, false);
    c.line(true, "PORT 10,0,0,1,999,1\r\n");
    c.line(true, "PORT garbage\r\n");
    assert_eq!(
        c.p.conntrack().helper_stats().parse_errors[HelperKind::Ftp as usize],
        2
    );
    assert_eq!(c.p.conntrack().expectations(c.now).count(), 0);
}

#[test]
fn helpers_by_port_when_asked() {
    // No rule assigns a helper; automatic assignment (off by default) does,
    // by the well-known port.
    for (auto, want) in [(false, CtState::New), (true, CtState::Related)] {
        let mut est = Rule::any(Action::Accept);
        est.states = StateSet::default()
            .with(CtState::Established)
            .with(CtState::Related);
        let mut ftp = Rule::any(Action::Accept);
        ftp.from = Some(Side::Inside);
        ftp.states = StateSet::default().with(CtState::New);
        ftp.proto = ProtoMatch::Proto(ipproto::TCP);
        ftp.dport = vec![PortRange { lo: 21, hi: 21 }];
        let p = Pipeline::new(
            Config {
                auto_helpers: auto,
                ..Config::default()
            },
            Policy {
                rules: vec![est, ftp],
                default: Action::Drop,
            },
        );
        let mut c = Ctl::with_pipeline(p, false);
        c.line(false, "220 ready\r\n");
        c.line(true, "PASV\r\n");
        c.line(false, "227 Entering Passive Mode (192,0,2,21,195,80).\r\n");
        assert_eq!(
            c.data(&C, 50000, &S, 50000, Side::Inside),
            want,
            "auto_helpers = {auto}"
        );
    }
}
