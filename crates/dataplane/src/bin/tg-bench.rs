//! The lab bench (bench/README.md): 64-byte UDP frames over N flows from an
//! XDP live-frames generator (client namespace, CPU 0) through the box to the
//! server namespace, which counts and drops them at ingress. Measures, side by
//! side in one run, the Linux bridge with conntrack, Tollgate's full pipeline
//! and Tollgate's bare forwarding. Root only.
//!
//! `tg-bench [packets]` (default 2 000 000 per measurement).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conntrack::policy::{Action, Policy};
use conntrack::{Config, Pipeline};
use dataplane::gen::Generator;
use dataplane::lab::Lab;
use dataplane::{Counters, Worker, WorkerConfig};

fn strict() -> Policy {
    dataplane::lab::strict_policy()
}

/// A 64-byte Ethernet/IPv4/UDP frame from the client to the server, or the
/// other way (`reverse`).
fn frame(lab: &Lab, reverse: bool) -> Vec<u8> {
    let mac = |ns: &str| -> [u8; 6] {
        let (_, out) = lab.exec(ns, &["cat", "/sys/class/net/eth0/address"]);
        let mut m = [0u8; 6];
        for (i, b) in out.trim().split(':').enumerate().take(6) {
            m[i] = u8::from_str_radix(b, 16).unwrap_or(0);
        }
        m
    };
    let (c, s) = ([10, 77, 0, 1], [10, 77, 0, 2]);
    let ip = if reverse {
        conntrack::build::Pkt::udp4(s, 5000, c, 1024)
    } else {
        conntrack::build::Pkt::udp4(c, 1024, s, 5000)
    }
    .payload(&[0; 18])
    .build();
    let (dst, src) = if reverse {
        (mac(&lab.client), mac(&lab.server))
    } else {
        (mac(&lab.server), mac(&lab.client))
    };
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// What forwards between the lab's two sides.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Forwarder {
    /// Linux bridge + br_netfilter + an nftables ruleset like the policy;
    /// `rps`: forwarding steered to CPU 1 (else it runs on CPU 0, inline with
    /// the generator's transmissions).
    Kernel { rps: bool },
    /// The plain Linux bridge: no conntrack, no policy (on CPU 0).
    Bridge,
    /// Tollgate's full pipeline.
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

/// Frames the server's ingress counter has dropped so far.
fn server_count(lab: &Lab) -> Result<u64, String> {
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

/// The kernel peer in the box namespace: a bridge with conntrack (br_netfilter)
/// and the same policy as nftables rules. Removed by `kernel_down`.
fn kernel_up(lab: &Lab) -> Result<(), String> {
    kernel_bridge_up(lab, true)
}

/// The bridge, with br_netfilter conntrack and the policy when `conntrack`.
fn kernel_bridge_up(lab: &Lab, conntrack: bool) -> Result<(), String> {
    let b = &lab.boxns;
    let cmds: Vec<Vec<&str>> = vec![
        vec!["ip", "link", "add", "tgbr", "type", "bridge"],
        vec!["ip", "link", "set", &lab.inside, "master", "tgbr"],
        vec!["ip", "link", "set", &lab.outside, "master", "tgbr"],
        vec!["ip", "link", "set", "tgbr", "up"],
        // veth drops frames XDP_TX'd into it unless the receiving end runs
        // NAPI, which takes an XDP program (Tollgate's) or GRO.
        vec!["ethtool", "-K", &lab.inside, "gro", "on"],
        vec!["ethtool", "-K", &lab.outside, "gro", "on"],
    ];
    let ct_cmds: Vec<Vec<&str>> = vec![
        vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        vec![
            "nft",
            "add table inet tgk; add chain inet tgk f { type filter hook forward priority 0; policy drop; }; \
             add rule inet tgk f ct state invalid drop; \
             add rule inet tgk f ct state established,related accept; \
             add rule inet tgk f ip saddr 10.77.0.1 ct state new accept",
        ],
    ];
    // Built in on some kernels, a module on others.
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "br_netfilter"])
        .status();
    let all = if conntrack {
        cmds.into_iter().chain(ct_cmds).collect::<Vec<_>>()
    } else {
        let mut c = cmds;
        c.push(vec![
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
        ]);
        c
    };
    for c in all {
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

fn new_pipeline() -> Pipeline {
    Pipeline::new(
        Config {
            max_entries: 262_144,
            ..Config::default()
        },
        strict(),
    )
}

/// Starts Tollgate's worker on CPU 1 in the box namespace.
/// Attaches the plain XDP forwarder in the box namespace until `stop`.
fn xdp_up(lab: &Arc<Lab>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<Result<(), String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || -> Result<(), String> {
        l.enter_box().map_err(|e| e.to_string())?;
        let f = dataplane::fwd::PlainForwarder::attach(&l.inside, &l.outside)
            .map_err(|e| e.to_string())?;
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(f);
        Ok(())
    })
}

fn tollgate_up(
    lab: &Arc<Lab>,
    bypass: bool,
    offload: bool,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || -> Result<(), String> {
        Lab::pin(1);
        l.enter_box().map_err(|e| e.to_string())?;
        let cfg = WorkerConfig {
            inside: l.inside.clone(),
            outside: l.outside.clone(),
            queue: 0,
            non_ip: Action::Accept,
            bypass,
            offload,
            mode: dataplane::xsk::XdpMode::Auto,
        };
        // The previous measurement's sockets are released by the kernel a
        // little after they are closed: retry for a while.
        let mut tries = 0;
        let mut w = loop {
            match Worker::open(&cfg, new_pipeline(), Arc::new(Counters::default())) {
                Ok(w) => break w,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("tg-bench: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        w.run(&s);
        if let Some(o) = w.offload_counters() {
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            eprintln!(
                "tg-bench: fast path: {} installed, {} activated, {} forced, {} packets, {} install failures",
                l(&o.installed),
                l(&o.activated),
                l(&o.forced),
                l(&o.packets),
                l(&o.install_failed)
            );
        }
        Ok(())
    })
}

/// Starts two workers over queues 0 and 1 with handoffs between them.
fn two_up(lab: &Arc<Lab>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<Result<(), String>> {
    let (l, s) = (lab.clone(), stop.clone());
    std::thread::spawn(move || -> Result<(), String> {
        l.enter_box().map_err(|e| e.to_string())?;
        let cfg = WorkerConfig {
            inside: l.inside.clone(),
            outside: l.outside.clone(),
            queue: 0,
            non_ip: Action::Accept,
            bypass: false,
            offload: false,
            mode: dataplane::xsk::XdpMode::Auto,
        };
        let mut boxes = Vec::new();
        for i in 0..2 {
            boxes.push(dataplane::mailbox(i, 64).map_err(|e| e.to_string())?);
        }
        let fabric = dataplane::worker::Fabric::new(
            conntrack::shard::Sharding::new(2, conntrack::tuple::HashSecret(1, 2)),
            boxes.iter().map(|(m, _)| m.wake_fd()).collect(),
        );
        let mut tries = 0;
        let (workers, programs) = loop {
            let pipes = vec![new_pipeline(), new_pipeline()];
            let cs = vec![Arc::new(Counters::default()), Arc::new(Counters::default())];
            match dataplane::worker::open_workers(&cfg, &[0, 1], pipes, cs, Some(fabric.clone())) {
                Ok(x) => break x,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("tg-bench: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
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
        Ok(())
    })
}

fn measure(lab: &Arc<Lab>, fwd: Forwarder, flows: u32, packets: u32) -> Result<f64, String> {
    // TG_BENCH_ONLY=Offload,Xdp (the forwarders' names) measures only those.
    if let Ok(only) = std::env::var("TG_BENCH_ONLY") {
        let name = format!("{fwd:?}");
        if !only.split(',').any(|o| name.starts_with(o.trim())) {
            return Err("skipped".into());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut ovs = None;
    let worker = match fwd {
        Forwarder::Kernel { rps } => {
            set_rps(lab, if rps { "2" } else { "0" });
            if let Err(e) = kernel_up(lab) {
                kernel_down(lab);
                return Err(e);
            }
            None
        }
        Forwarder::Bridge => {
            set_rps(lab, "0");
            if let Err(e) = kernel_bridge_up(lab, false) {
                kernel_down(lab);
                return Err(e);
            }
            None
        }
        Forwarder::Two => {
            set_rps(lab, "0");
            Some(two_up(lab, &stop))
        }
        Forwarder::Ovs => {
            set_rps(lab, "0");
            ovs = Some(Ovs::up(lab)?);
            None
        }
        Forwarder::Tollgate | Forwarder::Bare | Forwarder::Offload => {
            set_rps(lab, "0");
            Some(tollgate_up(
                lab,
                fwd == Forwarder::Bare,
                fwd == Forwarder::Offload,
                &stop,
            ))
        }
        Forwarder::Xdp => {
            set_rps(lab, "0");
            Some(xdp_up(lab, &stop))
        }
    };
    std::thread::sleep(Duration::from_millis(400));
    let (out, back) = (frame(lab, false), frame(lab, true));
    let l = lab.clone();
    let gen = std::thread::spawn(move || -> Result<f64, String> {
        Lab::pin(0);
        let g = Generator::load().map_err(|e| e.to_string())?;
        let send = |ns: &str, f: &[u8], n: u32, rev: bool| {
            l.enter(ns).map_err(|e| e.to_string())?;
            g.send("eth0", f, flows, n, rev).map_err(|e| e.to_string())
        };
        // Every flow once, paced (1 024 frames every 5 ms) so that no
        // forwarder loses any of them.
        let paced = |ns: &str, f: &[u8], rev: bool| -> Result<(), String> {
            l.enter(ns).map_err(|e| e.to_string())?;
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
        // Every flow seen once each way: the forwarder runs its established
        // path, as in steady state.
        paced(&l.client, &out, false)?;
        std::thread::sleep(Duration::from_millis(200));
        paced(&l.server, &back, true)?;
        // UDP flows become assured (and offloadable) once replied and two
        // seconds old: then, not measured, every flow twice more, so that a
        // forwarder that sets a flow up on a later packet (the fast path)
        // has seen each.
        std::thread::sleep(Duration::from_millis(2100));
        paced(&l.client, &out, false)?;
        paced(&l.client, &out, false)?;
        std::thread::sleep(Duration::from_millis(300));
        let before = server_count(&l)?;
        let took = send(&l.client, &out, packets, false)?;
        std::thread::sleep(Duration::from_millis(200));
        let after = server_count(&l)?;
        Ok((after - before) as f64 / took.as_secs_f64())
    });
    let pps = gen.join().map_err(|_| "generator panicked".to_string());
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = worker {
        w.join().map_err(|_| "worker panicked".to_string())??;
    }
    if matches!(fwd, Forwarder::Kernel { .. } | Forwarder::Bridge) {
        kernel_down(lab);
    }
    drop(ovs);
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
    let _ = lab.exec(
        &lab.server,
        &["nft", "add table netdev tgb; add counter netdev tgb c; add chain netdev tgb in { type filter hook ingress device eth0 priority 0; }; add rule netdev tgb in udp dport 5000-5010 counter name c drop"],
    );
    let _ = lab.exec(
        &lab.client,
        &["nft", "add table netdev tgb; add chain netdev tgb in { type filter hook ingress device eth0 priority 0; }; add rule netdev tgb in udp sport 5000-5010 drop"],
    );
    println!("64-byte UDP, {packets} packets per run, Mpps forwarded. Kernel: Linux bridge + br_netfilter + nftables conntrack,");
    println!("forwarding inline on the generator's CPU 0 or steered by RPS to CPU 1; plain bridge: no conntrack, CPU 0;");
    println!("Tollgate's worker on CPU 1; two workers: CPU 1 and CPU 0 (beside the generator), all frames on queue 0,");
    println!("those of worker 1's flows handed over. Open vSwitch: userspace datapath, AF_XDP ports, ct() flows, PMD on CPU 1.");
    println!("Tollgate + XDP: the fast path on (established flows forwarded by the XDP program); plain XDP: XDP_REDIRECT between the ports, no state.");
    println!("| flows | bridge, no conntrack | kernel, CPU 0 | kernel, RPS to CPU 1 | Open vSwitch | Tollgate | Tollgate bare forwarding | Tollgate, 2 workers | Tollgate + XDP | plain XDP | Tollgate / best kernel | Tollgate / OVS | Tollgate / bare | Tollgate + XDP / best kernel | Tollgate + XDP / plain XDP |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for flows in [1_024u32, 100_000] {
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
            "| {flows} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
