//! The running daemon's control plane: the control socket, the jobs it posts
//! to the workers, connection events fanned out to subscribers, and policy
//! reload. Workers are never locked: everything reaches them as a job in
//! their mailbox, run between two batches.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::proto::{
    self, ConnJson, Done, ExpectJson, Filter, FilterSpec, Reply, Request, WorkerStats, MAX_REQUEST,
};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use dataplane::{Counters, Mailbox};

/// Slab slots a listing or flush job walks at once: bounds how long one job
/// holds a worker away from its packets.
const CHUNK: usize = 16_384;
/// How long a client waits for a worker to answer one job.
const JOB_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are refused with an error line.
const MAX_CLIENTS: usize = 32;
/// Events buffered per subscriber before they are dropped (and counted).
const SUBSCRIBER_QUEUE: usize = 65_536;

/// One worker as the control plane sees it.
pub struct WorkerHandle {
    /// Its mailbox.
    pub mailbox: Mailbox,
    /// Its counters.
    pub counters: Arc<Counters>,
}

struct Subscriber {
    id: u64,
    filter: Filter,
    tx: Sender<(usize, conntrack::Event)>,
}

/// Daemon-wide counters.
#[derive(Default)]
pub struct DaemonCounters {
    /// Policy reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (invalid config).
    pub reload_failures: AtomicU64,
    /// Events dropped because a subscriber was too slow.
    pub events_dropped: AtomicU64,
    /// Control requests served.
    pub requests: AtomicU64,
    /// Control requests answered with an error.
    pub request_errors: AtomicU64,
}

/// The control plane of a running instance.
pub struct Daemon {
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    /// The config file (re-read on reload), if there is one.
    pub config_path: Option<PathBuf>,
    /// Counters.
    pub counters: DaemonCounters,
    subscribers: Mutex<Vec<Subscriber>>,
    next_subscriber: AtomicU64,
    clients: AtomicUsize,
}

impl Daemon {
    /// A daemon over these workers. `events` is the receiving end of the
    /// channel every worker's inbox sends its connection events to.
    pub fn new(
        workers: Vec<WorkerHandle>,
        config_path: Option<PathBuf>,
        events: Receiver<(usize, conntrack::Event)>,
    ) -> Arc<Daemon> {
        let d = Arc::new(Daemon {
            workers,
            config_path,
            counters: DaemonCounters::default(),
            subscribers: Mutex::new(Vec::new()),
            next_subscriber: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&d);
        std::thread::Builder::new()
            .name("tg-events".into())
            .spawn(move || {
                // Fan-out: ends when every worker's sender is gone.
                while let Ok((w, e)) = events.recv() {
                    let Some(d) = weak.upgrade() else { break };
                    d.fan_out(w, e);
                }
            })
            .ok();
        d
    }

    fn fan_out(&self, w: usize, e: conntrack::Event) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| {
            if !s.filter.matches(&e.conn) {
                return true;
            }
            match s.tx.try_send((w, e.clone())) {
                Ok(()) => true,
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
            }
        });
        if subs.is_empty() {
            drop(subs);
            self.set_events(false);
        }
    }

    /// Turns event recording on or off in every worker's core.
    fn set_events(&self, on: bool) {
        for w in &self.workers {
            let _ = w
                .mailbox
                .post(Box::new(move |p, _| p.conntrack_mut().set_events(on)));
        }
    }

    /// Runs `f` on worker `w` and waits for its answer.
    fn ask<T: Send + 'static>(
        &self,
        w: usize,
        f: impl FnOnce(&mut conntrack::Pipeline, u64) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = bounded(1);
        let h = self
            .workers
            .get(w)
            .ok_or_else(|| format!("no worker {w}"))?;
        h.mailbox
            .post(Box::new(move |p, now| {
                let _ = tx.send(f(p, now));
            }))
            .map_err(|e| format!("worker {w}: {e}"))?;
        rx.recv_timeout(JOB_TIMEOUT)
            .map_err(|_| format!("worker {w} did not answer"))
    }

    /// Re-reads the config file and gives its policy to every worker. An
    /// invalid file changes nothing.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.config_path else {
            self.counters
                .reload_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err("this instance runs a built-in config: nothing to reload".into());
        };
        let cfg = match control::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("reload refused, the running policy stays: {e}");
                return Err(format!("reload refused, the running policy stays:\n{e}"));
            }
        };
        let rules = cfg.policy.rules.len();
        for (i, w) in self.workers.iter().enumerate() {
            let policy = cfg.policy.clone();
            self.ask(i, move |p, _| p.set_policy(policy)).map_err(|e| {
                self.counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                format!("reload: {e}")
            })?;
            let _ = w;
        }
        self.counters.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!("policy reloaded from {}: {rules} rules", path.display());
        Ok(rules)
    }

    /// Serves one request, writing the reply lines to `out`.
    pub fn serve(&self, req: Request, stream: &mut UnixStream) -> std::io::Result<()> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.dispatch(req, stream);
        match r {
            Ok(Ok(last)) => send(stream, &last),
            Ok(Err(e)) => {
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                send(stream, &Reply::Error(e))
            }
            Err(io) => Err(io),
        }
    }

    fn dispatch(
        &self,
        req: Request,
        out: &mut UnixStream,
    ) -> std::io::Result<Result<Reply, String>> {
        let done = match req {
            Request::CtList { filter } => self.list(&filter, out)?,
            Request::CtFlush { filter } => self.flush(&filter),
            Request::CtStats => self.stats(out)?,
            Request::CtEvents { filter } => return self.events(&filter, out).map(Ok),
            Request::ExpectList => self.expect_list(out)?,
            Request::ExpectAdd(spec) => self.expect_add(&spec),
            Request::ExpectDel { id, worker } => self.expect_del(id, worker),
            Request::Reload => self.reload().map(|rules| Done::Reloaded { rules }),
        };
        Ok(done.map(Reply::Done))
    }

    fn list(
        &self,
        spec: &FilterSpec,
        out: &mut UnixStream,
    ) -> std::io::Result<Result<Done, String>> {
        let filter = match spec.compile() {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let mut count = 0u64;
        for w in 0..self.workers.len() {
            let mut start = 0usize;
            loop {
                let got = self.ask(w, move |p, now| {
                    let ct = p.conntrack();
                    let end = (start + CHUNK).min(ct.slots());
                    let conns: Vec<_> = ct
                        .connections_in(start..end, now)
                        .filter(|c| filter.matches(c))
                        .collect();
                    (conns, end, ct.slots())
                });
                let (conns, end, slots) = match got {
                    Ok(x) => x,
                    Err(e) => return Ok(Err(e)),
                };
                for c in &conns {
                    send(out, &Reply::Conn(ConnJson::from_info(w, c)))?;
                    count += 1;
                }
                if end >= slots {
                    break;
                }
                start = end;
            }
        }
        Ok(Ok(Done::Count { count }))
    }

    fn flush(&self, spec: &FilterSpec) -> Result<Done, String> {
        let filter = spec.compile()?;
        let mut removed = 0usize;
        for w in 0..self.workers.len() {
            let mut start = 0usize;
            loop {
                let (n, end, slots) = self.ask(w, move |p, now| {
                    let ct = p.conntrack_mut();
                    let end = (start + CHUNK).min(ct.slots());
                    let n = ct.remove_in(start..end, now, |c| filter.matches(c));
                    (n, end, ct.slots())
                })?;
                removed += n;
                if end >= slots {
                    break;
                }
                start = end;
            }
        }
        tracing::info!("ct flush: {removed} connections removed");
        Ok(Done::Removed { removed })
    }

    fn stats(&self, out: &mut UnixStream) -> std::io::Result<Result<Done, String>> {
        for (w, h) in self.workers.iter().enumerate() {
            let got = self.ask(w, |p, _| {
                let ct = p.conntrack();
                (
                    ct.stats().clone(),
                    ct.expect_stats().clone(),
                    ct.len(),
                    ct.config().max_entries,
                    ct.expectations(0).count(),
                )
            });
            let (s, e, len, max, exps) = match got {
                Ok(x) => x,
                Err(err) => return Ok(Err(err)),
            };
            let c = &h.counters;
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let stats = WorkerStats {
                worker: w,
                entries: len,
                max_entries: max,
                found: s.found,
                new: s.new,
                invalid: s.invalid,
                insert_failed: s.insert_failed,
                drop: s.drop,
                early_drop: s.early_drop,
                search_restart: s.search_restart,
                expired: s.expired,
                frag_followed: s.frag_followed,
                source_limit: s.source_limit,
                expect_count: exps,
                expect_new: e.expect_new,
                expect_create: e.expect_create,
                expect_delete: e.expect_delete,
                expect_refused: e.expect_refused,
                expect_evicted: e.expect_evicted,
                rx: [l(&c.rx[0]), l(&c.rx[1])],
                forwarded: [l(&c.forwarded[0]), l(&c.forwarded[1])],
                dropped: [l(&c.dropped[0]), l(&c.dropped[1])],
                tx_full: l(&c.tx_full),
                handoffs: l(&c.handoffs),
                handoffs_in: l(&c.handoffs_in),
                handoff_dropped: l(&c.handoff_dropped),
                expect_msgs_out: l(&c.expect_msgs[0]),
                expect_msgs_in: l(&c.expect_msgs[1]),
                expect_msgs_dropped: l(&c.expect_msgs_dropped),
                events_dropped: l(&c.events_dropped),
            };
            send(out, &Reply::Stats(stats))?;
        }
        Ok(Ok(Done::Workers {
            workers: self.workers.len(),
        }))
    }

    /// Streams events until the client goes away; returns the last line
    /// (for a client that is no longer there, unless the filter was bad).
    fn events(&self, spec: &FilterSpec, out: &mut UnixStream) -> std::io::Result<Reply> {
        let filter = match spec.compile() {
            Ok(f) => f,
            Err(e) => return Ok(Reply::Error(e)),
        };
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE);
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.push(Subscriber { id, filter, tx });
            subs.len() == 1
        };
        if first {
            self.set_events(true);
        }
        // The client says nothing after its request: a read that returns
        // means it has gone.
        out.set_nonblocking(false)?;
        send(out, &Reply::Done(Done::Streaming))?;
        let mut probe = out.try_clone()?;
        probe.set_read_timeout(Some(Duration::from_millis(1)))?;
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok((w, e)) => {
                    let line = Reply::Event {
                        event: e.kind.into(),
                        conn: ConnJson::from_info(w, &e.conn),
                    };
                    if send(out, &line).is_err() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let mut b = [0u8; 1];
                    match probe.read(&mut b) {
                        Ok(_) => break,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(rx);
        let empty = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|s| s.id != id);
            subs.is_empty()
        };
        if empty {
            self.set_events(false);
        }
        Ok(Reply::Done(Done::Ended))
    }

    fn expect_list(&self, out: &mut UnixStream) -> std::io::Result<Result<Done, String>> {
        let mut count = 0u64;
        for w in 0..self.workers.len() {
            let got = self.ask(w, |p, now| {
                p.conntrack().expectations(now).collect::<Vec<_>>()
            });
            let list = match got {
                Ok(l) => l,
                Err(e) => return Ok(Err(e)),
            };
            for e in &list {
                send(out, &Reply::Expect(ExpectJson::from_info(w, e)))?;
                count += 1;
            }
        }
        Ok(Ok(Done::Count { count }))
    }

    fn expect_add(&self, spec: &proto::ExpectAddSpec) -> Result<Done, String> {
        let (master, exp) = spec.compile()?;
        let mut last = String::from("no such master connection");
        for w in 0..self.workers.len() {
            match self.ask(w, move |p, now| {
                p.conntrack_mut().expect_for(&master, &exp, now)
            })? {
                Ok(id) => {
                    tracing::info!("expectation {id} added on worker {w}");
                    return Ok(Done::Expectation { worker: w, id });
                }
                Err(conntrack::expect::ExpectError::NoMaster) => {}
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn expect_del(&self, id: u32, worker: Option<usize>) -> Result<Done, String> {
        let ws: Vec<usize> = match worker {
            Some(w) if w < self.workers.len() => vec![w],
            Some(w) => return Err(format!("no worker {w}")),
            None => (0..self.workers.len()).collect(),
        };
        for w in ws {
            if self.ask(w, move |p, _| p.conntrack_mut().unexpect(id))? {
                return Ok(Done::Expectation { worker: w, id });
            }
        }
        Err(format!("no expectation {id}"))
    }

    /// Opens the control socket at `path` (root-only) and serves it on a
    /// thread until `stop` is set. Refuses to take over the socket of a live
    /// instance; removes a dead one's.
    pub fn serve_control(
        self: &Arc<Self>,
        path: &Path,
        stop: Arc<AtomicBool>,
    ) -> Result<ControlSocket, String> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "{} is in use: another Tollgate instance is running (or set [control] socket)",
                    path.display()
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("removing the stale {}: {e}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("tg-control".into())
            .spawn(move || me.accept_loop(&listener, &stop))
            .map_err(|e| format!("control thread: {e}"))?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            thread: Some(thread),
        })
    }

    fn accept_loop(self: Arc<Self>, listener: &UnixListener, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        self.clients.fetch_sub(1, Ordering::AcqRel);
                        let mut s = stream;
                        let _ = send(&mut s, &Reply::Error("too many control clients".into()));
                        continue;
                    }
                    let me = self.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("tg-client".into())
                            .spawn(move || {
                                me.client(stream);
                                me.clients.fetch_sub(1, Ordering::AcqRel);
                            });
                    if spawned.is_err() {
                        self.clients.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// One client: one request line, the reply, then the connection closes.
    fn client(&self, mut stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut line = Vec::new();
        let mut reader = BufReader::new(read_half.take(MAX_REQUEST as u64 + 1));
        let req = match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.len() > MAX_REQUEST => {
                Err(format!("request too large (more than {MAX_REQUEST} bytes)"))
            }
            Ok(_) => proto::parse_request(line.strip_suffix(b"\n").unwrap_or(&line)),
            Err(e) => Err(format!("reading the request: {e}")),
        };
        match req {
            Ok(r) => {
                let _ = self.serve(r, &mut stream);
            }
            Err(e) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                let _ = send(&mut stream, &Reply::Error(e));
            }
        }
    }
}

/// Writes one reply line.
fn send(out: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    writeln!(out, "{}", reply.to_line())
}

/// Fails if a live instance already serves the control socket at `path`
/// (checked before the dataplane starts, so a second instance never touches
/// the first one's interfaces).
pub fn check_socket_free(path: &Path) -> Result<(), String> {
    if path.exists() && UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use: another Tollgate instance is running (or set [control] socket)",
            path.display()
        ));
    }
    Ok(())
}

/// The control socket being served; removes its file when dropped.
pub struct ControlSocket {
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // The accept loop sees `stop` within 50 ms; do not wait for clients.
        let _ = self.thread.take();
    }
}
