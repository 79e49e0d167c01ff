//! Drives the helper paths of the pipeline, for instruction-level profiling:
//! per round an FTP control packet (a retransmitted `227`: assigned helper,
//! dispatch, line reassembly), a SIP `OPTIONS` over UDP (dispatch, parse), a
//! new UDP flow to a port no helper registers (automatic assignment misses)
//! and, every eighth round, a TFTP read request on a new flow (automatic
//! assignment hits, an expectation is made).
//! `valgrind --tool=callgrind target/release/examples/helper_profile 100000`
//! (run twice with different round counts and difference the totals, so
//! that the set-up cancels out).

use conntrack::build::Pkt;
use conntrack::packet::tcp_flags::{ACK, PSH, SYN};
use conntrack::policy::{Action, Policy, Side};
use conntrack::table::Config;
use conntrack::timeouts::SEC;
use conntrack::tuple::HashSecret;
use conntrack::Pipeline;

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut p = Pipeline::new(
        Config {
            max_entries: 2 * rounds + 1024,
            expect_max: rounds + 1024,
            hash_secret: HashSecret(9, 10),
            auto_helpers: true,
            ..Config::default()
        },
        Policy::new(Action::Accept),
    );
    let (cl, sv) = ([10, 0, 0, 1], [192, 0, 2, 21]);
    let syn = Pkt::tcp4(cl, 40000, sv, 21).flags(SYN).seq(100).build();
    let synack = Pkt::tcp4(sv, 21, cl, 40000)
        .flags(SYN | ACK)
        .seq(900)
        .ack(101)
        .build();
    let ack = Pkt::tcp4(cl, 40000, sv, 21)
        .flags(ACK)
        .seq(101)
        .ack(901)
        .build();
    for b in [&syn, &synack, &ack] {
        p.process(Side::Inside, b, SEC);
    }
    let ftp = Pkt::tcp4(sv, 21, cl, 40000)
        .flags(PSH | ACK)
        .seq(901)
        .ack(101)
        .payload(b"227 Entering Passive Mode (192,0,2,21,195,80).\r\n")
        .build();
    let sip = Pkt::udp4(cl, 5060, sv, 5060)
        .payload(
            b"OPTIONS sip:bob@192.0.2.21 SIP/2.0\r\n\
              Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
              From: <sip:alice@10.0.0.1>;tag=1\r\n\
              To: <sip:bob@192.0.2.21>\r\n\
              Call-ID: 1@10.0.0.1\r\n\
              CSeq: 1 OPTIONS\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .build();
    let mut accepted = 0u32;
    for i in 0..rounds {
        let now = 2 * SEC;
        let src = (0x0a01_0000 | (i >> 16)).to_be_bytes();
        let sport = u16::try_from(i & 0xffff).unwrap_or(0);
        let dns = Pkt::udp4(src, sport, sv, 53).payload(&[0; 18]).build();
        let mut batch = vec![(Side::Outside, ftp.clone()), (Side::Inside, sip.clone())];
        batch.push((Side::Inside, dns));
        if i % 8 == 0 {
            let src = (0x0a02_0000 | (i >> 16)).to_be_bytes();
            let tftp = Pkt::udp4(src, sport, sv, 69)
                .payload(b"\x00\x01rfc1350.txt\x00octet\x00")
                .build();
            batch.push((Side::Inside, tftp));
        }
        for (side, b) in &batch {
            let r = p.process(*side, b, now);
            accepted += u32::from(r.verdict == Action::Accept);
        }
    }
    println!("{accepted} accepted in {rounds} rounds");
}
