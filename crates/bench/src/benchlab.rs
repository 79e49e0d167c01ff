//! What the lab benches (`tg-bench`, `tg-rfc`) share: the forwarders they put
//! between the lab's client and server (the Linux bridge with and without
//! conntrack, Open vSwitch, Tollgate with and without the fast path, plain XDP
//! redirect), the generator's frames and its own ceiling, and the server's
//! ingress counter. Root only; everything runs inside the lab's namespaces.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use conntrack::{Config, Pipeline};

use crate::gen::{Backend, Ceiling, Generator};
use dataplane::lab::Lab;
use dataplane::{Counters, Worker};

/// What forwards between the lab's two sides.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Forwarder {
    /// Linux bridge + br_netfilter + an nftables ruleset like the policy;
    /// `rps`: forwarding steered to CPU 1 (else it runs on CPU 0, inline with
    /// the generator's transmissions).
    Kernel {
        /// Receive processing steered to CPU 1.
        rps: bool,
    },
    /// The plain Linux bridge: no conntrack, no policy (on CPU 0).
    Bridge,
    /// Tollgate's full pipeline, its worker on CPU 1.
    Tollgate,
    /// Tollgate's worker forwarding without looking.
    Bare,
    /// Two Tollgate workers (CPU 1 and CPU 0, beside the generator); every
    /// frame arrives on queue 0, the flows worker 1 owns are handed over.
    Two,
    /// Open vSwitch's userspace datapath with AF_XDP ports and `ct()` flows
    /// like the policy, its PMD thread on CPU 1.
    Ovs,
    /// Tollgate with the XDP fast path (its worker on CPU 1).
    Offload,
    /// Plain XDP_REDIRECT between the ports: no state, no checks.
    Xdp,
}

impl Forwarder {
    /// A name for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Forwarder::Kernel { rps: false } => "Linux bridge + conntrack",
            Forwarder::Kernel { rps: true } => "Linux bridge + conntrack (RPS)",
            Forwarder::Bridge => "Linux bridge, no conntrack",
            Forwarder::Tollgate => "Tollgate",
            Forwarder::Bare => "Tollgate bare forwarding",
            Forwarder::Two => "Tollgate, 2 workers",
            Forwarder::Ovs => "Open vSwitch",
            Forwarder::Offload => "Tollgate + XDP fast path",
            Forwarder::Xdp => "plain XDP redirect",
        }
    }

    /// Whether `TG_BENCH_ONLY` (comma-separated prefixes of the variants'
    /// names, e.g. `Offload,Xdp`) leaves this one out.
    pub fn skipped(self) -> bool {
        match std::env::var("TG_BENCH_ONLY") {
            Ok(only) => {
                let name = format!("{self:?}");
                !only.split(',').any(|o| name.starts_with(o.trim()))
            }
            Err(_) => false,
        }
    }
}

/// How a forwarder is set up.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Tollgate's table size (`[conntrack] max_entries`).
    pub max_entries: u32,
    /// Tollgate's workers spin instead of sleeping (`busy_poll`).
    pub busy_poll: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_entries: 262_144,
            busy_poll: false,
        }
    }
}

/// A forwarder running in the lab's box namespace; stopped and removed by
/// [`Running::stop`] or when dropped.
pub struct Running {
    lab: Arc<Lab>,
    fwd: Forwarder,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<Option<String>, String>>>,
    ovs: Option<Ovs>,
    kernel: bool,
}

impl Running {
    /// Sets `fwd` up between the lab's sides and waits until it runs.
    pub fn start(lab: &Arc<Lab>, fwd: Forwarder, opts: Options) -> Result<Running, String> {
        let stop = Arc::new(AtomicBool::new(false));
        // The forwarder threads say when their sockets and programs are in
        // place: traffic sent before would be lost (and a flow whose first
        // packets were lost is never set up as the bench means it).
        let (ready, up) = std::sync::mpsc::channel::<()>();
        let mut run = Running {
            lab: lab.clone(),
            fwd,
            stop: stop.clone(),
            worker: None,
            ovs: None,
            kernel: false,
        };
        match fwd {
            Forwarder::Kernel { rps } => {
                set_rps(lab, if rps { "2" } else { "0" });
                run.kernel = true;
                kernel_bridge_up(lab, true)?;
            }
            Forwarder::Bridge => {
                set_rps(lab, "0");
                run.kernel = true;
                kernel_bridge_up(lab, false)?;
            }
            Forwarder::Two => {
                set_rps(lab, "0");
                run.worker = Some(two_up(lab, opts, &stop, ready));
            }
            Forwarder::Ovs => {
                set_rps(lab, "0");
                run.ovs = Some(Ovs::up(lab)?);
            }
            Forwarder::Tollgate | Forwarder::Bare | Forwarder::Offload => {
                set_rps(lab, "0");
                run.worker = Some(tollgate_up(
                    lab,
                    fwd == Forwarder::Bare,
                    fwd == Forwarder::Offload,
                    opts,
                    &stop,
                    ready,
                ));
            }
            Forwarder::Xdp => {
                set_rps(lab, "0");
                run.worker = Some(xdp_up(lab, &stop, ready));
            }
        }
        if run.worker.is_some() {
            // Until the thread is ready, or gone (it failed: said below).
            let _ = up.recv_timeout(Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(400));
        if run.worker.as_ref().is_some_and(JoinHandle::is_finished) {
            // It failed to start: say why.
            return Err(run.stop().err().unwrap_or_else(|| "stopped".into()));
        }
        Ok(run)
    }

    /// Which forwarder this is.
    pub fn forwarder(&self) -> Forwarder {
        self.fwd
    }

    /// Stops and removes the forwarder. Returns what it reported on the
    /// way out (the fast path's counters), or why it failed.
    pub fn stop(mut self) -> Result<Option<String>, String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Option<String>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Ok(None);
        if let Some(w) = self.worker.take() {
            out = w.join().map_err(|_| "worker panicked".to_string())?;
        }
        if self.kernel {
            self.kernel = false;
            kernel_down(&self.lab);
        }
        self.ovs = None;
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The MAC address of a lab endpoint's `eth0`.
pub fn mac(lab: &Lab, ns: &str) -> [u8; 6] {
    let (_, out) = lab.exec(ns, &["cat", "/sys/class/net/eth0/address"]);
    let mut m = [0u8; 6];
    for (i, b) in out.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).unwrap_or(0);
    }
    m
}

/// An Ethernet/IPv4/UDP frame of `size` bytes on the wire (the 4-byte FCS
/// counted, as RFC 2544 counts frame sizes; the frame handed to the device is
/// `size - 4` bytes) from the client to the server, or the other way
/// (`reverse`). Ports 1024 -> 5000; the generator rewrites them per flow.
/// `size` is clamped to 64..=1518.
pub fn frame(lab: &Lab, reverse: bool, size: usize) -> Vec<u8> {
    let size = size.clamp(64, 1518);
    let payload = vec![0u8; size - 4 - 14 - 20 - 8];
    let (c, s) = ([10, 77, 0, 1], [10, 77, 0, 2]);
    let ip = if reverse {
        conntrack::build::Pkt::udp4(s, 5000, c, 1024)
    } else {
        conntrack::build::Pkt::udp4(c, 1024, s, 5000)
    }
    .payload(&payload)
    .build();
    let (dst, src) = if reverse {
        (mac(lab, &lab.client), mac(lab, &lab.server))
    } else {
        (mac(lab, &lab.server), mac(lab, &lab.client))
    };
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// Makes each end drop the generator's flood at ingress instead of
/// answering it; the server counts what arrives ([`server_count`]).
pub fn sinks_up(lab: &Lab) -> Result<(), String> {
    for (ns, rule) in [
        (&lab.server, "udp dport 5000-5010 counter name c drop"),
        (&lab.client, "udp sport 5000-5010 drop"),
    ] {
        let script = format!(
            "add table netdev tgb; add counter netdev tgb c; \
             add chain netdev tgb in {{ type filter hook ingress device eth0 priority 0; }}; \
             add rule netdev tgb in {rule}"
        );
        let (ok, out) = lab.exec(ns, &["nft", &script]);
        if !ok {
            return Err(format!("nft in {ns}: {out}"));
        }
    }
    Ok(())
}

/// Frames the server's ingress counter has dropped so far.
pub fn server_count(lab: &Lab) -> Result<u64, String> {
    let (ok, out) = lab.exec(
        &lab.server,
        &["nft", "list", "counter", "netdev", "tgb", "c"],
    );
    if !ok {
        return Err(format!("reading the server's counter: {out}"));
    }
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no packet count in {out:?}"))
}

/// The bridge, with br_netfilter conntrack and the policy when `conntrack`:
/// invalid dropped, established and related accepted, new only from the
/// client.
fn kernel_bridge_up(lab: &Lab, conntrack: bool) -> Result<(), String> {
    let b = &lab.boxns;
    let mut cmds: Vec<Vec<&str>> = vec![
        vec!["ip", "link", "add", "tgbr", "type", "bridge"],
        vec!["ip", "link", "set", &lab.inside, "master", "tgbr"],
        vec!["ip", "link", "set", &lab.outside, "master", "tgbr"],
        vec!["ip", "link", "set", "tgbr", "up"],
        // veth drops frames XDP_TX'd into it unless the receiving end runs
        // NAPI, which takes an XDP program (Tollgate's) or GRO.
        vec!["ethtool", "-K", &lab.inside, "gro", "on"],
        vec!["ethtool", "-K", &lab.outside, "gro", "on"],
    ];
    if conntrack {
        // Built in on some kernels, a module on others.
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "br_netfilter"])
            .status();
        cmds.push(vec![
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=1",
        ]);
        cmds.push(vec![
            "nft",
            "add table inet tgk; add chain inet tgk f { type filter hook forward priority 0; policy drop; }; \
             add rule inet tgk f ct state invalid drop; \
             add rule inet tgk f ct state established,related accept; \
             add rule inet tgk f ip saddr 10.77.0.1 ct state new accept; \
             add rule inet tgk f ip6 saddr fd77::1 ct state new accept",
        ]);
    } else {
        cmds.push(vec![
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
        ]);
    }
    for c in cmds {
        let (ok, out) = lab.exec(b, &c);
        if !ok {
            return Err(format!("{}: {out}", c.join(" ")));
        }
    }
    Ok(())
}

fn kernel_down(lab: &Lab) {
    let _ = lab.exec(&lab.boxns, &["ip", "link", "del", "tgbr"]);
    let _ = lab.exec(&lab.boxns, &["nft", "delete", "table", "inet", "tgk"]);
    let _ = lab.exec(&lab.boxns, &["conntrack", "-F"]);
}

/// Steers the box's receive processing to the CPUs in `mask` (RPS).
fn set_rps(lab: &Lab, mask: &str) {
    for dev in [&lab.inside, &lab.outside] {
        let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
        let _ = lab.exec(&lab.boxns, &["sh", "-c", &format!("echo {mask} > {path}")]);
    }
}

fn new_pipeline(opts: Options) -> Pipeline {
    Pipeline::new(
        Config {
            max_entries: opts.max_entries,
            ..Config::default()
        },
        dataplane::lab::strict_policy(),
    )
}

/// Retries `open` for a while: the previous measurement's sockets are
/// released by the kernel a little after they are closed.
fn open_retrying<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let mut tries = 0;
    loop {
        match open() {
            Ok(x) => return Ok(x),
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("benchlab: {e}; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Attaches the plain XDP forwarder in the box namespace until `stop`.
fn xdp_up(
    lab: &Arc<Lab>,
    stop: &Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> JoinHandle<Result<Option<String>, String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || {
        l.enter_box().map_err(|e| e.to_string())?;
        let f =
            crate::fwd::PlainForwarder::attach(&l.inside, &l.outside).map_err(|e| e.to_string())?;
        let _ = ready.send(());
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(f);
        Ok(None)
    })
}

/// Tollgate's worker on CPU 1 in the box namespace until `stop`.
fn tollgate_up(
    lab: &Arc<Lab>,
    bypass: bool,
    offload: bool,
    opts: Options,
    stop: &Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> JoinHandle<Result<Option<String>, String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || {
        Lab::pin(1);
        l.enter_box().map_err(|e| e.to_string())?;
        let cfg = l.worker_config(bypass, offload, opts.busy_poll);
        let mut w = open_retrying(|| {
            Worker::open(&cfg, new_pipeline(opts), Arc::new(Counters::default()))
        })?;
        let _ = ready.send(());
        w.run(&s);
        Ok(w.offload_counters().map(|o| {
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            format!(
                "fast path: {} installed, {} activated, {} forced, {} packets, {} install failures",
                l(&o.installed),
                l(&o.activated),
                l(&o.forced),
                l(&o.packets),
                l(&o.install_failed)
            )
        }))
    })
}

/// Two workers over queues 0 and 1 with handoffs between them.
fn two_up(
    lab: &Arc<Lab>,
    opts: Options,
    stop: &Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> JoinHandle<Result<Option<String>, String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || {
        l.enter_box().map_err(|e| e.to_string())?;
        let cfg = l.worker_config(false, false, opts.busy_poll);
        let mut boxes = Vec::new();
        for i in 0..2 {
            boxes.push(dataplane::mailbox(i, 64).map_err(|e| e.to_string())?);
        }
        let fabric = dataplane::worker::Fabric::new(
            conntrack::shard::Sharding::new(2, conntrack::tuple::HashSecret(1, 2)),
            boxes.iter().map(|(m, _)| m.wake_fd()).collect(),
        );
        let (workers, programs) = open_retrying(|| {
            let pipes = vec![new_pipeline(opts), new_pipeline(opts)];
            let cs = vec![Arc::new(Counters::default()), Arc::new(Counters::default())];
            dataplane::worker::open_workers(&cfg, &[0, 1], pipes, cs, Some(fabric.clone()))
        })?;
        let _ = ready.send(());
        let epoch = std::time::Instant::now();
        let mut threads = Vec::new();
        for ((i, mut w), (_, inbox)) in workers.into_iter().enumerate().zip(boxes) {
            let s = s.clone();
            threads.push(std::thread::spawn(move || {
                Lab::pin(1 - i);
                w.run_from(&s, Some(&inbox), epoch);
            }));
        }
        for t in threads {
            let _ = t.join();
        }
        drop(programs);
        Ok(None)
    })
}

/// Open vSwitch run from a private directory inside the box namespace;
/// stopped (ports removed, XDP programs detached) when dropped.
struct Ovs {
    dir: String,
    boxns: String,
}

impl Ovs {
    /// Starts ovsdb-server and ovs-vswitchd, a netdev bridge over the lab's
    /// two interfaces as AF_XDP ports (native mode; copy on veth) and the
    /// flows: invalid dropped, established and related both ways, new only
    /// from the inside, committed.
    fn up(lab: &Lab) -> Result<Ovs, String> {
        let dir = format!("/tmp/tg-bench-ovs-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
        let ovs = Ovs {
            dir: dir.clone(),
            boxns: lab.boxns.clone(),
        };
        let env = [
            format!("OVS_RUNDIR={dir}"),
            format!("OVS_DBDIR={dir}"),
            format!("OVS_LOGDIR={dir}"),
        ];
        let db = format!("{dir}/conf.db");
        let sock = format!("unix:{dir}/db.sock");
        let mgmt = format!("unix:{dir}/tgovs.mgmt");
        let (i, o) = (&lab.inside, &lab.outside);
        let flows = format!(
            "table=0,priority=100,arp,actions=NORMAL\n\
             table=0,priority=50,ip,ct_state=-trk,actions=ct(table=1)\n\
             table=0,priority=50,ipv6,ct_state=-trk,actions=ct(table=1)\n\
             table=0,priority=0,actions=drop\n\
             table=1,priority=100,ct_state=+trk+inv,actions=drop\n\
             table=1,priority=90,in_port={i},ct_state=+trk+est,actions=output:{o}\n\
             table=1,priority=90,in_port={o},ct_state=+trk+est,actions=output:{i}\n\
             table=1,priority=90,in_port={i},ct_state=+trk+rel,actions=output:{o}\n\
             table=1,priority=90,in_port={o},ct_state=+trk+rel,actions=output:{i}\n\
             table=1,priority=80,ip,in_port={i},ct_state=+trk+new,actions=ct(commit),output:{o}\n\
             table=1,priority=80,ipv6,in_port={i},ct_state=+trk+new,actions=ct(commit),output:{o}\n\
             table=1,priority=0,actions=drop\n"
        );
        let flows_file = format!("{dir}/flows.txt");
        std::fs::write(&flows_file, flows).map_err(|e| format!("{flows_file}: {e}"))?;
        let vsctl = |args: &[&str]| -> Vec<String> {
            let mut v = vec!["ovs-vsctl".to_string(), format!("--db={sock}")];
            v.extend(args.iter().map(|a| (*a).to_string()));
            v
        };
        let port = |p: &str| {
            vsctl(&[
                "add-port",
                "tgovs",
                p,
                "--",
                "set",
                "interface",
                p,
                "type=afxdp",
                "options:xdp-mode=native",
            ])
        };
        let cmds: Vec<Vec<String>> = vec![
            vec![
                "ovsdb-tool".into(),
                "create".into(),
                db.clone(),
                "/usr/share/openvswitch/vswitch.ovsschema".into(),
            ],
            vec![
                "ovsdb-server".into(),
                format!("--remote=punix:{dir}/db.sock"),
                format!("--pidfile={dir}/ovsdb-server.pid"),
                "--detach".into(),
                format!("--log-file={dir}/ovsdb-server.log"),
                db,
            ],
            vsctl(&["--no-wait", "init"]),
            vsctl(&[
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:pmd-cpu-mask=0x2",
            ]),
            vec![
                "ovs-vswitchd".into(),
                sock.clone(),
                format!("--pidfile={dir}/ovs-vswitchd.pid"),
                "--detach".into(),
                format!("--log-file={dir}/ovs-vswitchd.log"),
            ],
            vsctl(&[
                "add-br",
                "tgovs",
                "--",
                "set",
                "bridge",
                "tgovs",
                "datapath_type=netdev",
            ]),
            port(i),
            port(o),
            vec!["ovs-ofctl".into(), "del-flows".into(), mgmt.clone()],
            vec!["ovs-ofctl".into(), "add-flows".into(), mgmt, flows_file],
        ];
        for c in cmds {
            let mut args: Vec<&str> = vec!["env"];
            args.extend(env.iter().map(String::as_str));
            args.extend(c.iter().map(String::as_str));
            let (ok, out) = lab.exec(&lab.boxns, &args);
            if !ok {
                return Err(format!("{}: {out}", c.join(" ")));
            }
        }
        Ok(ovs)
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        let rundir = format!("OVS_RUNDIR={}", self.dir);
        for (target, extra) in [("ovs-vswitchd", "--cleanup"), ("ovsdb-server", "")] {
            let mut cmd = std::process::Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                &self.boxns,
                "env",
                &rundir,
                "ovs-appctl",
                "-t",
                target,
                "exit",
            ]);
            if !extra.is_empty() {
                cmd.arg(extra);
            }
            let _ = cmd.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sets the forwarder's flows up as in steady state, from a thread pinned
/// to the generator's CPU: every flow once from the client and once back
/// (paced, 1 024 frames every 5 ms, so that no forwarder loses any), then,
/// after the two seconds a UDP flow needs to become assured (and
/// offloadable), every flow twice more from the client, so that a forwarder
/// that sets a flow up on a later packet (the fast path) has seen each.
/// Leaves the calling thread in the client's namespace.
pub fn prime(g: &Generator, lab: &Lab, out: &[u8], back: &[u8], flows: u32) -> Result<(), String> {
    let paced = |ns: &str, f: &[u8], rev: bool| -> Result<(), String> {
        lab.enter(ns).map_err(|e| e.to_string())?;
        let mut first = 0;
        while first < flows {
            let n = 1024.min(flows - first);
            g.send_from("eth0", f, flows, first, n, rev)
                .map_err(|e| e.to_string())?;
            first += n;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    paced(&lab.client, out, false)?;
    std::thread::sleep(Duration::from_millis(200));
    paced(&lab.server, back, true)?;
    std::thread::sleep(Duration::from_millis(2100));
    paced(&lab.client, out, false)?;
    paced(&lab.client, out, false)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Which generator [`Generator::load`] picks, asked from the lab's client
/// namespace.
pub fn gen_backend(lab: &Arc<Lab>) -> Result<Backend, String> {
    let l = lab.clone();
    std::thread::spawn(move || -> Result<Backend, String> {
        l.enter(&l.client).map_err(|e| e.to_string())?;
        let g = Generator::load().map_err(|e| e.to_string())?;
        Ok(g.backend())
    })
    .join()
    .map_err(|_| "generator panicked".to_string())?
}

/// The generator's own ceiling, measured as the forwarders are (pinned to
/// CPU 0, `packets` frames of `size` bytes over `flows` flows, flat out), but
/// into an XDP program that counts and drops them at the far end of a veth
/// pair in the client namespace: no forwarder at all. A forwarder's figure
/// near this one is bounded by the generator, not by itself.
pub fn gen_ceiling(
    lab: &Arc<Lab>,
    size: usize,
    flows: u32,
    packets: u32,
) -> Result<(Backend, Ceiling), String> {
    let f = frame(lab, false, size);
    let l = lab.clone();
    std::thread::spawn(move || -> Result<(Backend, Ceiling), String> {
        Lab::pin(0);
        l.enter(&l.client).map_err(|e| e.to_string())?;
        let g = Generator::load().map_err(|e| e.to_string())?;
        let c = g.ceiling(&f, flows, packets).map_err(|e| e.to_string())?;
        Ok((g.backend(), c))
    })
    .join()
    .map_err(|_| "generator panicked".to_string())?
}

/// One trial of [`zero_loss_search`]: rate asked, rate offered, frames lost.
pub type Trial = (f64, f64, u64);

/// RFC 2544's throughput search: bisects the offered rate in `0..=max`
/// for the highest at which `trial(rate)` loses nothing, until the bracket
/// is narrower than `max / 2^steps`. `trial` returns the rate it really
/// offered (a sender may fall short of the one asked) and the frames lost.
/// The top of the range is tried first (a forwarder faster than the
/// generator passes at once). Returns the highest rate really offered by a
/// trial without loss (0 when every trial lost frames) and every trial as
/// (rate asked, rate offered, lost).
pub fn zero_loss_search(
    max: f64,
    steps: u32,
    mut trial: impl FnMut(f64) -> Result<(f64, u64), String>,
) -> Result<(f64, Vec<Trial>), String> {
    let mut trials = Vec::new();
    let mut best = 0.0f64;
    let (offered, lost) = trial(max)?;
    trials.push((max, offered, lost));
    if lost == 0 {
        return Ok((offered, trials));
    }
    let (mut good, mut bad) = (0.0, max);
    for _ in 0..steps {
        let rate = (good + bad) / 2.0;
        let (offered, lost) = trial(rate)?;
        trials.push((rate, offered, lost));
        if lost == 0 {
            good = rate;
            best = best.max(offered);
        } else {
            bad = rate;
        }
    }
    Ok((best, trials))
}

/// The `p`-th percentile (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // The tolerance keeps 99.9 % of 1 000 at rank 999 despite rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_finds_the_edge_within_its_resolution() {
        // A forwarder that loses above 0.63 of the range.
        let (rate, trials) =
            zero_loss_search(1000.0, 7, |r| Ok((r, if r > 630.0 { 5 } else { 0 }))).unwrap();
        assert!(rate <= 630.0 && rate > 630.0 - 1000.0 / 128.0, "{rate}");
        assert_eq!(trials.len(), 8);
        assert_eq!(trials[0], (1000.0, 1000.0, 5));
        // Faster than the generator: the first trial passes.
        let (rate, trials) = zero_loss_search(1000.0, 7, |_| Ok((990.0, 0))).unwrap();
        assert_eq!((rate, trials.len()), (990.0, 1));
        // Loses at every rate.
        let (rate, _) = zero_loss_search(1000.0, 5, |r| Ok((r, 1))).unwrap();
        assert_eq!(rate, 0.0);
        // A sender that falls short: the rate really offered counts.
        let (rate, _) =
            zero_loss_search(1000.0, 4, |r| Ok((r.min(300.0), u64::from(r > 400.0)))).unwrap();
        assert_eq!(rate, 300.0);
        // A failing trial stops the search.
        assert!(zero_loss_search(1000.0, 5, |_| Err("x".into())).is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(500.0));
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        assert_eq!(percentile(&v, 99.9), Some(999.0));
        assert_eq!(percentile(&v, 100.0), Some(1000.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
