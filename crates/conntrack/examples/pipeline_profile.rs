//! Drives the whole pipeline (parse + track + policy + confirm) with UDP
//! packets of established flows, one call per packet, for instruction-level
//! profiling:
//! `valgrind --tool=callgrind target/release/examples/pipeline_profile 10000 400000`
//! (run twice with different packet counts and difference the totals, so
//! that the set-up cancels out), as the `pipeline_udp` benchmark runs them.

use conntrack::build::Pkt;
use conntrack::policy::{Action, Policy, Side};
use conntrack::table::Config;
use conntrack::timeouts::SEC;
use conntrack::tuple::HashSecret;
use conntrack::Pipeline;

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let packets: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut p = Pipeline::new(
        Config {
            max_entries: flows + 1024,
            hash_secret: HashSecret(9, 10),
            ..Config::default()
        },
        Policy::new(Action::Accept),
    );
    let addr = |i: u32| (0x0a00_0000 | (i >> 16)).to_be_bytes();
    let port = |i: u32| u16::try_from(i & 0xffff).unwrap_or(0);
    let fwd: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            Pkt::udp4(addr(i), port(i), [192, 0, 2, 1], 53)
                .payload(&[0; 18])
                .build()
        })
        .collect();
    for (i, f) in (0..flows).zip(&fwd) {
        p.process(Side::Inside, f, SEC);
        let back = Pkt::udp4([192, 0, 2, 1], 53, addr(i), port(i))
            .payload(&[0; 18])
            .build();
        p.process(Side::Outside, &back, SEC);
    }
    let mut x = 0x9e37_79b9_u32;
    let mut accepted = 0u32;
    for _ in 0..packets {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let r = p.process(Side::Inside, &fwd[(x % flows) as usize], 2 * SEC);
        accepted += u32::from(r.verdict == Action::Accept);
    }
    println!("{accepted} accepted of {packets}");
}
