//! A real FTP server and client through Tollgate in the lab (root; CI runs
//! it as root): vsftpd outside, curl inside, under a policy that lets the
//! inside open only FTP control connections. Passive (EPSV) and active (EPRT)
//! transfers succeed with the FTP helper and fail without it.

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
    let mut inv = Rule::any(Action::Drop);
    inv.states = StateSet::default().with(CtState::Invalid);
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related)
        .with(CtState::Untracked);
    let mut ftp = Rule::any(Action::Accept);
    ftp.from = Some(Side::Inside);
    ftp.states = StateSet::default().with(CtState::New);
    ftp.proto = ProtoMatch::Proto(ipproto::TCP);
    ftp.dport = vec![PortRange { lo: 21, hi: 21 }];
    ftp.helper = helper.then_some(HelperKind::Ftp);
    Policy {
        rules: vec![inv, est, ftp],
        default: Action::Drop,
    }
}

/// Transfers a file passively and actively over IPv4 or IPv6; returns
/// (passive ok, active ok).
fn transfers(helper: bool, v6: bool) -> (bool, bool) {
    let lab = Arc::new(Lab::build().expect("lab"));
    let root = std::env::temp_dir().join(format!("tgftp-{}-{helper}-{v6}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("ftp root");
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("file.bin"), &payload).expect("file");
    let conf = root.with_extension("conf");
    std::fs::write(
        &conf,
        format!(
            "{}background=NO\n\
anonymous_enable=YES\nno_anon_password=YES\nanon_root={}\nlocal_enable=NO\nwrite_enable=NO\n\
seccomp_sandbox=NO\npasv_enable=YES\npasv_min_port=40000\npasv_max_port=40100\n\
port_enable=YES\nconnect_from_port_20=YES\nxferlog_enable=NO\nsecure_chroot_dir=/var/run/vsftpd/empty\n",
            if v6 {
                "listen=NO\nlisten_ipv6=YES\nlisten_address6=fd77::2\n"
            } else {
                "listen=YES\nlisten_ipv6=NO\nlisten_address=10.77.0.2\n"
            },
            root.display()
        ),
    )
    .expect("vsftpd.conf");
    std::fs::create_dir_all("/var/run/vsftpd/empty").expect("vsftpd empty dir");
    let mut running = Running::worker(
        &lab,
        Pipeline::new(Config::default(), policy(helper)),
        Arc::new(Counters::default()),
        false,
    );
    let server = Command::new("ip")
        .args(["netns", "exec", &lab.server, "vsftpd"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vsftpd");
    running.server = Some(server);
    std::thread::sleep(Duration::from_millis(700));
    let fetch = |active: bool| {
        let out = root.join(if active { "active.out" } else { "passive.out" });
        let url = if v6 {
            "ftp://[fd77::2]/file.bin"
        } else {
            "ftp://10.77.0.2/file.bin"
        };
        let mut args = vec!["-s", "-g", "--max-time", "6", url, "-o"];
        let out_s = out.display().to_string();
        args.push(&out_s);
        if active {
            args.extend(["--ftp-port", "-"]);
        }
        let (ok, _) = lab.exec(&lab.client, &[&["curl"][..], &args[..]].concat());
        ok && std::fs::read(&out).ok().as_deref() == Some(&payload[..])
    };
    let passive = fetch(false);
    let active = fetch(true);
    drop(running);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&conf);
    (passive, active)
}

#[test]
fn ftp_passes_only_with_the_helper() {
    if !lab_allowed() {
        return;
    }
    if Command::new("vsftpd")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "vsftpd must be installed in CI"
        );
        eprintln!("SKIPPED: vsftpd is not installed");
        return;
    }
    Lab::clean_stale();
    assert_eq!(
        transfers(true, false),
        (true, true),
        "IPv4 with the FTP helper: passive, active"
    );
    assert_eq!(
        transfers(true, true),
        (true, true),
        "IPv6 (EPSV, EPRT |2|) with the helper"
    );
    assert_eq!(
        transfers(false, false),
        (false, false),
        "without it both must fail"
    );
}
