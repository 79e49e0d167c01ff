//! The control-socket client behind `tollgate ct …`, `tollgate expect …` and
//! `tollgate reload`: one request line out, reply lines in, printed the way
//! `conntrack` prints them (or as JSON lines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use control::proto::{self, Done, Reply, Request};
use serde_json::Value;

/// How replies are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `conntrack`-style lines.
    Text,
    /// The daemon's JSON, one object per line.
    Json,
}

/// Sends `req` to the daemon at `socket` and prints the reply to `out`.
/// Returns an error (the daemon's, or why it could not be reached) when the
/// request failed.
pub fn request(
    socket: &Path,
    req: &Request,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach Tollgate at {}: {e} (is it running? --socket or --config names another socket)",
            socket.display()
        )
    })?;
    let streaming = matches!(req, Request::CtEvents { .. });
    if !streaming {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    }
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    writeln!(s, "{line}").map_err(|e| format!("sending the request: {e}"))?;
    let mut count = 0u64;
    for l in BufReader::new(s).lines() {
        let l = l.map_err(|e| format!("reading the reply: {e}"))?;
        match proto::parse_reply(l.as_bytes())? {
            Reply::Error(e) => return Err(e),
            Reply::Done(Done::Streaming) => {}
            Reply::Done(d) => return finish(req, d, &l, count, output, out),
            item => {
                count += 1;
                print_item(&item, &l, output, out).map_err(|e| e.to_string())?;
            }
        }
    }
    Err("the daemon closed the connection without an answer".into())
}

/// Prints a data line: `line` as it came (JSON), or its text form.
fn print_item(
    item: &Reply,
    line: &str,
    output: Output,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{line}");
    }
    match item {
        Reply::Conn(c) => writeln!(out, "{}", c.line()),
        Reply::Event { event, conn } => writeln!(
            out,
            "{:>9} {}",
            format!("[{}]", event.as_str().to_uppercase()),
            conn.line()
        ),
        Reply::Expect(e) => writeln!(out, "{}", e.line()),
        Reply::Stats(s) => writeln!(out, "{}", s.line()),
        Reply::Done(_) | Reply::Error(_) => writeln!(out, "{line}"),
    }
}

/// The last line of a request that succeeded (`line` as it came): a summary
/// on standard error, or (JSON) the line itself for the verbs that change
/// something. A last line that does not answer `req` is an error.
fn finish(
    req: &Request,
    done: Done,
    line: &str,
    count: u64,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), String> {
    let msg = match (req, done) {
        (Request::CtList { .. }, Done::Count { .. }) => {
            format!("tollgate: {count} flow entries have been shown.")
        }
        (Request::ExpectList, Done::Count { .. }) => {
            format!("tollgate: {count} expectations have been shown.")
        }
        (Request::CtFlush { .. }, Done::Removed { removed }) => {
            format!("tollgate: {removed} flow entries have been deleted.")
        }
        (Request::ExpectAdd(_), Done::Expectation { worker, id }) => {
            format!("expectation {id} added on worker {worker}")
        }
        (Request::ExpectDel { .. }, Done::Expectation { id, .. }) => {
            format!("expectation {id} deleted")
        }
        (Request::Reload, Done::Reloaded { rules }) => format!("policy reloaded: {rules} rules"),
        (Request::CtStats, Done::Workers { .. }) | (Request::CtEvents { .. }, _) => return Ok(()),
        _ => {
            return Err(format!(
                "the daemon's reply {line:?} does not answer this request"
            ))
        }
    };
    if output == Output::Json && !matches!(req, Request::CtList { .. } | Request::ExpectList) {
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    } else {
        eprintln!("{msg}");
    }
    Ok(())
}

/// What `tollgate check --system` reports on.
#[derive(Debug, Default)]
pub struct SystemCheck {
    /// Interfaces to probe (the config's first, then `--interface`s).
    pub interfaces: Vec<String>,
    /// The settings the choices are made for.
    pub settings: dataplane::probe::Settings,
    /// Rules of the `--config` file, when one was given (and valid).
    pub config_rules: Option<usize>,
}

impl SystemCheck {
    /// What to check: `config`'s interfaces and settings, if given, plus
    /// `extra` interfaces (each name once).
    pub fn new(config: Option<&control::Config>, extra: &[String]) -> SystemCheck {
        let mut c = SystemCheck::default();
        if let Some(cfg) = config {
            c.config_rules = Some(cfg.policy.rules.len());
            if let Some(i) = &cfg.interfaces {
                c.interfaces.push(i.inside.clone());
                c.interfaces.push(i.outside.clone());
                c.settings.offload = i.offload;
                c.settings.mode = i.xdp_mode;
            }
        }
        for name in extra {
            if !c.interfaces.contains(name) {
                c.interfaces.push(name.clone());
            }
        }
        c
    }
}

/// Probes the kernel and the interfaces of `check`, prints the report to
/// `out` (a table, or one JSON object) and returns the plan (whether
/// Tollgate can run, and why not).
pub fn system_report(
    check: &SystemCheck,
    output: Output,
    out: &mut dyn Write,
) -> std::io::Result<dataplane::probe::Plan> {
    use dataplane::probe;
    let names: Vec<&str> = check.interfaces.iter().map(String::as_str).collect();
    let (k, ifs, plan) = probe::probe_all(&names, &check.settings);
    match output {
        Output::Json => writeln!(out, "{}", report_json(check, &k, &ifs, &plan))?,
        Output::Text => write_table(check, &k, &ifs, &plan, out)?,
    }
    Ok(plan)
}

fn write_table(
    check: &SystemCheck,
    k: &dataplane::probe::KernelFeatures,
    ifs: &[dataplane::probe::InterfaceFeatures],
    plan: &dataplane::probe::Plan,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let sections: Vec<(String, Vec<dataplane::probe::Row>)> =
        std::iter::once(("kernel".to_string(), k.rows.clone()))
            .chain(
                ifs.iter()
                    .map(|i| (format!("interface {}", i.name), i.rows())),
            )
            .collect();
    // One set of column widths for the whole table.
    let all = sections.iter().flat_map(|(_, r)| r);
    let (mut wf, mut ws, mut wd) = ("FEATURE".len(), "STATUS".len(), "DETAIL".len());
    for r in all {
        wf = wf.max(r.feature.chars().count());
        ws = ws.max(r.status.as_str().len());
        wd = wd.max(r.detail.chars().count());
    }
    writeln!(out, "kernel {}", k.release)?;
    if let Some(n) = check.config_rules {
        writeln!(out, "config: ok, {n} rules")?;
    }
    for (title, rows) in &sections {
        writeln!(out)?;
        writeln!(
            out,
            "{:wf$}  {:ws$}  {:wd$}  TOLLGATE",
            title.to_uppercase(),
            "STATUS",
            "DETAIL"
        )?;
        for r in rows {
            writeln!(
                out,
                "{:wf$}  {:ws$}  {:wd$}  {}",
                r.feature,
                r.status.as_str(),
                r.detail,
                r.choice
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "CHOICES (offload = {}, xdp_mode = {})",
        check.settings.offload,
        check.settings.mode.name()
    )?;
    for c in &plan.choices {
        writeln!(out, "  {}", c.line)?;
    }
    writeln!(out)?;
    if plan.can_run() {
        writeln!(out, "verdict: Tollgate can run")?;
    } else {
        writeln!(out, "verdict: Tollgate cannot run")?;
        for f in &plan.fatal {
            writeln!(out, "  - {f}")?;
        }
    }
    Ok(())
}

fn rows_json(rows: &[dataplane::probe::Row]) -> Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "feature": r.feature,
                "status": r.status.as_str(),
                "detail": r.detail,
                "choice": r.choice,
            })
        })
        .collect()
}

fn report_json(
    check: &SystemCheck,
    k: &dataplane::probe::KernelFeatures,
    ifs: &[dataplane::probe::InterfaceFeatures],
    plan: &dataplane::probe::Plan,
) -> Value {
    use dataplane::probe::MetaMode;
    let interfaces: Vec<Value> = ifs
        .iter()
        .map(|i| {
            serde_json::json!({
                "name": i.name,
                "ifindex": i.ifindex,
                "driver": i.driver,
                "xdp_features": i.xdp_flags,
                "native": i.native(),
                "zero_copy": i.zero_copy(),
                "redirect_target": i.redirect_target(),
                "multi_buffer": i.multi_buffer(),
                "rx_queues": i.rx_queues,
                "mtu": i.mtu,
                "rows": rows_json(&i.rows()),
            })
        })
        .collect();
    serde_json::json!({
        "kernel": {
            "release": k.release,
            "version": k.version.map(|(a, b, c)| [a, b, c]),
            "features": {
                "bpf_load": k.bpf_load,
                "btf": k.btf,
                "adjust_meta": k.adjust_meta,
                "meta_forced_off": k.meta_forced_off,
                "adjust_head": k.adjust_head,
                "adjust_tail": k.adjust_tail,
                "redirect_map": k.redirect_map,
                "bpf_loop": k.bpf_loop,
                "ktime_get_coarse_ns": k.ktime_coarse,
                "csum_diff": k.csum_diff,
                "xskmap": k.xskmap,
                "devmap": k.devmap,
                "mmapable_array": k.mmapable_array,
                "hash_no_prealloc": k.hash_no_prealloc,
                "percpu_array": k.percpu_array,
                "test_run": k.test_run,
                "test_run_live": k.test_run_live,
                "af_xdp": k.af_xdp,
                "need_wakeup": k.need_wakeup,
                "shared_umem": k.shared_umem,
            },
            "rows": rows_json(&k.rows),
        },
        "interfaces": interfaces,
        "settings": {
            "offload": check.settings.offload,
            "xdp_mode": check.settings.mode.name(),
        },
        "config_rules": check.config_rules,
        "meta": {
            "mode": match plan.meta.mode {
                MetaMode::Meta => "meta",
                MetaMode::Prefix => "prefix",
                MetaMode::None => "none",
            },
            "reason": plan.meta.reason,
        },
        "choices": plan.choices.iter().map(|c| serde_json::json!({"topic": c.topic, "line": c.line})).collect::<Vec<_>>(),
        "can_run": plan.can_run(),
        "fatal": plan.fatal,
    })
}
