//! The cost of handing a frame to another worker: the receiving worker copies
//! it into a `Handoff` and sends it through the bounded lock-free queue the
//! fabric uses; the owner receives it on another core. Measured per frame
//! with both threads running, for a 64-byte and a 1500-byte frame.
//! (The owner hash every packet of a multi-worker instance pays is in
//! `cargo bench -p conntrack --bench conntrack -- shard`.)

use std::time::{Duration, Instant};

use conntrack::policy::Side;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::worker::{handoff_queue, Handoff};

fn bench_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(1));
    for size in [64usize, 1500] {
        let frame = vec![0xabu8; size];
        g.bench_function(format!("{size}B"), |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = handoff_queue();
                let consumer = std::thread::spawn(move || {
                    let mut bytes = 0usize;
                    for _ in 0..iters {
                        match rx.recv() {
                            Ok(h) => bytes += h.frame().len(),
                            Err(_) => break,
                        }
                    }
                    bytes
                });
                let start = Instant::now();
                for _ in 0..iters {
                    let h = Handoff::new(Side::Inside, &frame).expect("fits");
                    if tx.send(h).is_err() {
                        break;
                    }
                }
                let bytes = consumer.join().expect("consumer");
                let took = start.elapsed();
                assert_eq!(bytes, size * iters as usize);
                took
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_handoff
}
criterion_main!(benches);
