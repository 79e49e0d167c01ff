//! The lab: a client and a server namespace joined through a third namespace
//! where Tollgate bridges its two interfaces. Every name carries the process
//! id, so labs never collide; dropping the [`Lab`] removes everything, and
//! [`Lab::clean_stale`] removes what a crashed run left behind.

use std::process::Command;

/// Why the lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{cmd}` failed: {err}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its error output.
        err: String,
    },
    /// Entering a namespace failed.
    #[error("entering namespace {0}: {1}")]
    Setns(String, std::io::Error),
}

/// A built lab.
#[derive(Debug)]
pub struct Lab {
    /// Client namespace (inside), address 10.77.0.1 / fd77::1.
    pub client: String,
    /// Server namespace (outside), address 10.77.0.2 / fd77::2.
    pub server: String,
    /// Tollgate's namespace.
    pub boxns: String,
    /// Tollgate's inside interface (in `boxns`).
    pub inside: String,
    /// Tollgate's outside interface (in `boxns`).
    pub outside: String,
    up: bool,
}

fn run(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| LabError::Command {
            cmd: args.join(" "),
            err: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: args.join(" "),
            err: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Namespace prefix of every lab.
const PREFIX: &str = "tg";

impl Lab {
    /// Builds a lab named after this process.
    pub fn build() -> Result<Lab, LabError> {
        Lab::build_with(1)
    }

    /// Builds a lab whose veth pairs have `queues` queues each way (the
    /// sender's TX queue is the receiver's RX queue: TCP sockets pick one at
    /// random per connection, so both directions of a connection often
    /// arrive on different queues, as on a NIC without symmetric RSS).
    pub fn build_with(queues: u32) -> Result<Lab, LabError> {
        let id = std::process::id();
        let mut lab = Lab {
            client: format!("{PREFIX}{id}c"),
            server: format!("{PREFIX}{id}s"),
            boxns: format!("{PREFIX}{id}b"),
            inside: "tgin".into(),
            outside: "tgout".into(),
            up: false,
        };
        lab.up = true;
        if let Err(e) = lab.build_inner(queues.max(1)) {
            lab.teardown();
            return Err(e);
        }
        Ok(lab)
    }

    fn build_inner(&self, queues: u32) -> Result<(), LabError> {
        let q = queues.to_string();
        for ns in [&self.client, &self.server, &self.boxns] {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        for (end, mine, addr4, addr6) in [
            (&self.client, &self.inside, "10.77.0.1/24", "fd77::1/64"),
            (&self.server, &self.outside, "10.77.0.2/24", "fd77::2/64"),
        ] {
            run(&[
                "ip",
                "link",
                "add",
                mine,
                "netns",
                &self.boxns,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                end,
            ])?;
            run(&["ip", "-n", &self.boxns, "link", "set", mine, "up"])?;
            run(&["ip", "-n", end, "addr", "add", addr4, "dev", "eth0"])?;
            run(&[
                "ip", "-n", end, "addr", "add", addr6, "dev", "eth0", "nodad",
            ])?;
            run(&["ip", "-n", end, "link", "set", "eth0", "up"])?;
            // veth hands partial checksums over; copy-mode AF_XDP forwards the
            // frame as it is, so the endpoints must checksum in software. GRO
            // on gives the endpoint NAPI, without which veth drops the frames
            // the XDP fast path redirects to it.
            run(&[
                "ip", "netns", "exec", end, "ethtool", "-K", "eth0", "tx", "off", "gro", "on",
            ])?;
        }
        Ok(())
    }

    /// Runs a command in one of the lab's namespaces; returns its success and output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> (bool, String) {
        match Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
        {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    /// Moves the calling thread into Tollgate's namespace.
    pub fn enter_box(&self) -> Result<(), LabError> {
        self.enter(&self.boxns)
    }

    /// Moves the calling thread into namespace `ns`.
    pub fn enter(&self, ns: &str) -> Result<(), LabError> {
        let path = format!("/run/netns/{ns}");
        let f = std::fs::File::open(&path).map_err(|e| LabError::Setns(ns.to_string(), e))?;
        crate::sys::setns_net(&f).map_err(|e| LabError::Setns(self.boxns.clone(), e))
    }

    /// Pins the calling thread to one CPU.
    pub fn pin(cpu: usize) {
        // A lab's threads: a failure only costs the measurement its
        // placement (production workers refuse to start instead).
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }

    /// A worker's configuration for queue 0 of the lab's two interfaces
    /// (non-IP frames accepted, sockets in the mode the driver offers).
    pub fn worker_config(
        &self,
        bypass: bool,
        offload: bool,
        busy_poll: bool,
    ) -> crate::WorkerConfig {
        crate::WorkerConfig {
            inside: self.inside.clone(),
            outside: self.outside.clone(),
            queue: 0,
            non_ip: conntrack::policy::Action::Accept,
            bypass,
            offload,
            busy_poll,
            mode: crate::xsk::XdpMode::Auto,
        }
    }

    /// Removes the lab (idempotent).
    pub fn teardown(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        for ns in [&self.client, &self.server, &self.boxns] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }

    /// Removes namespaces of earlier labs whose process is gone.
    pub fn clean_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let suffix = &rest[digits.len()..];
            if digits.is_empty() || !matches!(suffix, "c" | "s" | "b") {
                continue;
            }
            if !std::path::Path::new(&format!("/proc/{digits}")).exists() {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The lab's strict policy: invalid dropped, established and related
/// accepted both ways, new connections only from the inside, the rest
/// dropped (what the lab tests and the bench run).
pub fn strict_policy() -> conntrack::policy::Policy {
    use conntrack::policy::{Action, Policy, Rule, Side, StateSet};
    use conntrack::CtState;
    let mut inv = Rule::any(Action::Drop);
    inv.states = StateSet::default().with(CtState::Invalid);
    let mut est = Rule::any(Action::Accept);
    est.states = StateSet::default()
        .with(CtState::Established)
        .with(CtState::Related);
    let mut new = Rule::any(Action::Accept);
    new.from = Some(Side::Inside);
    new.states = StateSet::default().with(CtState::New);
    Policy {
        rules: vec![inv, est, new],
        default: Action::Drop,
    }
}
