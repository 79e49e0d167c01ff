//! The per-packet pipeline, in the kernel's hook order: the raw stage (notrack
//! rules), conntrack, the filter stage (policy), then confirm or abort.

use crate::packet::{self, Icmp, ParseError, ParseOptions, L4};
use crate::policy::{Action, PacketMeta, Policy, Side};
use crate::reason::DropReason;
use crate::table::{Config, Conntrack};
use crate::CtState;

/// What happened to one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketResult {
    /// `Accept` or `Drop`.
    pub verdict: Action,
    /// Conntrack state the policy saw.
    pub state: CtState,
    /// The packet travelled in the reply direction of its entry.
    pub reply: bool,
    /// Why it was dropped; for an accepted invalid packet, why it was invalid.
    pub reason: Option<DropReason>,
}

/// Conntrack plus policy: what a worker runs per IP packet.
pub struct Pipeline {
    ct: Conntrack,
    policy: Policy,
    parse: ParseOptions,
}

impl Pipeline {
    /// Builds a pipeline.
    pub fn new(cfg: Config, policy: Policy) -> Self {
        let parse = ParseOptions {
            checksum: cfg.checksum,
        };
        Pipeline {
            ct: Conntrack::new(cfg),
            policy,
            parse,
        }
    }

    /// Processes one IP packet (starting at its IP header) that entered on `side`
    /// at time `now` (ns).
    pub fn process(&mut self, side: Side, l3: &[u8], now: u64) -> PacketResult {
        self.ct.expire(now);
        let pkt = match packet::parse(l3, self.parse) {
            Ok(p) => p,
            Err(ParseError::Malformed(reason)) => {
                // The kernel's IP input drops these before any hook runs.
                return PacketResult {
                    verdict: Action::Drop,
                    state: CtState::Invalid,
                    reply: false,
                    reason: Some(reason),
                };
            }
            Err(ParseError::Invalid { reason, tuple, .. }) => {
                self.ct.count_invalid();
                if self.policy.has_notrack() && self.policy.notrack(side, &tuple) {
                    return self.filter(side, CtState::Untracked, &tuple, None, None);
                }
                return self.filter(side, CtState::Invalid, &tuple, None, Some(reason));
            }
        };
        if self.policy.has_notrack() && self.policy.notrack(side, &pkt.tuple) {
            return self.filter(side, CtState::Untracked, &pkt.tuple, None, None);
        }
        if matches!(pkt.l4, L4::Icmp(Icmp::Untracked)) {
            return self.filter(side, CtState::Untracked, &pkt.tuple, None, None);
        }
        let track = self.ct.track(&pkt, now);
        if track.must_drop {
            self.ct.abort(&track, now);
            return PacketResult {
                verdict: Action::Drop,
                state: track.state,
                reply: track.reply,
                reason: track.reason,
            };
        }
        let d = self.policy.evaluate(&PacketMeta {
            side,
            state: track.state,
            tuple: &pkt.tuple,
            helper: track.helper,
        });
        let accepted = d.action == Action::Accept;
        if accepted {
            self.ct.confirm(&track, d.assign_helper, now);
            self.ct.help(&track, &pkt, now);
        } else {
            self.ct.abort(&track, now);
        }
        PacketResult {
            verdict: if accepted {
                Action::Accept
            } else {
                Action::Drop
            },
            state: track.state,
            reply: track.reply,
            reason: drop_reason(accepted, d.rule.is_some(), track.reason),
        }
    }

    fn filter(
        &self,
        side: Side,
        state: CtState,
        tuple: &crate::Tuple,
        helper: Option<crate::HelperKind>,
        invalid: Option<DropReason>,
    ) -> PacketResult {
        let d = self.policy.evaluate(&PacketMeta {
            side,
            state,
            tuple,
            helper,
        });
        let accepted = d.action == Action::Accept;
        PacketResult {
            verdict: if accepted {
                Action::Accept
            } else {
                Action::Drop
            },
            state,
            reply: false,
            reason: drop_reason(accepted, d.rule.is_some(), invalid),
        }
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// The conntrack table, mutably (flush, expiry from a timer).
    pub fn conntrack_mut(&mut self) -> &mut Conntrack {
        &mut self.ct
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy; existing connections keep their state.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }
}

/// An invalid packet keeps its precise reason whoever drops it; a valid one is
/// dropped by a rule or by the default.
fn drop_reason(accepted: bool, by_rule: bool, invalid: Option<DropReason>) -> Option<DropReason> {
    if accepted {
        return invalid;
    }
    Some(invalid.unwrap_or(if by_rule {
        DropReason::PolicyRule
    } else {
        DropReason::PolicyDefault
    }))
}
