//! The SIP helper through the pipeline: SDP offers and answers open RTP and
//! RTCP from the other signalling party to the announced address; media at
//! a third address is refused (direct media, as the kernel's default); BYE
//! ends the call's expectations.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use conntrack::build::Pkt;
use conntrack::policy::{Action, Policy, PortRange, ProtoMatch, Rule, Side, StateSet};
use conntrack::tuple::ipproto;
use conntrack::{Config, CtState, HelperKind, Pipeline};

const PHONE: [u8; 4] = [192, 168, 1, 2];
const PROXY: [u8; 4] = [203, 0, 113, 5];

fn pipeline() -> Pipeline {
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related);
    let mut sip = Rule::any(Action::Accept);
    sip.from = Some(Side::Inside);
    sip.states = StateSet::default().with(CtState::New);
    sip.proto = ProtoMatch::Proto(ipproto::UDP);
    sip.dport = vec![PortRange { lo: 5060, hi: 5060 }];
    sip.helper = Some(HelperKind::Sip);
    Pipeline::new(
        Config::default(),
        Policy {
            rules: vec![est, sip],
            default: Action::Drop,
        },
    )
}

fn sdp_msg(first_line: &str, cseq: &str, c: &str, port: u16) -> Vec<u8> {
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 {c}\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    );
    format!(
        "{first_line}\r\nVia: SIP/2.0/UDP x\r\nCall-ID: call-1@x\r\nCSeq: {cseq}\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sip(p: &mut Pipeline, from_phone: bool, msg: &[u8], now: u64) {
    let (b, side) = if from_phone {
        (
            Pkt::udp4(PHONE, 5060, PROXY, 5060).payload(msg).build(),
            Side::Inside,
        )
    } else {
        (
            Pkt::udp4(PROXY, 5060, PHONE, 5060).payload(msg).build(),
            Side::Outside,
        )
    };
    assert_eq!(p.process(side, &b, now).verdict, Action::Accept);
}

fn rtp(p: &mut Pipeline, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, now: u64) -> CtState {
    let side = if src == PHONE {
        Side::Inside
    } else {
        Side::Outside
    };
    let b = Pkt::udp4(src, sport, dst, dport)
        .payload(&[0x80; 20])
        .build();
    let r = p.process(side, &b, now);
    if r.state != CtState::Related && side == Side::Outside {
        assert_eq!(r.verdict, Action::Drop);
    }
    r.state
}

#[test]
fn offer_and_answer_open_rtp_and_rtcp() {
    let mut p = pipeline();
    sip(
        &mut p,
        true,
        &sdp_msg("INVITE sip:bob@x SIP/2.0", "1 INVITE", "192.168.1.2", 30000),
        1,
    );
    sip(
        &mut p,
        false,
        &sdp_msg("SIP/2.0 200 OK", "1 INVITE", "203.0.113.5", 8000),
        2,
    );
    // RTP and RTCP from the proxy to the phone's announced ports.
    assert_eq!(rtp(&mut p, PROXY, 8000, PHONE, 30000, 3), CtState::Related);
    assert_eq!(rtp(&mut p, PROXY, 8001, PHONE, 30001, 3), CtState::Related);
    // And from the phone to the proxy's (also new would pass, from inside).
    assert_eq!(
        rtp(&mut p, PHONE, 30000, PROXY, 8000, 3),
        CtState::Established
    );
    assert_eq!(rtp(&mut p, PHONE, 30002, PROXY, 8001, 3), CtState::Related);
    // Nothing else from the outside.
    assert_eq!(rtp(&mut p, PROXY, 8000, PHONE, 30004, 3), CtState::New);
}

#[test]
fn media_at_a_third_address_is_refused() {
    let mut p = pipeline();
    sip(
        &mut p,
        true,
        &sdp_msg(
            "INVITE sip:bob@x SIP/2.0",
            "1 INVITE",
            "198.51.100.9",
            30000,
        ),
        1,
    );
    assert_eq!(p.conntrack().expectations(1).count(), 0);
    assert_eq!(
        p.conntrack().helper_stats().refused[HelperKind::Sip as usize],
        1
    );
}

#[test]
fn bye_ends_the_call() {
    let mut p = pipeline();
    sip(
        &mut p,
        true,
        &sdp_msg("INVITE sip:bob@x SIP/2.0", "1 INVITE", "192.168.1.2", 30000),
        1,
    );
    assert_eq!(p.conntrack().expectations(1).count(), 2);
    sip(
        &mut p,
        true,
        b"BYE sip:bob@x SIP/2.0\r\nCall-ID: call-1@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    assert_eq!(p.conntrack().expectations(2).count(), 0);
    assert_eq!(rtp(&mut p, PROXY, 8000, PHONE, 30000, 3), CtState::New);
}

#[test]
fn malformed_sip_is_counted() {
    let mut p = pipeline();
    sip(&mut p, true, b"INVITE nonsense\r\n\r\n", 1);
    assert_eq!(
        p.conntrack().helper_stats().parse_errors[HelperKind::Sip as usize],
        1
    );
}

fn register(contact: &str, expires_hdr: Option<u32>) -> Vec<u8> {
    let exp = expires_hdr.map_or(String::new(), |e| format!("Expires: {e}\r\n"));
    format!(
        "REGISTER sip:{PROXY_S} SIP/2.0\r\nVia: SIP/2.0/UDP x\r\nCall-ID: reg-1@x\r\nCSeq: 1 REGISTER\r\n\
Contact: {contact}\r\n{exp}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn register_ok(contact: &str, expires_hdr: Option<u32>) -> Vec<u8> {
    let exp = expires_hdr.map_or(String::new(), |e| format!("Expires: {e}\r\n"));
    format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x\r\nCall-ID: reg-1@x\r\nCSeq: 1 REGISTER\r\n\
Contact: {contact}\r\n{exp}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

const PROXY_S: &str = "203.0.113.5";

/// An INVITE from the registrar to the phone's registered port.
fn incoming(p: &mut Pipeline, sport: u16, dport: u16, now: u64) -> conntrack::PacketResult {
    let b = Pkt::udp4(PROXY, sport, PHONE, dport)
        .payload(
            b"INVITE sip:phone@192.168.1.2 SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .build();
    p.process(Side::Outside, &b, now)
}

#[test]
fn register_opens_incoming_signalling_for_expires() {
    const S: u64 = 1_000_000_000;
    let mut p = pipeline();
    let c = "<sip:phone@192.168.1.2:5062;transport=udp>";
    // Before the registrar answers, nothing is expected.
    sip(&mut p, true, &register(c, Some(600)), S);
    assert_eq!(incoming(&mut p, 5070, 5062, S).verdict, Action::Drop);
    sip(
        &mut p,
        false,
        &register_ok(&format!("{c};expires=600"), None),
        2 * S,
    );
    // The registrar may now call the phone at its Contact, from any port, more
    // than once (a registration is not used up), with the SIP helper.
    for sport in [5070, 5071] {
        let r = incoming(&mut p, sport, 5062, 3 * S);
        assert_eq!(
            (r.state, r.verdict),
            (CtState::Related, Action::Accept),
            "from port {sport}"
        );
    }
    // Not another port of the phone, not from another host.
    assert_eq!(incoming(&mut p, 5070, 5063, 3 * S).verdict, Action::Drop);
    let b = Pkt::udp4([198, 51, 100, 9], 5060, PHONE, 5062)
        .payload(b"x")
        .build();
    assert_eq!(p.process(Side::Outside, &b, 3 * S).verdict, Action::Drop);
    // It lasts as long as the binding: 600 s.
    assert_eq!(
        incoming(&mut p, 5072, 5062, 590 * S).state,
        CtState::Related
    );
    assert_eq!(incoming(&mut p, 5073, 5062, 610 * S).verdict, Action::Drop);
}

#[test]
fn unregister_and_third_party_bindings() {
    const S: u64 = 1_000_000_000;
    let mut p = pipeline();
    let c = "<sip:phone@192.168.1.2:5062>";
    sip(&mut p, true, &register(c, None), S);
    sip(&mut p, false, &register_ok(c, Some(3600)), S);
    assert_eq!(incoming(&mut p, 5070, 5062, 2 * S).state, CtState::Related);
    // Expires 0 takes the binding away.
    sip(&mut p, true, &register(c, Some(0)), 3 * S);
    sip(
        &mut p,
        false,
        &register_ok(&format!("{c};expires=0"), None),
        3 * S,
    );
    assert_eq!(incoming(&mut p, 5071, 5062, 4 * S).verdict, Action::Drop);
    // A binding for another host than the phone is not followed.
    let other = "<sip:phone@192.168.1.99:5062>";
    sip(&mut p, true, &register(other, None), 5 * S);
    sip(&mut p, false, &register_ok(other, Some(3600)), 5 * S);
    assert_eq!(p.conntrack().expectations(5 * S).count(), 0);
    assert!(p.conntrack().helper_stats().refused[HelperKind::Sip as usize] >= 1);
}
