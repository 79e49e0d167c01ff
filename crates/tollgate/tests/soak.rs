//! A soak run in the lab (root; CI runs it as root): two workers on two-queue
//! veths under a strict policy, with a long iperf3 transfer, FTP downloads
//! (passive and active, through the helper) and short HTTP connections, all
//! at once. Every transferred byte is compared; the daemon's memory stays
//! flat; nothing is dropped that should not be. `TOLLGATE_SOAK_SECS` sets the
//! length (20 s by default; run 600 by hand).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::lab::Lab;

mod common;
use common::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn soak_mixed_traffic() {
    if !ready(&[
        ["vsftpd", "-v"],
        ["iperf3", "--version"],
        ["curl", "--version"],
        ["python3", "--version"],
    ]) {
        return;
    }
    let secs: u64 = std::env::var("TOLLGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Lab::clean_stale();
    let lab = Arc::new(Lab::build_with(2).expect("lab"));
    let dir = std::env::temp_dir().join(format!("tgsoak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ftp")).expect("dir");
    std::fs::create_dir_all(dir.join("www")).expect("dir");
    let sock = dir.join("control.sock");
    let cfg = dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        lab_config(
            &sock,
            2,
            "",
            &[
                "proto = \"tcp\"\ndport = 21\nhelper = \"ftp\"",
                "proto = \"tcp\"\ndport = [5201, 8080]",
                "proto = \"icmp\"",
            ],
        ),
    )
    .expect("config");
    let file: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("ftp/file.bin"), &file).expect("file");
    let page: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.join("www/page.txt"), &page).expect("page");
    let conf = dir.join("vsftpd.conf");
    std::fs::write(&conf, vsftpd_conf(&dir.join("ftp"))).expect("vsftpd.conf");
    let mut procs = Procs(Vec::new());
    let tg = spawn_in(
        &lab.boxns,
        &[BIN, "run", "--config", &cfg.display().to_string()],
    );
    let tg_pid = tg.id();
    procs.0.push(tg);
    procs.0.push(spawn_in(
        &lab.server,
        &["vsftpd", &conf.display().to_string()],
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
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "tollgate did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));

    let stop = Arc::new(AtomicBool::new(false));
    let ftp_ok = Arc::new(AtomicU64::new(0));
    let http_ok = Arc::new(AtomicU64::new(0));
    let iperf = {
        let l = lab.clone();
        let s = secs.to_string();
        std::thread::spawn(move || {
            l.exec(
                &l.client,
                &["iperf3", "-c", "10.77.0.2", "-t", &s, "-b", "300M"],
            )
        })
    };
    let ftp = {
        let (l, stop, n, dir, file) = (
            lab.clone(),
            stop.clone(),
            ftp_ok.clone(),
            dir.clone(),
            file.clone(),
        );
        std::thread::spawn(move || -> Result<(), String> {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let active = i % 2 == 1;
                let out = dir.join("ftp.out");
                let _ = std::fs::remove_file(&out);
                let out_s = out.display().to_string();
                let mut args = vec![
                    "curl",
                    "-s",
                    "-g",
                    "--max-time",
                    "10",
                    "ftp://10.77.0.2/file.bin",
                    "-o",
                    &out_s,
                ];
                if active {
                    args.extend(["--ftp-port", "-"]);
                }
                let (ok, msg) = l.exec(&l.client, &args);
                if !ok || std::fs::read(&out).ok().as_deref() != Some(&file[..]) {
                    return Err(format!(
                        "FTP download {i} (active: {active}) failed or differs: {msg}"
                    ));
                }
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        })
    };
    let http = {
        let (l, stop, n, page) = (lab.clone(), stop.clone(), http_ok.clone(), page.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let (ok, body) = l.exec(
                    &l.client,
                    &[
                        "curl",
                        "-s",
                        "--max-time",
                        "5",
                        "http://10.77.0.2:8080/page.txt",
                    ],
                );
                if !ok || body.as_bytes() != &page[..] {
                    return Err(format!(
                        "HTTP fetch {} failed or differs",
                        n.load(Ordering::Relaxed)
                    ));
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // Memory once everything runs, and at the end.
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = rss_kib(tg_pid);
    let (ok, out) = iperf.join().expect("iperf thread");
    stop.store(true, Ordering::Relaxed);
    let ftp_r = ftp.join().expect("ftp thread");
    let http_r = http.join().expect("http thread");
    let rss_end = rss_kib(tg_pid);
    assert!(ok, "iperf3: {out}");
    assert_eq!(ftp_r, Ok(()));
    assert_eq!(http_r, Ok(()));
    let st = stats(&sock);
    let (ftps, https) = (
        ftp_ok.load(Ordering::Relaxed),
        http_ok.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {secs} s: {ftps} FTP downloads, {https} HTTP fetches, iperf3 ok; RSS {rss_start} -> {rss_end} KiB; \
         handoffs {}, expectation messages {}, dropped {}/{}, invalid {}",
        total(&st, "handoffs"),
        total(&st, "expect_msgs_out"),
        st.iter().map(|s| s["dropped"][0].as_u64().unwrap_or(0)).sum::<u64>(),
        st.iter().map(|s| s["dropped"][1].as_u64().unwrap_or(0)).sum::<u64>(),
        total(&st, "invalid"),
    );
    assert!(
        ftps >= 4 && https >= 10,
        "too little traffic: {ftps} FTP, {https} HTTP"
    );
    assert!(
        rss_start > 0 && rss_end <= rss_start + 4096,
        "memory grew: {rss_start} -> {rss_end} KiB"
    );
    for key in [
        "handoff_dropped",
        "expect_msgs_dropped",
        "events_dropped",
        "drop",
        "insert_failed",
    ] {
        assert_eq!(total(&st, key), 0, "{key}: {st:?}");
    }
    assert_eq!(
        total(&st, "expect_new"),
        ftps,
        "every FTP data connection related: {st:?}"
    );
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
