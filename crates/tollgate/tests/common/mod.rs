//! What the lab tests share: the binary, root and tool checks, child
//! processes that are stopped whatever happens, the control socket.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Labs are named after the process: tests of one binary take turns.
pub static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the test can run: root, and every command of `tools` present
/// (`[command, version flag]`). Outside CI a missing one skips the test; in
/// CI it fails it.
pub fn ready(tools: &[[&str; 2]]) -> bool {
    testkit::lab_with(tools)
}

/// Child processes, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill has no memory preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `args` in namespace `ns`, output discarded.
pub fn spawn_in(ns: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?} in {ns}: {e}"))
}

/// Waits until a daemon serves the control socket `sock`.
pub fn wait_socket(sock: &Path) {
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "tollgate did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tollgate ct stats --json`: one object per worker.
pub fn stats(sock: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["ct", "stats", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("ct stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["stats"].clone())
        .collect()
}

/// Sum of a counter over the workers.
pub fn total(st: &[Value], key: &str) -> u64 {
    st.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum()
}

/// A vsftpd configuration serving `root` anonymously on 10.77.0.2 (the lab's
/// server), passive ports 40000-40100, active from port 20.
pub fn vsftpd_conf(root: &Path) -> String {
    std::fs::create_dir_all("/var/run/vsftpd/empty").expect("vsftpd empty dir");
    format!(
        "background=NO\nlisten=YES\nlisten_ipv6=NO\nlisten_address=10.77.0.2\n\
anonymous_enable=YES\nno_anon_password=YES\nanon_root={}\nlocal_enable=NO\nwrite_enable=NO\n\
seccomp_sandbox=NO\npasv_enable=YES\npasv_min_port=40000\npasv_max_port=40100\n\
port_enable=YES\nconnect_from_port_20=YES\nxferlog_enable=NO\nmax_clients=50\n\
secure_chroot_dir=/var/run/vsftpd/empty\n",
        root.display()
    )
}

/// A config for `tollgate run` on the lab's interfaces with `queues` queues,
/// the control socket `sock`, extra `sections` (TOML text), and the strict
/// policy: invalid dropped, established/related/untracked accepted, and new
/// connections from the inside accepted when one of `rules` matches (each the
/// body of a rule: match keys such as `proto = "tcp"\ndport = 21`, optionally
/// a helper); everything else dropped.
pub fn lab_config(sock: &Path, queues: u32, sections: &str, rules: &[&str]) -> String {
    let mut s = format!(
        "[interfaces]\ninside = \"tgin\"\noutside = \"tgout\"\nqueues = {queues}\n\n\
         [control]\nsocket = \"{}\"\n\n{sections}\n\
         [policy]\ndefault = \"drop\"\n\n\
         [[rule]]\nstate = [\"invalid\"]\naction = \"drop\"\n\n\
         [[rule]]\nstate = [\"established\", \"related\", \"untracked\"]\naction = \"accept\"\n",
        sock.display()
    );
    for body in rules {
        s.push_str(&format!(
            "\n[[rule]]\nfrom = \"inside\"\nstate = [\"new\"]\n{body}\naction = \"accept\"\n"
        ));
    }
    s
}

/// Runs the CLI; returns (success, stdout, stderr).
pub fn cli(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(sock)
        .output()
        .expect("running tollgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn metrics(lab: &Lab, port: u16) -> String {
    let (ok, out) = lab.exec(
        &lab.boxns,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ],
    );
    assert!(ok, "curl /metrics: {out}");
    out
}

pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An echo server: every connection gets its bytes back.
pub const ECHO_SERVER: &str = r#"
import socket, threading, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
def serve(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The frames as a capture, a microsecond apart from t = 1 s.
pub fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let recs: Vec<(u64, &[u8])> = frames
        .iter()
        .enumerate()
        .map(|(i, d)| (1_000_000 + i as u64, &d[..]))
        .collect();
    capture::pcap::write_us(&recs)
}
