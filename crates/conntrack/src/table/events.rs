//! Connection events (`conntrack -E`): what the table records when a
//! connection enters it, changes or leaves it, in a bounded buffer the owner
//! drains. Apart because the packet path only asks whether events are on.

use super::entry::L4State;
use super::query::{info_of, ConnInfo};
use super::Conntrack;

/// What happened to a connection (`conntrack -E`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Confirmed: entered the table.
    New,
    /// TCP state, seen-reply or assured changed.
    Update,
    /// Left the table (expired, closed, evicted, flushed).
    Destroy,
}

impl EventKind {
    /// The kernel's event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::New => "new",
            EventKind::Update => "update",
            EventKind::Destroy => "destroy",
        }
    }
}

/// One connection event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// The connection as it is after the event (before it, for destroy).
    pub conn: ConnInfo,
}

/// The event buffer: bounded, drained by the owner after each batch; events
/// beyond its capacity are counted, never blocking the packet path.
#[derive(Debug, Default)]
pub(super) struct Events {
    pub(super) on: bool,
    buf: Vec<Event>,
    lost: u64,
}

/// Events buffered between two drains at most.
pub const EVENT_BUFFER: usize = 4096;

impl Conntrack {
    /// Starts or stops recording connection events.
    pub fn set_events(&mut self, on: bool) {
        self.events.on = on;
        if on {
            self.events.buf.reserve(EVENT_BUFFER);
        } else {
            self.events.buf = Vec::new();
        }
    }

    /// Moves the recorded events into `out` (appending); returns how many
    /// events were lost to a full buffer since the last call.
    pub fn drain_events(&mut self, out: &mut Vec<Event>) -> u64 {
        out.append(&mut self.events.buf);
        core::mem::take(&mut self.events.lost)
    }

    pub(super) fn emit(&mut self, kind: EventKind, idx: u32) {
        if self.events.buf.len() >= EVENT_BUFFER {
            self.events.lost += 1;
            return;
        }
        let mut conn = info_of(
            &self.entries[idx as usize],
            &self.v6hi[idx as usize],
            self.now,
        );
        if kind == EventKind::Destroy {
            conn.expires_in = 0;
        }
        self.events.buf.push(Event { kind, conn });
    }

    /// What an update event reports on: status bits and TCP state.
    pub(super) fn event_key(&self, idx: u32) -> (u8, u8) {
        let e = &self.entries[idx as usize];
        let tcp = match e.l4 {
            L4State::Tcp(c) => c.state as u8,
            L4State::Stream(_) => 0,
        };
        (e.status, tcp)
    }

    /// Events lost to a full buffer and not yet reported by
    /// [`Self::drain_events`].
    pub fn events_pending_lost(&self) -> u64 {
        self.events.lost
    }
}
