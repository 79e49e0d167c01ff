//! Drives the table with established-flow packets for instruction-level
//! profiling: `valgrind --tool=callgrind target/release/examples/ct_profile 10000 1000000 [tcp|udp-replied]`
//! (UDP unreplied without a mode);
//! with `new` instead of `tcp`, N new TCP connections (SYN, confirm, expiry)
//! with about FLOWS live, as the `new_connection` benchmark runs them.

use conntrack::packet::{tcp_flags, Packet, TcpSeg, L4};
use conntrack::table::{Config, Conntrack};
use conntrack::tuple::{ipproto, Addr, Family, HashSecret, Tuple};

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let lookups: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mode = args.next();
    if mode.as_deref() == Some("new") {
        new_connections(flows, lookups);
        return;
    }
    let tcp = mode.as_deref() == Some("tcp");
    // `udp-replied`: each UDP flow answered once (established).
    let replied = mode.as_deref() == Some("udp-replied");
    let seg = |flags, seq, ack| {
        L4::Tcp(TcpSeg {
            seq,
            ack,
            flags,
            window: 65535,
            wscale: None,
            sack_perm: false,
            sack_max: None,
            payload: b"",
        })
    };
    let mut ct = Conntrack::new(Config {
        max_entries: flows + 1024,
        hash_secret: HashSecret(3, 4),
        ..Config::default()
    });
    let pkts: Vec<Packet<'static>> = (0..flows)
        .map(|i| Packet {
            tuple: Tuple {
                src: Addr::v4((0x0a00_0000 | (i >> 16)).to_be_bytes()),
                dst: Addr::v4([192, 0, 2, 1]),
                src_port: (i & 0xffff) as u16,
                dst_port: 53,
                proto: if tcp { ipproto::TCP } else { ipproto::UDP },
                family: Family::V4,
            },
            ip_len: 50,
            frag: None,
            ip_options: false,
            l4: if tcp {
                seg(tcp_flags::ACK, 1001, 5001)
            } else {
                L4::Udp { payload: b"" }
            },
        })
        .collect();
    for p in &pkts {
        if tcp {
            let mut syn = *p;
            syn.l4 = seg(tcp_flags::SYN, 1000, 0);
            let t = ct.track(&syn, 0);
            ct.confirm(&t, None, 0);
            let mut sa = *p;
            sa.tuple = p.tuple.invert();
            sa.l4 = seg(tcp_flags::SYN | tcp_flags::ACK, 5000, 1001);
            let t = ct.track(&sa, 0);
            ct.confirm(&t, None, 0);
        }
        let t = ct.track(p, 0);
        ct.confirm(&t, None, 0);
        if replied {
            let mut r = *p;
            r.tuple = p.tuple.invert();
            let t = ct.track(&r, 0);
            ct.confirm(&t, None, 0);
        }
    }
    let mut x = 0x9e37_79b9_u32;
    let mut est = 0u32;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let t = ct.track(&pkts[(x % flows) as usize], 1_000_000_000);
        est += u32::from(t.state == conntrack::CtState::Established);
    }
    println!("{est} established of {lookups}");
}

/// SYNs of new connections, each confirmed, each expiring 120 s later while
/// time advances so that about `live` stay in the table.
fn new_connections(live: u32, n: u32) {
    let mut ct = Conntrack::new(Config {
        max_entries: live * 2,
        hash_secret: HashSecret(1, 2),
        ..Config::default()
    });
    let step = 120_000_000_000 / u64::from(live.max(1));
    let mut now = 0u64;
    for i in 0..n {
        let p = Packet {
            tuple: Tuple {
                src: Addr::v4((0x0a00_0000 | (i >> 16)).to_be_bytes()),
                dst: Addr::v4([192, 0, 2, 1]),
                src_port: (i & 0xffff) as u16,
                dst_port: 443,
                proto: ipproto::TCP,
                family: Family::V4,
            },
            ip_len: 52,
            frag: None,
            ip_options: false,
            l4: L4::Tcp(TcpSeg {
                seq: 1,
                ack: 0,
                flags: tcp_flags::SYN,
                window: 65535,
                wscale: Some(7),
                sack_perm: true,
                sack_max: None,
                payload: b"",
            }),
        };
        now += step;
        ct.expire(now);
        let t = ct.track(&p, now);
        ct.confirm(&t, None, now);
    }
    println!("{} live, {} dropped", ct.len(), ct.stats().drop);
}
