//! The XDP fast path end to end (root; CI runs it as root): `tollgate run`
//! with `offload = true` bridges the lab, and a TCP echo stream through it
//! is listed as offloaded with live counters and timeout; a segment outside
//! its window, injected from the client's side, is dropped for the reason
//! the slow path gives and the stream goes on; FIN and RST close
//! connections; a policy reload that forbids the stream stops it at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;
use serde_json::Value;

mod common;
use common::*;

/// A client from a fixed port: 1000 bytes every 20 ms for `secs`, each
/// echoed; prints JSON (bytes echoed, seconds to the last echo); closes with
/// FIN or, with `rst`, with RST.
const CLIENT: &str = r#"
import socket, struct, sys, time, json
sport, port, secs, close = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.bind(("10.77.0.1", sport))
c.settimeout(3)
c.connect(("10.77.0.2", port))
c.settimeout(0.2)
start = time.time(); got = 0; last = 0.0; msg = b"x" * 1000
while time.time() - start < secs:
    try:
        c.sendall(msg)
    except OSError:
        break
    want = len(msg)
    while want > 0:
        try:
            d = c.recv(want)
        except socket.timeout:
            break
        if not d:
            break
        want -= len(d); got += len(d); last = time.time() - start
    time.sleep(0.02)
if close == "rst":
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print(json.dumps({"echoed": got, "last": last}))
"#;

/// Sends one TCP segment on the client's connection `sport` ->
/// 10.77.0.2:`dport` whose sequence number is the client's current one (read
/// from a segment tcpdump sees) but whose ACK is 2^30 beyond anything the
/// server sent: outside the window (the core's "ACK over the upper bound"),
/// as a frame on the client's eth0 (to the server's MAC).
const INJECT: &str = r#"
import socket, struct, sys, subprocess, re
sport, dport, dst_mac = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(":", ""))
out = subprocess.run(["tcpdump", "-i", "eth0", "-c", "1", "-nn", "-S", "-l",
    "tcp and src port %d and dst port %d and tcp[13] & 0x10 != 0" % (sport, dport)],
    capture_output=True, text=True, timeout=10).stdout
m = re.search(r"seq (\d+)(?::(\d+))?, ack (\d+)", out)
seq = int(m.group(2) or m.group(1)); ack = int(m.group(3))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src_mac = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
src, dst = socket.inet_aton("10.77.0.1"), socket.inet_aton("10.77.0.2")
payload = b"injected"
tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, (ack + (1 << 30)) & 0xffffffff, 5 << 4, 0x10, 1024, 0, 0) + payload
pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 4242, 0x4000, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s.send(dst_mac + src_mac + b"\x08\x00" + ip + tcp)
"#;

/// The connection to `dport` in `ct list --json`, if listed.
fn conn(sock: &Path, dport: u16) -> Option<Value> {
    let (ok, out, err) = cli(
        sock,
        &[
            "ct",
            "list",
            "--json",
            "-p",
            "tcp",
            "--dport",
            &dport.to_string(),
        ],
    );
    assert!(ok, "ct list: {err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["conn"].clone())
        .next()
}

/// The client, started in the background; its JSON result when joined.
fn client(
    lab: &Lab,
    dir: &Path,
    sport: u16,
    port: u16,
    secs: f32,
    close: &str,
) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.client, "python3"])
        .arg(dir.join("client.py"))
        .args([
            &sport.to_string(),
            &port.to_string(),
            &secs.to_string(),
            close,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client")
}

fn result(c: std::process::Child) -> Value {
    let out = c.wait_with_output().expect("client ends");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {text:?} ({e}); stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn config(sock: &Path, metrics: u16, forbid: Option<u16>) -> String {
    let sections = format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n");
    let mut c = lab_config(sock, 1, &sections, &["proto = \"tcp\""]);
    c = c.replace("queues = 1\n", "queues = 1\noffload = true\n");
    if let Some(p) = forbid {
        // First rule: the stream to `p` is dropped, established or not.
        c = c.replace(
            "[[rule]]\nstate = [\"invalid\"]",
            &format!("[[rule]]\nproto = \"tcp\"\ndport = {p}\naction = \"drop\"\n\n[[rule]]\nstate = [\"invalid\"]"),
        );
    }
    c
}

#[test]
fn offloaded_streams_end_to_end() {
    if !ready(&[
        ["python3", "--version"],
        ["curl", "--version"],
        ["tcpdump", "--version"],
    ]) {
        return;
    }
    let _one = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Lab::clean_stale();
    let lab = Lab::build().expect("lab");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tgoff-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for (f, body) in [
        ("server.py", ECHO_SERVER),
        ("client.py", CLIENT),
        ("inject.py", INJECT),
    ] {
        std::fs::write(dir.join(f), body).expect("script");
    }
    let sock = dir.join("control.sock");
    let port = 21_000 + (pid % 1000) as u16;
    let cfg = dir.join("tollgate.toml");
    std::fs::write(&cfg, config(&sock, port, None)).expect("config");
    let mut procs = Procs(Vec::new());
    let tg = Command::new("ip")
        .args(["netns", "exec", &lab.boxns, BIN, "run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    procs.0.push(tg);
    wait_socket(&sock);
    for p in ["7000", "7001", "7002"] {
        procs.0.push(spawn_in(
            &lab.server,
            &["python3", dir.join("server.py").to_str().unwrap_or(""), p],
        ));
    }
    std::thread::sleep(Duration::from_millis(500));

    // 1. A stream: offloaded, live counters and timeout in `ct list`.
    let c1 = client(&lab, &dir, 41_000, 7000, 4.0, "fin");
    wait_for("the stream to be offloaded", || {
        conn(&sock, 7000).is_some_and(|c| c["offloaded"] == true)
    });
    let a = conn(&sock, 7000).expect("listed");
    std::thread::sleep(Duration::from_millis(800));
    let b = conn(&sock, 7000).expect("listed");
    let pk = |c: &Value| c["orig"]["packets"].as_u64().unwrap_or(0);
    assert!(
        pk(&b) > pk(&a) + 10,
        "live counters: {} then {}",
        pk(&a),
        pk(&b)
    );
    assert_eq!(b["tcp_state"], "ESTABLISHED");
    let timeout = b["timeout"].as_u64().unwrap_or(0);
    assert!(timeout >= 290, "timeout {timeout}");
    let (ok, text, _) = cli(&sock, &["ct", "list", "-p", "tcp", "--dport", "7000"]);
    assert!(ok && text.contains("[OFFLOAD]"), "{text}");
    let m = metrics(&lab, port);
    assert!(
        metric(&m, "tollgate_offload_entries") >= 1.0,
        "offload gauge"
    );
    // Both interfaces take redirected frames: the re-check has not
    // suspended the fast path (crates/dataplane/tests/lab.rs suspends it).
    assert!(
        m.lines().any(|l| l == "tollgate_offload_suspended 0")
            && m.lines()
                .any(|l| l == "tollgate_offload_suspensions_total 0"),
        "suspension metrics"
    );

    // 2. A segment far outside the window: dropped as the slow path drops
    // it (tcp_out_of_window), and the stream goes on.
    let oow = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("tollgate_drops_total{") && l.contains("reason=\"tcp_out_of_window\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = oow(&metrics(&lab, port));
    let (ok, mac) = lab.exec(&lab.server, &["cat", "/sys/class/net/eth0/address"]);
    assert!(ok);
    let (ok, out) = lab.exec(
        &lab.client,
        &[
            "python3",
            dir.join("inject.py").to_str().unwrap_or(""),
            "41000",
            "7000",
            mac.trim(),
        ],
    );
    assert!(ok, "inject: {out}");
    wait_for("the out-of-window drop", || {
        oow(&metrics(&lab, port)) >= before + 1.0
    });
    let r1 = result(c1);
    let echoed = r1["echoed"].as_u64().unwrap_or(0);
    assert!(echoed >= 150_000, "the stream went on: {r1}");
    assert!(r1["last"].as_f64().unwrap_or(0.0) > 3.5, "{r1}");
    // 3. Closed with FIN: no longer offloaded, closing state.
    wait_for("FIN to close the connection", || {
        conn(&sock, 7000).is_some_and(|c| {
            c["offloaded"] != true
                && matches!(
                    c["tcp_state"].as_str(),
                    Some("TIME_WAIT" | "CLOSE" | "LAST_ACK")
                )
        })
    });

    // 4. Closed with RST.
    let c2 = client(&lab, &dir, 41_001, 7001, 1.5, "rst");
    wait_for("the second stream to be offloaded", || {
        conn(&sock, 7001).is_some_and(|c| c["offloaded"] == true)
    });
    let r2 = result(c2);
    assert!(r2["echoed"].as_u64().unwrap_or(0) > 30_000, "{r2}");
    wait_for("RST to close the connection", || {
        conn(&sock, 7001).is_none_or(|c| c["tcp_state"] == "CLOSE" && c["offloaded"] != true)
    });

    // 5. A reload that forbids a running, offloaded stream stops it at once.
    let c3 = client(&lab, &dir, 41_002, 7002, 4.0, "fin");
    wait_for("the third stream to be offloaded", || {
        conn(&sock, 7002).is_some_and(|c| c["offloaded"] == true)
    });
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&cfg, config(&sock, port, Some(7002))).expect("config");
    let t_reload = Instant::now();
    let (ok, _, err) = cli(&sock, &["reload"]);
    assert!(ok, "reload: {err}");
    let reload_done = t_reload.elapsed();
    let r3 = result(c3);
    // The client started about 1 s before the reload (offload + 0.5 s).
    let last = r3["last"].as_f64().unwrap_or(99.0);
    assert!(
        last < 3.0,
        "echoes went on after the reload (last at {last} s, reload took {reload_done:?}): {r3}"
    );
    let m = metrics(&lab, port);
    assert!(
        metric(&m, "tollgate_offload_packets_total") > 100.0,
        "fast path used"
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
