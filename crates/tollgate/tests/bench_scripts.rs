//! The benchmark scripts under bench/: `bench/pktgen/pktgen.sh` parses and,
//! with `--dry-run`, writes what pktgen needs (frame size minus the CRC, ranges
//! that make exactly N flows, one thread per CPU, one start); usage errors
//! fail with a message. The TRex profiles under bench/trex compile and
//! register the object TRex loads. The FTP profile's two programs mirror each
//! other and, replayed through Tollgate with bench/trex/tollgate-trex.toml,
//! make the data connection pass as related (and not without the 227).
//! Neither pktgen nor TRex is needed: the dry run writes nothing, and the
//! profiles are read with Python's `ast` or run against a stand-in for
//! TRex's API that records the calls.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::pcap;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use conntrack::build::{ethernet, Pkt};
use conntrack::packet::tcp_flags::{ACK, FIN, PSH, SYN};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pktgen_sh() -> PathBuf {
    repo().join("bench/pktgen/pktgen.sh")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `pktgen.sh --dry-run ARGS` (ARGS split at spaces).
fn dry_run(args: &str) -> Output {
    run(Command::new("bash")
        .arg(pktgen_sh())
        .arg("--dry-run")
        .args(args.split_whitespace()))
}

/// One `echo "CMD" > /proc/net/pktgen/FILE` line of a dry run.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    file: String,
    cmd: String,
}

/// The writes of a successful dry run, in order, and its whole output.
fn writes_and_text(args: &str) -> (Vec<Write>, String) {
    let out = dry_run(args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "pktgen.sh --dry-run {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w: Vec<Write> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("echo \"")?;
            let (cmd, file) = rest.split_once("\" > ")?;
            let file = file.strip_suffix(" &").unwrap_or(file);
            let file = file.strip_prefix("/proc/net/pktgen/").unwrap_or_else(|| {
                panic!("write outside /proc/net/pktgen: {l}");
            });
            Some(Write {
                file: file.to_string(),
                cmd: cmd.to_string(),
            })
        })
        .collect();
    assert!(!w.is_empty(), "no writes in:\n{stdout}");
    (w, stdout)
}

fn writes(args: &str) -> Vec<Write> {
    writes_and_text(args).0
}

/// The configuration each device got: parameter -> values in order (flags
/// collect every flag).
fn device_params(w: &[Write], dev: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for x in w.iter().filter(|x| x.file == dev) {
        let (k, v) = x.cmd.split_once(' ').unwrap_or((x.cmd.as_str(), ""));
        m.entry(k.to_string()).or_default().push(v.to_string());
    }
    m
}

fn one<'a>(p: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = p
        .get(key)
        .unwrap_or_else(|| panic!("{key} never written: {p:?}"));
    assert_eq!(v.len(), 1, "{key} written {} times: {v:?}", v.len());
    &v[0]
}

fn num(p: &BTreeMap<String, Vec<String>>, key: &str) -> u64 {
    one(p, key).parse().unwrap()
}

fn addr(p: &BTreeMap<String, Vec<String>>, key: &str) -> u64 {
    u64::from(u32::from(one(p, key).parse::<Ipv4Addr>().unwrap()))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

/// How many distinct (src, sport, dst, dport) a device sends, by pktgen's
/// rules (net/core/pktgen.c, mod_cur_headers): walked addresses go from min to
/// max inclusive, random ones from min to max exclusive; ports always stop
/// before max. A walk repeats after the lcm of the range sizes; random draws
/// reach every combination.
fn flows_of(p: &BTreeMap<String, Vec<String>>) -> u64 {
    let flags = p.get("flag").cloned().unwrap_or_default();
    let rnd = |f: &str| flags.iter().any(|x| x == f);
    let range = |lo: u64, hi: u64, random: bool, inclusive: bool| {
        assert!(lo <= hi, "range {lo}..{hi} backwards");
        if lo == hi {
            1
        } else if inclusive && !random {
            hi - lo + 1
        } else {
            hi - lo
        }
    };
    let sizes = [
        range(
            addr(p, "src_min"),
            addr(p, "src_max"),
            rnd("IPSRC_RND"),
            true,
        ),
        range(
            num(p, "udp_src_min"),
            num(p, "udp_src_max"),
            rnd("UDPSRC_RND"),
            false,
        ),
        range(
            addr(p, "dst_min"),
            addr(p, "dst_max"),
            rnd("IPDST_RND"),
            true,
        ),
        range(
            num(p, "udp_dst_min"),
            num(p, "udp_dst_max"),
            rnd("UDPDST_RND"),
            false,
        ),
    ];
    let random = ["IPSRC_RND", "UDPSRC_RND", "IPDST_RND", "UDPDST_RND"]
        .iter()
        .any(|f| rnd(f));
    if random {
        sizes.iter().product()
    } else {
        sizes.iter().copied().fold(1, lcm)
    }
}

/// Checks the common shape of a dry run: one reset first, one device per CPU
/// added to that CPU's thread, each configured before the one start, and
/// returns the device names.
fn check_shape(w: &[Write], dev: &str, cpus: &[u32]) -> Vec<String> {
    assert_eq!(w[0].file, "pgctrl");
    assert_eq!(w[0].cmd, "reset");
    let ctrl: Vec<&str> = w
        .iter()
        .filter(|x| x.file == "pgctrl")
        .map(|x| x.cmd.as_str())
        .collect();
    assert_eq!(
        ctrl.iter().filter(|c| **c == "start").count(),
        1,
        "{ctrl:?}"
    );
    assert_eq!(ctrl.iter().filter(|c| **c == "reset").count(), 1);
    let start = w.iter().position(|x| x.cmd == "start").unwrap();
    let adds: Vec<(&str, &str)> = w
        .iter()
        .filter(|x| x.cmd.starts_with("add_device "))
        .map(|x| (x.file.as_str(), &x.cmd["add_device ".len()..]))
        .collect();
    let want: Vec<(String, String)> = cpus
        .iter()
        .map(|c| (format!("kpktgend_{c}"), format!("{dev}@{c}")))
        .collect();
    let got: Vec<(String, String)> = adds
        .iter()
        .map(|(f, d)| (f.to_string(), d.to_string()))
        .collect();
    assert_eq!(got, want, "one device per CPU, on that CPU's thread");
    // A device is configured only once added.
    for (_, d) in &want {
        let added = w
            .iter()
            .position(|x| x.cmd == format!("add_device {d}"))
            .unwrap();
        let first = w.iter().position(|x| x.file == *d).unwrap();
        assert!(added < first, "{d} configured before it was added");
    }
    // Only known files, and every device write before the start.
    for (i, x) in w.iter().enumerate() {
        let known = x.file == "pgctrl"
            || x.file.starts_with("kpktgend_")
            || want.iter().any(|(_, d)| *d == x.file);
        assert!(known, "write to an unexpected file: {x:?}");
        if x.file != "pgctrl" {
            assert!(i < start, "{x:?} after start");
        }
    }
    want.into_iter().map(|(_, d)| d).collect()
}

#[test]
fn pktgen_script_is_valid_bash() {
    let out = run(Command::new("bash").arg("-n").arg(pktgen_sh()));
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dry_run_64_bytes_two_threads_100k_flows() {
    let w = writes("-i eth1 -m 02:00:00:00:00:02 -t 2 --flows 100000 -s 64");
    let devs = check_shape(&w, "eth1", &[0, 1]);
    for d in &devs {
        let p = device_params(&w, d);
        // 64 bytes on the wire: pktgen builds 60, the NIC adds the CRC.
        assert_eq!(one(&p, "pkt_size"), "60");
        assert_eq!(one(&p, "dst_mac"), "02:00:00:00:00:02");
        assert_eq!(flows_of(&p), 100_000, "{d}: {p:?}");
        // The walk needs coprime ranges: the flows are their product.
        let a = addr(&p, "src_max") - addr(&p, "src_min") + 1;
        let b = num(&p, "udp_src_max") - num(&p, "udp_src_min");
        assert_eq!((a * b, gcd(a, b)), (100_000, 1), "{p:?}");
        assert_eq!(one(&p, "clone_skb"), "0");
        assert_eq!(one(&p, "count"), "0");
        let flags = &p["flag"];
        assert!(flags.iter().any(|f| f == "UDPCSUM"), "{flags:?}");
        assert!(!flags.iter().any(|f| f.ends_with("_RND")), "{flags:?}");
    }
    // Both threads get the same flows.
    let p0 = device_params(&w, &devs[0]);
    let p1 = device_params(&w, &devs[1]);
    assert_eq!(p0, p1);
    // A duration run: started in the background, stopped once.
    let stops = w
        .iter()
        .filter(|x| x.file == "pgctrl" && x.cmd == "stop")
        .count();
    assert_eq!(stops, 1);
}

#[test]
fn dry_run_1518_bytes_on_listed_cpus() {
    let w =
        writes("-i ens1f0 -m aa:bb:cc:dd:ee:ff --cpus 2-3,5 -s 1518 --flows 1024 -n 5000000 -b 8");
    let devs = check_shape(&w, "ens1f0", &[2, 3, 5]);
    for d in &devs {
        let p = device_params(&w, d);
        assert_eq!(one(&p, "pkt_size"), "1514");
        assert_eq!(one(&p, "count"), "5000000");
        assert_eq!(one(&p, "burst"), "8");
        assert_eq!(flows_of(&p), 1024);
    }
    // A count run ends by itself: no stop.
    assert!(!w.iter().any(|x| x.cmd == "stop"));
}

#[test]
fn dry_run_rate_is_split_over_threads_after_pkt_size() {
    let w = writes("-i eth1 -m 02:00:00:00:00:02 -t 2 --pps 3000000");
    for d in check_shape(&w, "eth1", &[0, 1]) {
        let p = device_params(&w, &d);
        assert_eq!(one(&p, "ratep"), "1500000");
        let pos = |cmd: &str| {
            w.iter()
                .position(|x| x.file == d && x.cmd.starts_with(cmd))
                .unwrap()
        };
        assert!(pos("pkt_size ") < pos("ratep "));
    }
    let w = writes("-i eth1 -m 02:00:00:00:00:02 -t 4 --rate 10000 -s 512");
    for d in check_shape(&w, "eth1", &[0, 1, 2, 3]) {
        let p = device_params(&w, &d);
        assert_eq!(one(&p, "rate"), "2500");
        assert_eq!(one(&p, "pkt_size"), "508");
        // pktgen turns Mb/s into a delay from the packet size it has then.
        let pos = |cmd: &str| {
            w.iter()
                .position(|x| x.file == d && x.cmd.starts_with(cmd))
                .unwrap()
        };
        assert!(pos("pkt_size ") < pos("rate "));
    }
}

#[test]
fn dry_run_random_and_explicit_ranges() {
    // Random: 131 072 = 65 536 addresses x 2 ports, drawn at random
    // (a power of two cannot be walked by coprime ranges).
    let w = writes("-i eth1 -m 02:00:00:00:00:02 --flows 131072 --random");
    let devs = check_shape(&w, "eth1", &[0]);
    let p = device_params(&w, &devs[0]);
    assert_eq!(flows_of(&p), 131_072);
    assert!(p["flag"].iter().any(|f| f == "IPSRC_RND"));
    assert!(p["flag"].iter().any(|f| f == "UDPSRC_RND"));
    // Explicit ranges over all four fields: lcm(3, 5, 7, 2) = 210.
    let w = writes("-i eth1 -m 02:00:00:00:00:02 --src-count 3 --sport-count 5 --dst-count 7 --dport-count 2 --flows 210");
    let devs = check_shape(&w, "eth1", &[0]);
    let p = device_params(&w, &devs[0]);
    assert_eq!(flows_of(&p), 210);
    assert_eq!(one(&p, "dst_min"), "198.19.0.1");
    assert_eq!(one(&p, "dst_max"), "198.19.0.7");
    assert_eq!(one(&p, "udp_dst_max"), "11");
}

#[test]
fn dry_run_sweep_runs_every_size_once() {
    let (w, text) = writes_and_text("-i eth1 -m 02:00:00:00:00:02 --sweep -D 3");
    let sizes: Vec<&str> = w
        .iter()
        .filter(|x| x.cmd.starts_with("pkt_size "))
        .map(|x| &x.cmd["pkt_size ".len()..])
        .collect();
    assert_eq!(sizes, ["60", "124", "252", "508", "1020", "1276", "1514"]);
    // Each size: reset, configure, start, stop.
    let ctrl: Vec<&str> = w
        .iter()
        .filter(|x| x.file == "pgctrl")
        .map(|x| x.cmd.as_str())
        .collect();
    assert_eq!(ctrl, ["reset", "start", "stop"].repeat(7));
    assert_eq!(text.matches("sleep 3").count(), 7);
}

#[test]
fn usage_errors_fail_with_a_message() {
    let mac = "02:00:00:00:00:02";
    let cases = [
        ("-i eth1 -m MAC -s 63", "64..1518"),
        ("-i eth1 -m MAC -s 1519", "64..1518"),
        ("-m MAC", "missing -i"),
        ("-i eth1", "missing -m"),
        ("-i eth1 -m 02:00:00:00:02", "bad destination MAC"),
        ("-i eth1 -m MAC --flows 131072", "coprime"),
        ("-i eth1 -m MAC --sweep -s 64", "--sweep"),
        (
            "-i eth1 -m MAC --src-count 4 --sport-count 6 --flows 24",
            "12 flows",
        ),
        ("-i eth1 -m MAC --bogus", "unknown argument"),
    ];
    for (args, msg) in cases {
        let args = args.replace("MAC", mac);
        let out = dry_run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(msg),
            "{args:?}: wanted {msg:?} in {stderr:?}"
        );
        assert!(!stdout.contains("echo "), "{args:?} still wrote: {stdout}");
    }
}

// ------------------------------------------------------------------ TRex

fn trex_profiles() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["stl", "astf"] {
        let dir = repo().join("bench/trex").join(sub);
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "py") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn python(code: &str, args: &[&Path]) -> Output {
    // No compiled files left in bench/.
    run(Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1"))
}

#[test]
fn trex_profiles_compile() {
    let files = trex_profiles();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["udp_flows.py", "imix.py", "http_cps.py", "ftp_sessions.py"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let cache = std::env::temp_dir().join(format!("tollgate-bench-compile-{}", std::process::id()));
    for f in &files {
        let out = run(Command::new("python3")
            .args(["-m", "py_compile"])
            .arg(f)
            .env("PYTHONPYCACHEPREFIX", &cache));
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// For each file: the class `register()` returns and whether it defines the
/// method TRex calls, with `tunables` as a parameter and `**kwargs`.
const REGISTER_CHECK: &str = r#"
import ast, json, sys
path, method = sys.argv[1], sys.argv[2]
tree = ast.parse(open(path).read(), path)
funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
reg = funcs.get("register")
out = {"register": reg is not None and not reg.args.args}
rets = [n for n in ast.walk(reg) if isinstance(n, ast.Return)] if reg else []
names = [r.value.func.id for r in rets
         if isinstance(r.value, ast.Call) and isinstance(r.value.func, ast.Name)]
out["returns"] = names
cls = classes.get(names[0]) if len(names) == 1 else None
m = None
if cls:
    m = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
out["method"] = m is not None
out["params"] = [a.arg for a in m.args.args] if m else []
out["kwargs"] = bool(m and m.args.kwarg)
out["returns_value"] = bool(m and any(isinstance(n, ast.Return) and n.value is not None
                                      for n in ast.walk(m)))
print(json.dumps(out))
"#;

#[test]
fn trex_profiles_register_what_trex_loads() {
    for f in trex_profiles() {
        let method = if f.parent().unwrap().ends_with("astf") {
            "get_profile"
        } else {
            "get_streams"
        };
        let out = python(REGISTER_CHECK, &[&f, Path::new(method)]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let what = format!("{}: {v}", f.display());
        assert_eq!(
            v["register"], true,
            "no register() without arguments: {what}"
        );
        assert_eq!(v["returns"].as_array().unwrap().len(), 1, "{what}");
        assert_eq!(v["method"], true, "the class has no {method}: {what}");
        // TRex calls get_streams(direction=, port_id=, tunables=) and
        // get_profile(tunables=, ...) by keyword.
        assert_eq!(
            v["params"],
            serde_json::json!(["self", "tunables"]),
            "{what}"
        );
        assert_eq!(v["kwargs"], true, "{what}");
        assert_eq!(v["returns_value"], true, "{what}");
    }
}

/// Runs a profile's `get_profile` against a stand-in for `trex.astf.api`
/// whose classes record how they were built and called, and prints that as
/// JSON.
const ASTF_RECORD: &str = r#"
import importlib.util, json, sys, types

class Rec:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.calls = list(args), kwargs, []
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        def call(*args, **kwargs):
            self.calls.append({"call": name, "args": list(args), "kwargs": kwargs})
        return call

classes = {}
def stand_in(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return classes.setdefault(name, type(name, (Rec,), {}))

api = types.ModuleType("trex.astf.api")
api.__getattr__ = stand_in
sys.modules["trex"] = types.ModuleType("trex")
sys.modules["trex.astf"] = types.ModuleType("trex.astf")
sys.modules["trex.astf.api"] = api

def plain(o):
    if isinstance(o, Rec):
        return {"class": type(o).__name__, "args": plain(o.args),
                "kwargs": plain(o.kwargs), "calls": plain(o.calls)}
    if isinstance(o, (list, tuple)):
        return [plain(x) for x in o]
    if isinstance(o, dict):
        return {k: plain(v) for k, v in o.items()}
    if isinstance(o, bytes):
        return o.decode("latin-1")
    return o

spec = importlib.util.spec_from_file_location("profile", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
# As ASTFProfile.load_py calls it.
profile = module.register().get_profile(tunables=sys.argv[2:])
print(json.dumps(plain(profile)))
"#;

fn record_astf(file: &str, tunables: &[&str]) -> Value {
    let path = repo().join(file);
    let mut args: Vec<&Path> = vec![&path];
    let tun: Vec<&Path> = tunables.iter().map(Path::new).collect();
    args.extend(tun);
    let out = python(ASTF_RECORD, &args);
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One step of an ASTF program as recorded.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Send(Vec<u8>),
    Recv(usize),
    Exec(String),
    WaitClose,
}

fn program(p: &Value) -> Vec<Step> {
    assert_eq!(p["class"], "ASTFProgram");
    let mut next_template = None;
    let mut out = Vec::new();
    for c in p["calls"].as_array().unwrap() {
        let args = c["args"].as_array().unwrap();
        match c["call"].as_str().unwrap() {
            "send" => {
                let base = args[0].as_str().unwrap().as_bytes().to_vec();
                let size = c["kwargs"]["size"]
                    .as_u64()
                    .map_or(base.len(), |s| s as usize);
                let fill = c["kwargs"]["fill"]
                    .as_str()
                    .unwrap_or("\0")
                    .as_bytes()
                    .to_vec();
                let mut buf = base;
                while buf.len() < size {
                    buf.push(fill[(buf.len()) % fill.len()]);
                }
                out.push(Step::Send(buf));
            }
            "recv" => out.push(Step::Recv(args[0].as_u64().unwrap() as usize)),
            "set_next_template" => next_template = Some(args[0].as_str().unwrap().to_string()),
            "exec_template" => out.push(Step::Exec(
                next_template
                    .take()
                    .expect("exec_template without set_next_template"),
            )),
            "wait_for_peer_close" => out.push(Step::WaitClose),
            other => panic!("unexpected program call {other}"),
        }
    }
    out
}

/// A template as the profile built it.
#[derive(Debug)]
struct Template {
    group: String,
    port: u16,
    cps: f64,
    assoc_port: u16,
    client: Vec<Step>,
    server: Vec<Step>,
    clients: (Ipv4Addr, Ipv4Addr),
    servers: (Ipv4Addr, Ipv4Addr),
}

fn range(dist: &Value) -> (Ipv4Addr, Ipv4Addr) {
    assert_eq!(dist["class"], "ASTFIPGenDist");
    let r = dist["kwargs"]["ip_range"].as_array().unwrap();
    (
        r[0].as_str().unwrap().parse().unwrap(),
        r[1].as_str().unwrap().parse().unwrap(),
    )
}

fn templates(profile: &Value) -> Vec<Template> {
    assert_eq!(profile["class"], "ASTFProfile");
    let t = &profile["kwargs"]["templates"];
    let list = t.as_array().cloned().unwrap_or_else(|| vec![t.clone()]);
    list.iter()
        .map(|t| {
            assert_eq!(t["class"], "ASTFTemplate");
            let c = &t["kwargs"]["client_template"];
            let s = &t["kwargs"]["server_template"];
            let gen = &c["kwargs"]["ip_gen"]["kwargs"];
            Template {
                group: t["kwargs"]["tg_name"].as_str().unwrap().to_string(),
                port: c["kwargs"]["port"].as_u64().unwrap() as u16,
                cps: c["kwargs"]["cps"].as_f64().unwrap(),
                assoc_port: s["kwargs"]["assoc"]["kwargs"]["port"].as_u64().unwrap() as u16,
                client: program(&c["kwargs"]["program"]),
                server: program(&s["kwargs"]["program"]),
                clients: range(&gen["dist_client"]),
                servers: range(&gen["dist_server"]),
            }
        })
        .collect()
}

/// What crosses the wire, in order, when the two programs of a template run
/// against each other; `Data` is where the client starts a flow of another
/// template. Panics on a deadlock or on reads that do not match the writes.
#[derive(Debug, Clone, PartialEq)]
enum Wire {
    ToServer(Vec<u8>),
    ToClient(Vec<u8>),
    Data(String),
}

fn converse(client: &[Step], server: &[Step]) -> Vec<Wire> {
    let (mut ci, mut si) = (0, 0);
    let (mut to_s, mut to_c): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let mut wire = Vec::new();
    loop {
        let mut moved = false;
        while let Some(step) = server.get(si) {
            match step {
                Step::Send(b) => {
                    wire.push(Wire::ToClient(b.clone()));
                    to_c.extend_from_slice(b);
                }
                Step::Recv(n) if to_s.len() >= *n => {
                    to_s.drain(..*n);
                }
                // wait_for_peer_close: done once the client's program is.
                Step::WaitClose if ci == client.len() => {}
                Step::Recv(_) | Step::WaitClose => break,
                Step::Exec(t) => panic!("server starts template {t}"),
            }
            si += 1;
            moved = true;
        }
        while let Some(step) = client.get(ci) {
            match step {
                Step::Send(b) => {
                    wire.push(Wire::ToServer(b.clone()));
                    to_s.extend_from_slice(b);
                }
                Step::Recv(n) if to_c.len() >= *n => {
                    to_c.drain(..*n);
                }
                Step::Recv(_) => break,
                Step::Exec(t) => wire.push(Wire::Data(t.clone())),
                Step::WaitClose => panic!("the client waits for the server to close"),
            }
            ci += 1;
            moved = true;
        }
        if ci == client.len() && si == server.len() {
            assert!(to_s.is_empty() && to_c.is_empty(), "bytes never read");
            return wire;
        }
        assert!(moved, "deadlock at client step {ci}, server step {si}");
    }
}

/// Replays frames through Tollgate with the TRex benchmark config, the
/// inside being `inside`; one JSON line per frame.
fn replay(frames: &[Vec<u8>], inside: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("bench/trex/tollgate-trex.toml")).unwrap();
    let cfg = control::parse(&text).unwrap();
    let inside = tollgate::replay::parse_inside(inside).unwrap();
    let mut out = Vec::new();
    tollgate::replay::replay(&cfg, &pcap(frames), &inside, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A TCP connection as frames: handshake, segments (each acknowledged), FIN
/// from the side that `client_closes`. Sequence numbers are tracked.
struct Tcp {
    c: [u8; 4],
    cp: u16,
    s: [u8; 4],
    sp: u16,
    cseq: u32,
    sseq: u32,
}

impl Tcp {
    fn open(c: Ipv4Addr, cp: u16, s: Ipv4Addr, sp: u16, frames: &mut Vec<Vec<u8>>) -> Tcp {
        let t = Tcp {
            c: c.octets(),
            cp,
            s: s.octets(),
            sp,
            cseq: 1000,
            sseq: 50_000,
        };
        frames.push(t.to_s(SYN, t.cseq - 1, 0, &[]));
        frames.push(t.to_c(SYN | ACK, t.sseq - 1, t.cseq, &[]));
        frames.push(t.to_s(ACK, t.cseq, t.sseq, &[]));
        t
    }

    fn to_s(&self, f: u8, seq: u32, ack: u32, p: &[u8]) -> Vec<u8> {
        let pkt = Pkt::tcp4(self.c, self.cp, self.s, self.sp)
            .flags(f)
            .seq(seq)
            .ack(ack)
            .payload(p)
            .build();
        ethernet(&pkt, &[])
    }

    fn to_c(&self, f: u8, seq: u32, ack: u32, p: &[u8]) -> Vec<u8> {
        let pkt = Pkt::tcp4(self.s, self.sp, self.c, self.cp)
            .flags(f)
            .seq(seq)
            .ack(ack)
            .payload(p)
            .build();
        ethernet(&pkt, &[])
    }

    /// `bytes` from the client (or the server), in segments of at most 1448
    /// bytes, each acknowledged.
    fn send(&mut self, from_client: bool, bytes: &[u8], frames: &mut Vec<Vec<u8>>) {
        for chunk in bytes.chunks(1448) {
            let n = u32::try_from(chunk.len()).unwrap();
            if from_client {
                frames.push(self.to_s(PSH | ACK, self.cseq, self.sseq, chunk));
                self.cseq += n;
                frames.push(self.to_c(ACK, self.sseq, self.cseq, &[]));
            } else {
                frames.push(self.to_c(PSH | ACK, self.sseq, self.cseq, chunk));
                self.sseq += n;
                frames.push(self.to_s(ACK, self.cseq, self.sseq, &[]));
            }
        }
    }

    fn close(&mut self, client_first: bool, frames: &mut Vec<Vec<u8>>) {
        if client_first {
            frames.push(self.to_s(FIN | ACK, self.cseq, self.sseq, &[]));
            self.cseq += 1;
            frames.push(self.to_c(FIN | ACK, self.sseq, self.cseq, &[]));
            self.sseq += 1;
            frames.push(self.to_s(ACK, self.cseq, self.sseq, &[]));
        } else {
            frames.push(self.to_c(FIN | ACK, self.sseq, self.cseq, &[]));
            self.sseq += 1;
            frames.push(self.to_s(FIN | ACK, self.cseq, self.sseq, &[]));
            self.cseq += 1;
            frames.push(self.to_c(ACK, self.sseq, self.cseq, &[]));
        }
    }
}

/// The frames of one FTP session as the profile's programs would exchange
/// them (the data connection where the client starts it, its SYN's index
/// returned), with `edit` applied to every control line first.
fn ftp_session(
    control: &Template,
    data: &Template,
    edit: &dyn Fn(Vec<u8>) -> Vec<u8>,
) -> (Vec<Vec<u8>>, usize) {
    let client = control.clients.0;
    let server = control.servers.0;
    let mut frames = Vec::new();
    let mut ctl = Tcp::open(client, 40_000, server, control.port, &mut frames);
    let mut data_syn = None;
    for w in converse(&control.client, &control.server) {
        match w {
            Wire::ToServer(b) => ctl.send(true, &edit(b), &mut frames),
            Wire::ToClient(b) => ctl.send(false, &edit(b), &mut frames),
            Wire::Data(group) => {
                assert_eq!(group, data.group);
                data_syn = Some(frames.len());
                // TRex opens it from the control flow's client address.
                let mut d = Tcp::open(client, 40_001, server, data.port, &mut frames);
                for w in converse(&data.client, &data.server) {
                    match w {
                        Wire::ToServer(b) => d.send(true, &b, &mut frames),
                        Wire::ToClient(b) => d.send(false, &b, &mut frames),
                        Wire::Data(g) => panic!("the data connection starts {g}"),
                    }
                }
                d.close(false, &mut frames);
            }
        }
    }
    ctl.close(true, &mut frames);
    (
        frames,
        data_syn.expect("the control connection never starts the data one"),
    )
}

#[test]
fn ftp_profile_data_connection_is_related_through_tollgate() {
    let profile = record_astf("bench/trex/astf/ftp_sessions.py", &["--size", "3000"]);
    let t = templates(&profile);
    assert_eq!(t.len(), 2, "{t:?}");
    let control = t
        .iter()
        .find(|t| t.port == 21)
        .expect("no control template on port 21");
    let data = t.iter().find(|t| t.port != 21).unwrap();
    assert_eq!(control.assoc_port, 21);
    assert_eq!(data.assoc_port, data.port);
    assert!(control.cps >= 0.5);
    // The data template never starts on its own.
    assert_eq!(data.cps, 0.0);
    // One server address, the one the 227 must name; the same client pool.
    assert_eq!(control.servers.0, control.servers.1);
    assert_eq!(data.servers, control.servers);
    assert_eq!(data.clients, control.clients);

    let wire = converse(&control.client, &control.server);
    let text: Vec<String> = wire
        .iter()
        .filter_map(|w| match w {
            Wire::ToServer(b) | Wire::ToClient(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Wire::Data(_) => None,
        })
        .collect();
    let o = control.servers.0.octets();
    let pasv = format!(
        "227 Entering Passive Mode ({},{},{},{},{},{}).\r\n",
        o[0],
        o[1],
        o[2],
        o[3],
        data.port >> 8,
        data.port & 0xff
    );
    assert!(text.contains(&pasv), "{pasv:?} not in {text:?}");
    for line in [
        "USER ",
        "PASS ",
        "TYPE I\r\n",
        "PASV\r\n",
        "RETR ",
        "150 ",
        "226 ",
        "QUIT\r\n",
        "221 ",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(line)),
            "{line:?} not in {text:?}"
        );
    }
    // The data connection starts after the 227 reached the client.
    let pasv_at = wire
        .iter()
        .position(|w| matches!(w, Wire::ToClient(b) if b.starts_with(b"227 ")))
        .unwrap();
    let data_at = wire
        .iter()
        .position(|w| matches!(w, Wire::Data(_)))
        .unwrap();
    assert!(pasv_at < data_at);
    // The file crosses the data connection whole.
    let file = converse(&data.client, &data.server);
    assert_eq!(file, [Wire::ToClient(vec![b'x'; 3000])]);

    let inside = format!("{}/16", control.clients.0);
    let (frames, syn) = ftp_session(control, data, &|b| b);
    let lines = replay(&frames, &inside);
    assert_eq!(lines.len(), frames.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["verdict"], "accept", "frame {i}: {l}");
    }
    assert_eq!(lines[0]["state"], "new");
    assert_eq!(lines[syn]["state"], "related", "{}", lines[syn]);
    assert_eq!(lines[syn]["side"], "inside");
    assert_eq!(lines[syn + 1]["state"], "established");

    // The same session whose 227 names another host: Tollgate refuses the
    // announcement, and the data connection is new from the inside to a port
    // the policy does not open.
    let other = format!("({},{},{},{},", o[0], o[1], o[2], o[3].wrapping_add(1));
    let bounce = |b: Vec<u8>| {
        if b.starts_with(b"227 ") {
            let s = String::from_utf8(b).unwrap();
            s.replacen(&format!("({},{},{},{},", o[0], o[1], o[2], o[3]), &other, 1)
                .into_bytes()
        } else {
            b
        }
    };
    let (frames, syn) = ftp_session(control, data, &bounce);
    let lines = replay(&frames, &inside);
    assert_eq!(lines[syn]["verdict"], "drop", "{}", lines[syn]);
    assert_eq!(lines[syn]["reason"], "policy_default");
}

#[test]
fn http_profile_programs_mirror_each_other() {
    let profile = record_astf(
        "bench/trex/astf/http_cps.py",
        &["--size", "5000", "--cps", "2500"],
    );
    let t = templates(&profile);
    assert_eq!(t.len(), 1);
    let h = &t[0];
    assert_eq!((h.port, h.assoc_port, h.cps), (80, 80, 2500.0));
    let wire = converse(&h.client, &h.server);
    assert_eq!(wire.len(), 2, "{wire:?}");
    let Wire::ToServer(req) = &wire[0] else {
        panic!("{wire:?}")
    };
    let Wire::ToClient(resp) = &wire[1] else {
        panic!("{wire:?}")
    };
    assert!(req.starts_with(b"GET /") && req.ends_with(b"\r\n\r\n"));
    let resp = String::from_utf8_lossy(resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 5000"), "{head}");
    assert_eq!(body.len(), 5000);
    // Through Tollgate: new from the inside to port 80, both ways after.
    let mut frames = Vec::new();
    let mut c = Tcp::open(h.clients.0, 40_000, h.servers.0, 80, &mut frames);
    c.send(true, req, &mut frames);
    c.send(false, resp.as_bytes(), &mut frames);
    c.close(true, &mut frames);
    let lines = replay(&frames, &format!("{}/16", h.clients.0));
    assert_eq!(lines[0]["state"], "new");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["verdict"], "accept", "frame {i}: {l}");
    }
}

#[test]
fn trex_config_lets_the_outside_answer_only_what_the_inside_opened() {
    // As udp_flows.py's two directions: a reply from port 1 before port 0
    // has sent is dropped; once port 0 has, replies pass.
    let c = [16, 0, 0, 7];
    let s = [48, 0, 0, 1];
    let udp = |from_client: bool| {
        let p = if from_client {
            Pkt::udp4(c, 1025, s, 12)
        } else {
            Pkt::udp4(s, 12, c, 1025)
        };
        ethernet(&p.payload(&[0x78; 18]).build(), &[])
    };
    // And a connection from the inside to a port the policy does not open.
    let other = ethernet(
        &Pkt::tcp4(c, 40_000, s, 8080).flags(SYN).seq(1).build(),
        &[],
    );
    let lines = replay(&[udp(false), udp(true), udp(false), other], "16.0.0.0/8");
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["verdict"].as_str().unwrap(), l["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("drop", "new"),
            ("accept", "new"),
            ("accept", "established"),
            ("drop", "new")
        ]
    );
    assert_eq!(lines[0]["reason"], "policy_default");
    assert_eq!(lines[3]["reason"], "policy_default");
}
