//! The control plane against a running instance (root; CI runs it as root):
//! `tollgate run` bridges the lab's interfaces, and every CLI verb is used on
//! it: `ct list` (compared with the connections the test made), filters,
//! `ct stats`, `ct events`, `ct flush`, `expect add|list|del`, `reload` and
//! SIGHUP (an invalid config is refused and the running policy stays; a
//! reload during an iperf3 transfer does not interrupt it), malformed and
//! oversized requests, `/metrics`, and a real Prometheus server scraping it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control::proto::{parse_reply, ConnJson, EventName, ExpectJson, Reply, WorkerStats};
use dataplane::lab::Lab;
use serde_json::Value;

mod common;
use common::*;

/// A config for the lab: pings and TCP to port 5201 may be opened from the
/// inside (`tcp_new = false` leaves TCP to what is established).
fn config(sock: &Path, metrics: u16, tcp_new: bool) -> String {
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n");
    let mut rules = vec!["proto = \"icmp\""];
    if tcp_new {
        rules.push("proto = \"tcp\"\ndport = 5201");
    }
    lab_config(sock, 1, &metrics, &rules)
}

/// The CLI's `--json` lines: the daemon's replies, typed.
fn replies(s: &str) -> Vec<Reply> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_reply(l.as_bytes()).expect("a reply"))
        .collect()
}

/// `ct list --json` with extra filter arguments: the connections.
fn conns(sock: &Path, filter: &[&str]) -> Vec<ConnJson> {
    let mut args = vec!["ct", "list", "--json"];
    args.extend_from_slice(filter);
    let (ok, out, err) = cli(sock, &args);
    assert!(ok, "ct list failed: {err}");
    replies(&out)
        .into_iter()
        .map(|r| match r {
            Reply::Conn(c) => c,
            other => panic!("not a connection: {other:?}"),
        })
        .collect()
}

/// `ct stats --json`: worker 0's counters.
fn stats(sock: &Path) -> WorkerStats {
    let (ok, out, err) = cli(sock, &["ct", "stats", "--json"]);
    assert!(ok, "ct stats failed: {err}");
    match replies(&out).into_iter().next() {
        Some(Reply::Stats(s)) => s,
        other => panic!("not stats: {other:?}"),
    }
}

/// `expect list --json`: the expectations.
fn expectations(sock: &Path) -> Vec<ExpectJson> {
    let (ok, out, err) = cli(sock, &["expect", "list", "--json"]);
    assert!(ok, "expect list failed: {err}");
    replies(&out)
        .into_iter()
        .map(|r| match r {
            Reply::Expect(e) => e,
            other => panic!("not an expectation: {other:?}"),
        })
        .collect()
}

/// Sends raw bytes to the control socket; returns the reply line.
fn raw(sock: &Path, bytes: &[u8]) -> Reply {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // An oversized request may be answered (and closed) before it is all
    // written: ignore write errors.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reply");
    parse_reply(line.trim_end().as_bytes()).expect("a reply")
}

fn iperf(lab: &Lab, secs: &str) -> (bool, String) {
    lab.exec(
        &lab.client,
        &[
            "iperf3",
            "-c",
            "10.77.0.2",
            "-t",
            secs,
            "--connect-timeout",
            "2000",
        ],
    )
}

#[test]
fn control_plane_end_to_end() {
    if !ready(&[
        ["prometheus", "--version"],
        ["iperf3", "--version"],
        ["curl", "--version"],
    ]) {
        return;
    }
    Lab::clean_stale();
    let lab = std::sync::Arc::new(Lab::build().expect("lab"));
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tgctl-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("control.sock");
    let port = 19_000 + (pid % 1000) as u16;
    let cfg_path: PathBuf = dir.join("tollgate.toml");
    std::fs::write(&cfg_path, config(&sock, port, true)).expect("config");
    let mut procs = Procs(Vec::new());
    let tg = Command::new("ip")
        .args(["netns", "exec", &lab.boxns, BIN, "run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    let tg_pid = tg.id() as i32;
    procs.0.push(tg);
    wait_for("the control socket", || UnixStream::connect(&sock).is_ok());
    // The socket is root-only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Events from here on.
    let mut events = Command::new(BIN)
        .args(["ct", "events", "--json", "--socket"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ct events");
    std::thread::sleep(Duration::from_millis(500));

    // The connections this test makes: one ping, one iperf3 run (a control
    // and a data connection to port 5201).
    let (ok, out) = lab.exec(&lab.client, &["ping", "-c", "2", "-W", "2", "10.77.0.2"]);
    assert!(ok, "ping: {out}");
    let server = Command::new("ip")
        .args(["netns", "exec", &lab.server, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    procs.0.push(server);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = iperf(&lab, "1");
    assert!(ok, "iperf3: {out}");

    let all = conns(&sock, &[]);
    let mut seen: Vec<(String, String, String, u16)> = all
        .iter()
        .map(|c| {
            (
                c.proto.clone(),
                c.orig.src.clone(),
                c.orig.dst.clone(),
                if c.proto == "tcp" { c.orig.dport } else { 0 },
            )
        })
        .collect();
    seen.sort();
    let want = vec![
        (
            "icmp".to_string(),
            "10.77.0.1".to_string(),
            "10.77.0.2".to_string(),
            0,
        ),
        (
            "tcp".to_string(),
            "10.77.0.1".to_string(),
            "10.77.0.2".to_string(),
            5201,
        ),
        (
            "tcp".to_string(),
            "10.77.0.1".to_string(),
            "10.77.0.2".to_string(),
            5201,
        ),
    ];
    assert_eq!(seen, want, "ct list: {all:?}");
    let icmp = all.iter().find(|c| c.proto == "icmp").expect("icmp");
    assert_eq!(icmp.orig.packets, 2);
    assert_eq!(icmp.reply.packets, 2);
    assert!(icmp.seen_reply);
    // Text output: conntrack -L lines.
    let (ok, text, err) = cli(&sock, &["ct", "list", "-p", "icmp"]);
    assert!(ok);
    assert!(text.starts_with("icmp     1 "), "{text}");
    assert!(
        text.contains("src=10.77.0.1 dst=10.77.0.2 type=8 code=0"),
        "{text}"
    );
    assert!(err.contains("1 flow entries"), "{err}");
    // Filters.
    assert_eq!(conns(&sock, &["-p", "tcp"]).len(), 2);
    assert_eq!(
        conns(
            &sock,
            &["-p", "tcp", "--dport", "5201", "-s", "10.77.0.0/24"]
        )
        .len(),
        2
    );
    assert_eq!(conns(&sock, &["-s", "10.77.0.2"]).len(), 0);
    assert_eq!(conns(&sock, &["--dport", "80"]).len(), 0);
    let (ok, _, err) = cli(&sock, &["ct", "list", "--state", "sleepy"]);
    assert!(!ok && err.contains("not a TCP state"), "{err}");

    // Stats: the kernel's names, consistent with the listing.
    let st = stats(&sock);
    assert_eq!(st.entries, 3, "{st:?}");
    assert_eq!(st.new, 3, "{st:?}");
    assert!(st.found > 10, "{st:?}");
    let (ok, text, _) = cli(&sock, &["ct", "stats"]);
    assert!(
        ok && text.contains("found=") && text.contains("early_drop=0"),
        "{text}"
    );

    // Expectations: on behalf of the iperf3 control connection.
    let tcp = conns(&sock, &["-p", "tcp"]);
    let sport = tcp[0].orig.sport.to_string();
    let add = |master_sport: &str| {
        cli(
            &sock,
            &[
                "expect",
                "add",
                "--proto",
                "tcp",
                "--src",
                "10.77.0.2",
                "--dst",
                "10.77.0.1",
                "--dport",
                "6000",
                "--helper",
                "ftp",
                "--master",
                "tcp",
                "10.77.0.1",
                master_sport,
                "10.77.0.2",
                "5201",
            ],
        )
    };
    let (ok, _, err) = add(&sport);
    assert!(ok, "expect add: {err}");
    let exps = expectations(&sock);
    assert_eq!(exps.len(), 1, "{exps:?}");
    assert_eq!(exps[0].dport, 6000);
    assert_eq!(exps[0].sport, None);
    let id = exps[0].id.to_string();
    let (ok, _, err) = add("1");
    assert!(!ok && err.contains("no such master"), "{err}");
    let (ok, _, err) = cli(&sock, &["expect", "del", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&sock, &["expect", "del", &id]);
    assert!(!ok && err.contains("no expectation"), "{err}");
    assert!(expectations(&sock).is_empty());

    // Flush with a filter.
    let (ok, _, err) = cli(&sock, &["ct", "flush", "-p", "icmp"]);
    assert!(
        ok && err.contains("1 flow entries have been deleted"),
        "{err}"
    );
    assert_eq!(conns(&sock, &["-p", "icmp"]).len(), 0);
    assert_eq!(conns(&sock, &["-p", "tcp"]).len(), 2);

    // Events seen meanwhile: new for each connection, destroy for the flush.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(events.id() as i32, libc::SIGTERM);
    }
    let _ = events.wait();
    let mut ev = String::new();
    events
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut ev)
        .expect("events");
    let ev = replies(&ev);
    let count = |kind: EventName, proto: &str| {
        ev.iter()
            .filter(|e| matches!(e, Reply::Event { event, conn } if *event == kind && conn.proto == proto))
            .count()
    };
    assert_eq!(count(EventName::New, "icmp"), 1, "{ev:?}");
    assert_eq!(count(EventName::New, "tcp"), 2, "{ev:?}");
    assert!(count(EventName::Update, "tcp") >= 2, "{ev:?}");
    assert_eq!(count(EventName::Destroy, "icmp"), 1, "{ev:?}");

    // Malformed and oversized requests: an error reply, the daemon lives on.
    let r = raw(&sock, b"this is not json\n");
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("bad request")),
        "{r:?}"
    );
    let r = raw(
        &sock,
        b"{\"cmd\":\"ct_list\",\"filter\":{\"src\":\"300.1.1.1\"}}\n",
    );
    assert!(matches!(r, Reply::Error(_)), "{r:?}");
    let mut big = vec![b'x'; 200_000];
    big.push(b'\n');
    let r = raw(&sock, &big);
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("too large")),
        "{r:?}"
    );
    let (ok, _, _) = cli(&sock, &["ct", "stats"]);
    assert!(ok, "the daemon must survive bad requests");

    // Metrics agree with the workers' counters.
    let m = metrics(&lab, port);
    let st = stats(&sock);
    let fwd_in = metric(
        &m,
        "tollgate_packets_total{worker=\"0\",side=\"inside\",verdict=\"accept\"}",
    );
    assert!(fwd_in > 100.0, "inside accepted {fwd_in}");
    #[allow(clippy::cast_precision_loss)]
    let fwd_stats = st.forwarded[0] as f64;
    assert!(fwd_in <= fwd_stats);
    assert!(m.contains("tollgate_conntrack_found_total{worker=\"0\"}"));
    assert!(m.contains("tollgate_batch_seconds_bucket{worker=\"0\",le=\"0.000001\"}"));
    assert!(m.contains("tollgate_xsk_fill_ring_empty_total{worker=\"0\",side=\"inside\"}"));
    assert!(m.contains("tollgate_expectations{worker=\"0\",helper=\"ftp\"} 0"));
    assert!(m.contains("# TYPE tollgate_drops_total counter"));

    // Reload: an invalid config is refused and the running policy stays.
    std::fs::write(&cfg_path, "[policy]\ndefault = \"maybe\"\n").expect("config");
    let (ok, _, err) = cli(&sock, &["reload"]);
    assert!(
        !ok && err.contains("tollgate.toml:2:11: policy.default"),
        "{err}"
    );
    let (ok, out) = lab.exec(&lab.client, &["ping", "-c", "1", "-W", "2", "10.77.0.2"]);
    assert!(ok, "the old policy must stay: {out}");

    // A reload during an iperf3 transfer: the new policy no longer lets new
    // TCP connections open, yet the running transfer goes on to its end.
    std::fs::write(&cfg_path, config(&sock, port, false)).expect("config");
    let l2 = lab.clone();
    let transfer = std::thread::spawn(move || iperf(&l2, "4"));
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, _, err) = cli(&sock, &["reload"]);
    assert!(ok, "reload: {err}");
    let (ok, out) = transfer.join().expect("iperf thread");
    assert!(ok, "the transfer must survive the reload: {out}");
    let (ok, out) = iperf(&lab, "1");
    assert!(!ok, "new TCP connections must now be refused: {out}");
    // SIGHUP does the same.
    let before = metric(&metrics(&lab, port), "tollgate_policy_reloads_total");
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(tg_pid, libc::SIGHUP);
    }
    wait_for("the SIGHUP reload", || {
        metric(&metrics(&lab, port), "tollgate_policy_reloads_total") > before
    });
    assert_eq!(
        metric(
            &metrics(&lab, port),
            "tollgate_policy_reload_failures_total"
        ),
        1.0
    );

    prometheus_scrapes(&lab, port, &sock, &dir);

    // SIGTERM: a clean stop that removes the socket.
    let mut tg = procs.0.remove(0);
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(tg_pid, libc::SIGTERM);
    }
    let status = tg.wait().expect("wait");
    assert!(status.success(), "tollgate run exited with {status}");
    assert!(!sock.exists(), "the socket must be removed on exit");
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real Prometheus server scrapes Tollgate; a PromQL query returns the
/// packet count the workers report.
fn prometheus_scrapes(lab: &Lab, port: u16, sock: &Path, dir: &Path) {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must install prometheus"
        );
        eprintln!("SKIPPED the Prometheus scrape: no prometheus binary");
        return;
    }
    let yml = dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let web = port + 1000;
    let mut prom = Procs(vec![Command::new("ip")
        .args(["netns", "exec", &lab.boxns, "prometheus"])
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus")]);
    // The test's traffic is over, but IPv6 neighbour discovery may still
    // cross now and then: ask until a scrape and the workers' count agree.
    let query = format!(
        "http://127.0.0.1:{web}/api/v1/query?query=sum(tollgate_packets_total%7Bside%3D%22inside%22%2Cverdict%3D%22accept%22%7D)"
    );
    let t = Instant::now();
    loop {
        let want = stats(sock).forwarded[0];
        let (ok, out) = lab.exec(&lab.boxns, &["curl", "-s", "-m", "2", &query]);
        let got = serde_json::from_str::<Value>(&out).ok().and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
        });
        #[allow(clippy::cast_precision_loss)]
        if ok && got == Some(want as f64) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "Prometheus never reported {want} inside accepts: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prom.0.pop().map(|mut c| {
        let _ = c.kill();
        c.wait()
    }));
}
