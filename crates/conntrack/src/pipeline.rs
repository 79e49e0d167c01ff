//! The per-packet pipeline (being implemented): raw stage, conntrack, filter, confirm.

use crate::policy::{Action, Policy, Side};
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
    /// Why it was dropped (or why it was invalid, when accepted anyway).
    pub reason: Option<DropReason>,
}

/// Conntrack plus policy: what a worker runs per IP packet.
pub struct Pipeline {
    ct: Conntrack,
    policy: Policy,
}

impl Pipeline {
    /// Builds a pipeline.
    pub fn new(cfg: Config, policy: Policy) -> Self {
        Pipeline {
            ct: Conntrack::new(cfg),
            policy,
        }
    }

    /// Processes one IP packet (starting at its IP header) that entered on `side`.
    pub fn process(&mut self, side: Side, l3: &[u8], now: u64) -> PacketResult {
        let _ = (side, l3, now, &self.policy);
        PacketResult {
            verdict: Action::Drop,
            state: CtState::Invalid,
            reply: false,
            reason: Some(DropReason::Ipv4Truncated),
        }
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// Replaces the policy; existing connections keep their state.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }
}
