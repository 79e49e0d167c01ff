//! Which shard (worker) owns a packet's connection when the table is split
//! over several workers. The owner is the queue a NIC's receive-side scaling
//! picks with the symmetric Toeplitz key (0x6d5a repeated) and the default
//! indirection table (128 entries, entry i -> queue i mod N): the same in
//! both directions, so a connection has exactly one owner, and on a NIC set
//! up that way (deploy/rss.sh) every packet already arrives on its owner's
//! queue. Whatever the NIC does, a worker that receives a packet owned by
//! another hands it over, so correctness never depends on the NIC. As NICs
//! do, TCP and UDP hash addresses and ports, everything else addresses only.
//! ICMP errors belong to the connection they quote. Non-first fragments
//! carry no ports: the owner of their first fragment is remembered in a
//! small lock-free table shared by all workers (a fragment whose first
//! fragment was never seen goes to the owner of its addresses, which counts
//! it as `fragment_no_first`, as one worker would).
//!
//! The owner hash is not secret (a NIC's is not either): the conntrack table
//! itself is indexed by a keyed hash, so crafted tuples can at worst load
//! one worker, never slow lookups down.

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

/// The symmetric RSS key: 0x6d5a repeated. With it the Toeplitz hash of
/// (src, dst, sport, dport) equals that of (dst, src, dport, sport).
pub const SYMMETRIC_RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
];

/// Entries of the RSS indirection table assumed (the common default).
pub const RSS_INDIRECTION: usize = 128;

/// Longest Toeplitz input: two IPv6 addresses and two ports.
const TOEPLITZ_MAX: usize = 36;

/// The Toeplitz hash of receive-side scaling, a byte at a time: one table of
/// 256 partial results per input byte position.
#[derive(Debug)]
pub struct Toeplitz {
    tables: Box<[[u32; 256]; TOEPLITZ_MAX]>,
}

impl Toeplitz {
    /// The hash with `key` (40 bytes, as NICs take it).
    pub fn new(key: &[u8; 40]) -> Toeplitz {
        let bit = |i: usize| u32::from(key[i / 8] >> (7 - i % 8) & 1);
        // The 32 key bits starting at bit `o`.
        let window = |o: usize| (0..32).fold(0u32, |w, j| w << 1 | bit(o + j));
        let mut tables = Box::new([[0u32; 256]; TOEPLITZ_MAX]);
        for (pos, t) in tables.iter_mut().enumerate() {
            let w: [u32; 8] = core::array::from_fn(|b| window(pos * 8 + b));
            for (byte, slot) in t.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|b| byte & (0x80 >> b) != 0)
                    .fold(0, |h, b| h ^ w[b]);
            }
        }
        Toeplitz { tables }
    }

    /// The partial hash of `byte` at input position `pos` (< 36): the hash
    /// of an input is the XOR of its bytes' partial hashes.
    pub fn hash_at(&self, pos: usize, byte: u8) -> u32 {
        self.tables.get(pos).map_or(0, |t| t[usize::from(byte)])
    }

    /// Hash of `input` (at most 36 bytes; more are ignored).
    pub fn hash(&self, input: &[u8]) -> u32 {
        input
            .iter()
            .zip(self.tables.iter())
            .fold(0, |h, (&b, t)| h ^ t[usize::from(b)])
    }
}

/// The sharding function of a set of workers.
#[derive(Debug)]
pub struct Sharding {
    workers: usize,
    secret: HashSecret,
    toeplitz: Toeplitz,
    frags: FragOwners,
}

/// Whether NICs hash this protocol's ports (TCP and UDP; the rest by address).
fn hashes_ports(proto: u8) -> bool {
    matches!(proto, ipproto::TCP | ipproto::UDP)
}

impl Sharding {
    /// Sharding over `workers` workers with a hash keyed by `secret`.
    pub fn new(workers: usize, secret: HashSecret) -> Sharding {
        Sharding {
            workers: workers.max(1),
            secret,
            toeplitz: Toeplitz::new(&SYMMETRIC_RSS_KEY),
            frags: FragOwners::default(),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The RSS hash a NIC computes for `t` (with TCP and UDP ports when
    /// `ports`).
    pub fn rss_hash(&self, t: &Tuple, ports: bool) -> u32 {
        let mut input = [0u8; TOEPLITZ_MAX];
        let n = match t.family {
            crate::tuple::Family::V4 => {
                // An IPv4 address sits in the low 32 bits.
                #[allow(clippy::cast_possible_truncation)]
                {
                    input[0..4].copy_from_slice(&(t.src.0 as u32).to_be_bytes());
                    input[4..8].copy_from_slice(&(t.dst.0 as u32).to_be_bytes());
                }
                8
            }
            crate::tuple::Family::V6 => {
                input[0..16].copy_from_slice(&t.src.0.to_be_bytes());
                input[16..32].copy_from_slice(&t.dst.0.to_be_bytes());
                32
            }
        };
        let n = if ports && hashes_ports(t.proto) {
            input[n..n + 2].copy_from_slice(&t.src_port.to_be_bytes());
            input[n + 2..n + 4].copy_from_slice(&t.dst_port.to_be_bytes());
            n + 4
        } else {
            n
        };
        self.toeplitz.hash(&input[..n])
    }

    /// The queue the default indirection table gives an RSS hash.
    fn pick(&self, h: u32) -> usize {
        (h as usize % RSS_INDIRECTION) % self.workers
    }

    /// Owner of the connection with tuple `t` (either direction).
    pub fn owner_of_tuple(&self, t: &Tuple) -> usize {
        self.pick(self.rss_hash(t, true))
    }

    fn addr_owner(&self, t: &Tuple) -> usize {
        self.pick(self.rss_hash(t, false))
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

    /// The verification vectors of Microsoft's RSS specification.
    #[test]
    fn toeplitz_matches_the_rss_specification() {
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        let t = Toeplitz::new(&key);
        // 66.9.149.187:2794 -> 161.142.100.80:1766
        let mut v = vec![66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(t.hash(&v), 0x323e_8fc2);
        v.extend_from_slice(&[0x0a, 0xea, 0x06, 0xe6]);
        assert_eq!(t.hash(&v), 0x51cc_c178);
        // 199.92.111.2:14230 -> 65.69.140.83:4739
        let v = [199, 92, 111, 2, 65, 69, 140, 83, 0x37, 0x96, 0x12, 0x83];
        assert_eq!(t.hash(&v[..8]), 0xd718_262a);
        assert_eq!(t.hash(&v), 0xc626_b0ea);
        // IPv6: 3ffe:2501:200:1fff::7:2794 -> 3ffe:2501:200:3::1:1766
        let mut v6 = [0u8; 36];
        v6[..16].copy_from_slice(&[
            0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 7,
        ]);
        v6[16..32].copy_from_slice(&[
            0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1,
        ]);
        v6[32..].copy_from_slice(&[0x0a, 0xea, 0x06, 0xe6]);
        assert_eq!(t.hash(&v6[..32]), 0x2cc1_8cd5);
        assert_eq!(t.hash(&v6), 0x4020_7d3d);
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
