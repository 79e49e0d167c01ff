//! The dataplane in the lab (root; CI runs it as root): ping through
//! Tollgate, a TCP transfer from inside, and a strict policy that blocks what
//! the outside starts.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{lab_allowed, Running};
use conntrack::policy::{Action, Policy, Rule, Side, StateSet};
use conntrack::{Config, CtState, Pipeline};
use dataplane::lab::Lab;
use dataplane::{Counters, Worker};

/// The lab's strict policy, and untracked packets (IPv6 neighbour
/// discovery: ping6 needs it) accepted.
fn strict() -> Policy {
    let mut inv = Rule::any(Action::Drop);
    inv.states = StateSet::default().with(CtState::Invalid);
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related)
        .with(CtState::Untracked);
    let mut new = Rule::any(Action::Accept);
    new.from = Some(Side::Inside);
    new.states = StateSet::default().with(CtState::New);
    Policy {
        rules: vec![inv, est, new],
        default: Action::Drop,
    }
}

#[test]
fn traffic_through_the_lab() {
    lab_run(false);
}

/// The same with the XDP fast path: established flows leave the workers.
#[test]
fn traffic_through_the_lab_offloaded() {
    lab_run(true);
}

/// One lab per process at a time (its names derive from the pid).
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This process's lab, held alone until the guard goes; `None` (test
/// skipped) without root.
/// GRO on or off on the server's interface (the outside veth's peer).
fn server_gro(lab: &Lab, on: &str) {
    let (ok, out) = lab.exec(&lab.server, &["ethtool", "-K", "eth0", "gro", on]);
    assert!(ok, "ethtool: {out}");
}

/// A worker with offload on and the strict policy, given time to attach.
fn offloaded_worker(lab: &Arc<Lab>) -> (Running, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let running = Running::worker(
        lab,
        Pipeline::new(Config::default(), strict()),
        counters.clone(),
        true,
    );
    std::thread::sleep(Duration::from_millis(500));
    (running, counters)
}

fn lab() -> Option<(std::sync::MutexGuard<'static, ()>, Arc<Lab>)> {
    let one = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !lab_allowed() {
        return None;
    }
    Lab::clean_stale();
    Some((one, Arc::new(Lab::build().expect("lab"))))
}

fn lab_run(offload: bool) {
    let Some((_one, lab)) = lab() else {
        return;
    };
    let counters = Arc::new(Counters::default());
    // UMEM frames the worker accounts for once it has stopped.
    let accounted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (l, c, acc) = (lab.clone(), counters.clone(), accounted.clone());
    let running = Running::in_box(&lab, move |stop| {
        let cfg = l.worker_config(false, offload, false);
        let mut w =
            Worker::open(&cfg, Pipeline::new(Config::default(), strict()), c).expect("worker");
        w.run(stop);
        acc.store(w.frames_accounted(), Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = lab.exec(&lab.client, &["ping", "-c", "3", "-W", "2", "10.77.0.2"]);
    assert!(ok, "ping inside -> outside: {out}");
    let (ok, out) = lab.exec(
        &lab.client,
        &["ping", "-6", "-c", "2", "-W", "2", "fd77::2"],
    );
    assert!(ok, "ping6 inside -> outside: {out}");
    let (ok, _) = lab.exec(&lab.server, &["ping", "-c", "2", "-W", "1", "10.77.0.1"]);
    assert!(!ok, "ping outside -> inside must be blocked");
    // iperf3 from inside: TCP and UDP, each way (-R: the server sends). The
    // server outside serves one test after another.
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.server, "iperf3", "-s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let mut runs = Vec::new();
    for args in [
        &["-t", "2"][..],
        &["-t", "2", "-R"],
        &["-u", "-b", "50M", "-t", "2"],
        &["-u", "-b", "50M", "-t", "2", "-R"],
    ] {
        let mut cmd = vec!["iperf3", "-c", "10.77.0.2", "--connect-timeout", "3000"];
        cmd.extend_from_slice(args);
        runs.push((args.join(" "), lab.exec(&lab.client, &cmd)));
    }
    let _ = server.kill();
    let _ = server.wait();
    drop(running);
    for (args, (ok, out)) in &runs {
        assert!(ok, "iperf3 {args}: {out}");
        if args.contains("-u") {
            // UDP: the receiver's report; a few datagrams may be lost while
            // the flow starts (debug builds are slow), not more.
            let lost = out
                .lines()
                .filter(|l| l.contains("receiver"))
                .find_map(|l| {
                    let open = l.rfind('(')?;
                    l[open + 1..].split('%').next()?.trim().parse::<f64>().ok()
                })
                .unwrap_or(100.0);
            assert!(lost < 5.0, "iperf3 {args}: {lost} % lost\n{out}");
        }
    }
    // Frames went both ways without a copy through one UMEM (and some were
    // dropped): none was lost on the way.
    assert_eq!(
        accounted.load(Ordering::Relaxed),
        dataplane::xsk::FRAMES,
        "UMEM frames lost"
    );
    let free = counters.umem_free.load(Ordering::Relaxed);
    assert!(
        free > 0 && free <= u64::from(dataplane::xsk::FRAMES),
        "{free} frames free"
    );
    let out = &runs[0].1 .1;
    let fwd = counters.forwarded[0].load(Ordering::Relaxed);
    let dropped = counters.dropped[1].load(Ordering::Relaxed);
    eprintln!("forwarded inside->outside {fwd}, dropped from outside {dropped}\n{out}");
    assert!(fwd > 100);
    assert!(dropped >= 2);
    if offload {
        let o = &counters.offload;
        let (act, pk) = (
            o.activated.load(Ordering::Relaxed),
            o.packets.load(Ordering::Relaxed),
        );
        eprintln!(
            "offload: {act} flows activated, {pk} packets forwarded by XDP, {} pending taken, {} installed, {} removed, {} forced, {} overtaken, punts {:?}",
            o.pending_taken.load(Ordering::Relaxed),
            o.installed.load(Ordering::Relaxed),
            o.removed.load(Ordering::Relaxed),
            o.forced.load(Ordering::Relaxed),
            o.overtaken.load(Ordering::Relaxed),
            counters.punts.iter().map(|p| p.load(Ordering::Relaxed)).collect::<Vec<_>>()
        );
        assert!(act >= 1, "no flow reached the fast path");
        assert!(pk > 1000, "the fast path forwarded {pk} packets");
    }
}

/// Ping through the lab with offload on, IPv4 and IPv6: once the first echo
/// is answered, the exchange is offloaded and the XDP program forwards the
/// rest of the echoes itself; every one is answered.
#[test]
fn ping_through_the_fast_path() {
    let Some((_one, lab)) = lab() else {
        return;
    };
    let (running, counters) = offloaded_worker(&lab);
    let o = &counters.offload;
    let mut forwarded = Vec::new();
    for (v6, to) in [(false, "10.77.0.2"), (true, "fd77::2")] {
        let mut cmd = vec!["ping", "-c", "40", "-i", "0.05", "-W", "2", to];
        if v6 {
            cmd.insert(1, "-6");
        }
        let (ok, out) = lab.exec(&lab.client, &cmd);
        assert!(
            ok && out.contains(" 0% packet loss"),
            "ping (IPv6 {v6}): every echo answered:\n{out}"
        );
        // The worker hands the program's counts over a few times a second;
        // the flow stays offloaded (the ICMP timeout is 30 s).
        std::thread::sleep(Duration::from_millis(700));
        forwarded.push(o.packets.load(Ordering::Relaxed));
    }
    drop(running);
    let punts: Vec<u64> = counters
        .punts
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .collect();
    let (v4, v6) = (forwarded[0], forwarded[1] - forwarded[0]);
    eprintln!(
        "echoes forwarded by XDP: IPv4 {v4}, IPv6 {v6} (of 80 each); {} flows activated, {} installed, punts {punts:?}",
        o.activated.load(Ordering::Relaxed),
        o.installed.load(Ordering::Relaxed),
    );
    // 80 packets each: the first exchange and those while the flow is
    // pending (the worker waits until it has forwarded them all; a few
    // hundred ms on a loaded machine) on the slow path, the rest, at least
    // half, through the program.
    assert!(v4 >= 40, "IPv4 echoes through the program: {v4}");
    assert!(v6 >= 40, "IPv6 echoes through the program: {v6}");
    assert!(o.activated.load(Ordering::Relaxed) >= 2);
}

/// Offload refuses interfaces that would drop what the program redirects to
/// them: a veth whose peer has neither GRO nor an XDP program. The worker
/// says which interface and why, instead of black-holing established flows.
#[test]
fn offload_refuses_an_interface_that_cannot_take_redirected_frames() {
    let Some((_one, lab)) = lab() else {
        return;
    };
    let gro = |on: &str| server_gro(&lab, on);
    let l = lab.clone();
    let open = move |offload: bool| {
        let l = l.clone();
        std::thread::spawn(move || {
            l.enter_box().expect("enter box");
            let cfg = l.worker_config(false, offload, false);
            Worker::open(
                &cfg,
                Pipeline::new(Config::default(), strict()),
                Arc::new(Counters::default()),
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
        .join()
        .expect("thread")
    };
    // The lab's endpoints have GRO: both sides take redirected frames.
    open(true).expect("offload on a lab that can take it");
    gro("off");
    let err = open(true).expect_err("the outside's peer has no NAPI now");
    assert!(
        err.contains(&lab.outside) && err.contains("cannot transmit frames redirected by XDP"),
        "{err}"
    );
    // Without offload nothing is redirected: the worker opens.
    open(false).expect("no offload, no redirect");
    gro("on");
    open(true).expect("GRO back on");
}

/// A UDP echo across the lab until dropped: a server outside echoes every
/// datagram; a client inside sends one every 10 ms from a fixed port (one
/// connection) and counts the echoes.
struct UdpEcho {
    stop: Arc<std::sync::atomic::AtomicBool>,
    echoed: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(lab: &Arc<Lab>) -> UdpEcho {
        use std::net::UdpSocket;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (l, s) = (lab.clone(), stop.clone());
        let server = std::thread::spawn(move || {
            l.enter(&l.server).expect("enter server");
            let sock = UdpSocket::bind("10.77.0.2:7300").expect("bind server");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        let (l, s, e) = (lab.clone(), stop.clone(), echoed.clone());
        let client = std::thread::spawn(move || {
            l.enter(&l.client).expect("enter client");
            let sock = UdpSocket::bind("10.77.0.1:7301").expect("bind client");
            sock.connect("10.77.0.2:7300").expect("connect");
            sock.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 64];
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                // Refused (ICMP) or a full buffer: the next one goes anyway.
                let _ = sock.send(&seq.to_be_bytes());
                while sock.recv(&mut buf).is_ok() {
                    e.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        UdpEcho {
            stop,
            echoed,
            threads: vec![server, client],
        }
    }

    /// Echoes received so far.
    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Echoes received in the next `ms` milliseconds.
    fn echoed_within(&self, ms: u64) -> u64 {
        let before = self.echoed();
        std::thread::sleep(Duration::from_millis(ms));
        self.echoed() - before
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("a UDP echo thread panicked");
            }
        }
    }
}

/// Waits up to `secs` seconds for `f`; panics naming `what` if it never holds.
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out ({secs} s) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GRO turned off on the outside's peer while a worker runs with offload:
/// the program would redirect the established UDP flow's packets into a veth
/// that drops them. The re-check (crates/dataplane/src/recheck.rs) suspends
/// the fast path within a couple of seconds: the flow's packets go on
/// arriving, through the worker, and the suspension is published. With GRO
/// back on, the fast path resumes and the program forwards the flow again.
#[test]
fn offload_suspends_while_an_interface_cannot_take_redirected_frames() {
    let Some((_one, lab)) = lab() else {
        return;
    };
    let gro = |on: &str| server_gro(&lab, on);
    let (_running, counters) = offloaded_worker(&lab);
    let o = &counters.offload;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let echo = UdpEcho::start(&lab);
    // Assured after two seconds both ways, then offloaded: the program
    // forwards the flow (the worker hands its counts over five times a
    // second).
    wait_for("the UDP flow in the fast path", 10, || {
        load(&o.activated) >= 1 && load(&o.packets) > 50
    });
    let before = load(&o.packets);
    assert!(echo.echoed_within(1000) >= 50, "the echo runs");
    assert!(load(&o.packets) > before + 50, "the program forwards it");
    assert_eq!(load(&counters.offload_suspended), 0);
    let activated = load(&o.activated);

    gro("off");
    // A re-check a second (plus the worker's next look) suspends the fast
    // path; until then the flow is lost, after it the worker forwards it.
    std::thread::sleep(Duration::from_millis(2500));
    let slow = echo.echoed_within(1000);
    eprintln!("echoes in the second after the suspension: {slow}");
    assert!(
        slow >= 50,
        "{slow} echoes in a second: the program still redirects the flow into a veth that drops it"
    );
    wait_for("the suspension published", 2, || {
        load(&counters.offload_suspended) == 1
    });
    assert_eq!(load(&counters.offload_suspensions), 1);
    // Every flow was taken back from the program.
    wait_for("the fast path emptied", 2, || load(&o.entries) == 0);
    let fast = load(&o.packets);

    gro("on");
    wait_for("the fast path resumed", 4, || {
        load(&counters.offload_suspended) == 0
    });
    wait_for("the flow back in the fast path", 8, || {
        load(&o.activated) > activated && load(&o.packets) > fast + 50
    });
    assert!(echo.echoed_within(1000) >= 50, "the echo runs");
    assert_eq!(load(&counters.offload_suspensions), 1);
    eprintln!(
        "echoed {}, fast path packets {} (at suspension {fast}), activated {}, punts {:?}",
        echo.echoed(),
        load(&o.packets),
        load(&o.activated),
        counters.punts.iter().map(load).collect::<Vec<_>>()
    );
}
