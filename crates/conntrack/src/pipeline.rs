//! The per-packet pipeline, in the kernel's hook order: the raw stage (notrack
//! rules), conntrack, the filter stage (policy), then confirm or abort.

use crate::packet::{self, Icmp, Packet, ParseError, ParseOptions, L4};

/// Largest batch [`Pipeline::process_batch`] works on at once (a worker's RX batch).
pub const BATCH: usize = 64;
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
    /// Entry of each packet of the last batch (`u32::MAX`: none).
    conns: [u32; BATCH],
}

/// A connection the fast path may take, with the sides its two directions
/// enter on (see [`Pipeline::offload_plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffloadPlan {
    /// The connection's tuples and helper.
    pub candidate: crate::table::Candidate,
    /// Side the original direction enters on (the reply's is the other).
    pub orig_side: Side,
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
            conns: [u32::MAX; BATCH],
        }
    }

    /// Processes one IP packet (starting at its IP header) that entered on `side`
    /// at time `now` (ns).
    pub fn process(&mut self, side: Side, l3: &[u8], now: u64) -> PacketResult {
        self.ct.expire(now);
        let parsed = packet::parse(l3, self.parse);
        self.process_parsed(side, &parsed, None, now).0
    }

    /// The entry of each packet of the last [`Self::process_batch`] (of its
    /// last [`BATCH`] packets), `u32::MAX` where none.
    pub fn batch_conns(&self) -> &[u32; BATCH] {
        &self.conns
    }

    /// Whether connection `conn`, whose packet just entered on `side` in the
    /// `reply` direction and was accepted, may go to the fast path: the core
    /// says it is ready (see [`Conntrack::offload_candidate`]) and policy
    /// accepts the established packets of both directions (no notrack rule
    /// takes them). A connection policy refuses is not asked again until the
    /// policy changes.
    pub fn offload_plan(&mut self, conn: u32, side: Side, reply: bool) -> Option<OffloadPlan> {
        let c = self.ct.offload_candidate(conn)?;
        let orig_side = if reply { side.other() } else { side };
        let ok = [(orig_side, &c.orig), (orig_side.other(), &c.reply)]
            .iter()
            .all(|&(s, t)| {
                !(self.policy.has_notrack() && self.policy.notrack(s, t))
                    && self
                        .policy
                        .evaluate(&PacketMeta {
                            side: s,
                            state: CtState::Established,
                            tuple: t,
                            helper: c.helper,
                        })
                        .action
                        == Action::Accept
            });
        if ok {
            Some(OffloadPlan {
                candidate: c,
                orig_side,
            })
        } else {
            self.ct.offload_refuse(conn);
            None
        }
    }

    /// Processes a batch (at most [`BATCH`] packets; more are processed in
    /// several rounds) the way a worker receives them: all headers are parsed
    /// and hashed first and their index slots loaded, then each packet is run
    /// while the table entry of the packet a few places ahead is being loaded,
    /// so memory latency overlaps work. Results land in `out` (same order).
    pub fn process_batch(&mut self, pkts: &[(Side, &[u8])], now: u64, out: &mut [PacketResult]) {
        /// How many packets ahead the entry is prefetched.
        const AHEAD: usize = 6;
        self.ct.expire(now);
        for (chunk, out) in pkts.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            let mut parsed: [Option<Result<Packet<'_>, ParseError>>; BATCH] = [None; BATCH];
            let mut hashes = [None::<u64>; BATCH];
            for (i, (_, l3)) in chunk.iter().enumerate() {
                let p = packet::parse(l3, self.parse);
                if let Ok(pk) = &p {
                    // Only plain flows are looked up by their own tuple.
                    if pk.frag.is_none_or(|f| f.offset == 0)
                        && !matches!(pk.l4, L4::Icmp(Icmp::Error { .. }))
                    {
                        let h = self.ct.flow_hash(&pk.tuple);
                        self.ct.prefetch_index(h);
                        hashes[i] = Some(h);
                    }
                }
                parsed[i] = Some(p);
            }
            for h in hashes.iter().take(AHEAD).flatten() {
                self.ct.prefetch_entry(*h);
            }
            for (i, ((side, _), slot)) in chunk.iter().zip(out.iter_mut()).enumerate() {
                if let Some(Some(h)) = hashes.get(i + AHEAD) {
                    self.ct.prefetch_entry(*h);
                }
                self.conns[i] = u32::MAX;
                if let Some(p) = &parsed[i] {
                    let (r, conn) = self.process_parsed(*side, p, hashes[i], now);
                    *slot = r;
                    self.conns[i] = conn;
                }
            }
        }
    }

    fn process_parsed(
        &mut self,
        side: Side,
        parsed: &Result<Packet<'_>, ParseError>,
        hash: Option<u64>,
        now: u64,
    ) -> (PacketResult, u32) {
        // By reference: a parsed packet is too big to move for nothing.
        let pkt = match parsed {
            Ok(p) => p,
            Err(ParseError::Malformed(reason)) => {
                // The kernel's IP input drops these before any hook runs.
                return (
                    PacketResult {
                        verdict: Action::Drop,
                        state: CtState::Invalid,
                        reply: false,
                        reason: Some(*reason),
                    },
                    u32::MAX,
                );
            }
            Err(ParseError::Invalid { reason, tuple, .. }) => {
                self.ct.count_invalid();
                if self.policy.has_notrack() && self.policy.notrack(side, tuple) {
                    return (
                        self.filter(side, CtState::Untracked, tuple, None, None),
                        u32::MAX,
                    );
                }
                return (
                    self.filter(side, CtState::Invalid, tuple, None, Some(*reason)),
                    u32::MAX,
                );
            }
        };
        if (self.policy.has_notrack() && self.policy.notrack(side, &pkt.tuple))
            || matches!(pkt.l4, L4::Icmp(Icmp::Untracked))
        {
            return (
                self.filter(side, CtState::Untracked, &pkt.tuple, None, None),
                u32::MAX,
            );
        }
        let track = match hash {
            Some(h) => self.ct.track_prehashed(pkt, h, now),
            None => self.ct.track(pkt, now),
        };
        if track.must_drop {
            self.ct.abort(&track, now);
            return (
                PacketResult {
                    verdict: Action::Drop,
                    state: track.state,
                    reply: track.reply,
                    reason: track.reason,
                },
                u32::MAX,
            );
        }
        let d = self.policy.evaluate(&PacketMeta {
            side,
            state: track.state,
            tuple: &pkt.tuple,
            helper: track.helper,
        });
        let accepted = d.action == Action::Accept;
        if accepted {
            let helper = d.assign_helper.or_else(|| {
                (self.ct.config().auto_helpers && track.state == CtState::New && !track.reply)
                    .then(|| crate::HelperKind::for_port(&pkt.tuple))
                    .flatten()
            });
            self.ct.confirm(&track, helper, now);
            self.ct.help(&track, pkt, now);
        } else {
            self.ct.abort(&track, now);
        }
        (
            PacketResult {
                verdict: if accepted {
                    Action::Accept
                } else {
                    Action::Drop
                },
                state: track.state,
                reply: track.reply,
                reason: drop_reason(accepted, d.rule.is_some(), track.reason),
            },
            if accepted { track.conn } else { u32::MAX },
        )
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
        // What the fast path forwards was decided under the old policy.
        self.ct.offload_reset();
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
