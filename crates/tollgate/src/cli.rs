//! The control-socket client behind `tollgate ct …`, `tollgate expect …` and
//! `tollgate reload`: one request line out, reply lines in, printed the way
//! `conntrack` prints them (or as JSON lines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use control::proto::{ConnJson, ExpectJson, Request};
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
        let v: Value = serde_json::from_str(&l).map_err(|e| format!("bad reply {l:?}: {e}"))?;
        if let Some(ok) = v.get("ok").and_then(Value::as_bool) {
            if !ok {
                let e = v.get("error").and_then(Value::as_str).unwrap_or("failed");
                return Err(e.to_string());
            }
            if v.get("streaming").is_some() {
                continue;
            }
            return finish(req, &v, count, output, out);
        }
        count += 1;
        print_item(&v, output, out).map_err(|e| e.to_string())?;
    }
    Err("the daemon closed the connection without an answer".into())
}

fn print_item(v: &Value, output: Output, out: &mut dyn Write) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{v}");
    }
    if let Some(c) = v.get("conn") {
        let Ok(c) = serde_json::from_value::<ConnJson>(c.clone()) else {
            return writeln!(out, "{v}");
        };
        return match v.get("event").and_then(Value::as_str) {
            Some(ev) => writeln!(
                out,
                "{:>9} {}",
                format!("[{}]", ev.to_uppercase()),
                c.line()
            ),
            None => writeln!(out, "{}", c.line()),
        };
    }
    if let Some(e) = v.get("expect") {
        if let Ok(e) = serde_json::from_value::<ExpectJson>(e.clone()) {
            return writeln!(out, "{}", e.line());
        }
    }
    if let Some(Value::Object(m)) = v.get("stats") {
        let mut line = m
            .get("worker")
            .map_or_else(String::new, |w| format!("worker={w}"));
        for (k, x) in m.iter().filter(|(k, _)| *k != "worker") {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&format!("{k}={x}"));
        }
        return writeln!(out, "{line}");
    }
    writeln!(out, "{v}")
}

fn finish(
    req: &Request,
    v: &Value,
    count: u64,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), String> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let msg = match req {
        Request::CtList { .. } => format!("tollgate: {count} flow entries have been shown."),
        Request::ExpectList => format!("tollgate: {count} expectations have been shown."),
        Request::CtFlush { .. } => {
            format!("tollgate: {} flow entries have been deleted.", n("removed"))
        }
        Request::ExpectAdd(_) => format!("expectation {} added on worker {}", n("id"), n("worker")),
        Request::ExpectDel { .. } => format!("expectation {} deleted", n("id")),
        Request::Reload => format!("policy reloaded: {} rules", n("rules")),
        Request::CtStats | Request::CtEvents { .. } => return Ok(()),
    };
    if output == Output::Json && !matches!(req, Request::CtList { .. } | Request::ExpectList) {
        writeln!(out, "{v}").map_err(|e| e.to_string())?;
    } else {
        eprintln!("{msg}");
    }
    Ok(())
}
