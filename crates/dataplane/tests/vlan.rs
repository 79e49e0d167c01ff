//! 802.1Q and QinQ frames through the lab (root; CI runs it as root). The
//! kernel here has no 8021q module, so the endpoints cannot have VLAN
//! interfaces: tagged frames are written raw on the client's and the
//! server's eth0 and looked for with tcpdump on the other side. A tagged TCP
//! SYN from the inside is tracked and forwarded with its tag; from the
//! outside it is dropped by the strict policy, with one tag or two (QinQ: a
//! tagged IP packet never bypasses the policy); three tags are dropped as
//! too deep.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{lab_allowed, Running};
use conntrack::policy::Policy;
use conntrack::{Config, DropReason, Pipeline};
use dataplane::lab::Lab;
use dataplane::Counters;

/// Writes one TCP SYN from `src` to `dst` (port 7100) on eth0, inside the
/// given 802.1Q/802.1ad tags (outermost first), to `dst_mac`.
const INJECT: &str = r#"
import socket, struct, sys
dst_mac = bytes.fromhex(sys.argv[1].replace(":", ""))
src, dst = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
tags = [t for t in sys.argv[4].split(",") if t]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src_mac = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
tcp = struct.pack("!HHIIBBHHH", 45000, 7100, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
hdr = dst_mac + src_mac
for i, t in enumerate(tags):
    tpid = 0x88a8 if (len(tags) > 1 and i == 0) else 0x8100
    hdr += struct.pack("!HH", tpid, int(t))
s.send(hdr + b"\x08\x00" + ip + tcp)
"#;

fn strict() -> Policy {
    dataplane::lab::strict_policy()
}

/// Injects the SYN from `from` (the lab's client or server namespace) and
/// says whether tcpdump on the other end saw it with its outer tag.
fn crosses(lab: &Lab, script: &std::path::Path, from_client: bool, tags: &str) -> bool {
    let (ns, peer, src, dst) = if from_client {
        (&lab.client, &lab.server, "10.77.0.1", "10.77.0.2")
    } else {
        (&lab.server, &lab.client, "10.77.0.2", "10.77.0.1")
    };
    let (ok, mac) = lab.exec(peer, &["cat", "/sys/class/net/eth0/address"]);
    assert!(ok, "mac: {mac}");
    let outer = tags.split(',').next().unwrap_or("0");
    let filter = format!("vlan {outer} and ether src not {}", mac.trim());
    let dump = Command::new("ip")
        .args([
            "netns", "exec", peer, "timeout", "3", "tcpdump", "-i", "eth0", "-c", "1", "-nn", "-e",
        ])
        .arg(&filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let (ok, out) = lab.exec(
        ns,
        &[
            "python3",
            script.to_str().unwrap_or(""),
            mac.trim(),
            src,
            dst,
            tags,
        ],
    );
    assert!(ok, "inject: {out}");
    let out = dump.wait_with_output().expect("tcpdump ends");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("7100")
}

#[test]
fn tagged_frames_are_tracked_and_filtered() {
    if !lab_allowed() {
        return;
    }
    for tool in ["tcpdump", "python3"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must install {tool}"
            );
            eprintln!("SKIPPED: {tool} missing");
            return;
        }
    }
    Lab::clean_stale();
    let lab = Arc::new(Lab::build().expect("lab"));
    let script = std::env::temp_dir().join(format!("tgvlan-{}.py", std::process::id()));
    std::fs::write(&script, INJECT).expect("script");
    let counters = Arc::new(Counters::default());
    let running = Running::worker(
        &lab,
        Pipeline::new(Config::default(), strict()),
        counters.clone(),
        false,
    );
    std::thread::sleep(Duration::from_millis(500));
    let policy_drops =
        || counters.drop_reasons[DropReason::PolicyDefault.index()].load(Ordering::Relaxed);
    // Inside -> outside, one tag: a new connection from the inside, accepted,
    // forwarded with its tag.
    assert!(
        crosses(&lab, &script, true, "100"),
        "tagged SYN from the inside"
    );
    // Outside -> inside: new from the outside, dropped, one tag or two.
    let before = policy_drops();
    assert!(
        !crosses(&lab, &script, false, "100"),
        "tagged SYN from the outside"
    );
    assert!(
        !crosses(&lab, &script, false, "200,100"),
        "QinQ SYN from the outside"
    );
    assert!(policy_drops() >= before + 2, "counted as policy drops");
    // Three tags: too deep to look into, dropped and counted.
    assert!(!crosses(&lab, &script, true, "300,200,100"), "three tags");
    assert!(
        counters.drop_reasons[DropReason::VlanTooDeep.index()].load(Ordering::Relaxed) >= 1,
        "counted as vlan_too_deep"
    );
    drop(running);
    let _ = std::fs::remove_file(&script);
}
