use super::entry::Stored;
use super::*;
use crate::packet::{Frag, Icmp, Packet, L4};
use crate::tuple::{ipproto, Addr, Family, Tuple};
use crate::{CtState, DropReason};
use proptest::prelude::*;

const S: u64 = SEC;

fn udp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16) -> Packet<'static> {
    Packet {
        tuple: Tuple {
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            src_port: sp,
            dst_port: dp,
            proto: ipproto::UDP,
            family: Family::V4,
        },
        ip_len: 100,
        frag: None,
        ip_options: false,
        l4: L4::Udp { payload: b"" },
    }
}

fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, ty: u8) -> Packet<'static> {
    Packet {
        tuple: Tuple {
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            src_port: id,
            dst_port: u16::from(ty) << 8,
            proto: ipproto::ICMP,
            family: Family::V4,
        },
        ip_len: 84,
        frag: None,
        ip_options: false,
        l4: L4::Icmp(Icmp::Query),
    }
}

fn icmp_err(src: [u8; 4], dst: [u8; 4], inner: Tuple) -> Packet<'static> {
    Packet {
        tuple: Tuple {
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            src_port: 0,
            dst_port: 3 << 8 | 3,
            proto: ipproto::ICMP,
            family: Family::V4,
        },
        ip_len: 56,
        frag: None,
        ip_options: false,
        l4: L4::Icmp(Icmp::Error { inner }),
    }
}

fn table(max: u32) -> Conntrack {
    Conntrack::new(Config {
        max_entries: max,
        hash_secret: HashSecret(7, 11),
        ..Config::default()
    })
}

/// Tracks and confirms (policy accept), like the pipeline does.
fn accept(ct: &mut Conntrack, p: &Packet<'_>, now: u64) -> Track {
    ct.expire(now);
    let t = ct.track(p, now);
    if !t.must_drop {
        ct.confirm(&t, None, now);
    }
    t
}

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [192, 0, 2, 1];

#[test]
fn udp_new_then_established_both_ways() {
    let mut ct = table(16);
    let out = udp(A, 1000, B, 53);
    let back = udp(B, 53, A, 1000);
    let t = accept(&mut ct, &out, 0);
    assert_eq!((t.state, t.reply), (CtState::New, false));
    // Original direction again before any reply: still new.
    let t = accept(&mut ct, &out, S);
    assert_eq!((t.state, t.reply), (CtState::New, false));
    let t = accept(&mut ct, &back, S);
    assert_eq!((t.state, t.reply), (CtState::Established, true));
    let t = accept(&mut ct, &out, 2 * S);
    assert_eq!((t.state, t.reply), (CtState::Established, false));
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.stats().new, 1);
    let c: Vec<_> = ct.connections(2 * S).collect();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].packets, [3, 1]);
    assert!(c[0].seen_reply);
}

#[test]
fn udp_unreplied_times_out_after_30s_assured_stream_after_2s() {
    let mut ct = table(16);
    let out = udp(A, 1000, B, 53);
    accept(&mut ct, &out, 0);
    // 29.9 s later the entry is still there: original direction stays new.
    assert_eq!(accept(&mut ct, &out, 29 * S).state, CtState::New);
    // Refreshed at 29 s: gone at 59.5 s, a fresh entry is created.
    let t = accept(&mut ct, &out, 59 * S + S / 2);
    assert_eq!(t.state, CtState::New);
    assert_eq!(ct.stats().new, 2);

    // Replied within 2 s of creation: not yet assured, unreplied timeout.
    let mut ct = table(16);
    accept(&mut ct, &out, 0);
    accept(&mut ct, &udp(B, 53, A, 1000), S);
    assert!(!ct.connections(S).next().unwrap().assured);
    assert_eq!(ct.connections(S).next().unwrap().expires_in, 30 * S);
    // After 2 s of life, traffic on a replied flow makes it an assured stream.
    accept(&mut ct, &out, 3 * S);
    let c = ct.connections(3 * S).next().unwrap();
    assert!(c.assured);
    assert_eq!(c.expires_in, 120 * S);
}

#[test]
fn expiry_reaps_entries_via_the_wheel() {
    let mut ct = table(64);
    for p in 0..10u16 {
        accept(&mut ct, &udp(A, 2000 + p, B, 53), 0);
    }
    assert_eq!(ct.len(), 10);
    assert_eq!(ct.expire(29 * S), 0);
    assert_eq!(ct.len(), 10);
    // The wheel reaps one tick after the deadline at most.
    let n = ct.expire(31 * S);
    assert_eq!(n, 10);
    assert!(ct.is_empty());
    // The slots are reusable.
    for p in 0..64u16 {
        let t = accept(&mut ct, &udp(A, 3000 + p, B, 53), 32 * S);
        assert_eq!(t.reason, None);
    }
    assert_eq!(ct.len(), 64);
}

#[test]
fn big_time_jump_reaps_everything() {
    let mut ct = table(64);
    for p in 0..20u16 {
        accept(&mut ct, &udp(A, 2000 + p, B, 53), 5 * S);
    }
    // A day later (many wheel turns).
    assert_eq!(ct.expire(86_400 * S), 20);
    assert!(ct.is_empty());
}

#[test]
fn per_protocol_timeouts() {
    // ICMP entries live 30 s, generic ones 600 s.
    let mut ct = table(16);
    accept(&mut ct, &icmp_echo(A, B, 9, 8), 0);
    let mut g = udp(A, 0, B, 0);
    g.tuple.proto = 50;
    g.l4 = L4::Other { payload: b"" };
    let t = accept(&mut ct, &g, 0);
    assert_eq!(t.state, CtState::New);
    assert_eq!(ct.expire(31 * S), 1);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.expire(601 * S), 1);
    assert!(ct.is_empty());
}

#[test]
fn dropped_first_packet_leaves_no_state() {
    let mut ct = table(16);
    let out = udp(A, 1000, B, 53);
    let t = ct.track(&out, 0);
    assert_eq!(t.state, CtState::New);
    ct.abort(&t, 0);
    assert!(ct.is_empty());
    let t = ct.track(&out, 0);
    assert_eq!(t.state, CtState::New);
    assert_eq!(ct.stats().new, 0);
}

#[test]
fn icmp_echo_and_related_errors() {
    let mut ct = table(16);
    let req = icmp_echo(A, B, 77, 8);
    let rep = icmp_echo(B, A, 77, 0);
    assert_eq!(accept(&mut ct, &req, 0).state, CtState::New);
    let t = accept(&mut ct, &rep, 0);
    assert_eq!((t.state, t.reply), (CtState::Established, true));
    // A reply with another id matches nothing and cannot open an entry.
    let t = accept(&mut ct, &icmp_echo(B, A, 78, 0), 0);
    assert_eq!(
        (t.state, t.reason),
        (CtState::Invalid, Some(DropReason::IcmpBadType))
    );

    // UDP flow A->B, then B's port unreachable quoting A->B: related, reply.
    let out = udp(A, 41614, B, 5555);
    accept(&mut ct, &out, 0);
    let t = accept(&mut ct, &icmp_err(B, A, out.tuple), 0);
    assert_eq!((t.state, t.reply), (CtState::Related, true));
    // From a router in the middle: still related (OVS "ICMP related 2").
    let t = accept(&mut ct, &icmp_err([172, 16, 0, 3], A, out.tuple), 0);
    assert_eq!((t.state, t.reply), (CtState::Related, true));
    // An error quoting B->A (reply direction) travels in the original direction.
    let t = accept(&mut ct, &icmp_err(A, B, udp(B, 5555, A, 41614).tuple), 0);
    assert_eq!((t.state, t.reply), (CtState::Related, false));
    // Orphan: quotes a flow that does not exist.
    let t = accept(&mut ct, &icmp_err(B, A, udp(A, 1, B, 2).tuple), 0);
    assert_eq!(
        (t.state, t.reason),
        (CtState::Invalid, Some(DropReason::IcmpErrorNoFlow))
    );
    // Outer destination is not the quoted source.
    let t = accept(&mut ct, &icmp_err(B, [10, 9, 9, 9], out.tuple), 0);
    assert_eq!(t.state, CtState::Invalid);
    // Errors create nothing.
    assert_eq!(ct.len(), 2);
}

#[test]
fn table_full_early_drops_unassured_else_counts_drop() {
    let mut ct = table(8);
    for p in 0..8u16 {
        accept(&mut ct, &udp(A, 1000 + p, B, 53), 0);
    }
    assert_eq!(ct.len(), 8);
    // Full of unassured entries: a new flow evicts one.
    let t = accept(&mut ct, &udp(A, 5000, B, 53), 0);
    assert_eq!((t.state, t.reason), (CtState::New, None));
    assert_eq!(ct.stats().early_drop, 1);
    assert_eq!(ct.len(), 8);

    // Make every entry assured (replied, older than 2 s, refreshed).
    let live: Vec<Tuple> = ct.connections(0).map(|c| c.orig).collect();
    for t in &live {
        let mut back = udp(A, 0, B, 0);
        back.tuple = t.invert();
        accept(&mut ct, &back, S);
        let mut fwd = back;
        fwd.tuple = *t;
        accept(&mut ct, &fwd, 3 * S);
    }
    assert!(ct.connections(3 * S).all(|c| c.assured));
    let t = accept(&mut ct, &udp(A, 6000, B, 53), 3 * S);
    assert!(t.must_drop);
    assert_eq!(t.reason, Some(DropReason::TableFull));
    assert_eq!(ct.stats().drop, 1);
    assert_eq!(ct.len(), 8);
    // Assured entries survive.
    assert!(ct.connections(3 * S).all(|c| c.assured));
}

#[test]
fn fragments_follow_the_first() {
    let mut ct = table(16);
    let mut first = udp(A, 1000, B, 53);
    first.frag = Some(Frag {
        id: 42,
        offset: 0,
        more: true,
    });
    let mut rest = udp(A, 0, B, 0);
    rest.l4 = L4::Fragment;
    rest.frag = Some(Frag {
        id: 42,
        offset: 1480,
        more: false,
    });
    // Last fragment first: no verdict to follow.
    let t = accept(&mut ct, &rest, 0);
    assert_eq!(
        (t.state, t.reason),
        (CtState::Invalid, Some(DropReason::FragmentNoFirst))
    );
    assert_eq!(accept(&mut ct, &first, 0).state, CtState::New);
    let t = accept(&mut ct, &rest, 0);
    assert_eq!((t.state, t.must_drop), (CtState::New, false));
    assert_eq!(ct.connections(0).next().unwrap().packets, [2, 0]);
    // The last fragment closed the slot.
    assert_eq!(accept(&mut ct, &rest, 0).state, CtState::Invalid);

    // A dropped first fragment drops the rest.
    let mut first2 = first;
    first2.frag = Some(Frag {
        id: 43,
        offset: 0,
        more: true,
    });
    let t = ct.track(&first2, 0);
    ct.abort(&t, 0);
    let mut rest2 = rest;
    rest2.frag = Some(Frag {
        id: 43,
        offset: 8,
        more: false,
    });
    let t = ct.track(&rest2, 0);
    assert!(t.must_drop);
}

#[test]
fn flush_empties() {
    let mut ct = table(32);
    for p in 0..20u16 {
        accept(&mut ct, &udp(A, 1000 + p, B, 53), 0);
    }
    ct.flush();
    assert!(ct.is_empty());
    assert_eq!(ct.connections(0).count(), 0);
    for p in 0..32u16 {
        assert_eq!(accept(&mut ct, &udp(A, 1000 + p, B, 53), 0).reason, None);
    }
}

#[test]
fn memory_per_entry_within_budget() {
    let ct = table(1 << 16);
    let b = ct.bytes_per_entry();
    assert!(b <= 192, "{b} bytes per entry");
}

proptest! {
    /// The index agrees with a model (a HashMap) through random inserts, lookups
    /// and expiries, including backward-shift deletions in long probe runs.
    #[test]
    fn index_matches_model(ops in proptest::collection::vec((0u16..64, 0u8..3, 0u64..200), 1..400)) {
        use std::collections::HashMap;
        let mut ct = table(32);
        let mut model: HashMap<u16, u64> = HashMap::new(); // port -> deadline
        let mut now = 0u64;
        for (port, op, dt) in ops {
            now += dt * S / 10;
            ct.expire(now);
            model.retain(|_, d| *d > now);
            let p = udp(A, port, B, 53);
            match op {
                0 | 1 => {
                    let t = accept(&mut ct, &p, now);
                    if t.must_drop {
                        prop_assert_eq!(ct.len(), 32);
                    } else if let Some(d) = model.get_mut(&port) {
                        prop_assert_eq!(t.state, CtState::New);
                        *d = now + 30 * S;
                    } else {
                        prop_assert_eq!(t.state, CtState::New);
                        if ct.len() <= model.len() {
                            // Early drop evicted someone: find whom.
                            let live: std::collections::HashSet<u16> =
                                ct.connections(now).map(|c| c.orig.src_port).collect();
                            model.retain(|k, _| live.contains(k));
                        }
                        model.insert(port, now + 30 * S);
                    }
                }
                _ => {
                    let live: HashMap<u16, u64> = ct
                        .connections(now)
                        .filter(|c| c.expires_in > 0)
                        .map(|c| (c.orig.src_port, now + c.expires_in))
                        .collect();
                    prop_assert_eq!(&live, &model);
                }
            }
        }
    }
}

/// The memory budget: 192 bytes per connection with the index (16 bytes per
/// connection at the highest load), so an entry and what lies beside it may
/// take 176 at most.
#[test]
fn entry_size() {
    // Beside it: its helper links, its wheel links and index tag, the upper
    // bits of IPv6 addresses.
    let beside = core::mem::size_of::<Ext>()
        + core::mem::size_of::<Link>()
        + core::mem::size_of::<u32>()
        + core::mem::size_of::<V6Hi>();
    assert!(
        core::mem::size_of::<Entry>() + beside <= 176,
        "{} + {beside}",
        core::mem::size_of::<Entry>()
    );
}

mod expectations {
    use super::*;
    use crate::expect::{ExpectError, ExpectSpec, Mask};
    use crate::HelperKind;

    /// A TFTP-like exchange: the client asks the server on 69, the server answers
    /// from a new port.
    fn spec(client_port: u16) -> ExpectSpec {
        ExpectSpec {
            tuple: udp(B, 0, A, client_port).tuple,
            mask: Mask {
                src_addr: false,
                src_port: true,
                src_prefix: 0,
            },
            helper: HelperKind::Tftp,
            child_helper: None,
            permanent: false,
            timeout: None,
        }
    }

    fn master(ct: &mut Conntrack, port: u16) -> u32 {
        let t = ct.track(&udp(A, port, B, 69), 0);
        ct.confirm(&t, Some(HelperKind::Tftp), 0);
        t.conn
    }

    #[test]
    fn expected_flow_is_related_then_established() {
        let mut ct = table(64);
        let m = master(&mut ct, 50618);
        let id = ct.expect(m, &spec(50618), 0).unwrap();
        assert_eq!(ct.expectations(0).count(), 1);
        assert_eq!(ct.expectations(0).next().unwrap().id, id);
        // The server answers from port 3445: related, and the master's helper.
        let t = accept(&mut ct, &udp(B, 3445, A, 50618), S);
        assert_eq!(
            (t.state, t.reply, t.helper),
            (CtState::Related, false, Some(HelperKind::Tftp))
        );
        assert_eq!(ct.expectations(S).count(), 0, "used up");
        let t = accept(&mut ct, &udp(A, 50618, B, 3445), S);
        assert_eq!((t.state, t.reply), (CtState::Established, true));
        // Wrong source address: not the expected flow.
        let m2 = master(&mut ct, 40000);
        ct.expect(m2, &spec(40000), S).unwrap();
        let t = accept(&mut ct, &udp([198, 51, 100, 7], 3446, A, 40000), S);
        assert_eq!(t.state, CtState::New);
        assert_eq!(ct.expect_stats().expect_new, 1);
    }

    #[test]
    fn limits_clash_expiry_and_master_death() {
        let mut ct = table(64);
        let m = master(&mut ct, 1000);
        // TFTP allows one expectation per master: a second evicts the first.
        ct.expect(m, &spec(1000), 0).unwrap();
        ct.expect(m, &spec(1001), 0).unwrap();
        assert_eq!(ct.expectations(0).count(), 1);
        assert_eq!(ct.expect_stats().expect_evicted, 1);
        assert_eq!(accept(&mut ct, &udp(B, 9, A, 1000), 0).state, CtState::New);
        // The same tuple from another master clashes; from the same, refreshes.
        let m2 = master(&mut ct, 2000);
        assert_eq!(ct.expect(m2, &spec(1001), 0), Err(ExpectError::Clash));
        assert!(ct.expect(m, &spec(1001), 0).is_ok());
        // Expired expectations never match (TFTP: 300 s).
        ct.expect(m2, &spec(2000), 0).unwrap();
        assert_eq!(
            accept(&mut ct, &udp(B, 9, A, 2000), 301 * S).state,
            CtState::New
        );
        // The master going away takes its expectations along.
        let mut ct = table(64);
        let m = master(&mut ct, 1000);
        ct.expect(m, &spec(1000), 0).unwrap();
        ct.flush();
        assert_eq!(ct.expectations(0).count(), 0);
        let m = master(&mut ct, 1000);
        ct.expect(m, &spec(1000), 0).unwrap();
        // The master times out (30 s unreplied) and is reaped with its expectation.
        for s in 1..=40 {
            ct.expire(s * S);
        }
        assert!(ct.is_empty());
        assert_eq!(ct.expectations(40 * S).count(), 0);
        assert!(ct.expect(m, &spec(1000), 40 * S).is_err());
    }

    #[test]
    fn operator_add_list_delete() {
        let mut ct = table(64);
        master(&mut ct, 1000);
        let master_tuple = udp(B, 69, A, 1000).tuple; // reply direction works too
        let id = ct.expect_for(&master_tuple, &spec(1000), 0).unwrap();
        let e = ct.expectations(0).next().unwrap();
        assert_eq!(e.master, udp(A, 1000, B, 69).tuple);
        assert_eq!(e.helper, Some(HelperKind::Tftp));
        assert!(ct.unexpect(id));
        assert!(!ct.unexpect(id));
        assert_eq!(ct.expectations(0).count(), 0);
        assert_eq!(
            ct.expect_for(&udp(A, 1, B, 2).tuple, &spec(1), 0),
            Err(ExpectError::NoMaster)
        );
    }
}

mod helpers_glue {
    use super::*;
    use crate::HelperKind;

    fn udp_payload(
        src: [u8; 4],
        sp: u16,
        dst: [u8; 4],
        dp: u16,
        payload: &'static [u8],
    ) -> Packet<'static> {
        let mut p = udp(src, sp, dst, dp);
        p.l4 = L4::Udp { payload };
        p
    }

    #[test]
    fn tftp_request_expects_the_answer_from_any_port() {
        let mut ct = table(64);
        let rrq = udp_payload(A, 50618, B, 69, b"\x00\x01rfc1350.txt\x00octet\x00");
        let t = ct.track(&rrq, 0);
        ct.confirm(&t, Some(HelperKind::Tftp), 0);
        ct.help(&t, &rrq, 0);
        assert_eq!(ct.helper_stats().expectations[HelperKind::Tftp as usize], 1);
        let data = udp_payload(B, 3445, A, 50618, b"\x00\x03\x00\x01hello");
        let t = accept(&mut ct, &data, S);
        assert_eq!(
            (t.state, t.helper),
            (CtState::Related, Some(HelperKind::Tftp))
        );
        // Malformed request: counted, no expectation.
        let bad = udp_payload(A, 50619, B, 69, b"\x00\x01no-terminator");
        let t = ct.track(&bad, 2 * S);
        ct.confirm(&t, Some(HelperKind::Tftp), 2 * S);
        ct.help(&t, &bad, 2 * S);
        assert_eq!(ct.helper_stats().parse_errors[HelperKind::Tftp as usize], 1);
        assert_eq!(ct.expectations(2 * S).count(), 0);
        // Without the helper, the same answer is just new.
        let mut ct = table(64);
        accept(&mut ct, &rrq, 0);
        assert_eq!(accept(&mut ct, &data, S).state, CtState::New);
    }
}

mod broadcast_helpers {
    use super::*;
    use crate::HelperKind;

    #[test]
    fn netbios_query_to_broadcast_expects_answers_from_the_subnet() {
        let mut ct = table(64);
        let q = udp([192, 168, 239, 10], 137, [192, 168, 239, 255], 137);
        let t = ct.track(&q, 0);
        ct.confirm(&t, Some(HelperKind::NetbiosNs), 0);
        ct.help(&t, &q, 0);
        // Two hosts of the subnet answer: both related (permanent expectation).
        for host in [2u8, 77] {
            let a = udp([192, 168, 239, host], 137, [192, 168, 239, 10], 137);
            let t = accept(&mut ct, &a, S);
            assert_eq!(t.state, CtState::Related, "answer from .{host}");
        }
        // A host outside the subnet: new.
        let t = accept(
            &mut ct,
            &udp([192, 168, 1, 2], 137, [192, 168, 239, 10], 137),
            S,
        );
        assert_eq!(t.state, CtState::New);
        // After the 3 s NetBIOS-NS timeout: nothing expected any more.
        let t = accept(
            &mut ct,
            &udp([192, 168, 239, 9], 137, [192, 168, 239, 10], 137),
            4 * S,
        );
        assert_eq!(t.state, CtState::New);
    }
}

mod sequences {
    use super::*;
    use crate::packet::{tcp_flags, TcpSeg};

    fn arb_packet() -> impl Strategy<Value = (Packet<'static>, bool, u64)> {
        let addr = prop_oneof![Just(A), Just(B), Just([10, 0, 0, 2])];
        (
            addr.clone(),
            addr,
            0u16..4,
            0u16..4,
            0u8..6,
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            0u64..40,
        )
            .prop_map(|(s, d, sp, dp, kind, seq, ack, flags, win, accept, dt)| {
                let mut p = udp(s, 1000 + sp, d, 1000 + dp);
                match kind {
                    0 => {}
                    1 | 2 => {
                        p.tuple.proto = ipproto::TCP;
                        p.l4 = L4::Tcp(TcpSeg {
                            seq,
                            ack,
                            flags: if kind == 1 {
                                flags
                                    & (tcp_flags::SYN
                                        | tcp_flags::ACK
                                        | tcp_flags::FIN
                                        | tcp_flags::RST)
                            } else {
                                tcp_flags::ACK
                            },
                            window: win,
                            wscale: (flags & 1 == 1).then_some(flags % 15),
                            sack_perm: flags & 2 == 2,
                            sack_max: None,
                            payload: if flags & 4 == 4 { b"data" } else { b"" },
                        });
                    }
                    3 => p = icmp_echo(s, d, sp, if flags & 1 == 1 { 8 } else { 0 }),
                    4 => p = icmp_err(s, d, udp(d, 1000 + dp, s, 1000 + sp).tuple),
                    _ => {
                        p.frag = Some(Frag {
                            id: u32::from(sp),
                            offset: if flags & 1 == 1 { 0 } else { 8 },
                            more: flags & 2 == 2,
                        });
                        if flags & 1 == 0 {
                            p.l4 = L4::Fragment;
                        }
                    }
                }
                (p, accept, dt)
            })
    }

    proptest! {
        /// Arbitrary packet sequences, accepted or dropped at random, with time
        /// passing: no panic, the count matches the listing, nothing outlives its
        /// timeout, and a full expiry empties the table and its expectations.
        #[test]
        fn table_invariants(seq in proptest::collection::vec(arb_packet(), 1..200)) {
            let mut ct = Conntrack::new(Config {
                max_entries: 16,
                max_per_source: 4,
                hash_secret: HashSecret(7, 11),
                ..Config::default()
            });
            let mut now = 0;
            for (p, acc, dt) in &seq {
                now += dt * S / 4;
                ct.expire(now);
                let t = ct.track(p, now);
                if *acc && !t.must_drop {
                    ct.confirm(&t, Some(crate::HelperKind::Tftp), now);
                    ct.help(&t, p, now);
                } else {
                    ct.abort(&t, now);
                }
                // Listings skip entries past their deadline that the wheel has
                // not reaped yet (as `conntrack -L` does).
                prop_assert!(ct.connections(now).count() <= ct.len());
                prop_assert_eq!(ct.len(), ct.connections(0).count());
                // The per-source counts are those of the live connections,
                // and none exceeds the limit.
                let mut per: std::collections::HashMap<(Family, Addr), u32> = std::collections::HashMap::new();
                for c in ct.connections(0) {
                    *per.entry((c.orig.family, c.orig.src)).or_default() += 1;
                }
                for ((f, a), n) in &per {
                    prop_assert_eq!(ct.source_count(*f, *a), *n);
                    prop_assert!(*n <= 4);
                }
                prop_assert!(ct.len() <= 16);
            }
            ct.expire(now + 10 * 86_400 * S);
            ct.expire(now + 20 * 86_400 * S);
            prop_assert_eq!(ct.len(), 0);
            prop_assert_eq!(ct.expectations(now + 20 * 86_400 * S).count(), 0);
        }
    }
}

#[test]
fn events_new_update_destroy() {
    let mut ct = table(16);
    let mut out = Vec::new();
    // Off by default: nothing recorded.
    accept(&mut ct, &udp(A, 1000, B, 53), 0);
    assert_eq!(ct.drain_events(&mut out), 0);
    assert!(out.is_empty());
    ct.set_events(true);
    accept(&mut ct, &udp(A, 1001, B, 53), S);
    // A reply sets seen-reply: an update; a second one changes nothing.
    accept(&mut ct, &udp(B, 53, A, 1001), S + 1);
    accept(&mut ct, &udp(B, 53, A, 1001), S + 2);
    ct.drain_events(&mut out);
    let kinds: Vec<_> = out.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::New, EventKind::Update]);
    assert_eq!(out[0].conn.orig.src_port, 1001);
    assert!(!out[0].conn.seen_reply && out[1].conn.seen_reply);
    out.clear();
    // Expiry destroys both entries, each with one event.
    ct.expire(400 * S);
    ct.drain_events(&mut out);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|e| e.kind == EventKind::Destroy && e.conn.expires_in == 0));
}

#[test]
fn events_buffer_is_bounded_and_counts_losses() {
    let mut ct = table(8192);
    ct.set_events(true);
    let n = EVENT_BUFFER as u16 + 10;
    for p in 0..n {
        accept(&mut ct, &udp(A, 1024 + p, B, 53), S);
    }
    let mut out = Vec::new();
    assert_eq!(ct.drain_events(&mut out), 10);
    assert_eq!(out.len(), EVENT_BUFFER);
    // Drained: room again, the loss counter restarts.
    accept(&mut ct, &udp(A, 9, B, 53), S);
    out.clear();
    assert_eq!(ct.drain_events(&mut out), 0);
    assert_eq!(out.len(), 1);
}

#[test]
fn remove_in_and_chunked_listing() {
    let mut ct = table(64);
    for p in 0..20u16 {
        accept(
            &mut ct,
            &udp(A, 2000 + p, B, if p % 2 == 0 { 53 } else { 123 }),
            S,
        );
    }
    let slots = ct.slots();
    let whole: Vec<_> = ct.connections(S).collect();
    let mut chunked = Vec::new();
    for start in (0..slots).step_by(7) {
        chunked.extend(ct.connections_in(start..start + 7, S));
    }
    assert_eq!(whole, chunked);
    assert_eq!(whole.len(), 20);
    let removed = ct.remove_in(0..slots, S, |c| c.orig.dst_port == 53);
    assert_eq!(removed, 10);
    assert_eq!(ct.len(), 10);
    assert!(ct.connections(S).all(|c| c.orig.dst_port == 123));
    // A removed connection's next packet starts a new one.
    let t = accept(&mut ct, &udp(A, 2000, B, 53), S);
    assert_eq!(t.state, CtState::New);
    // Out-of-range slices are empty, not a panic.
    assert_eq!(ct.connections_in(slots + 5..slots + 9, S).count(), 0);
    assert_eq!(ct.remove_in(slots..slots * 2, S, |_| true), 0);
}

/// Hash flooding: tuples crafted to collide in the index under one secret
/// (an attacker who knew it) pile up into one long probe run there, and
/// spread out under the secret a running instance draws at start-up.
#[test]
fn crafted_collisions_do_not_survive_another_secret() {
    let known = HashSecret(0x0123_4567, 0x89ab_cdef);
    let cfg = |secret| Config {
        max_entries: 4096,
        hash_secret: secret,
        ..Config::default()
    };
    let mut victim_known = Conntrack::new(cfg(known));
    let mask = victim_known.index_slots() as u64 - 1;
    // Find 150 UDP flows whose hash lands on one home slot under `known`
    // (the index takes the home from the hash's upper half).
    let home = |h: u64| (h >> 32) & mask;
    let target = home(victim_known.flow_hash(&udp(A, 1, B, 53).tuple));
    let mut crafted = Vec::new();
    'search: for a in 0..=255u8 {
        for port in 1..=u16::MAX {
            let p = udp([10, 9, a, 1], port, B, 53);
            if home(victim_known.flow_hash(&p.tuple)) == target {
                crafted.push(p);
                if crafted.len() == 150 {
                    break 'search;
                }
            }
        }
    }
    assert_eq!(crafted.len(), 150);
    for p in &crafted {
        accept(&mut victim_known, p, S);
    }
    // Everyone whose flow hashes near that slot now walks the pile.
    let bystander = udp(A, 1, B, 53);
    assert!(victim_known.probe_len(&bystander.tuple) > 140);
    // The same flows against a table keyed with a secret the attacker does
    // not know: short probe runs for all.
    let mut victim = Conntrack::new(cfg(HashSecret(0xdead_beef, 0x5eed)));
    for p in &crafted {
        accept(&mut victim, p, S);
    }
    let worst = crafted
        .iter()
        .map(|p| victim.probe_len(&p.tuple))
        .chain([victim.probe_len(&bystander.tuple)])
        .max()
        .unwrap_or(0);
    assert!(worst <= 8, "longest probe run {worst}");
    // And every crafted flow is still found (established on its reply).
    for p in &crafted {
        let mut r = *p;
        r.tuple = p.tuple.invert();
        assert_eq!(accept(&mut victim, &r, S).state, CtState::Established);
    }
}

#[test]
fn per_source_limit() {
    let mut ct = Conntrack::new(Config {
        max_entries: 64,
        max_per_source: 3,
        hash_secret: HashSecret(7, 11),
        ..Config::default()
    });
    for p in 0..3u16 {
        let t = accept(&mut ct, &udp(A, 1000 + p, B, 53), S);
        assert_eq!(t.state, CtState::New);
        assert!(!t.must_drop);
    }
    // The fourth from A is refused and leaves nothing behind.
    let t = accept(&mut ct, &udp(A, 1003, B, 53), S);
    assert!(t.must_drop);
    assert_eq!(t.reason, Some(DropReason::SourceLimit));
    assert_eq!(ct.len(), 3);
    assert_eq!(ct.stats().source_limit, 1);
    // Existing connections of A still pass, and other sources are not limited.
    let t = accept(&mut ct, &udp(B, 53, A, 1000), S);
    assert_eq!(t.state, CtState::Established);
    assert!(!accept(&mut ct, &udp([10, 0, 0, 2], 1000, B, 53), S).must_drop);
    // When A's connections time out, A may open new ones.
    ct.expire(200 * S);
    assert!(!accept(&mut ct, &udp(A, 1004, B, 53), 200 * S).must_drop);
    // Flushing forgets the counts too.
    ct.flush();
    for p in 0..3u16 {
        assert!(!accept(&mut ct, &udp(A, 2000 + p, B, 53), 201 * S).must_drop);
    }
}

#[test]
fn entry_is_two_lines() {
    // Two cache lines exactly, wherever an entry starts (see `Entry`).
    assert_eq!(core::mem::size_of::<Entry>(), 128);
    assert_eq!(core::mem::align_of::<Entry>(), 64);
}

#[test]
fn ipv6_tuples_round_trip_through_their_stored_halves() {
    let t = Tuple {
        src: Addr(0x2001_0db8_0000_0000_0000_0000_0000_0001),
        dst: Addr(0xfe80_0000_0000_0000_0202_b3ff_fe1e_8329),
        src_port: 1,
        dst_port: 2,
        proto: ipproto::UDP,
        family: Family::V6,
    };
    let (stored, hi) = Stored::from(&t);
    assert_eq!(stored.tuple(&hi), t);
    let v4 = udp(A, 1000, B, 53).tuple;
    let (stored, hi) = Stored::from(&v4);
    assert_eq!(hi, V6Hi::default());
    assert_eq!(stored.tuple(&hi), v4);
}

/// Two IPv6 connections whose addresses differ only in their upper bits
/// (the part kept beside the entry) are two connections.
#[test]
fn ipv6_addresses_differing_only_in_upper_bits_are_distinct() {
    let mut ct = Conntrack::new(Config {
        max_entries: 16,
        ..Config::default()
    });
    let mk = |hi: u128| {
        let mut p = udp(A, 1000, B, 53);
        p.tuple.family = Family::V6;
        p.tuple.src = Addr(hi << 64 | 1);
        p.tuple.dst = Addr(0xfe80u128 << 112 | 2);
        p
    };
    for (i, hi) in [0x2001u128, 0x2002].into_iter().enumerate() {
        let p = mk(hi);
        let t = ct.track(&p, S);
        assert_eq!(t.state, CtState::New, "connection {i}");
        ct.confirm(&t, None, S);
    }
    assert_eq!(ct.len(), 2);
    // Replies find their own connection.
    for hi in [0x2001u128, 0x2002] {
        let mut r = mk(hi);
        r.tuple = r.tuple.invert();
        let t = ct.track(&r, 2 * S);
        assert_eq!(t.state, CtState::Established);
        assert!(t.reply);
        ct.confirm(&t, None, 2 * S);
    }
    let srcs: Vec<_> = ct.connections(2 * S).map(|c| c.orig.src).collect();
    assert_eq!(srcs.len(), 2);
    assert_ne!(srcs[0], srcs[1]);
}

/// Two packets of one new flow tracked before either is confirmed: the second
/// confirm clashes with the first's entry (the kernel's `insert_failed`),
/// and an insert of another flow in between does not hide the clash.
#[test]
fn a_clash_at_confirm_is_counted_and_dropped() {
    let mut ct = Conntrack::new(Config {
        max_entries: 16,
        ..Config::default()
    });
    let p = udp(A, 1000, B, 53);
    let first = ct.track(&p, S);
    let second = ct.track(&p, S);
    assert_eq!((first.state, second.state), (CtState::New, CtState::New));
    let other = ct.track(&udp(A, 2000, B, 53), S);
    ct.confirm(&first, None, S);
    ct.confirm(&other, None, S);
    ct.confirm(&second, None, S);
    assert_eq!(ct.stats().insert_failed, 1);
    assert_eq!(ct.len(), 2);
    // Without an insert in between, nothing clashes.
    let third = ct.track(&udp(A, 3000, B, 53), S);
    ct.confirm(&third, None, S);
    assert_eq!(ct.stats().insert_failed, 1);
    assert_eq!(ct.len(), 3);
}

/// A slot that held an IPv6 connection keeps that connection's upper address
/// bits beside it; an IPv4 connection in the slot afterwards must not show
/// them (listing, export) nor be confused by them (lookup).
#[test]
fn an_ipv4_entry_ignores_a_former_ipv6_tenants_upper_bits() {
    let mut ct = Conntrack::new(Config {
        max_entries: 1,
        ..Config::default()
    });
    let mut v6 = udp(A, 1000, B, 53);
    v6.tuple.family = Family::V6;
    v6.tuple.src = Addr(0x2001_0db8u128 << 96 | 1);
    v6.tuple.dst = Addr(0x2001_0db8u128 << 96 | 2);
    let t = ct.track(&v6, S);
    ct.confirm(&t, None, S);
    ct.flush();
    let v4 = udp(A, 1000, B, 53);
    let t = ct.track(&v4, S);
    ct.confirm(&t, None, S);
    let listed: Vec<_> = ct.connections(S).map(|c| c.orig).collect();
    assert_eq!(listed, vec![v4.tuple]);
    let mut r = v4;
    r.tuple = v4.tuple.invert();
    assert_eq!(ct.track(&r, 2 * S).state, CtState::Established);
    let mut out = Vec::new();
    assert_eq!(ct.export_state(2 * S, &mut out), 1);
    let mut back = Conntrack::new(Config::default());
    assert_eq!(back.import_state(&out, 2 * S).0, 1);
    assert_eq!(
        back.connections(2 * S).map(|c| c.orig).collect::<Vec<_>>(),
        vec![v4.tuple]
    );
}

mod plain_path {
    use super::*;
    use crate::packet::{tcp_flags as f, TcpSeg};

    /// One step of a TCP conversation: which flow and direction, how far the
    /// segment strays from what the receiver expects, and what follows.
    #[derive(Clone, Debug)]
    struct Step {
        flow: usize,
        reply: bool,
        len: u32,
        seq_off: i64,
        ack_off: i64,
        window: u16,
        flags: u8,
        sack: Option<u32>,
        accept: bool,
        dt: u64,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        (
            (0usize..3, any::<bool>()),
            prop_oneof![Just(0u32), Just(1), Just(100), Just(1460), Just(70_000)],
            prop_oneof![
                6 => Just(0i64),
                1 => Just(-1460),
                1 => Just(1),
                1 => Just(70_000),
                1 => Just(-3_000_000),
                1 => any::<u32>().prop_map(i64::from),
            ],
            prop_oneof![
                6 => Just(0i64),
                1 => Just(-1),
                1 => Just(1),
                1 => Just(200_000),
            ],
            prop_oneof![4 => any::<u16>(), 1 => Just(0u16)],
            prop_oneof![
                12 => Just(f::ACK),
                2 => Just(f::ACK | f::PSH),
                1 => Just(f::ACK | f::FIN),
                1 => Just(f::RST),
                1 => Just(f::ACK | f::RST),
                1 => Just(f::SYN),
                1 => Just(0u8),
            ],
            proptest::option::of(0u32..5000),
            prop_oneof![9 => Just(true), 1 => Just(false)],
            prop_oneof![8 => 0u64..3, 1 => Just(130), 1 => Just(500_000)],
        )
            .prop_map(
                |((flow, reply), len, seq_off, ack_off, window, flags, sack, accept, dt)| Step {
                    flow,
                    reply,
                    len,
                    seq_off,
                    ack_off,
                    window,
                    flags,
                    sack,
                    accept,
                    dt,
                },
            )
    }

    static PAYLOAD: [u8; 70_000] = [0; 70_000];

    /// `p` as IPv6 (its addresses inside 2001:db8::/96) if `v6`.
    fn family(mut p: Packet<'static>, v6: bool) -> Packet<'static> {
        if v6 {
            let map = |a: Addr| {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                #[allow(clippy::cast_possible_truncation)]
                b[12..].copy_from_slice(&(a.0 as u32).to_be_bytes());
                Addr::v6(b)
            };
            p.tuple.src = map(p.tuple.src);
            p.tuple.dst = map(p.tuple.dst);
            p.tuple.family = Family::V6;
        }
        p
    }

    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, seg: TcpSeg<'static>) -> Packet<'static> {
        let mut p = udp(src, sp, dst, dp);
        p.tuple.proto = ipproto::TCP;
        p.l4 = L4::Tcp(seg);
        p
    }

    fn seg(seq: u32, ack: u32, flags: u8, window: u16, len: u32) -> TcpSeg<'static> {
        TcpSeg {
            seq,
            ack,
            flags,
            window,
            wscale: (flags & f::SYN != 0).then_some(7),
            sack_perm: flags & f::SYN != 0,
            sack_max: None,
            payload: &PAYLOAD[..len as usize],
        }
    }

    /// Runs `steps` through `ct`; returns each packet's answer.
    fn run(ct: &mut Conntrack, steps: &[Step], v6: bool) -> Vec<Track> {
        let tcp = |src, sp, dst, dp, seg| family(tcp(src, sp, dst, dp, seg), v6);
        let mut now = S;
        // Next sequence number per flow and direction.
        let mut next = [[1000u32, 5000u32]; 3];
        let mut out = Vec::new();
        for (i, n) in next.iter_mut().enumerate() {
            let sp = 2000 + i as u16;
            out.push(accept(
                ct,
                &tcp(A, sp, B, 80, seg(n[0] - 1, 0, f::SYN, 65_535, 0)),
                now,
            ));
            let sa = seg(n[1] - 1, n[0], f::SYN | f::ACK, 65_535, 0);
            out.push(accept(ct, &tcp(B, 80, A, sp, sa), now));
            out.push(accept(
                ct,
                &tcp(A, sp, B, 80, seg(n[0], n[1], f::ACK, 512, 0)),
                now,
            ));
        }
        for s in steps {
            now += s.dt * S;
            ct.expire(now);
            let n = &mut next[s.flow];
            let (d, r) = if s.reply { (1, 0) } else { (0, 1) };
            #[allow(clippy::cast_possible_truncation)]
            let seq = n[d].wrapping_add(s.seq_off as u32);
            #[allow(clippy::cast_possible_truncation)]
            let ack = n[r].wrapping_add(s.ack_off as u32);
            let mut g = seg(seq, ack, s.flags, s.window, s.len);
            g.sack_max = s.sack.map(|x| ack.wrapping_add(x));
            let sp = 2000 + s.flow as u16;
            let p = if s.reply {
                tcp(B, 80, A, sp, g)
            } else {
                tcp(A, sp, B, 80, g)
            };
            let t = ct.track(&p, now);
            if s.accept && !t.must_drop {
                ct.confirm(&t, None, now);
                if s.seq_off == 0 {
                    n[d] = seq.wrapping_add(s.len);
                }
            } else {
                ct.abort(&t, now);
            }
            out.push(t);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The plain path (an ACK of an established IPv4 connection) gives
        /// every packet the answer the general path gives, and leaves the
        /// same table: connections with their TCP state, counters and
        /// timeouts, and the same counters.
        #[test]
        fn plain_tcp_path_is_the_general_path(
            steps in proptest::collection::vec(arb_step(), 1..120),
            v6 in any::<bool>(),
        ) {
            let mut plain = table(64);
            let mut general = table(64);
            general.general_only = true;
            let a = run(&mut plain, &steps, v6);
            let b = run(&mut general, &steps, v6);
            prop_assert_eq!(general.plain_hits, 0);
            prop_assert_eq!(a, b);
            prop_assert_eq!(plain.stats(), general.stats());
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let now = S + steps.iter().map(|s| s.dt * S).sum::<u64>();
            prop_assert_eq!(plain.export_state(now, &mut x), general.export_state(now, &mut y));
            prop_assert_eq!(x, y);
        }
    }

    proptest! {
        /// UDP likewise: unreplied, replied, assured after two seconds,
        /// expired, dropped packets, packets after the timeout, and a TFTP
        /// request (flow 3) whose answer from another port (flow 4) is
        /// related.
        #[test]
        fn plain_udp_path_is_the_general_path(
            steps in proptest::collection::vec(
                (0u16..5, any::<bool>(), prop_oneof![9 => Just(true), 1 => Just(false)],
                 prop_oneof![Just(0u64), Just(1), Just(3), Just(40), Just(200)]),
                1..100,
            ),
            v6 in any::<bool>(),
        ) {
            let mut plain = table(8);
            let mut general = table(8);
            general.general_only = true;
            let mut now = S;
            for (flow, reply, acc, dt) in &steps {
                now += dt * S;
                let (a, b) = match flow {
                    3 => ((A, 4000), (B, 69)),
                    4 => ((B, 3445), (A, 4000)),
                    _ => ((A, 3000 + flow), (B, 53)),
                };
                let (from, to) = if *reply { (b, a) } else { (a, b) };
                let mut p = udp(from.0, from.1, to.0, to.1);
                if *flow == 3 && !*reply {
                    p.l4 = L4::Udp { payload: b"\x00\x01rfc1350.txt\x00octet\x00" };
                }
                let p = family(p, v6);
                let helper = (*flow == 3).then_some(crate::HelperKind::Tftp);
                let mut out = Vec::new();
                for ct in [&mut plain, &mut general] {
                    ct.expire(now);
                    let t = ct.track(&p, now);
                    if *acc && !t.must_drop {
                        ct.confirm(&t, helper, now);
                        ct.help(&t, &p, now);
                    } else {
                        ct.abort(&t, now);
                    }
                    out.push(t);
                }
                prop_assert_eq!(out[0], out[1]);
            }
            prop_assert_eq!(general.plain_hits, 0);
            prop_assert_eq!(plain.stats(), general.stats());
            prop_assert_eq!(plain.helper_stats(), general.helper_stats());
            let (mut x, mut y) = (Vec::new(), Vec::new());
            prop_assert_eq!(plain.export_state(now, &mut x), general.export_state(now, &mut y));
            prop_assert_eq!(x, y);
        }
    }

    #[test]
    fn the_plain_path_takes_established_acks_only() {
        // The comparison above is only worth something if the plain path
        // runs: the handshake's last ACK (SYN_RECV) is not its case, the
        // established ACK after it is, a FIN is not.
        let mut ct = table(8);
        let mut step = Step {
            flow: 0,
            reply: true,
            len: 100,
            seq_off: 0,
            ack_off: 0,
            window: 1000,
            flags: f::ACK,
            sack: None,
            accept: true,
            dt: 1,
        };
        let t = run(&mut ct, &[step.clone()], false);
        assert_eq!(t.last().map(|t| t.state), Some(CtState::Established));
        assert_eq!(ct.plain_hits, 1);
        step.flags = f::ACK | f::FIN;
        let mut ct = table(8);
        run(&mut ct, &[step.clone()], false);
        assert_eq!(ct.plain_hits, 0);
        // IPv6 likewise.
        step.flags = f::ACK;
        let mut ct = table(8);
        run(&mut ct, &[step], true);
        assert_eq!(ct.plain_hits, 1);
        // UDP: every packet of an existing entry, unreplied or not; not the
        // first (no entry yet).
        let mut ct = table(8);
        assert_eq!(accept(&mut ct, &udp(A, 3000, B, 53), 0).state, CtState::New);
        assert_eq!(ct.plain_hits, 0);
        assert_eq!(accept(&mut ct, &udp(A, 3000, B, 53), 0).state, CtState::New);
        assert_eq!(ct.plain_hits, 1);
        let t = accept(&mut ct, &udp(B, 53, A, 3000), 0);
        assert_eq!((t.state, t.reply), (CtState::Established, true));
        assert_eq!(ct.plain_hits, 2);
    }
}
