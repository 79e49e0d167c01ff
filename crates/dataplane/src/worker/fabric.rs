//! What the workers of one instance share: which worker owns which
//! connection, the bounded lock-free queues that carry frames of another
//! worker's connections and expectation messages to their owners, and the
//! eventfds that wake them.

use std::fs::File;
use std::sync::Arc;

use conntrack::expect::ExpectMsg;
use conntrack::policy::Side;
use conntrack::shard::Sharding;
use crossbeam_channel::{bounded, Receiver, Sender};

/// Largest frame one worker can hand to another.
pub const HANDOFF_MAX: usize = 2048;
/// Frames queued per worker for handoff.
const HANDOFF_QUEUE: usize = 1024;
/// Expectation messages queued per worker.
const MSG_QUEUE: usize = 8192;

/// A frame on its way to the worker that owns its connection.
pub struct Handoff {
    pub(super) side: Side,
    pub(super) len: u16,
    pub(super) data: [u8; HANDOFF_MAX],
}

impl Handoff {
    /// A copy of `frame`, received on `side`; `None` if it is larger than
    /// [`HANDOFF_MAX`].
    pub fn new(side: Side, frame: &[u8]) -> Option<Handoff> {
        let len = u16::try_from(frame.len())
            .ok()
            .filter(|&l| usize::from(l) <= HANDOFF_MAX)?;
        let mut h = Handoff {
            side,
            len,
            data: [0; HANDOFF_MAX],
        };
        h.data[..frame.len()].copy_from_slice(frame);
        Some(h)
    }

    /// The frame.
    pub fn frame(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// One worker's handoff queue (bounded, lock-free), as the fabric makes it.
pub fn handoff_queue() -> (Sender<Handoff>, Receiver<Handoff>) {
    bounded(HANDOFF_QUEUE)
}

/// What the workers of one instance share: the owner function, a bounded
/// lock-free handoff queue and expectation-message queue per worker, and each
/// worker's wake-up eventfd.
pub struct Fabric {
    /// Which worker owns which connection.
    pub sharding: Sharding,
    pub(super) handoff_tx: Vec<Sender<Handoff>>,
    pub(super) handoff_rx: Vec<Receiver<Handoff>>,
    pub(super) msg_tx: Vec<Sender<ExpectMsg>>,
    pub(super) msg_rx: Vec<Receiver<ExpectMsg>>,
    pub(super) wake: Vec<Arc<File>>,
}

impl Fabric {
    /// The fabric of `wakes.len()` workers (their mailboxes' eventfds).
    pub fn new(sharding: Sharding, wakes: Vec<Arc<File>>) -> Arc<Fabric> {
        let n = wakes.len();
        let (mut htx, mut hrx, mut mtx, mut mrx) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (t, r) = handoff_queue();
            htx.push(t);
            hrx.push(r);
            let (t, r) = bounded(MSG_QUEUE);
            mtx.push(t);
            mrx.push(r);
        }
        Arc::new(Fabric {
            sharding,
            handoff_tx: htx,
            handoff_rx: hrx,
            msg_tx: mtx,
            msg_rx: mrx,
            wake: wakes,
        })
    }

    /// Workers.
    pub fn workers(&self) -> usize {
        self.wake.len()
    }
}
