//! A SYN flood from spoofed sources against a small table, in the lab (root;
//! CI runs it as root): while the XDP generator (live frames, or the
//! broadcast loop where the kernel refuses them) floods the
//! inside with valid SYNs from 200 000 spoofed (source, port) pairs, an
//! iperf3 transfer that was running keeps flowing and a new HTTP connection
//! still gets through: the unreplied flood entries are early-dropped to make
//! room, the assured ones are never touched. Every refusal is counted.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::gen::Generator;
use conntrack::build::{ethernet, Pkt};
use conntrack::packet::tcp_flags::SYN;
use dataplane::lab::Lab;
use serde_json::Value;

mod common;
use common::*;

fn stats(sock: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["ct", "stats", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("ct stats");
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    serde_json::from_str::<Value>(&line).expect("json")["stats"].clone()
}

#[test]
fn syn_flood_spares_established_and_new_connections() {
    if !ready(&[
        ["iperf3", "--version"],
        ["curl", "--version"],
        ["python3", "--version"],
    ]) {
        return;
    }
    Lab::clean_stale();
    let lab = Arc::new(Lab::build().expect("lab"));
    let dir = std::env::temp_dir().join(format!("tgfl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).expect("dir");
    std::fs::write(dir.join("www/index.html"), "hello through the flood\n").expect("page");
    let sock = dir.join("control.sock");
    let cfg = dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        lab_config(&sock, 1, "[conntrack]\nmax_entries = 4096\n", &[""]),
    )
    .expect("config");
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn_in(
        &lab.boxns,
        &[BIN, "run", "--config", &cfg.display().to_string()],
    ));
    procs.0.push(spawn_in(&lab.server, &["iperf3", "-s"]));
    let www = dir.join("www").display().to_string();
    procs.0.push(spawn_in(
        &lab.server,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "10.77.0.2",
            "--directory",
            &www,
        ],
    ));
    // The server ignores the spoofed SYNs (as if their answers went nowhere):
    // the flood's entries stay unreplied.
    let (ok, out) = lab.exec(
        &lab.server,
        &["nft", "add table netdev fl; add chain netdev fl in { type filter hook ingress device eth0 priority 0; }; add rule netdev fl in ip saddr 10.77.128.0/17 drop"],
    );
    assert!(ok, "nft: {out}");
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "tollgate did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));

    // An established, assured transfer before the flood starts.
    let iperf = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "iperf3",
            "-c",
            "10.77.0.2",
            "-t",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3 -c");
    std::thread::sleep(Duration::from_millis(1500));

    // The flood: valid SYNs from 10.77.128.0/17, many source ports, in
    // bursts the rings between the generator and the worker can hold, each
    // from sources not used yet, until the new connection below is through
    // and the flood has made the table early-drop 20 000 of its entries, or
    // for 3.5 s at most. (One burst of 1.5 M SYNs flat out, as this test once
    // sent, is mostly lost in those rings when the box is slow: on a loaded
    // CI machine 2 848 of them got in, and the table never filled.)
    let frame = ethernet(
        &Pkt::tcp4([10, 77, 128, 0], 1024, [10, 77, 0, 2], 9)
            .flags(SYN)
            .seq(1)
            .build(),
        &[],
    );
    const SOURCES: u32 = 200_000;
    const BURST: u32 = 2_000;
    let curl_done = Arc::new(AtomicBool::new(false));
    let (l, done, flood_sock) = (lab.clone(), curl_done.clone(), sock.clone());
    let flood = std::thread::spawn(move || {
        Lab::pin(0);
        l.enter(&l.client).expect("client ns");
        let g = Generator::load().expect("generator");
        eprintln!("flood: generator: {}", g.backend());
        let start = Instant::now();
        let mut sent = 0u32;
        loop {
            g.syn_flood("eth0", &frame, SOURCES, sent % SOURCES, BURST)
                .expect("flood");
            sent += BURST;
            std::thread::sleep(Duration::from_millis(4));
            if sent.is_multiple_of(10 * BURST) {
                let early = stats(&flood_sock)["early_drop"].as_u64().unwrap_or(0);
                if (done.load(Ordering::Acquire) && early > 20_000)
                    || start.elapsed() > Duration::from_millis(3500)
                {
                    break;
                }
            }
        }
        (sent, start.elapsed())
    });
    // A new connection in the middle of the flood.
    std::thread::sleep(Duration::from_millis(200));
    let (ok, page) = lab.exec(
        &lab.client,
        &[
            "curl",
            "-s",
            "--retry",
            "3",
            "--retry-all-errors",
            "--max-time",
            "4",
            "http://10.77.0.2:8080/index.html",
        ],
    );
    curl_done.store(true, Ordering::Release);
    let (packets, took) = flood.join().expect("flood thread");
    assert!(
        ok && page.contains("hello through the flood"),
        "new connection during the flood: {page}"
    );
    let out = iperf.wait_with_output().expect("iperf3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the established transfer must survive: {text}"
    );
    // After the flood, new connections still open.
    let (ok, _) = lab.exec(
        &lab.client,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://10.77.0.2:8080/index.html",
        ],
    );
    assert!(ok, "a new connection after the flood");

    let st = stats(&sock);
    let early = st["early_drop"].as_u64().unwrap_or(0);
    let entries = st["entries"].as_u64().unwrap_or(0);
    assert!(entries <= 4096, "{st}");
    assert!(early > 10_000, "the flood's entries make room: {st}");
    let rx = st["rx"][0].as_u64().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let rate = f64::from(packets) / took.as_secs_f64();
    eprintln!(
        "flood: {packets} SYNs in {:.2} s ({:.0} kpps offered, in bursts), {rx} frames received inside, \
         {early} early drops, {} refused for a full table, {entries} entries",
        took.as_secs_f64(),
        rate / 1e3,
        st["drop"]
    );
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
