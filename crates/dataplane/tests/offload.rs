//! The XDP fast path against the slow path, packet by packet (root; CI runs
//! it as root): Tollgate's XDP program run with `BPF_PROG_TEST_RUN`, its
//! offload table driven by the worker's real [`Offloader`] and a real
//! pipeline, next to a reference pipeline that sees every packet. Each packet
//! is forwarded by the program (XDP_REDIRECT) only if the reference accepts
//! it; a packet it gives the slow path gets the reference's verdict there;
//! and when the connection is taken back, its state (TCP windows, counters,
//! timeout) is the reference's.

// Test scaffolding: a failed set-up call is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

mod common;

use conntrack::build::{ethernet, Pkt};
use conntrack::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};
use conntrack::policy::{Action, Policy, Rule, Side};
use conntrack::{Config, Pipeline};
use dataplane::bpf::action;
use dataplane::fastreplay::FastReplay;

const A: [u8; 4] = [10, 9, 0, 1];
const B: [u8; 4] = [10, 9, 0, 2];

fn strict() -> Policy {
    dataplane::lab::strict_policy()
}

fn cfg() -> Config {
    Config {
        max_entries: 1024,
        tcp: conntrack::proto::tcp::TcpConfig {
            // Mid-stream pickup would make a withdrawn flow's stray packet a
            // new connection; the kernel's default is loose, ours in tests
            // both ways: see `loose_pickup_too`.
            ..Default::default()
        },
        ..Config::default()
    }
}

/// Packet `n` of the UDP flow A:5000 -> B:53 the offload tests share.
fn udp_out(n: u8) -> Vec<u8> {
    Pkt::udp4(A, 5000, B, 53).payload(&[n; 40]).build()
}

/// Its reply `n`.
fn udp_back(n: u8) -> Vec<u8> {
    Pkt::udp4(B, 53, A, 5000).payload(&[n; 40]).build()
}

/// The program in front of a pipeline, in a network namespace of this
/// thread's own ([`FastReplay`]: a worker with offload on, packet by packet),
/// and a reference pipeline that sees every packet.
struct Bench {
    fr: FastReplay,
    reference: Pipeline,
    start: Instant,
    /// Added to the clock (to age flows without waiting).
    shift: u64,
}

impl Bench {
    fn new(policy: Policy, cfg: Config) -> Bench {
        Bench {
            fr: FastReplay::new(Pipeline::new(cfg.clone(), policy.clone()))
                .expect("fast path set up"),
            reference: Pipeline::new(cfg, policy),
            start: Instant::now(),
            shift: 0,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap() + self.shift
    }

    /// Moves the clock `secs` ahead (nothing may be in the fast path: its
    /// clock cannot jump with ours).
    fn age(&mut self, secs: u64) {
        assert!(
            self.fr.offloader().is_empty(),
            "aging with flows in the fast path"
        );
        self.shift += secs * 1_000_000_000;
    }

    /// Packets the program forwarded itself.
    fn forwarded_fast(&self) -> u64 {
        self.fr.forwarded
    }

    /// The UDP flow of [`udp_out`] / [`udp_back`] opened, assured (two
    /// seconds of life and one more packet) and `rounds` exchanges on: the
    /// fast path has taken it.
    fn open_udp(&mut self, rounds: u8) {
        self.send(Side::Inside, &udp_out(0), "udp out");
        self.send(Side::Outside, &udp_back(0), "udp back");
        self.age(3);
        self.send(Side::Inside, &udp_out(1), "udp assured");
        for i in 0..rounds {
            self.send(Side::Inside, &udp_out(i), "udp");
            self.send(Side::Outside, &udp_back(i), "udp reply");
        }
    }

    /// Runs both pipelines' timers (an empty batch each) now; the fast
    /// path's owner deletes what the core let go.
    fn tick(&mut self) {
        let n = self.now();
        let (off, p) = self.fr.parts();
        p.process_batch(&[], n, &mut []);
        off.collect_gone(p);
        self.reference.process_batch(&[], n, &mut []);
    }

    /// Prints what went where (`what` names the run).
    fn report(&self, what: &str) {
        eprintln!(
            "{what}fast path forwarded {}, slow path {}, punts {:?}",
            self.forwarded_fast(),
            self.fr.punted,
            self.fr.program().punts()
        );
    }

    /// One packet: the program first, the slow path if it punts; returns the
    /// verdict and checks it against the reference's.
    fn send(&mut self, side: Side, ip: &[u8], what: &str) -> Action {
        let now = self.now();
        let reference = self.reference.process(side, ip, now);
        let before = self.fr.forwarded;
        let r = self.fr.process(side, ip, now).expect("test run");
        let fast = self.fr.forwarded > before;
        if !fast {
            assert_eq!(
                (r.verdict, r.state, r.reason),
                (reference.verdict, reference.state, reference.reason),
                "{what}: slow path differs from the reference"
            );
        }
        assert_eq!(
            r.verdict, reference.verdict,
            "{what}: verdict {:?} (fast path: {fast}), reference {reference:?}",
            r.verdict
        );
        r.verdict
    }

    /// Takes every connection back and compares the two tables.
    fn settle(&mut self) {
        self.fr.finish();
        let now = self.now();
        let mut a: Vec<_> = self.fr.pipeline().conntrack().connections(now).collect();
        let mut b: Vec<_> = self.reference.conntrack().connections(now).collect();
        a.sort_by_key(|c| format!("{:?}", c.orig));
        b.sort_by_key(|c| format!("{:?}", c.orig));
        assert_eq!(a.len(), b.len(), "connections");
        for (x, y) in a.iter().zip(&b) {
            assert!(!x.offloaded);
            assert_eq!(
                (x.orig, x.tcp_state, x.packets, x.bytes, x.assured),
                (y.orig, y.tcp_state, y.packets, y.bytes, y.assured),
                "connection state"
            );
            // The program's clock reads a few microseconds apart from ours.
            let (e1, e2) = (x.expires_in, y.expires_in);
            assert!(
                e1.abs_diff(e2) < 50_000_000,
                "timeouts {e1} vs {e2} for {:?}",
                x.orig
            );
        }
        let conns = |p: &Pipeline| {
            (0..1024u32)
                .filter_map(|i| p.conntrack().tcp_conn(i).map(|c| (i, c)))
                .filter(|(_, c)| c.state != Default::default())
                .collect::<Vec<_>>()
        };
        let (ta, tb) = (conns(self.fr.pipeline()), conns(&self.reference));
        let sa: Vec<_> = ta.iter().map(|(_, c)| c.seen).collect();
        let sb: Vec<_> = tb.iter().map(|(_, c)| c.seen).collect();
        assert_eq!(sa, sb, "TCP window state");
    }
}

/// A TCP connection's two ends, producing segments.
struct Tcp {
    sport: u16,
    nxt: [u32; 2],
    win: [u16; 2],
}

impl Tcp {
    fn seg(&self, from: usize, flags: u8, seq: u32, ack: u32, len: usize) -> Vec<u8> {
        let (src, dst, sp, dp) = if from == 0 {
            (A, B, self.sport, 80)
        } else {
            (B, A, 80, self.sport)
        };
        Pkt::tcp4(src, sp, dst, dp)
            .flags(flags)
            .seq(seq)
            .ack(ack)
            .window(self.win[from])
            .tcp_option(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .payload(&vec![0x61; len])
            .build()
    }

    /// An ACK from `from` with SACK blocks after its timestamps, laid out
    /// as Linux sends them.
    fn sack(&self, from: usize, seq: u32, ack: u32, blocks: &[(u32, u32)]) -> Vec<u8> {
        let (src, dst, sp, dp) = if from == 0 {
            (A, B, self.sport, 80)
        } else {
            (B, A, 80, self.sport)
        };
        let mut o = vec![1, 1, 8, 10, 0, 0, 0, 3, 0, 0, 0, 4, 1, 1, 5];
        o.push(u8::try_from(2 + 8 * blocks.len()).unwrap_or(2));
        for (l, r) in blocks {
            o.extend_from_slice(&l.to_be_bytes());
            o.extend_from_slice(&r.to_be_bytes());
        }
        Pkt::tcp4(src, sp, dst, dp)
            .flags(ACK)
            .seq(seq)
            .ack(ack)
            .window(self.win[from])
            .tcp_option(&o)
            .build()
    }

    /// Handshake through the bench (with window scaling and SACK-permitted).
    fn open(b: &mut Bench, sport: u16) -> Tcp {
        let t = Tcp {
            sport,
            nxt: [1000, 50_000],
            win: [8192, 8192],
        };
        let syn = Pkt::tcp4(A, sport, B, 80)
            .flags(SYN)
            .seq(999)
            .window(64240)
            .wscale(7)
            .sack_perm()
            .build();
        assert_eq!(b.send(Side::Inside, &syn, "syn"), Action::Accept);
        let synack = Pkt::tcp4(B, 80, A, sport)
            .flags(SYN | ACK)
            .seq(49_999)
            .ack(1000)
            .window(65160)
            .wscale(7)
            .sack_perm()
            .build();
        assert_eq!(b.send(Side::Outside, &synack, "syn-ack"), Action::Accept);
        let ack = t.seg(0, ACK, 1000, 50_000, 0);
        assert_eq!(b.send(Side::Inside, &ack, "ack"), Action::Accept);
        t
    }

    /// A clean data segment from `from`, acknowledging everything.
    fn data(&mut self, from: usize, len: usize) -> Vec<u8> {
        let s = self.seg(from, PSH | ACK, self.nxt[from], self.nxt[1 - from], len);
        self.nxt[from] = self.nxt[from].wrapping_add(len as u32);
        s
    }
}

fn side(from: usize) -> Side {
    if from == 0 {
        Side::Inside
    } else {
        Side::Outside
    }
}

/// Deterministic xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `f` as root in a thread of its own (its own network namespace:
/// [`Bench::new`] unshares it); skips outside CI when not root.
fn isolated(f: impl FnOnce() + Send + 'static) {
    if !root_or_skip() {
        return;
    }
    std::thread::spawn(f).join().expect("test thread");
}

fn root_or_skip() -> bool {
    common::root_or_skip("loading BPF")
}

#[test]
fn tcp_goes_to_the_fast_path_and_comes_back_exactly() {
    isolated(|| {
        let mut b = Bench::new(strict(), cfg());
        let mut t = Tcp::open(&mut b, 40_000);
        // Data both ways: the connection is installed, then activated, then
        // its segments go through the program.
        for i in 0..40 {
            let from = i % 2;
            let s = t.data(from, 100 + i * 7);
            b.send(side(from), &s, &format!("data {i}"));
        }
        assert!(
            b.forwarded_fast() > 20,
            "fast path forwarded {}",
            b.forwarded_fast()
        );
        let before = b.forwarded_fast();
        // A segment far beyond the window: invalid on both paths (the program
        // hands it over and the flow with it).
        let bad = t.seg(0, ACK, t.nxt[0].wrapping_add(1 << 30), t.nxt[1], 10);
        assert_eq!(b.send(Side::Inside, &bad, "out of window"), Action::Drop);
        // Back to the fast path after it.
        for i in 0..20 {
            let from = i % 2;
            let s = t.data(from, 50);
            b.send(side(from), &s, &format!("data after {i}"));
        }
        assert!(b.forwarded_fast() > before + 5, "back on the fast path");
        // A bad checksum, a SACK block, an URG: the slow path's.
        let mut s = t.data(0, 10);
        let l = s.len();
        s[l - 1] ^= 0xff;
        b.send(Side::Inside, &s, "bad checksum");
        let sack = Pkt::tcp4(B, 80, A, 40_000)
            .flags(ACK)
            .seq(t.nxt[1])
            .ack(t.nxt[0])
            .window(t.win[1])
            .sack(&[(t.nxt[0].wrapping_sub(5), t.nxt[0])])
            .build();
        b.send(Side::Outside, &sack, "sack");
        let urg = t.seg(1, ACK | URG, t.nxt[1], t.nxt[0], 0);
        b.send(Side::Outside, &urg, "urg");
        for i in 0..10 {
            let s = t.data(i % 2, 20);
            b.send(side(i % 2), &s, "more data");
        }
        // Retransmissions of the same segment (counted for the timeout).
        let s = t.data(1, 30);
        for _ in 0..5 {
            b.send(Side::Outside, &s, "retransmission");
        }
        b.settle();
        // Installed while its packets keep coming (the rings never empty):
        // they stay on the slow path, counted, until the worker has seen
        // every one; only then the program takes the flow.
        b.fr.hold = true;
        let mut t = Tcp::open(&mut b, 40_002);
        let fast_before = b.forwarded_fast();
        for i in 0..6 {
            let s = t.data(i % 2, 64);
            b.send(side(i % 2), &s, "data while pending");
        }
        assert_eq!(
            b.forwarded_fast(),
            fast_before,
            "nothing forwarded while pending"
        );
        assert!(
            b.fr.program().punts()[0] >= 4,
            "pending punts {:?}",
            b.fr.program().punts()
        );
        b.fr.hold = false;
        let now = b.now();
        let (off, p) = b.fr.parts();
        off.drained(0);
        off.drained(1);
        off.publish_all(p, now);
        for i in 0..6 {
            let s = t.data(i % 2, 64);
            b.send(side(i % 2), &s, "data once active");
        }
        assert!(
            b.forwarded_fast() >= fast_before + 6,
            "active after the pending packets"
        );
        b.settle();
        // FIN both ways, after the flow went back to the fast path.
        let mut t = Tcp::open(&mut b, 40_001);
        for i in 0..10 {
            let s = t.data(i % 2, 64);
            b.send(side(i % 2), &s, "data");
        }
        let fin = t.seg(0, FIN | ACK, t.nxt[0], t.nxt[1], 0);
        t.nxt[0] += 1;
        b.send(Side::Inside, &fin, "fin");
        let fin = t.seg(1, FIN | ACK, t.nxt[1], t.nxt[0], 0);
        t.nxt[1] += 1;
        b.send(Side::Outside, &fin, "fin back");
        let last = t.seg(0, ACK, t.nxt[0], t.nxt[1], 0);
        b.send(Side::Inside, &last, "last ack");
        b.settle();
        b.report("");
    });
}

#[test]
fn random_segments_get_the_slow_paths_verdicts() {
    isolated(|| {
        let mut b = Bench::new(strict(), cfg());
        for seed in 1..=6u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            #[allow(clippy::cast_possible_truncation)]
            let mut t = Tcp::open(&mut b, 41_000 + seed as u16);
            for i in 0..400 {
                let from = rng.below(2) as usize;
                let r = rng.below(100);
                let pkt = if r < 55 {
                    t.data(from, rng.below(300) as usize)
                } else if r < 60 {
                    // SACK blocks within what the peer sent.
                    let peer = t.nxt[1 - from];
                    t.sack(
                        from,
                        t.nxt[from],
                        peer.wrapping_sub(300),
                        &[(peer.wrapping_sub(200), peer.wrapping_sub(100))],
                    )
                } else if r < 70 {
                    // Somewhere around the window, either edge.
                    let off = (rng.below(400_000) as u32).wrapping_sub(200_000);
                    t.seg(
                        from,
                        ACK,
                        t.nxt[from].wrapping_add(off),
                        t.nxt[1 - from],
                        20,
                    )
                } else if r < 78 {
                    // An ack off the mark.
                    let off = (rng.below(200_000) as u32).wrapping_sub(100_000);
                    t.seg(from, ACK, t.nxt[from], t.nxt[1 - from].wrapping_add(off), 0)
                } else if r < 84 {
                    // A retransmission of old data.
                    t.seg(
                        from,
                        PSH | ACK,
                        t.nxt[from].wrapping_sub(100),
                        t.nxt[1 - from],
                        100,
                    )
                } else if r < 88 {
                    t.win[from] = rng.below(3) as u16 * 4000;
                    t.seg(from, ACK, t.nxt[from], t.nxt[1 - from], 0)
                } else if r < 92 {
                    let mut s = t.data(from, 40);
                    let l = s.len();
                    s[l - 3] ^= 0x5a;
                    s
                } else if r < 95 {
                    t.seg(from, ACK | URG, t.nxt[from], t.nxt[1 - from], 1)
                } else if r < 97 {
                    if rng.below(3) == 0 {
                        t.seg(from, SYN, t.nxt[from], 0, 0)
                    } else {
                        // SACK blocks around what the peer sent (1 to 3).
                        let peer = t.nxt[1 - from];
                        let n = 1 + rng.below(3) as usize;
                        let blocks: Vec<(u32, u32)> = (0..n)
                            .map(|_| {
                                let r = peer.wrapping_add(
                                    (rng.below(200_000) as u32).wrapping_sub(100_000),
                                );
                                (r.wrapping_sub(500), r)
                            })
                            .collect();
                        t.sack(
                            from,
                            t.nxt[from],
                            peer.wrapping_sub(rng.below(1000) as u32),
                            &blocks,
                        )
                    }
                } else if r < 98 && i > 300 {
                    t.seg(from, RST | ACK, t.nxt[from], t.nxt[1 - from], 0)
                } else {
                    t.data(from, 0)
                };
                b.send(side(from), &pkt, &format!("seed {seed} packet {i}"));
            }
            b.settle();
        }
        b.report("");
        assert!(b.forwarded_fast() > 300, "the fast path took part");
    });
}

#[test]
fn udp_offload_timeouts_and_policy_reload() {
    isolated(|| {
        let mut c = cfg();
        c.timeouts.udp_stream = 2;
        let mut b = Bench::new(strict(), c);
        let (out, back) = (udp_out, udp_back);
        b.open_udp(20);
        assert!(
            b.forwarded_fast() >= 30,
            "fast path forwarded {}",
            b.forwarded_fast()
        );
        // A UDP packet with a bad checksum: dropped on both paths.
        let mut bad = out(9);
        let l = bad.len();
        bad[l - 1] ^= 1;
        assert_eq!(b.send(Side::Inside, &bad, "bad udp"), Action::Drop);
        for i in 0..5 {
            b.send(Side::Inside, &out(i), "udp again");
        }
        // Listing while offloaded: live counters.
        let (off, p) = b.fr.parts();
        off.refresh(p);
        let now = b.now();
        let live: Vec<_> = b.fr.pipeline().conntrack().connections(now).collect();
        let reference: Vec<_> = b.reference.conntrack().connections(now).collect();
        assert_eq!(live.len(), 1);
        assert!(live[0].offloaded, "listed as offloaded");
        assert_eq!(live[0].packets, reference[0].packets, "live counters");
        // The stream timeout (2 s here) passes with no packet: it expires
        // on both, the fast path's last packet counted.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        b.tick();
        assert_eq!(
            b.fr.pipeline().conntrack().len(),
            1,
            "alive 1.5 s after its last packet"
        );
        std::thread::sleep(std::time::Duration::from_millis(1000));
        b.tick();
        assert_eq!(b.fr.pipeline().conntrack().len(), 0, "expired");
        assert_eq!(b.reference.conntrack().len(), 0);
        // A new flow, offloaded; then a policy that drops established UDP
        // replies: the next reply is dropped, not forwarded by the program.
        b.send(Side::Inside, &out(0), "udp out");
        b.send(Side::Outside, &back(0), "udp back");
        b.age(3);
        b.send(Side::Inside, &out(1), "udp assured");
        for i in 0..6 {
            b.send(Side::Inside, &out(i), "udp");
            b.send(Side::Outside, &back(i), "udp reply");
        }
        assert!(b
            .fr
            .pipeline()
            .conntrack()
            .connections(b.now())
            .any(|c| c.offloaded));
        let mut p = strict();
        let mut no_replies = Rule::any(Action::Drop);
        no_replies.from = Some(Side::Outside);
        no_replies.proto = conntrack::policy::ProtoMatch::Proto(17);
        p.rules.insert(0, no_replies);
        let (off, fast) = b.fr.parts();
        fast.set_policy(p.clone());
        off.collect_gone(fast);
        b.reference.set_policy(p);
        assert_eq!(
            b.send(Side::Outside, &back(7), "reply after reload"),
            Action::Drop
        );
        assert_eq!(
            b.send(Side::Inside, &out(7), "out after reload"),
            Action::Accept
        );
        b.settle();
    });
}

const A6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An ICMP (`v6`: ICMPv6) echo with id `id` from end `from` (0: A, inside)
/// to the other: `reply` picks the reply type; `len` payload bytes (odd
/// lengths and lengths past 64 take the program's other checksum paths).
fn echo(v6: bool, from: usize, reply: bool, id: u16, seq: u16, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
        .collect();
    let p = match (v6, from) {
        (false, 0) => Pkt::echo4(A, B, id, seq, reply),
        (false, _) => Pkt::echo4(B, A, id, seq, reply),
        (true, 0) => Pkt::echo6(A6, B6, id, seq, reply),
        (true, _) => Pkt::echo6(B6, A6, id, seq, reply),
    };
    p.payload(&payload).build()
}

/// Any ICMP(v6) message from `from` with `rest` as bytes 4..8 (an echo's id
/// and sequence number) and its checksum right.
fn icmp_msg(v6: bool, from: usize, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    // Pkt::icmp* leaves bytes 4..8 zero: build it as an echo (whose bytes
    // 4..8 are id and sequence number) and patch type and code instead.
    let (id, seq) = (
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    );
    let mut p = match (v6, from) {
        (false, 0) => Pkt::echo4(A, B, id, seq, false),
        (false, _) => Pkt::echo4(B, A, id, seq, false),
        (true, 0) => Pkt::echo6(A6, B6, id, seq, false),
        (true, _) => Pkt::echo6(B6, A6, id, seq, false),
    }
    .payload(body)
    .build();
    let at = if v6 { 40 } else { 20 };
    p[at] = ty;
    p[at + 1] = code;
    fix_icmp_checksum(&mut p, v6);
    p
}

/// Recomputes the ICMP(v6) checksum of a built packet (no IPv4 options, no
/// IPv6 extension headers).
fn fix_icmp_checksum(p: &mut [u8], v6: bool) {
    let at = if v6 { 40 } else { 20 };
    p[at + 2] = 0;
    p[at + 3] = 0;
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    if v6 {
        add(&p[8..40]);
        let len = u32::try_from(p.len() - 40).unwrap();
        add(&len.to_be_bytes());
        add(&[0, 0, 0, 58]);
    }
    add(&p[at..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    p[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
}

/// Ping both ways through the program, IPv4 and IPv6: once replied, the echo
/// connection is offloaded and its echoes forwarded by the program, counted
/// and timed as the slow path would; what is not a plain echo of it (a bad
/// checksum, another code, a request from the other end with the same id)
/// gets the slow path's verdict.
#[test]
fn icmp_echo_goes_to_the_fast_path_and_comes_back_exactly() {
    isolated(|| {
        for v6 in [false, true] {
            let mut b = Bench::new(strict(), cfg());
            let id = 0x4d2;
            let mut seq = 0u16;
            for i in 0..20 {
                let len = [0, 1, 8, 56, 63, 64, 65, 200, 1001, 1400][i % 10];
                seq += 1;
                let req = echo(v6, 0, false, id, seq, len);
                let rep = echo(v6, 1, true, id, seq, len);
                assert_eq!(b.send(Side::Inside, &req, "request"), Action::Accept);
                assert_eq!(b.send(Side::Outside, &rep, "reply"), Action::Accept);
            }
            // The first exchange on the slow path, then the flow pending for
            // one packet at most: the rest through the program.
            assert!(
                b.forwarded_fast() >= 36,
                "v6 {v6}: fast path forwarded {}",
                b.forwarded_fast()
            );
            assert_eq!(b.fr.program().punts()[1..], [0; 4], "v6 {v6}");
            // Listing while offloaded: live counters; the program's last-seen
            // time moves the timeout as the slow path's packets would.
            let (off, p) = b.fr.parts();
            off.refresh(p);
            let now = b.now();
            let live: Vec<_> = b.fr.pipeline().conntrack().connections(now).collect();
            let reference: Vec<_> = b.reference.conntrack().connections(now).collect();
            assert_eq!(live.len(), 1);
            assert!(live[0].offloaded, "listed as offloaded");
            assert!(!live[0].assured && !reference[0].assured);
            assert_eq!(
                (live[0].packets, live[0].bytes),
                (reference[0].packets, reference[0].bytes),
                "live counters"
            );
            let before = live[0].expires_in;
            std::thread::sleep(std::time::Duration::from_millis(300));
            let fast = b.forwarded_fast();
            for _ in 0..2 {
                seq += 1;
                b.send(Side::Inside, &echo(v6, 0, false, id, seq, 56), "later");
                b.send(Side::Outside, &echo(v6, 1, true, id, seq, 56), "later");
            }
            assert_eq!(b.forwarded_fast(), fast + 4, "v6 {v6}: all four fast");
            let (off, p) = b.fr.parts();
            off.refresh(p);
            let now = b.now();
            let live: Vec<_> = b.fr.pipeline().conntrack().connections(now).collect();
            let reference: Vec<_> = b.reference.conntrack().connections(now).collect();
            assert!(
                live[0].expires_in + 100_000_000 > before,
                "v6 {v6}: the timeout moved with the fast packets: {} then {}",
                before,
                live[0].expires_in
            );
            assert!(
                live[0].expires_in.abs_diff(reference[0].expires_in) < 50_000_000,
                "v6 {v6}: timeouts {} vs {}",
                live[0].expires_in,
                reference[0].expires_in
            );
            assert_eq!(live[0].packets, reference[0].packets);
            // A bad checksum: dropped on both paths; the program hands it
            // over (and the flow with it).
            seq += 1;
            let mut bad = echo(v6, 0, false, id, seq, 30);
            let l = bad.len();
            bad[l - 1] ^= 1;
            let (fast, not_plain) = (b.forwarded_fast(), b.fr.program().punts()[1]);
            assert_eq!(b.send(Side::Inside, &bad, "bad checksum"), Action::Drop);
            assert_eq!(
                b.forwarded_fast(),
                fast,
                "v6 {v6}: bad checksum not forwarded"
            );
            assert_eq!(b.fr.program().punts()[1], not_plain + 1, "v6 {v6}: punted");
            // Back on the fast path after it.
            for _ in 0..4 {
                seq += 1;
                b.send(Side::Inside, &echo(v6, 0, false, id, seq, 20), "again");
                b.send(Side::Outside, &echo(v6, 1, true, id, seq, 20), "again");
            }
            assert!(
                b.forwarded_fast() >= fast + 5,
                "v6 {v6}: back on the fast path"
            );
            // An echo with code 1 (another connection, the tuple has the
            // code): the slow path's, both ways.
            let fast = b.forwarded_fast();
            let (rq, rp) = if v6 { (128, 129) } else { (8, 0) };
            let [i0, i1] = id.to_be_bytes();
            let odd = icmp_msg(v6, 0, rq, 1, [i0, i1, 0, 1], b"odd code");
            assert_eq!(b.send(Side::Inside, &odd, "code 1"), Action::Accept);
            let odd = icmp_msg(v6, 1, rp, 1, [i0, i1, 0, 1], b"odd code");
            assert_eq!(b.send(Side::Outside, &odd, "code 1 reply"), Action::Accept);
            // A request from the other end with the same id: not the
            // offloaded flow's (another type); new from the outside, dropped.
            let other = echo(v6, 1, false, id, 1, 10);
            assert_eq!(
                b.send(Side::Outside, &other, "reverse request"),
                Action::Drop
            );
            // An unsolicited reply from the inside with that id, also not
            // the flow's.
            let other = echo(v6, 0, true, id, 1, 10);
            b.send(Side::Inside, &other, "reverse reply");
            assert_eq!(
                b.forwarded_fast(),
                fast,
                "v6 {v6}: none of those was forwarded"
            );
            // The offloaded flow still is.
            seq += 1;
            b.send(Side::Inside, &echo(v6, 0, false, id, seq, 20), "still");
            assert_eq!(b.forwarded_fast(), fast + 1, "v6 {v6}: still offloaded");
            b.settle();
            b.report(&format!("v6 {v6}: "));
        }
    });
}

/// ICMP errors are the slow path's, even when they quote an offloaded flow
/// (the core counts them as related to it; the flow stays in the program):
/// a port unreachable quoting an offloaded UDP flow, a time exceeded quoting
/// an offloaded echo, an ICMPv6 unreachable quoting an offloaded echo.
#[test]
fn icmp_errors_stay_on_the_slow_path() {
    isolated(|| {
        let mut b = Bench::new(strict(), cfg());
        let out = udp_out;
        b.open_udp(4);
        for i in 1..4 {
            b.send(Side::Inside, &echo(false, 0, false, 77, i, 20), "ping");
            b.send(Side::Outside, &echo(false, 1, true, 77, i, 20), "pong");
        }
        let fast = b.forwarded_fast();
        assert!(fast >= 8, "both offloaded: {fast}");
        let punts = b.fr.program().punts();
        // B's port unreachable for A's datagram, quoting its start.
        let unreach = Pkt::icmp4(B, A, 3, 3, &out(5)[..28]).build();
        assert_eq!(
            b.send(Side::Outside, &unreach, "port unreachable"),
            Action::Accept
        );
        // A router's time exceeded for A's echo request (from B's address:
        // the quoted packet's destination is fine for the core's checks).
        let req = echo(false, 0, false, 77, 9, 20);
        let ttl = Pkt::icmp4(B, A, 11, 0, &req[..28]).build();
        assert_eq!(b.send(Side::Outside, &ttl, "time exceeded"), Action::Accept);
        assert_eq!(
            b.forwarded_fast(),
            fast,
            "errors not forwarded by the program"
        );
        assert_eq!(b.fr.program().punts(), punts, "not even looked up");
        // Both flows are still the program's.
        b.send(Side::Inside, &out(6), "udp after");
        b.send(
            Side::Inside,
            &echo(false, 0, false, 77, 10, 20),
            "ping after",
        );
        assert_eq!(b.forwarded_fast(), fast + 2, "still offloaded");
        b.settle();
        // IPv6: an echo offloaded, then a destination unreachable for it.
        let mut b = Bench::new(strict(), cfg());
        for i in 1..4 {
            b.send(Side::Inside, &echo(true, 0, false, 78, i, 20), "ping6");
            b.send(Side::Outside, &echo(true, 1, true, 78, i, 20), "pong6");
        }
        let fast = b.forwarded_fast();
        assert!(fast >= 3, "offloaded: {fast}");
        let req = echo(true, 0, false, 78, 9, 20);
        let unreach = Pkt::icmp6(B6, A6, 1, 4, &req).build();
        let verdict = b.send(Side::Outside, &unreach, "unreachable");
        assert_eq!(
            b.forwarded_fast(),
            fast,
            "v6 error not forwarded: {verdict:?}"
        );
        b.send(
            Side::Inside,
            &echo(true, 0, false, 78, 10, 20),
            "ping6 after",
        );
        assert_eq!(b.forwarded_fast(), fast + 1, "still offloaded");
        b.settle();
    });
}

/// The ICMP timeout of an offloaded echo runs from the program's last
/// packet: alive shortly before it ends, gone after, on both paths.
#[test]
fn icmp_offload_timeout() {
    isolated(|| {
        for v6 in [false, true] {
            let mut c = cfg();
            c.timeouts.icmp = 2;
            c.timeouts.icmpv6 = 2;
            let mut b = Bench::new(strict(), c);
            for i in 1..=10 {
                b.send(Side::Inside, &echo(v6, 0, false, 5, i, 32), "ping");
                b.send(Side::Outside, &echo(v6, 1, true, 5, i, 32), "pong");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(b.forwarded_fast() >= 16, "v6 {v6}: {}", b.forwarded_fast());
            // The slow path's last packet was a second ago: its deadline
            // passes while the program's last packet is 1.5 s old.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            b.tick();
            assert_eq!(b.reference.conntrack().len(), 1, "v6 {v6}: reference alive");
            assert_eq!(
                b.fr.pipeline().conntrack().len(),
                1,
                "v6 {v6}: alive 1.5 s after its last packet"
            );
            std::thread::sleep(std::time::Duration::from_millis(1000));
            b.tick();
            assert_eq!(b.fr.pipeline().conntrack().len(), 0, "v6 {v6}: expired");
            assert_eq!(b.reference.conntrack().len(), 0);
        }
    });
}

/// Every capture of the kernel differential set, packet by packet: the
/// program forwards a packet only where the reference accepts it, and the
/// slow path gives the rest the reference's verdicts (the core's clock is
/// the wall clock here, so flows live as the replay runs: timeouts never
/// fire and UDP never lives two seconds; TCP connections are offloaded).
#[test]
fn corpus_captures_get_the_slow_paths_verdicts() {
    isolated(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let list = std::fs::read_to_string(root.join("tests/kdiff/captures.tsv")).unwrap();
        let (mut total, mut fast, mut captures) = (0u64, 0u64, 0);
        for line in list
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let mut f = line.split('\t');
            let (rel, inside) = (f.next().unwrap(), f.next().unwrap());
            let prefixes: Vec<(std::net::IpAddr, u8)> = inside
                .split(',')
                .filter_map(|p| {
                    let (a, l) = p.split_once('/')?;
                    Some((a.parse().ok()?, l.parse().ok()?))
                })
                .collect();
            let inside_of = |src: std::net::IpAddr| {
                prefixes.iter().any(|&(net, len)| match (net, src) {
                    (std::net::IpAddr::V4(n), std::net::IpAddr::V4(s)) => {
                        let m = if len == 0 {
                            0
                        } else {
                            u32::MAX << (32 - u32::from(len))
                        };
                        u32::from(n) & m == u32::from(s) & m
                    }
                    (std::net::IpAddr::V6(n), std::net::IpAddr::V6(s)) => {
                        let m = if len == 0 {
                            0
                        } else {
                            u128::MAX << (128 - u32::from(len))
                        };
                        u128::from(n) & m == u128::from(s) & m
                    }
                    _ => false,
                })
            };
            let bytes = std::fs::read(root.join("tests/data").join(rel)).unwrap();
            let mut b = Bench::new(strict(), cfg());
            for (i, rec) in capture::Capture::new(&bytes).unwrap().flatten().enumerate() {
                let Ok(e) = capture::ether::parse(rec.data) else {
                    continue;
                };
                if e.ethertype != 0x0800 && e.ethertype != 0x86dd {
                    continue;
                }
                let l3 = &rec.data[e.l3_offset..];
                let src = match l3.first().map(|v| v >> 4) {
                    Some(4) if l3.len() >= 20 => {
                        std::net::IpAddr::from(<[u8; 4]>::try_from(&l3[12..16]).unwrap())
                    }
                    Some(6) if l3.len() >= 40 => {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(&l3[8..24]).unwrap())
                    }
                    _ => continue,
                };
                let side = if inside_of(src) {
                    Side::Inside
                } else {
                    Side::Outside
                };
                b.send(side, l3, &format!("{rel} packet {i}"));
                total += 1;
            }
            b.settle();
            fast += b.forwarded_fast();
            captures += 1;
        }
        eprintln!("{captures} captures, {total} packets, {fast} forwarded by the program");
        assert!(
            captures > 40 && total > 5_000,
            "{captures} captures, {total} packets"
        );
        assert!(fast > 500, "the program took part: {fast}");
    });
}

/// What the program costs per packet (BPF_PROG_TEST_RUN's own timing, no
/// forwarding): an established UDP flow's packet through the fast path, the
/// same packet of an unknown flow (to the socket), and a TCP ACK segment.
/// Printed, not asserted (timing belongs to benchmarks): run by hand with
/// `cargo test --release -p dataplane --test offload -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn fast_path_cost_per_packet() {
    isolated(|| {
        let mut b = Bench::new(strict(), cfg());
        let out = |n: u8| Pkt::udp4(A, 5000, B, 53).payload(&[n; 18]).build();
        let back = |n: u8| Pkt::udp4(B, 53, A, 5000).payload(&[n; 18]).build();
        b.send(Side::Inside, &out(0), "udp out");
        b.send(Side::Outside, &back(0), "udp back");
        b.age(3);
        for i in 0..3 {
            b.send(Side::Inside, &out(i), "udp");
        }
        b.fr.ingress(Side::Inside).unwrap();
        let frame = ethernet(&out(1), &[]);
        let (rv, fast) =
            b.fr.program_mut()
                .test_run_timed(&frame, 1_000_000)
                .unwrap();
        assert_eq!(rv, action::REDIRECT);
        let other = ethernet(&Pkt::udp4(A, 5001, B, 53).payload(&[0; 18]).build(), &[]);
        let (_, miss) =
            b.fr.program_mut()
                .test_run_timed(&other, 1_000_000)
                .unwrap();
        let mut t = Tcp::open(&mut b, 40_500);
        for i in 0..6 {
            let s = t.data(i % 2, 0);
            b.send(side(i % 2), &s, "ack");
        }
        b.fr.ingress(Side::Inside).unwrap();
        let ack = ethernet(&t.seg(0, ACK, t.nxt[0], t.nxt[1], 0), &[]);
        let (rv, tcp) = b.fr.program_mut().test_run_timed(&ack, 1_000_000).unwrap();
        b.fr.program_mut().set_offload(false, true).unwrap();
        let (_, off) =
            b.fr.program_mut()
                .test_run_timed(&frame, 1_000_000)
                .unwrap();
        b.fr.program_mut().set_offload(true, false).unwrap();
        let (_, nock) =
            b.fr.program_mut()
                .test_run_timed(&frame, 1_000_000)
                .unwrap();
        eprintln!(
            "XDP program per packet: UDP fast path {fast:?} ({nock:?} without checksum checks), unknown flow {miss:?}, TCP ACK {tcp:?} (action {rv}); offload off {off:?}"
        );
    });
}

/// What the program costs per packet when its tables are larger than the
/// caches: N established UDP flows offloaded, then each flow's packet run
/// once in a pseudo-random order (BPF_PROG_TEST_RUN's own timing of each
/// run), five passes, for N = 2 000 and 100 000. Printed, not asserted: run by hand with
/// `cargo test --release -p dataplane --test offload -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn fast_path_cost_over_many_flows() {
    isolated(|| {
        for n in [1_000u16, 50_000] {
            let mut c = cfg();
            c.max_entries = 262_144;
            let mut b = Bench::new(strict(), c);
            // Flow i: client port 1024 + i (and a second server port past
            // 50 000 flows).
            let pkt = |i: u32, back: bool| {
                let (cp, sp) = (1024 + (i % 50_000) as u16, 53 + (i / 50_000) as u16);
                if back {
                    Pkt::udp4(B, sp, A, cp).payload(&[0; 18]).build()
                } else {
                    Pkt::udp4(A, cp, B, sp).payload(&[0; 18]).build()
                }
            };
            let flows = u32::from(n) * 2;
            for i in 0..flows {
                b.send(Side::Inside, &pkt(i, false), "out");
                b.send(Side::Outside, &pkt(i, true), "back");
            }
            b.age(3);
            for i in 0..flows {
                b.send(Side::Inside, &pkt(i, false), "assured");
                b.send(Side::Inside, &pkt(i, false), "offloaded");
            }
            let frames: Vec<_> = (0..flows).map(|i| ethernet(&pkt(i, false), &[])).collect();
            let c = &b.fr.offloader().counters;
            let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "{flows} flows: {} installed, {} activated, {} install failures, {} entries, {} removed; punts {:?}",
                l(&c.installed),
                l(&c.activated),
                l(&c.install_failed),
                l(&c.entries),
                l(&c.removed),
                b.fr.program().punts()
            );
            b.fr.ingress(Side::Inside).unwrap();
            // Visited in a pseudo-random order (xorshift), as packets of
            // many flows arrive: neither the buckets nor the slots in
            // sequence.
            let mut x = 0x9e37_79b9_u32;
            let order: Vec<usize> = (0..flows)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % flows) as usize
                })
                .collect();
            let (mut total, mut fast) = (std::time::Duration::ZERO, 0u32);
            let mut passes = Vec::new();
            for _ in 0..5 {
                let mut pass = std::time::Duration::ZERO;
                for &i in &order {
                    let (rv, t) = b.fr.program_mut().test_run_timed(&frames[i], 1).unwrap();
                    pass += t;
                    fast += u32::from(rv == action::REDIRECT);
                }
                total += pass;
                passes.push(pass / flows);
            }
            eprintln!("{flows} flows, each pass: {passes:?}");
            let runs = 5 * flows;
            // The same number of runs of one flow's packet: the run's own
            // overhead and the program with its data in the caches.
            let mut hot = std::time::Duration::ZERO;
            for _ in 0..runs {
                hot += b.fr.program_mut().test_run_timed(&frames[0], 1).unwrap().1;
            }
            eprintln!(
                "{flows} flows in random order: {:?} per packet ({fast} of {runs} runs forwarded by the program); one flow again and again: {:?}",
                total / runs,
                hot / runs
            );
            b.fr.finish();
        }
    });
}
