//! `tollgate lab` and `tollgate run`: the dataplane on the lab's veth pairs or
//! on real interfaces, until SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conntrack::policy::Action;
use conntrack::Pipeline;
use dataplane::lab::Lab;
use dataplane::{Counters, Worker, WorkerConfig};

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `signal` replaces the default disposition.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The policy `tollgate lab` runs when given no config: the DESIGN.md example.
pub const LAB_CONFIG: &str = r#"
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

/// Stops the worker on drop (normal exit, error or panic), before the lab goes.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("worker panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Builds the lab, runs Tollgate on it, drives ping and iperf3 through it,
/// prints counters and tears everything down (also on Ctrl-C).
pub fn lab(cfg: &control::Config, seconds: u64) -> Result<(), String> {
    install_signals();
    Lab::clean_stale();
    let lab = Arc::new(Lab::build().map_err(|e| e.to_string())?);
    println!(
        "lab: client {} (10.77.0.1, fd77::1) <-> [{}: {} | {}] <-> server {} (10.77.0.2, fd77::2)",
        lab.client, lab.boxns, lab.inside, lab.outside, lab.server
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let (l, s, c, conntrack, policy, non_ip) = (
        lab.clone(),
        stop.clone(),
        counters.clone(),
        cfg.conntrack.clone(),
        cfg.policy.clone(),
        cfg.non_ip,
    );
    let thread = std::thread::spawn(move || -> Result<(), String> {
        l.enter_box().map_err(|e| e.to_string())?;
        let wc = WorkerConfig {
            inside: l.inside.clone(),
            outside: l.outside.clone(),
            queue: 0,
            non_ip,
            bypass: false,
        };
        let mut w =
            Worker::open(&wc, Pipeline::new(conntrack, policy), c).map_err(|e| e.to_string())?;
        w.run(&s);
        Ok(())
    });
    let running = Running {
        stop: stop.clone(),
        thread: Some(thread),
    };
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
    for _ in 0..seconds {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let r = running.finish();
    println!("\nfinal counters: {}", counters_line(&counters));
    drop(lab);
    println!("lab removed");
    r
}

/// `tollgate run`: one worker on queue 0 of the configured interfaces until
/// SIGINT/SIGTERM (more queues and cores come with the many-cores issue).
pub fn run(cfg: &control::Config) -> Result<(), String> {
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
    let counters = Arc::new(Counters::default());
    let wc = WorkerConfig {
        inside: ifs.inside.clone(),
        outside: ifs.outside.clone(),
        queue: 0,
        non_ip: if cfg.non_ip == Action::Accept {
            Action::Accept
        } else {
            Action::Drop
        },
        bypass: false,
    };
    let mut w = Worker::open(
        &wc,
        Pipeline::new(cfg.conntrack.clone(), cfg.policy.clone()),
        counters.clone(),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "tollgate: bridging {} <-> {} (queue 0); Ctrl-C stops",
        ifs.inside, ifs.outside
    );
    w.run(&STOP);
    println!("final counters: {}", counters_line(&counters));
    Ok(())
}
