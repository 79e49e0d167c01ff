//! Prometheus `/metrics`: families built at scrape time from the counters the
//! workers publish (relaxed atomic loads; a scrape never touches a worker),
//! encoded by the `prometheus` crate's text encoder, served over HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conntrack::DropReason;
use dataplane::worker::{helper_names, Histogram, EXPECT_NAMES, RING_NAMES, STAT_NAMES};
use prometheus::proto::{Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::daemon::Daemon;

/// Builds families one sample at a time.
struct Families {
    out: Vec<MetricFamily>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl Families {
    fn family(&mut self, name: &str, help: &str, ty: MetricType) -> &mut MetricFamily {
        if let Some(i) = self.out.iter().position(|f| f.name() == name) {
            return &mut self.out[i];
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(ty);
        self.out.push(f);
        let last = self.out.len() - 1;
        &mut self.out[last]
    }

    fn counter(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: u64) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut c = Counter::default();
        // Counters beyond 2^53 lose precision in the text format anyway.
        #[allow(clippy::cast_precision_loss)]
        c.set_value(v as f64);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(m);
    }

    fn gauge(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(m);
    }

    /// A histogram from fixed buckets; recorded values divided by `div` are
    /// the metric's unit (1e9 for nanoseconds to seconds: dividing keeps
    /// bounds such as 0.000001 exact in the text).
    fn histogram(&mut self, name: &str, help: &str, l: &[(&str, &str)], h: &Histogram, div: f64) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut ph = prometheus::proto::Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::new();
        for (b, n) in h.bounds.iter().zip(h.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            if *b == u64::MAX {
                continue; // +Inf is the sample count
            }
            let mut bk = Bucket::default();
            bk.set_cumulative_count(cumulative);
            #[allow(clippy::cast_precision_loss)]
            bk.set_upper_bound(*b as f64 / div);
            buckets.push(bk);
        }
        ph.set_bucket(buckets);
        ph.set_sample_count(cumulative);
        #[allow(clippy::cast_precision_loss)]
        ph.set_sample_sum(h.sum.load(Ordering::Relaxed) as f64 / div);
        m.set_histogram(ph);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }
}

/// The whole exposition, as text.
pub fn render(d: &Daemon, started: Instant) -> Vec<u8> {
    let mut f = Families { out: Vec::new() };
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let helpers = helper_names();
    for (wi, h) in d.workers.iter().enumerate() {
        let w = wi.to_string();
        let w = w.as_str();
        let c = &h.counters;
        for (si, side) in ["inside", "outside"].iter().enumerate() {
            let p = "tollgate_packets_total";
            let help = "Frames by the side they arrived on and their verdict.";
            f.counter(
                p,
                help,
                &[("worker", w), ("side", side), ("verdict", "accept")],
                l(&c.forwarded[si]),
            );
            f.counter(
                p,
                help,
                &[("worker", w), ("side", side), ("verdict", "drop")],
                l(&c.dropped[si]),
            );
            f.counter(
                "tollgate_rx_packets_total",
                "Frames received, by side.",
                &[("worker", w), ("side", side)],
                l(&c.rx[si]),
            );
            f.counter(
                "tollgate_bytes_total",
                "Bytes received (whole frames), by side.",
                &[("worker", w), ("side", side)],
                l(&c.rx_bytes[si]),
            );
            for (ri, ring) in RING_NAMES.iter().enumerate() {
                f.counter(
                    &format!("tollgate_xsk_{ring}_total"),
                    "AF_XDP socket statistics (XDP_STATISTICS), by side.",
                    &[("worker", w), ("side", side)],
                    l(&c.rings[si][ri]),
                );
            }
        }
        for r in DropReason::ALL {
            f.counter(
                "tollgate_drops_total",
                "Frames dropped, by reason.",
                &[("worker", w), ("reason", r.as_str())],
                l(&c.drop_reasons[r.index()]),
            );
        }
        f.counter(
            "tollgate_tx_full_total",
            "Accepted frames lost for want of a free TX frame.",
            &[("worker", w)],
            l(&c.tx_full),
        );
        f.counter(
            "tollgate_handoffs_total",
            "Frames handed to the worker that owns their connection.",
            &[("worker", w)],
            l(&c.handoffs),
        );
        f.counter(
            "tollgate_handoffs_in_total",
            "Frames other workers handed to this one.",
            &[("worker", w)],
            l(&c.handoffs_in),
        );
        f.counter(
            "tollgate_handoff_dropped_total",
            "Frames that could not be handed over (queue full, frame too large).",
            &[("worker", w)],
            l(&c.handoff_dropped),
        );
        #[allow(clippy::cast_precision_loss)]
        f.gauge(
            "tollgate_handoff_queue_depth",
            "Frames waiting in the worker's handoff queue.",
            &[("worker", w)],
            l(&c.handoff_depth) as f64,
        );
        let o = &c.offload;
        for (name, help, v) in [
            (
                "tollgate_offload_installed_total",
                "Connections installed in the XDP fast path.",
                &o.installed,
            ),
            (
                "tollgate_offload_install_failed_total",
                "Connections the fast path could not take (no slot, map full).",
                &o.install_failed,
            ),
            (
                "tollgate_offload_activated_total",
                "Installed connections the fast path started forwarding.",
                &o.activated,
            ),
            (
                "tollgate_offload_removed_total",
                "Connections taken out of the fast path.",
                &o.removed,
            ),
            (
                "tollgate_offload_packets_total",
                "Packets the XDP fast path forwarded (as reported to the worker).",
                &o.packets,
            ),
            (
                "tollgate_offload_bytes_total",
                "IP bytes the XDP fast path forwarded.",
                &o.bytes,
            ),
        ] {
            f.counter(name, help, &[("worker", w)], l(v));
        }
        #[allow(clippy::cast_precision_loss)]
        f.gauge(
            "tollgate_offload_entries",
            "Connections in the XDP fast path (pending or active).",
            &[("worker", w)],
            l(&o.entries) as f64,
        );
        if wi == 0 {
            for (i, r) in dataplane::offload::PUNT_NAMES.iter().enumerate() {
                f.counter(
                    "tollgate_offload_punts_total",
                    "Packets of offloaded connections the XDP program gave the workers, by reason.",
                    &[("reason", r)],
                    l(&c.punts[i]),
                );
            }
            f.counter(
                "tollgate_xdp_no_mark_room_total",
                "Frames the XDP program dropped because its 8-byte prefix did not fit in front of them (prefix mode, chosen where the kernel refuses bpf_xdp_adjust_meta; a driver without XDP headroom).",
                &[],
                l(&c.no_mark_room),
            );
            #[allow(clippy::cast_precision_loss)]
            f.gauge(
                "tollgate_offload_suspended",
                "1 while the XDP fast path is suspended: an interface cannot transmit frames redirected to it (re-checked every second).",
                &[],
                l(&c.offload_suspended) as f64,
            );
            f.counter(
                "tollgate_offload_suspensions_total",
                "Times the XDP fast path was suspended because an interface could not transmit redirected frames.",
                &[],
                l(&c.offload_suspensions),
            );
        }
        #[allow(clippy::cast_precision_loss)]
        f.gauge(
            "tollgate_umem_frames_free",
            "UMEM frames free in the worker's pool (none in a ring): near zero, the rings starve.",
            &[("worker", w)],
            l(&c.umem_free) as f64,
        );
        for (i, dir) in ["out", "in"].iter().enumerate() {
            f.counter(
                "tollgate_expect_messages_total",
                "Expectation messages between workers, by direction.",
                &[("worker", w), ("direction", dir)],
                l(&c.expect_msgs[i]),
            );
        }
        f.counter(
            "tollgate_expect_messages_dropped_total",
            "Expectation messages lost to a full queue.",
            &[("worker", w)],
            l(&c.expect_msgs_dropped),
        );
        f.counter(
            "tollgate_control_jobs_total",
            "Control-plane jobs the worker ran between batches.",
            &[("worker", w)],
            l(&c.jobs),
        );
        f.counter(
            "tollgate_events_dropped_total",
            "Connection events lost (buffer full or subscriber too slow).",
            &[("worker", w)],
            l(&c.events_dropped),
        );
        f.histogram(
            "tollgate_batch_size",
            "Frames per received batch.",
            &[("worker", w)],
            &c.batch_size,
            1.0,
        );
        f.histogram(
            "tollgate_batch_seconds",
            "Time to process one batch.",
            &[("worker", w)],
            &c.batch_ns,
            1e9,
        );
        let core = &c.core;
        #[allow(clippy::cast_precision_loss)]
        {
            f.gauge(
                "tollgate_conntrack_entries",
                "Connections in the table.",
                &[("worker", w)],
                l(&core.entries) as f64,
            );
            f.gauge(
                "tollgate_conntrack_max_entries",
                "The table's capacity.",
                &[("worker", w)],
                l(&core.max_entries) as f64,
            );
        }
        for (i, name) in STAT_NAMES.iter().enumerate() {
            f.counter(
                &format!("tollgate_conntrack_{name}_total"),
                "Conntrack counter with the kernel's name (conntrack -S).",
                &[("worker", w)],
                l(&core.stats[i]),
            );
        }
        for (i, name) in EXPECT_NAMES.iter().enumerate() {
            f.counter(
                &format!("tollgate_conntrack_{name}_total"),
                "Expectation counter with the kernel's name.",
                &[("worker", w)],
                l(&core.expect[i]),
            );
        }
        for (i, helper) in helpers.iter().enumerate() {
            let lb = [("worker", w), ("helper", *helper)];
            #[allow(clippy::cast_precision_loss)]
            f.gauge(
                "tollgate_expectations",
                "Live expectations, by helper.",
                &lb,
                l(&core.expect_live[i]) as f64,
            );
            f.counter(
                "tollgate_expectations_created_total",
                "Expectations created, by helper.",
                &lb,
                l(&core.helper_expectations[i]),
            );
            f.counter(
                "tollgate_helper_packets_total",
                "Messages parsed, by helper.",
                &lb,
                l(&core.helper_packets[i]),
            );
            f.counter(
                "tollgate_helper_parse_errors_total",
                "Malformed helper messages, by helper.",
                &lb,
                l(&core.helper_parse_errors[i]),
            );
            f.counter(
                "tollgate_helper_refused_total",
                "Announcements refused (address not the sender's, family mismatch), by helper.",
                &lb,
                l(&core.helper_refused[i]),
            );
        }
    }
    let dc = &d.counters;
    f.counter(
        "tollgate_policy_reloads_total",
        "Policy reloads applied.",
        &[],
        l(&dc.reloads),
    );
    f.counter(
        "tollgate_policy_reload_failures_total",
        "Policy reloads refused (invalid config).",
        &[],
        l(&dc.reload_failures),
    );
    f.counter(
        "tollgate_subscriber_events_dropped_total",
        "Events dropped because a `ct events` client was too slow.",
        &[],
        l(&dc.events_dropped),
    );
    f.counter(
        "tollgate_control_requests_total",
        "Control-socket requests.",
        &[],
        l(&dc.requests),
    );
    f.counter(
        "tollgate_control_request_errors_total",
        "Control-socket requests answered with an error.",
        &[],
        l(&dc.request_errors),
    );
    #[allow(clippy::cast_precision_loss)]
    f.gauge(
        "tollgate_workers",
        "Workers running.",
        &[],
        d.workers.len() as f64,
    );
    f.gauge(
        "tollgate_uptime_seconds",
        "Seconds since start.",
        &[],
        started.elapsed().as_secs_f64(),
    );
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&f.out, &mut buf);
    buf
}

/// Serves `/metrics` on `addr` from a thread until `stop` is set. Binding
/// errors are returned; per-connection errors are logged and survived.
pub fn serve(
    d: Arc<Daemon>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics: binding {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("metrics: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("metrics: {e}"))?;
    let started = Instant::now();
    std::thread::Builder::new()
        .name("tg-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Err(e) = answer(&d, s, started) {
                            tracing::debug!("metrics client: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("metrics: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    Ok(bound)
}

/// One HTTP exchange (scrapers are few; one at a time is enough).
fn answer(d: &Daemon, mut s: TcpStream, started: Instant) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?.take(16 * 1024));
    let mut first = String::new();
    r.read_line(&mut first)?;
    // Skip the headers (bounded by `take`).
    let mut h = String::new();
    while r.read_line(&mut h)? > 2 {
        h.clear();
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            TextEncoder::new().format_type().to_string(),
            render(d, started),
        ),
        ("GET", "/") => (
            "200 OK",
            "text/plain".to_string(),
            b"Tollgate: metrics at /metrics\n".to_vec(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain".to_string(),
            b"not found\n".to_vec(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain".to_string(),
            b"GET only\n".to_vec(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    s.flush()
}
