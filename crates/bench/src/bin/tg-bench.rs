//! The lab bench (bench/README.md): 64-byte UDP frames over N flows from the
//! XDP generator (live frames, or the broadcast loop where the kernel refuses
//! them; client namespace, CPU 0) through the box to the server namespace,
//! which counts and drops them at ingress. Measures, side by side in one run,
//! the generator alone into an XDP_DROP sink (its ceiling), the Linux bridge
//! with and without conntrack, Open vSwitch, Tollgate's full pipeline, bare
//! forwarding and fast path, and plain XDP redirect. Root only.
//!
//! `tg-bench [packets]` (default 2 000 000 per measurement).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use bench::benchlab::{
    frame, gen_backend, gen_ceiling, prime, server_count, sinks_up, Forwarder, Options, Running,
};
use bench::gen::Generator;
use dataplane::lab::Lab;

fn measure(lab: &Arc<Lab>, fwd: Forwarder, flows: u32, packets: u32) -> Result<f64, String> {
    if fwd.skipped() {
        return Err("skipped".into());
    }
    let running = Running::start(lab, fwd, Options::default())?;
    let (out, back) = (frame(lab, false, 64), frame(lab, true, 64));
    let l = lab.clone();
    let gen = std::thread::spawn(move || -> Result<f64, String> {
        Lab::pin(0);
        let g = Generator::load().map_err(|e| e.to_string())?;
        let send = |ns: &str, f: &[u8], n: u32, rev: bool| {
            l.enter(ns).map_err(|e| e.to_string())?;
            g.send("eth0", f, flows, n, rev).map_err(|e| e.to_string())
        };
        prime(&g, &l, &out, &back, flows)?;
        let before = server_count(&l)?;
        let took = send(&l.client, &out, packets, false)?;
        std::thread::sleep(Duration::from_millis(200));
        let after = server_count(&l)?;
        Ok((after - before) as f64 / took.as_secs_f64())
    });
    let pps = gen.join().map_err(|_| "generator panicked".to_string());
    if let Some(report) = running.stop()? {
        eprintln!("tg-bench: {fwd:?}: {report}");
    }
    pps?
}

fn main() {
    let packets: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    Lab::clean_stale();
    // Two queues (the two-worker run); the generator's frames all arrive on
    // queue 0 (veth picks the queue by the sending CPU).
    let lab = match Lab::build_with(2) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("tg-bench: {e}");
            std::process::exit(1);
        }
    };
    // Each end drops the flood at ingress (counting it at the server) instead
    // of answering it; the kernel forwards in softirq on CPU 1 (RPS), as
    // Tollgate's worker runs on CPU 1.
    if let Err(e) = sinks_up(&lab) {
        eprintln!("tg-bench: {e}");
        std::process::exit(1);
    }
    println!("64-byte UDP, {packets} packets per run, Mpps forwarded. Kernel: Linux bridge + br_netfilter + nftables conntrack,");
    println!("forwarding inline on the generator's CPU 0 or steered by RPS to CPU 1; plain bridge: no conntrack, CPU 0;");
    println!("Tollgate's worker on CPU 1; two workers: CPU 1 and CPU 0 (beside the generator), all frames on queue 0,");
    println!("those of worker 1's flows handed over. Open vSwitch: userspace datapath, AF_XDP ports, ct() flows, PMD on CPU 1.");
    println!("Tollgate + XDP: the fast path on (established flows forwarded by the XDP program); plain XDP: XDP_REDIRECT between the ports, no state.");
    match gen_backend(&lab) {
        Ok(b) => println!("Generator: {b}, on CPU 0. Its ceiling: the generator alone, as many frames flat out into an XDP program"),
        Err(e) => println!("Generator: error: {e}. Its ceiling: the generator alone, as many frames flat out into an XDP program"),
    }
    println!("that counts and drops them at the far end of a veth pair (no forwarder): a column near it is bound by the generator.");
    println!("| flows | generator ceiling (XDP_DROP sink) | bridge, no conntrack | kernel, CPU 0 | kernel, RPS to CPU 1 | Open vSwitch | Tollgate | Tollgate bare forwarding | Tollgate, 2 workers | Tollgate + XDP | plain XDP | Tollgate / best kernel | Tollgate / OVS | Tollgate / bare | Tollgate + XDP / best kernel | Tollgate + XDP / plain XDP |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for flows in [1_024u32, 100_000] {
        let sink = gen_ceiling(&lab, 64, flows, packets).map(|(_, c)| c.received_pps());
        let br = measure(&lab, Forwarder::Bridge, flows, packets);
        let k0 = measure(&lab, Forwarder::Kernel { rps: false }, flows, packets);
        let k1 = measure(&lab, Forwarder::Kernel { rps: true }, flows, packets);
        let t = measure(&lab, Forwarder::Tollgate, flows, packets);
        let b = measure(&lab, Forwarder::Bare, flows, packets);
        let two = measure(&lab, Forwarder::Two, flows, packets);
        let ovs = measure(&lab, Forwarder::Ovs, flows, packets);
        let off = measure(&lab, Forwarder::Offload, flows, packets);
        let xdp = measure(&lab, Forwarder::Xdp, flows, packets);
        let cell = |r: &Result<f64, String>| match r {
            Ok(v) => format!("{:.3}", v / 1e6),
            Err(e) => format!("error: {e}"),
        };
        let ratio = |a: &Result<f64, String>, b: Option<f64>| match (a, b) {
            (Ok(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let best_kernel = match (&k0, &k1) {
            (Ok(a), Ok(b)) => Some(a.max(*b)),
            (Ok(a), _) | (_, Ok(a)) => Some(*a),
            _ => None,
        };
        println!(
            "| {flows} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&sink),
            cell(&br),
            cell(&k0),
            cell(&k1),
            cell(&ovs),
            cell(&t),
            cell(&b),
            cell(&two),
            cell(&off),
            cell(&xdp),
            ratio(&t, best_kernel),
            ratio(&t, ovs.as_ref().ok().copied()),
            ratio(&t, b.as_ref().ok().copied()),
            ratio(&off, best_kernel),
            ratio(&off, xdp.as_ref().ok().copied()),
        );
    }
}
