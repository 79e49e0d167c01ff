//! What the dataplane's lab tests share: the root check and a worker (and a
//! server) that stop whatever happens to the test.

#![allow(dead_code)]

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use conntrack::Pipeline;
use dataplane::lab::Lab;
use dataplane::{Counters, Worker};

#[allow(unused_imports)]
pub use testkit::{is_root, lab_allowed, root_or_skip};

/// A thread in the lab's box namespace until the test ends, passing or
/// failing (then told to stop and joined, so the lab, dropped after it, is
/// always removed); and a server process, killed first.
pub struct Running {
    pub stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub server: Option<Child>,
}

impl Running {
    /// Runs `body(stop)` on a thread in the lab's box namespace.
    pub fn in_box(lab: &Arc<Lab>, body: impl FnOnce(&AtomicBool) + Send + 'static) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lab.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            l.enter_box().expect("enter box");
            body(&s);
        });
        Running {
            stop,
            thread: Some(thread),
            server: None,
        }
    }

    /// A worker over the lab's queue 0 with `pipeline`, until the test ends.
    pub fn worker(
        lab: &Arc<Lab>,
        pipeline: Pipeline,
        counters: Arc<Counters>,
        offload: bool,
    ) -> Running {
        let l = lab.clone();
        Running::in_box(lab, move |stop| {
            let cfg = l.worker_config(false, offload, false);
            let mut w = Worker::open(&cfg, pipeline, counters).expect("worker");
            w.run(stop);
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A worker that panicked fails the test that started it (unless
            // the test is failing already: one panic says it).
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the lab's worker thread panicked");
            }
        }
    }
}
