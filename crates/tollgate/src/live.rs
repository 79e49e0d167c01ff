//! `tollgate lab` and `tollgate run`: the dataplane on the lab's veth pairs or
//! on real interfaces, with the control socket and `/metrics`, until SIGINT
//! or SIGTERM; SIGHUP reloads the policy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conntrack::policy::Action;
use conntrack::shard::Sharding;
use conntrack::tuple::HashSecret;
use conntrack::Pipeline;
use dataplane::lab::Lab;
use dataplane::worker::{open_workers, Fabric};
use dataplane::{mailbox, Counters, WorkerConfig};

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
    // The handler only stores to atomics: async-signal-safe.
    dataplane::sys::on_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], on_signal);
}

/// 128 random bits from the kernel (zeros only if it cannot give them).
fn random_secret() -> HashSecret {
    let mut b = [0u8; 16];
    if !dataplane::sys::random(&mut b) {
        tracing::warn!("getrandom failed: the table hash is not keyed with a secret");
    }
    let (lo, hi) = b.split_at(8);
    HashSecret(
        u64::from_ne_bytes(lo.try_into().unwrap_or([0; 8])),
        u64::from_ne_bytes(hi.try_into().unwrap_or([0; 8])),
    )
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
    /// Starts one worker per queue (`queues` of them, queue i on worker i)
    /// on `inside`/`outside` (entered with `enter`), the control socket and
    /// the metrics server. With several workers each owns the connections
    /// the symmetric hash gives it; frames of others' connections and
    /// expectations cross between workers through lock-free queues.
    /// `strict`: a control socket or metrics address that cannot be used is
    /// an error (else a warning).
    pub fn start(
        cfg: &control::Config,
        inside: &str,
        outside: &str,
        queues: usize,
        enter: Enter,
        config_path: Option<PathBuf>,
        strict: bool,
    ) -> Result<Instance, String> {
        if strict {
            crate::daemon::check_socket_free(&cfg.control_socket)?;
        }
        let n = queues.clamp(1, 64);
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = crossbeam_channel::bounded(65_536);
        let mut conntrack = cfg.conntrack.clone();
        // A secret nobody outside knows keys the table and the owner hash:
        // crafted tuples cannot pile up in one bucket or on one worker.
        conntrack.hash_secret = random_secret();
        let mut mailboxes = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        let mut counters = Vec::with_capacity(n);
        for i in 0..n {
            let (mb, mut inbox) = mailbox(i, 1024).map_err(|e| format!("eventfd: {e}"))?;
            inbox.events = Some(events_tx.clone());
            mailboxes.push(mb);
            inboxes.push(inbox);
            counters.push(Arc::new(Counters::default()));
        }
        drop(events_tx);
        let fabric = (n > 1).then(|| {
            Fabric::new(
                Sharding::new(n, conntrack.hash_secret),
                mailboxes.iter().map(dataplane::Mailbox::wake_fd).collect(),
            )
        });
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
            offload: cfg.interfaces.as_ref().is_some_and(|i| i.offload),
            busy_poll: cfg.interfaces.as_ref().is_some_and(|i| i.busy_poll),
            mode: cfg
                .interfaces
                .as_ref()
                .map(|i| i.xdp_mode)
                .unwrap_or_default(),
        };
        let mut pipelines: Vec<Pipeline> = (0..n)
            .map(|_| Pipeline::new(conntrack.clone(), cfg.policy.clone()))
            .collect();
        if let Some(path) = &cfg.state_file {
            load_state(
                path,
                &mut pipelines,
                &Sharding::new(n, conntrack.hash_secret),
            );
        }
        let queue_ids: Vec<u32> = (0..n).map(|q| u32::try_from(q).unwrap_or(0)).collect();
        let cores: Vec<usize> = cfg
            .interfaces
            .as_ref()
            .map(|i| i.cores.clone())
            .unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state_path = cfg.state_file.clone();
        let (s, cs, cores_w) = (stop.clone(), counters.clone(), cores.clone());
        // The supervisor opens every socket in the interfaces' namespace,
        // starts the workers (which inherit it), and keeps the XDP programs
        // attached until they have all stopped.
        let thread = std::thread::Builder::new()
            .name("tg-supervisor".into())
            .spawn(move || -> Result<(), String> {
                let opened = enter().and_then(|()| {
                    // What the kernel and the interfaces offer, and what is chosen.
                    tracing::info!("{}", dataplane::probe::startup_line(&wc));
                    open_workers(&wc, &queue_ids, pipelines, cs, fabric).map_err(|e| e.to_string())
                });
                let (workers, programs) = match opened {
                    Ok(x) => {
                        tracing::info!(
                            "AF_XDP sockets in {} mode",
                            if x.0.iter().all(dataplane::Worker::zero_copy) {
                                "zero-copy"
                            } else {
                                "copy"
                            }
                        );
                        x
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let epoch = std::time::Instant::now();
                let mut threads = Vec::with_capacity(workers.len());
                let (state_tx, state_rx) = std::sync::mpsc::channel::<Vec<u8>>();
                // Each worker says whether it runs where it was told to.
                let (pinned_tx, pinned_rx) = std::sync::mpsc::channel::<Result<(), String>>();
                for ((i, mut w), inbox) in workers.into_iter().enumerate().zip(inboxes) {
                    let ws = s.clone();
                    let save = state_path.is_some().then(|| state_tx.clone());
                    let core = (!cores_w.is_empty()).then(|| cores_w[i % cores_w.len()]);
                    let pinned = pinned_tx.clone();
                    let t = std::thread::Builder::new()
                        .name(format!("tg-worker-{i}"))
                        .spawn(move || {
                            let placed = core.map_or(Ok(()), |cpu| pin(i, cpu));
                            let ok = placed.is_ok();
                            let _ = pinned.send(placed);
                            drop(pinned);
                            if !ok {
                                return;
                            }
                            w.run_from(&ws, Some(&inbox), epoch);
                            if let Some(tx) = save {
                                // Stopped (fast path flows taken back): the
                                // table as it is now, for the next start.
                                let now =
                                    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                                let mut out = Vec::new();
                                w.pipeline().conntrack().export_state(now, &mut out);
                                let _ = tx.send(out);
                            }
                        })
                        .map_err(|e| format!("worker thread: {e}"));
                    match t {
                        Ok(t) => threads.push(t),
                        Err(e) => {
                            s.store(true, Ordering::Relaxed);
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    }
                }
                drop(pinned_tx);
                // A worker that cannot run on its core refuses the start:
                // an operator who named cores wants them, not a worker
                // sharing another's.
                let placed: Result<(), String> = pinned_rx.iter().collect();
                if let Err(e) = placed {
                    s.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
                let _ = ready_tx.send(Ok(()));
                drop(state_tx);
                let mut r = Ok(());
                for t in threads {
                    if t.join().is_err() {
                        r = Err("a worker panicked".to_string());
                    }
                }
                drop(programs);
                if let Some(path) = &state_path {
                    save_state(path, state_rx.try_iter().collect());
                }
                r
            })
            .map_err(|e| format!("supervisor thread: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err("the workers did not start within 10 s".into());
            }
        }
        tracing::info!(
            "{n} worker(s) started: {inside} <-> {outside}, queues 0..{}{}",
            n - 1,
            if cores.is_empty() {
                String::new()
            } else {
                format!(", cores {cores:?}")
            }
        );
        let daemon = Daemon::new(
            mailboxes
                .into_iter()
                .zip(counters)
                .map(|(mailbox, counters)| WorkerHandle { mailbox, counters })
                .collect(),
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

/// The policy `tollgate lab` runs when given no config: the strict example (deploy/examples/replay-strict.toml).
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

fn counters_line(ws: &[Arc<Counters>]) -> String {
    let sum = |f: &dyn Fn(&Counters) -> &std::sync::atomic::AtomicU64| -> u64 {
        ws.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    };
    let mut line = format!(
        "inside->outside: rx {} fwd {} drop {} | outside->inside: rx {} fwd {} drop {} | tx full {}",
        sum(&|c| &c.rx[0]),
        sum(&|c| &c.forwarded[0]),
        sum(&|c| &c.dropped[0]),
        sum(&|c| &c.rx[1]),
        sum(&|c| &c.forwarded[1]),
        sum(&|c| &c.dropped[1]),
        sum(&|c| &c.tx_full)
    );
    if ws.len() > 1 {
        line.push_str(&format!(
            " | {} workers: handoffs {} expectation messages {}",
            ws.len(),
            sum(&|c| &c.handoffs),
            sum(&|c| &c.expect_msgs[0])
        ));
    }
    line
}

/// Builds the lab, runs Tollgate on it, drives ping and iperf3 through it,
/// prints counters and tears everything down (also on Ctrl-C).
pub fn lab(
    cfg: &control::Config,
    config_path: Option<PathBuf>,
    seconds: u64,
    queues: u32,
) -> Result<(), String> {
    install_signals();
    Lab::clean_stale();
    let lab = Arc::new(Lab::build_with(queues).map_err(|e| e.to_string())?);
    println!(
        "lab: client {} (10.77.0.1, fd77::1) <-> [{}: {} | {}] <-> server {} (10.77.0.2, fd77::2)",
        lab.client, lab.boxns, lab.inside, lab.outside, lab.server
    );
    let l = lab.clone();
    let enter: Enter = Arc::new(move || l.enter_box().map_err(|e| e.to_string()));
    let running = Instance::start(
        cfg,
        &lab.inside,
        &lab.outside,
        queues as usize,
        enter,
        config_path,
        false,
    )?;
    if let Some(c) = &running.control {
        println!(
            "control: tollgate ct list --socket {}   (also ct stats, ct events, expect list)",
            c.path().display()
        );
    }
    if let Some(m) = running.metrics {
        println!("metrics: http://{m}/metrics");
    }
    let counters: Vec<Arc<Counters>> = running
        .daemon
        .workers
        .iter()
        .map(|w| w.counters.clone())
        .collect();
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

/// Receive queues of an interface (1 if sysfs does not say).
fn rx_queues(iface: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
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
    let queues = match ifs.queues {
        control::Queues::Count(n) => n as usize,
        control::Queues::All => rx_queues(&ifs.inside).min(rx_queues(&ifs.outside)),
    };
    let enter: Enter = Arc::new(|| Ok(()));
    let inst = Instance::start(
        cfg,
        &ifs.inside,
        &ifs.outside,
        queues,
        enter,
        Some(config_path),
        true,
    )?;
    println!(
        "tollgate: bridging {} <-> {} ({} queue(s), one worker each); control {}{}; Ctrl-C stops, SIGHUP reloads",
        ifs.inside,
        ifs.outside,
        inst.daemon.workers.len(),
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
    let counters: Vec<Arc<Counters>> = inst
        .daemon
        .workers
        .iter()
        .map(|w| w.counters.clone())
        .collect();
    let r = inst.finish();
    println!("final counters: {}", counters_line(&counters));
    r
}

/// Reads the connections a clean stop saved to `path` into the pipelines of
/// their owners, then removes the file (a later crash must not bring back
/// connections this instance may have ended). A missing file is a first
/// start; an unreadable one is logged and left for the operator.
fn load_state(path: &std::path::Path, pipelines: &mut [Pipeline], sharding: &Sharding) {
    use conntrack::table::state;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("state file {}: {e}; starting empty", path.display());
            return;
        }
    };
    let recs = match state::records(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("state file {}: {e}; starting empty", path.display());
            return;
        }
    };
    let (mut done, mut skipped) = (0, 0);
    for r in recs.chunks_exact(state::RECORD) {
        let owner = match state::record_tuple(r) {
            Some(t) if pipelines.len() > 1 => sharding.owner_of_tuple(&t),
            _ => 0,
        };
        let Some(p) = pipelines.get_mut(owner) else {
            continue;
        };
        let (d, s) = p.conntrack_mut().import_state(r, 0);
        done += d;
        skipped += s;
    }
    tracing::info!(
        "state file {}: {done} connection(s) restored, {skipped} skipped",
        path.display()
    );
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(
            "state file {}: not removed after loading: {e}",
            path.display()
        );
    }
}

/// Writes the workers' exported records to `path` (a temporary file renamed
/// over it, so a reader never sees half a file).
fn save_state(path: &std::path::Path, parts: Vec<Vec<u8>>) {
    use conntrack::table::state;
    let count: usize = parts.iter().map(|p| p.len() / state::RECORD).sum();
    let mut file = state::header(count).to_vec();
    for p in parts {
        file.extend_from_slice(&p);
    }
    let tmp = path.with_extension("tmp");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, &file))
        .and_then(|()| std::fs::rename(&tmp, path));
    match written {
        Ok(()) => tracing::info!("state file {}: {count} connection(s) saved", path.display()),
        Err(e) => tracing::warn!("state file {}: not saved: {e}", path.display()),
    }
}

/// Pins the calling thread (worker `i`) to core `cpu`, or says why not.
fn pin(i: usize, cpu: usize) -> Result<(), String> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Ok(());
    }
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    Err(format!(
        "cannot pin worker {i} to core {cpu} (this process may run on cores {allowed:?}): \
         fix [interfaces] cores"
    ))
}
