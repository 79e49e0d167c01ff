//! The configuration: one TOML file (reference: the README and deploy/README.md). Parsing checks
//! syntax, unknown keys and meaning; every error names the line and column
//! and what is wrong, and all of them are reported at once.

use std::net::IpAddr;
use std::ops::Range;

use conntrack::policy::{Action, Policy, PortRange, Prefix, ProtoMatch, Rule, Side, StateSet};
use conntrack::proto::tcp::TcpConfig;
use conntrack::timeouts::{TcpTimeouts, Timeouts};
use conntrack::tuple::{ipproto, Addr};
use conntrack::{CtState, HelperKind};
use serde::Deserialize;
use toml::Spanned;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {msg}")]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub msg: String,
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// File name for messages.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{e}", self.file)?;
        }
        Ok(())
    }
}

/// How many queues to use per NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queues {
    /// Every combined queue the NIC has.
    All,
    /// This many.
    Count(u32),
}

/// The `[interfaces]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interfaces {
    /// The protected side's NIC.
    pub inside: String,
    /// The other NIC.
    pub outside: String,
    /// Queues per NIC.
    pub queues: Queues,
    /// Cores for the workers, in queue order.
    pub cores: Vec<usize>,
    /// `xdp_mode`: how the AF_XDP sockets move frames.
    pub xdp_mode: XdpMode,
    /// `offload`: the XDP program forwards established flows itself.
    pub offload: bool,
    /// `busy_poll`: workers spin on their rings instead of sleeping in
    /// `poll()` (lower latency at low rates; each worker's core at 100 %).
    pub busy_poll: bool,
}

/// `[interfaces] xdp_mode`: how the AF_XDP sockets move frames between the
/// NIC and the UMEM. The dataplane takes this type as it is
/// (`dataplane::xsk::XdpMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Zero-copy where the driver offers it, else copy (the default).
    #[default]
    Auto,
    /// Always copy (works on every driver with XDP).
    Copy,
    /// Zero-copy or refuse to start (the driver must support it).
    ZeroCopy,
}

impl XdpMode {
    /// Every mode.
    pub const ALL: [XdpMode; 3] = [XdpMode::Auto, XdpMode::Copy, XdpMode::ZeroCopy];

    /// The config file's name for it (`auto`, `copy`, `zerocopy`).
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Copy => "copy",
            XdpMode::ZeroCopy => "zerocopy",
        }
    }

    /// The mode of a config file name.
    pub fn from_name(name: &str) -> Option<XdpMode> {
        XdpMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Conntrack settings.
    pub conntrack: conntrack::Config,
    /// The policy.
    pub policy: Policy,
    /// What happens to non-IP frames (ARP...): accept or drop.
    pub non_ip: Action,
    /// `[interfaces]`, if present (needed by `tollgate run`).
    pub interfaces: Option<Interfaces>,
    /// `[control] socket`: the control socket's path.
    pub control_socket: std::path::PathBuf,
    /// `[metrics] listen`: where `/metrics` is served (none: not served).
    pub metrics: Option<std::net::SocketAddr>,
    /// `[control] state_file`: where the connections are saved on a clean
    /// stop and read back on start (none: not kept across restarts).
    pub state_file: Option<std::path::PathBuf>,
}

/// Where the control socket is when the config does not say.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tollgate/control.sock";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    interfaces: Option<RawInterfaces>,
    conntrack: Option<RawConntrack>,
    l2: Option<RawL2>,
    policy: Option<RawPolicy>,
    control: Option<RawControl>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterfaces {
    inside: Spanned<String>,
    outside: Spanned<String>,
    queues: Option<Spanned<OneOrWord>>,
    cores: Option<Spanned<Vec<i64>>>,
    xdp_mode: Option<Spanned<String>>,
    offload: Option<bool>,
    busy_poll: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrWord {
    Count(i64),
    Word(String),
}

macro_rules! conntrack_keys {
    ($($key:ident: $ty:ty,)*) => {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawConntrack {
            $($key: Option<Spanned<$ty>>,)*
        }
    };
}

conntrack_keys! {
    max_entries: i64,
    tcp_loose: bool,
    tcp_be_liberal: bool,
    tcp_ignore_invalid_rst: bool,
    tcp_max_retrans: i64,
    checksum: bool,
    tcp_timeout_syn_sent: i64,
    tcp_timeout_syn_recv: i64,
    tcp_timeout_established: i64,
    tcp_timeout_fin_wait: i64,
    tcp_timeout_close_wait: i64,
    tcp_timeout_last_ack: i64,
    tcp_timeout_time_wait: i64,
    tcp_timeout_close: i64,
    tcp_timeout_max_retrans: i64,
    tcp_timeout_unacknowledged: i64,
    udp_timeout: i64,
    udp_timeout_stream: i64,
    icmp_timeout: i64,
    icmpv6_timeout: i64,
    gre_timeout: i64,
    gre_timeout_stream: i64,
    generic_timeout: i64,
    expect_max: i64,
    helper_slots: i64,
    frag_slots: i64,
    ftp_loose: bool,
    max_per_source: i64,
    auto_helpers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawL2 {
    non_ip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn items(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum PortItem {
    Num(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Option<Spanned<String>>,
    state: Option<Spanned<OneOrMany<String>>>,
    proto: Option<Spanned<PortItem>>,
    src: Option<Spanned<OneOrMany<String>>>,
    dst: Option<Spanned<OneOrMany<String>>>,
    sport: Option<Spanned<OneOrMany<PortItem>>>,
    dport: Option<Spanned<OneOrMany<PortItem>>>,
    helper: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

/// Turns byte offsets into line/column for messages.
struct Lines<'a> {
    text: &'a str,
}

impl Lines<'_> {
    fn at(&self, span: Range<usize>, msg: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let col = start - before.rfind('\n').map_or(0, |p| p + 1) + 1;
        ConfigError {
            line,
            col,
            msg: msg.into(),
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError {
            line: 0,
            col: 0,
            msg: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text).map_err(|errors| ConfigErrors { file, errors })
}

fn secs(
    l: &Lines<'_>,
    errs: &mut Vec<ConfigError>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: u32,
) -> u32 {
    match v {
        None => default,
        Some(s) => match u32::try_from(*s.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                errs.push(l.at(
                    s.span(),
                    format!(
                        "{key}: {} is not a timeout in seconds (1 to 4294967295)",
                        s.get_ref()
                    ),
                ));
                default
            }
        },
    }
}

fn count(
    l: &Lines<'_>,
    errs: &mut Vec<ConfigError>,
    v: &Option<Spanned<i64>>,
    key: &str,
    lo: i64,
    hi: i64,
    default: u32,
) -> u32 {
    match v {
        None => default,
        Some(s) => {
            let n = *s.get_ref();
            if (lo..=hi).contains(&n) {
                u32::try_from(n).unwrap_or(default)
            } else {
                errs.push(l.at(
                    s.span(),
                    format!("{key}: {n} is out of range ({lo} to {hi})"),
                ));
                default
            }
        }
    }
}

fn flag(v: &Option<Spanned<bool>>, default: bool) -> bool {
    v.as_ref().map_or(default, |s| *s.get_ref())
}

fn parse_conntrack(
    l: &Lines<'_>,
    errs: &mut Vec<ConfigError>,
    c: &RawConntrack,
) -> conntrack::Config {
    let dt = TcpTimeouts::default();
    let d = Timeouts::default();
    let dc = conntrack::Config::default();
    let dtcp = TcpConfig::default();
    let max_retrans = count(
        l,
        errs,
        &c.tcp_max_retrans,
        "tcp_max_retrans",
        0,
        255,
        u32::from(dtcp.max_retrans),
    );
    conntrack::Config {
        max_entries: count(
            l,
            errs,
            &c.max_entries,
            "max_entries",
            1,
            // 64 Mi connections take ~12 GB; beyond that is a typo, not a plan.
            1 << 26,
            dc.max_entries,
        ),
        tcp: TcpConfig {
            loose: flag(&c.tcp_loose, dtcp.loose),
            be_liberal: flag(&c.tcp_be_liberal, dtcp.be_liberal),
            ignore_invalid_rst: flag(&c.tcp_ignore_invalid_rst, dtcp.ignore_invalid_rst),
            max_retrans: u8::try_from(max_retrans).unwrap_or(dtcp.max_retrans),
            timeouts: TcpTimeouts {
                syn_sent: secs(
                    l,
                    errs,
                    &c.tcp_timeout_syn_sent,
                    "tcp_timeout_syn_sent",
                    dt.syn_sent,
                ),
                syn_recv: secs(
                    l,
                    errs,
                    &c.tcp_timeout_syn_recv,
                    "tcp_timeout_syn_recv",
                    dt.syn_recv,
                ),
                established: secs(
                    l,
                    errs,
                    &c.tcp_timeout_established,
                    "tcp_timeout_established",
                    dt.established,
                ),
                fin_wait: secs(
                    l,
                    errs,
                    &c.tcp_timeout_fin_wait,
                    "tcp_timeout_fin_wait",
                    dt.fin_wait,
                ),
                close_wait: secs(
                    l,
                    errs,
                    &c.tcp_timeout_close_wait,
                    "tcp_timeout_close_wait",
                    dt.close_wait,
                ),
                last_ack: secs(
                    l,
                    errs,
                    &c.tcp_timeout_last_ack,
                    "tcp_timeout_last_ack",
                    dt.last_ack,
                ),
                time_wait: secs(
                    l,
                    errs,
                    &c.tcp_timeout_time_wait,
                    "tcp_timeout_time_wait",
                    dt.time_wait,
                ),
                close: secs(l, errs, &c.tcp_timeout_close, "tcp_timeout_close", dt.close),
                syn_sent2: dt.syn_sent2,
                retrans: secs(
                    l,
                    errs,
                    &c.tcp_timeout_max_retrans,
                    "tcp_timeout_max_retrans",
                    dt.retrans,
                ),
                unack: secs(
                    l,
                    errs,
                    &c.tcp_timeout_unacknowledged,
                    "tcp_timeout_unacknowledged",
                    dt.unack,
                ),
            },
        },
        timeouts: Timeouts {
            udp: secs(l, errs, &c.udp_timeout, "udp_timeout", d.udp),
            udp_stream: secs(
                l,
                errs,
                &c.udp_timeout_stream,
                "udp_timeout_stream",
                d.udp_stream,
            ),
            icmp: secs(l, errs, &c.icmp_timeout, "icmp_timeout", d.icmp),
            icmpv6: secs(l, errs, &c.icmpv6_timeout, "icmpv6_timeout", d.icmpv6),
            gre: secs(l, errs, &c.gre_timeout, "gre_timeout", d.gre),
            gre_stream: secs(
                l,
                errs,
                &c.gre_timeout_stream,
                "gre_timeout_stream",
                d.gre_stream,
            ),
            generic: secs(l, errs, &c.generic_timeout, "generic_timeout", d.generic),
        },
        checksum: flag(&c.checksum, dc.checksum),
        expect_max: count(
            l,
            errs,
            &c.expect_max,
            "expect_max",
            1,
            1 << 24,
            dc.expect_max,
        ),
        helper_slots: count(
            l,
            errs,
            &c.helper_slots,
            "helper_slots",
            0,
            1 << 22,
            dc.helper_slots,
        ),
        frag_slots: count(
            l,
            errs,
            &c.frag_slots,
            "frag_slots",
            1,
            1 << 24,
            dc.frag_slots,
        ),
        ftp_loose: flag(&c.ftp_loose, dc.ftp_loose),
        auto_helpers: flag(&c.auto_helpers, dc.auto_helpers),
        max_per_source: count(
            l,
            errs,
            &c.max_per_source,
            "max_per_source",
            0,
            1 << 30,
            dc.max_per_source,
        ),
        ..dc
    }
}

fn action(
    l: &Lines<'_>,
    errs: &mut Vec<ConfigError>,
    s: &Spanned<String>,
    what: &str,
    allow_notrack: bool,
) -> Action {
    match s.get_ref().as_str() {
        "accept" => Action::Accept,
        "drop" => Action::Drop,
        "notrack" if allow_notrack => Action::Notrack,
        other => {
            let allowed = if allow_notrack {
                "accept, drop or notrack"
            } else {
                "accept or drop"
            };
            errs.push(l.at(s.span(), format!("{what}: \"{other}\" is not {allowed}")));
            Action::Drop
        }
    }
}

fn port_range(item: &PortItem) -> Result<PortRange, String> {
    let port = |n: i64| u16::try_from(n).map_err(|_| format!("{n} is not a port (0-65535)"));
    match item {
        PortItem::Num(n) => {
            let p = port(*n)?;
            Ok(PortRange { lo: p, hi: p })
        }
        PortItem::Text(t) => {
            let bad = || format!("\"{t}\" is not a port or range lo-hi (0-65535)");
            let (lo, hi) = match t.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (t.trim(), t.trim()),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(format!("\"{t}\": range start is above its end"));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

/// Parses an address or CIDR prefix.
pub(crate) fn prefix(t: &str) -> Result<Prefix, String> {
    let (a, len) = match t.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (t.trim(), None),
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("\"{t}\" is not an address or CIDR prefix"))?;
    let (family, addr) = Addr::from_ip(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("\"{t}\": prefix length must be 0 to {max}"))?,
    };
    Prefix::new(family, addr, len).ok_or_else(|| format!("\"{t}\" is not a valid prefix"))
}

fn parse_rule(
    l: &Lines<'_>,
    errs: &mut Vec<ConfigError>,
    n: usize,
    sp: &Spanned<RawRule>,
) -> Option<Rule> {
    let r = sp.get_ref();
    let before = errs.len();
    let mut rule = Rule::any(Action::Drop);
    rule.line = u32::try_from(l.at(sp.span(), "").line).unwrap_or(0);
    match &r.action {
        None => errs.push(l.at(
            sp.span(),
            format!("rule {n}: missing action (accept, drop or notrack)"),
        )),
        Some(a) => rule.action = action(l, errs, a, &format!("rule {n}: action"), true),
    }
    if let Some(f) = &r.from {
        rule.from = match f.get_ref().as_str() {
            "inside" => Some(Side::Inside),
            "outside" => Some(Side::Outside),
            other => {
                errs.push(l.at(
                    f.span(),
                    format!("rule {n}: from: \"{other}\" is not inside or outside"),
                ));
                None
            }
        };
    }
    if let Some(st) = &r.state {
        if rule.action == Action::Notrack {
            errs.push(l.at(
                st.span(),
                format!("rule {n}: a notrack rule runs before conntrack and cannot match on state"),
            ));
        }
        for name in st.get_ref().items() {
            match CtState::from_name(&name) {
                Some(s) => rule.states = rule.states.with(s),
                None => errs.push(l.at(st.span(), format!(
                    "rule {n}: state: \"{name}\" is not one of new, established, related, invalid, untracked"
                ))),
            }
        }
        if st.get_ref().items().is_empty() {
            errs.push(l.at(
                st.span(),
                format!("rule {n}: state: empty list (leave the key out to match any state)"),
            ));
        }
    }
    let _ = StateSet::default();
    if let Some(p) = &r.proto {
        rule.proto = match p.get_ref() {
            PortItem::Text(t) => match t.as_str() {
                "tcp" => ProtoMatch::Proto(ipproto::TCP),
                "udp" => ProtoMatch::Proto(ipproto::UDP),
                "icmp" => ProtoMatch::Proto(ipproto::ICMP),
                "icmpv6" => ProtoMatch::Proto(ipproto::ICMPV6),
                "gre" => ProtoMatch::Proto(ipproto::GRE),
                "sctp" => ProtoMatch::Proto(ipproto::SCTP),
                "udplite" => ProtoMatch::Proto(ipproto::UDPLITE),
                "any" => ProtoMatch::Any,
                other => {
                    errs.push(l.at(p.span(), format!(
                        "rule {n}: proto: \"{other}\" is not tcp, udp, icmp, icmpv6, gre, sctp, udplite, any or a protocol number"
                    )));
                    ProtoMatch::Any
                }
            },
            PortItem::Num(v) => match u8::try_from(*v) {
                Ok(p) => ProtoMatch::Proto(p),
                Err(_) => {
                    errs.push(l.at(
                        p.span(),
                        format!("rule {n}: proto: {v} is not a protocol number (0-255)"),
                    ));
                    ProtoMatch::Any
                }
            },
        };
    }
    for (key, field, out) in [
        ("src", &r.src, &mut rule.src),
        ("dst", &r.dst, &mut rule.dst),
    ] {
        if let Some(v) = field {
            for t in v.get_ref().items() {
                match prefix(&t) {
                    Ok(p) => out.push(p),
                    Err(e) => errs.push(l.at(v.span(), format!("rule {n}: {key}: {e}"))),
                }
            }
        }
    }
    for (key, field, out) in [
        ("sport", &r.sport, &mut rule.sport),
        ("dport", &r.dport, &mut rule.dport),
    ] {
        if let Some(v) = field {
            let ports_ok = matches!(
                rule.proto,
                ProtoMatch::Proto(ipproto::TCP | ipproto::UDP | ipproto::SCTP | ipproto::UDPLITE)
            );
            if !ports_ok {
                errs.push(l.at(
                    v.span(),
                    format!(
                        "rule {n}: {key} needs proto = \"tcp\", \"udp\", \"sctp\" or \"udplite\""
                    ),
                ));
            }
            for item in v.get_ref().items() {
                match port_range(&item) {
                    Ok(p) => out.push(p),
                    Err(e) => errs.push(l.at(v.span(), format!("rule {n}: {key}: {e}"))),
                }
            }
        }
    }
    if let Some(h) = &r.helper {
        match HelperKind::from_name(h.get_ref()) {
            None => errs.push(l.at(
                h.span(),
                format!(
                    "rule {n}: helper: \"{}\" is not one of {}",
                    h.get_ref(),
                    HelperKind::names(", ")
                ),
            )),
            Some(k) => {
                if !matches!(rule.proto, ProtoMatch::Proto(ipproto::TCP | ipproto::UDP)) {
                    errs.push(l.at(
                        h.span(),
                        format!("rule {n}: helper needs proto = \"tcp\" or \"udp\""),
                    ));
                }
                if rule.action == Action::Notrack {
                    errs.push(l.at(
                        h.span(),
                        format!("rule {n}: a notrack rule cannot assign a helper"),
                    ));
                }
                rule.helper = Some(k);
            }
        }
    }
    (errs.len() == before).then_some(rule)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let l = Lines { text };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![l.at(span, e.message().to_string())]
    })?;
    let mut errs = Vec::new();
    let conntrack = parse_conntrack(
        &l,
        &mut errs,
        raw.conntrack.as_ref().unwrap_or(&RawConntrack::default()),
    );
    let non_ip = match raw.l2.as_ref().and_then(|x| x.non_ip.as_ref()) {
        None => Action::Accept,
        Some(s) => action(&l, &mut errs, s, "l2.non_ip", false),
    };
    let default = match raw.policy.as_ref().and_then(|p| p.default.as_ref()) {
        None => Action::Drop,
        Some(s) => action(&l, &mut errs, s, "policy.default", false),
    };
    let mut rules = Vec::new();
    for (i, r) in raw.rule.iter().enumerate() {
        if let Some(rule) = parse_rule(&l, &mut errs, i + 1, r) {
            rules.push(rule);
        }
    }
    let interfaces = match raw.interfaces {
        None => None,
        Some(i) => {
            for (key, v) in [("inside", &i.inside), ("outside", &i.outside)] {
                let name = v.get_ref();
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    errs.push(l.at(
                        v.span(),
                        format!("interfaces.{key}: \"{name}\" is not an interface name"),
                    ));
                }
            }
            if i.inside.get_ref() == i.outside.get_ref() {
                errs.push(l.at(
                    i.outside.span(),
                    "interfaces: inside and outside must differ",
                ));
            }
            let queues = match &i.queues {
                None => Queues::All,
                Some(q) => match q.get_ref() {
                    OneOrWord::Word(w) if w == "all" => Queues::All,
                    OneOrWord::Count(n) if (1..=1024).contains(n) => {
                        Queues::Count(u32::try_from(*n).unwrap_or(1))
                    }
                    _ => {
                        errs.push(l.at(
                            q.span(),
                            "interfaces.queues: must be \"all\" or a count from 1 to 1024",
                        ));
                        Queues::All
                    }
                },
            };
            let mut cores = Vec::new();
            if let Some(c) = &i.cores {
                for n in c.get_ref() {
                    match usize::try_from(*n) {
                        Ok(x) => cores.push(x),
                        Err(_) => errs.push(l.at(
                            c.span(),
                            format!("interfaces.cores: {n} is not a core number"),
                        )),
                    }
                }
            }
            let xdp_mode = match i.xdp_mode.as_ref() {
                None => XdpMode::Auto,
                Some(m) => XdpMode::from_name(m.get_ref()).unwrap_or_else(|| {
                    errs.push(l.at(
                        m.span(),
                        format!(
                            "interfaces.xdp_mode: \"{}\" is not auto, copy or zerocopy",
                            m.get_ref()
                        ),
                    ));
                    XdpMode::Auto
                }),
            };
            Some(Interfaces {
                inside: i.inside.into_inner(),
                outside: i.outside.into_inner(),
                queues,
                cores,
                xdp_mode,
                offload: i.offload.unwrap_or(false),
                busy_poll: i.busy_poll.unwrap_or(false),
            })
        }
    };
    let mut control_socket = std::path::PathBuf::from(DEFAULT_CONTROL_SOCKET);
    if let Some(sock) = raw.control.as_ref().and_then(|c| c.socket.as_ref()) {
        let p = sock.get_ref();
        if p.is_empty() || !p.starts_with('/') || p.len() > 100 {
            errs.push(l.at(
                sock.span(),
                format!("control.socket: \"{p}\" must be an absolute path of at most 100 bytes"),
            ));
        } else {
            control_socket = p.into();
        }
    }
    let mut state_file = None;
    if let Some(f) = raw.control.as_ref().and_then(|c| c.state_file.as_ref()) {
        let p = f.get_ref();
        if !p.starts_with('/') || p.ends_with('/') {
            errs.push(l.at(
                f.span(),
                format!("control.state_file: \"{p}\" must be an absolute file path"),
            ));
        } else {
            state_file = Some(p.into());
        }
    }
    let mut metrics = None;
    if let Some(listen) = raw.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
        match listen.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => metrics = Some(a),
            Err(_) => errs.push(l.at(
                listen.span(),
                format!(
                    "metrics.listen: \"{}\" is not an address:port (e.g. \"127.0.0.1:9477\" or \"[::1]:9477\")",
                    listen.get_ref()
                ),
            )),
        }
    }
    if !errs.is_empty() {
        errs.sort_by_key(|e| (e.line, e.col));
        return Err(errs);
    }
    Ok(Config {
        conntrack,
        policy: Policy { rules, default },
        non_ip,
        interfaces,
        control_socket,
        metrics,
        state_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xdp_mode() {
        let c = parse("[interfaces]\ninside = \"a\"\noutside = \"b\"\nxdp_mode = \"copy\"\n")
            .expect("valid");
        assert_eq!(c.interfaces.map(|i| i.xdp_mode), Some(XdpMode::Copy));
        let e = parse("[interfaces]\ninside = \"a\"\noutside = \"b\"\nxdp_mode = \"fast\"\n")
            .expect_err("refused");
        assert_eq!(e[0].line, 4);
        assert!(e[0].msg.contains("auto, copy or zerocopy"), "{}", e[0].msg);
        for m in XdpMode::ALL {
            let c = parse(&format!(
                "[interfaces]\ninside = \"a\"\noutside = \"b\"\nxdp_mode = \"{}\"\n",
                m.name()
            ))
            .expect("valid");
            assert_eq!(c.interfaces.map(|i| i.xdp_mode), Some(m));
            assert_eq!(XdpMode::from_name(m.name()), Some(m));
        }
        assert_eq!(XdpMode::from_name("Copy"), None);
    }

    #[test]
    fn offload_and_busy_poll_flags() {
        let base = "[interfaces]\ninside = \"a\"\noutside = \"b\"\n";
        let c = parse(base).expect("valid");
        let i = c.interfaces.expect("interfaces");
        assert!(!i.offload && !i.busy_poll, "both off by default");
        let c = parse(&format!("{base}busy_poll = true\noffload = true\n")).expect("valid");
        let i = c.interfaces.expect("interfaces");
        assert!(i.offload && i.busy_poll);
        let e = parse(&format!("{base}busy_poll = \"yes\"\n")).expect_err("not a boolean");
        assert_eq!(e[0].line, 4, "{}", e[0].msg);
    }

    #[test]
    fn control_and_metrics_sections() {
        let c =
            parse("[control]\nsocket = \"/tmp/tg.sock\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n")
                .expect("valid");
        assert_eq!(c.control_socket, std::path::PathBuf::from("/tmp/tg.sock"));
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().expect("addr")));
        let d = parse("").expect("valid");
        assert_eq!(
            d.control_socket,
            std::path::PathBuf::from(DEFAULT_CONTROL_SOCKET)
        );
        assert_eq!(d.metrics, None);
        let e = parse("[metrics]\nlisten = \"localhost\"\n").expect_err("refused");
        assert_eq!(e[0].line, 2);
        assert!(e[0].msg.contains("metrics.listen"), "{}", e[0].msg);
        let e = parse("[control]\nsocket = \"relative.sock\"\n").expect_err("refused");
        assert!(e[0].msg.contains("absolute path"), "{}", e[0].msg);
        let e = parse("[control]\npath = \"/x\"\n").expect_err("refused");
        assert!(e[0].msg.contains("unknown field"), "{}", e[0].msg);
    }

    const STRICT: &str = r#"
[conntrack]
max_entries = 1000
tcp_loose = true

[l2]
non_ip = "accept"

[policy]
default = "drop"

[[rule]]
state = ["invalid"]
action = "drop"

[[rule]]
state = ["established", "related"]
action = "accept"

[[rule]]
from = "inside"
state = ["new"]
proto = "tcp"
dport = [21, "1024-65535"]
src = ["10.0.0.0/8", "fd00::/8"]
helper = "ftp"
action = "accept"
"#;

    #[test]
    fn good_config() {
        let c = parse(STRICT).unwrap();
        assert_eq!(c.conntrack.max_entries, 1000);
        assert_eq!(c.policy.rules.len(), 3);
        let r = &c.policy.rules[2];
        assert_eq!(r.from, Some(Side::Inside));
        assert_eq!(
            r.dport,
            vec![
                PortRange { lo: 21, hi: 21 },
                PortRange {
                    lo: 1024,
                    hi: 65535
                }
            ]
        );
        assert_eq!(r.helper, Some(HelperKind::Ftp));
        assert_eq!(r.src.len(), 2);
        assert_eq!(r.line, 20);
        assert_eq!(c.policy.default, Action::Drop);
    }

    fn first_error(text: &str) -> ConfigError {
        parse(text).err().unwrap().remove(0)
    }

    #[test]
    fn errors_name_the_line() {
        let e = first_error("[policy]\ndefault = \"maybe\"\n");
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("accept or drop"), "{}", e.msg);
        let e = first_error("[[rule]]\naction = \"accept\"\nproto = \"tcp\"\ndport = \"70000\"\n");
        assert_eq!(e.line, 4);
        assert!(e.msg.contains("rule 1: dport"), "{}", e.msg);
        let e = first_error("[conntrack]\nmax_entriez = 5\n");
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("max_entriez"), "{}", e.msg);
        let e = first_error("[[rule]]\naction = \"notrack\"\nstate = [\"new\"]\n");
        assert_eq!(e.line, 3);
        assert!(e.msg.contains("notrack"), "{}", e.msg);
        let e = first_error("[[rule]]\naction = \"accept\"\nsrc = \"10.0.0.0/33\"\n");
        assert_eq!(e.line, 3);
        let e = first_error("[[rule]]\naction = \"accept\"\nhelper = \"ftp\"\n");
        assert!(e.msg.contains("helper needs proto"), "{}", e.msg);
        let e = first_error("[[rule]]\nproto = \"tcp\"\n");
        assert!(e.msg.contains("missing action"), "{}", e.msg);
        let e = first_error("[[rule]]\naction = \"accept\"\nproto = \"tcp\"\nsport = \"9-3\"\n");
        assert!(e.msg.contains("above its end"), "{}", e.msg);
        let e = first_error("this is = = not toml");
        assert_eq!(e.line, 1);
        let e = first_error("[conntrack]\nudp_timeout = 0\n");
        assert_eq!(e.line, 2);
        // Several errors at once, in file order.
        let errs = parse("[[rule]]\naction = \"x\"\n[[rule]]\naction = \"y\"\n")
            .err()
            .unwrap();
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[1].line), (2, 4));
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.default, Action::Drop);
        assert!(c.policy.rules.is_empty());
        assert_eq!(c.non_ip, Action::Accept);
        assert_eq!(c.conntrack.timeouts.udp, 30);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn rule_fuzz_never_panics(key in "(from|state|proto|src|dst|sport|dport|helper|action)", val in "(\"[a-z0-9./:-]{0,12}\"|[0-9]{1,7}|\\[\"[a-z]{0,6}\"\\])") {
            let text = format!("[[rule]]\naction = \"accept\"\nproto = \"tcp\"\n{key} = {val}\n");
            let _ = parse(&text);
        }
    }
}
