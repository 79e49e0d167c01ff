//! Policy evaluation: ordered rules, first match wins, then the default action.
//!
//! Rules with `action = notrack` form the "raw" stage: they are evaluated before
//! conntrack (they may not match on state) and make the packet `untracked`. The
//! other rules form the "filter" stage and see the conntrack state.
//!
//! A rule's `helper` has two meanings, as in nftables: on a `new` packet it
//! *assigns* that helper to the connection when the rule accepts it
//! (`ct helper set`); on any other packet it *matches* only when the connection
//! (or, for `related`, its master) has that helper.

use crate::tuple::{Addr, Family, Tuple};
use crate::{CtState, HelperKind};

/// Which NIC a packet entered on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The protected side.
    Inside,
    /// The other side.
    Outside,
}

impl Side {
    /// `"inside"` or `"outside"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Inside => "inside",
            Side::Outside => "outside",
        }
    }
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
        }
    }
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward.
    Accept,
    /// Drop.
    Drop,
    /// Exempt from tracking (evaluated before conntrack); the packet continues
    /// to the filter stage as `untracked`.
    Notrack,
}

/// A set of [`CtState`]s as a bit mask; empty means any state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StateSet(pub u8);

impl StateSet {
    /// Adds a state.
    #[must_use]
    pub fn with(self, s: CtState) -> Self {
        StateSet(self.0 | 1 << (s as u8))
    }
    /// True if the set is empty (matches any state) or holds `s`.
    pub fn matches(self, s: CtState) -> bool {
        self.0 == 0 || self.0 & (1 << (s as u8)) != 0
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// True if `p` is inside.
    pub fn contains(self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// An address prefix (CIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Family of the prefix.
    pub family: Family,
    /// Network address (host bits zero).
    pub addr: Addr,
    /// Prefix length in bits.
    pub len: u8,
}

impl Prefix {
    /// Builds a prefix, zeroing host bits. `None` if `len` is too long for the family.
    pub fn new(family: Family, addr: Addr, len: u8) -> Option<Prefix> {
        let bits = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        if len > bits {
            return None;
        }
        let mask = Self::mask(bits, len);
        Some(Prefix {
            family,
            addr: Addr(addr.0 & mask),
            len,
        })
    }

    fn mask(bits: u8, len: u8) -> u128 {
        if len == 0 {
            return 0;
        }
        let all = if bits == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all & !((1u128 << (bits - len)).wrapping_sub(1)) & all
    }

    /// True if `a` (of family `f`) lies inside.
    pub fn contains(&self, f: Family, a: Addr) -> bool {
        if f != self.family {
            return false;
        }
        let bits = match f {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        a.0 & Self::mask(bits, self.len) == self.addr.0
    }
}

/// L4 protocol selector of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoMatch {
    /// Any protocol.
    Any,
    /// One IP protocol number.
    Proto(u8),
}

/// One policy rule. Empty lists and `None` mean "any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Side the packet entered on.
    pub from: Option<Side>,
    /// Conntrack states.
    pub states: StateSet,
    /// L4 protocol.
    pub proto: ProtoMatch,
    /// Source prefixes.
    pub src: Vec<Prefix>,
    /// Destination prefixes.
    pub dst: Vec<Prefix>,
    /// Source port ranges (TCP, UDP and other port-carrying protocols only).
    pub sport: Vec<PortRange>,
    /// Destination port ranges.
    pub dport: Vec<PortRange>,
    /// Helper to assign (new) or to require (other states).
    pub helper: Option<HelperKind>,
    /// What to do.
    pub action: Action,
    /// 1-based line of the rule in its config file (0 if built in code), for logs.
    pub line: u32,
}

impl Rule {
    /// A rule matching everything with the given action.
    pub fn any(action: Action) -> Rule {
        Rule {
            from: None,
            states: StateSet::default(),
            proto: ProtoMatch::Any,
            src: Vec::new(),
            dst: Vec::new(),
            sport: Vec::new(),
            dport: Vec::new(),
            helper: None,
            action,
            line: 0,
        }
    }
}

/// What the filter stage sees of a packet.
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta<'a> {
    /// Ingress side.
    pub side: Side,
    /// Conntrack state.
    pub state: CtState,
    /// The packet's own tuple (ports zero where the protocol has none).
    pub tuple: &'a Tuple,
    /// Helper of the connection (for `related`: of its master), if any.
    pub helper: Option<HelperKind>,
}

/// Result of evaluating a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Accept or drop (never notrack at the filter stage).
    pub action: Action,
    /// Index of the matching rule, `None` for the default action.
    pub rule: Option<usize>,
    /// Helper to attach to a new connection.
    pub assign_helper: Option<HelperKind>,
}

/// An ordered rule set with a default action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Action when no filter rule matches (accept or drop).
    pub default: Action,
}

fn has_ports(proto: u8) -> bool {
    use crate::tuple::ipproto::*;
    matches!(proto, TCP | UDP | UDPLITE | SCTP | DCCP)
}

impl Rule {
    fn matches_headers(&self, side: Side, t: &Tuple) -> bool {
        if self.from.is_some_and(|s| s != side) {
            return false;
        }
        match self.proto {
            ProtoMatch::Any => {}
            ProtoMatch::Proto(p) => {
                if p != t.proto {
                    return false;
                }
            }
        }
        if !self.src.is_empty() && !self.src.iter().any(|p| p.contains(t.family, t.src)) {
            return false;
        }
        if !self.dst.is_empty() && !self.dst.iter().any(|p| p.contains(t.family, t.dst)) {
            return false;
        }
        let ports_ok = |ranges: &[PortRange], port: u16| {
            ranges.is_empty() || (has_ports(t.proto) && ranges.iter().any(|r| r.contains(port)))
        };
        if !ports_ok(&self.sport, t.src_port) || !ports_ok(&self.dport, t.dst_port) {
            return false;
        }
        true
    }
}

impl Policy {
    /// A policy with no rules.
    pub fn new(default: Action) -> Policy {
        Policy {
            rules: Vec::new(),
            default,
        }
    }

    /// The raw stage: true if a `notrack` rule matches this packet (which then
    /// skips conntrack and is `untracked`).
    pub fn notrack(&self, side: Side, t: &Tuple) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == Action::Notrack && r.matches_headers(side, t))
    }

    /// True if any rule is a notrack rule (lets the pipeline skip the raw stage).
    pub fn has_notrack(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Notrack)
    }

    /// The filter stage: first matching accept/drop rule, else the default.
    pub fn evaluate(&self, m: &PacketMeta<'_>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.action == Action::Notrack || !r.states.matches(m.state) {
                continue;
            }
            if !r.matches_headers(m.side, m.tuple) {
                continue;
            }
            let mut assign = None;
            if let Some(h) = r.helper {
                if m.state == CtState::New {
                    assign = Some(h);
                } else if m.helper != Some(h) {
                    continue;
                }
            }
            return Decision {
                action: r.action,
                rule: Some(i),
                assign_helper: if r.action == Action::Accept {
                    assign
                } else {
                    None
                },
            };
        }
        Decision {
            action: self.default,
            rule: None,
            assign_helper: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::ipproto;

    fn t(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, proto: u8) -> Tuple {
        Tuple {
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            src_port: sp,
            dst_port: dp,
            proto,
            family: Family::V4,
        }
    }

    #[test]
    fn prefix_contains() {
        let p = Prefix::new(Family::V4, Addr::v4([10, 1, 2, 3]), 16).unwrap();
        assert_eq!(p.addr, Addr::v4([10, 1, 0, 0]));
        assert!(p.contains(Family::V4, Addr::v4([10, 1, 200, 1])));
        assert!(!p.contains(Family::V4, Addr::v4([10, 2, 0, 1])));
        assert!(!p.contains(Family::V6, Addr::v4([10, 1, 0, 1])));
        let all = Prefix::new(Family::V6, Addr(0), 0).unwrap();
        assert!(all.contains(Family::V6, Addr(u128::MAX)));
        let host = Prefix::new(Family::V6, Addr(5), 128).unwrap();
        assert!(host.contains(Family::V6, Addr(5)));
        assert!(!host.contains(Family::V6, Addr(4)));
        assert!(Prefix::new(Family::V4, Addr(0), 33).is_none());
    }

    #[test]
    fn first_match_wins_and_helper_semantics() {
        let mut p = Policy::new(Action::Drop);
        let mut est = Rule::any(Action::Accept);
        est.states = StateSet::default()
            .with(CtState::Established)
            .with(CtState::Related);
        est.helper = None;
        let mut ftp_rel = Rule::any(Action::Accept);
        ftp_rel.states = StateSet::default().with(CtState::Related);
        ftp_rel.helper = Some(HelperKind::Ftp);
        let mut ftp = Rule::any(Action::Accept);
        ftp.from = Some(Side::Inside);
        ftp.states = StateSet::default().with(CtState::New);
        ftp.proto = ProtoMatch::Proto(ipproto::TCP);
        ftp.dport = vec![PortRange { lo: 21, hi: 21 }];
        ftp.helper = Some(HelperKind::Ftp);
        p.rules = vec![ftp_rel, ftp];
        let tu = t([10, 0, 0, 1], [192, 0, 2, 1], 40000, 21, ipproto::TCP);
        let d = p.evaluate(&PacketMeta {
            side: Side::Inside,
            state: CtState::New,
            tuple: &tu,
            helper: None,
        });
        assert_eq!(d.action, Action::Accept);
        assert_eq!(d.rule, Some(1));
        assert_eq!(d.assign_helper, Some(HelperKind::Ftp));
        // Outside-initiated: default drop.
        let d = p.evaluate(&PacketMeta {
            side: Side::Outside,
            state: CtState::New,
            tuple: &tu,
            helper: None,
        });
        assert_eq!((d.action, d.rule), (Action::Drop, None));
        // Related from a non-FTP master does not match the FTP-only rule.
        let d = p.evaluate(&PacketMeta {
            side: Side::Outside,
            state: CtState::Related,
            tuple: &tu,
            helper: Some(HelperKind::Sip),
        });
        assert_eq!(d.action, Action::Drop);
        let d = p.evaluate(&PacketMeta {
            side: Side::Outside,
            state: CtState::Related,
            tuple: &tu,
            helper: Some(HelperKind::Ftp),
        });
        assert_eq!((d.action, d.rule), (Action::Accept, Some(0)));
        p.rules.insert(0, est);
        let d = p.evaluate(&PacketMeta {
            side: Side::Outside,
            state: CtState::Related,
            tuple: &tu,
            helper: Some(HelperKind::Sip),
        });
        assert_eq!((d.action, d.rule), (Action::Accept, Some(0)));
    }

    #[test]
    fn ports_never_match_portless_protocols() {
        let mut r = Rule::any(Action::Accept);
        r.dport = vec![PortRange { lo: 0, hi: 65535 }];
        let p = Policy {
            rules: vec![r],
            default: Action::Drop,
        };
        let icmp = t([1, 1, 1, 1], [2, 2, 2, 2], 7, 8 << 8, ipproto::ICMP);
        let d = p.evaluate(&PacketMeta {
            side: Side::Inside,
            state: CtState::New,
            tuple: &icmp,
            helper: None,
        });
        assert_eq!(d.action, Action::Drop);
    }

    #[test]
    fn notrack_stage() {
        let mut r = Rule::any(Action::Notrack);
        r.proto = ProtoMatch::Proto(ipproto::UDP);
        let p = Policy {
            rules: vec![r],
            default: Action::Accept,
        };
        assert!(p.notrack(
            Side::Inside,
            &t([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, ipproto::UDP)
        ));
        assert!(!p.notrack(
            Side::Inside,
            &t([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, ipproto::TCP)
        ));
    }
}
