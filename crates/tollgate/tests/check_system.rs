//! `tollgate check --system`: the built binary probes this machine and the
//! interfaces of a veth pair in a namespace of the test's own.

mod common;

use std::process::{Command, Output};

use common::BIN;
use serde_json::Value;

/// A network namespace named after the process and `tag` with a veth pair
/// `a`/`b` in it; removed when dropped, also when the test fails.
struct Netns(String);

impl Netns {
    fn with_veth(tag: &str, a: &str, b: &str) -> Netns {
        let ns = Netns(format!("tgp{}{tag}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&[
            "-n", &ns.0, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
        ip(&["-n", &ns.0, "link", "set", a, "up"]);
        ip(&["-n", &ns.0, "link", "set", b, "up"]);
        ns
    }

    /// Runs the binary with `args` in the namespace (`env`: extra variables).
    fn tollgate(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, BIN])
            .args(args)
            .env_remove("TOLLGATE_FORCE_NO_META")
            .envs(env.iter().copied())
            .output()
            .expect("running tollgate")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The row of `feature` in the table: its cells (status, then the rest).
fn table_row<'a>(table: &'a str, feature: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.strip_prefix(feature).is_some_and(|r| r.starts_with("  ")))
        .unwrap_or_else(|| panic!("no row {feature:?} in:\n{table}"))
}

#[test]
fn table_on_a_veth_pair() {
    if !common::ready(&[["ip", "-V"]]) {
        return;
    }
    let ns = Netns::with_veth("t", "cka0", "ckb0");
    let out = ns.tollgate(
        &[
            "check",
            "--system",
            "--interface",
            "cka0",
            "--interface",
            "ckb0",
        ],
        &[],
    );
    let (table, err) = text(&out);
    assert!(out.status.success(), "{table}\n{err}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(
        table.lines().next(),
        Some(format!("kernel {}", release.trim()).as_str()),
        "the kernel version first"
    );
    for f in [
        "kernel release",
        "load XDP programs",
        "BTF",
        "bpf_xdp_adjust_meta",
        "bpf_xdp_adjust_head",
        "bpf_xdp_adjust_tail",
        "bpf_redirect_map",
        "bpf_loop",
        "bpf_ktime_get_coarse_ns",
        "bpf_csum_diff",
        "XSKMAP",
        "DEVMAP",
        "ARRAY + BPF_F_MMAPABLE",
        "HASH + BPF_F_NO_PREALLOC",
        "PERCPU_ARRAY",
        "BPF_PROG_TEST_RUN (XDP)",
        "BPF_PROG_TEST_RUN live frames",
        "AF_XDP sockets",
        "AF_XDP need_wakeup",
        "AF_XDP shared UMEM",
        "cka0: exists",
        "cka0: native XDP",
        "cka0: AF_XDP zero-copy",
        "cka0: redirect target",
        "ckb0: multi-buffer",
    ] {
        let r = table_row(&table, f);
        let status = r[f.len()..].split_whitespace().next().unwrap_or("");
        assert!(["yes", "no", "unknown"].contains(&status), "row {f}: {r:?}");
    }
    assert!(table_row(&table, "load XDP programs").contains(" yes "));
    assert!(table_row(&table, "AF_XDP sockets").contains(" yes "));
    assert!(table_row(&table, "cka0: exists").contains("driver veth"));
    // Columns line up: every row's status starts where the header's does.
    let header = table
        .lines()
        .find(|l| l.starts_with("KERNEL "))
        .expect("kernel header");
    let col = header.find("STATUS").expect("STATUS column");
    for f in ["bpf_loop", "XSKMAP", "cka0: native XDP"] {
        let r = table_row(&table, f);
        assert_eq!(
            r.find(" yes").or_else(|| r.find(" no")).map(|i| i + 1),
            Some(col),
            "{r}"
        );
    }
    assert!(
        table.contains("XDP native on cka0/ckb0 (driver veth)"),
        "{table}"
    );
    assert!(
        table.contains("AF_XDP copy mode (no zero-copy in driver veth of cka0)"),
        "{table}"
    );
    assert!(table.contains("verdict: Tollgate can run"), "{table}");
    // The table's metadata choice follows the kernel's answer.
    let meta = table_row(&table, "bpf_xdp_adjust_meta").contains(" yes ");
    assert_eq!(
        table.contains("metadata: XDP metadata in front of the frame"),
        meta,
        "{table}"
    );
}

#[test]
fn json_and_the_forced_fallback() {
    if !common::ready(&[["ip", "-V"]]) {
        return;
    }
    let ns = Netns::with_veth("j", "cja0", "cjb0");
    let args = [
        "check",
        "--system",
        "--json",
        "--interface",
        "cja0",
        "--interface",
        "cjb0",
    ];
    let out = ns.tollgate(&args, &[]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    let v: Value = serde_json::from_str(&o).expect("one JSON object");
    assert_eq!(v["can_run"], Value::Bool(true));
    assert_eq!(v["interfaces"][0]["name"], "cja0");
    assert_eq!(v["interfaces"][0]["driver"], "veth");
    assert!(v["kernel"]["rows"]
        .as_array()
        .is_some_and(|r| r.len() == 20));
    let kernel_meta = v["kernel"]["features"]["adjust_meta"] == Value::Bool(true);
    let head = v["kernel"]["features"]["adjust_head"] == Value::Bool(true);
    assert_eq!(
        v["meta"]["mode"],
        if kernel_meta {
            "meta"
        } else if head {
            "prefix"
        } else {
            "none"
        }
    );

    let out = ns.tollgate(&args, &[("TOLLGATE_FORCE_NO_META", "1")]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    let v: Value = serde_json::from_str(&o).expect("one JSON object");
    assert_eq!(v["kernel"]["features"]["adjust_meta"], Value::Bool(false));
    assert_eq!(
        v["kernel"]["features"]["meta_forced_off"],
        Value::Bool(true)
    );
    let row = v["kernel"]["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["feature"] == "bpf_xdp_adjust_meta"))
        .expect("adjust_meta row");
    assert_eq!(row["status"], "no");
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("forced by TOLLGATE_FORCE_NO_META")),
        "{row}"
    );
    if head {
        assert_eq!(v["meta"]["mode"], "prefix");
        assert!(v["meta"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("frame prefix (bpf_xdp_adjust_head)")));
    } else {
        assert_eq!(v["meta"]["mode"], "none");
    }
}

#[test]
fn with_a_config_and_when_it_cannot_run() {
    if !common::ready(&[["ip", "-V"], ["setpriv", "--version"]]) {
        return;
    }
    let ns = Netns::with_veth("c", "cca0", "ccb0");
    let dir = std::env::temp_dir().join(format!("tg-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        "[interfaces]\ninside = \"cca0\"\noutside = \"ccb0\"\nxdp_mode = \"zerocopy\"\n\n\
         [policy]\ndefault = \"accept\"\n",
    )
    .expect("config");
    let c = cfg.to_string_lossy().into_owned();
    // The old form still validates the file alone.
    let out = ns.tollgate(&["check", "--config", &c], &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "ok: 0 rules");
    // With --system the config's interfaces and modes are checked: veth has
    // no zero-copy, so xdp_mode = "zerocopy" cannot run.
    let out = ns.tollgate(&["check", "--system", "--config", &c], &[]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}\n{e}");
    assert!(o.contains("config: ok, 0 rules"), "{o}");
    assert!(o.contains("cca0: native XDP"), "{o}");
    assert!(
        e.contains("tollgate: cannot run: xdp_mode = \"zerocopy\" but cca0/ccb0 offer(s) no AF_XDP zero-copy"),
        "{e}"
    );
    // An interface that is not there.
    let out = ns.tollgate(&["check", "--system", "--interface", "nope0"], &[]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).1.contains("interface nope0 does not exist"));
    // Without privileges nothing loads and no AF_XDP socket opens.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([BIN, "check", "--system"])
        .output()
        .expect("setpriv");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}\n{e}");
    assert!(table_row(&o, "load XDP programs").contains(" no "), "{o}");
    assert!(table_row(&o, "bpf_loop").contains(" unknown "), "{o}");
    assert!(
        e.contains("tollgate: cannot run: XDP programs cannot be loaded: EPERM"),
        "{e}"
    );
    assert!(e.contains("AF_XDP sockets cannot be created: EPERM"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
