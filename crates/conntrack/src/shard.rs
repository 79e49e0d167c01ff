//! Which shard (worker) owns a packet's connection when the table is split
//! over several workers. The owner is a keyed hash of the connection that is
//! the same in both directions, so a connection has exactly one owner
//! whatever queue its packets arrive on; a worker that receives a packet
//! owned by another hands it over. ICMP errors belong to the connection they
//! quote. Non-first fragments carry no ports: the owner of their first
//! fragment is remembered in a small lock-free table shared by all workers
//! (a fragment whose first fragment was never seen goes to the owner of its
//! addresses, which counts it as `fragment_no_first`, as one worker would).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::expect::ExpectMsg;
use crate::packet::{self, Icmp, Packet, ParseError, ParseOptions, L4};
use crate::pipeline::{PacketResult, Pipeline};
use crate::policy::{Policy, Side};
use crate::table::Config;
use crate::tuple::{ipproto, keyed_hash, HashSecret, Tuple};

/// Slots of the fragment-owner table (a power of two).
const FRAG_SLOTS: usize = 4096;

/// Owners of recent first fragments, shared by every worker: one atomic word
/// per slot, `tag << 16 | owner + 1`; a clash overwrites (the fragment then
/// goes to the owner of its addresses and is counted there).
#[derive(Debug)]
pub struct FragOwners {
    slots: Box<[AtomicU64]>,
}

impl Default for FragOwners {
    fn default() -> Self {
        FragOwners {
            slots: (0..FRAG_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FragOwners {
    fn record(&self, key: u64, owner: usize) {
        let slot = key as usize & (FRAG_SLOTS - 1);
        let tag = key >> 16;
        let v = (tag << 16) | (owner as u64 + 1) & 0xffff;
        self.slots[slot].store(v, Ordering::Relaxed);
    }

    fn lookup(&self, key: u64) -> Option<usize> {
        let slot = key as usize & (FRAG_SLOTS - 1);
        let v = self.slots[slot].load(Ordering::Relaxed);
        let owner = (v & 0xffff) as usize;
        (owner != 0 && v >> 16 == key >> 16).then(|| owner - 1)
    }
}

/// The sharding function of a set of workers.
#[derive(Debug)]
pub struct Sharding {
    workers: usize,
    secret: HashSecret,
    frags: FragOwners,
}

/// The words hashed for a connection: its two (address, port) ends in a
/// fixed order, so both directions give the same words.
fn sym_words(t: &Tuple, ports: (u16, u16)) -> [u64; 5] {
    let a = (t.src.0, ports.0);
    let b = (t.dst.0, ports.1);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // Truncations split 128-bit addresses into words.
    #[allow(clippy::cast_possible_truncation)]
    [
        (lo.0 >> 64) as u64,
        lo.0 as u64,
        (hi.0 >> 64) as u64,
        hi.0 as u64,
        u64::from(lo.1)
            | u64::from(hi.1) << 16
            | u64::from(t.proto) << 32
            | (t.family as u64) << 40,
    ]
}

/// Ports that identify a connection of `t.proto` the same way both ways.
fn sym_ports(t: &Tuple) -> (u16, u16) {
    match t.proto {
        ipproto::TCP | ipproto::UDP | ipproto::SCTP | ipproto::UDPLITE | ipproto::DCCP => {
            (t.src_port, t.dst_port)
        }
        // Echo id, the same in request and reply (the type is not).
        ipproto::ICMP | ipproto::ICMPV6 => (t.src_port, t.src_port),
        // GRE keys differ per direction; other protocols have no ports.
        _ => (0, 0),
    }
}

impl Sharding {
    /// Sharding over `workers` workers with a hash keyed by `secret`.
    pub fn new(workers: usize, secret: HashSecret) -> Sharding {
        Sharding {
            workers: workers.max(1),
            secret,
            frags: FragOwners::default(),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn pick(&self, h: u64) -> usize {
        // Multiply-shift: uniform over the workers without a division.
        ((u128::from(h) * self.workers as u128) >> 64) as usize
    }

    /// Owner of the connection with tuple `t` (either direction).
    pub fn owner_of_tuple(&self, t: &Tuple) -> usize {
        self.pick(keyed_hash(&self.secret, &sym_words(t, sym_ports(t))))
    }

    fn addr_owner(&self, t: &Tuple) -> usize {
        self.pick(keyed_hash(&self.secret, &sym_words(t, (0, 0))))
    }

    fn frag_key(&self, t: &Tuple, id: u32) -> u64 {
        #[allow(clippy::cast_possible_truncation)]
        let words = [
            (t.src.0 >> 64) as u64,
            t.src.0 as u64,
            (t.dst.0 >> 64) as u64,
            t.dst.0 as u64,
            u64::from(id) | u64::from(t.proto) << 32 | (t.family as u64) << 40 | 1 << 48,
        ];
        keyed_hash(&self.secret, &words)
    }

    /// Owner of a parsed packet; records the owner of a first fragment so
    /// the later fragments follow it.
    pub fn owner_of(&self, pkt: &Packet<'_>) -> usize {
        if self.workers == 1 {
            return 0;
        }
        if let L4::Icmp(Icmp::Error { inner }) = pkt.l4 {
            return self.owner_of_tuple(&inner);
        }
        match pkt.frag {
            Some(f) if f.offset != 0 => self
                .frags
                .lookup(self.frag_key(&pkt.tuple, f.id))
                .filter(|&w| w < self.workers)
                .unwrap_or_else(|| self.addr_owner(&pkt.tuple)),
            Some(f) => {
                let o = self.owner_of_tuple(&pkt.tuple);
                if f.more {
                    self.frags.record(self.frag_key(&pkt.tuple, f.id), o);
                }
                o
            }
            None => self.owner_of_tuple(&pkt.tuple),
        }
    }

    /// Owner of an IP packet (from its IP header on). A packet too broken to
    /// parse has no owner (`None`): the receiving worker judges it alone.
    pub fn owner(&self, l3: &[u8]) -> Option<usize> {
        if self.workers == 1 {
            return Some(0);
        }
        match packet::parse(l3, ParseOptions { checksum: false }) {
            Ok(p) => Some(self.owner_of(&p)),
            Err(ParseError::Invalid { tuple, .. }) => Some(self.addr_owner(&tuple)),
            Err(ParseError::Malformed(_)) => None,
        }
    }
}

/// Several shards in one thread: the many-core dataplane's semantics without
/// its threads and queues, for replays and tests. A packet received by one
/// worker is handed to its owner; before processing, the owner applies the
/// expectation messages the others sent; after, its own messages are
/// delivered, before the packet would be forwarded (as the workers do).
pub struct Shards {
    sharding: Sharding,
    pipes: Vec<Pipeline>,
    inbox: Vec<Vec<ExpectMsg>>,
    out: Vec<ExpectMsg>,
    /// Packets handed from the receiving worker to another.
    pub handoffs: u64,
    /// Expectation messages delivered (one per receiving shard).
    pub messages: u64,
}

impl Shards {
    /// `workers` shards with the same configuration and policy.
    pub fn new(workers: usize, cfg: &Config, policy: &Policy) -> Shards {
        let workers = workers.max(1);
        let pipes = (0..workers)
            .map(|i| {
                let mut p = Pipeline::new(cfg.clone(), policy.clone());
                if workers > 1 {
                    // At most 65 536 workers: the origin field is 16 bits.
                    #[allow(clippy::cast_possible_truncation)]
                    p.conntrack_mut().set_shard(i as u16);
                }
                p
            })
            .collect();
        Shards {
            sharding: Sharding::new(workers, cfg.hash_secret),
            pipes,
            inbox: vec![Vec::new(); workers],
            out: Vec::new(),
            handoffs: 0,
            messages: 0,
        }
    }

    /// Number of shards.
    pub fn workers(&self) -> usize {
        self.pipes.len()
    }

    /// The owner of an IP packet, if it can be told.
    pub fn owner(&self, l3: &[u8]) -> Option<usize> {
        self.sharding.owner(l3)
    }

    /// Shard `i`'s pipeline.
    pub fn pipeline(&self, i: usize) -> &Pipeline {
        &self.pipes[i]
    }

    /// Processes an IP packet that worker `rx` received on `side`. Returns
    /// the worker that processed it and the result.
    pub fn process(&mut self, rx: usize, side: Side, l3: &[u8], now: u64) -> (usize, PacketResult) {
        let rx = rx.min(self.pipes.len() - 1);
        let owner = self.sharding.owner(l3).unwrap_or(rx);
        if owner != rx {
            self.handoffs += 1;
        }
        // Every worker reaps its timers as time passes, whether or not it
        // receives packets; what its reaping removes is announced.
        if self.pipes.len() > 1 {
            for w in 0..self.pipes.len() {
                self.pipes[w].conntrack_mut().expire(now);
                self.post(w);
            }
        }
        self.deliver(owner, now);
        let r = self.pipes[owner].process(side, l3, now);
        self.post(owner);
        (owner, r)
    }

    /// Applies what the other shards sent to shard `w`.
    fn deliver(&mut self, w: usize, now: u64) {
        for m in self.inbox[w].drain(..) {
            self.pipes[w].conntrack_mut().apply_expect_msg(&m, now);
        }
    }

    /// Sends shard `w`'s pending messages to every other shard.
    fn post(&mut self, w: usize) {
        self.pipes[w]
            .conntrack_mut()
            .drain_expect_msgs(&mut self.out);
        if self.out.is_empty() {
            return;
        }
        for (i, q) in self.inbox.iter_mut().enumerate() {
            if i != w {
                q.extend_from_slice(&self.out);
                self.messages += self.out.len() as u64;
            }
        }
        self.out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Pkt;
    use crate::tuple::Family;
    use proptest::prelude::*;

    fn sh(n: usize) -> Sharding {
        Sharding::new(n, HashSecret(3, 5))
    }

    #[test]
    fn both_directions_have_one_owner_and_load_spreads() {
        let s = sh(4);
        let mut per = [0usize; 4];
        for port in 1000..3000u16 {
            let a = Pkt::udp4([10, 0, 0, 1], port, [192, 0, 2, 1], 53).build();
            let b = Pkt::udp4([192, 0, 2, 1], 53, [10, 0, 0, 1], port).build();
            let o = s.owner(&a).unwrap();
            assert_eq!(Some(o), s.owner(&b));
            per[o] += 1;
        }
        // 2000 flows over 4 workers: each gets a fair share.
        assert!(per.iter().all(|&n| (350..650).contains(&n)), "{per:?}");
        // One worker owns everything.
        let one = sh(1);
        let a = Pkt::udp4([10, 0, 0, 1], 1, [192, 0, 2, 1], 53).build();
        assert_eq!(one.owner(&a), Some(0));
    }

    #[test]
    fn icmp_echo_and_errors_follow_their_connection() {
        let s = sh(8);
        let req = Pkt::echo4([10, 0, 0, 1], [192, 0, 2, 1], 77, 1, false).build();
        let rep = Pkt::echo4([192, 0, 2, 1], [10, 0, 0, 1], 77, 1, true).build();
        assert_eq!(s.owner(&req), s.owner(&rep));
        // An error from a router about a UDP flow belongs to that flow.
        let flow = Pkt::udp4([10, 0, 0, 1], 4000, [192, 0, 2, 1], 53).build();
        let err = Pkt::icmp4([198, 51, 100, 1], [10, 0, 0, 1], 3, 3, &flow).build();
        assert_eq!(s.owner(&err), s.owner(&flow));
    }

    #[test]
    fn fragments_follow_their_first_fragment() {
        let s = sh(8);
        for id in 0..200u16 {
            let p = Pkt::udp4([10, 0, 0, 1], 5000 + id, [192, 0, 2, 1], 53)
                .payload(&[7; 64])
                .ip_id(id);
            let whole = p.build();
            let frags = p.build_fragments(24);
            assert!(frags.len() >= 2);
            let first = s.owner(&frags[0]).unwrap();
            assert_eq!(first, s.owner(&whole).unwrap());
            for f in &frags[1..] {
                assert_eq!(s.owner(f), Some(first), "fragment of id {id}");
            }
        }
    }

    proptest! {
        /// Any tuple: both directions, any worker count, the same owner in range.
        #[test]
        fn owner_is_symmetric(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, proto in prop::sample::select(vec![6u8, 17, 132, 47, 50]), n in 1usize..16) {
            let s = sh(n);
            let t = Tuple { src: crate::tuple::Addr::v4(src), dst: crate::tuple::Addr::v4(dst), src_port: sp, dst_port: dp, proto, family: Family::V4 };
            let o = s.owner_of_tuple(&t);
            prop_assert!(o < n);
            prop_assert_eq!(o, s.owner_of_tuple(&t.invert()));
        }

        /// Arbitrary bytes: an owner in range or none, never a panic.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Some(o) = sh(3).owner(&bytes) {
                prop_assert!(o < 3);
            }
        }
    }
}
