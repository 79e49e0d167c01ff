//! Expectations (the kernel's `nf_conntrack_expect`): a helper that reads a
//! control connection announces the tuple of a future data connection; the
//! first packet matching it is `related` and its entry records that it was
//! expected. This module alone enforces the limits: a global maximum, the
//! per-helper `max_expected` (the master's oldest expectation is evicted when
//! it would be exceeded), clashes and timeouts.
//!
//! Lookup is by the expected flow's destination (address, port, protocol), as in
//! the kernel, because the source port (and for some helpers the source address)
//! is a wildcard; candidates are then compared under their mask.

use crate::index::Index;
use crate::tuple::{Addr, Family, HashSecret, Tuple};
use crate::HelperKind;

const NONE: u32 = u32::MAX;

/// Master index of an expectation mirrored from another shard: it has no
/// local master connection.
pub const MIRROR: u32 = u32::MAX - 1;

/// Which shard's which expectation (ids are per shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Origin {
    /// The shard (worker) whose helper created it.
    pub worker: u16,
    /// Its id there.
    pub id: u32,
}

/// A message between shards about expectations, so the first packet of an
/// expected connection finds its expectation on whichever shard owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectMsg {
    /// An expectation was created (or refreshed) on its origin shard.
    Add {
        /// Where it lives.
        origin: Origin,
        /// What is expected (tuple already masked).
        spec: ExpectSpec,
        /// Nanoseconds it has left.
        expires_in: u64,
    },
    /// It is gone (used, evicted, its master died, or the operator removed it).
    Remove {
        /// Which one.
        origin: Origin,
    },
    /// The PPTP helper learnt a GRE key: packets from `src` to `dst` with
    /// key `dst_key` carry the sender's key `src_key` (the GRE flow may be
    /// owned by another shard than its control connection).
    GreKey {
        /// The control connection: its shard and slot there.
        origin: Origin,
        /// Sender.
        src: Addr,
        /// Receiver.
        dst: Addr,
        /// Family of both.
        family: Family,
        /// Key the packets carry.
        dst_key: u16,
        /// Sender's key.
        src_key: u16,
    },
    /// A PPTP call ended (or its control connection died): its GRE
    /// connections and keys go on every shard.
    GreTeardown {
        /// The control connection: its shard and slot there.
        origin: Origin,
        /// The call's two GRE tuples.
        tuples: [Tuple; 2],
    },
}

/// Which fields of an expectation's tuple are wildcards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mask {
    /// Any source address.
    pub src_addr: bool,
    /// Any source port.
    pub src_port: bool,
    /// When not `src_addr`: only the first `src_prefix` bits of the source
    /// address must match (0 = all of them). Broadcast helpers expect answers
    /// from any host of a subnet.
    pub src_prefix: u8,
}

/// What a helper (or the operator) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectSpec {
    /// Original-direction tuple of the expected connection; masked fields are
    /// ignored.
    pub tuple: Tuple,
    /// Wildcards.
    pub mask: Mask,
    /// Helper class of the requester (limits and timeouts are per helper).
    pub helper: HelperKind,
    /// Helper the expected connection itself gets (e.g. none for FTP data).
    pub child_helper: Option<HelperKind>,
    /// Not used up by a match (`NF_CT_EXPECT_PERMANENT`): broadcast queries get
    /// answers from several hosts until the expectation times out.
    pub permanent: bool,
    /// Seconds it lives, when not the helper policy's (a SIP registration
    /// lasts as long as its `expires`).
    pub timeout: Option<u32>,
}

/// Per-helper expectation policy (`nf_conntrack_expect_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectPolicy {
    /// Live expectations one master may hold.
    pub max_expected: u32,
    /// Seconds an expectation lives.
    pub timeout: u32,
}

/// The kernel's defaults per helper (from the helper registry).
pub fn default_policy(h: HelperKind) -> ExpectPolicy {
    h.spec().policy
}

/// Why an expectation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpectError {
    /// The expectation table is full.
    #[error("expectation table full")]
    TableFull,
    /// Another master already expects this tuple.
    #[error("another connection already expects this tuple")]
    Clash,
    /// The master connection does not exist (anymore).
    #[error("no such master connection")]
    NoMaster,
    /// The tuple cannot be expected (family mismatch, bad protocol).
    #[error("invalid expectation tuple")]
    Invalid,
}

/// Expectation counters, with the kernel's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectStats {
    /// Connections created from an expectation.
    pub expect_new: u64,
    /// Expectations created.
    pub expect_create: u64,
    /// Expectations removed (used, evicted, expired, master gone, operator).
    pub expect_delete: u64,
    /// Requests refused (table full, clash).
    pub expect_refused: u64,
    /// Expectations evicted because their master exceeded `max_expected`.
    pub expect_evicted: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Exp {
    tuple: Tuple,
    mask: Mask,
    used: bool,
    permanent: bool,
    helper: u8,
    child_helper: u8,
    master: u32,
    /// Next expectation of the same master (newest first), or the free list.
    next: u32,
    deadline: u64,
    id: u32,
    origin: Origin,
}

/// A view of one expectation, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectInfo {
    /// Stable id (for deletion).
    pub id: u32,
    /// Expected tuple (masked fields as zero).
    pub tuple: Tuple,
    /// Wildcards.
    pub mask: Mask,
    /// Requesting helper.
    pub helper: Option<HelperKind>,
    /// Master connection's original tuple.
    pub master: Tuple,
    /// Nanoseconds left.
    pub expires_in: u64,
}

/// The expectation table of one conntrack table.
#[derive(Clone, Debug)]
pub struct Expectations {
    exps: Vec<Exp>,
    index: Index,
    free: u32,
    count: u32,
    next_id: u32,
    secret: HashSecret,
    sweep: usize,
    /// Counters.
    pub stats: ExpectStats,
    /// Set when the table is one shard of several: its worker number.
    shard: Option<u16>,
    /// Messages for the other shards, drained by the owner.
    outbox: Vec<ExpectMsg>,
    /// Slot of each live expectation by origin (sharing only).
    by_origin: std::collections::HashMap<Origin, u32>,
}

fn code(h: Option<HelperKind>) -> u8 {
    h.map_or(0, |h| h as u8 + 1)
}

pub(crate) fn helper_of(code: u8) -> Option<HelperKind> {
    code.checked_sub(1)
        .and_then(|i| HelperKind::ALL.get(usize::from(i)).copied())
}

/// The part of a tuple expectations are indexed by.
fn dst_hash(t: &Tuple, secret: &HashSecret) -> u64 {
    // Truncations split the 128-bit address into words.
    #[allow(clippy::cast_possible_truncation)]
    let words = [
        (t.dst.0 >> 64) as u64,
        t.dst.0 as u64,
        u64::from(t.dst_port) | u64::from(t.proto) << 16 | (t.family as u64) << 24 | 1 << 40,
    ];
    crate::tuple::keyed_hash(secret, &words)
}

fn masked(t: &Tuple, m: Mask) -> Tuple {
    let bits: u8 = match t.family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let src = if m.src_addr {
        Addr(0)
    } else if m.src_prefix == 0 || m.src_prefix >= bits {
        t.src
    } else {
        // Keep the first `src_prefix` of the family's `bits` bits.
        let host = bits - m.src_prefix;
        Addr(t.src.0 & !((1u128 << host) - 1))
    };
    Tuple {
        src,
        src_port: if m.src_port { 0 } else { t.src_port },
        ..*t
    }
}

impl Expectations {
    /// A table for `max` expectations.
    pub fn new(max: u32, secret: HashSecret) -> Self {
        let max = max.max(1);
        let mut exps = vec![Exp::default(); max as usize];
        for (i, e) in exps.iter_mut().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            let n = i as u32 + 1;
            e.next = if n < max { n } else { NONE };
        }
        Expectations {
            exps,
            index: Index::new(max as usize * 2),
            free: 0,
            count: 0,
            next_id: 1,
            secret,
            sweep: 0,
            stats: ExpectStats::default(),
            shard: None,
            outbox: Vec::new(),
            by_origin: std::collections::HashMap::new(),
        }
    }

    /// Makes this table shard `worker` of several: expectations created here
    /// are announced in the outbox, and mirrors of other shards' are accepted.
    pub fn set_shard(&mut self, worker: u16) {
        self.shard = Some(worker);
        self.by_origin = std::collections::HashMap::with_capacity(self.exps.len());
        self.outbox.reserve(64);
    }

    /// This table's shard number, when it is one of several.
    pub fn shard(&self) -> Option<u16> {
        self.shard
    }

    /// Queues a message for the other shards (only when sharded).
    pub fn announce(&mut self, m: ExpectMsg) {
        if self.shard.is_some() {
            self.outbox.push(m);
        }
    }

    /// Moves the pending messages for the other shards into `out`.
    pub fn drain_outbox(&mut self, out: &mut Vec<ExpectMsg>) {
        out.append(&mut self.outbox);
    }

    /// Slot of the live expectation from `origin`.
    pub fn find_origin(&self, origin: Origin) -> Option<u32> {
        self.by_origin.get(&origin).copied()
    }

    /// Helper code (0 = none, else `HelperKind as u8 + 1`) of the helper that
    /// asked for slot `i`.
    pub fn helper_code(&self, i: u32) -> u8 {
        self.exps[i as usize].helper
    }

    /// Adds or refreshes the mirror of another shard's expectation.
    pub fn add_mirror(&mut self, origin: Origin, spec: &ExpectSpec, deadline: u64, now: u64) {
        if let Some(i) = self.find_origin(origin) {
            self.exps[i as usize].deadline = deadline;
            return;
        }
        let t = masked(&spec.tuple, spec.mask);
        let h = dst_hash(&t, &self.secret);
        let exps = &self.exps;
        let clash = self.index.find(h, |i| {
            let e = &exps[i as usize];
            (e.used && e.tuple == t && e.mask == spec.mask && e.deadline > now).then_some(i)
        });
        if clash.is_some() || self.free == NONE {
            self.stats.expect_refused += 1;
            return;
        }
        let i = self.free;
        self.free = self.exps[i as usize].next;
        self.exps[i as usize] = Exp {
            tuple: t,
            mask: spec.mask,
            used: true,
            permanent: spec.permanent,
            helper: code(Some(spec.helper)),
            child_helper: code(spec.child_helper),
            master: MIRROR,
            next: NONE,
            deadline,
            id: 0,
            origin,
        };
        self.index.insert(h, i);
        self.by_origin.insert(origin, i);
        self.count += 1;
    }

    /// Live expectations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if none is live.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The live expectation a new connection's first packet matches, if any.
    pub fn find(&self, t: &Tuple, now: u64) -> Option<u32> {
        let h = dst_hash(t, &self.secret);
        let exps = &self.exps;
        self.index.find(h, |i| {
            let e = &exps[i as usize];
            (e.used && e.deadline > now && masked(t, e.mask) == e.tuple).then_some(i)
        })
    }

    /// Master, child helper and permanence of expectation slot `i`.
    pub fn get(&self, i: u32) -> (u32, Option<HelperKind>, bool) {
        let e = &self.exps[i as usize];
        (e.master, helper_of(e.child_helper), e.permanent)
    }

    /// Adds an expectation for `master`, whose list head is `*head`. Applies the
    /// per-helper limit by evicting the master's oldest expectation.
    pub fn add(
        &mut self,
        master: u32,
        head: &mut u32,
        spec: &ExpectSpec,
        policy: ExpectPolicy,
        now: u64,
    ) -> Result<u32, ExpectError> {
        if spec.tuple.family != Family::V4 && spec.tuple.family != Family::V6 {
            return Err(ExpectError::Invalid);
        }
        let t = masked(&spec.tuple, spec.mask);
        let h = dst_hash(&t, &self.secret);
        // Clash: same tuple and mask already expected. Same master: refresh it
        // (the kernel replaces it); another master: refuse.
        let exps = &self.exps;
        if let Some(i) = self.index.find(h, |i| {
            let e = &exps[i as usize];
            (e.used && e.tuple == t && e.mask == spec.mask && e.deadline > now).then_some(i)
        }) {
            if self.exps[i as usize].master == master {
                let expires_in =
                    u64::from(spec.timeout.unwrap_or(policy.timeout)) * crate::timeouts::SEC;
                self.exps[i as usize].deadline = now + expires_in;
                if self.shard.is_some() {
                    self.outbox.push(ExpectMsg::Add {
                        origin: self.exps[i as usize].origin,
                        spec: ExpectSpec { tuple: t, ..*spec },
                        expires_in,
                    });
                }
                return Ok(self.exps[i as usize].id);
            }
            self.stats.expect_refused += 1;
            return Err(ExpectError::Clash);
        }
        // Per-master limit: evict the oldest (the tail of the newest-first list).
        let mut n = 0;
        let mut cur = *head;
        let mut oldest = NONE;
        while cur != NONE {
            n += 1;
            oldest = cur;
            cur = self.exps[cur as usize].next;
        }
        if policy.max_expected > 0 && n >= policy.max_expected && oldest != NONE {
            self.remove(oldest, head);
            self.stats.expect_evicted += 1;
        }
        if self.free == NONE {
            self.stats.expect_refused += 1;
            return Err(ExpectError::TableFull);
        }
        let i = self.free;
        self.free = self.exps[i as usize].next;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let origin = Origin {
            worker: self.shard.unwrap_or(0),
            id,
        };
        let expires_in = u64::from(spec.timeout.unwrap_or(policy.timeout)) * crate::timeouts::SEC;
        self.exps[i as usize] = Exp {
            tuple: t,
            mask: spec.mask,
            used: true,
            permanent: spec.permanent,
            helper: code(Some(spec.helper)),
            child_helper: code(spec.child_helper),
            master,
            next: *head,
            deadline: now + expires_in,
            id,
            origin,
        };
        *head = i;
        self.index.insert(h, i);
        self.count += 1;
        self.stats.expect_create += 1;
        if self.shard.is_some() {
            self.by_origin.insert(origin, i);
            self.outbox.push(ExpectMsg::Add {
                origin,
                spec: ExpectSpec { tuple: t, ..*spec },
                expires_in,
            });
        }
        Ok(id)
    }

    /// Removes expectation slot `i`, unlinking it from its master's list whose
    /// head is `*head` (lists hold at most `max_expected` items). When shared,
    /// the other shards are told.
    pub fn remove(&mut self, i: u32, head: &mut u32) {
        self.remove_as(i, head, true);
    }

    /// [`Self::remove`] without telling the other shards (expiry, which every
    /// shard sees by itself, and removals they asked for).
    pub fn remove_quiet(&mut self, i: u32, head: &mut u32) {
        self.remove_as(i, head, false);
    }

    fn remove_as(&mut self, i: u32, head: &mut u32, announce: bool) {
        if !self.exps.get(i as usize).is_some_and(|e| e.used) {
            return;
        }
        if *head == i {
            *head = self.exps[i as usize].next;
        } else {
            let mut cur = *head;
            while cur != NONE {
                let next = self.exps[cur as usize].next;
                if next == i {
                    self.exps[cur as usize].next = self.exps[i as usize].next;
                    break;
                }
                cur = next;
            }
        }
        self.free_slot(i, announce);
    }

    fn free_slot(&mut self, i: u32, announce: bool) {
        if self.shard.is_some() {
            let origin = self.exps[i as usize].origin;
            self.by_origin.remove(&origin);
            if announce {
                self.outbox.push(ExpectMsg::Remove { origin });
            }
        }
        let t = self.exps[i as usize].tuple;
        let h = dst_hash(&t, &self.secret);
        self.index.remove(h, i);
        let e = &mut self.exps[i as usize];
        e.used = false;
        e.next = self.free;
        self.free = i;
        self.count -= 1;
        self.stats.expect_delete += 1;
    }

    /// Removes every expectation of a master that is going away.
    pub fn remove_all(&mut self, head: u32) {
        let mut cur = head;
        while cur != NONE {
            let next = self.exps[cur as usize].next;
            self.free_slot(cur, true);
            cur = next;
        }
    }

    /// Master of expectation slot `i`.
    pub fn master_of(&self, i: u32) -> u32 {
        self.exps[i as usize].master
    }

    /// Slot of the live expectation with operator-visible `id`.
    pub fn find_id(&self, id: u32) -> Option<u32> {
        self.exps
            .iter()
            .position(|e| e.used && e.id == id)
            .and_then(|p| u32::try_from(p).ok())
    }

    /// Reaps up to `budget` slots' worth of expired expectations, continuing
    /// where the last call stopped. Expired ones never match anyway; this only
    /// returns their slots. Returns the (slot, master) pairs reaped so the caller
    /// can unlink them from their masters' lists with [`Self::remove`].
    pub fn expired_slots(&mut self, now: u64, budget: usize, out: &mut Vec<(u32, u32)>) {
        let n = self.exps.len();
        for _ in 0..budget.min(n) {
            self.sweep = (self.sweep + 1) % n;
            let e = &self.exps[self.sweep];
            if e.used && e.deadline <= now {
                #[allow(clippy::cast_possible_truncation)]
                out.push((self.sweep as u32, e.master));
            }
        }
    }

    /// Every live expectation, for listings; `master` resolves a master index to
    /// its tuple.
    pub fn list<'a>(
        &'a self,
        now: u64,
        master: impl Fn(u32) -> Tuple + 'a,
    ) -> impl Iterator<Item = ExpectInfo> + 'a {
        self.exps
            .iter()
            .filter(move |e| e.used && e.deadline > now && e.master != MIRROR)
            .map(move |e| ExpectInfo {
                id: e.id,
                tuple: e.tuple,
                mask: e.mask,
                helper: helper_of(e.helper),
                master: master(e.master),
                expires_in: e.deadline - now,
            })
    }
}
