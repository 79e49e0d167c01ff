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

const DEFAULT_INSIDE: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

#[test]
fn golden_listings() {
    let inside_of: BTreeMap<String, String> = kdiff_set().into_iter().collect();
    let cfg = root().join("tests/kdiff/strict.toml");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("tests/data"))
        .unwrap()
        .flatten()
        .collect();
    dirs.sort_by_key(|d| d.path());
    for dir in dirs.iter().filter(|d| d.path().is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        files.sort_by_key(|f| f.path());
        for f in files {
            let p = f.path();
            let rel = format!(
                "{}/{}",
                dir.file_name().to_string_lossy(),
                p.file_name().unwrap().to_string_lossy()
            );
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
