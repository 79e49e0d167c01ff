//! Conntrack core benchmarks: ns per packet of an established TCP flow at 10 k
//! and 1 M concurrent flows, ns per new connection (insert + confirm + expire),
//! and bytes of memory per tracked connection (printed).
//!
//! Run: `cargo bench -p conntrack --bench conntrack`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use conntrack::packet::{tcp_flags as f, Packet, TcpSeg, L4};
use conntrack::table::{Config, Conntrack};
use conntrack::timeouts::SEC;
use conntrack::tuple::{ipproto, Addr, Family, HashSecret, Tuple};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn tuple(i: u32) -> Tuple {
    Tuple {
        src: Addr::v4((0x0a00_0000 | (i >> 16)).to_be_bytes()),
        dst: Addr::v4([192, 0, 2, 1]),
        src_port: (i & 0xffff) as u16,
        dst_port: 443,
        proto: ipproto::TCP,
        family: Family::V4,
    }
}

fn seg(flags: u8, seq: u32, ack: u32) -> TcpSeg<'static> {
    TcpSeg {
        seq,
        ack,
        flags,
        window: 65_535,
        wscale: if flags & f::SYN != 0 { Some(7) } else { None },
        sack_perm: flags & f::SYN != 0,
        sack_max: None,
        payload: b"",
    }
}

fn pkt(t: Tuple, s: TcpSeg<'static>) -> Packet<'static> {
    Packet {
        tuple: t,
        ip_len: 52,
        frag: None,
        ip_options: false,
        l4: L4::Tcp(s),
    }
}

fn step(ct: &mut Conntrack, p: &Packet<'_>, now: u64) {
    let t = ct.track(p, now);
    ct.confirm(&t, None, now);
}

/// A table holding `n` established TCP connections (full handshakes).
fn established(n: u32) -> Conntrack {
    let mut ct = Conntrack::new(Config {
        max_entries: n + 1024,
        hash_secret: HashSecret(0x1234, 0x5678),
        ..Config::default()
    });
    for i in 0..n {
        let t = tuple(i);
        step(&mut ct, &pkt(t, seg(f::SYN, 1000, 0)), 0);
        step(
            &mut ct,
            &pkt(t.invert(), seg(f::SYN | f::ACK, 5000, 1001)),
            0,
        );
        step(&mut ct, &pkt(t, seg(f::ACK, 1001, 5001)), 0);
    }
    assert_eq!(ct.len(), n as usize);
    ct
}

/// The visiting order of `n` flows: shuffled passes over all of them, each
/// flow once per pass (xorshift-driven Fisher-Yates), `ring_len(n)` visits in
/// all. Every flow is touched, so the working set is the whole table (a
/// ring of 65 536 random draws touched only 6 % of a million flows).
fn order(n: u32) -> Vec<u32> {
    let len = ring_len(n);
    let mut x = 0x9e37_79b9_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut pass: Vec<u32> = (0..n).collect();
        for i in (1..pass.len()).rev() {
            #[allow(clippy::cast_possible_truncation)]
            let j = ((u64::from(next()) * (i as u64 + 1)) >> 32) as usize;
            pass.swap(i, j);
        }
        let take = pass.len().min(len - out.len());
        out.extend_from_slice(&pass[..take]);
    }
    out
}

/// Visits in a ring: a power of two, at least 65 536 and at least `n`.
fn ring_len(n: u32) -> usize {
    (n as usize).next_power_of_two().max(1 << 16)
}

/// The dataplane's way: a batch of 32. Hash every packet and start loading its
/// index slot; then, while processing packet j, start loading the entry of
/// packet j + AHEAD (its index slot has arrived by then). `ring` holds packets
/// in visiting order (read sequentially, as from a NIC's RX ring: the packets
/// are in cache, their flows are not).
fn batch32(ct: &mut Conntrack, ring: &[Packet<'static>], k: &mut usize) {
    const AHEAD: usize = 6;
    let mut hashes = [0u64; 32];
    let base = *k & (ring.len() - 1) & !31;
    let batch = &ring[base..base + 32];
    for (p, h) in batch.iter().zip(hashes.iter_mut()) {
        *h = ct.flow_hash(&p.tuple);
        ct.prefetch_index(*h);
    }
    for h in &hashes[..AHEAD] {
        ct.prefetch_entry(*h);
    }
    for (j, (p, h)) in batch.iter().zip(hashes.iter()).enumerate() {
        if let Some(next) = hashes.get(j + AHEAD) {
            ct.prefetch_entry(*next);
        }
        let t = ct.track_prehashed(black_box(p), *h, SEC);
        black_box(t.state);
    }
    *k += 32;
}

/// Packets of all flows in a fixed pseudo-random order ([`order`]), so flows
/// are touched in an order the cache cannot predict.
fn ring(pkts: &[Packet<'static>]) -> Vec<Packet<'static>> {
    #[allow(clippy::cast_possible_truncation)]
    let n = pkts.len() as u32;
    order(n).into_iter().map(|i| pkts[i as usize]).collect()
}

fn bench_established(c: &mut Criterion) {
    let mut g = c.benchmark_group("established_tcp");
    g.throughput(Throughput::Elements(1));
    for &n in &[10_000u32, 1_000_000] {
        let mut ct = established(n);
        let pkts: Vec<Packet<'static>> = (0..n)
            .map(|i| pkt(tuple(i), seg(f::ACK, 1001, 5001)))
            .collect();
        let ring = ring(&pkts);
        drop(pkts);
        println!(
            "flows={n}: {} bytes of table memory per connection of capacity",
            ct.bytes_per_entry()
        );
        let mut k = 0usize;
        g.bench_function(format!("{n}_flows"), |b| {
            b.iter(|| {
                let p = &ring[k & (ring.len() - 1)];
                k += 1;
                let t = ct.track(black_box(p), SEC);
                black_box(t.state);
            })
        });
        let mut k = 0usize;
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("{n}_flows_batch32"), |b| {
            b.iter(|| batch32(&mut ct, &ring, &mut k))
        });
        g.throughput(Throughput::Elements(1));
        assert_eq!(ct.stats().invalid, 0, "bench traffic must be valid");
    }
    g.finish();
}

/// UDP: the lab's 64-byte load. Each flow primed with one reply (so it is
/// established, as the kernel reference runs its established path).
fn bench_udp(c: &mut Criterion) {
    let mut g = c.benchmark_group("established_udp");
    g.throughput(Throughput::Elements(1));
    for &n in &[10_000u32, 1_000_000] {
        let mut ct = Conntrack::new(Config {
            max_entries: n + 1024,
            hash_secret: HashSecret(0x1234, 0x5678),
            ..Config::default()
        });
        let pkts: Vec<Packet<'static>> = (0..n)
            .map(|i| {
                let mut t = tuple(i);
                t.proto = ipproto::UDP;
                Packet {
                    tuple: t,
                    ip_len: 50,
                    frag: None,
                    ip_options: false,
                    l4: L4::Udp { payload: b"" },
                }
            })
            .collect();
        for p in &pkts {
            step(&mut ct, p, 0);
            let mut r = *p;
            r.tuple = p.tuple.invert();
            step(&mut ct, &r, 0);
        }
        assert_eq!(ct.len(), n as usize);
        let ring = ring(&pkts);
        drop(pkts);
        let mut k = 0usize;
        g.bench_function(format!("{n}_flows"), |b| {
            b.iter(|| {
                let p = &ring[k & (ring.len() - 1)];
                k += 1;
                black_box(ct.track(black_box(p), SEC).state);
            })
        });
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("{n}_flows_batch32"), |b| {
            b.iter(|| batch32(&mut ct, &ring, &mut k))
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

/// The whole pipeline (parse, track, policy) on 64-byte-frame UDP packets of
/// established flows, one at a time and in batches of 32 as a worker runs them.
fn bench_pipeline(c: &mut Criterion) {
    use conntrack::build::Pkt;
    use conntrack::policy::{Action, Policy, Side};
    use conntrack::Pipeline;
    let mut g = c.benchmark_group("pipeline_udp");
    for &n in &[10_000u32, 1_000_000] {
        let mut p = Pipeline::new(
            Config {
                max_entries: n + 1024,
                hash_secret: HashSecret(9, 10),
                ..Config::default()
            },
            Policy::new(Action::Accept),
        );
        let addr = |i: u32| (0x0a00_0000 | (i >> 16)).to_be_bytes();
        #[allow(clippy::cast_possible_truncation)]
        let fwd = |i: u32| {
            Pkt::udp4(addr(i), (i & 0xffff) as u16, [192, 0, 2, 1], 53)
                .payload(&[0; 18])
                .build()
        };
        for i in 0..n {
            p.process(Side::Inside, &fwd(i), SEC);
            #[allow(clippy::cast_possible_truncation)]
            let back = Pkt::udp4([192, 0, 2, 1], 53, addr(i), (i & 0xffff) as u16)
                .payload(&[0; 18])
                .build();
            p.process(Side::Outside, &back, SEC);
        }
        let ring: Vec<Vec<u8>> = order(n).into_iter().map(fwd).collect();
        let mut k = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{n}_flows"), |b| {
            b.iter(|| {
                let r = p.process(
                    Side::Inside,
                    black_box(&ring[k & (ring.len() - 1)]),
                    2 * SEC,
                );
                k += 1;
                black_box(r.verdict);
            })
        });
        let mut out = vec![p.process(Side::Inside, &ring[0], 2 * SEC); 32];
        let batches: Vec<Vec<(Side, &[u8])>> = ring
            .chunks(32)
            .map(|c| c.iter().map(|v| (Side::Inside, v.as_slice())).collect())
            .collect();
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("{n}_flows_batch32"), |b| {
            b.iter(|| {
                let batch = &batches[(k / 32) % batches.len()];
                p.process_batch(black_box(batch), 2 * SEC, &mut out);
                k += 32;
                black_box(out[0].verdict);
            })
        });
    }
    g.finish();
}

fn bench_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_connection");
    g.throughput(Throughput::Elements(1));
    g.bench_function("syn_insert_confirm_expire", |b| {
        b.iter_custom(|iters| {
            // 100 k live at most: each SYN_SENT entry expires 120 s after creation
            // and time advances 1.2 ms per connection.
            let mut ct = Conntrack::new(Config {
                max_entries: 200_000,
                hash_secret: HashSecret(1, 2),
                ..Config::default()
            });
            let mut now = 0u64;
            let start = Instant::now();
            for i in 0..iters {
                #[allow(clippy::cast_possible_truncation)]
                let p = pkt(tuple(i as u32), seg(f::SYN, 1, 0));
                now += 1_200_000;
                ct.expire(now);
                step(&mut ct, black_box(&p), now);
            }
            let el: Duration = start.elapsed();
            assert_eq!(ct.stats().drop, 0);
            el
        })
    });
    g.finish();
}

/// The many-core owner function per packet (header parse + symmetric
/// Toeplitz): what every packet of a multi-worker instance pays.
fn bench_owner(c: &mut Criterion) {
    use conntrack::build::Pkt;
    use conntrack::shard::Sharding;
    let sh = Sharding::new(4, HashSecret(1, 2));
    let pkts: Vec<Vec<u8>> = (0..1024u16)
        .map(|i| {
            Pkt::tcp4(
                [10, 0, (i >> 8) as u8, i as u8],
                1024 + i,
                [192, 0, 2, 1],
                443,
            )
            .payload(&[0; 16])
            .build()
        })
        .collect();
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(1));
    let mut k = 0usize;
    g.bench_function("owner_tcp4", |b| {
        b.iter(|| {
            k = (k + 1) & 1023;
            std::hint::black_box(sh.owner(&pkts[k]))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_udp, bench_established, bench_new, bench_pipeline
}
criterion_group! {
    name = benches_owner;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_owner
}
criterion_main!(benches_owner, benches);
