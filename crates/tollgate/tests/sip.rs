//! A real SIP call with RTP through Tollgate (root; CI runs it as root):
//! SIPp's UAS with RTP echo outside, SIPp's UAC playing 8 s of G.711 audio
//! inside, under a policy that lets the inside open only SIP signalling.
//! With the SIP helper the audio (and its echo) flows as related; without
//! it, the audio is dropped while the signalling still passes.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;
use serde_json::Value;

mod common;
use common::*;
const PCAPS: &str = "/usr/share/sip-tester";

fn cli(sock: &Path, args: &[&str]) -> Vec<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = common::cli(sock, &a);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// One call; returns (UAC succeeded, the media connection's packets each way
/// if it exists, expectations used, frames dropped inside).
fn call(helper: bool) -> (bool, Option<(u64, u64)>, u64, u64) {
    let lab = Lab::build().expect("lab");
    let dir = std::env::temp_dir().join(format!("tgsip-{}-{helper}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The UAC's scenario plays pcap/g711a.pcap relative to its directory.
    std::os::unix::fs::symlink(PCAPS, dir.join("pcap")).expect("pcap link");
    let sock = dir.join("control.sock");
    let cfg = dir.join("tollgate.toml");
    let helper_line = if helper { "helper = \"sip\"\n" } else { "" };
    let rule = format!("proto = \"udp\"\ndport = 5060\n{helper_line}");
    std::fs::write(&cfg, lab_config(&sock, 1, "", &[&rule])).expect("config");
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
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "tollgate did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    procs.0.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server,
                "sipp",
                "-sn",
                "uas",
                "-i",
                "10.77.0.2",
                "-p",
                "5060",
            ])
            .args(["-mi", "10.77.0.2", "-mp", "6000", "-rtp_echo", "-nostdin"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp uas"),
    );
    std::thread::sleep(Duration::from_millis(700));
    let uac = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "sipp",
            "10.77.0.2:5060",
            "-sn",
            "uac_pcap",
        ])
        .args(["-i", "10.77.0.1", "-p", "5061", "-m", "1", "-l", "1"])
        .args(["-timeout", "40s", "-timeout_error", "-nostdin"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp uac");
    // The media connection: the UAC's audio to the UAS's media port.
    let media = cli(&sock, &["ct", "list", "-p", "udp", "--dport", "6000"])
        .first()
        .map(|v| {
            let c = &v["conn"];
            (
                c["orig"]["packets"].as_u64().unwrap_or(0),
                c["reply"]["packets"].as_u64().unwrap_or(0),
            )
        });
    let st = &cli(&sock, &["ct", "stats"])[0]["stats"];
    let used = st["expect_new"].as_u64().unwrap_or(0);
    let dropped = st["dropped"][0].as_u64().unwrap_or(0);
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    (uac.success(), media, used, dropped)
}

#[test]
fn sip_call_with_rtp_needs_the_helper() {
    if !ready(&[["sipp", "-v"]]) {
        return;
    }
    Lab::clean_stale();
    let (ok, media, used, _) = call(true);
    assert!(ok, "the call must succeed");
    let (out, back) = media.expect("with the helper the audio flows");
    eprintln!("with the helper: audio {out} packets out, {back} echoed, {used} expectations used");
    assert!(out > 200, "g711a.pcap: about 250 RTP packets: {out}");
    assert!(back > 200, "the UAS echoes it: {back}");
    assert!(used >= 1);
    let (ok, media, used, dropped) = call(false);
    eprintln!("without: call ok {ok}, media {media:?}, {dropped} frames dropped inside");
    assert!(ok, "signalling alone still passes");
    assert_eq!(media, None, "without the helper no audio gets through");
    assert_eq!(used, 0);
    assert!(dropped > 200, "the audio is dropped: {dropped}");
}
