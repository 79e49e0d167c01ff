//! Several conntrack shards (the many-core dataplane's semantics, in one
//! thread): FTP data connections, active and passive, forced onto another
//! worker than their control connection are related there; the master's death
//! removes the expectation on every shard; asymmetric steering hands packets
//! over and changes no answer.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use conntrack::build::Pkt;
use conntrack::packet::tcp_flags::{ACK, PSH, RST, SYN};
use conntrack::policy::{Action, Policy, PortRange, ProtoMatch, Rule, Side, StateSet};
use conntrack::shard::Shards;
use conntrack::tuple::ipproto;
use conntrack::{Config, CtState, HelperKind, PacketResult, Pipeline};

const C: [u8; 4] = [10, 0, 0, 1];
const S: [u8; 4] = [192, 0, 2, 21];

fn policy() -> Policy {
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related);
    let mut ftp = Rule::any(Action::Accept);
    ftp.from = Some(Side::Inside);
    ftp.states = StateSet::default().with(CtState::New);
    ftp.proto = ProtoMatch::Proto(ipproto::TCP);
    ftp.dport = vec![PortRange { lo: 21, hi: 21 }];
    ftp.helper = Some(HelperKind::Ftp);
    Policy {
        rules: vec![est, ftp],
        default: Action::Drop,
    }
}

/// How packets reach workers.
#[derive(Clone, Copy)]
enum Steer {
    Owner,
    BySide,
}

/// An FTP control connection over `n` shards, and the same packets through
/// one pipeline for reference.
struct Ftp {
    shards: Shards,
    one: Pipeline,
    steer: Steer,
    cport: u16,
    cseq: u32,
    sseq: u32,
    now: u64,
}

impl Ftp {
    fn new(n: usize, steer: Steer, cport: u16) -> Ftp {
        let cfg = Config::default();
        let mut f = Ftp {
            shards: Shards::new(n, &cfg, &policy()),
            one: Pipeline::new(cfg, policy()),
            steer,
            cport,
            cseq: 100,
            sseq: 900,
            now: 1,
        };
        assert_eq!(f.send(true, SYN, b"").state, CtState::New);
        f.cseq += 1;
        f.send(false, SYN | ACK, b"");
        f.sseq += 1;
        f.send(true, ACK, b"");
        f
    }

    /// Runs a packet on the shards (and the reference); returns the shard
    /// that processed it and the result, which must equal the reference's.
    fn run(&mut self, side: Side, b: &[u8]) -> (usize, PacketResult) {
        self.now += 1_000_000;
        let rx = match self.steer {
            Steer::Owner => self.shards.owner(b).unwrap(),
            Steer::BySide => usize::from(side == Side::Outside),
        };
        let (w, r) = self.shards.process(rx, side, b, self.now);
        let want = self.one.process(side, b, self.now);
        assert_eq!(r, want, "sharded answer differs from one worker's");
        (w, r)
    }

    fn send(&mut self, from_client: bool, flags: u8, payload: &[u8]) -> PacketResult {
        let (seq, ack) = if from_client {
            (self.cseq, self.sseq)
        } else {
            (self.sseq, self.cseq)
        };
        let p = if from_client {
            Pkt::tcp4(C, self.cport, S, 21)
        } else {
            Pkt::tcp4(S, 21, C, self.cport)
        };
        let ackv = if flags & SYN != 0 && flags & ACK == 0 {
            0
        } else {
            ack
        };
        let b = p.flags(flags).seq(seq).ack(ackv).payload(payload).build();
        let side = if from_client {
            Side::Inside
        } else {
            Side::Outside
        };
        let r = self.run(side, &b).1;
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

    fn ctl_owner(&self) -> usize {
        self.shards
            .owner(&Pkt::tcp4(C, self.cport, S, 21).flags(ACK).build())
            .unwrap()
    }

    /// First packet of a data connection; returns its shard and state.
    fn data(
        &mut self,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        side: Side,
    ) -> (usize, CtState) {
        let b = Pkt::tcp4(src, sport, dst, dport).flags(SYN).seq(7).build();
        let (w, r) = self.run(side, &b);
        (w, r.state)
    }
}

/// A client data port whose connection to `S:sport_dport` another worker
/// than the control connection owns.
fn other_owner(f: &Ftp, src: [u8; 4], dst: [u8; 4], dport: u16) -> u16 {
    let ctl = f.ctl_owner();
    (20_000..60_000)
        .find(|&p| {
            f.shards
                .owner(&Pkt::tcp4(src, p, dst, dport).flags(SYN).build())
                != Some(ctl)
        })
        .unwrap()
}

#[test]
fn passive_data_connection_on_another_worker_is_related() {
    for steer in [Steer::Owner, Steer::BySide] {
        let mut f = Ftp::new(2, steer, 40000);
        f.line(false, "220 ready\r\n");
        f.line(true, "PASV\r\n");
        f.line(false, "227 Entering Passive Mode (192,0,2,21,195,80).\r\n");
        let sport = other_owner(&f, C, S, 50000);
        let (w, st) = f.data(C, sport, S, 50000, Side::Inside);
        assert_ne!(w, f.ctl_owner());
        assert_eq!(st, CtState::Related);
        // Used up everywhere: a second data connection is not related.
        let (_, st) = f.data(C, sport + 1, S, 50000, Side::Inside);
        assert_eq!(st, CtState::New);
        assert!(
            f.shards.messages >= 2,
            "created and used: {}",
            f.shards.messages
        );
    }
}

#[test]
fn active_data_connection_on_another_worker_is_related() {
    for steer in [Steer::Owner, Steer::BySide] {
        // The server connects from port 20 to the port the client announced:
        // choose the client's port so that another worker owns it.
        let mut f = Ftp::new(3, steer, 40001);
        let ctl = f.ctl_owner();
        let port = (20_000..60_000u16)
            .find(|&p| f.shards.owner(&Pkt::tcp4(S, 20, C, p).flags(SYN).build()) != Some(ctl))
            .unwrap();
        f.line(false, "220 ready\r\n");
        f.line(
            true,
            &format!("PORT 10,0,0,1,{},{}\r\n", port >> 8, port & 0xff),
        );
        f.line(false, "200 PORT command successful\r\n");
        let (w, st) = f.data(S, 20, C, port, Side::Outside);
        assert_ne!(w, ctl);
        assert_eq!(st, CtState::Related);
    }
}

#[test]
fn master_death_removes_the_expectation_on_every_worker() {
    let mut f = Ftp::new(2, Steer::BySide, 40002);
    f.line(false, "220 ready\r\n");
    f.line(true, "PASV\r\n");
    f.line(false, "227 Entering Passive Mode (192,0,2,21,195,81).\r\n");
    let sport = other_owner(&f, C, S, 50001);
    // The control connection is reset; as in the kernel, its entry lingers in
    // CLOSE (10 s) and its expectations with it.
    f.send(true, RST | ACK, b"");
    // Then it times out: its expectations go, on every shard.
    f.now += 11_000_000_000;
    let (w, st) = f.data(C, sport, S, 50001, Side::Inside);
    assert_ne!(w, f.ctl_owner());
    assert_eq!(
        st,
        CtState::New,
        "the expectation must be gone on worker {w}"
    );
}

#[test]
fn asymmetric_steering_hands_over_and_changes_nothing() {
    let mut f = Ftp::new(2, Steer::BySide, 40003);
    for i in 0..20 {
        f.line(false, &format!("200 line {i}\r\n"));
        f.line(true, "NOOP\r\n");
    }
    // Replies (outside) arrive on worker 1, requests on worker 0: whichever
    // owns the connection, half the packets were handed over.
    assert!(f.shards.handoffs >= 20, "{}", f.shards.handoffs);
    let (mut f2, _) = (Ftp::new(2, Steer::Owner, 40003), ());
    for i in 0..20 {
        f2.line(false, &format!("200 line {i}\r\n"));
    }
    assert_eq!(f2.shards.handoffs, 0);
}

/// Packets through shards and through one pipeline, answers compared.
struct Dual {
    shards: Shards,
    one: Pipeline,
    now: u64,
}

impl Dual {
    fn run(&mut self, side: Side, b: &[u8]) -> (usize, PacketResult) {
        self.now += 1_000_000;
        let rx = self.shards.owner(b).unwrap();
        let (w, r) = self.shards.process(rx, side, b, self.now);
        assert_eq!(
            r,
            self.one.process(side, b, self.now),
            "packet differs from one worker's"
        );
        (w, r)
    }
}

/// PPTP: the control connection on one worker, its GRE (owned by address)
/// on another. Every answer must equal one worker's.
#[test]
fn pptp_call_across_workers() {
    use conntrack::tuple::ipproto;
    const PNS: [u8; 4] = [10, 1, 1, 11];
    const PAC: [u8; 4] = [10, 1, 1, 10];
    let mut pol = policy();
    pol.rules[1].dport = vec![PortRange { lo: 1723, hi: 1723 }];
    pol.rules[1].helper = Some(HelperKind::Pptp);
    let cfg = Config::default();
    let mut d = Dual {
        shards: Shards::new(2, &cfg, &pol),
        one: Pipeline::new(cfg, pol),
        now: 1,
    };
    let gre = |src: [u8; 4], dst: [u8; 4], call_id: u16| {
        let mut h = vec![0x20, 0x01, 0x88, 0x0b, 0, 4];
        h.extend_from_slice(&call_id.to_be_bytes());
        h.extend_from_slice(&[0xff, 0x03, 0x00, 0x21]);
        Pkt::raw4(src, dst, ipproto::GRE).payload(&h).build()
    };
    let gre_owner = d.shards.owner(&gre(PNS, PAC, 1)).unwrap();
    let sport = (40_000..41_000u16)
        .find(|&p| {
            d.shards
                .owner(&Pkt::tcp4(PNS, p, PAC, 1723).flags(SYN).build())
                != Some(gre_owner)
        })
        .unwrap();
    let ctl = |msg: u16, len: usize, fill: &[(usize, u8)]| {
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
    };
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    let mut tcp = |d: &mut Dual, from_pns: bool, flags: u8, payload: &[u8]| {
        let b = if from_pns {
            let ack = if flags == SYN { 0 } else { sseq };
            Pkt::tcp4(PNS, sport, PAC, 1723)
                .flags(flags)
                .seq(cseq)
                .ack(ack)
        } else {
            Pkt::tcp4(PAC, 1723, PNS, sport)
                .flags(flags)
                .seq(sseq)
                .ack(cseq)
        }
        .payload(payload)
        .build();
        let side = if from_pns {
            Side::Inside
        } else {
            Side::Outside
        };
        let (_, r) = d.run(side, &b);
        let n = u32::try_from(payload.len()).unwrap() + u32::from(flags & SYN != 0);
        if from_pns {
            cseq += n;
        } else {
            sseq += n;
        }
        assert_eq!(r.verdict, Action::Accept, "{r:?}");
    };
    tcp(&mut d, true, SYN, &[]);
    tcp(&mut d, false, SYN | ACK, &[]);
    tcp(&mut d, true, ACK, &[]);
    tcp(&mut d, true, PSH | ACK, &ctl(1, 144, &[]));
    tcp(&mut d, false, PSH | ACK, &ctl(2, 144, &[(2, 1)]));
    tcp(&mut d, true, PSH | ACK, &ctl(7, 144, &[(0, 1), (1, 2)]));
    tcp(
        &mut d,
        false,
        PSH | ACK,
        &ctl(8, 20, &[(0, 3), (1, 4), (2, 1), (3, 2), (4, 1)]),
    );
    let ctl_owner = d
        .shards
        .owner(&Pkt::tcp4(PNS, sport, PAC, 1723).flags(ACK).build())
        .unwrap();
    let (w, r) = d.run(Side::Outside, &gre(PAC, PNS, 0x0102));
    assert_ne!(w, ctl_owner);
    assert_eq!(r.state, CtState::Related);
    let (_, r) = d.run(Side::Inside, &gre(PNS, PAC, 0x0304));
    assert_eq!((r.state, r.reply), (CtState::Established, true));
    for _ in 0..3 {
        let (_, r) = d.run(Side::Outside, &gre(PAC, PNS, 0x0102));
        assert_eq!(r.state, CtState::Established);
    }
    // Call-Disconnect-Notify on the control connection's worker ends the
    // call on the GRE's worker too.
    tcp(&mut d, false, PSH | ACK, &ctl(13, 136, &[(0, 3), (1, 4)]));
    let (_, r) = d.run(Side::Outside, &gre(PAC, PNS, 0x0102));
    assert_eq!((r.state, r.verdict), (CtState::New, Action::Drop));
}
