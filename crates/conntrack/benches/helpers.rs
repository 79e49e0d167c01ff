//! Helper costs: ns per control line for each parser, and the whole cost of an
//! FTP control packet through the pipeline (parse, track, policy, line
//! reassembly, helper, expectation) compared with a plain established packet.
//!
//! Run: `cargo bench -p conntrack --bench helpers`.

use std::hint::black_box;
use std::time::Duration;

use conntrack::build::Pkt;
use conntrack::helpers::{ftp, irc, tftp};
use conntrack::packet::tcp_flags::{ACK, PSH, SYN};
use conntrack::policy::{Action, Policy, Rule, Side};
use conntrack::{Config, HelperKind, Pipeline};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("helper_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ftp_port", |b| {
        b.iter(|| ftp::parse_line(black_box(b"PORT 10,0,0,1,195,80"), true))
    });
    g.bench_function("ftp_227", |b| {
        b.iter(|| {
            ftp::parse_line(
                black_box(b"227 Entering Passive Mode (192,0,2,21,195,80)."),
                false,
            )
        })
    });
    g.bench_function("ftp_other_line", |b| {
        b.iter(|| ftp::parse_line(black_box(b"250 CWD command successful"), false))
    });
    g.bench_function("irc_dcc", |b| {
        b.iter(|| {
            irc::parse_line(black_box(
                b"PRIVMSG bob :\x01DCC SEND file.txt 167772161 5555 1024\x01",
            ))
        })
    });
    g.bench_function("tftp_rrq", |b| {
        b.iter(|| tftp::parse(black_box(b"\x00\x01rfc1350.txt\x00octet\x00")))
    });
    g.finish();
}

/// One FTP control connection, then the same control packet processed over and
/// over (a retransmission: the helper skips bytes it has seen), against a
/// control connection without the helper.
fn ftp_control_packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("ftp_control_packet");
    g.throughput(Throughput::Elements(1));
    for helper in [true, false] {
        let mut rule = Rule::any(Action::Accept);
        rule.helper = helper.then_some(HelperKind::Ftp);
        let mut p = Pipeline::new(
            Config::default(),
            Policy {
                rules: vec![rule],
                default: Action::Drop,
            },
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
            p.process(Side::Inside, b, 1);
        }
        let line = Pkt::tcp4(sv, 21, cl, 40000)
            .flags(PSH | ACK)
            .seq(901)
            .ack(101)
            .payload(b"227 Entering Passive Mode (192,0,2,21,195,80).\r\n")
            .build();
        let name = if helper {
            "with_ftp_helper"
        } else {
            "no_helper"
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(p.process(Side::Outside, black_box(&line), 2)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = parsers, ftp_control_packet
}
criterion_main!(benches);
