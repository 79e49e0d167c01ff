//! Drives the table with established UDP lookups for instruction-level
//! profiling: `valgrind --tool=callgrind target/release/examples/ct_profile 10000 1000000`.

use conntrack::packet::{Packet, L4};
use conntrack::table::{Config, Conntrack};
use conntrack::tuple::{ipproto, Addr, Family, HashSecret, Tuple};

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let lookups: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
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
                proto: ipproto::UDP,
                family: Family::V4,
            },
            ip_len: 50,
            frag: None,
            ip_options: false,
            l4: L4::Udp { payload: b"" },
        })
        .collect();
    for p in &pkts {
        let t = ct.track(p, 0);
        ct.confirm(&t, None, 0);
    }
    let mut x = 0x9e37_79b9_u32;
    let mut est = 0u32;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let t = ct.track(&pkts[(x % flows) as usize], 1_000_000_000);
        est += u32::from(t.state == conntrack::CtState::New);
    }
    println!("{est} new-state lookups of {lookups}");
}
