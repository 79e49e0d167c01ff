//! Tollgate's connection-tracking core: Linux netfilter conntrack semantics,
//! sans I/O. No sockets, no clocks, no threads: `now` (nanoseconds on any
//! monotonic scale) is passed in, so the same code runs on a NIC, on a capture
//! and in tests with a virtual clock.
//!
//! The pieces mirror the kernel's: [`tuple`] (nf_conntrack_tuple), [`packet`]
//! (header validation, the `*_error` callbacks), [`proto`] (the L4 trackers),
//! [`table`] (the hash table with its expiry wheel), [`policy`] (an nftables-like
//! rule set) and [`pipeline`] (raw stage → conntrack → filter → confirm).

#![deny(unsafe_code)]

pub mod build;
pub mod expect;
pub mod helpers;
pub mod index;
pub mod limit;
pub mod linebuf;
mod mem;
pub mod packet;
pub mod pipeline;
pub mod policy;
pub mod proto;
pub mod reason;
pub mod shard;
pub mod table;
pub mod timeouts;
pub mod tuple;

pub use helpers::HelperKind;
pub use pipeline::{PacketResult, Pipeline};
pub use reason::DropReason;
pub use table::{Config, ConnInfo, Conntrack, Event, EventKind, Stats};
pub use tuple::{Direction, Family, Tuple};

/// The conntrack state a policy sees (`ct state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CtState {
    /// First packet(s) of a connection not yet seen both ways.
    New = 0,
    /// Packets of a connection seen both ways.
    Established = 1,
    /// First packet of an expected connection, or an ICMP error about a tracked one.
    Related = 2,
    /// Not trackable (bad headers, out of window, orphan ICMP error, ...).
    Invalid = 3,
    /// Exempt from tracking (notrack rule, IPv6 ND/MLD).
    Untracked = 4,
}

impl CtState {
    /// Lower-case name as in nftables and replay output.
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
            CtState::Untracked => "untracked",
        }
    }

    /// Parses a lower-case state name.
    pub fn from_name(s: &str) -> Option<CtState> {
        Some(match s {
            "new" => CtState::New,
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            "untracked" => CtState::Untracked,
            _ => return None,
        })
    }
}
