//! `tollgate lab` and `tollgate run`: the dataplane on the lab's veth pairs or
//! on real interfaces, with the control socket and `/metrics`, until SIGINT
//! or SIGTERM; SIGHUP reloads the policy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conntrack::policy::Action;
use conntrack::Pipeline;
use dataplane::lab::Lab;
use dataplane::{mailbox, Counters, Worker, WorkerConfig};

use crate::daemon::{ControlSocket, Daemon, WorkerHandle};

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

fn install_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics, which is
        // async-signal-safe; `signal` replaces the default disposition.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Moves the calling (worker) thread where its interfaces are.
pub type Enter = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A running instance: workers, control socket, metrics.
pub struct Instance {
    /// The control plane.
    pub daemon: Arc<Daemon>,
    /// Where `/metrics` is served, if it is.
    pub metrics: Option<SocketAddr>,
    /// The control socket, if it could be opened.
    pub control: Option<ControlSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Instance {
    /// Starts one worker on queue 0 of `inside`/`outside` (entered with
    /// `enter`), the control socket and the metrics server. `strict`: a
    /// control socket or metrics address that cannot be used is an error
    /// (else a warning).
    pub fn start(
        cfg: &control::Config,
        inside: &str,
        outside: &str,
        enter: Enter,
        config_path: Option<PathBuf>,
        strict: bool,
    ) -> Result<Instance, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = crossbeam_channel::bounded(65_536);
        let (mb, mut inbox) = mailbox(0, 1024).map_err(|e| format!("eventfd: {e}"))?;
        inbox.events = Some(events_tx);
        let counters = Arc::new(Counters::default());
        let wc = WorkerConfig {
            inside: inside.to_string(),
            outside: outside.to_string(),
            queue: 0,
            non_ip: if cfg.non_ip == Action::Accept {
                Action::Accept
            } else {
                Action::Drop
            },
            bypass: false,
        };
        let pipeline = Pipeline::new(cfg.conntrack.clone(), cfg.policy.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, c) = (stop.clone(), counters.clone());
        let core = cfg
            .interfaces
            .as_ref()
            .and_then(|i| i.cores.first().copied());
        let thread = std::thread::Builder::new()
            .name("tg-worker-0".into())
            .spawn(move || -> Result<(), String> {
                let opened = enter().and_then(|()| {
                    if let Some(cpu) = core {
                        Lab::pin(cpu);
                    }
                    Worker::open(&wc, pipeline, c).map_err(|e| e.to_string())
                });
                let mut w = match opened {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                w.run_with(&s, Some(&inbox));
                Ok(())
            })
            .map_err(|e| format!("worker thread: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err("the worker did not start within 10 s".into());
            }
        }
        tracing::info!(
            "worker 0 started: {inside} <-> {outside}, queue 0{}",
            core.map_or_else(String::new, |c| format!(", core {c}"))
        );
        let daemon = Daemon::new(
            vec![WorkerHandle {
                mailbox: mb,
                counters,
            }],
            config_path,
            events_rx,
        );
        let mut inst = Instance {
            daemon: daemon.clone(),
            metrics: None,
            control: None,
            stop: stop.clone(),
            threads: vec![thread],
        };
        match daemon.serve_control(&cfg.control_socket, stop.clone()) {
            Ok(c) => inst.control = Some(c),
            Err(e) if strict => return Err(e),
            Err(e) => tracing::warn!("no control socket: {e}"),
        }
        if let Some(addr) = cfg.metrics {
            match crate::metrics::serve(daemon, addr, stop) {
                Ok(a) => inst.metrics = Some(a),
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!("no metrics: {e}"),
            }
        }
        Ok(inst)
    }

    /// Worker 0's counters.
    pub fn counters(&self) -> &Counters {
        &self.daemon.workers[0].counters
    }

    /// Stops everything and waits for the workers.
    pub fn finish(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => r = Err(e),
                Err(_) => r = Err("worker panicked".into()),
            }
        }
        self.control = None;
        r
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The policy `tollgate lab` runs when given no config: the DESIGN.md example.
pub const LAB_CONFIG: &str = r#"
[control]
socket = "/run/tollgate/lab.sock"

[metrics]
listen = "127.0.0.1:9477"

[policy]
default = "drop"

[[rule]]
state = ["invalid"]
action = "drop"

[[rule]]
state = ["established", "related"]
action = "accept"

[[rule]]
state = ["untracked"]
action = "accept"

[[rule]]
from = "inside"
state = ["new"]
proto = "tcp"
dport = 21
helper = "ftp"
action = "accept"

[[rule]]
from = "inside"
state = ["new"]
action = "accept"
"#;

fn counters_line(c: &Counters) -> String {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "inside->outside: rx {} fwd {} drop {} | outside->inside: rx {} fwd {} drop {} | tx full {}",
        l(&c.rx[0]),
        l(&c.forwarded[0]),
        l(&c.dropped[0]),
        l(&c.rx[1]),
        l(&c.forwarded[1]),
        l(&c.dropped[1]),
        l(&c.tx_full)
    )
}

/// Builds the lab, runs Tollgate on it, drives ping and iperf3 through it,
/// prints counters and tears everything down (also on Ctrl-C).
pub fn lab(
    cfg: &control::Config,
    config_path: Option<PathBuf>,
    seconds: u64,
) -> Result<(), String> {
    install_signals();
    Lab::clean_stale();
    let lab = Arc::new(Lab::build().map_err(|e| e.to_string())?);
    println!(
        "lab: client {} (10.77.0.1, fd77::1) <-> [{}: {} | {}] <-> server {} (10.77.0.2, fd77::2)",
        lab.client, lab.boxns, lab.inside, lab.outside, lab.server
    );
    let l = lab.clone();
    let enter: Enter = Arc::new(move || l.enter_box().map_err(|e| e.to_string()));
    let running = Instance::start(cfg, &lab.inside, &lab.outside, enter, config_path, false)?;
    if let Some(c) = &running.control {
        println!(
            "control: tollgate ct list --socket {}   (also ct stats, ct events, expect list)",
            c.path().display()
        );
    }
    if let Some(m) = running.metrics {
        println!("metrics: http://{m}/metrics");
    }
    let counters = running.daemon.workers[0].counters.clone();
    std::thread::sleep(Duration::from_millis(500));
    let step = |what: &str, ns: &str, args: &[&str]| {
        if STOP.load(Ordering::Relaxed) {
            return;
        }
        let (ok, out) = lab.exec(ns, args);
        println!(
            "\n== {what}: {}",
            if ok { "ok" } else { "FAILED (or blocked)" }
        );
        for line in out.lines().filter(|l| !l.trim().is_empty()).take(12) {
            println!("   {line}");
        }
        println!("   counters: {}", counters_line(&counters));
    };
    step(
        "ping inside -> outside",
        &lab.client,
        &["ping", "-c", "3", "-W", "2", "10.77.0.2"],
    );
    step(
        "ping6 inside -> outside",
        &lab.client,
        &["ping", "-6", "-c", "3", "-W", "2", "fd77::2"],
    );
    step(
        "ping outside -> inside (policy drops it)",
        &lab.server,
        &["ping", "-c", "2", "-W", "1", "10.77.0.1"],
    );
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.server, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut server) = server {
        std::thread::sleep(Duration::from_millis(300));
        step(
            "iperf3 TCP inside -> outside",
            &lab.client,
            &["iperf3", "-c", "10.77.0.2", "-t", "3"],
        );
        let _ = server.kill();
        let _ = server.wait();
    }
    println!("\nrunning for {seconds} s more (Ctrl-C stops); traffic between the namespaces goes through Tollgate:");
    println!("   ip netns exec {} ping 10.77.0.2", lab.client);
    for _ in 0..seconds * 10 {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        if RELOAD.swap(false, Ordering::Relaxed) {
            report_reload(&running.daemon);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = running.finish();
    println!("\nfinal counters: {}", counters_line(&counters));
    drop(lab);
    println!("lab removed");
    r
}

/// Watches the workers' trouble counters and logs what grew, at most once
/// per period: the packet path itself never logs.
struct Watch {
    last: Vec<[u64; 4]>,
    at: std::time::Instant,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            last: Vec::new(),
            at: std::time::Instant::now(),
        }
    }

    fn check(&mut self, d: &Daemon, period: Duration) {
        if self.at.elapsed() < period {
            return;
        }
        self.at = std::time::Instant::now();
        self.last.resize(d.workers.len(), [0; 4]);
        for (i, w) in d.workers.iter().enumerate() {
            let c = &w.counters;
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let ring_drops: u64 = c.rings.iter().map(|r| l(&r[0]) + l(&r[3])).sum();
            let now = [
                l(&c.tx_full),
                l(&c.events_dropped),
                ring_drops,
                l(&c.core.stats[4]),
            ];
            let d: Vec<u64> = now
                .iter()
                .zip(self.last[i])
                .map(|(n, o)| n.saturating_sub(o))
                .collect();
            if d.iter().any(|&x| x > 0) {
                tracing::warn!(
                    worker = i,
                    "in the last {} s: {} frames lost to a full TX ring, {} events dropped, {} frames dropped by the kernel at the AF_XDP rings, {} new connections refused (table full)",
                    period.as_secs(),
                    d[0],
                    d[1],
                    d[2],
                    d[3]
                );
            }
            self.last[i] = now;
        }
    }
}

fn report_reload(d: &Daemon) {
    match d.reload() {
        Ok(n) => println!("policy reloaded: {n} rules"),
        Err(e) => eprintln!("{e}"),
    }
}

/// `tollgate run`: one worker on queue 0 of the configured interfaces, the
/// control socket and `/metrics`, until SIGINT/SIGTERM; SIGHUP reloads the
/// policy (more queues and cores come with the many-cores issue).
pub fn run(cfg: &control::Config, config_path: PathBuf) -> Result<(), String> {
    let ifs = cfg
        .interfaces
        .as_ref()
        .ok_or("the config has no [interfaces] section")?;
    for name in [&ifs.inside, &ifs.outside] {
        let path = format!("/sys/class/net/{name}/operstate");
        let state = std::fs::read_to_string(&path)
            .map_err(|_| format!("interface {name} does not exist"))?;
        if state.trim() == "down" {
            return Err(format!("interface {name} is down (ip link set {name} up)"));
        }
    }
    install_signals();
    let enter: Enter = Arc::new(|| Ok(()));
    let inst = Instance::start(
        cfg,
        &ifs.inside,
        &ifs.outside,
        enter,
        Some(config_path),
        true,
    )?;
    println!(
        "tollgate: bridging {} <-> {} (queue 0); control {}{}; Ctrl-C stops, SIGHUP reloads",
        ifs.inside,
        ifs.outside,
        inst.control
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| c.path().display().to_string()),
        inst.metrics
            .map_or_else(String::new, |m| format!(", metrics http://{m}/metrics"))
    );
    tracing::info!("running");
    let mut watch = Watch::new();
    while !STOP.load(Ordering::Relaxed) {
        if RELOAD.swap(false, Ordering::Relaxed) {
            report_reload(&inst.daemon);
        }
        watch.check(&inst.daemon, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let counters = inst.daemon.workers[0].counters.clone();
    let r = inst.finish();
    println!("final counters: {}", counters_line(&counters));
    r
}
