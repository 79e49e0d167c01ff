//! Overload: the lab's generator flat out over 100 000 flows, well above
//! what one worker forwards, for a few seconds. Forwarding must go on at its
//! own pace the whole time: a worker whose frames all sat in TX rings with
//! its fill rings empty once stopped for good (a few thousand frames a second
//! while the kernel dropped millions at the rings). Root; CI runs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::benchlab::{frame, prime, server_count, sinks_up, Forwarder, Options, Running};
use bench::gen::Generator;
use dataplane::lab::Lab;

const FLOWS: u32 = 100_000;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(6);
/// How often the server's counter is read.
const SAMPLE: Duration = Duration::from_millis(100);

/// The longest run of consecutive samples below half the median, and the
/// median: what the test judges, apart so that it can be checked on its own.
fn longest_stall(rates: &[f64]) -> (usize, f64) {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let (mut run, mut longest) = (0, 0);
    for &r in rates {
        if r < median / 2.0 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    (longest, median)
}

#[test]
fn a_stall_is_a_run_below_half_the_median() {
    let mut rates = vec![100.0; 30];
    assert_eq!(longest_stall(&rates).0, 0);
    for r in &mut rates[5..16] {
        *r = 3.0;
    }
    assert_eq!(longest_stall(&rates), (11, 100.0));
    rates[10] = 60.0;
    assert_eq!(longest_stall(&rates).0, 5);
}

#[test]
fn forwarding_goes_on_under_overload() {
    if !testkit::lab_allowed() {
        return;
    }
    Lab::clean_stale();
    let lab = Arc::new(Lab::build_with(1).expect("lab"));
    sinks_up(&lab).expect("sinks");
    let running = Running::start(&lab, Forwarder::Tollgate, Options::default()).expect("Tollgate");
    let (out, back) = (frame(&lab, false, 64), frame(&lab, true, 64));
    let flooding = Arc::new(AtomicBool::new(true));
    let l = lab.clone();
    let f = flooding.clone();
    let gen = std::thread::spawn(move || -> Result<(u64, String), String> {
        Lab::pin(0);
        let g = Generator::load().map_err(|e| e.to_string())?;
        prime(&g, &l, &out, &back, FLOWS)?;
        l.enter(&l.client).map_err(|e| e.to_string())?;
        f.store(false, Ordering::SeqCst);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < FLOOD {
            g.send("eth0", &out, FLOWS, 500_000, false)
                .map_err(|e| e.to_string())?;
            sent += 500_000;
        }
        Ok((sent, g.backend().to_string()))
    });
    // Priming done (flooding cleared), then the flood: the server's counter
    // every SAMPLE.
    while flooding.load(Ordering::SeqCst) && !gen.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rates = Vec::new();
    let mut last = (Instant::now(), server_count(&lab).expect("count"));
    while !gen.is_finished() {
        std::thread::sleep(SAMPLE);
        let now = (Instant::now(), server_count(&lab).expect("count"));
        let secs = now.0.duration_since(last.0).as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        rates.push(now.1.saturating_sub(last.1) as f64 / secs);
        last = now;
    }
    let (sent, backend) = gen.join().expect("generator thread").expect("generator");
    let report = running.stop().expect("stop");
    // The first and last samples straddle the flood's edges.
    let during = rates
        .get(1..rates.len().saturating_sub(1))
        .unwrap_or(&[])
        .to_vec();
    let (stall, median) = longest_stall(&during);
    eprintln!(
        "overload ({backend}): {sent} frames offered in {FLOOD:?}, forwarded {:.0} kpps median over {} samples, longest run below half of it {} samples; {report:?}",
        median / 1e3,
        during.len(),
        stall
    );
    assert!(during.len() >= 30, "too few samples: {during:?}");
    #[allow(clippy::cast_precision_loss)]
    let offered = sent as f64 / FLOOD.as_secs_f64();
    assert!(
        median > 10_000.0,
        "forwarding at {median} pps of {offered} offered: {during:?}"
    );
    if median > offered * 0.9 {
        eprintln!("overload: the worker kept up with the generator here: no overload tested");
    }
    assert!(
        stall <= 10,
        "forwarding fell below half its median ({median:.0} pps) for {stall} samples of {SAMPLE:?}: {during:?}"
    );
}
