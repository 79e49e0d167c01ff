//! A worker's mailbox: how the control plane hands it jobs (run between
//! two batches, on the worker's own pipeline) and wakes it (an eventfd the
//! worker polls beside its sockets).

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use conntrack::{Event, Pipeline};
use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Work the control plane runs on a worker, between two batches, with the
/// worker's pipeline and its clock.
pub type Job = Box<dyn FnOnce(&mut Pipeline, u64) + Send>;

/// The control plane's end of a worker's mailbox.
#[derive(Clone, Debug)]
pub struct Mailbox {
    pub(super) jobs: Sender<Job>,
    pub(super) wake: Arc<File>,
}

/// Why a job could not be posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The worker's queue is full (it is stuck or flooded with requests).
    #[error("worker busy")]
    Busy,
    /// The worker has stopped.
    #[error("worker stopped")]
    Stopped,
}

impl Mailbox {
    /// The worker's wake-up eventfd (for other workers handing it frames).
    pub fn wake_fd(&self) -> Arc<File> {
        self.wake.clone()
    }

    /// Queues a job and wakes the worker.
    pub fn post(&self, job: Job) -> Result<(), PostError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PostError::Busy,
            TrySendError::Disconnected(_) => PostError::Stopped,
        })?;
        wake(&self.wake);
        Ok(())
    }
}

/// The worker's end of its mailbox.
#[derive(Debug)]
pub struct Inbox {
    pub(super) jobs: Receiver<Job>,
    pub(super) wake: Arc<File>,
    /// This worker's number (in events).
    pub worker: usize,
    /// Where connection events go (when events are enabled in the core).
    pub events: Option<Sender<(usize, Event)>>,
}

/// A mailbox for worker `worker`, holding at most `capacity` pending jobs.
pub fn mailbox(worker: usize, capacity: usize) -> std::io::Result<(Mailbox, Inbox)> {
    let wake = Arc::new(crate::sys::eventfd()?);
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    Ok((
        Mailbox {
            jobs: tx,
            wake: wake.clone(),
        },
        Inbox {
            jobs: rx,
            wake,
            worker,
            events: None,
        },
    ))
}

impl Inbox {
    pub(super) fn clear_wake(&self) {
        let mut buf = [0u8; 8];
        // A non-blocking eventfd: EAGAIN (nothing pending) is fine.
        let _ = (&*self.wake).read(&mut buf);
    }
}

pub(super) fn wake(fd: &File) {
    // An eventfd counter cannot overflow from these few writes, and a
    // failed write only delays the wake-up to the next poll timeout.
    let _ = (&*fd).write(&1u64.to_ne_bytes());
}
