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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::lab::Lab;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Procs(Vec<Child>);

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

fn stats(sock: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["ct", "stats", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("ct stats");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["stats"].clone())
        .collect()
}

fn total(st: &[Value], key: &str) -> u64 {
    st.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum()
}

#[test]
fn two_workers_with_asymmetric_queues() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must run as root"
        );
        return;
    }
    if Command::new("vsftpd")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must install vsftpd"
        );
        eprintln!("SKIPPED: vsftpd is not installed");
        return;
    }
    Lab::clean_stale();
    let lab = Lab::build_with(2).expect("lab");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tgmq-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ftp")).expect("dir");
    let sock = dir.join("control.sock");
    let cfg = dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[interfaces]
inside = "tgin"
outside = "tgout"
queues = 2

[control]
socket = "{}"

[policy]
default = "drop"

[[rule]]
state = ["invalid"]
action = "drop"

[[rule]]
state = ["established", "related", "untracked"]
action = "accept"

[[rule]]
from = "inside"
state = ["new"]
proto = "tcp"
dport = 21
helper = "ftp"
action = "accept"

[[rule]]
from = "inside"
state = ["new"]
proto = "tcp"
dport = 5201
action = "accept"
"#,
            sock.display()
        ),
    )
    .expect("config");
    let payload: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("ftp/file.bin"), &payload).expect("file");
    let conf = dir.join("vsftpd.conf");
    std::fs::write(
        &conf,
        format!(
            "background=NO\nlisten=YES\nlisten_ipv6=NO\nlisten_address=10.77.0.2\n\
anonymous_enable=YES\nno_anon_password=YES\nanon_root={}\nlocal_enable=NO\nwrite_enable=NO\n\
seccomp_sandbox=NO\npasv_enable=YES\npasv_min_port=40000\npasv_max_port=40100\n\
port_enable=YES\nconnect_from_port_20=YES\nxferlog_enable=NO\nsecure_chroot_dir=/var/run/vsftpd/empty\n",
            dir.join("ftp").display()
        ),
    )
    .expect("vsftpd.conf");
    std::fs::create_dir_all("/var/run/vsftpd/empty").expect("vsftpd empty dir");
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
    let handoffs = total(&st, "handoffs");
    let msgs = total(&st, "expect_msgs_out");
    assert!(
        handoffs > 0,
        "asymmetric queues must hand frames over: {st:?}"
    );
    assert_eq!(total(&st, "handoffs"), total(&st, "handoffs_in"), "{st:?}");
    assert_eq!(total(&st, "handoff_dropped"), 0, "{st:?}");
    assert!(msgs >= 12, "every FTP expectation is announced: {st:?}");
    assert_eq!(total(&st, "expect_msgs_dropped"), 0, "{st:?}");
    // Related connections: 12 data connections, counted on whichever worker.
    assert_eq!(total(&st, "expect_new"), 12, "{st:?}");
    eprintln!("handoffs {handoffs}, expectation messages {msgs}");
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
