//! Builds valid packets (IP header onward, correct checksums) for tests,
//! benches and fuzz seeds. Allocation is fine here: this is never on the
//! packet path.
//!
//! ```
//! use conntrack::build::Pkt;
//! use conntrack::packet::tcp_flags::SYN;
//! let syn = Pkt::tcp4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80).flags(SYN).seq(7).wscale(7).build();
//! assert!(conntrack::packet::parse(&syn, Default::default()).is_ok());
//! ```

use crate::packet::tcp_flags;
use crate::tuple::ipproto;

#[derive(Clone, Debug)]
enum L3 {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

#[derive(Clone, Debug)]
enum Body {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6: type, code, the 4 "rest of header" bytes.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
    },
    Raw {
        proto: u8,
    },
}

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Pkt {
    l3: L3,
    body: Body,
    payload: Vec<u8>,
    ttl: u8,
    ip_id: u16,
    /// (offset in bytes, more fragments) for IPv4 fragments.
    frag: Option<(u16, bool)>,
    /// Raw IPv6 extension headers placed before the upper layer: (next header
    /// value identifying each, bytes).
    ext: Vec<(u8, Vec<u8>)>,
    bad_csum: bool,
}

impl Pkt {
    fn new(l3: L3, body: Body) -> Pkt {
        Pkt {
            l3,
            body,
            payload: Vec::new(),
            ttl: 64,
            ip_id: 1,
            frag: None,
            ext: Vec::new(),
            bad_csum: false,
        }
    }

    /// IPv4 TCP (flags default to ACK, window 65535).
    pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Pkt {
        Pkt::new(L3::V4 { src, dst }, tcp_body(sport, dport))
    }

    /// IPv6 TCP.
    pub fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Pkt {
        Pkt::new(L3::V6 { src, dst }, tcp_body(sport, dport))
    }

    /// IPv4 UDP.
    pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Pkt {
        Pkt::new(L3::V4 { src, dst }, Body::Udp { sport, dport })
    }

    /// IPv6 UDP.
    pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Pkt {
        Pkt::new(L3::V6 { src, dst }, Body::Udp { sport, dport })
    }

    /// ICMP echo request (`reply = false`) or reply.
    pub fn echo4(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16, reply: bool) -> Pkt {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        let ty = if reply { 0 } else { 8 };
        Pkt::new(
            L3::V4 { src, dst },
            Body::Icmp {
                ty,
                code: 0,
                rest: [a, b, c, d],
            },
        )
    }

    /// ICMPv6 echo request or reply.
    pub fn echo6(src: [u8; 16], dst: [u8; 16], id: u16, seq: u16, reply: bool) -> Pkt {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        let ty = if reply { 129 } else { 128 };
        Pkt::new(
            L3::V6 { src, dst },
            Body::Icmp {
                ty,
                code: 0,
                rest: [a, b, c, d],
            },
        )
    }

    /// Any ICMP message; `quoted` becomes its payload (for errors: the start of
    /// the offending packet, e.g. another built packet).
    pub fn icmp4(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, quoted: &[u8]) -> Pkt {
        Pkt::new(
            L3::V4 { src, dst },
            Body::Icmp {
                ty,
                code,
                rest: [0; 4],
            },
        )
        .payload(quoted)
    }

    /// Any ICMPv6 message (see [`Pkt::icmp4`]).
    pub fn icmp6(src: [u8; 16], dst: [u8; 16], ty: u8, code: u8, quoted: &[u8]) -> Pkt {
        Pkt::new(
            L3::V6 { src, dst },
            Body::Icmp {
                ty,
                code,
                rest: [0; 4],
            },
        )
        .payload(quoted)
    }

    /// IPv4 packet of another protocol with a raw payload.
    pub fn raw4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Pkt {
        Pkt::new(L3::V4 { src, dst }, Body::Raw { proto })
    }

    /// TCP flags.
    #[must_use]
    pub fn flags(mut self, f: u8) -> Pkt {
        if let Body::Tcp { flags, .. } = &mut self.body {
            *flags = f;
        }
        self
    }

    /// TCP sequence number.
    #[must_use]
    pub fn seq(mut self, v: u32) -> Pkt {
        if let Body::Tcp { seq, .. } = &mut self.body {
            *seq = v;
        }
        self
    }

    /// TCP acknowledgement number.
    #[must_use]
    pub fn ack(mut self, v: u32) -> Pkt {
        if let Body::Tcp { ack, .. } = &mut self.body {
            *ack = v;
        }
        self
    }

    /// TCP window field.
    #[must_use]
    pub fn window(mut self, v: u16) -> Pkt {
        if let Body::Tcp { window, .. } = &mut self.body {
            *window = v;
        }
        self
    }

    /// Adds a TCP window-scale option.
    #[must_use]
    pub fn wscale(self, s: u8) -> Pkt {
        self.tcp_option(&[3, 3, s])
    }

    /// Adds a TCP SACK-permitted option.
    #[must_use]
    pub fn sack_perm(self) -> Pkt {
        self.tcp_option(&[4, 2])
    }

    /// Adds a TCP SACK option with the given (left, right) blocks.
    #[must_use]
    pub fn sack(self, blocks: &[(u32, u32)]) -> Pkt {
        let mut o = vec![5, u8::try_from(2 + 8 * blocks.len()).unwrap_or(2)];
        for (l, r) in blocks {
            o.extend_from_slice(&l.to_be_bytes());
            o.extend_from_slice(&r.to_be_bytes());
        }
        self.tcp_option(&o)
    }

    /// Adds raw TCP option bytes (padded to 4 bytes at build time).
    #[must_use]
    pub fn tcp_option(mut self, bytes: &[u8]) -> Pkt {
        if let Body::Tcp { options, .. } = &mut self.body {
            options.extend_from_slice(bytes);
        }
        self
    }

    /// Upper-layer payload.
    #[must_use]
    pub fn payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }

    /// IPv4 identification.
    #[must_use]
    pub fn ip_id(mut self, id: u16) -> Pkt {
        self.ip_id = id;
        self
    }

    /// IP TTL / hop limit.
    #[must_use]
    pub fn ttl(mut self, t: u8) -> Pkt {
        self.ttl = t;
        self
    }

    /// Adds an IPv6 extension header (`kind` = 0, 43, 60 with `len8` 8-byte units
    /// beyond the first).
    #[must_use]
    pub fn ext(mut self, kind: u8, len8: u8) -> Pkt {
        let mut h = vec![0u8; (usize::from(len8) + 1) * 8];
        h[1] = len8;
        if kind == 43 {
            h[2] = 0; // routing type
        }
        self.ext.push((kind, h));
        self
    }

    /// Breaks the L4 checksum.
    #[must_use]
    pub fn bad_checksum(mut self) -> Pkt {
        self.bad_csum = true;
        self
    }

    fn upper(&self) -> (u8, Vec<u8>) {
        match &self.body {
            Body::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                options,
            } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(1);
                }
                let mut h = Vec::with_capacity(20 + opts.len() + self.payload.len());
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&ack.to_be_bytes());
                h.push(u8::try_from((20 + opts.len()) / 4).unwrap_or(15) << 4);
                h.push(*flags);
                h.extend_from_slice(&window.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                h.extend_from_slice(&opts);
                h.extend_from_slice(&self.payload);
                (ipproto::TCP, h)
            }
            Body::Udp { sport, dport } => {
                let mut h = Vec::with_capacity(8 + self.payload.len());
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(
                    &u16::try_from(8 + self.payload.len())
                        .unwrap_or(0)
                        .to_be_bytes(),
                );
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.payload);
                (ipproto::UDP, h)
            }
            Body::Icmp { ty, code, rest } => {
                let mut h = vec![*ty, *code, 0, 0];
                h.extend_from_slice(rest);
                h.extend_from_slice(&self.payload);
                let proto = match self.l3 {
                    L3::V4 { .. } => ipproto::ICMP,
                    L3::V6 { .. } => ipproto::ICMPV6,
                };
                (proto, h)
            }
            Body::Raw { proto } => (*proto, self.payload.clone()),
        }
    }

    fn checksum_at(&self, proto: u8) -> Option<usize> {
        match proto {
            ipproto::TCP => Some(16),
            ipproto::UDP => Some(6),
            ipproto::ICMP | ipproto::ICMPV6 => Some(2),
            _ => None,
        }
    }

    /// The packet's bytes, IP header first.
    pub fn build(&self) -> Vec<u8> {
        let (proto, mut up) = self.upper();
        let structured = !matches!(self.body, Body::Raw { .. });
        if let Some(at) = self.checksum_at(proto).filter(|_| structured) {
            let pseudo = match (&self.l3, proto) {
                (L3::V4 { .. }, ipproto::ICMP) => 0,
                (L3::V4 { src, dst }, _) => {
                    sum(&[&src[..], &dst[..]]) + u64::from(proto) + up.len() as u64
                }
                (L3::V6 { src, dst }, _) => {
                    sum(&[&src[..], &dst[..]]) + u64::from(proto) + up.len() as u64
                }
            };
            let mut c = !fold(pseudo + sum(&[&up]));
            if proto == ipproto::UDP && c == 0 {
                c = 0xffff;
            }
            if self.bad_csum {
                c ^= 0x5a5a;
            }
            up[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        match &self.l3 {
            L3::V4 { src, dst } => {
                let (off, more) = self.frag.unwrap_or((0, false));
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&u16::try_from(20 + up.len()).unwrap_or(0).to_be_bytes());
                h.extend_from_slice(&self.ip_id.to_be_bytes());
                let fo = (off / 8) | if more { 0x2000 } else { 0 };
                h.extend_from_slice(&fo.to_be_bytes());
                h.push(self.ttl);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                let c = !fold(sum(&[&h]));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&up);
                h
            }
            L3::V6 { src, dst } => {
                let mut chain = Vec::new();
                let first = self.ext.first().map_or(proto, |e| e.0);
                for (i, (_, hdr)) in self.ext.iter().enumerate() {
                    let mut hdr = hdr.clone();
                    hdr[0] = self.ext.get(i + 1).map_or(proto, |e| e.0);
                    chain.extend_from_slice(&hdr);
                }
                let plen = chain.len() + up.len();
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&u16::try_from(plen).unwrap_or(0).to_be_bytes());
                h.push(first);
                h.push(self.ttl);
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                h.extend_from_slice(&chain);
                h.extend_from_slice(&up);
                h
            }
        }
    }

    /// IPv4 only: the datagram cut into fragments of `size` upper-layer bytes
    /// (a multiple of 8), in order.
    pub fn build_fragments(&self, size: usize) -> Vec<Vec<u8>> {
        let whole = self.build();
        let L3::V4 { .. } = self.l3 else {
            return vec![whole];
        };
        let up = &whole[20..];
        let size = size.max(8) / 8 * 8;
        let mut out = Vec::new();
        let mut off = 0;
        while off < up.len() {
            let end = (off + size).min(up.len());
            let mut f = self.clone();
            f.frag = Some((u16::try_from(off).unwrap_or(0), end < up.len()));
            let mut h = whole[..20].to_vec();
            h[2..4].copy_from_slice(&u16::try_from(20 + end - off).unwrap_or(0).to_be_bytes());
            let fo = u16::try_from(off / 8).unwrap_or(0) | if end < up.len() { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&[&h]));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(&up[off..end]);
            out.push(h);
            off = end;
        }
        out
    }
}

fn tcp_body(sport: u16, dport: u16) -> Body {
    Body::Tcp {
        sport,
        dport,
        seq: 0,
        ack: 0,
        flags: tcp_flags::ACK,
        window: 65_535,
        options: Vec::new(),
    }
}

fn sum(parts: &[&[u8]]) -> u64 {
    let mut s = 0u64;
    for p in parts {
        for c in p.chunks(2) {
            let hi = u64::from(c[0]);
            let lo = u64::from(c.get(1).copied().unwrap_or(0));
            s += hi << 8 | lo;
        }
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u16::try_from(s).unwrap_or(0)
}

/// Wraps an IP packet in an Ethernet frame, with optional 802.1Q tags (VLAN ids).
pub fn ethernet(ip: &[u8], vlans: &[u16]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for v in vlans {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    let et: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(ip);
    f
}
