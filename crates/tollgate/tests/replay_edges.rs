//! `tollgate replay` on hostile and unusual frames: VLAN tags, QinQ, too many
//! tags, truncated frames and packets, bad checksums, garbage, non-IP frames
//! and a corrupt capture. Every frame gets a line with a reason; nothing panics.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::pcap;
use conntrack::build::{ethernet, Pkt};
use conntrack::packet::tcp_flags::{ACK, SYN};

const C: [u8; 4] = [10, 0, 0, 1];
const S: [u8; 4] = [192, 0, 2, 1];

fn run(frames: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let cfg = control::parse(
        "[policy]\ndefault = \"drop\"\n\
         [[rule]]\nstate = [\"invalid\"]\naction = \"drop\"\n\
         [[rule]]\nstate = [\"established\", \"related\"]\naction = \"accept\"\n\
         [[rule]]\nfrom = \"inside\"\nstate = [\"new\"]\naction = \"accept\"\n",
    )
    .unwrap();
    let inside = tollgate::replay::parse_inside("10.0.0.0/8").unwrap();
    let mut out = Vec::new();
    tollgate::replay::replay(&cfg, &pcap(frames), &inside, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn unusual_frames_each_get_a_verdict_and_a_reason() {
    let syn = Pkt::tcp4(C, 40000, S, 80).flags(SYN).seq(1).build();
    let synack = Pkt::tcp4(S, 80, C, 40000)
        .flags(SYN | ACK)
        .seq(100)
        .ack(2)
        .build();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    let mut bad_ip_csum = ethernet(&Pkt::udp4(C, 1, S, 2).build(), &[]);
    bad_ip_csum[14 + 10] ^= 0xff;
    let bad_tcp_csum = ethernet(
        &Pkt::tcp4(C, 40001, S, 80).flags(SYN).bad_checksum().build(),
        &[],
    );
    let mut snapped = ethernet(&Pkt::udp4(C, 3, S, 4).payload(&[7; 200]).build(), &[]);
    snapped.truncate(60);
    let mut garbage = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    garbage.extend_from_slice(&[0x4f; 30]);
    let frames = vec![
        arp,
        ethernet(&syn, &[10]),
        ethernet(&synack, &[10, 20]),
        ethernet(&syn, &[1, 2, 3]),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        bad_ip_csum,
        bad_tcp_csum,
        garbage,
        snapped,
    ];
    let out = run(&frames);
    assert_eq!(out.len(), frames.len());
    let expect: [(&str, &str, &str, Option<&str>); 9] = [
        ("outside", "accept", "untracked", None),
        ("inside", "accept", "new", None),
        ("outside", "accept", "established", None),
        ("outside", "drop", "invalid", Some("vlan_too_deep")),
        ("outside", "drop", "invalid", Some("frame_truncated")),
        ("inside", "drop", "invalid", Some("ipv4_bad_checksum")),
        ("inside", "drop", "invalid", Some("tcp_bad_checksum")),
        ("outside", "drop", "invalid", Some("ipv4_truncated")),
        ("inside", "drop", "invalid", Some("ipv4_bad_length")),
    ];
    for (i, (v, (side, verdict, state, reason))) in out.iter().zip(expect).enumerate() {
        assert_eq!(v["i"], i, "{v}");
        assert_eq!(v["side"], side, "{v}");
        assert_eq!(v["verdict"], verdict, "{v}");
        assert_eq!(v["state"], state, "{v}");
        assert_eq!(v["reply"], i == 2, "{v}");
        match reason {
            Some(r) => assert_eq!(v["reason"], r, "{v}"),
            None => assert!(v.get("reason").is_none(), "{v}"),
        }
    }
}

#[test]
fn corrupt_capture_is_an_error_after_what_was_read() {
    let mut f = pcap(&[ethernet(&Pkt::udp4(C, 1, S, 2).build(), &[])]);
    f.extend_from_slice(&[1, 2, 3]); // a record header cut short
    let cfg = control::parse("").unwrap();
    let mut out = Vec::new();
    let err = tollgate::replay::replay(&cfg, &f, &[], &mut out).unwrap_err();
    assert!(err.to_string().contains("after 1 packets"), "{err}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    assert!(tollgate::replay::replay(&cfg, b"not a capture", &[], &mut Vec::new()).is_err());
}

/// Every example config shipped in deploy/ passes `tollgate check`.
#[test]
fn deploy_examples_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check")
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 3, "expected the example configs in {}", dir.display());
}
