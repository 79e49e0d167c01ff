//! Corpus tests: `tollgate replay` over every capture in tests/data.
//!
//! - Golden listings: each capture's per-packet output is compared with
//!   tests/golden/<capture>.jsonl (regenerate with UPDATE_GOLDEN=1 and review
//!   the diff: a change there is a change of verdicts).
//! - Recorded kernel answers: for the captures of tests/kdiff/captures.tsv,
//!   the output must agree with what the Linux kernel answered (recorded by
//!   tools/kdiff into tests/kdiff/kernel/) except for the differences listed,
//!   with their reasons, in tests/kdiff/expected-differences.toml. The live
//!   differential (tests/kdiff/run.sh, root) re-records those answers.

// Test helpers may panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn replay(cfg: &Path, pcap: &Path, inside: &str) -> Vec<serde_json::Value> {
    replay_clock(cfg, pcap, inside, tollgate::replay::Clock::Capture)
}

fn replay_clock(
    cfg: &Path,
    pcap: &Path,
    inside: &str,
    clock: tollgate::replay::Clock,
) -> Vec<serde_json::Value> {
    let cfg = control::load(cfg).unwrap();
    let inside = tollgate::replay::parse_inside(inside).unwrap();
    let bytes = std::fs::read(pcap).unwrap();
    let mut out = Vec::new();
    tollgate::replay::replay_with_clock(&cfg, &bytes, &inside, clock, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (capture path under tests/data, inside prefixes) of the differential set.
fn kdiff_set() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("tests/kdiff/captures.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

/// Every capture under tests/data (`dir/file` and its path), sorted.
fn captures() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root().join("tests/data"))
        .unwrap()
        .flatten()
    {
        if !dir.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "pcap" || e == "pcapng") {
                let rel = format!(
                    "{}/{}",
                    dir.file_name().to_string_lossy(),
                    p.file_name().unwrap().to_string_lossy()
                );
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

const DEFAULT_INSIDE: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

#[test]
fn golden_listings() {
    let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
    let cfg = root().join("tests/kdiff/strict.toml");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (rel, p) in captures() {
        let inside = inside_of.get(&rel).map_or(DEFAULT_INSIDE, String::as_str);
        let got: String = replay(&cfg, &p, inside)
            .iter()
            .map(|v| format!("{v}\n"))
            .collect();
        let golden = root()
            .join("tests/golden")
            .join(format!("{}.jsonl", rel.replace('/', "__")));
        if update {
            std::fs::write(&golden, &got).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
                panic!(
                    "no golden listing {}: run with UPDATE_GOLDEN=1",
                    golden.display()
                )
            });
            if want != got {
                let first = want
                    .lines()
                    .zip(got.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(want.lines().count().min(got.lines().count()));
                failures.push(format!(
                    "{rel}: differs from its golden listing at packet {first}"
                ));
            }
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} captures found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn agrees_with_recorded_kernel_answers() {
    let expect: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("tests/kdiff/expected-differences.toml")).unwrap(),
    )
    .unwrap();
    let mut allowed: BTreeSet<(String, u64, String)> = BTreeSet::new();
    for d in expect
        .get("diff")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
    {
        let cap = d["capture"].as_str().unwrap().to_string();
        let idx: Vec<u64> = match &d["i"] {
            toml::Value::Array(a) => a.iter().map(|v| v.as_integer().unwrap() as u64).collect(),
            v => vec![v.as_integer().unwrap() as u64],
        };
        let fields: Vec<String> = match d.get("field") {
            Some(toml::Value::Array(a)) => {
                a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
            }
            Some(v) => vec![v.as_str().unwrap().to_string()],
            None => vec!["verdict".into(), "state".into()],
        };
        for i in &idx {
            for f in &fields {
                allowed.insert((cap.clone(), *i, f.clone()));
            }
        }
    }
    let cfg = root().join("tests/kdiff/strict.toml");
    let mut unexplained = Vec::new();
    let mut compared = 0;
    for (cap, inside) in kdiff_set() {
        let name = Path::new(&cap)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let kernel_file = root()
            .join("tests/kdiff/kernel")
            .join(format!("{name}.jsonl"));
        let kernel: Vec<serde_json::Value> = std::fs::read_to_string(&kernel_file)
            .unwrap_or_else(|_| panic!("missing recorded kernel answers {}", kernel_file.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The recorded kernel run sent the packets back to back.
        let ours = replay_clock(
            &cfg,
            &root().join("tests/data").join(&cap),
            &inside,
            tollgate::replay::Clock::Index,
        );
        assert_eq!(kernel.len(), ours.len(), "{name}: packet count");
        for (k, t) in kernel.iter().zip(&ours) {
            let i = k["i"].as_u64().unwrap();
            let mut check = |field: &str| {
                if k[field] != t[field] && !allowed.contains(&(name.clone(), i, field.to_string()))
                {
                    unexplained.push(format!(
                        "{name} {i}: {field} kernel={} tollgate={}",
                        k[field], t[field]
                    ));
                }
            };
            check("verdict");
            let ks = k["state"].as_str().unwrap_or("unknown");
            if ks != "unknown" {
                check("state");
                if matches!(ks, "new" | "established" | "related") {
                    check("reply");
                }
            }
            compared += 1;
        }
    }
    assert!(compared > 10_000, "compared only {compared} packets");
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
}

/// Zeek's ftp.log names the data channel of every FTP command
/// (tests/data/oracles). The first packet of each of those connections must be
/// `related` under the differential policy, which assigns the FTP helper.
#[test]
fn zeek_ftp_data_channels_are_related() {
    use conntrack::packet::{parse, ParseOptions};
    let cases = [(
        "ftp/zeek_ftp_ipv6_epsv_eprt.pcap",
        "zeek_ftp_ipv6_epsv_eprt.ftp.log",
    )];
    let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
    let cfg = root().join("tests/kdiff/strict.toml");
    let mut checked = 0;
    for (cap, log) in cases {
        let log = std::fs::read_to_string(root().join("tests/data/oracles").join(log)).unwrap();
        let fields: Vec<&str> = log
            .lines()
            .find_map(|l| l.strip_prefix("#fields\t"))
            .unwrap()
            .split('\t')
            .collect();
        let col = |name: &str| fields.iter().position(|f| *f == name).unwrap();
        let (o, r, p) = (
            col("data_channel.orig_h"),
            col("data_channel.resp_h"),
            col("data_channel.resp_p"),
        );
        let channels: Vec<(std::net::IpAddr, std::net::IpAddr, u16)> = log
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|f| f[p] != "-")
            .map(|f| {
                (
                    f[o].parse().unwrap(),
                    f[r].parse().unwrap(),
                    f[p].parse().unwrap(),
                )
            })
            .collect();
        assert!(!channels.is_empty(), "{cap}: no data channel in the log");
        let pcap = root().join("tests/data").join(cap);
        let bytes = std::fs::read(&pcap).unwrap();
        let out = replay(&cfg, &pcap, &inside_of[cap]);
        for (orig, resp, port) in channels {
            // The first packet of that connection in the capture.
            let first = capture::Capture::new(&bytes)
                .unwrap()
                .enumerate()
                .find_map(|(i, rec)| {
                    let rec = rec.ok()?;
                    let f = capture::ether::parse(rec.data).ok()?;
                    let p = parse(
                        rec.data.get(f.l3_offset..)?,
                        ParseOptions { checksum: false },
                    )
                    .ok()?;
                    let t = p.tuple;
                    (t.src.to_ip(t.family) == orig
                        && t.dst.to_ip(t.family) == resp
                        && t.dst_port == port)
                        .then_some(i)
                });
            let Some(i) = first else {
                // Announced but never used (the capture holds no such connection).
                continue;
            };
            assert_eq!(
                out[i]["state"], "related",
                "{cap}: data channel {orig} -> {resp}:{port} (packet {i})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} data channels found");
}

/// After AUTH TLS the control channel is encrypted: Zeek sees no data channel
/// (tests/data/oracles/zeek_ftp_auth_tls.ftp.log) and the helper must not
/// invent one from ciphertext.
#[test]
fn ftp_auth_tls_opens_nothing() {
    let log = std::fs::read_to_string(root().join("tests/data/oracles/zeek_ftp_auth_tls.ftp.log"))
        .unwrap();
    assert!(log.lines().any(|l| l.contains("\tAUTH\t")));
    let out = replay(
        &root().join("tests/kdiff/strict.toml"),
        &root().join("tests/data/ftp/zeek_ftp_auth_tls.pcap"),
        "127.0.0.1/32",
    );
    assert!(out.iter().all(|v| v["state"] != "related"));
    assert!(out.iter().all(|v| v["verdict"] == "accept"));
}

/// `Pipeline::process_batch` (the worker's way: parse and prefetch a batch,
/// then run it) gives every packet exactly what `process` gives it one at a
/// time, on every capture.
#[test]
fn batches_give_the_same_answers() {
    use conntrack::policy::Side;
    use conntrack::Pipeline;
    let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
    let cfg = control::load(&root().join("tests/kdiff/strict.toml")).unwrap();
    let mut checked = 0;
    for (rel, inside) in &inside_of {
        let inside = tollgate::replay::parse_inside(inside).unwrap();
        let bytes = std::fs::read(root().join("tests/data").join(rel)).unwrap();
        let mut frames: Vec<(Side, Vec<u8>)> = Vec::new();
        for rec in capture::Capture::new(&bytes).unwrap().flatten() {
            let Ok(f) = capture::ether::parse(rec.data) else {
                continue;
            };
            if f.ethertype != 0x0800 && f.ethertype != 0x86dd {
                continue;
            }
            let l3 = rec.data[f.l3_offset..].to_vec();
            let src = match l3.first().map(|b| b >> 4) {
                Some(4) if l3.len() >= 20 => Some(conntrack::tuple::Addr::from_ip(
                    std::net::IpAddr::from(<[u8; 4]>::try_from(&l3[12..16]).unwrap()),
                )),
                Some(6) if l3.len() >= 40 => Some(conntrack::tuple::Addr::from_ip(
                    std::net::IpAddr::from(<[u8; 16]>::try_from(&l3[8..24]).unwrap()),
                )),
                _ => None,
            };
            let side = match src {
                Some((fam, a)) if inside.iter().any(|p| p.contains(fam, a)) => Side::Inside,
                _ => Side::Outside,
            };
            frames.push((side, l3));
        }
        let mut one = Pipeline::new(cfg.conntrack.clone(), cfg.policy.clone());
        let singly: Vec<_> = frames
            .iter()
            .map(|(s, b)| one.process(*s, b, 1_000))
            .collect();
        let mut many = Pipeline::new(cfg.conntrack.clone(), cfg.policy.clone());
        let refs: Vec<(Side, &[u8])> = frames.iter().map(|(s, b)| (*s, b.as_slice())).collect();
        let mut batched = vec![
            singly.first().copied().unwrap_or(conntrack::PacketResult {
                verdict: conntrack::policy::Action::Drop,
                state: conntrack::CtState::Invalid,
                reply: false,
                reason: None,
            });
            refs.len()
        ];
        for (chunk, out) in refs.chunks(37).zip(batched.chunks_mut(37)) {
            many.process_batch(chunk, 1_000, out);
        }
        assert_eq!(singly, batched, "{rel}");
        checked += singly.len();
    }
    assert!(checked > 10_000, "{checked}");
}

/// The many-core semantics: every capture replayed over 2 and 3 shards, with
/// symmetric, asymmetric and round-robin steering, gives exactly the answers
/// of one worker (handoffs and cross-shard expectations make it so).
#[test]
fn shards_give_the_same_answers() {
    use tollgate::replay::{replay_sharded, Clock, Steer};
    let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
    let cfg = control::load(&root().join("tests/kdiff/strict.toml")).unwrap();
    let mut checked = 0;
    let (mut handoffs, mut messages) = (0, 0);
    for (rel, p) in captures() {
        let inside = inside_of.get(&rel).map_or(DEFAULT_INSIDE, String::as_str);
        let inside = tollgate::replay::parse_inside(inside).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let run = |workers, steer| {
            let mut out = Vec::new();
            let sum = replay_sharded(
                &cfg,
                &bytes,
                &inside,
                Clock::Capture,
                workers,
                steer,
                &mut out,
            );
            (String::from_utf8(out).unwrap(), sum.ok())
        };
        let (one, _) = run(1, Steer::Owner);
        for workers in [2, 3] {
            for steer in [Steer::Owner, Steer::Side, Steer::RoundRobin] {
                let (many, sum) = run(workers, steer);
                if let Some(s) = sum {
                    handoffs += s.handoffs;
                    messages += s.messages;
                    if steer == Steer::Owner {
                        assert_eq!(
                            s.handoffs, 0,
                            "{rel}: symmetric steering hands nothing over"
                        );
                    }
                }
                if one != many {
                    let first = one
                        .lines()
                        .zip(many.lines())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "{rel}: {workers} workers, {steer:?}: packet {first} differs:\n  one:  {}\n  many: {}",
                        one.lines().nth(first).unwrap_or(""),
                        many.lines().nth(first).unwrap_or("")
                    );
                }
                checked += one.lines().count();
            }
        }
    }
    assert!(checked > 50_000, "{checked}");
    assert!(
        handoffs > 1_000 && messages > 10,
        "{handoffs} handoffs, {messages} messages"
    );
}

/// The XDP fast path (`offload = true`): every capture replayed with
/// Tollgate's XDP program in front of the pipeline (run with
/// BPF_PROG_TEST_RUN, its offload table kept as a worker keeps it) gives
/// exactly the answers of the pipeline alone, on the capture's clock and on
/// the kernel differential's (a microsecond per packet). Root only: loading
/// BPF.
#[test]
fn fast_path_gives_the_same_answers() {
    use tollgate::replay::{replay_offload, replay_with_clock, Clock};
    if !testkit::root_or_skip("loading BPF") {
        return;
    }
    // replay_offload moves its thread into a network namespace of its own.
    std::thread::spawn(|| {
        let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
        let cfg = control::load(&root().join("tests/kdiff/strict.toml")).unwrap();
        let (mut checked, mut forwarded) = (0, 0);
        for (rel, p) in captures() {
            let inside = inside_of.get(&rel).map_or(DEFAULT_INSIDE, String::as_str);
            let inside = tollgate::replay::parse_inside(inside).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            for clock in [Clock::Capture, Clock::Index] {
                let mut slow = Vec::new();
                let a = replay_with_clock(&cfg, &bytes, &inside, clock, &mut slow);
                let mut fast = Vec::new();
                let b = replay_offload(&cfg, &bytes, &inside, clock, &mut fast);
                let (slow, fast) = (String::from_utf8(slow).unwrap(), String::from_utf8(fast).unwrap());
                if slow != fast {
                    let first = slow
                        .lines()
                        .zip(fast.lines())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "{rel} ({clock:?}): packet {first} differs with the fast path:\n  slow: {}\n  fast: {}",
                        slow.lines().nth(first).unwrap_or(""),
                        fast.lines().nth(first).unwrap_or("")
                    );
                }
                assert_eq!(a.is_ok(), b.is_ok(), "{rel}: {a:?} / {b:?}");
                if let Ok(s) = b {
                    forwarded += s.offloaded.unwrap_or(0);
                    let a = a.unwrap();
                    assert_eq!(
                        (s.packets, s.accepted, s.connections),
                        (a.packets, a.accepted, a.connections),
                        "{rel}: summaries"
                    );
                }
            }
            checked += 1;
}
        eprintln!("{checked} captures, {forwarded} packets forwarded by the XDP program");
        assert!(checked >= 50, "only {checked} captures found");
        assert!(forwarded > 200, "the program took part: {forwarded}");
    })
    .join()
    .expect("fast path replay thread");
}
