//! A real TFTP server and client through Tollgate in the lab (root; CI runs
//! it as root): tftpd-hpa outside answers from a new port, which passes only
//! as a connection the TFTP helper expected.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{lab_allowed, Running};
use conntrack::policy::{Action, Policy, PortRange, ProtoMatch, Rule, Side, StateSet};
use conntrack::tuple::ipproto;
use conntrack::{Config, CtState, HelperKind, Pipeline};
use dataplane::lab::Lab;
use dataplane::Counters;

fn policy(helper: bool) -> Policy {
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related)
        .with(CtState::Untracked);
    let mut tftp = Rule::any(Action::Accept);
    tftp.from = Some(Side::Inside);
    tftp.states = StateSet::default().with(CtState::New);
    tftp.proto = ProtoMatch::Proto(ipproto::UDP);
    tftp.dport = vec![PortRange { lo: 69, hi: 69 }];
    tftp.helper = helper.then_some(HelperKind::Tftp);
    Policy {
        rules: vec![est, tftp],
        default: Action::Drop,
    }
}

fn fetch(helper: bool) -> bool {
    let lab = Arc::new(Lab::build().expect("lab"));
    let root = std::env::temp_dir().join(format!("tgtftp-{}-{helper}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("tftp root");
    let payload: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8)
        .collect();
    std::fs::write(root.join("file.bin"), &payload).expect("file");
    let mut running = Running::worker(
        &lab,
        Pipeline::new(Config::default(), policy(helper)),
        Arc::new(Counters::default()),
        false,
    );
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server,
            "in.tftpd",
            "-L",
            "-u",
            "root",
            "-a",
            "10.77.0.2:69",
            "-s",
        ])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("in.tftpd");
    running.server = Some(server);
    std::thread::sleep(Duration::from_millis(700));
    let out = root.join("got.bin");
    let out_s = out.display().to_string();
    let (ok, _) = lab.exec(
        &lab.client,
        &[
            "timeout",
            "6",
            "tftp",
            "10.77.0.2",
            "-m",
            "binary",
            "-c",
            "get",
            "file.bin",
            &out_s,
        ],
    );
    let good = ok && std::fs::read(&out).ok().as_deref() == Some(&payload[..]);
    drop(running);
    let _ = std::fs::remove_dir_all(&root);
    good
}

#[test]
fn tftp_passes_only_with_the_helper() {
    if !lab_allowed() {
        return;
    }
    if Command::new("in.tftpd")
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tftpd-hpa must be installed in CI"
        );
        eprintln!("SKIPPED: tftpd-hpa is not installed");
        return;
    }
    Lab::clean_stale();
    assert!(fetch(true), "with the TFTP helper the transfer works");
    assert!(!fetch(false), "without it the server's answer is dropped");
}
