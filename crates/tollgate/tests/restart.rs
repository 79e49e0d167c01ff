//! Restarts and crashes leave nothing behind (root; CI runs it as root):
//! a `tollgate run` killed with SIGKILL leaves no XDP program on its
//! interfaces (links die with the process) and only a dead control socket,
//! which the next start replaces; a clean stop removes the socket; a
//! `tollgate lab` killed with SIGKILL leaves namespaces that the next lab
//! removes.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;

mod common;
use common::*;

fn start(lab: &Lab, cfg: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.boxns, BIN, "run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run")
}

fn xdp_attached(lab: &Lab) -> bool {
    ["tgin", "tgout"].iter().any(|i| {
        let (_, out) = lab.exec(&lab.boxns, &["ip", "link", "show", i]);
        out.contains("xdp")
    })
}

fn ping(lab: &Lab) -> bool {
    // One reply within 4 s (a ping a second until then).
    lab.exec(&lab.client, &["ping", "-c", "1", "-w", "4", "10.77.0.2"])
        .0
}

#[test]
fn crash_and_restart_leave_nothing_behind() {
    if !ready(&[]) {
        return;
    }
    let _one = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Lab::clean_stale();
    let lab = Lab::build().expect("lab");
    let dir = std::env::temp_dir().join(format!("tgrs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("control.sock");
    let cfg = dir.join("tollgate.toml");
    std::fs::write(&cfg, lab_config(&sock, 1, "", &[""])).expect("config");
    // veth has no zero-copy AF_XDP: asking for it is refused clearly, and
    // leaves nothing behind; the default (auto) falls back to copy mode.
    let zc = dir.join("zerocopy.toml");
    std::fs::write(
        &zc,
        lab_config(&sock, 1, "", &[""])
            .replace("queues = 1\n", "queues = 1\nxdp_mode = \"zerocopy\"\n"),
    )
    .expect("config");
    let out = start(&lab, &zc).wait_with_output().expect("zerocopy run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zero-copy mode"), "{err}");
    assert!(!xdp_attached(&lab) && !sock.exists());
    assert!(
        !lab.exec(&lab.client, &["ping", "-c", "1", "-W", "1", "10.77.0.2"])
            .0,
        "nothing bridges the lab yet"
    );
    // A core the process may not run on: refused, naming it, and nothing
    // left behind (a worker is never left unpinned when cores are named).
    let far = dir.join("cores.toml");
    std::fs::write(
        &far,
        lab_config(&sock, 1, "", &[""]).replace("queues = 1\n", "queues = 1\ncores = [1023]\n"),
    )
    .expect("config");
    let out = start(&lab, &far).wait_with_output().expect("cores run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot pin worker 0 to core 1023"), "{err}");
    assert!(!xdp_attached(&lab) && !sock.exists());
    // Forget the failed neighbour resolution.
    let _ = lab.exec(&lab.client, &["ip", "neigh", "flush", "all"]);

    // Crash: SIGKILL, no chance to clean up.
    let mut tg = start(&lab, &cfg);
    wait_socket(&sock);
    assert!(xdp_attached(&lab));
    assert!(ping(&lab), "ping through Tollgate");
    tg.kill().expect("kill");
    let _ = tg.wait();
    assert!(!xdp_attached(&lab), "the XDP links die with the process");
    assert!(sock.exists(), "a crashed instance leaves its socket file");
    assert!(
        UnixStream::connect(&sock).is_err(),
        "... but nobody listens"
    );

    // The next start takes over the dead socket and bridges again.
    let mut tg = start(&lab, &cfg);
    wait_socket(&sock);
    assert!(ping(&lab), "ping after the restart");
    // A second instance on the same socket is refused, the first keeps going.
    let second = start(&lab, &cfg).wait_with_output().expect("second");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(ping(&lab), "the first instance is undisturbed");

    // A clean stop removes the socket and detaches.
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(tg.id() as i32, libc::SIGTERM);
    }
    let status = tg.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
    assert!(!xdp_attached(&lab));
    drop(lab);

    // A crashed lab: its namespaces stay until the next lab starts.
    let mut crashed = Command::new(BIN)
        .args(["lab", "--seconds", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tollgate lab");
    let prefix = format!("tg{}", crashed.id());
    let t = Instant::now();
    let listed = || {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count()
    };
    while listed() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the lab did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    crashed.kill().expect("kill");
    let _ = crashed.wait();
    assert_eq!(listed(), 3, "a killed lab leaves its namespaces");
    Lab::clean_stale();
    assert_eq!(listed(), 0, "the next start removes them");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1000 bytes every 50 ms for `secs` to 10.77.0.2:`port`, each echoed
/// (retransmissions ride out a restart); prints the seconds to the last echo.
const STREAM: &str = r#"
import socket, sys, time, json
port, secs = int(sys.argv[1]), float(sys.argv[2])
c = socket.socket()
c.settimeout(3)
c.connect(("10.77.0.2", port))
c.settimeout(0.3)
start = time.time(); last = 0.0; pending = 0
while time.time() - start < secs:
    try:
        c.sendall(b"x" * 1000)
        pending += 1000
    except OSError:
        break
    try:
        while pending > 0:
            d = c.recv(pending)
            if not d:
                break
            pending -= len(d); last = time.time() - start
    except socket.timeout:
        pass
    time.sleep(0.05)
print(json.dumps({"last": last}))
"#;

/// A stream through `tollgate run`, restarted (SIGTERM, start again) in its
/// middle, with TCP pickup off: with a state file the restarted instance
/// knows the connection and it goes on; without one its packets are invalid
/// mid-stream and it stops.
fn stream_across_restart(lab: &Lab, dir: &Path, keep_state: bool) -> f64 {
    let sock = dir.join("control.sock");
    let state = dir.join("conntrack.state");
    let _ = std::fs::remove_file(&state);
    let mut text = lab_config(&sock, 1, "", &["proto = \"tcp\""]);
    text = text.replace(
        "[control]\n",
        &format!(
            "[conntrack]\ntcp_loose = false\n\n[control]\n{}",
            if keep_state {
                format!("state_file = \"{}\"\n", state.display())
            } else {
                String::new()
            }
        ),
    );
    let cfg = dir.join("restart.toml");
    std::fs::write(&cfg, text).expect("config");
    let mut tg = start(lab, &cfg);
    wait_socket(&sock);
    let client = Command::new("ip")
        .args(["netns", "exec", &lab.client, "python3"])
        .arg(dir.join("stream.py"))
        .args(["7300", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(tg.id() as i32, libc::SIGTERM);
    }
    let _ = tg.wait();
    if keep_state {
        assert!(state.exists(), "a clean stop writes the state file");
    }
    let mut tg = start(lab, &cfg);
    wait_socket(&sock);
    let out = client.wait_with_output().expect("client ends");
    // SAFETY: as above.
    unsafe {
        libc::kill(tg.id() as i32, libc::SIGTERM);
    }
    let _ = tg.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client: {text:?} {e} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["last"].as_f64().unwrap_or(0.0)
}

#[test]
fn connections_survive_a_restart_with_a_state_file() {
    if !ready(&[["python3", "--version"]]) {
        return;
    }
    let _one = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Lab::clean_stale();
    let lab = Lab::build().expect("lab");
    let dir = std::env::temp_dir().join(format!("tgstate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("echo.py"), ECHO_SERVER).expect("script");
    std::fs::write(dir.join("stream.py"), STREAM).expect("script");
    let procs = Procs(vec![spawn_in(
        &lab.server,
        &[
            "python3",
            dir.join("echo.py").to_str().unwrap_or(""),
            "7300",
        ],
    )]);
    std::thread::sleep(Duration::from_millis(400));
    let kept = stream_across_restart(&lab, &dir, true);
    assert!(
        kept > 6.0,
        "with a state file the stream went on to {kept} s"
    );
    let lost = stream_across_restart(&lab, &dir, false);
    assert!(
        lost < 4.0,
        "without one it stopped at {lost} s (the control case)"
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
