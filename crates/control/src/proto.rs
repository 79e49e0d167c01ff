//! The control socket's protocol: one JSON object per line each way. A
//! client sends one request; the daemon answers with zero or more data lines
//! and a final `{"ok":true,...}` or `{"ok":false,"error":"..."}` line (a
//! `ct_events` stream never ends on its own). Everything here is pure: the
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
                HelperKind::ALL
                    .iter()
                    .map(|h| h.name())
                    .collect::<Vec<_>>()
                    .join(", ")
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
