//! The conntrack table (being implemented).

use crate::proto::tcp::TcpConfig;
use crate::timeouts::Timeouts;
use crate::tuple::HashSecret;

/// Conntrack configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Fixed capacity of the table (`nf_conntrack_max`).
    pub max_entries: u32,
    /// TCP options and timeouts.
    pub tcp: TcpConfig,
    /// Other protocols' timeouts.
    pub timeouts: Timeouts,
    /// Verify L4 checksums (`nf_conntrack_checksum`).
    pub checksum: bool,
    /// Secret for the table hash.
    pub hash_secret: HashSecret,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_entries: 262_144,
            tcp: TcpConfig::default(),
            timeouts: Timeouts::default(),
            checksum: true,
            hash_secret: HashSecret::default(),
        }
    }
}

/// Kernel-named counters (`conntrack -S`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups that found an entry.
    pub found: u64,
    /// Entries created (confirmed).
    pub new: u64,
    /// Packets marked invalid.
    pub invalid: u64,
    /// Confirmations that failed.
    pub insert_failed: u64,
    /// New packets dropped because the table was full.
    pub drop: u64,
    /// Entries evicted to make room.
    pub early_drop: u64,
    /// Lookups restarted (port reuse).
    pub search_restart: u64,
}

/// The table.
pub struct Conntrack {
    cfg: Config,
    stats: Stats,
}

impl Conntrack {
    /// A table with the given configuration, all memory allocated now.
    pub fn new(cfg: Config) -> Self {
        Conntrack {
            cfg,
            stats: Stats::default(),
        }
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}
