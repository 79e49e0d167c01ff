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
