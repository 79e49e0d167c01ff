//! The TCP tracker's tests: the state table against the kernel's shape,
//! the window checks, and the shortcuts against the state table.

use super::*;
use crate::packet::tcp_flags::*;
use proptest::prelude::*;
use Direction::{Original as O, Reply as R};

#[test]
fn index_table_matches_the_chain_of_tests() {
    for f in 0..=u8::MAX {
        assert_eq!(Index::of(f), Index::slow_of(f), "flags {f:#04x}");
    }
}

/// Any `u32`, with 0, 1 and the top values drawn on purpose.
fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(66_000),
        any::<u32>()
    ]
}

/// Any `u16`, with 0, 1 and the top value drawn on purpose.
fn edge_u16() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(1), Just(u16::MAX), any::<u16>()]
}

fn seg(flags: u8, seq: u32, ack: u32, win: u16, payload: &'static [u8]) -> TcpSeg<'static> {
    TcpSeg {
        seq,
        ack,
        flags,
        window: win,
        wscale: None,
        sack_perm: false,
        sack_max: None,
        payload,
    }
}

/// Drives one connection like the table does: SEEN_REPLY/ASSURED bookkeeping.
struct Conn {
    c: TcpConn,
    ctx: TcpCtx,
    cfg: TcpConfig,
    invalid: usize,
    killed: bool,
}

impl Conn {
    fn open(first: TcpSeg<'_>) -> Conn {
        let cfg = TcpConfig::default();
        let (c, _) = new_conn(&first, &cfg).expect("opens");
        Conn {
            c,
            ctx: TcpCtx::default(),
            cfg,
            invalid: 0,
            killed: false,
        }
    }
    fn pkt(&mut self, dir: Direction, s: TcpSeg<'_>) -> TcpVerdict {
        let v = packet(&mut self.c, dir, &s, self.ctx, &self.cfg);
        match v {
            TcpVerdict::Accept { set_assured, .. } => {
                self.ctx.assured |= set_assured;
                self.ctx.seen_reply |= dir == R;
            }
            TcpVerdict::Ignore => self.ctx.seen_reply |= dir == R,
            TcpVerdict::Invalid(_) | TcpVerdict::InvalidShrink(_) => self.invalid += 1,
            TcpVerdict::AcceptKill => self.killed = true,
            TcpVerdict::Restart => {}
        }
        v
    }
    fn handshake(client_isn: u32, server_isn: u32) -> Conn {
        let mut c = Conn::open(seg(SYN, client_isn, 0, 64240, b""));
        c.pkt(R, seg(SYN | ACK, server_isn, client_isn + 1, 65160, b""));
        c.pkt(O, seg(ACK, client_isn + 1, server_isn + 1, 502, b""));
        assert_eq!(c.c.state, TcpState::Established);
        assert!(c.ctx.assured);
        c
    }
}

#[test]
fn size_budget() {
    assert!(
        core::mem::size_of::<TcpConn>() <= 64,
        "{}",
        core::mem::size_of::<TcpConn>()
    );
}

#[test]
fn handshake_data_and_close() {
    let mut c = Conn::handshake(1000, 5000);
    assert!(matches!(
        c.pkt(O, seg(ACK | PSH, 1001, 5001, 502, b"GET /")),
        TcpVerdict::Accept { .. }
    ));
    assert!(matches!(
        c.pkt(R, seg(ACK, 5001, 1006, 509, b"")),
        TcpVerdict::Accept { .. }
    ));
    c.pkt(O, seg(FIN | ACK, 1006, 5001, 502, b""));
    assert_eq!(c.c.state, TcpState::FinWait);
    c.pkt(R, seg(ACK, 5001, 1007, 509, b""));
    assert_eq!(c.c.state, TcpState::CloseWait);
    c.pkt(R, seg(FIN | ACK, 5001, 1007, 509, b""));
    assert_eq!(c.c.state, TcpState::LastAck);
    let v = c.pkt(O, seg(ACK, 1007, 5002, 502, b""));
    assert_eq!(c.c.state, TcpState::TimeWait);
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: 120,
            set_assured: false
        }
    );
    assert_eq!(c.invalid, 0);
    // Port reuse: a new SYN on TIME_WAIT restarts.
    assert_eq!(
        c.pkt(O, seg(SYN, 90_000, 0, 64240, b"")),
        TcpVerdict::Restart
    );
}

#[test]
fn unacked_data_caps_timeout_and_established_is_five_days() {
    let mut c = Conn::handshake(1, 100);
    let v = c.pkt(O, seg(ACK, 2, 101, 502, b"data"));
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: 300,
            set_assured: false
        }
    );
    let v = c.pkt(R, seg(ACK, 101, 6, 502, b""));
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: 432_000,
            set_assured: false
        }
    );
}

#[test]
fn window_scaling_needs_both_syns() {
    let mut s = seg(SYN, 1, 0, 1000, b"");
    s.wscale = Some(7);
    let mut c = Conn::open(s);
    c.pkt(R, seg(SYN | ACK, 100, 2, 1000, b""));
    assert_eq!((c.c.seen[0].scale, c.c.seen[1].scale), (0, 0));
    let mut c = Conn::open(s);
    let mut sa = seg(SYN | ACK, 100, 2, 1000, b"");
    sa.wscale = Some(8);
    c.pkt(R, sa);
    assert_eq!((c.c.seen[0].scale, c.c.seen[1].scale), (7, 8));
    c.pkt(O, seg(ACK, 2, 101, 1000, b""));
    // SYN windows are never scaled; the server's next ACK advertises
    // 1000 << 8, and the client may then send 256 kB ahead.
    c.pkt(R, seg(ACK, 101, 2, 1000, b""));
    static BIG: [u8; 1400] = [0; 1400];
    let mut seq = 2u32;
    for _ in 0..100 {
        assert!(matches!(
            c.pkt(O, seg(ACK, seq, 101, 1000, &BIG)),
            TcpVerdict::Accept { .. }
        ));
        seq += 1400;
    }
    assert_eq!(c.invalid, 0);
}

#[test]
fn out_of_window_data_is_invalid_and_changes_nothing() {
    let mut c = Conn::handshake(0, 0);
    let before_state = c.c;
    assert_eq!(
        c.pkt(O, seg(ACK, 10_000_000, 1, 502, b"x")),
        TcpVerdict::Invalid(DropReason::TcpOutOfWindow)
    );
    assert_eq!(c.c, before_state);
    // ACK of data never sent.
    assert!(matches!(
        c.pkt(R, seg(ACK, 1, 50_000, 502, b"")),
        TcpVerdict::Invalid(_)
    ));
    // Overrunning the receive window by less than a window is only ignored
    // (the kernel's "bytes more than expected").
    assert_eq!(
        c.pkt(O, seg(ACK, 100_000, 1, 502, b"x")),
        TcpVerdict::Ignore
    );
}

/// PEER_TESTS 1.4 conntrack_ack_loss_stall: a retransmission of data already
/// acknowledged is not invalid.
#[test]
fn retransmission_of_acked_data_is_not_invalid() {
    let mut c = Conn::handshake(0, 0);
    static SEG: [u8; 1460] = [0; 1460];
    let mut seq = 1u32;
    for _ in 0..46 {
        c.pkt(R, seg(ACK, seq, 1, 502, &SEG));
        c.pkt(O, seg(ACK, 1, seq + 1460, 32792, b""));
        seq += 1460;
    }
    let v = c.pkt(R, seg(ACK, 1, 1, 502, &SEG));
    assert_eq!(v, TcpVerdict::Ignore);
    assert_eq!(c.invalid, 0);
}

/// PEER_TESTS 1.4 conntrack_rst_invalid: only the exact RST closes; the four
/// others are invalid and the connection stays established.
#[test]
fn rst_exact_and_inexact() {
    // Local client: ISN 0; peer (server) ISN 0.
    let mut c = Conn::handshake(0, 0);
    static D: [u8; 3000] = [0; 3000];
    c.pkt(R, seg(ACK | PSH, 1, 1, 502, &D));
    c.pkt(O, seg(ACK, 1, 3001, 502, b""));
    for s in [0u32, 1_000_000, 42] {
        c.pkt(R, seg(RST, s, 0, 0, b""));
        assert_eq!(c.c.state, TcpState::Established, "rst seq {s}");
    }
    // Data exchange.
    c.pkt(O, seg(ACK | PSH, 1, 3001, 502, &D[..1000]));
    c.pkt(R, seg(ACK, 3001, 1001, 502, b""));
    c.pkt(R, seg(RST | ACK, 3000, 1001, 0, b""));
    assert_eq!(c.c.state, TcpState::Established);
    c.pkt(R, seg(RST | ACK, 3001, 1001, 0, b""));
    assert_eq!(c.c.state, TcpState::Close);
    assert_eq!(c.invalid, 4);
}

/// PEER_TESTS 1.4 conntrack_synack_old: a stale SYN-ACK is invalid, the right
/// one after the retransmitted SYN establishes.
#[test]
fn stale_synack() {
    let mut c = Conn::open(seg(SYN, 643_160_522, 0, 65535, b""));
    c.pkt(R, seg(SYN | ACK, 145_758_917, 643_160_523 + 7, 65535, b""));
    assert_eq!(c.invalid, 1);
    assert_eq!(c.c.state, TcpState::SynSent);
    assert_eq!(
        c.pkt(O, seg(SYN, 643_160_522, 0, 65535, b"")),
        TcpVerdict::Ignore
    );
    c.pkt(R, seg(SYN | ACK, 145_758_917, 643_160_523, 65535, b""));
    c.pkt(O, seg(ACK, 643_160_523, 145_758_918, 65535, b""));
    assert_eq!(c.c.state, TcpState::Established);
    assert!(c.ctx.assured);
    assert_eq!(c.invalid, 1);
}

/// PEER_TESTS 1.4 conntrack_syn_challenge_ack: a challenge ACK answering a SYN
/// passes, the client's RST to it is accepted, the retried SYN establishes.
#[test]
fn challenge_ack_in_syn_sent() {
    let mut c = Conn::open(seg(SYN, 643_160_522, 0, 65535, b""));
    assert_eq!(
        c.pkt(R, seg(ACK, 145_824_453, 643_160_523, 65535, b"")),
        TcpVerdict::Ignore
    );
    let v = c.pkt(O, seg(RST, 643_160_523, 0, 0, b""));
    assert!(
        matches!(v, TcpVerdict::Accept { .. } | TcpVerdict::AcceptKill),
        "{v:?}"
    );
    assert_eq!(c.invalid, 0);
}

/// Simultaneous open (SYN, SYN from the other side, SYN-ACK, ACK).
#[test]
fn simultaneous_open() {
    let mut c = Conn::open(seg(SYN, 100, 0, 1000, b""));
    c.pkt(R, seg(SYN, 500, 0, 1000, b""));
    assert_eq!(c.c.state, TcpState::SynSent2);
    c.pkt(O, seg(SYN | ACK, 100, 501, 1000, b""));
    assert_eq!(c.c.state, TcpState::SynRecv);
    c.pkt(R, seg(ACK, 501, 101, 1000, b""));
    assert_eq!(c.c.state, TcpState::Established);
    assert_eq!(c.invalid, 0);
}

/// Open vSwitch "tcp pick up": mid-stream with an unseen wscale 7 handshake.
#[test]
fn mid_stream_pickup() {
    static A: [u8; 514] = [0; 514];
    static B: [u8; 469] = [0; 469];
    let mut c = Conn::open(seg(ACK | PSH, 1000, 2000, 10, &A));
    c.pkt(R, seg(ACK, 2000, 1514, 10, b""));
    c.pkt(R, seg(ACK | PSH, 2000, 1514, 10, &B));
    c.pkt(O, seg(ACK, 1514, 2469, 10, b""));
    assert_eq!(c.c.state, TcpState::Established);
    c.pkt(O, seg(FIN | ACK, 1514, 2469, 10, b""));
    c.pkt(R, seg(FIN | ACK, 2469, 1515, 10, b""));
    c.pkt(O, seg(ACK, 1515, 2470, 10, b""));
    assert_eq!(c.invalid, 0);
    assert_eq!(c.c.state, TcpState::TimeWait);
    // Without loose, mid-stream cannot open.
    let cfg = TcpConfig {
        loose: false,
        ..TcpConfig::default()
    };
    assert_eq!(
        new_conn(&seg(ACK, 1, 1, 10, b""), &cfg),
        Err(DropReason::TcpNewNotSyn)
    );
    // RST and SYN-ACK never open.
    assert!(new_conn(&seg(RST, 1, 0, 0, b""), &TcpConfig::default()).is_err());
    assert!(new_conn(&seg(SYN | ACK, 1, 1, 10, b""), &TcpConfig::default()).is_err());
}

#[test]
fn rst_answering_syn_kills() {
    let mut c = Conn::open(seg(SYN, 7, 0, 1000, b""));
    assert_eq!(
        c.pkt(R, seg(RST | ACK, 0, 8, 0, b"")),
        TcpVerdict::AcceptKill
    );
}

#[test]
fn sequence_wraparound() {
    let mut c = Conn::handshake(u32::MAX - 10, 5);
    static D: [u8; 100] = [0; 100];
    let v = c.pkt(O, seg(ACK, u32::MAX - 9, 6, 502, &D));
    assert!(matches!(v, TcpVerdict::Accept { .. }));
    let v = c.pkt(R, seg(ACK, 6, (u32::MAX - 9).wrapping_add(100), 502, b""));
    assert!(matches!(v, TcpVerdict::Accept { .. }));
    assert_eq!(c.invalid, 0);
}

#[test]
fn liberal_accepts_out_of_window() {
    let mut c = Conn::handshake(0, 0);
    c.cfg.be_liberal = true;
    assert!(matches!(
        c.pkt(O, seg(ACK, 10_000_000, 1, 502, b"x")),
        TcpVerdict::Accept { .. }
    ));
}

#[test]
fn table_matrix_matches_the_kernel_shape() {
    // Every (direction, index, state) cell is defined, and the states the
    // kernel names for the main transitions are where they should be.
    assert_eq!(
        TABLE[0][Index::Syn as usize][TcpState::None as usize],
        To(TcpState::SynSent)
    );
    assert_eq!(
        TABLE[1][Index::SynAck as usize][TcpState::SynSent as usize],
        To(TcpState::SynRecv)
    );
    assert_eq!(
        TABLE[0][Index::Ack as usize][TcpState::SynRecv as usize],
        To(TcpState::Established)
    );
    assert_eq!(
        TABLE[1][Index::Syn as usize][TcpState::SynSent as usize],
        To(TcpState::SynSent2)
    );
    assert_eq!(
        TABLE[0][Index::Syn as usize][TcpState::Established as usize],
        IG
    );
    assert_eq!(
        TABLE[1][Index::Ack as usize][TcpState::SynSent as usize],
        IG
    );
    for dir in &TABLE {
        for (s, cell) in dir[Index::None as usize].iter().enumerate() {
            assert_eq!(*cell, IV, "none flags in state {s}");
        }
        for cell in &dir[Index::Rst as usize][1..] {
            assert_eq!(*cell, To(TcpState::Close));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// [`established_ack`] from any state an established connection can
    /// hold (windows unknown or known, any scale, flags, last segment,
    /// retransmission count) and any ACK segment, on and around each
    /// bound the window check compares with or anywhere: the verdict and
    /// the state the state table and the whole window check give, under
    /// any timeouts (often equal, to reach each tie) and options.
    #[test]
    fn established_ack_is_the_state_table(
        dirs in proptest::collection::vec(
            (edge_u32(), edge_u32(), edge_u32(), any::<u32>(), 0u8..17, any::<u8>()),
            2,
        ),
        last in (0u8..2, edge_u32(), edge_u32(), edge_u32(), edge_u16(), 0u8..6),
        reply in any::<bool>(),
        extra in any::<u8>(),
        at in (0usize..5, -3i32..=3, 0usize..5, -3i32..=3),
        far in (any::<u32>(), any::<u32>(), -70_000i32..70_000, -70_000i32..70_000),
        win in edge_u16(),
        len in 0usize..3,
        sack in proptest::option::of(prop_oneof![-3i32..=3, -70_000i32..70_000]),
        ctx in (any::<bool>(), any::<bool>()),
        liberal in any::<bool>(),
        max_retrans in 0u8..5,
        tmo in proptest::collection::vec(1u32..6, 3),
        repeat in (any::<bool>(), 0usize..6),
    ) {
        static P: [u8; 1500] = [0; 1500];
        let mut c = TcpConn { state: TcpState::Established, ..TcpConn::default() };
        for (d, (end, maxend, maxwin, maxack, scale, flags)) in c.seen.iter_mut().zip(dirs) {
            *d = TcpDir { end, maxend, maxwin, maxack, scale, flags };
        }
        (c.last_dir, c.last_seq, c.last_ack, c.last_end, c.last_win, c.retrans) = last;
        c.last_index = Index::Ack;
        let dir = if reply { R } else { O };
        let (mine, theirs) = (c.seen[dir.index()], c.seen[1 - dir.index()]);
        // Each bound's value, the ones beside it, far from it, or anywhere.
        let seq_at = [
            mine.maxend,
            mine.end.wrapping_sub(theirs.maxwin),
            mine.end.wrapping_add_signed(far.2),
            mine.end,
            far.0,
        ];
        let ack_at = [
            theirs.end,
            theirs.end.wrapping_sub(mine.maxwin.max(66_000)),
            theirs.maxend,
            theirs.end.wrapping_add_signed(far.3),
            far.1,
        ];
        let seq = seq_at[at.0].wrapping_add_signed(at.1);
        let ack = ack_at[at.2].wrapping_add_signed(at.3);
        let flags = (extra & !(SYN | FIN | RST)) | ACK;
        let mut s = seg(flags, seq, ack, win, &P[..[0, 1, 1500][len]]);
        s.sack_max = sack.map(|x| ack.wrapping_add_signed(x));
        if repeat.0 {
            // The last segment was this one (a retransmission), or
            // differs from it in one field.
            c.last_dir = dir.index() as u8;
            c.last_seq = seq;
            c.last_ack = ack;
            c.last_end = seg_end(&s);
            c.last_win = win;
            match repeat.1 {
                0 => c.last_dir ^= 1,
                1 => c.last_seq ^= 1,
                2 => c.last_ack ^= 1,
                3 => c.last_end ^= 1,
                4 => c.last_win ^= 1,
                _ => {}
            }
        }
        let ctx = TcpCtx { seen_reply: ctx.0, assured: ctx.1 };
        let mut cfg = TcpConfig { be_liberal: liberal, max_retrans, ..TcpConfig::default() };
        cfg.timeouts.established = tmo[0];
        cfg.timeouts.retrans = tmo[1];
        cfg.timeouts.unack = tmo[2];
        let mut expect = c;
        let v_expect = packet_by_table(&mut expect, dir, Index::Ack, &s, ctx, &cfg);
        let v = packet(&mut c, dir, &s, ctx, &cfg);
        prop_assert_eq!(v, v_expect);
        prop_assert_eq!(c, expect);
    }
}

proptest! {
    /// The established-ACK shortcut of [`packet`] gives the verdict and the
    /// state the state table gives, whatever the windows, flags and context.
    #[test]
    fn shortcut_matches_state_table(
        segs in proptest::collection::vec(
            (any::<bool>(), 0u8..8, -70_000i32..70_000, -70_000i32..70_000, any::<u16>(), 0usize..3, any::<bool>()),
            1..80,
        ),
        liberal in any::<bool>(),
        sack in any::<bool>(),
    ) {
        static P: [u8; 2000] = [0; 2000];
        let mut c = Conn::handshake(1_000_000, 2_000_000);
        c.cfg.be_liberal = liberal;
        for (reply, pick, dseq, dack, win, len, ctx_flip) in segs {
            // Mostly plain ACKs, near where each side's sequence space is.
            let flags = [ACK, ACK, ACK | PSH, ACK, ACK | FIN, ACK | RST, SYN, ACK][usize::from(pick)];
            let dir = if reply { R } else { O };
            let (mine, theirs) = (c.c.seen[dir.index()], c.c.seen[1 - dir.index()]);
            let mut s = seg(
                flags,
                mine.end.wrapping_add_signed(dseq / 64),
                theirs.end.wrapping_add_signed(dack / 64),
                win,
                &P[..[0, 1, 1500][len]],
            );
            if sack {
                s.sack_max = Some(theirs.end.wrapping_add_signed(dack / 32));
            }
            let ctx = if ctx_flip {
                TcpCtx { seen_reply: !c.ctx.seen_reply, assured: c.ctx.assured }
            } else {
                c.ctx
            };
            let mut by_table = c.c;
            let expect = packet_by_table(&mut by_table, dir, Index::of(s.flags), &s, ctx, &c.cfg);
            let got = packet(&mut c.c, dir, &s, ctx, &c.cfg);
            prop_assert_eq!(got, expect);
            prop_assert_eq!(c.c, by_table);
            if let TcpVerdict::Accept { set_assured, .. } = got {
                c.ctx.assured |= set_assured;
                c.ctx.seen_reply |= dir == R;
            }
        }
    }

    /// A new connection's SYN: [`first_syn`] gives what the state table
    /// and the whole window check give, whatever the segment (FIN, a
    /// payload, any window and options) and the timeouts.
    #[test]
    fn first_syn_is_the_state_table(
        extra in any::<u8>(),
        seq in any::<u32>(),
        win in prop_oneof![Just(0u16), Just(1), Just(u16::MAX), any::<u16>()],
        wscale in proptest::option::of(any::<u8>()),
        sack_perm in any::<bool>(),
        len in 0usize..3,
        loose in any::<bool>(),
        liberal in any::<bool>(),
        tmo in proptest::collection::vec(1u32..1000, 4),
        max_retrans in any::<u8>(),
    ) {
        const P: [u8; 1500] = [0; 1500];
        let flags = (extra & !(ACK | RST)) | SYN;
        let mut s = seg(flags, seq, 0, win, &P[..[0, 1, 1500][len]]);
        s.wscale = wscale;
        s.sack_perm = sack_perm;
        let mut cfg = TcpConfig { loose, be_liberal: liberal, max_retrans, ..TcpConfig::default() };
        cfg.timeouts.syn_sent = tmo[0];
        cfg.timeouts.retrans = tmo[1];
        cfg.timeouts.unack = tmo[2];
        cfg.timeouts.close = tmo[3];
        let mut expect = TcpConn { last_index: Index::None, ..TcpConn::default() };
        init_syn_sender(&mut expect, &s);
        let verdict = by_table(&mut expect, O, Index::Syn, &s, TcpCtx::default(), &cfg);
        let TcpVerdict::Accept { timeout, set_assured: false } = verdict else {
            return Err(TestCaseError::fail(format!("{verdict:?}")));
        };
        prop_assert_eq!(new_conn(&s, &cfg), Ok((expect, timeout)));
    }

    /// Arbitrary segments never panic, and an invalid verdict leaves the
    /// connection exactly as it was.
    #[test]
    fn invalid_changes_nothing(segs in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u32>(), any::<u32>(), any::<u16>(), 0usize..3), 1..60)) {
        static P: [u8; 2000] = [0; 2000];
        let mut c = Conn::handshake(1_000_000, 2_000_000);
        for (reply, flags, seq, ack, win, len) in segs {
            let flags = flags & (SYN | ACK | FIN | RST | PSH);
            if !crate::packet::tcp_flags_valid(flags) { continue; }
            let dir = if reply { R } else { O };
            let s = seg(flags, seq, ack, win, &P[..[0, 1, 1500][len]]);
            let snapshot = c.c;
            let v = c.pkt(dir, s);
            if matches!(v, TcpVerdict::Invalid(_)) {
                prop_assert_eq!(c.c.state, snapshot.state);
                prop_assert_eq!(c.c.seen, snapshot.seen);
            }
        }
    }
}
