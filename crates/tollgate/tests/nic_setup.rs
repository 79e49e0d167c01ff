//! `deploy/nic-setup.sh` (root; CI runs it as root). Every test builds its
//! own network namespace with a veth pair named after the test and the
//! process, runs the script there with its state directory in a temporary
//! directory, and removes both when it ends, panics included. Nothing
//! outside the namespace is touched.
//!
//! On veth (the lab's devices): `plan` prints the plan, refuses clearly what
//! veth cannot do (combined queues, RSS, IRQs) and changes nothing; usage
//! errors; `--config`; MTU checks; `apply --skip-unsupported` changes only
//! the offloads veth lets change, `check` reads them back and `undo`
//! restores the exact `ethtool -k` state.
//!
//! The real-NIC paths (`ethtool -L`, `deploy/rss.sh`, IRQ affinity) run
//! against fake PCI NICs: a stand-in `ethtool` keeps each NIC's channels,
//! features and RSS state in files and re-requests its queue IRQs (named as
//! i40e, mlx5, ixgbe and virtio-net name them) when the channel count
//! changes, and a mount namespace shows its files as `/sys/class/net`,
//! `/proc/irq`, `/sys/kernel/irq` and `/proc/interrupts`. That checks the
//! script's logic (order, IRQ discovery, save and undo), not any driver.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::ready;

/// The largest MTU the script lets through (see its header).
const MTU_MAX: u32 = 3498;

/// The script under test.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nic-setup.sh")
}

/// A finished run of the script.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.out, self.err
        )
    }
}

/// A network namespace holding a veth pair (`a` inside, `b` outside) and a
/// temporary directory (the script's state directory and files); both are
/// removed on drop.
struct Ns {
    name: String,
    a: String,
    b: String,
    dir: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let pid = std::process::id();
        let name = format!("tgnic-{tag}-{pid}");
        // A namespace left by a killed earlier process with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Ns {
            a: format!("tg{tag}{pid}a"),
            b: format!("tg{tag}{pid}b"),
            dir: std::env::temp_dir().join(&name),
            name,
        };
        assert!(ns.a.len() <= 15, "interface name {} too long", ns.a);
        let _ = std::fs::remove_dir_all(&ns.dir);
        std::fs::create_dir_all(&ns.dir).expect("temporary directory");
        let ok = Command::new("ip")
            .args(["netns", "add", &ns.name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {}", ns.name);
        ns.ip(&[
            "link",
            "add",
            &ns.a,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            &ns.b,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        ns.ip(&["link", "set", &ns.a, "up"]);
        ns.ip(&["link", "set", &ns.b, "up"]);
        ns
    }

    /// `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `prefix... args` in the namespace with the state directory in
    /// the temporary directory and `env` set.
    fn exec(&self, prefix: &[&Path], args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(prefix)
            .args(args)
            .env("TOLLGATE_STATE_DIR", self.state());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("ip netns exec");
        Run {
            code: out.status.code(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the script in the namespace.
    fn run(&self, args: &[&str]) -> Run {
        self.exec(&[&script()], args, &[])
    }

    /// `ethtool -k DEV` in the namespace.
    fn features(&self, dev: &str) -> String {
        let r = self.exec(&[Path::new("ethtool")], &["-k", dev], &[]);
        assert_eq!(r.code, Some(0), "ethtool -k {dev}: {r}");
        r.out
    }

    /// `ethtool -k` and `ip -d link` of both devices: everything the
    /// script could change on veth.
    fn snapshot(&self) -> String {
        let mut s = String::new();
        for dev in [&self.a, &self.b] {
            s += &self.features(dev);
            let r = self.exec(&[Path::new("ip")], &["-d", "link", "show", dev], &[]);
            s += &r.out;
            let r = self.exec(&[Path::new("ethtool")], &["-l", dev], &[]);
            s += &r.out;
        }
        s
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The files in the state directory.
    fn saved(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.state())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The usual device options: `queues` queues on the first online cores.
    fn devs(&self, queues: usize) -> Vec<String> {
        let cores = online_cores();
        assert!(
            cores.len() >= queues,
            "the test needs {queues} online cores, the machine has {cores:?}"
        );
        let list: Vec<String> = cores[..queues].iter().map(|c| c.to_string()).collect();
        vec![
            "--inside".into(),
            self.a.clone(),
            "--outside".into(),
            self.b.clone(),
            "--queues".into(),
            queues.to_string(),
            "--cores".into(),
            list.join(","),
        ]
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The online cores, as /sys/devices/system/cpu/online lists them.
fn online_cores() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online cores");
    let mut cores = Vec::new();
    for part in text.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.parse().expect("core"), hi.parse().expect("core"));
        cores.extend(lo..=hi);
    }
    cores
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Whether the test can run: root, ip and ethtool.
fn can_run() -> bool {
    ready(&[["ip", "-V"], ["ethtool", "--version"]])
}

#[test]
fn plan_on_veth_refuses_what_veth_cannot_do_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("p");
    let before = ns.snapshot();
    let devs = ns.devs(2);
    let r = ns.run(&[&["plan"], &args(&devs)[..]].concat());
    assert_eq!(r.code, Some(2), "plan refuses something on veth: {r}");
    for dev in [&ns.a, &ns.b] {
        for line in [
            format!("{dev}: info: driver veth"),
            format!(
                "{dev}: queues: cannot set (veth is a software device: no combined channels, \
                 it has 1 rx / 1 tx; the lab sets queues when it creates the pair)"
            ),
            format!("{dev}: rss: cannot set (veth is a software device: no RSS"),
            format!("{dev}: irq: cannot pin (veth is a software device: no IRQs"),
            format!("{dev}: lro: ok: off, cannot change (fixed)"),
            format!("{dev}: ntuple: ok: off, cannot change (fixed)"),
            format!("{dev}: rxvlan: on -> off"),
            format!("ethtool -K {dev} rxvlan off"),
            format!("{dev}: gro: left as it is"),
        ] {
            assert!(r.out.contains(&line), "plan lacks '{line}': {r}");
        }
    }
    assert!(
        r.out
            .contains(&format!("both: mtu: ok: 1500 on both, at most {MTU_MAX}")),
        "{r}"
    );
    assert!(r.out.contains("6 refused"), "{r}");
    assert!(
        r.out
            .contains("apply refuses; apply --skip-unsupported makes only the"),
        "{r}"
    );
    assert!(r.err.is_empty(), "{r}");
    assert_eq!(ns.snapshot(), before, "plan changed something");
    assert!(!ns.state().exists(), "plan wrote state");

    // With what veth has (one queue), only the IRQs are refused.
    let devs = ns.devs(1);
    let r = ns.run(&[&["plan"], &args(&devs)[..]].concat());
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.out
            .contains(&format!("{}: queues: ok: 1 rx / 1 tx queues already", ns.a)),
        "{r}"
    );
    assert!(
        r.out
            .contains(&format!("{}: rss: not needed with one queue", ns.a)),
        "{r}"
    );
    assert!(r.out.contains("2 refused"), "{r}");
    assert_eq!(ns.snapshot(), before, "plan changed something");
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("u");
    let (a, b) = (ns.a.as_str(), ns.b.as_str());
    let cases: &[(&[&str], &str)] = &[
        (&[], "deploy/nic-setup.sh plan"),
        (&["frobnicate"], "unknown command 'frobnicate'"),
        (
            &["plan", "--inside", a, "--queues", "1", "--cores", "0"],
            "no outside device",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                a,
                "--queues",
                "1",
                "--cores",
                "0",
            ],
            "they must differ",
        ),
        (
            &["plan", "--inside", a, "--outside", b, "--cores", "0"],
            "no queue count",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                b,
                "--queues",
                "0",
                "--cores",
                "0",
            ],
            "must be a count from 1 to 1024",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                b,
                "--queues",
                "2",
                "--cores",
                "0",
            ],
            "names 1 cores for 2 queues",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                b,
                "--queues",
                "1",
                "--cores",
                "x",
            ],
            "'x' is not a core",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                b,
                "--queues",
                "1",
                "--cores",
                "4096",
            ],
            "core 4096 is not online",
        ),
        (
            &[
                "plan",
                "--inside",
                a,
                "--outside",
                b,
                "--queues",
                "1",
                "--cores",
                "0",
                "--bogus",
            ],
            "unknown option '--bogus'",
        ),
        (&["plan", "--inside"], "--inside needs a value"),
        (
            &[
                "plan",
                "--inside",
                "tgnosuchdev",
                "--outside",
                b,
                "--queues",
                "1",
                "--cores",
                "0",
            ],
            "no interface tgnosuchdev",
        ),
        (
            &["check", "--inside", a, "--outside", b, "--queues", "1"],
            "no cores",
        ),
        (
            &["undo", "--inside", a, "--outside", b],
            "nothing saved for",
        ),
    ];
    let before = ns.snapshot();
    for (argv, msg) in cases {
        let r = ns.run(argv);
        assert_eq!(r.code, Some(2), "{argv:?}: {r}");
        assert!(r.err.contains(msg), "{argv:?} should say '{msg}': {r}");
    }
    assert_eq!(ns.snapshot(), before);
    assert!(ns.saved().is_empty());
}

#[test]
fn config_file_gives_the_devices_queues_and_cores() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("c");
    let core = online_cores()[0];
    // Keys of other tables must not leak in; comments, quotes and a
    // multi-line array are TOML.
    let cfg = ns.dir.join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "# [interfaces] in a comment\n[control]\ninside = \"wrong\"\n\n\
             [ interfaces ]   # the NICs\ninside = \"{}\"  # inside\n'outside' = '{}'\n\
             queues = 1\ncores = [\n  {core},  # worker 0\n]\nxdp_mode = \"auto\"\n\n\
             [[rule]]\nqueues = 7\naction = \"accept\"\n",
            ns.a, ns.b
        ),
    )
    .expect("config");
    let path = cfg.to_str().expect("path");
    let r = ns.run(&["plan", "--config", path]);
    assert_eq!(r.code, Some(2), "veth refuses the IRQs: {r}");
    assert!(
        r.out.contains(&format!(
            "# nic-setup plan: inside {}, outside {}, 1 queue(s), cores {core}",
            ns.a, ns.b
        )),
        "{r}"
    );
    assert!(
        r.out.contains(&format!("{}: rxvlan: on -> off", ns.b)),
        "{r}"
    );

    // Options override the file.
    let two = online_cores();
    if two.len() >= 2 {
        let list = format!("{},{}", two[0], two[1]);
        let r = ns.run(&["plan", "--config", path, "--queues", "2", "--cores", &list]);
        assert!(r.out.contains(&format!("2 queue(s), cores {list}")), "{r}");
    }

    // queues = "all" needs a count here; a file without [interfaces] says so.
    let all = ns.dir.join("all.toml");
    std::fs::write(
        &all,
        format!(
            "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\nqueues = \"all\"\n",
            ns.a, ns.b
        ),
    )
    .expect("config");
    let r = ns.run(&["check", "--config", all.to_str().expect("path")]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.err.contains("queues = \"all\"") && r.err.contains("give --queues N"),
        "{r}"
    );
    let none = ns.dir.join("none.toml");
    std::fs::write(&none, "[policy]\ndefault = \"drop\"\n").expect("config");
    let r = ns.run(&["plan", "--config", none.to_str().expect("path")]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.err.contains("has no [interfaces] table"), "{r}");
    let r = ns.run(&["plan", "--config", "/nonexistent/tollgate.toml"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.err.contains("cannot read config"), "{r}");
}

#[test]
fn mtu_mismatch_and_mtu_above_the_frame_are_refused() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("m");
    let devs = ns.devs(1);
    let plan = |verb: &str| ns.run(&[&[verb], &args(&devs)[..]].concat());

    ns.ip(&["link", "set", &ns.b, "mtu", "3000"]);
    let r = plan("plan");
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.out.contains(&format!(
            "both: mtu: REFUSED: {} has MTU 1500, {} has MTU 3000: Tollgate bridges frames unchanged",
            ns.a, ns.b
        )),
        "{r}"
    );
    assert!(r.out.contains("1 blocking problem(s)"), "{r}");

    let big = MTU_MAX + 1;
    for dev in [&ns.a, &ns.b] {
        ns.ip(&["link", "set", dev, "mtu", &big.to_string()]);
    }
    let before = ns.snapshot();
    let r = plan("plan");
    assert_eq!(r.code, Some(2), "{r}");
    for dev in [&ns.a, &ns.b] {
        let line = format!(
            "{dev}: mtu: REFUSED: MTU {big} is above {MTU_MAX}, the largest whose frames fit one \
             AF_XDP frame without multi-buffer XDP (4096-byte UMEM frame - 256 XDP headroom - \
             320 skb_shared_info - 14 Ethernet header - 8 for two VLAN tags = {MTU_MAX})"
        );
        assert!(r.out.contains(&line), "plan lacks '{line}': {r}");
    }
    // Not something --skip-unsupported skips: apply changes nothing.
    let r = ns.run(&[&["apply"], &args(&devs)[..], &["--skip-unsupported"]].concat());
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.err.contains("2 blocking problem(s)"), "{r}");
    assert!(!r.out.contains("+ "), "{r}");
    assert_eq!(ns.snapshot(), before, "a refused apply changed something");
    assert!(ns.saved().is_empty());
    let r = plan("check");
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.out.contains(&format!(
            "both: mtu: does NOT hold (MTU {big} is above {MTU_MAX})"
        )),
        "{r}"
    );

    for dev in [&ns.a, &ns.b] {
        ns.ip(&["link", "set", dev, "mtu", &MTU_MAX.to_string()]);
    }
    let r = plan("plan");
    assert!(
        r.out.contains(&format!(
            "both: mtu: ok: {MTU_MAX} on both, at most {MTU_MAX}"
        )),
        "{r}"
    );
    assert!(r.out.contains("0 blocking problem(s)"), "{r}");
}

/// The `ethtool -k` names of the `ethtool -K` names the script uses.
fn long_name(short: &str) -> &str {
    match short {
        "lro" => "large-receive-offload",
        "rxvlan" => "rx-vlan-offload",
        "ntuple" => "ntuple-filters",
        other => other,
    }
}

/// Lines of `ethtool -k` output that differ, as feature names.
fn changed_features(before: &str, after: &str) -> BTreeSet<String> {
    let b: BTreeSet<&str> = before.lines().collect();
    after
        .lines()
        .filter(|l| !b.contains(l))
        .map(|l| l.split(':').next().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn apply_skip_unsupported_check_and_undo_on_veth() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("a");
    let devs = ns.devs(2);
    let with = |verb: &str, extra: &[&str]| ns.run(&[&[verb], &args(&devs)[..], extra].concat());
    let before = ns.snapshot();
    let k_before = [ns.features(&ns.a), ns.features(&ns.b)];

    // Something is refused: apply changes nothing.
    let r = with("apply", &[]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.err
            .contains("refused: the devices cannot do 6 item(s) above; nothing was changed"),
        "{r}"
    );
    assert_eq!(ns.snapshot(), before, "a refused apply changed something");
    assert!(ns.saved().is_empty());

    // --skip-unsupported: only the offloads veth lets change.
    let r = with("apply", &["--skip-unsupported"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.out
            .contains("# skipped 6 item(s) the devices cannot do (--skip-unsupported)"),
        "{r}"
    );
    for (i, dev) in [&ns.a, &ns.b].into_iter().enumerate() {
        let ran: BTreeSet<String> = r
            .out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("+ ethtool -K {dev} ")))
            .map(|l| {
                let f = l.strip_suffix(" off").expect("turned off");
                long_name(f).to_string()
            })
            .collect();
        assert!(ran.contains("rx-vlan-offload"), "{r}");
        let after = ns.features(dev);
        assert_eq!(
            changed_features(&k_before[i], &after),
            ran,
            "{dev}: the features apply changed are the ones it printed"
        );
        for f in &ran {
            assert!(
                after.contains(&format!("\n{f}: off")),
                "{f} on {dev}: {after}"
            );
        }
    }
    assert!(!r.out.contains("+ ethtool -L"), "{r}");
    assert_eq!(
        ns.saved(),
        BTreeSet::from([
            format!("nic-setup-{}.saved", ns.a),
            format!("nic-setup-{}.saved", ns.b)
        ])
    );

    // Applying again would save the changed state over the original.
    let r = with("apply", &["--skip-unsupported"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.err.contains("apply ran before"), "{r}");

    // check: the offloads hold, what veth cannot do does not.
    let r = with("check", &[]);
    assert_eq!(r.code, Some(1), "{r}");
    for dev in [&ns.a, &ns.b] {
        for line in [
            format!("{dev}: rxvlan: holds (off)"),
            format!("{dev}: lro: holds (off)"),
            format!(
                "{dev}: queues: does NOT hold (1 rx / 1 tx, no combined channels (veth); want 2)"
            ),
            format!("{dev}: rss: does NOT hold"),
            format!("{dev}: irq: does NOT hold"),
        ] {
            assert!(r.out.contains(&line), "check lacks '{line}': {r}");
        }
    }
    assert!(r.out.contains("both: mtu: holds"), "{r}");
    assert!(r.out.contains("# the NIC setup does NOT hold"), "{r}");

    // undo: the exact state before, no save file left.
    let r = ns.run(&["undo", "--inside", &ns.a, "--outside", &ns.b]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.out.contains(&format!("+ ethtool -K {} rxvlan on", ns.a)),
        "{r}"
    );
    assert_eq!(ns.features(&ns.a), k_before[0]);
    assert_eq!(ns.features(&ns.b), k_before[1]);
    assert_eq!(ns.snapshot(), before);
    assert!(ns.saved().is_empty(), "left {:?}", ns.saved());
    let r = ns.run(&["undo", "--inside", &ns.a, "--outside", &ns.b]);
    assert_eq!(r.code, Some(2), "{r}");
}

// ------------------------------------------------------------ fake NICs

/// `ethtool` for the fake NICs: NIC DEV's state is in $FAKE/DEV, its sysfs
/// directory in $FAKE/net/DEV, its IRQs in $FAKE/irq (/proc/irq),
/// $FAKE/kirq (/sys/kernel/irq) and $FAKE/interrupts. Output goes out in
/// one write, as stdio does.
const FAKE_ETHTOOL: &str = r#"#!/usr/bin/env bash
set -euo pipefail
F=$FAKE op=$1 dev=$2
shift 2
d=$F/$dev
[ -d "$d" ] || { echo "ethtool: no device $dev" >&2; exit 1; }
get() { echo "$(< "$d/$1")"; }
put() { printf '%s\n' "$2" > "$d/$1"; }
# The name of queue $1's IRQ ("misc": the other vector), by driver style.
irqname() {
  case $(< "$F/style")/$1 in
    i40e/misc) echo "i40e-$(get bus):misc" ;;   i40e/*) echo "i40e-$dev-TxRx-$1" ;;
    mlx5/misc) echo "mlx5_async0@pci:$(get bus)" ;; mlx5/*) echo "mlx5_comp$1@pci:$(get bus)" ;;
    ixgbe/misc) echo "$dev" ;;                   ixgbe/*) echo "$dev-TxRx-$1" ;;
    virtio/misc) echo "$(get vdev)-config" ;;    virtio/*) echo "$(get vdev)-input.$1" ;;
  esac
}
# As a driver does when its channel count changes: frees its vectors and
# requests one per queue (IRQ base+q) and one misc (base+63), affinity all
# cores; the stack's queues follow.
requeue() {
  local n=$1 base irq q name dev_dir
  base=$(get irqbase) dev_dir=$(readlink -f "$F/net/$dev/device")
  for ((irq = base; irq < base + 64; irq++)); do
    [ ! -e "$F/irq/$irq" ] || rm -r "$F/irq/$irq" "$F/kirq/$irq"
  done
  rm -rf "$dev_dir/msi_irqs"
  [ "$(< "$F/style")" = virtio ] || mkdir "$dev_dir/msi_irqs"
  for ((q = 0; q <= n; q++)); do
    irq=$((base + q)) name=$(irqname "$q")
    [ "$q" -lt "$n" ] || { irq=$((base + 63)); name=$(irqname misc); }
    mkdir -p "$F/irq/$irq" "$F/kirq/$irq"
    echo 0-63 > "$F/irq/$irq/smp_affinity_list"
    echo "$name" > "$F/kirq/$irq/actions"
    [ ! -d "$dev_dir/msi_irqs" ] || : > "$dev_dir/msi_irqs/$irq"
  done
  { echo "            CPU0       CPU1"
    for irq in {1..400}; do
      [ -e "$F/kirq/$irq" ] || continue
      printf '%4d:  0  0  FAKE-MSI %d-edge  %s\n' "$irq" "$irq" "$(< "$F/kirq/$irq/actions")"
    done; } > "$F/interrupts"
  rm -rf "$F/net/$dev/queues"
  mkdir -p "$F/net/$dev/queues"
  for ((q = 0; q < n; q++)); do mkdir "$F/net/$dev/queues/rx-$q" "$F/net/$dev/queues/tx-$q"; done
}
main() {
case $op in
  --init) requeue "$(get combined)" ;;
  -i) printf 'driver: fake\nversion: 1\nfirmware-version: 2\nbus-info: %s\n' "$(get bus)" ;;
  -l) printf 'Channel parameters for %s:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t%s\nCurrent hardware settings:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t%s\n' "$dev" "$(get max)" "$(get combined)" ;;
  -L)
    [ "$1" = combined ] && [ "$2" -ge 1 ] && [ "$2" -le "$(get max)" ] || { echo "ethtool: bad -L $*" >&2; exit 1; }
    if [ "$2" != "$(get combined)" ]; then put combined "$2"; put indir equal; requeue "$2"; fi ;;
  -k) echo "Features for $dev:"; echo "$(< "$d/features")" ;;
  -K)
    case $1 in lro) f=large-receive-offload ;; rxvlan) f=rx-vlan-offload ;; ntuple) f=ntuple-filters ;; *) f=$1 ;; esac
    grep -q "^$f: " "$d/features" || { echo "ethtool: no feature $1" >&2; exit 1; }
    if grep -q "^$f: .*fixed" "$d/features"; then echo "Could not change any device features" >&2; exit 1; fi
    sed -i "s/^$f: .*/$f: $2/" "$d/features" ;;
  -x)
    n=$(get combined)
    echo "RX flow hash indirection table for $dev with $n RX ring(s):"
    for ((r = 0; r < 16; r += 8)); do
      printf '%5d:' "$r"
      for ((i = r; i < r + 8; i++)); do
        if [ "$(get indir)" = equal ]; then printf ' %5d' $((i % n)); else printf ' %5d' 0; fi
      done
      echo
    done
    printf 'RSS hash key:\n%s\nRSS hash function:\n    toeplitz: %s\n    xor: %s\n    crc32: off\n' \
      "$(get key)" "$([ "$(get hfunc)" = toeplitz ] && echo on || echo off)" "$([ "$(get hfunc)" = xor ] && echo on || echo off)" ;;
  -X)
    while [ $# -gt 0 ]; do
      case $1 in
        hfunc) put hfunc "$2"; shift 2 ;;
        hkey) put key "$2"; shift 2 ;;
        equal) put indir equal; shift 2 ;;
        default) put indir equal; shift ;;
        *) echo "ethtool: bad -X $1" >&2; exit 1 ;;
      esac
    done ;;
  -N) [ "$1" = rx-flow-hash ] || exit 1; put "hash-$2" "$3" ;;
  -n)
    [ "${1:-}" = rx-flow-hash ] || { echo "Total 0 rules"; exit 0; }
    echo "Hash fields of $2:"
    case $(get "hash-$2") in *s*) echo "IP SA" ;; esac
    case $(get "hash-$2") in *d*) echo "IP DA" ;; esac
    case $(get "hash-$2") in *f*) echo "L4 bytes 0 & 1 [TCP/UDP src port]" ;; esac
    case $(get "hash-$2") in *n*) echo "L4 bytes 2 & 3 [TCP/UDP dst port]" ;; esac ;;
  *) echo "ethtool: fake has no $op" >&2; exit 1 ;;
esac
}
rc=0
out=$(main "$@") || rc=$?
[ -z "$out" ] || cat <<< "$out"
exit "$rc"
"#;

/// Runs "$@" with the fake NICs' files in place of the kernel's (in a mount
/// namespace of its own: `unshare --mount`) and the fake `ethtool` first in
/// PATH.
const FAKE_MOUNTS: &str = r#"#!/usr/bin/env bash
set -euo pipefail
mount --bind "$FAKE/net" /sys/class/net
mount --bind "$FAKE/irq" /proc/irq
mount --bind "$FAKE/kirq" /sys/kernel/irq
mount --bind "$FAKE/interrupts" /proc/interrupts
PATH="$FAKE/bin:$PATH" exec "$@"
"#;

/// Fake NICs over the namespace's veth pair (whose names they take, so
/// `ip` still answers for them).
struct Fake<'a> {
    ns: &'a Ns,
    root: PathBuf,
}

impl<'a> Fake<'a> {
    fn new(ns: &'a Ns, style: &str) -> Fake<'a> {
        use std::os::unix::fs::PermissionsExt;
        let root = ns.dir.join("fake");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "net", "irq", "kirq", "pci"] {
            std::fs::create_dir_all(root.join(d)).expect("fake dir");
        }
        let write = |path: PathBuf, text: &str| std::fs::write(&path, text).expect("fake file");
        for (name, text) in [("bin/ethtool", FAKE_ETHTOOL), ("mounts.sh", FAKE_MOUNTS)] {
            write(root.join(name), text);
            std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        write(root.join("style"), style);
        write(root.join("interrupts"), "");
        for (i, dev) in [&ns.a, &ns.b].into_iter().enumerate() {
            let d = root.join(dev);
            std::fs::create_dir_all(&d).expect("fake dir");
            let bus = format!("0000:03:00.{i}");
            let vdev = format!("virtio{}", 7 + i);
            for (k, v) in [
                ("bus", bus.as_str()),
                ("vdev", vdev.as_str()),
                ("irqbase", if i == 0 { "100" } else { "200" }),
                ("max", "8"),
                ("combined", "1"),
                ("indir", "equal"),
                ("key", "aa:bb:cc:dd"),
                ("hfunc", "xor"),
                ("hash-tcp4", "sdfn"),
                ("hash-tcp6", "sdfn"),
                ("hash-udp4", "sd"),
                ("hash-udp6", "sd"),
                (
                    "features",
                    "rx-checksumming: on\ngeneric-receive-offload: on\n\
                     large-receive-offload: on\nrx-vlan-offload: on\nntuple-filters: on\n\
                     receive-hashing: on\nrx-gro-hw: off [fixed]\nrx-vlan-stag-hw-parse: off [fixed]\n",
                ),
            ] {
                write(d.join(k), &format!("{v}\n"));
            }
            let pci = root
                .join("pci")
                .join(if style == "virtio" { &vdev } else { &bus });
            std::fs::create_dir_all(&pci).expect("fake dir");
            let net = root.join("net").join(dev);
            std::fs::create_dir_all(&net).expect("fake dir");
            write(net.join("mtu"), "1500\n");
            write(net.join("operstate"), "up\n");
            std::os::unix::fs::symlink(&pci, net.join("device")).expect("symlink");
            let r = ns.exec(
                &[&root.join("bin/ethtool")],
                &["--init", dev],
                &[("FAKE", &root)],
            );
            assert_eq!(r.code, Some(0), "fake init: {r}");
        }
        Fake { ns, root }
    }

    /// Runs `args` (the script, or `ethtool`) over the fake NICs.
    fn exec(&self, prefix: &[&Path], args: &[&str]) -> Run {
        let mounts = self.root.join("mounts.sh");
        let mut p: Vec<&Path> = vec![Path::new("unshare"), Path::new("--mount"), &mounts];
        p.extend(prefix);
        self.ns.exec(&p, args, &[("FAKE", &self.root)])
    }

    fn run(&self, args: &[&str]) -> Run {
        self.exec(&[&script()], args)
    }

    /// Everything the script may change: features, channels, RSS, flow
    /// hashing and the affinity of every IRQ.
    fn snapshot(&self) -> String {
        let r = self.exec(
            &[Path::new("bash"), Path::new("-c")],
            &[
                "set -e; for d in \"$@\"; do ethtool -k $d; ethtool -l $d; ethtool -x $d; \
                 for f in tcp4 udp4 tcp6 udp6; do ethtool -n $d rx-flow-hash $f; done; done",
                "-",
                &self.ns.a,
                &self.ns.b,
            ],
        );
        assert_eq!(r.code, Some(0), "fake snapshot: {r}");
        let mut s = r.out;
        let mut irqs: Vec<_> = std::fs::read_dir(self.root.join("irq"))
            .expect("irqs")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        irqs.sort();
        for irq in irqs {
            s += &format!("{irq}: {}", self.affinity(&irq));
        }
        s
    }

    fn affinity(&self, irq: &str) -> String {
        std::fs::read_to_string(self.root.join("irq").join(irq).join("smp_affinity_list"))
            .expect("affinity")
    }

    /// (IRQ, name) of the fake IRQs.
    fn irqs(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = std::fs::read_dir(self.root.join("kirq"))
            .expect("irqs")
            .filter_map(|e| e.ok())
            .map(|e| {
                let irq = e.file_name().to_string_lossy().into_owned();
                let name = std::fs::read_to_string(e.path().join("actions")).expect("name");
                (irq, name.trim().to_string())
            })
            .collect();
        v.sort();
        v
    }
}

/// The fake NICs' queue IRQ names, per style, for device `dev` with bus
/// address `bus`, vdev `vdev` and queue `q`.
fn queue_irq_name(style: &str, dev: &str, bus: &str, vdev: &str, q: usize) -> String {
    match style {
        "i40e" => format!("i40e-{dev}-TxRx-{q}"),
        "mlx5" => format!("mlx5_comp{q}@pci:{bus}"),
        "ixgbe" => format!("{dev}-TxRx-{q}"),
        _ => format!("{vdev}-input.{q}"),
    }
}

#[test]
fn fake_pci_nics_apply_check_and_undo() {
    if !can_run() || !ready(&[["unshare", "--version"]]) {
        return;
    }
    for (i, style) in ["i40e", "mlx5", "ixgbe", "virtio"].into_iter().enumerate() {
        let ns = Ns::new(&format!("f{i}"));
        let fake = Fake::new(&ns, style);
        let devs = ns.devs(2);
        let cores = online_cores();
        let with = |verb: &str| fake.run(&[&[verb], &args(&devs)[..]].concat());
        let before = fake.snapshot();

        let r = with("plan");
        assert_eq!(r.code, Some(0), "{style}: everything can be done: {r}");
        for dev in [&ns.a, &ns.b] {
            for line in [
                format!("{dev}: queues: 1 -> 2 combined (max 8): ethtool -L {dev} combined 2"),
                format!("{dev}: rss: deploy/rss.sh apply {dev} 2, which runs:"),
                format!("    ethtool -N {dev} rx-flow-hash udp4 sdfn"),
                format!("{dev}: lro: on -> off"),
                format!("{dev}: rxvlan: on -> off"),
                format!("{dev}: ntuple: on -> off"),
                format!("{dev}: rx-gro-hw: ok: off, cannot change (fixed)"),
                format!("{dev}: irq: queue i's IRQs -> the i-th core"),
                format!("    queue 1: no IRQ yet (the driver requests it with the queue change) -> core {}", cores[1]),
            ] {
                assert!(r.out.contains(&line), "{style}: plan lacks '{line}': {r}");
            }
        }
        assert_eq!(fake.snapshot(), before, "{style}: plan changed something");

        let r = with("apply");
        assert_eq!(r.code, Some(0), "{style}: {r}");
        for (i, dev) in [&ns.a, &ns.b].into_iter().enumerate() {
            let bus = format!("0000:03:00.{i}");
            let vdev = format!("virtio{}", 7 + i);
            let names = fake.irqs();
            for (q, core) in cores.iter().take(2).enumerate() {
                let name = queue_irq_name(style, dev, &bus, &vdev, q);
                let (irq, _) = names
                    .iter()
                    .find(|(_, n)| *n == name)
                    .unwrap_or_else(|| panic!("{style}: no IRQ {name}: {names:?}"));
                assert_eq!(
                    fake.affinity(irq).trim(),
                    core.to_string(),
                    "{style}: {name}"
                );
                assert!(
                    r.out.contains(&format!(
                        "+ echo {core} > /proc/irq/{irq}/smp_affinity_list   # {name}, was 0-63"
                    )),
                    "{style}: {r}"
                );
            }
            // The misc vector is left alone.
            for (irq, n) in &names {
                if n.contains("misc")
                    || n.contains("async")
                    || n.contains("config")
                    || n == dev.as_str()
                {
                    assert_eq!(fake.affinity(irq).trim(), "0-63", "{style}: {n}");
                }
            }
            let queues = r.out.find(&format!("+ ethtool -L {dev} combined 2"));
            let rss = r.out.find(&format!("rss.sh apply {dev} 2\n"));
            assert!(
                queues.is_some() && rss.is_some() && queues < rss,
                "{style}: queues, then RSS: {r}"
            );
        }
        let mut files = BTreeSet::new();
        for dev in [&ns.a, &ns.b] {
            files.insert(format!("nic-setup-{dev}.saved"));
            files.insert(format!("rss-{dev}.saved"));
        }
        assert_eq!(ns.saved(), files, "{style}");

        let r = with("check");
        assert_eq!(r.code, Some(0), "{style}: {r}");
        assert!(
            r.out.contains(&format!("{}: rss: holds (symmetric)", ns.b)),
            "{style}: {r}"
        );
        assert!(r.out.contains("# the NIC setup holds"), "{style}: {r}");

        // Someone moves queue 1's IRQ: check says so.
        let name = queue_irq_name(style, &ns.a, "0000:03:00.0", "virtio7", 1);
        let (irq, _) = fake
            .irqs()
            .into_iter()
            .find(|(_, n)| *n == name)
            .expect("irq");
        std::fs::write(
            fake.root.join("irq").join(&irq).join("smp_affinity_list"),
            format!("{}\n", cores[0]),
        )
        .expect("affinity");
        let r = with("check");
        assert_eq!(r.code, Some(1), "{style}: {r}");
        assert!(
            r.out.contains(&format!(
                "{}: irq {irq}: does NOT hold ({name} on cores {}, want {})",
                ns.a, cores[0], cores[1]
            )),
            "{style}: {r}"
        );

        let r = fake.run(&["undo", "--inside", &ns.a, "--outside", &ns.b]);
        assert_eq!(r.code, Some(0), "{style}: {r}");
        assert_eq!(fake.snapshot(), before, "{style}: undo restores everything");
        assert!(ns.saved().is_empty(), "{style}: left {:?}", ns.saved());
    }
}
