//! `tollgate replay`: the pipeline on a capture, no NIC. A packet whose source
//! address is in an inside prefix arrives on `inside`, any other on `outside`
//! (non-IP frames too); each packet's capture time is the core's `now`.
//! Output: one JSON object per packet.

use std::collections::BTreeMap;
use std::io::Write;

use capture::ether::{self, ETH_P_IP, ETH_P_IPV6};
use capture::pcap::linktype;
use capture::Capture;
use conntrack::policy::{Action, Prefix, Side};
use conntrack::shard::Shards;
use conntrack::tuple::Addr;
use conntrack::{CtState, DropReason};

/// Counts for the end-of-run summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Packets read.
    pub packets: u64,
    /// Accepted.
    pub accepted: u64,
    /// Dropped, per reason label.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Packets per state.
    pub states: BTreeMap<&'static str, u64>,
    /// Conntrack stats at the end.
    pub conntrack: conntrack::Stats,
    /// Connections left in the table.
    pub connections: usize,
    /// Workers (shards) the replay ran on.
    pub workers: usize,
    /// Packets handed from the receiving worker to their owner.
    pub handoffs: u64,
    /// Expectation messages between workers.
    pub messages: u64,
    /// With the XDP fast path: packets it forwarded itself.
    pub offloaded: Option<u64>,
}

/// Which worker receives each packet of a sharded replay (what the NIC's
/// RSS would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Steer {
    /// The owner: symmetric RSS, no handoff.
    #[default]
    Owner,
    /// Inside packets to worker 0, outside ones to the last: an asymmetric
    /// NIC, every reply handed over.
    Side,
    /// Packet i to worker i mod N: the worst case.
    RoundRobin,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "packets {} accepted {} dropped {}",
            self.packets,
            self.accepted,
            self.packets - self.accepted
        )?;
        for (k, v) in &self.states {
            writeln!(f, "  state {k}: {v}")?;
        }
        for (k, v) in &self.dropped {
            writeln!(f, "  drop {k}: {v}")?;
        }
        let s = &self.conntrack;
        write!(
            f,
            "conntrack: found {} new {} invalid {} insert_failed {} drop {} early_drop {} search_restart {} expired {}; {} connections",
            s.found, s.new, s.invalid, s.insert_failed, s.drop, s.early_drop, s.search_restart, s.expired, self.connections
        )?;
        if let Some(n) = self.offloaded {
            write!(f, "\nfast path: {n} packets forwarded by the XDP program")?;
        }
        if self.workers > 1 {
            write!(
                f,
                "\nworkers {}: {} handoffs, {} expectation messages",
                self.workers, self.handoffs, self.messages
            )?;
        }
        Ok(())
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture could not be read (after `read` packets).
    #[error("capture: {err} (after {read} packets)")]
    Capture {
        /// What went wrong.
        err: capture::CaptureError,
        /// Packets read before.
        read: u64,
    },
    /// Writing the output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// The XDP fast path could not be set up or run.
    #[error("{0}")]
    Offload(String),
}

/// Where L3 starts in a record, or why there is no IP packet.
enum L3<'a> {
    Ip(&'a [u8]),
    NonIp,
    Bad(DropReason),
}

fn l3_of(link: u16, data: &[u8]) -> L3<'_> {
    let (et, off) = match link {
        linktype::ETHERNET => match ether::parse(data) {
            Ok(f) => (f.ethertype, f.l3_offset),
            Err(ether::FrameError::Truncated) => return L3::Bad(DropReason::FrameTruncated),
            Err(ether::FrameError::VlanTooDeep) => return L3::Bad(DropReason::VlanTooDeep),
        },
        linktype::LINUX_SLL => match ether::parse_sll(data) {
            Ok(x) => x,
            Err(_) => return L3::Bad(DropReason::FrameTruncated),
        },
        linktype::RAW | linktype::IPV4 | linktype::IPV6 => return L3::Ip(data),
        _ => return L3::Bad(DropReason::UnknownLinkType),
    };
    match et {
        ETH_P_IP | ETH_P_IPV6 => {
            let l3 = data.get(off..).unwrap_or(&[]);
            match conntrack::packet::ethertype_mismatch(et, l3) {
                Some(r) => L3::Bad(r),
                None => L3::Ip(l3),
            }
        }
        _ => L3::NonIp,
    }
}

/// The side an IP packet arrives on: inside if its source is in `inside`.
fn side_of(l3: &[u8], inside: &[Prefix]) -> Side {
    let src = match l3.first().map(|b| b >> 4) {
        Some(4) => l3.get(12..16).map(|b| {
            let (f, a) = Addr::from_ip(std::net::IpAddr::from([b[0], b[1], b[2], b[3]]));
            (f, a)
        }),
        Some(6) => l3.get(8..24).map(|b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Addr::from_ip(std::net::IpAddr::from(a))
        }),
        _ => None,
    };
    match src {
        Some((f, a)) if inside.iter().any(|p| p.contains(f, a)) => Side::Inside,
        _ => Side::Outside,
    }
}

struct Line {
    side: Side,
    verdict: Action,
    state: CtState,
    reply: bool,
    reason: Option<DropReason>,
}

fn write_line(out: &mut impl Write, i: u64, l: &Line) -> std::io::Result<()> {
    let verdict = if l.verdict == Action::Accept {
        "accept"
    } else {
        "drop"
    };
    write!(
        out,
        "{{\"i\":{i},\"side\":\"{}\",\"verdict\":\"{verdict}\",\"state\":\"{}\",\"reply\":{}",
        l.side.as_str(),
        l.state.as_str(),
        l.reply
    )?;
    if l.verdict != Action::Accept {
        if let Some(r) = l.reason {
            write!(out, ",\"reason\":\"{}\"", r.as_str())?;
        }
    }
    writeln!(out, "}}")
}

/// Replays `pcap` through a pipeline built from `cfg`, writing one JSON line
/// per packet to `out`.
pub fn replay(
    cfg: &control::Config,
    pcap: &[u8],
    inside: &[Prefix],
    out: &mut impl Write,
) -> Result<Summary, ReplayError> {
    replay_with_clock(cfg, pcap, inside, Clock::Capture, out)
}

/// [`replay`] with a choice of clock.
pub fn replay_with_clock(
    cfg: &control::Config,
    pcap: &[u8],
    inside: &[Prefix],
    clock: Clock,
    out: &mut impl Write,
) -> Result<Summary, ReplayError> {
    replay_sharded(cfg, pcap, inside, clock, 1, Steer::Owner, out)
}

/// [`replay_with_clock`] over `workers` shards, packets received as `steer`
/// says: the many-core semantics, whose output must not differ from one
/// worker's.
pub fn replay_sharded(
    cfg: &control::Config,
    pcap: &[u8],
    inside: &[Prefix],
    clock: Clock,
    workers: usize,
    steer: Steer,
    out: &mut impl Write,
) -> Result<Summary, ReplayError> {
    let mut shards = Shards::new(workers, &cfg.conntrack, &cfg.policy);
    let n = shards.workers();
    let mut sum = Summary::default();
    run_capture(
        cfg,
        pcap,
        inside,
        clock,
        out,
        &mut sum,
        |i, side, l3, now| {
            let rx = match steer {
                Steer::Owner => shards.owner(l3).unwrap_or(0),
                Steer::Side if side == Side::Inside => 0,
                Steer::Side => n - 1,
                Steer::RoundRobin => i % n,
            };
            Ok(shards.process(rx, side, l3, now).1)
        },
    )?;
    for w in 0..n {
        add_stats(&mut sum, shards.pipeline(w));
    }
    sum.workers = n;
    sum.handoffs = shards.handoffs;
    sum.messages = shards.messages;
    Ok(sum)
}

/// [`replay_with_clock`] with the XDP fast path in front of the pipeline
/// (`offload = true`): each packet goes through Tollgate's XDP program first
/// (run with `BPF_PROG_TEST_RUN`), which forwards the established flows the
/// pipeline handed it, exactly as a worker does; the output must not
/// differ from the replay without it. Root only; moves the calling thread
/// into a network namespace of its own. The summary's `offloaded` counts
/// the packets the program forwarded.
pub fn replay_offload(
    cfg: &control::Config,
    pcap: &[u8],
    inside: &[Prefix],
    clock: Clock,
    out: &mut impl Write,
) -> Result<Summary, ReplayError> {
    let pipeline = conntrack::Pipeline::new(cfg.conntrack.clone(), cfg.policy.clone());
    let mut fast = dataplane::fastreplay::FastReplay::new(pipeline)
        .map_err(|e| ReplayError::Offload(e.to_string()))?;
    let mut sum = Summary::default();
    run_capture(
        cfg,
        pcap,
        inside,
        clock,
        out,
        &mut sum,
        |_, side, l3, now| {
            fast.process(side, l3, now)
                .map_err(|e| ReplayError::Offload(e.to_string()))
        },
    )?;
    fast.finish();
    add_stats(&mut sum, fast.pipeline());
    sum.workers = 1;
    sum.offloaded = Some(fast.forwarded);
    Ok(sum)
}

fn add_stats(sum: &mut Summary, p: &conntrack::Pipeline) {
    let ct = p.conntrack();
    let (a, b) = (&mut sum.conntrack, ct.stats());
    a.found += b.found;
    a.new += b.new;
    a.invalid += b.invalid;
    a.insert_failed += b.insert_failed;
    a.drop += b.drop;
    a.early_drop += b.early_drop;
    a.search_restart += b.search_restart;
    a.expired += b.expired;
    a.frag_followed += b.frag_followed;
    a.source_limit += b.source_limit;
    sum.connections += ct.len();
}

/// Reads the capture and writes a line per packet; `ip(index, side, l3,
/// now)` decides each IP packet.
fn run_capture(
    cfg: &control::Config,
    pcap: &[u8],
    inside: &[Prefix],
    clock: Clock,
    out: &mut impl Write,
    sum: &mut Summary,
    mut ip: impl FnMut(usize, Side, &[u8], u64) -> Result<conntrack::PacketResult, ReplayError>,
) -> Result<(), ReplayError> {
    let cap = Capture::new(pcap).map_err(|err| ReplayError::Capture { err, read: 0 })?;
    let mut last_now = 0;
    for (i, rec) in cap.enumerate() {
        let rec = rec.map_err(|err| ReplayError::Capture {
            err,
            read: sum.packets,
        })?;
        // Captures can step back in time (several interfaces, clock steps):
        // the core's clock never goes backwards.
        let ts = match clock {
            Clock::Capture => rec.ts_ns,
            Clock::Index => i as u64 * 1000,
        };
        let now = ts.max(last_now);
        last_now = now;
        let line = match l3_of(rec.link_type, rec.data) {
            L3::Ip(l3) => {
                let side = side_of(l3, inside);
                let r = ip(i, side, l3, now)?;
                Line {
                    side,
                    verdict: r.verdict,
                    state: r.state,
                    reply: r.reply,
                    reason: r.reason,
                }
            }
            L3::NonIp => Line {
                side: Side::Outside,
                verdict: cfg.non_ip,
                state: CtState::Untracked,
                reply: false,
                reason: Some(DropReason::NonIp),
            },
            L3::Bad(reason) => Line {
                side: Side::Outside,
                verdict: Action::Drop,
                state: CtState::Invalid,
                reply: false,
                reason: Some(reason),
            },
        };
        sum.packets += 1;
        *sum.states.entry(line.state.as_str()).or_default() += 1;
        if line.verdict == Action::Accept {
            sum.accepted += 1;
        } else {
            let r = line.reason.map_or("unknown", DropReason::as_str);
            *sum.dropped.entry(r).or_default() += 1;
        }
        write_line(out, i as u64, &line)?;
    }
    Ok(())
}

/// Where the core's `now` comes from during a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// Each packet's capture timestamp: timeouts behave as they did on the wire.
    #[default]
    Capture,
    /// Packet i is at i microseconds: nothing times out. For comparing with a
    /// replay that sends the packets back to back (the kernel differential).
    Index,
}

/// Parses `--inside` prefixes (comma-separated CIDRs).
pub fn parse_inside(s: &str) -> Result<Vec<Prefix>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let p = p.trim();
            let (a, len) = p.split_once('/').unwrap_or((p, ""));
            let ip: std::net::IpAddr = a
                .parse()
                .map_err(|_| format!("--inside: \"{p}\" is not a CIDR prefix"))?;
            let (f, addr) = Addr::from_ip(ip);
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = if len.is_empty() {
                max
            } else {
                len.parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| format!("--inside: \"{p}\": bad prefix length"))?
            };
            Prefix::new(f, addr, len).ok_or_else(|| format!("--inside: \"{p}\" is not a prefix"))
        })
        .collect()
}
