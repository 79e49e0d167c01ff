//! Connection tuples, the kernel's `nf_conntrack_tuple`.
//!
//! A [`Tuple`] names one direction of a flow: L3 family, addresses, L4 protocol
//! and the protocol's "ports". An entry stores only its original tuple; the reply
//! tuple is [`Tuple::invert`]ed on demand (Tollgate does no NAT, so the reply is
//! always the exact inverse).
//!
//! Port fields by protocol, as in the kernel:
//! - TCP, UDP, UDP-Lite, SCTP, DCCP: source and destination ports;
//! - ICMP and ICMPv6: `src_port` is the echo identifier, `dst_port` holds
//!   `type << 8 | code`;
//! - GRE (PPTP): `src_port`/`dst_port` are the call ids (keys);
//! - anything else: both zero (generic tracking by addresses only).

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers Tollgate knows by name.
pub mod ipproto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// DCCP.
    pub const DCCP: u8 = 33;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;
}

/// Address family of a tuple.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub enum Family {
    /// IPv4: the address occupies the low 32 bits of [`Addr`].
    #[default]
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// An IPv4 or IPv6 address stored as 128 bits (IPv4 in the low 32 bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub struct Addr(pub u128);

impl Addr {
    /// IPv4 address from its 4 network-order bytes.
    pub fn v4(b: [u8; 4]) -> Self {
        Addr(u128::from(u32::from_be_bytes(b)))
    }
    /// IPv6 address from its 16 network-order bytes.
    pub fn v6(b: [u8; 16]) -> Self {
        Addr(u128::from_be_bytes(b))
    }
    /// The address as a `std` value for display.
    pub fn to_ip(self, family: Family) -> IpAddr {
        match family {
            // Truncation is the point: an IPv4 address lives in the low 32 bits.
            #[allow(clippy::cast_possible_truncation)]
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.0 as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.0)),
        }
    }
    /// From a `std` address.
    pub fn from_ip(ip: IpAddr) -> (Family, Self) {
        match ip {
            IpAddr::V4(a) => (Family::V4, Addr(u128::from(u32::from(a)))),
            IpAddr::V6(a) => (Family::V6, Addr(u128::from(a))),
        }
    }
}

/// One direction of a flow.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Tuple {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port, ICMP echo id or GRE key (see the module doc).
    pub src_port: u16,
    /// Destination port, ICMP `type << 8 | code` or GRE key.
    pub dst_port: u16,
    /// IP protocol number of the L4 header.
    pub proto: u8,
    /// Address family.
    pub family: Family,
}

/// Which way a packet travels relative to the entry that tracks it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Direction {
    /// Same direction as the packet that created the entry.
    Original = 0,
    /// The other way.
    Reply = 1,
}

impl Direction {
    /// The opposite direction.
    pub fn flip(self) -> Self {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }
    /// 0 for original, 1 for reply: an index into per-direction arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// ICMP type that answers `ty`, for the query/response pairs the kernel tracks
/// (`invmap` in nf_conntrack_proto_icmp.c). `None` when `ty` starts no tracked
/// exchange.
pub fn icmp_inverse_type(ty: u8) -> Option<u8> {
    Some(match ty {
        8 => 0, // echo request -> reply
        0 => 8,
        13 => 14, // timestamp
        14 => 13,
        15 => 16, // information
        16 => 15,
        17 => 18, // address mask
        18 => 17,
        _ => return None,
    })
}

/// ICMPv6 counterpart of [`icmp_inverse_type`] (`invmap` in nf_conntrack_proto_icmpv6.c).
pub fn icmpv6_inverse_type(ty: u8) -> Option<u8> {
    Some(match ty {
        128 => 129, // echo request -> reply
        129 => 128,
        139 => 140, // node information query -> response
        140 => 139,
        _ => return None,
    })
}

/// True for ICMP(v6) types that may open a new entry (the kernel's `valid_new`).
pub fn icmp_type_opens(family: Family, ty: u8) -> bool {
    match family {
        Family::V4 => matches!(ty, 8 | 13 | 15 | 17),
        Family::V6 => matches!(ty, 128 | 139),
    }
}

impl Tuple {
    /// True when the L4 protocol is ICMP for IPv4 or ICMPv6 for IPv6.
    pub fn is_icmp(&self) -> bool {
        matches!(
            (self.family, self.proto),
            (Family::V4, ipproto::ICMP) | (Family::V6, ipproto::ICMPV6)
        )
    }

    /// ICMP type of an ICMP tuple.
    pub fn icmp_type(&self) -> u8 {
        self.dst_port.to_be_bytes()[0]
    }

    /// ICMP code of an ICMP tuple.
    pub fn icmp_code(&self) -> u8 {
        self.dst_port.to_be_bytes()[1]
    }

    /// The tuple of the opposite direction (`nf_ct_invert_tuple`). For ICMP the type
    /// maps to its answer; a type without one keeps its value, as such tuples never
    /// reach the table.
    #[must_use]
    pub fn invert(&self) -> Tuple {
        if self.is_icmp() {
            let ty = self.icmp_type();
            let inv = match self.family {
                Family::V4 => icmp_inverse_type(ty),
                Family::V6 => icmpv6_inverse_type(ty),
            }
            .unwrap_or(ty);
            return Tuple {
                src: self.dst,
                dst: self.src,
                src_port: self.src_port,
                dst_port: u16::from_be_bytes([inv, self.icmp_code()]),
                ..*self
            };
        }
        Tuple {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }

    /// The direction-free key both directions of a flow share: the lookup index
    /// and the worker steering hash use it, so a packet and its reply find the same
    /// slot (and the same core) without a second index entry.
    pub fn key(&self) -> FlowKey {
        self.key_inner()
    }

    /// `self.key().hash(secret)`, without building the key for IPv4 TCP and
    /// UDP (the packet path's common case): the two endpoints as 48-bit
    /// numbers (address above port) ordered by one comparison.
    #[inline(always)]
    pub fn flow_hash(&self, secret: &HashSecret) -> u64 {
        self.flow_hash_keyed(&secret.keys())
    }

    /// [`Self::flow_hash`] with the secret's constants already derived.
    #[inline(always)]
    pub fn flow_hash_keyed(&self, keys: &HashKeys) -> u64 {
        if self.family == Family::V4 && !self.is_icmp() {
            // Truncations keep the IPv4 address (the low 32 bits).
            #[allow(clippy::cast_possible_truncation)]
            let a = u64::from(self.src.0 as u32) << 16 | u64::from(self.src_port);
            #[allow(clippy::cast_possible_truncation)]
            let b = u64::from(self.dst.0 as u32) << 16 | u64::from(self.dst_port);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            return fold_hash_keyed(keys, &[lo | v4_meta(self.proto), hi]);
        }
        self.key().hash_keyed(keys)
    }

    #[inline(always)]
    fn key_inner(&self) -> FlowKey {
        if self.is_icmp() {
            // Both directions carry the same id; the type pair is implied by the id
            // exchange. Requests and replies share one key.
            let (a, b) = if self.src <= self.dst {
                (self.src, self.dst)
            } else {
                (self.dst, self.src)
            };
            return FlowKey {
                lo: a,
                hi: b,
                lo_port: self.src_port,
                hi_port: self.src_port,
                proto: self.proto,
                family: self.family,
            };
        }
        if (self.src, self.src_port) <= (self.dst, self.dst_port) {
            FlowKey {
                lo: self.src,
                hi: self.dst,
                lo_port: self.src_port,
                hi_port: self.dst_port,
                proto: self.proto,
                family: self.family,
            }
        } else {
            FlowKey {
                lo: self.dst,
                hi: self.src,
                lo_port: self.dst_port,
                hi_port: self.src_port,
                proto: self.proto,
                family: self.family,
            }
        }
    }
}

/// A direction-free flow key (see [`Tuple::key`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowKey {
    /// The smaller endpoint's address.
    pub lo: Addr,
    /// The larger endpoint's address.
    pub hi: Addr,
    /// The smaller endpoint's port.
    pub lo_port: u16,
    /// The larger endpoint's port.
    pub hi_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Family.
    pub family: Family,
}

impl FlowKey {
    /// Keyed hash of the key with the table's secret, the same for both
    /// directions of a flow. IPv4 keys hash two words (each endpoint as a
    /// 48-bit number, address above port, the smaller one with the
    /// protocol above it), IPv6 keys five.
    #[inline]
    pub fn hash(&self, secret: &HashSecret) -> u64 {
        self.hash_keyed(&secret.keys())
    }

    /// [`Self::hash`] with the secret's constants already derived.
    #[inline]
    pub fn hash_keyed(&self, keys: &HashKeys) -> u64 {
        if self.family == Family::V4 {
            // Truncations keep the IPv4 addresses (the low 32 bits).
            #[allow(clippy::cast_possible_truncation)]
            let (lo, hi) = (self.lo.0 as u32, self.hi.0 as u32);
            let lo = u64::from(lo) << 16 | u64::from(self.lo_port);
            let hi = u64::from(hi) << 16 | u64::from(self.hi_port);
            return fold_hash_keyed(keys, &[lo | v4_meta(self.proto), hi]);
        }
        let meta = u64::from(self.lo_port)
            | u64::from(self.hi_port) << 16
            | u64::from(self.proto) << 32
            | (self.family as u64) << 40;
        // Truncations split 128-bit addresses into words.
        #[allow(clippy::cast_possible_truncation)]
        fold_hash_keyed(
            keys,
            &[
                (self.lo.0 >> 64) as u64,
                self.lo.0 as u64,
                (self.hi.0 >> 64) as u64,
                self.hi.0 as u64,
                meta,
            ],
        )
    }
}

/// An IPv4 key's protocol and family, above the smaller endpoint's 48 bits.
#[inline(always)]
fn v4_meta(proto: u8) -> u64 {
    u64::from(proto) << 48 | (Family::V4 as u64) << 56
}

/// The 128-bit product of `a` and `b` with its halves xored together: every
/// bit of the result depends on every bit of both inputs.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    // Truncation splits the product into its halves.
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (p as u64, (p >> 64) as u64);
    lo ^ hi
}

/// The flow index's keyed hash: a chain of folded multiplies over pairs of
/// words (the construction of foldhash, hashbrown's default hasher), each
/// step mixing in the secret and the previous step, then one more to finish.
/// Two multiplies for an IPv4 key against SipHash-1-3's six rounds: about a
/// tenth of the instructions. Keyed like SipHash, so colliding tuples cannot
/// be crafted without the secret (`crafted_collisions_do_not_survive_another_secret`);
/// unlike SipHash it is no proven PRF, which the index, a secret-keyed table
/// whose hashes never leave the process, does not need.
#[inline(always)]
pub fn fold_hash(secret: &HashSecret, words: &[u64]) -> u64 {
    fold_hash_keyed(&secret.keys(), words)
}

/// [`fold_hash`] with the secret's constants already derived (a table
/// derives them once, not per packet).
#[inline(always)]
pub fn fold_hash_keyed(keys: &HashKeys, words: &[u64]) -> u64 {
    let mut h = keys.h0;
    let mut pairs = words.chunks_exact(2);
    for p in &mut pairs {
        h = fold_mul(p[0] ^ h, p[1] ^ keys.k);
    }
    if let [last] = pairs.remainder() {
        h = fold_mul(last ^ h, keys.k_odd);
    }
    fold_mul(h ^ 0x082e_fa98_ec4e_6c89, keys.k_fin)
}

/// What [`fold_hash`] derives from a [`HashSecret`]: the secret's words
/// mixed with constants (the digits of pi, as in foldhash, so that a zero
/// secret still mixes well).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKeys {
    h0: u64,
    k: u64,
    k_odd: u64,
    k_fin: u64,
}

impl HashSecret {
    /// The constants [`fold_hash`] uses with this secret.
    #[inline(always)]
    pub fn keys(&self) -> HashKeys {
        let k = self.1 ^ 0x1319_8a2e_0370_7344;
        HashKeys {
            h0: self.0 ^ 0x243f_6a88_85a3_08d3,
            k,
            k_odd: k ^ 0xa409_3822_299f_31d0,
            k_fin: k ^ 0x4528_21e6_38d0_1377,
        }
    }
}

/// SipHash-1-3 over whole 64-bit words, keyed with `secret`: one compression
/// round per word and no byte buffering (the `Hasher` trait's byte-stream path
/// costs several times more for the same words). Used for the core's other
/// tables (expectations, fragments, per-source counts) and for steering, so a
/// flood of crafted tuples cannot target buckets without the secret; the
/// connection index uses the cheaper [`fold_hash`].
#[inline]
pub fn keyed_hash(secret: &HashSecret, words: &[u64]) -> u64 {
    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut v = [
        secret.0 ^ 0x736f_6d65_7073_6575,
        secret.1 ^ 0x646f_7261_6e64_6f6d,
        secret.0 ^ 0x6c79_6765_6e65_7261,
        secret.1 ^ 0x7465_6462_7974_6573,
    ];
    for &m in words {
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
    }
    // Length block, as SipHash appends the message length.
    let b = (words.len() as u64 * 8) << 56;
    v[3] ^= b;
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The secret that keys the table hash, chosen at start-up by the caller (the core
/// never reads a random source itself, so tests stay deterministic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashSecret(pub u64, pub u64);

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = self.src.to_ip(self.family);
        let dst = self.dst.to_ip(self.family);
        if self.is_icmp() {
            write!(
                f,
                "src={src} dst={dst} type={} code={} id={}",
                self.icmp_type(),
                self.icmp_code(),
                self.src_port
            )
        } else {
            write!(
                f,
                "src={src} dst={dst} sport={} dport={}",
                self.src_port, self.dst_port
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        (
            any::<bool>(),
            any::<u128>(),
            any::<u128>(),
            any::<u16>(),
            any::<u16>(),
            prop_oneof![
                Just(6u8),
                Just(17),
                Just(1),
                Just(58),
                Just(47),
                any::<u8>()
            ],
        )
            .prop_map(|(v6, s, d, sp, dp, proto)| {
                let (family, mask) = if v6 {
                    (Family::V6, u128::MAX)
                } else {
                    (Family::V4, u128::from(u32::MAX))
                };
                let proto = match (family, proto) {
                    (Family::V4, 58) => 1,
                    (Family::V6, 1) => 58,
                    (_, p) => p,
                };
                let mut t = Tuple {
                    src: Addr(s & mask),
                    dst: Addr(d & mask),
                    src_port: sp,
                    dst_port: dp,
                    proto,
                    family,
                };
                if t.is_icmp() {
                    // Only query types have an inverse; keep those.
                    let ty = match family {
                        Family::V4 => [8u8, 0, 13, 14, 15, 16, 17, 18][usize::from(dp % 8)],
                        Family::V6 => [128u8, 129, 139, 140][usize::from(dp % 4)],
                    };
                    t.dst_port = u16::from_be_bytes([ty, 0]);
                }
                t
            })
    }

    proptest! {
        #[test]
        fn invert_is_an_involution(t in arb_tuple()) {
            prop_assert_eq!(t.invert().invert(), t);
        }

        #[test]
        fn both_directions_share_key_and_hash(t in arb_tuple(), k0 in any::<u64>(), k1 in any::<u64>()) {
            let s = HashSecret(k0, k1);
            prop_assert_eq!(t.key(), t.invert().key());
            prop_assert_eq!(t.key().hash(&s), t.invert().key().hash(&s));
        }

        #[test]
        fn flow_hash_is_the_keys_hash(t in arb_tuple(), k0 in any::<u64>(), k1 in any::<u64>()) {
            let s = HashSecret(k0, k1);
            prop_assert_eq!(t.flow_hash(&s), t.key().hash(&s));
            prop_assert_eq!(t.flow_hash(&s), t.invert().flow_hash(&s));
        }
    }

    #[test]
    fn icmp_echo_inverts_type() {
        let t = Tuple {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            src_port: 77,
            dst_port: 8 << 8,
            proto: ipproto::ICMP,
            family: Family::V4,
        };
        let r = t.invert();
        assert_eq!(r.icmp_type(), 0);
        assert_eq!(r.src_port, 77);
        assert_eq!(r.src, t.dst);
        assert_eq!(
            format!("{t}"),
            "src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=77"
        );
    }

    #[test]
    fn keyed_hash_is_siphash13() {
        use core::hash::Hasher;
        for words in [&[][..], &[1u64][..], &[0xdead_beef, 7, u64::MAX, 0, 42][..]] {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(11, 22);
            for w in words {
                h.write(&w.to_le_bytes());
            }
            assert_eq!(keyed_hash(&HashSecret(11, 22), words), h.finish());
        }
    }

    #[test]
    fn different_secrets_hash_differently() {
        let t = Tuple {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            src_port: 1000,
            dst_port: 80,
            proto: ipproto::TCP,
            family: Family::V4,
        };
        assert_ne!(
            t.key().hash(&HashSecret(1, 2)),
            t.key().hash(&HashSecret(3, 4))
        );
    }
}
