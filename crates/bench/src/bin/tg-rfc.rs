//! RFC-style measurements on the lab (bench/README.md, "RFC 2544 / 9693
//! runs"), each forwarder side by side in one run:
//!
//! - RFC 2544 throughput: the highest offered rate forwarded without a single
//!   loss, by bisection, for 64, 512 and 1518-byte frames over 1 024 UDP flows
//!   (and the rate forwarded under the generator's full load);
//! - RFC 9693 TCP connection establishment rate, tear-down rate and
//!   concurrent connection capacity, with real TCP handshakes between the
//!   client and server namespaces' own stacks;
//! - latency through the box: UDP echo round trips, percentiles.
//!
//! Writes `rfc.md` (the tables) and `throughput.svg`, `connections.svg`,
//! `latency.svg` into the output directory (default `bench/results`).
//! Root only. `tg-rfc [--out DIR] [--quick]`.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bench::benchlab::{
    frame, gen_backend, gen_ceiling, percentile, prime, server_count, sinks_up, zero_loss_search,
    Forwarder, Options, Running,
};
use bench::gen::{Backend, Ceiling, Generator};
use bench::plot::{Bars, Series};
use dataplane::lab::Lab;

const FLOWS: u32 = 1024;
const SIZES: [usize; 3] = [64, 512, 1518];
const SERVER: &str = "10.77.0.2";
/// Table size for the capacity test, Tollgate's and the kernel's, when the
/// process may hold twice as many sockets (both ends).
const CAPACITY: u32 = 32_768;

impl Args {
    /// Sizes the connection tests to `fds` open files (both ends of every
    /// connection are in this process).
    fn size_for(&mut self, fds: u64) {
        let pairs = usize::try_from(fds.saturating_sub(512) / 2).unwrap_or(usize::MAX);
        let teardown = if self.quick { 4000 } else { 10_000 };
        // Whole thousands where they fit (at least 100 connections).
        self.teardown = if pairs >= 1000 {
            teardown.min(pairs / 1000 * 1000)
        } else {
            (pairs / 2).max(100)
        };
        // The capacity test opens an eighth more than the table holds.
        let fits = u32::try_from(pairs * 8 / 9).unwrap_or(u32::MAX);
        let want = if self.quick { CAPACITY / 4 } else { CAPACITY };
        let mut cap = 128;
        while cap * 2 <= want.min(fits) {
            cap *= 2;
        }
        self.capacity = cap;
    }
}

struct Args {
    out: PathBuf,
    quick: bool,
    /// Connections of the tear-down test.
    teardown: usize,
    /// Table size of the capacity test.
    capacity: u32,
    /// Which parts run: throughput, connections, latency.
    only: Vec<String>,
}

const PARTS: [&str; 3] = ["throughput", "connections", "latency"];

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        out: PathBuf::from("bench/results"),
        quick: false,
        teardown: 0,
        capacity: 0,
        only: PARTS.iter().map(|p| (*p).to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => a.out = it.next().ok_or("--out needs a directory")?.into(),
            "--quick" => a.quick = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list, e.g. throughput,latency")?;
                a.only = list.split(',').map(|p| p.trim().to_string()).collect();
                if let Some(bad) = a.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: unknown part {bad:?} (throughput, connections, latency)"));
                }
            }
            "-h" | "--help" => {
                return Err("usage: tg-rfc [--out DIR] [--quick] [--only throughput,connections,latency]   (root; TG_BENCH_ONLY=Kernel,Tollgate,... limits the forwarders)".into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

/// One forwarder's RFC 2544 result at one frame size.
#[derive(Clone, Copy, Default)]
struct Throughput {
    /// Frames per second the generator offered flat out.
    offered: f64,
    /// Frames per second forwarded under that load.
    forwarded: f64,
    /// Highest rate forwarded without loss.
    zero_loss: f64,
    /// Nothing was lost even at the generator's top rate: the figure is
    /// what the generator reached, a floor of the forwarder's.
    bound: bool,
}

fn throughput(
    lab: &Arc<Lab>,
    fwd: Forwarder,
    size: usize,
    secs: f64,
    steps: u32,
) -> Result<Throughput, String> {
    let running = Running::start(lab, fwd, Options::default())?;
    let (out, back) = (frame(lab, false, size), frame(lab, true, size));
    let l = lab.clone();
    let gen = std::thread::spawn(move || -> Result<Throughput, String> {
        Lab::pin(0);
        let g = Generator::load().map_err(|e| e.to_string())?;
        prime(&g, &l, &out, &back, FLOWS)?;
        let mut t = Throughput::default();
        // Flat out: what the generator offers and what gets through.
        let n = flat_out_frames(size);
        let before = server_count(&l)?;
        let took = g
            .send("eth0", &out, FLOWS, n, false)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(200));
        let got = server_count(&l)? - before;
        t.offered = f64::from(n) / took.as_secs_f64();
        t.forwarded = got as f64 / took.as_secs_f64();
        let (rate, trials) = zero_loss_search(t.offered, steps, |rate| {
            let count = (rate * secs).clamp(1000.0, 4e9) as u32;
            let before = server_count(&l)?;
            let took = g
                .send_rate("eth0", &out, FLOWS, count, rate)
                .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(200));
            let got = server_count(&l)? - before;
            Ok((
                f64::from(count) / took.as_secs_f64(),
                u64::from(count).saturating_sub(got),
            ))
        })?;
        for (asked, offered, lost) in &trials {
            eprintln!(
                "tg-rfc:   {size} B {fwd:?}: asked {:.3} Mpps, offered {:.3}, lost {lost}",
                asked / 1e6,
                offered / 1e6
            );
        }
        t.zero_loss = rate;
        t.bound = trials.first().is_some_and(|tr| tr.2 == 0);
        Ok(t)
    });
    let t = gen.join().map_err(|_| "generator panicked".to_string());
    if let Some(report) = running.stop()? {
        eprintln!("tg-rfc: {fwd:?}: {report}");
    }
    t?
}

/// Frames of the flat-out run at `size` bytes (the generator's ceiling is
/// measured with as many).
fn flat_out_frames(size: usize) -> u32 {
    if size > 512 {
        300_000
    } else {
        1_000_000
    }
}

/// The server's TCP side: accepts on `port`, and either closes each
/// connection at once (`keep` false) or keeps them for the caller.
struct TcpServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    kept: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl TcpServer {
    fn start(lab: &Arc<Lab>, port: u16, keep: bool) -> Result<TcpServer, String> {
        let addr: SocketAddr = format!("{SERVER}:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let l = lab.clone();
        let listener = std::thread::spawn(move || {
            let r = l
                .enter(&l.server)
                .map_err(|e| e.to_string())
                .and_then(|()| TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}")));
            let _ = tx.send(r);
        });
        let _ = listener.join();
        let listener = rx.recv().map_err(|e| e.to_string())??;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let kept = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let listener = listener.try_clone().map_err(|e| e.to_string())?;
            let (stop, accepted, kept) = (stop.clone(), accepted.clone(), kept.clone());
            threads.push(std::thread::spawn(move || {
                // The endpoints on CPU 0, the box's CPU 1 left to the box.
                Lab::pin(0);
                // Non-blocking, so that stopping needs no connection through
                // the box (which may be refusing them: the capacity test).
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut c, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = c.set_nonblocking(false);
                            if keep {
                                if let Ok(mut k) = kept.lock() {
                                    k.push(c);
                                }
                            } else {
                                // The client closes first (its stack keeps
                                // the TIME_WAIT and reuses ports safely).
                                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                                let mut b = [0u8; 16];
                                while matches!(c.read(&mut b), Ok(n) if n > 0) {}
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
            }));
        }
        Ok(TcpServer {
            stop,
            accepted,
            kept,
            threads,
            addr,
        })
    }

    fn take(&self) -> Vec<TcpStream> {
        self.kept
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Runs `f(thread index)` on `n` threads in the client namespace.
fn on_clients<T: Send + 'static>(
    lab: &Arc<Lab>,
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Result<Vec<T>, String> {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (l, f) = (lab.clone(), f.clone());
            std::thread::spawn(move || -> Result<T, String> {
                Lab::pin(0);
                l.enter(&l.client).map_err(|e| e.to_string())?;
                Ok(f(i))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().map_err(|_| "client thread panicked".to_string())?)
        .collect()
}

#[derive(Clone, Copy, Default)]
struct Connections {
    /// Connections established per second (handshake done; each then closed).
    setup_rate: f64,
    /// Failed attempts during the establishment test.
    setup_failed: u64,
    /// Connections torn down per second (both FINs through the box).
    teardown_rate: f64,
    /// Concurrent connections held, when the forwarder has a table.
    capacity: Option<u64>,
}

/// RFC 9693 7.2: connections per second, each opened by the client's stack,
/// accepted and closed by the server's, for `secs` seconds.
fn setup_rate(lab: &Arc<Lab>, port: u16, secs: f64) -> Result<(f64, u64), String> {
    let server = TcpServer::start(lab, port, false)?;
    let addr = server.addr;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let counts = on_clients(lab, 8, move |_| {
        let (mut ok, mut failed) = (0u64, 0u64);
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(c) => {
                    ok += 1;
                    drop(c);
                }
                Err(_) => failed += 1,
            }
        }
        (ok, failed)
    })?;
    let took = start.elapsed().as_secs_f64();
    server.stop();
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    let failed: u64 = counts.iter().map(|c| c.1).sum();
    Ok((ok as f64 / took, failed))
}

/// RFC 9693 7.4: `total` connections opened and held, then all closed by
/// the client at once; the time until every client has seen the server's
/// FIN back (both directions' FINs through the box).
fn teardown_rate(lab: &Arc<Lab>, port: u16, total: usize) -> Result<f64, String> {
    let server = TcpServer::start(lab, port, true)?;
    let addr = server.addr;
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let b = barrier.clone();
    let per = total / threads;
    let l = lab.clone();
    let clients = std::thread::spawn(move || {
        on_clients(&l, threads, move |_| -> Result<Instant, String> {
            let mut conns = Vec::with_capacity(per);
            let mut failed = 0;
            while conns.len() < per {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        failed += 1;
                        if failed > 16 {
                            // Pass both meeting points before giving up.
                            b.wait();
                            b.wait();
                            return Err(format!("connecting: {e}"));
                        }
                    }
                }
            }
            b.wait();
            b.wait();
            for c in &conns {
                let _ = c.shutdown(Shutdown::Write);
            }
            let mut buf = [0u8; 64];
            for c in &mut conns {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(e) => return Err(format!("waiting for the server's FIN: {e}")),
                    }
                }
            }
            Ok(Instant::now())
        })
    });
    // Every client connected (or gave up).
    barrier.wait();
    // The server's accept queue drains.
    let t = Instant::now();
    while server.accepted.load(Ordering::Relaxed) < (per * threads) as u64
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let streams = server.take();
    let held = streams.len();
    // Server side: each connection closed once its client's FIN is read.
    let half = streams.len() / 2;
    let mut streams = streams;
    let second = streams.split_off(half);
    let closers: Vec<_> = [streams, second]
        .into_iter()
        .map(|mut part| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                for c in &mut part {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    let _ = c.shutdown(Shutdown::Both);
                }
                drop(part);
            })
        })
        .collect();
    let t0 = Instant::now();
    barrier.wait();
    let ends = clients
        .join()
        .map_err(|_| "client threads panicked".to_string())??;
    for c in closers {
        let _ = c.join();
    }
    server.stop();
    let mut last = t0;
    for e in ends {
        last = last.max(e?);
    }
    if held < per * threads {
        return Err(format!(
            "only {held} of {} connections were accepted",
            per * threads
        ));
    }
    Ok(held as f64 / (last - t0).as_secs_f64())
}

/// RFC 9693 7.3: connections opened and held until the box refuses more
/// (a SYN not answered within 300 ms, 8 times in a row on each of four
/// client threads); returns how many were held at once.
fn capacity(lab: &Arc<Lab>, port: u16, limit: u64) -> Result<u64, String> {
    let server = TcpServer::start(lab, port, true)?;
    let addr = server.addr;
    let per = (limit + limit / 8) / 4;
    let held = on_clients(lab, 4, move |_| {
        let mut conns = Vec::new();
        let mut misses = 0;
        while (conns.len() as u64) < per && misses < 8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(c) => {
                    misses = 0;
                    conns.push(c);
                }
                Err(_) => misses += 1,
            }
        }
        conns
    })?;
    // Every held connection still answers: a byte each way.
    let mut alive = 0u64;
    let streams = server.take();
    for mut s in streams.iter() {
        let _ = s.write_all(b"x");
    }
    for conns in &held {
        for mut c in conns.iter() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 1];
            if matches!(c.read(&mut b), Ok(1)) {
                alive += 1;
            }
        }
    }
    drop(streams);
    drop(held);
    server.stop();
    Ok(alive)
}

/// The kernel's table limit (global: read-only inside a namespace), set for
/// the capacity test and put back after. The old value waits in a file
/// until then, so that a run killed in between is undone by the next one.
struct ConntrackMax;

const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const CT_MAX_SAVED: &str = "/run/tg-rfc.nf_conntrack_max";

impl ConntrackMax {
    fn set(v: u32) -> Result<ConntrackMax, String> {
        ConntrackMax::recover();
        let old = std::fs::read_to_string(CT_MAX).map_err(|e| format!("{CT_MAX}: {e}"))?;
        std::fs::write(CT_MAX_SAVED, old.trim()).map_err(|e| format!("{CT_MAX_SAVED}: {e}"))?;
        std::fs::write(CT_MAX, v.to_string()).map_err(|e| format!("{CT_MAX}: {e}"))?;
        Ok(ConntrackMax)
    }

    /// Puts back a value an earlier run saved.
    fn recover() {
        if let Ok(old) = std::fs::read_to_string(CT_MAX_SAVED) {
            if old.trim().parse::<u64>().is_ok() && std::fs::write(CT_MAX, old.trim()).is_ok() {
                let _ = std::fs::remove_file(CT_MAX_SAVED);
            }
        }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        ConntrackMax::recover();
    }
}

/// The three RFC 9693 measurements through `fwd`, on server ports
/// `port`, `port + 1`, `port + 2` (fresh 4-tuples for each forwarder: no
/// TIME_WAIT of an earlier run in the way).
fn connections(
    lab: &Arc<Lab>,
    fwd: Forwarder,
    port: u16,
    args: &Args,
) -> Result<Connections, String> {
    let quick = args.quick;
    let mut c = Connections::default();
    {
        let running = Running::start(lab, fwd, Options::default())?;
        (c.setup_rate, c.setup_failed) = setup_rate(lab, port, if quick { 1.5 } else { 3.0 })?;
        running.stop()?;
    }
    {
        let running = Running::start(lab, fwd, Options::default())?;
        c.teardown_rate = teardown_rate(lab, port + 1, args.teardown)?;
        running.stop()?;
    }
    if fwd != Forwarder::Bridge {
        let limit = args.capacity;
        let guard = match fwd {
            Forwarder::Kernel { .. } => Some(ConntrackMax::set(limit)?),
            _ => None,
        };
        let running = Running::start(
            lab,
            fwd,
            Options {
                max_entries: limit,
                ..Options::default()
            },
        )?;
        c.capacity = Some(capacity(lab, port + 2, u64::from(limit))?);
        running.stop()?;
        drop(guard);
    }
    Ok(c)
}

/// UDP echo round trips through the box, microseconds, sorted; and how
/// many probes got no answer.
fn latency(
    lab: &Arc<Lab>,
    fwd: Forwarder,
    opts: Options,
    probes: usize,
) -> Result<(Vec<f64>, usize), String> {
    let running = Running::start(lab, fwd, opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (l, s) = (lab.clone(), stop.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let echo = std::thread::spawn(move || -> Result<(), String> {
        l.enter(&l.server).map_err(|e| e.to_string())?;
        let sock = UdpSocket::bind(format!("{SERVER}:7007")).map_err(|e| e.to_string())?;
        let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
        let _ = tx.send(());
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
        Ok(())
    });
    let _ = rx.recv_timeout(Duration::from_secs(2));
    let result = on_clients(lab, 1, move |_| -> Result<(Vec<f64>, usize), String> {
        let sock = UdpSocket::bind("10.77.0.1:0").map_err(|e| e.to_string())?;
        sock.connect(format!("{SERVER}:7007"))
            .map_err(|e| e.to_string())?;
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut rtts = Vec::with_capacity(probes);
        let mut lost = 0;
        let mut buf = [0u8; 64];
        // Three seconds of probes first, not counted: the flow is set up,
        // assured and (with the fast path) offloaded, as in steady state.
        let warm = Instant::now() + Duration::from_secs(3);
        let mut seq = 0u64;
        let mut measured = 0;
        while measured < probes {
            seq += 1;
            let t = Instant::now();
            sock.send(&seq.to_be_bytes()).map_err(|e| e.to_string())?;
            let mut answered = false;
            while let Ok(n) = sock.recv(&mut buf) {
                if n == 8 && buf[..8] == seq.to_be_bytes() {
                    answered = true;
                    break;
                }
            }
            let rtt = t.elapsed();
            if t >= warm {
                measured += 1;
                if answered {
                    rtts.push(rtt.as_secs_f64() * 1e6);
                } else {
                    lost += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        rtts.sort_by(f64::total_cmp);
        Ok((rtts, lost))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    running.stop()?;
    result?.pop().ok_or_else(|| "no client".to_string())?
}

/// Lets this process hold the connection tests' sockets (both ends): root
/// may raise the hard limit up to `fs.nr_open` where it has the capability.
/// Returns the limit it got.
fn raise_fd_limit() -> u64 {
    let want: libc::rlim_t = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    dataplane::sys::raise_nofile(want)
}

/// Measurements that failed (not counting those left out on purpose).
static FAILED: AtomicU64 = AtomicU64::new(0);

/// A failed measurement's table cell; counts it unless it was skipped.
fn failure(e: &str) -> String {
    if e == "skipped" {
        e.to_string()
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
        format!("error: {e}")
    }
}

/// Each forwarder's color, the same in every chart.
fn color_of(label: &str) -> Option<&'static str> {
    Some(match label {
        "Linux bridge, no conntrack" => "#9d9d9d",
        "Linux bridge + conntrack" => "#4e79a7",
        "Tollgate" => "#f28e2b",
        "Tollgate, busy_poll = true" => "#edc948",
        "Tollgate + XDP fast path" => "#59a14f",
        "plain XDP redirect" => "#e15759",
        _ => return None,
    })
}

/// Prints a line of the report and keeps it for `rfc.md`.
fn say(md: &mut String, line: String) {
    println!("{line}");
    md.push_str(&line);
    md.push('\n');
}

fn mpps(v: f64) -> String {
    format!("{:.3}", v / 1e6)
}

fn part_throughput(lab: &Arc<Lab>, args: &Args, md: &mut String) -> Bars<'static> {
    // RFC 2544 throughput.
    let tp_fwds = [
        Forwarder::Kernel { rps: false },
        Forwarder::Tollgate,
        Forwarder::Offload,
        Forwarder::Xdp,
    ];
    let (secs, steps) = if args.quick { (0.3, 5) } else { (1.0, 7) };
    // The generator alone first: what no forwarder's figure can exceed.
    let ceilings: Vec<Result<(Backend, Ceiling), String>> = SIZES
        .iter()
        .map(|&size| {
            eprintln!("tg-rfc: throughput, {size} B, the generator alone into an XDP_DROP sink");
            let c = gen_ceiling(lab, size, FLOWS, flat_out_frames(size));
            if let Ok((_, c)) = &c {
                eprintln!(
                    "tg-rfc:   {size} B generator: offered {:.3} Mpps, the sink received {:.3}",
                    c.offered_pps() / 1e6,
                    c.received_pps() / 1e6
                );
            }
            c
        })
        .collect();
    let mut tp: Vec<Vec<Result<Throughput, String>>> = Vec::new();
    for fwd in tp_fwds {
        let mut row = Vec::new();
        for size in SIZES {
            if fwd.skipped() {
                row.push(Err("skipped".into()));
                continue;
            }
            eprintln!("tg-rfc: throughput, {} B, {}", size, fwd.label());
            row.push(throughput(lab, fwd, size, secs, steps));
        }
        tp.push(row);
    }
    say(md, "## Throughput (RFC 2544), UDP over 1 024 flows".into());
    say(md, String::new());
    say(
        md,
        format!(
            "Zero loss: the highest rate a {secs} s trial crossed without losing one frame \
             (bisection over {steps} steps below the generator's top rate). Under full load: \
             forwarded while the generator sends flat out (what `tg-bench` reports). Mpps; \
             frame sizes count the FCS."
        ),
    );
    say(md, String::new());
    let mut head = "| forwarder |".to_string();
    let mut rule = "|---|".to_string();
    for size in SIZES {
        head.push_str(&format!(" {size} B zero loss | {size} B under full load |"));
        rule.push_str("---|---|");
    }
    say(md, head);
    say(md, rule);
    for (fwd, row) in tp_fwds.iter().zip(&tp) {
        let mut line = format!("| {} |", fwd.label());
        for r in row {
            match r {
                Ok(t) => {
                    let floor = if t.bound { "≥ " } else { "" };
                    line.push_str(&format!(
                        " {floor}{} | {} |",
                        mpps(t.zero_loss),
                        mpps(t.forwarded)
                    ));
                }
                Err(e) => line.push_str(&format!(" {} | |", failure(e))),
            }
        }
        say(md, line);
    }
    let mut line = "| the generator alone into an XDP_DROP sink (its ceiling) |".to_string();
    for c in &ceilings {
        match c {
            Ok((_, c)) => line.push_str(&format!(" – | {} |", mpps(c.received_pps()))),
            Err(e) => line.push_str(&format!(" {} | |", failure(e))),
        }
    }
    say(md, line);
    let offered: Vec<String> = SIZES
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let best = tp
                .iter()
                .filter_map(|row| row[i].as_ref().ok())
                .map(|t| t.offered)
                .fold(0.0f64, f64::max);
            format!("{size} B {}", mpps(best))
        })
        .collect();
    let backend = ceilings
        .iter()
        .find_map(|c| c.as_ref().ok().map(|(b, _)| b.to_string()))
        .unwrap_or_else(|| "unknown (it failed)".into());
    let ceiling: Vec<String> = SIZES
        .iter()
        .zip(&ceilings)
        .map(|(size, c)| match c {
            Ok((_, c)) => format!(
                "{size} B {} offered, {} received",
                mpps(c.offered_pps()),
                mpps(c.received_pps())
            ),
            Err(_) => format!("{size} B failed"),
        })
        .collect();
    say(md, String::new());
    say(
        md,
        format!(
            "Generator: {backend}. Its ceiling in this run, the last row (Mpps): {}: the \
             generator alone on CPU 0, flat out with as many frames as the full-load runs, into \
             an XDP program that counts and drops them at the far end of a veth pair, no \
             forwarder. A forwarder's figure near it is the generator's limit, not the \
             forwarder's.",
            ceiling.join(", ")
        ),
    );
    say(md, String::new());
    say(
        md,
        format!(
            "The generator's top rate (Mpps, best of the runs): {}. ≥: no loss even at \
             the top rate the generator reached with that forwarder; those forward inline on \
             the generator's CPU (the kernel's bridge, XDP), so generator and forwarder share \
             it and the figure is what both together reach.",
            offered.join(", ")
        ),
    );
    Bars {
        title: "Zero-loss throughput (RFC 2544), 1 024 UDP flows",
        unit: "Mpps",
        groups: SIZES.iter().map(|s| format!("{s} B")).collect(),
        series: tp_fwds
            .iter()
            .zip(&tp)
            .map(|(f, row)| Series {
                name: f.label().into(),
                color: color_of(f.label()),
                values: row
                    .iter()
                    .map(|r| r.as_ref().ok().map(|t| t.zero_loss / 1e6))
                    .collect(),
            })
            .collect(),
    }
}

fn part_connections(lab: &Arc<Lab>, args: &Args, md: &mut String) -> Bars<'static> {
    // RFC 9693 connections.
    let ct_fwds = [
        Forwarder::Bridge,
        Forwarder::Kernel { rps: false },
        Forwarder::Kernel { rps: true },
        Forwarder::Tollgate,
    ];
    let mut conns = Vec::new();
    for fwd in ct_fwds {
        if fwd.skipped() {
            conns.push(Err("skipped".to_string()));
            continue;
        }
        eprintln!("tg-rfc: connections, {}", fwd.label());
        let port = 9000 + 10 * u16::try_from(conns.len()).unwrap_or(0);
        conns.push(connections(lab, fwd, port, args));
    }
    let limit = args.capacity;
    say(md, String::new());
    say(md, "## TCP connections (RFC 9693)".into());
    say(md, String::new());
    say(
        md,
        format!(
            "Real handshakes between the client's and the server's Linux stacks through the box \
             (8 client threads, 4 server threads; each connection closed by the client, then the server). Establishment: connections per \
             second for {} s. Tear-down: {} held connections closed by the client at once, until \
             every FIN has crossed both ways. Capacity: connections held at once with the table \
             set to {limit} entries (Tollgate's `max_entries`, the kernel's `nf_conntrack_max`, \
             restored after), each checked with a byte both ways; the plain bridge keeps no table. \
             The endpoints' threads run on CPU 0; Tollgate's worker and, with RPS, the kernel's \
             forwarding run on CPU 1. Without RPS the kernel forwards on CPU 0 beside the twelve \
             endpoint threads, which starve it: compare Tollgate with the RPS row.",
            if args.quick { 1.5 } else { 3.0 },
            args.teardown,
        ),
    );
    say(md, String::new());
    say(
        md,
        "| forwarder | established / s | failed attempts | torn down / s | concurrent connections held |".into(),
    );
    say(md, "|---|---|---|---|---|".into());
    for (fwd, c) in ct_fwds.iter().zip(&conns) {
        match c {
            Ok(c) => say(
                md,
                format!(
                    "| {} | {:.0} | {} | {:.0} | {} |",
                    fwd.label(),
                    c.setup_rate,
                    c.setup_failed,
                    c.teardown_rate,
                    c.capacity
                        .map_or("no table".to_string(), |n| format!("{n} of {limit}"))
                ),
            ),
            Err(e) => say(md, format!("| {} | {} | | | |", fwd.label(), failure(e))),
        }
    }
    Bars {
        title: "TCP connections through the box (RFC 9693)",
        unit: "thousand connections per second",
        groups: vec!["established / s".into(), "torn down / s".into()],
        series: ct_fwds
            .iter()
            .zip(&conns)
            .map(|(f, c)| Series {
                name: f.label().into(),
                color: color_of(f.label()),
                values: match c {
                    Ok(c) => vec![Some(c.setup_rate / 1e3), Some(c.teardown_rate / 1e3)],
                    Err(_) => vec![None, None],
                },
            })
            .collect(),
    }
}

fn part_latency(lab: &Arc<Lab>, args: &Args, md: &mut String) -> Bars<'static> {
    // Latency.
    let busy = Options {
        busy_poll: true,
        ..Options::default()
    };
    let lat_fwds = [
        (
            Forwarder::Bridge,
            Options::default(),
            Forwarder::Bridge.label(),
        ),
        (
            Forwarder::Kernel { rps: false },
            Options::default(),
            Forwarder::Kernel { rps: false }.label(),
        ),
        (
            Forwarder::Tollgate,
            Options::default(),
            Forwarder::Tollgate.label(),
        ),
        (Forwarder::Tollgate, busy, "Tollgate, busy_poll = true"),
        (
            Forwarder::Offload,
            Options::default(),
            Forwarder::Offload.label(),
        ),
    ];
    let probes = if args.quick { 1000 } else { 5000 };
    let pcts = [50.0, 90.0, 99.0, 99.9];
    let mut lats = Vec::new();
    for (fwd, opts, label) in lat_fwds {
        if fwd.skipped() {
            lats.push(Err("skipped".to_string()));
            continue;
        }
        eprintln!("tg-rfc: latency, {label}");
        lats.push(latency(lab, fwd, opts, probes));
    }
    say(md, String::new());
    say(md, "## Latency through the box".into());
    say(md, String::new());
    say(
        md,
        format!(
            "UDP echo round trips client -> box -> server -> box -> client, {probes} probes \
             every 0.5 ms after 3 s of warm-up (the flow established, assured, offloaded where \
             the fast path is on); both endpoints' stacks are in every figure, so differences \
             between rows are the box's. Microseconds."
        ),
    );
    say(md, String::new());
    say(
        md,
        "| forwarder | p50 | p90 | p99 | p99.9 | max | lost |".into(),
    );
    say(md, "|---|---|---|---|---|---|---|".into());
    for ((_, _, label), l) in lat_fwds.iter().zip(&lats) {
        match l {
            Ok((v, lost)) => {
                let p = |q: f64| percentile(v, q).map_or("-".to_string(), |x| format!("{x:.1}"));
                say(
                    md,
                    format!(
                        "| {} | {} | {} | {} | {} | {} | {lost} |",
                        label,
                        p(50.0),
                        p(90.0),
                        p(99.0),
                        p(99.9),
                        p(100.0)
                    ),
                );
            }
            Err(e) => say(md, format!("| {} | {} | | | | | |", label, failure(e))),
        }
    }
    Bars {
        title: "UDP round trip through the box, percentiles",
        unit: "microseconds",
        groups: pcts.iter().map(|p| format!("p{p}")).collect(),
        series: lat_fwds
            .iter()
            .zip(&lats)
            .map(|((_, _, label), l)| Series {
                name: (*label).into(),
                color: color_of(label),
                values: pcts
                    .iter()
                    .map(|&q| l.as_ref().ok().and_then(|(v, _)| percentile(v, q)))
                    .collect(),
            })
            .collect(),
    }
}

fn main() {
    let mut args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let fds = raise_fd_limit();
    args.size_for(fds);
    Lab::clean_stale();
    ConntrackMax::recover();
    let lab = match Lab::build() {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("tg-rfc: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = sinks_up(&lab) {
        eprintln!("tg-rfc: {e}");
        std::process::exit(1);
    }
    for (ns, sysctls) in [
        (
            &lab.client,
            &[
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
                // Tens of thousands of connections per run: without a
                // cap, the TIME_WAIT sockets of one forwarder's run slow
                // the next one's connect() (the ephemeral port search).
                "net.ipv4.tcp_max_tw_buckets=2048",
            ][..],
        ),
        (
            &lab.server,
            &[
                "net.core.somaxconn=65535",
                "net.ipv4.tcp_max_syn_backlog=65535",
            ][..],
        ),
    ] {
        for s in sysctls {
            let _ = lab.exec(ns, &["sysctl", "-qw", s]);
        }
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("tg-rfc: {}: {e}", args.out.display());
        std::process::exit(1);
    }
    let mut md = String::new();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let generator = gen_backend(&lab).map_or_else(|e| format!("error: {e}"), |b| b.to_string());
    say(&mut md, "# RFC-style measurements (tg-rfc)".into());
    say(&mut md, String::new());
    say(
        &mut md,
        format!(
            "Run of {date}, kernel {}, {cpus} CPUs, veth lab (client -> box -> server namespaces){}, \
             generator: {generator}. Reproduce: `sudo ./x bench` (or `sudo ./target/release/tg-rfc`).",
            kernel.trim(),
            if args.quick { ", --quick" } else { "" }
        ),
    );
    say(&mut md, String::new());

    let mut charts = Vec::new();
    if args.wants("throughput") {
        charts.push(("throughput.svg", part_throughput(&lab, &args, &mut md)));
    }
    if args.wants("connections") {
        charts.push(("connections.svg", part_connections(&lab, &args, &mut md)));
    }
    if args.wants("latency") {
        charts.push(("latency.svg", part_latency(&lab, &args, &mut md)));
    }
    say(&mut md, String::new());
    say(
        &mut md,
        format!(
            "Plots: {} beside this file.",
            charts
                .iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let files = std::iter::once(("rfc.md", md)).chain(charts.iter().map(|(n, c)| (*n, c.svg())));
    for (name, body) in files {
        let path = args.out.join(name);
        if let Err(e) = std::fs::write(&path, body) {
            eprintln!("tg-rfc: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    eprintln!("tg-rfc: wrote {}", args.out.display());
    let failed = FAILED.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("tg-rfc: {failed} measurement(s) failed: see the tables");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tests_fit_the_open_file_limit() {
        let mut a = Args {
            out: PathBuf::new(),
            quick: false,
            teardown: 0,
            capacity: 0,
            only: Vec::new(),
        };
        a.size_for(1 << 20);
        assert_eq!((a.teardown, a.capacity), (10_000, 32_768));
        for fds in [20_000u64, 4096, 1024] {
            a.size_for(fds);
            let pairs = (fds - 512) / 2;
            assert!(a.teardown as u64 <= pairs, "{fds}: {}", a.teardown);
            assert!(
                u64::from(a.capacity) * 9 / 8 <= pairs,
                "{fds}: {}",
                a.capacity
            );
        }
        a.size_for(20_000);
        assert_eq!((a.teardown, a.capacity), (9_000, 8_192));
        a.quick = true;
        a.size_for(1 << 20);
        assert_eq!((a.teardown, a.capacity), (4_000, 8_192));
    }
}
