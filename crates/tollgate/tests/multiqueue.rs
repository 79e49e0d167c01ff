//! Many workers on multi-queue interfaces (root; CI runs it as root): the lab's
//! veth pairs get 2 queues and `tollgate run` one worker per queue. A veth
//! frame arrives on the queue its sender transmitted on, and TCP sockets pick
//! theirs at random per connection: the two directions of a connection, and a
//! control connection and its data connections, land on different workers,
//! as with a NIC without symmetric RSS. Frames are handed to the worker that
//! owns their connection and expectations travel between workers, so real
//! FTP transfers (passive and active, under a policy that admits only FTP
//! control connections from the inside) and iperf3 work, and the handoffs
//! and expectation messages are counted.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;
use serde_json::Value;

mod common;
use common::*;

/// Runs `tollgate run` with two workers on the lab, 12 FTP transfers
/// (passive and active, byte-compared), an iperf3 run and a refused
/// connection; returns the workers' stats and the number of FTP transfers.
fn run_ftp_and_iperf(lab: &Lab, tag: &str) -> (Vec<Value>, u64) {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tgmq-{pid}-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ftp")).expect("dir");
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
                "proto = \"tcp\"\ndport = 5201",
            ],
        ),
    )
    .expect("config");
    let payload: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("ftp/file.bin"), &payload).expect("file");
    let conf = dir.join("vsftpd.conf");
    std::fs::write(&conf, vsftpd_conf(&dir.join("ftp"))).expect("vsftpd.conf");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new("ip")
            .args(["netns", "exec", &lab.boxns, BIN, "run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tollgate run"),
    );
    procs.0.push(
        Command::new("ip")
            .args(["netns", "exec", &lab.server, "vsftpd"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vsftpd"),
    );
    procs.0.push(
        Command::new("ip")
            .args(["netns", "exec", &lab.server, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "tollgate did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stats(&sock).len(), 2, "one worker per queue");
    // The symmetric-RSS setup refuses veth clearly and changes nothing.
    let rss = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rss.sh");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.boxns])
        .arg(&rss)
        .args(["plan", "tgin", "2"])
        .output()
        .expect("rss.sh");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tgin has no RSS to configure"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));

    // Several transfers each way: the queues are picked at random per
    // connection, so some control and data connections land apart.
    for i in 0..6 {
        for active in [false, true] {
            let out = dir.join(format!("out-{i}-{active}"));
            let out_s = out.display().to_string();
            let mut args = vec![
                "curl",
                "-s",
                "-g",
                "--max-time",
                "8",
                "ftp://10.77.0.2/file.bin",
                "-o",
                &out_s,
            ];
            if active {
                args.extend(["--ftp-port", "-"]);
            }
            let (ok, msg) = lab.exec(&lab.client, &args);
            assert!(ok, "transfer {i} (active: {active}) failed: {msg}");
            assert!(
                std::fs::read(&out).ok().as_deref() == Some(&payload[..]),
                "transfer {i} (active: {active}) corrupted"
            );
        }
    }
    let (ok, out) = lab.exec(&lab.client, &["iperf3", "-c", "10.77.0.2", "-t", "2"]);
    assert!(ok, "iperf3: {out}");
    // New connections other than FTP control and iperf3 are refused.
    let (ok, _) = lab.exec(
        &lab.client,
        &["curl", "-s", "--max-time", "2", "http://10.77.0.2:8080/"],
    );
    assert!(!ok);

    let st = stats(&sock);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    (st, 12)
}

/// Takes the lab lock and checks root and the tools; `None`: skip.
fn begin() -> Option<std::sync::MutexGuard<'static, ()>> {
    let one = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !ready(&[
        ["vsftpd", "-v"],
        ["iperf3", "--version"],
        ["curl", "--version"],
    ]) {
        return None;
    }
    Lab::clean_stale();
    Some(one)
}

#[test]
fn two_workers_with_asymmetric_queues() {
    let Some(_one) = begin() else { return };
    let lab = Lab::build_with(2).expect("lab");
    let (st, ftp) = run_ftp_and_iperf(&lab, "random");
    let handoffs = total(&st, "handoffs");
    let msgs = total(&st, "expect_msgs_out");
    assert!(
        handoffs > 0,
        "asymmetric queues must hand frames over: {st:?}"
    );
    assert_eq!(total(&st, "handoffs"), total(&st, "handoffs_in"), "{st:?}");
    assert_eq!(total(&st, "handoff_dropped"), 0, "{st:?}");
    assert!(
        msgs >= 2 * ftp,
        "every FTP expectation is announced and used: {st:?}"
    );
    assert_eq!(total(&st, "expect_msgs_dropped"), 0, "{st:?}");
    // Related connections: every data connection, on whichever worker.
    assert_eq!(total(&st, "expect_new"), ftp, "{st:?}");
    eprintln!("handoffs {handoffs}, expectation messages {msgs}");
}

/// Steered queues (a tc egress program on each endpoint picks the queue, as
/// a NIC would): with symmetric RSS nothing is handed over; with an
/// asymmetric NIC (client on queue 0, server on queue 1) every connection has
/// one direction handed over; real FTP and iperf3 work in both.
#[test]
fn steered_symmetric_and_asymmetric() {
    use bench::steer::{SteerMode, Steering};
    let Some(_one) = begin() else { return };
    for symmetric in [true, false] {
        let lab = std::sync::Arc::new(Lab::build_with(2).expect("lab"));
        // The steering programs live in the endpoints' namespaces: attach them
        // from a thread that enters each.
        let l = lab.clone();
        std::thread::spawn(move || {
            for (ns, fixed) in [(&l.client, 0), (&l.server, 1)] {
                l.enter(ns).expect("enter");
                let mode = if symmetric {
                    SteerMode::Symmetric(2)
                } else {
                    SteerMode::Fixed(fixed)
                };
                // The program stays attached when this handle goes.
                let _ = Steering::attach("eth0", mode).expect("steering");
            }
        })
        .join()
        .expect("steering thread");
        let (st, ftp) = run_ftp_and_iperf(&lab, if symmetric { "sym" } else { "asym" });
        let handoffs = total(&st, "handoffs");
        eprintln!(
            "{}: handoffs {handoffs}, expectation messages {}, FTP transfers {ftp}",
            if symmetric { "symmetric" } else { "asymmetric" },
            total(&st, "expect_msgs_out")
        );
        // Both workers received frames from the NIC.
        assert!(
            st.iter()
                .all(|s| s["rx"][0].as_u64().unwrap_or(0) + s["rx"][1].as_u64().unwrap_or(0) > 0),
            "{st:?}"
        );
        if symmetric {
            assert_eq!(
                handoffs, 0,
                "symmetric RSS: every packet on its owner's queue: {st:?}"
            );
        } else {
            assert!(
                handoffs > 1000,
                "asymmetric: one direction of each connection handed over: {st:?}"
            );
        }
        assert_eq!(total(&st, "expect_new"), ftp, "{st:?}");
    }
}
