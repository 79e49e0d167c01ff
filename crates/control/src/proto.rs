//! The control socket's protocol: one JSON object per line each way. A
//! client sends one request ([`Request`]); the daemon answers with zero or
//! more data lines and a final `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}` line (a `ct_events` stream never ends on its
//! own), each a [`Reply`] that both ends use. Everything here is pure: the
//! socket lives in the daemon, so the parsing and matching are tested on
//! byte slices.

use std::net::IpAddr;

use conntrack::expect::{ExpectInfo, ExpectSpec, Mask};
use conntrack::policy::Prefix;
use conntrack::tuple::{ipproto, Addr, Family, Tuple};
use conntrack::{ConnInfo, HelperKind};
use serde::{Deserialize, Serialize};

use crate::config::prefix;

/// Longest request line the daemon reads; a longer one gets an error reply.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks, as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `ct list`: connections matching a filter.
    CtList {
        /// Which connections.
        #[serde(default)]
        filter: FilterSpec,
    },
    /// `ct flush`: remove the connections matching a filter (all by default).
    CtFlush {
        /// Which connections.
        #[serde(default)]
        filter: FilterSpec,
    },
    /// `ct stats`: counters per worker.
    CtStats,
    /// `ct events`: a stream of new/update/destroy events.
    CtEvents {
        /// Which connections.
        #[serde(default)]
        filter: FilterSpec,
    },
    /// `expect list`.
    ExpectList,
    /// `expect add`.
    ExpectAdd(ExpectAddSpec),
    /// `expect del`.
    ExpectDel {
        /// Expectation id (from `expect list`).
        id: u32,
        /// Worker that holds it; every worker is tried when absent.
        #[serde(default)]
        worker: Option<usize>,
    },
    /// Re-read the configuration file and apply its policy.
    Reload,
}

/// A connection filter as typed by the operator (all fields optional; all
/// given ones must match, on the original direction's tuple).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Source address or CIDR prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination address or CIDR prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Protocol name (tcp, udp, icmp, icmpv6, gre, sctp, udplite) or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// A TCP state (ESTABLISHED, TIME_WAIT, ... any case) or one of
    /// `unreplied`, `replied`, `assured`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// What a state filter asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateMatch {
    /// This TCP state (kernel name).
    Tcp(&'static str),
    /// No reply seen.
    Unreplied,
    /// A reply seen.
    Replied,
    /// Assured.
    Assured,
}

/// A validated filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    src: Option<Prefix>,
    dst: Option<Prefix>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<u8>,
    state: Option<StateMatch>,
}

const TCP_STATES: &[&str] = &[
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// Protocol number of a name or number.
pub fn proto_number(p: &str) -> Result<u8, String> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" => ipproto::TCP,
        "udp" => ipproto::UDP,
        "icmp" => ipproto::ICMP,
        "icmpv6" => ipproto::ICMPV6,
        "gre" => ipproto::GRE,
        "sctp" => ipproto::SCTP,
        "udplite" => ipproto::UDPLITE,
        other => other
            .parse::<u8>()
            .map_err(|_| format!("\"{p}\" is not a protocol name or number"))?,
    })
}

/// Protocol name for listings (`conntrack -L` names), or `unknown`.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "tcp",
        ipproto::UDP => "udp",
        ipproto::ICMP => "icmp",
        ipproto::ICMPV6 => "icmpv6",
        ipproto::GRE => "gre",
        ipproto::SCTP => "sctp",
        ipproto::UDPLITE => "udplite",
        _ => "unknown",
    }
}

impl FilterSpec {
    /// Validates the filter.
    pub fn compile(&self) -> Result<Filter, String> {
        let pfx = |v: &Option<String>, what: &str| -> Result<Option<Prefix>, String> {
            v.as_deref()
                .map(|t| prefix(t).map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        let state = match self.state.as_deref() {
            None => None,
            Some(s) => {
                let up = s.to_ascii_uppercase();
                Some(match up.as_str() {
                    "UNREPLIED" => StateMatch::Unreplied,
                    "REPLIED" | "SEEN_REPLY" => StateMatch::Replied,
                    "ASSURED" => StateMatch::Assured,
                    _ => match TCP_STATES.iter().find(|n| **n == up) {
                        Some(n) => StateMatch::Tcp(n),
                        None => {
                            return Err(format!(
                                "state: \"{s}\" is not a TCP state ({}) nor unreplied, replied or assured",
                                TCP_STATES.join(", ")
                            ))
                        }
                    },
                })
            }
        };
        Ok(Filter {
            src: pfx(&self.src, "src")?,
            dst: pfx(&self.dst, "dst")?,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto.as_deref().map(proto_number).transpose()?,
            state,
        })
    }
}

impl Filter {
    /// Does `c` match?
    pub fn matches(&self, c: &ConnInfo) -> bool {
        let t = &c.orig;
        let ports = !t.is_icmp();
        self.src.is_none_or(|p| p.contains(t.family, t.src))
            && self.dst.is_none_or(|p| p.contains(t.family, t.dst))
            && self.proto.is_none_or(|p| p == t.proto)
            && self.sport.is_none_or(|p| ports && p == t.src_port)
            && self.dport.is_none_or(|p| ports && p == t.dst_port)
            && self.state.is_none_or(|s| match s {
                StateMatch::Tcp(n) => c.tcp_state == Some(n),
                StateMatch::Unreplied => !c.seen_reply,
                StateMatch::Replied => c.seen_reply,
                StateMatch::Assured => c.assured,
            })
    }
}

/// A tuple as typed: addresses, protocol, ports.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TupleSpec {
    /// Protocol name or number.
    pub proto: String,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Source port; absent in an expectation: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

/// `expect add`: an expectation on behalf of an existing connection.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectAddSpec {
    /// The master connection (either direction's tuple).
    pub master: TupleSpec,
    /// The expected connection's original tuple; no `sport` = any source port.
    pub expect: TupleSpec,
    /// Helper class whose limits and timeout apply.
    pub helper: String,
}

fn addr(s: &str, what: &str) -> Result<(Family, Addr), String> {
    let ip: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: \"{s}\" is not an IP address"))?;
    Ok(Addr::from_ip(ip))
}

impl TupleSpec {
    /// The tuple; a missing port is 0 (`wild` reports whether sport was absent).
    fn tuple(&self, what: &str) -> Result<(Tuple, bool), String> {
        let (f1, src) = addr(&self.src, &format!("{what}.src"))?;
        let (f2, dst) = addr(&self.dst, &format!("{what}.dst"))?;
        if f1 != f2 {
            return Err(format!("{what}: src and dst are of different families"));
        }
        let proto = proto_number(&self.proto).map_err(|e| format!("{what}.proto: {e}"))?;
        if !matches!(
            proto,
            ipproto::TCP | ipproto::UDP | ipproto::SCTP | ipproto::UDPLITE
        ) {
            return Err(format!(
                "{what}.proto: only tcp, udp, sctp and udplite connections can be given by ports"
            ));
        }
        let dport = self
            .dport
            .ok_or_else(|| format!("{what}.dport is required"))?;
        Ok((
            Tuple {
                src,
                dst,
                src_port: self.sport.unwrap_or(0),
                dst_port: dport,
                proto,
                family: f1,
            },
            self.sport.is_none(),
        ))
    }
}

impl ExpectAddSpec {
    /// The master tuple and the expectation to add.
    pub fn compile(&self) -> Result<(Tuple, ExpectSpec), String> {
        let (master, master_wild) = self.master.tuple("master")?;
        if master_wild {
            return Err("master.sport is required".into());
        }
        let (tuple, wild) = self.expect.tuple("expect")?;
        if tuple.family != master.family {
            return Err("expect and master are of different families".into());
        }
        let helper = HelperKind::from_name(&self.helper).ok_or_else(|| {
            format!(
                "helper: \"{}\" is not one of {}",
                self.helper,
                HelperKind::names(", ")
            )
        })?;
        Ok((
            master,
            ExpectSpec {
                tuple,
                mask: Mask {
                    src_addr: false,
                    src_port: wild,
                    src_prefix: 0,
                },
                helper,
                child_helper: None,
                permanent: false,
                timeout: None,
            },
        ))
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "request too large ({} bytes, at most {MAX_REQUEST})",
            line.len()
        ));
    }
    let r: Request = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
    // Validate now, so a bad filter is an error before anything runs.
    match &r {
        Request::CtList { filter } | Request::CtFlush { filter } | Request::CtEvents { filter } => {
            filter.compile()?;
        }
        Request::ExpectAdd(spec) => {
            spec.compile()?;
        }
        _ => {}
    }
    Ok(r)
}

/// One direction of a connection on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DirJson {
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Source port (TCP/UDP/...), ICMP id or GRE key.
    pub sport: u16,
    /// Destination port, ICMP `type << 8 | code` or GRE key.
    pub dport: u16,
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (IP length).
    pub bytes: u64,
}

/// A connection on the wire (`ct list --json`, events).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ConnJson {
    /// Worker (shard) that owns it.
    pub worker: usize,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// Protocol name.
    pub proto: String,
    /// Protocol number.
    pub protonum: u8,
    /// TCP state, if TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<String>,
    /// Seconds until it expires.
    pub timeout: u64,
    /// Original direction.
    pub orig: DirJson,
    /// Reply direction.
    pub reply: DirJson,
    /// A reply was seen.
    pub seen_reply: bool,
    /// Assured.
    pub assured: bool,
    /// Helper, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    /// In the XDP fast path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offloaded: bool,
}

fn ip(t: &Tuple, a: Addr) -> String {
    a.to_ip(t.family).to_string()
}

impl ConnJson {
    /// From the core's view of a connection owned by `worker`.
    pub fn from_info(worker: usize, c: &ConnInfo) -> ConnJson {
        let dir = |t: &Tuple, d: usize| DirJson {
            src: ip(t, t.src),
            dst: ip(t, t.dst),
            sport: t.src_port,
            dport: t.dst_port,
            packets: c.packets[d],
            bytes: c.bytes[d],
        };
        ConnJson {
            worker,
            family: match c.orig.family {
                Family::V4 => "ipv4".into(),
                Family::V6 => "ipv6".into(),
            },
            proto: proto_name(c.orig.proto).into(),
            protonum: c.orig.proto,
            tcp_state: c.tcp_state.map(str::to_string),
            timeout: c.expires_in.div_ceil(1_000_000_000),
            orig: dir(&c.orig, 0),
            reply: dir(&c.reply, 1),
            seen_reply: c.seen_reply,
            assured: c.assured,
            helper: c.helper.map(|h| h.name().to_string()),
            offloaded: c.offloaded,
        }
    }

    /// The `conntrack -L` line.
    pub fn line(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("{:<8} {} {} ", self.proto, self.protonum, self.timeout);
        if let Some(st) = &self.tcp_state {
            let _ = write!(s, "{st} ");
        }
        let icmp = self.protonum == ipproto::ICMP || self.protonum == ipproto::ICMPV6;
        let dir = |s: &mut String, d: &DirJson| {
            let _ = write!(s, "src={} dst={} ", d.src, d.dst);
            if icmp {
                let _ = write!(
                    s,
                    "type={} code={} id={} ",
                    d.dport >> 8,
                    d.dport & 0xff,
                    d.sport
                );
            } else if self.protonum == ipproto::GRE {
                let _ = write!(s, "srckey=0x{:x} dstkey=0x{:x} ", d.sport, d.dport);
            } else if matches!(
                self.protonum,
                ipproto::TCP | ipproto::UDP | ipproto::SCTP | ipproto::UDPLITE
            ) {
                let _ = write!(s, "sport={} dport={} ", d.sport, d.dport);
            }
            let _ = write!(s, "packets={} bytes={} ", d.packets, d.bytes);
        };
        dir(&mut s, &self.orig);
        if !self.seen_reply {
            s.push_str("[UNREPLIED] ");
        }
        dir(&mut s, &self.reply);
        if self.offloaded {
            // The kernel's mark for flowtable-offloaded entries.
            s.push_str("[OFFLOAD] ");
        }
        if self.assured {
            s.push_str("[ASSURED] ");
        }
        if let Some(h) = &self.helper {
            let _ = write!(s, "helper={h} ");
        }
        let _ = write!(s, "worker={}", self.worker);
        s
    }
}

/// An expectation on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ExpectJson {
    /// Worker holding it.
    pub worker: usize,
    /// Id within the worker.
    pub id: u32,
    /// Seconds left.
    pub timeout: u64,
    /// Protocol name.
    pub proto: String,
    /// Expected source (`any` when masked).
    pub src: String,
    /// Expected destination.
    pub dst: String,
    /// Expected source port (`None` = any).
    pub sport: Option<u16>,
    /// Expected destination port.
    pub dport: u16,
    /// Requesting helper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    /// Master connection, as its original tuple.
    pub master: String,
}

impl ExpectJson {
    /// From the core's view.
    pub fn from_info(worker: usize, e: &ExpectInfo) -> ExpectJson {
        let t = &e.tuple;
        let m = &e.master;
        ExpectJson {
            worker,
            id: e.id,
            timeout: e.expires_in.div_ceil(1_000_000_000),
            proto: proto_name(t.proto).into(),
            src: if e.mask.src_addr {
                "any".into()
            } else if e.mask.src_prefix > 0 {
                format!("{}/{}", ip(t, t.src), e.mask.src_prefix)
            } else {
                ip(t, t.src)
            },
            dst: ip(t, t.dst),
            sport: (!e.mask.src_port).then_some(t.src_port),
            dport: t.dst_port,
            helper: e.helper.map(|h| h.name().to_string()),
            master: format!(
                "{} {}:{} -> {}:{}",
                proto_name(m.proto),
                ip(m, m.src),
                m.src_port,
                ip(m, m.dst),
                m.dst_port
            ),
        }
    }

    /// The `conntrack -L expect` line.
    pub fn line(&self) -> String {
        format!(
            "{} {} proto={} src={} dst={} sport={} dport={} master=[{}] helper={} worker={}",
            self.id,
            self.timeout,
            self.proto,
            self.src,
            self.dst,
            self.sport
                .map_or_else(|| "any".to_string(), |p| p.to_string()),
            self.dport,
            self.master,
            self.helper.as_deref().unwrap_or("-"),
            self.worker
        )
    }
}

/// What a `ct events` line reports, by the kernel's event names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventName {
    /// The connection entered the table.
    New,
    /// Its TCP state, seen-reply or assured changed.
    Update,
    /// It left the table.
    Destroy,
}

impl From<conntrack::EventKind> for EventName {
    fn from(k: conntrack::EventKind) -> EventName {
        match k {
            conntrack::EventKind::New => EventName::New,
            conntrack::EventKind::Update => EventName::Update,
            conntrack::EventKind::Destroy => EventName::Destroy,
        }
    }
}

impl EventName {
    /// The name on the wire (`new`, `update`, `destroy`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::New => "new",
            EventName::Update => "update",
            EventName::Destroy => "destroy",
        }
    }
}

/// One worker's counters (`ct stats`): the core's (the kernel's
/// `conntrack -S` names), its expectations' and its dataplane's. Every key is
/// required when read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct WorkerStats {
    /// Worker (shard).
    pub worker: usize,
    /// Connections in its table.
    pub entries: usize,
    /// Its table's size.
    pub max_entries: u32,
    /// Lookups that found an entry.
    pub found: u64,
    /// Connections confirmed.
    pub new: u64,
    /// Packets marked invalid.
    pub invalid: u64,
    /// Confirmations that lost a race for their tuple.
    pub insert_failed: u64,
    /// New packets dropped, the table full.
    pub drop: u64,
    /// Entries evicted to make room.
    pub early_drop: u64,
    /// Lookups restarted (port reuse).
    pub search_restart: u64,
    /// Entries that timed out.
    pub expired: u64,
    /// Non-first fragments that followed their first fragment.
    pub frag_followed: u64,
    /// New connections refused by `max_per_source`.
    pub source_limit: u64,
    /// Expectations held.
    pub expect_count: usize,
    /// Connections created from an expectation.
    pub expect_new: u64,
    /// Expectations created.
    pub expect_create: u64,
    /// Expectations removed.
    pub expect_delete: u64,
    /// Expectation requests refused.
    pub expect_refused: u64,
    /// Expectations evicted (`max_expected`).
    pub expect_evicted: u64,
    /// Frames received, inside and outside.
    pub rx: [u64; 2],
    /// Frames forwarded, inside and outside.
    pub forwarded: [u64; 2],
    /// Frames dropped, inside and outside.
    pub dropped: [u64; 2],
    /// Frames that found the TX ring full.
    pub tx_full: u64,
    /// Frames handed to another worker.
    pub handoffs: u64,
    /// Frames handed over by another worker.
    pub handoffs_in: u64,
    /// Handoffs dropped (the other worker's queue full).
    pub handoff_dropped: u64,
    /// Expectation messages sent to other workers.
    pub expect_msgs_out: u64,
    /// Expectation messages received from other workers.
    pub expect_msgs_in: u64,
    /// Expectation messages dropped.
    pub expect_msgs_dropped: u64,
    /// Events dropped (a subscriber too slow).
    pub events_dropped: u64,
}

impl WorkerStats {
    /// The text line of `ct stats`: `worker=N`, then every other counter as
    /// `key=value` in key order (arrays as `[inside,outside]`).
    pub fn line(&self) -> String {
        use std::fmt::Write;
        let mut line = format!("worker={}", self.worker);
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(self) {
            let mut kv: Vec<_> = m.iter().filter(|(k, _)| *k != "worker").collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in kv {
                let _ = write!(line, " {k}={v}");
            }
        }
        line
    }
}

/// How a request that succeeded ends: its last line, `{"ok":true,...}`,
/// with what the verb reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// `ct list`, `expect list`: how many lines came before
    /// (`{"count":N,"ok":true}`).
    Count {
        /// Lines sent.
        count: u64,
    },
    /// `ct flush` (`{"ok":true,"removed":N}`).
    Removed {
        /// Connections removed.
        removed: usize,
    },
    /// `ct stats`: one `stats` line per worker came before
    /// (`{"ok":true,"workers":N}`).
    Workers {
        /// Workers.
        workers: usize,
    },
    /// `ct events`: events follow (`{"ok":true,"streaming":true}`); not the
    /// last line, the stream never ends on its own.
    Streaming,
    /// `ct events` after its client has gone (`{"ok":true}`).
    Ended,
    /// `expect add`, `expect del`: which expectation
    /// (`{"id":N,"ok":true,"worker":W}`).
    Expectation {
        /// Worker that holds (held) it.
        worker: usize,
        /// Its id on that worker.
        id: u32,
    },
    /// `reload` (`{"ok":true,"rules":N}`).
    Reloaded {
        /// Rules of the new policy.
        rules: usize,
    },
}

/// One line the daemon sends: a data line, or the last line (`ok`). The
/// wire form is [`Reply::to_line`]; [`parse_reply`] reads it back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireReply")]
pub enum Reply {
    /// `ct list`: a connection (`{"conn":{...}}`).
    Conn(ConnJson),
    /// `ct events`: an event (`{"conn":{...},"event":"new"}`).
    Event {
        /// What happened.
        event: EventName,
        /// The connection after it (before it, for destroy).
        conn: ConnJson,
    },
    /// `ct stats`: one worker (`{"stats":{...}}`).
    Stats(WorkerStats),
    /// `expect list`: an expectation (`{"expect":{...}}`).
    Expect(ExpectJson),
    /// The request succeeded.
    Done(Done),
    /// The request failed: why (`{"error":"...","ok":false}`).
    Error(String),
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match self {
            Reply::Conn(c) => m.serialize_entry("conn", c)?,
            Reply::Event { event, conn } => {
                m.serialize_entry("conn", conn)?;
                m.serialize_entry("event", event)?;
            }
            Reply::Stats(st) => m.serialize_entry("stats", st)?,
            Reply::Expect(e) => m.serialize_entry("expect", e)?,
            Reply::Done(d) => match *d {
                Done::Count { count } => {
                    m.serialize_entry("count", &count)?;
                    m.serialize_entry("ok", &true)?;
                }
                Done::Removed { removed } => {
                    m.serialize_entry("ok", &true)?;
                    m.serialize_entry("removed", &removed)?;
                }
                Done::Workers { workers } => {
                    m.serialize_entry("ok", &true)?;
                    m.serialize_entry("workers", &workers)?;
                }
                Done::Streaming => {
                    m.serialize_entry("ok", &true)?;
                    m.serialize_entry("streaming", &true)?;
                }
                Done::Ended => m.serialize_entry("ok", &true)?,
                Done::Expectation { worker, id } => {
                    m.serialize_entry("id", &id)?;
                    m.serialize_entry("ok", &true)?;
                    m.serialize_entry("worker", &worker)?;
                }
                Done::Reloaded { rules } => {
                    m.serialize_entry("ok", &true)?;
                    m.serialize_entry("rules", &rules)?;
                }
            },
            Reply::Error(e) => {
                m.serialize_entry("error", e)?;
                m.serialize_entry("ok", &false)?;
            }
        }
        m.end()
    }
}

/// Every key a reply line may have, as read; [`Reply`] is made from it.
#[derive(Deserialize)]
struct WireReply {
    ok: Option<bool>,
    error: Option<String>,
    event: Option<EventName>,
    conn: Option<ConnJson>,
    stats: Option<WorkerStats>,
    expect: Option<ExpectJson>,
    count: Option<u64>,
    removed: Option<usize>,
    workers: Option<usize>,
    streaming: Option<bool>,
    worker: Option<usize>,
    id: Option<u32>,
    rules: Option<usize>,
}

impl TryFrom<WireReply> for Reply {
    type Error = String;

    fn try_from(w: WireReply) -> Result<Reply, String> {
        match w.ok {
            Some(false) => w
                .error
                .map(Reply::Error)
                .ok_or_else(|| "\"ok\" is false but there is no \"error\"".to_string()),
            Some(true) => {
                let mut done = Vec::new();
                if let Some(count) = w.count {
                    done.push(Done::Count { count });
                }
                if let Some(removed) = w.removed {
                    done.push(Done::Removed { removed });
                }
                if let Some(workers) = w.workers {
                    done.push(Done::Workers { workers });
                }
                match w.streaming {
                    Some(true) => done.push(Done::Streaming),
                    Some(false) => return Err("\"streaming\" is false".into()),
                    None => {}
                }
                match (w.worker, w.id) {
                    (Some(worker), Some(id)) => done.push(Done::Expectation { worker, id }),
                    (None, None) => {}
                    _ => return Err("\"worker\" and \"id\" come together".into()),
                }
                if let Some(rules) = w.rules {
                    done.push(Done::Reloaded { rules });
                }
                match done[..] {
                    [] => Ok(Reply::Done(Done::Ended)),
                    [d] => Ok(Reply::Done(d)),
                    _ => {
                        Err("more than one of count, removed, workers, streaming, id, rules".into())
                    }
                }
            }
            None => match (w.conn, w.event, w.stats, w.expect) {
                (Some(conn), Some(event), None, None) => Ok(Reply::Event { event, conn }),
                (Some(c), None, None, None) => Ok(Reply::Conn(c)),
                (None, None, Some(s), None) => Ok(Reply::Stats(s)),
                (None, None, None, Some(e)) => Ok(Reply::Expect(e)),
                (None, None, None, None) => Err("none of ok, conn, stats, expect".into()),
                (None, Some(_), None, None) => Err("an event without its conn".into()),
                _ => Err("more than one of conn, stats, expect".into()),
            },
        }
    }
}

impl Reply {
    /// The line on the wire (without its newline): compact JSON, every
    /// object's keys in sorted order (as the daemon has always sent them:
    /// its replies went through `serde_json::Value`).
    pub fn to_line(&self) -> String {
        match serde_json::to_value(self) {
            Ok(v) => v.to_string(),
            // Not reached: every part of a reply is a map with string keys.
            Err(e) => serde_json::json!({"error": format!("encoding the reply: {e}"), "ok": false})
                .to_string(),
        }
    }
}

/// Parses one reply line (without its newline). The error quotes the line
/// (its first [`QUOTED`] characters).
pub fn parse_reply(line: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(line).map_err(|e| {
        let text = String::from_utf8_lossy(line);
        let mut quoted: String = text.chars().take(QUOTED).collect();
        if quoted.len() < text.len() {
            quoted.push_str("...");
        }
        format!("bad reply from the daemon {quoted:?}: {e}")
    })
}

/// Characters of a bad reply line quoted in its error.
pub const QUOTED: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conn(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, proto: u8) -> ConnInfo {
        let orig = Tuple {
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            src_port: sp,
            dst_port: dp,
            proto,
            family: Family::V4,
        };
        ConnInfo {
            orig,
            reply: orig.invert(),
            tcp_state: (proto == ipproto::TCP).then_some("ESTABLISHED"),
            expires_in: 431_999_500_000_000,
            seen_reply: true,
            assured: true,
            helper: None,
            packets: [3, 2],
            bytes: [180, 120],
            offloaded: false,
        }
    }

    #[test]
    fn requests_parse_and_validate() {
        assert_eq!(
            parse_request(br#"{"cmd":"ct_list"}"#),
            Ok(Request::CtList {
                filter: FilterSpec::default()
            })
        );
        let r = parse_request(
            br#"{"cmd":"ct_flush","filter":{"src":"10.0.0.0/8","dport":80,"proto":"tcp","state":"established"}}"#,
        )
        .expect("valid");
        let Request::CtFlush { filter } = r else {
            panic!("not a flush")
        };
        assert_eq!(filter.dport, Some(80));
        assert_eq!(
            parse_request(br#"{"cmd":"ct_stats"}"#),
            Ok(Request::CtStats)
        );
        assert_eq!(parse_request(br#"{"cmd":"reload"}"#), Ok(Request::Reload));
        assert_eq!(
            parse_request(br#"{"cmd":"expect_del","id":7}"#),
            Ok(Request::ExpectDel {
                id: 7,
                worker: None
            })
        );
        for (bad, want) in [
            (&br#"{"cmd":"nope"}"#[..], "unknown variant"),
            (br#"not json"#, "bad request"),
            (
                br#"{"cmd":"ct_list","filter":{"src":"10.0.0.0/33"}}"#,
                "prefix length",
            ),
            (
                br#"{"cmd":"ct_list","filter":{"colour":"red"}}"#,
                "unknown field",
            ),
            (
                br#"{"cmd":"ct_list","filter":{"state":"sleepy"}}"#,
                "not a TCP state",
            ),
            (
                br#"{"cmd":"ct_list","filter":{"proto":"tcpx"}}"#,
                "protocol",
            ),
            (
                br#"{"cmd":"ct_list","filter":{"dport":70000}}"#,
                "bad request",
            ),
            (br#"{"cmd":"expect_del"}"#, "missing field"),
        ] {
            let e = parse_request(bad).expect_err("must be refused");
            assert!(e.contains(want), "{e} does not say {want}");
        }
        let big = vec![b' '; MAX_REQUEST + 1];
        assert!(parse_request(&big).unwrap_err().contains("too large"));
    }

    #[test]
    fn expect_add_compiles() {
        let line = br#"{"cmd":"expect_add","master":{"proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":21},"expect":{"proto":"tcp","src":"10.0.0.2","dst":"10.0.0.1","dport":50000},"helper":"ftp"}"#;
        let Ok(Request::ExpectAdd(spec)) = parse_request(line) else {
            panic!("not parsed")
        };
        let (master, e) = spec.compile().expect("valid");
        assert_eq!(master.dst_port, 21);
        assert!(e.mask.src_port && !e.mask.src_addr);
        assert_eq!(e.tuple.dst_port, 50000);
        assert_eq!(e.helper, HelperKind::Ftp);
        let mut bad = spec.clone();
        bad.expect.dst = "fd00::1".into();
        assert!(bad.compile().unwrap_err().contains("different families"));
        let mut bad = spec.clone();
        bad.helper = "telnet".into();
        assert!(bad.compile().unwrap_err().contains("helper"));
        let mut bad = spec.clone();
        bad.master.sport = None;
        assert!(bad.compile().unwrap_err().contains("master.sport"));
        let mut bad = spec;
        bad.expect.proto = "icmp".into();
        assert!(bad.compile().unwrap_err().contains("only tcp"));
    }

    #[test]
    fn filters_match_the_original_tuple() {
        let c = conn([10, 0, 0, 1], 40000, [192, 0, 2, 1], 80, ipproto::TCP);
        let f = |j: &str| {
            serde_json::from_str::<FilterSpec>(j)
                .expect("json")
                .compile()
                .expect("valid")
        };
        assert!(f("{}").matches(&c));
        assert!(f(r#"{"src":"10.0.0.0/8"}"#).matches(&c));
        assert!(!f(r#"{"src":"192.0.2.1"}"#).matches(&c));
        assert!(f(r#"{"dst":"192.0.2.1","dport":80,"sport":40000}"#).matches(&c));
        assert!(!f(r#"{"dport":443}"#).matches(&c));
        assert!(f(r#"{"proto":"TCP","state":"established"}"#).matches(&c));
        assert!(!f(r#"{"state":"time_wait"}"#).matches(&c));
        assert!(f(r#"{"state":"assured"}"#).matches(&c));
        assert!(!f(r#"{"state":"unreplied"}"#).matches(&c));
        assert!(!f(r#"{"proto":"udp"}"#).matches(&c));
        assert!(!f(r#"{"src":"fd00::/8"}"#).matches(&c));
        // ICMP has no ports: a port filter never matches it.
        let i = conn([10, 0, 0, 1], 7, [192, 0, 2, 1], 8 << 8, ipproto::ICMP);
        assert!(!f(r#"{"sport":7}"#).matches(&i));
    }

    #[test]
    fn conntrack_style_lines() {
        let c = ConnJson::from_info(
            1,
            &conn([10, 0, 0, 1], 40000, [192, 0, 2, 1], 80, ipproto::TCP),
        );
        assert_eq!(
            c.line(),
            "tcp      6 432000 ESTABLISHED src=10.0.0.1 dst=192.0.2.1 sport=40000 dport=80 packets=3 bytes=180 \
             src=192.0.2.1 dst=10.0.0.1 sport=80 dport=40000 packets=2 bytes=120 [ASSURED] worker=1"
        );
        let mut i = conn([10, 0, 0, 1], 7, [192, 0, 2, 1], 8 << 8, ipproto::ICMP);
        i.seen_reply = false;
        i.assured = false;
        i.expires_in = 29_000_000_000;
        let line = ConnJson::from_info(0, &i).line();
        assert!(line.starts_with("icmp     1 29 src=10.0.0.1 dst=192.0.2.1 type=8 code=0 id=7 packets=3 bytes=180 [UNREPLIED] src=192.0.2.1 dst=10.0.0.1 type=0 code=0 id=7"), "{line}");
        // Round trip through JSON.
        let j = serde_json::to_string(&c).expect("serializes");
        assert_eq!(serde_json::from_str::<ConnJson>(&j).expect("parses"), c);
    }

    /// Lines a running daemon sent before replies were typed (they went
    /// through `serde_json::json!`): the typed replies write them byte for
    /// byte, and read them back.
    const WIRE: &[&str] = &[
        r#"{"conn":{"assured":true,"family":"ipv4","orig":{"bytes":1191,"dport":5201,"dst":"10.77.0.2","packets":14,"sport":45622,"src":"10.77.0.1"},"proto":"tcp","protonum":6,"reply":{"bytes":1015,"dport":45622,"dst":"10.77.0.1","packets":13,"sport":5201,"src":"10.77.0.2"},"seen_reply":true,"tcp_state":"TIME_WAIT","timeout":115,"worker":0}}"#,
        r#"{"conn":{"assured":false,"family":"ipv4","orig":{"bytes":252,"dport":2048,"dst":"10.77.0.2","packets":3,"sport":19795,"src":"10.77.0.1"},"proto":"icmp","protonum":1,"reply":{"bytes":252,"dport":0,"dst":"10.77.0.1","packets":3,"sport":19795,"src":"10.77.0.2"},"seen_reply":true,"timeout":0,"worker":0},"event":"destroy"}"#,
        r#"{"stats":{"drop":0,"dropped":[0,0],"early_drop":0,"entries":2,"events_dropped":0,"expect_count":0,"expect_create":0,"expect_delete":0,"expect_evicted":0,"expect_msgs_dropped":0,"expect_msgs_in":0,"expect_msgs_out":0,"expect_new":0,"expect_refused":0,"expired":0,"forwarded":[13,11],"found":8,"frag_followed":0,"handoff_dropped":0,"handoffs":0,"handoffs_in":0,"insert_failed":0,"invalid":0,"max_entries":262144,"new":2,"rx":[13,11],"search_restart":0,"source_limit":0,"tx_full":0,"worker":0}}"#,
        r#"{"expect":{"dport":6000,"dst":"10.77.0.1","helper":"ftp","id":1,"master":"tcp 10.77.0.1:45622 -> 10.77.0.2:5201","proto":"tcp","sport":null,"src":"10.77.0.2","timeout":300,"worker":0}}"#,
        r#"{"count":4,"ok":true}"#,
        r#"{"ok":true,"removed":1}"#,
        r#"{"ok":true,"workers":1}"#,
        r#"{"ok":true,"streaming":true}"#,
        r#"{"ok":true}"#,
        r#"{"id":1,"ok":true,"worker":0}"#,
        r#"{"ok":true,"rules":5}"#,
        r#"{"error":"no worker 7","ok":false}"#,
        r#"{"error":"state: \"sleepy\" is not a TCP state (NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2) nor unreplied, replied or assured","ok":false}"#,
    ];

    fn wire_replies() -> Vec<Reply> {
        let dir = |src: &str, dst: &str, sport, dport, packets, bytes| DirJson {
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
            packets,
            bytes,
        };
        let tcp = ConnJson {
            worker: 0,
            family: "ipv4".into(),
            proto: "tcp".into(),
            protonum: 6,
            tcp_state: Some("TIME_WAIT".into()),
            timeout: 115,
            orig: dir("10.77.0.1", "10.77.0.2", 45622, 5201, 14, 1191),
            reply: dir("10.77.0.2", "10.77.0.1", 5201, 45622, 13, 1015),
            seen_reply: true,
            assured: true,
            helper: None,
            offloaded: false,
        };
        let icmp = ConnJson {
            worker: 0,
            family: "ipv4".into(),
            proto: "icmp".into(),
            protonum: 1,
            tcp_state: None,
            timeout: 0,
            orig: dir("10.77.0.1", "10.77.0.2", 19795, 2048, 3, 252),
            reply: dir("10.77.0.2", "10.77.0.1", 19795, 0, 3, 252),
            seen_reply: true,
            assured: false,
            helper: None,
            offloaded: false,
        };
        let stats = WorkerStats {
            entries: 2,
            max_entries: 262_144,
            found: 8,
            new: 2,
            rx: [13, 11],
            forwarded: [13, 11],
            ..WorkerStats::default()
        };
        let expect = ExpectJson {
            worker: 0,
            id: 1,
            timeout: 300,
            proto: "tcp".into(),
            src: "10.77.0.2".into(),
            dst: "10.77.0.1".into(),
            sport: None,
            dport: 6000,
            helper: Some("ftp".into()),
            master: "tcp 10.77.0.1:45622 -> 10.77.0.2:5201".into(),
        };
        vec![
            Reply::Conn(tcp),
            Reply::Event {
                event: EventName::Destroy,
                conn: icmp,
            },
            Reply::Stats(stats),
            Reply::Expect(expect),
            Reply::Done(Done::Count { count: 4 }),
            Reply::Done(Done::Removed { removed: 1 }),
            Reply::Done(Done::Workers { workers: 1 }),
            Reply::Done(Done::Streaming),
            Reply::Done(Done::Ended),
            Reply::Done(Done::Expectation { worker: 0, id: 1 }),
            Reply::Done(Done::Reloaded { rules: 5 }),
            Reply::Error("no worker 7".into()),
            Reply::Error(
                FilterSpec {
                    state: Some("sleepy".into()),
                    ..FilterSpec::default()
                }
                .compile()
                .expect_err("not a state"),
            ),
        ]
    }

    #[test]
    fn replies_keep_the_wire_text() {
        let replies = wire_replies();
        assert_eq!(replies.len(), WIRE.len());
        for (r, line) in replies.iter().zip(WIRE) {
            assert_eq!(r.to_line(), *line);
            assert_eq!(parse_reply(line.as_bytes()).as_ref(), Ok(r), "{line}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut all = wire_replies();
        let mut c = ConnJson::from_info(
            3,
            &conn([10, 0, 0, 1], 40000, [192, 0, 2, 1], 21, ipproto::TCP),
        );
        c.helper = Some("ftp".into());
        c.offloaded = true;
        all.push(Reply::Conn(c.clone()));
        for event in [EventName::New, EventName::Update] {
            all.push(Reply::Event {
                event,
                conn: c.clone(),
            });
        }
        all.push(Reply::Done(Done::Count { count: u64::MAX }));
        all.push(Reply::Error("a \"quoted\"\nline\u{1F600}".into()));
        for r in &all {
            // The wire form, and serde's own (nested keys in field order).
            let line = r.to_line();
            assert_eq!(parse_reply(line.as_bytes()).as_ref(), Ok(r), "{line}");
            let direct = serde_json::to_string(r).expect("serializes");
            assert_eq!(&serde_json::from_str::<Reply>(&direct).expect("parses"), r);
            assert!(!line.contains('\n'), "{line}");
        }
        // The optional keys stay away when empty.
        let plain = Reply::Conn(ConnJson::from_info(
            0,
            &conn([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, ipproto::UDP),
        ))
        .to_line();
        for key in ["tcp_state", "helper", "offloaded"] {
            assert!(!plain.contains(key), "{plain}");
        }
        assert!(Reply::Conn(c)
            .to_line()
            .contains(r#""helper":"ftp","offloaded":true"#));
    }

    #[test]
    fn event_names_are_the_cores() {
        for k in [
            conntrack::EventKind::New,
            conntrack::EventKind::Update,
            conntrack::EventKind::Destroy,
        ] {
            let e = EventName::from(k);
            assert_eq!(e.as_str(), k.as_str());
            assert_eq!(
                serde_json::to_string(&e).expect("serializes"),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    #[test]
    fn stats_text_line() {
        let Ok(Reply::Stats(s)) = parse_reply(WIRE[2].as_bytes()) else {
            panic!("not stats")
        };
        assert_eq!(
            s.line(),
            "worker=0 drop=0 dropped=[0,0] early_drop=0 entries=2 events_dropped=0 expect_count=0 \
             expect_create=0 expect_delete=0 expect_evicted=0 expect_msgs_dropped=0 expect_msgs_in=0 \
             expect_msgs_out=0 expect_new=0 expect_refused=0 expired=0 forwarded=[13,11] found=8 \
             frag_followed=0 handoff_dropped=0 handoffs=0 handoffs_in=0 insert_failed=0 invalid=0 \
             max_entries=262144 new=2 rx=[13,11] search_restart=0 source_limit=0 tx_full=0"
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        for (bad, want) in [
            (&b""[..], "EOF"),
            (b"not json", "expected"),
            (b"[1,2]", "bad reply"),
            (b"{}", "none of ok, conn, stats, expect"),
            (br#"{"colour":"red"}"#, "none of"),
            (br#"{"ok":"yes"}"#, "invalid type"),
            (br#"{"ok":false}"#, "no \"error\""),
            (br#"{"ok":false,"error":7}"#, "invalid type"),
            (br#"{"ok":true,"count":-1}"#, "invalid value"),
            (br#"{"ok":true,"count":1,"rules":2}"#, "more than one"),
            (br#"{"ok":true,"worker":1}"#, "come together"),
            (br#"{"ok":true,"streaming":false}"#, "streaming"),
            (br#"{"event":"new"}"#, "without its conn"),
            (br#"{"event":"born","conn":{}}"#, "unknown variant"),
            (br#"{"conn":{"worker":0}}"#, "missing field"),
            (br#"{"stats":{"worker":0}}"#, "missing field"),
            (br#"{"expect":{"worker":0,"id":1}}"#, "missing field"),
            (
                br#"{"stats":{"worker":0},"expect":{"worker":0}}"#,
                "missing field",
            ),
            (
                br#"{"ok":true,"id":5000000000,"worker":0}"#,
                "invalid value",
            ),
        ] {
            let e = parse_reply(bad).expect_err("must be refused");
            assert!(e.contains(want), "{e} does not say {want}");
            assert!(e.starts_with("bad reply from the daemon"), "{e}");
        }
        // Two data keys at once.
        let two = WIRE[0].replacen('{', r#"{"expect":{"dport":1,"dst":"a","id":1,"master":"m","proto":"tcp","sport":null,"src":"b","timeout":1,"worker":0},"#, 1);
        assert!(parse_reply(two.as_bytes())
            .unwrap_err()
            .contains("more than one of conn, stats, expect"));
        // A long line is quoted in part.
        let long = vec![b'x'; 10_000];
        assert!(parse_reply(&long).unwrap_err().len() < QUOTED + 200);
    }

    proptest! {
        /// Arbitrary bytes: an error or a request, never a panic; a request
        /// that parses survives a round trip through JSON.
        #[test]
        fn arbitrary_requests(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = parse_request(&bytes) {
                let j = serde_json::to_vec(&r).expect("serializes");
                prop_assert_eq!(parse_request(&j), Ok(r));
            }
        }

        /// Arbitrary bytes as a reply: an error or a reply, never a panic; a
        /// reply that parses survives a round trip through its wire form.
        #[test]
        fn arbitrary_replies(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = parse_reply(&bytes) {
                prop_assert_eq!(parse_reply(r.to_line().as_bytes()), Ok(r));
            }
        }

        /// Replies made of the wire's keys with arbitrary values: never a
        /// panic, and a round trip when they parse.
        #[test]
        fn arbitrary_reply_objects(
            keys in proptest::collection::vec(0usize..13, 0..4),
            values in proptest::collection::vec(0usize..6, 4),
        ) {
            const KEYS: [&str; 13] = ["ok", "error", "event", "conn", "stats", "expect", "count", "removed", "workers", "streaming", "worker", "id", "rules"];
            const VALUES: [&str; 6] = ["true", "false", "1", "\"new\"", "null", "{}"];
            let mut m = serde_json::Map::new();
            for (k, v) in keys.iter().zip(&values) {
                let v: serde_json::Value = serde_json::from_str(VALUES[*v]).expect("json");
                m.insert(KEYS[*k].to_string(), v);
            }
            let line = serde_json::Value::Object(m).to_string();
            if let Ok(r) = parse_reply(line.as_bytes()) {
                prop_assert_eq!(parse_reply(r.to_line().as_bytes()), Ok(r));
            }
        }

        /// Well-formed filters with arbitrary field values: never a panic.
        #[test]
        fn arbitrary_filters(src in "[0-9a-f:./]{0,24}", state in "[A-Za-z_]{0,12}", proto in "[a-z0-9]{0,8}") {
            let f = FilterSpec { src: Some(src), dst: None, sport: None, dport: Some(1), proto: Some(proto), state: Some(state) };
            if let Ok(f) = f.compile() {
                let _ = f.matches(&conn([1, 2, 3, 4], 1, [5, 6, 7, 8], 1, ipproto::UDP));
            }
        }
    }
}
