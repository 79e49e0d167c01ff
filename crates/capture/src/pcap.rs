//! pcap (both byte orders, micro- and nanosecond) and pcapng (SHB, IDB with
//! `if_tsresol`, EPB, SPB, OPB; several sections and interfaces) over a byte slice.

/// Link types Tollgate understands.
pub mod linktype {
    /// Ethernet.
    pub const ETHERNET: u16 = 1;
    /// Raw IP (BSD value).
    pub const RAW: u16 = 101;
    /// Linux cooked capture.
    pub const LINUX_SLL: u16 = 113;
    /// Raw IPv4.
    pub const IPV4: u16 = 228;
    /// Raw IPv6.
    pub const IPV6: u16 = 229;
}

/// One captured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Capture time in nanoseconds since the epoch.
    pub ts_ns: u64,
    /// Link type of the interface it was captured on.
    pub link_type: u16,
    /// Length of the packet on the wire (may exceed `data.len()`).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
}

/// Why a capture could not be read further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// Neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng file")]
    UnknownFormat,
    /// The file ends inside a header or record.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A block or record length that cannot be right.
    #[error("bad length {len} at byte {offset}")]
    BadLength {
        /// Offset of the block.
        offset: usize,
        /// The length read.
        len: u64,
    },
    /// A packet block names an interface that was never described.
    #[error("unknown interface {id} at byte {offset}")]
    UnknownInterface {
        /// Offset of the block.
        offset: usize,
        /// Interface id.
        id: u32,
    },
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap { big: bool, nanos: bool, link: u16 },
    Pcapng,
}

/// An interface of a pcapng section.
#[derive(Clone, Copy, Debug)]
struct Iface {
    link: u16,
    /// Timestamp units per second.
    units: u64,
}

/// A capture being read; iterate it for [`Record`]s.
#[derive(Debug)]
pub struct Capture<'a> {
    buf: &'a [u8],
    pos: usize,
    format: Format,
    big: bool,
    ifaces: Vec<Iface>,
    done: bool,
}

/// Interfaces described per pcapng section, at most (bounds memory on hostile files).
const MAX_IFACES: usize = 1024;
/// Largest block we accept (pcapng) — far above any real packet.
const MAX_BLOCK: usize = 64 << 20;

fn u16_at(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(s)
    } else {
        u16::from_le_bytes(s)
    })
}

fn u32_at(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(s)
    } else {
        u32::from_le_bytes(s)
    })
}

impl<'a> Capture<'a> {
    /// Opens a capture held in memory.
    pub fn new(buf: &'a [u8]) -> Result<Capture<'a>, CaptureError> {
        let magic: [u8; 4] = buf
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or(CaptureError::Truncated(0))?;
        let (format, big) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (
                Format::Pcap {
                    big: false,
                    nanos: false,
                    link: 0,
                },
                false,
            ),
            [0xa1, 0xb2, 0xc3, 0xd4] => (
                Format::Pcap {
                    big: true,
                    nanos: false,
                    link: 0,
                },
                true,
            ),
            [0x4d, 0x3c, 0xb2, 0xa1] => (
                Format::Pcap {
                    big: false,
                    nanos: true,
                    link: 0,
                },
                false,
            ),
            [0xa1, 0xb2, 0x3c, 0x4d] => (
                Format::Pcap {
                    big: true,
                    nanos: true,
                    link: 0,
                },
                true,
            ),
            [0x0a, 0x0d, 0x0d, 0x0a] => (Format::Pcapng, false),
            _ => return Err(CaptureError::UnknownFormat),
        };
        let mut c = Capture {
            buf,
            pos: 0,
            format,
            big,
            ifaces: Vec::new(),
            done: false,
        };
        if let Format::Pcap { big, nanos, .. } = format {
            if buf.len() < 24 {
                return Err(CaptureError::Truncated(buf.len()));
            }
            // The link type is the low 16 bits of the last header field (the
            // high bits carry FCS information).
            let link = u32_at(buf, 20, big).ok_or(CaptureError::Truncated(20))?;
            #[allow(clippy::cast_possible_truncation)]
            let link = (link & 0xffff) as u16;
            c.format = Format::Pcap { big, nanos, link };
            c.pos = 24;
        }
        Ok(c)
    }

    fn next_pcap(
        &mut self,
        big: bool,
        nanos: bool,
        link: u16,
    ) -> Option<Result<Record<'a>, CaptureError>> {
        let b = self.buf;
        let at = self.pos;
        if at == b.len() {
            return None;
        }
        let (Some(sec), Some(frac), Some(incl), Some(orig)) = (
            u32_at(b, at, big),
            u32_at(b, at + 4, big),
            u32_at(b, at + 8, big),
            u32_at(b, at + 12, big),
        ) else {
            return Some(Err(CaptureError::Truncated(at)));
        };
        let start = at + 16;
        let Some(data) = b.get(start..start.saturating_add(incl as usize)) else {
            return Some(Err(CaptureError::Truncated(at)));
        };
        self.pos = start + data.len();
        let frac_ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        Some(Ok(Record {
            ts_ns: u64::from(sec) * 1_000_000_000 + frac_ns,
            link_type: link,
            orig_len: orig,
            data,
        }))
    }

    fn next_pcapng(&mut self) -> Option<Result<Record<'a>, CaptureError>> {
        loop {
            let b = self.buf;
            let at = self.pos;
            if at == b.len() {
                return None;
            }
            let Some(ty_raw) = b.get(at..at + 4) else {
                return Some(Err(CaptureError::Truncated(at)));
            };
            if ty_raw == [0x0a, 0x0d, 0x0d, 0x0a] {
                // Section header: byte order from its magic, interfaces reset.
                match b.get(at + 8..at + 12) {
                    Some([0x1a, 0x2b, 0x3c, 0x4d]) => self.big = true,
                    Some([0x4d, 0x3c, 0x2b, 0x1a]) => self.big = false,
                    _ => return Some(Err(CaptureError::UnknownFormat)),
                }
                self.ifaces.clear();
            }
            let big = self.big;
            let (Some(ty), Some(len)) = (u32_at(b, at, big), u32_at(b, at + 4, big)) else {
                return Some(Err(CaptureError::Truncated(at)));
            };
            let len = len as usize;
            if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
                return Some(Err(CaptureError::BadLength {
                    offset: at,
                    len: len as u64,
                }));
            }
            let Some(block) = b.get(at..at + len) else {
                return Some(Err(CaptureError::Truncated(at)));
            };
            self.pos = at + len;
            let body = &block[8..len - 4];
            match ty {
                // Interface description.
                1 => {
                    let Some(link) = u16_at(body, 0, big) else {
                        return Some(Err(CaptureError::Truncated(at)));
                    };
                    let units = if_tsresol(body.get(8..).unwrap_or(&[]), big);
                    if self.ifaces.len() < MAX_IFACES {
                        self.ifaces.push(Iface { link, units });
                    }
                }
                // Enhanced packet: a 32-bit interface id.
                6 => return Some(self.timed_block(body, u32_at(body, 0, big), at)),
                // Simple packet: no timestamp, interface 0.
                3 => {
                    let Some(orig) = u32_at(body, 0, big) else {
                        return Some(Err(CaptureError::Truncated(at)));
                    };
                    let Some(iface) = self.ifaces.first().copied() else {
                        return Some(Err(CaptureError::UnknownInterface { offset: at, id: 0 }));
                    };
                    let cap = (orig as usize).min(body.len().saturating_sub(4));
                    let data = body.get(4..4 + cap).unwrap_or(&[]);
                    return Some(Ok(Record {
                        ts_ns: 0,
                        link_type: iface.link,
                        orig_len: orig,
                        data,
                    }));
                }
                // Obsolete packet block: a 16-bit interface id, same layout after it.
                2 => return Some(self.timed_block(body, u16_at(body, 0, big).map(u32::from), at)),
                // Section header, name resolution, statistics, custom...: skip.
                _ => {}
            }
        }
    }
}

/// Timestamp units per second from an IDB's options (`if_tsresol`, code 9):
/// high bit set = power of two, else power of ten; default microseconds.
fn if_tsresol(mut opts: &[u8], big: bool) -> u64 {
    while let (Some(code), Some(len)) = (u16_at(opts, 0, big), u16_at(opts, 2, big)) {
        let len = usize::from(len);
        let Some(val) = opts.get(4..4 + len) else {
            break;
        };
        if code == 0 {
            break;
        }
        if code == 9 && len >= 1 {
            let r = val[0];
            let exp = u32::from(r & 0x7f);
            return if r & 0x80 != 0 {
                1u64.checked_shl(exp).unwrap_or(1_000_000)
            } else {
                10u64.checked_pow(exp).unwrap_or(1_000_000)
            };
        }
        let padded = (len + 3) & !3;
        opts = opts.get(4 + padded..).unwrap_or(&[]);
    }
    1_000_000
}

fn to_ns(ts: u64, units: u64) -> u64 {
    let units = units.max(1);
    let secs = ts / units;
    let rem = ts % units;
    secs.saturating_mul(1_000_000_000).saturating_add(
        u64::try_from(u128::from(rem) * 1_000_000_000 / u128::from(units)).unwrap_or(0),
    )
}

impl<'a> Capture<'a> {
    /// An enhanced or obsolete packet block: interface `id` (read by the caller,
    /// as the two differ there), then timestamp high/low, captured and original
    /// lengths, data.
    fn timed_block(
        &self,
        body: &'a [u8],
        id: Option<u32>,
        at: usize,
    ) -> Result<Record<'a>, CaptureError> {
        let big = self.big;
        let (Some(id), Some(hi), Some(lo), Some(cap), Some(orig)) = (
            id,
            u32_at(body, 4, big),
            u32_at(body, 8, big),
            u32_at(body, 12, big),
            u32_at(body, 16, big),
        ) else {
            return Err(CaptureError::Truncated(at));
        };
        let iface = self
            .ifaces
            .get(id as usize)
            .copied()
            .ok_or(CaptureError::UnknownInterface { offset: at, id })?;
        let data =
            body.get(20..20usize.saturating_add(cap as usize))
                .ok_or(CaptureError::BadLength {
                    offset: at,
                    len: u64::from(cap),
                })?;
        Ok(Record {
            ts_ns: to_ns(u64::from(hi) << 32 | u64::from(lo), iface.units),
            link_type: iface.link,
            orig_len: orig,
            data,
        })
    }
}

impl<'a> Iterator for Capture<'a> {
    type Item = Result<Record<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = match self.format {
            Format::Pcap { big, nanos, link } => self.next_pcap(big, nanos, link),
            Format::Pcapng => self.next_pcapng(),
        };
        if matches!(r, Some(Err(_)) | None) {
            self.done = true;
        }
        r
    }
}

/// A little-endian pcap of Ethernet frames with microsecond timestamps, from
/// (timestamp in microseconds, frame) records: what tests and tools write
/// captures with. Lengths beyond `u32` are cut to it.
pub fn write_us(recs: &[(u64, &[u8])]) -> Vec<u8> {
    let word = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes();
    let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (ts, d) in recs {
        f.extend_from_slice(&word(ts / 1_000_000));
        f.extend_from_slice(&word(ts % 1_000_000));
        f.extend_from_slice(&word(d.len() as u64));
        f.extend_from_slice(&word(d.len() as u64));
        f.extend_from_slice(d);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pcap(recs: &[(u64, &[u8])]) -> Vec<u8> {
        super::write_us(recs)
    }

    /// A big-endian pcapng with one nanosecond interface.
    fn pcapng(recs: &[(u64, &[u8])]) -> Vec<u8> {
        fn block(ty: u32, body: &[u8]) -> Vec<u8> {
            let mut body = body.to_vec();
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
            let len = u32::try_from(body.len() + 12).unwrap();
            let mut b = ty.to_be_bytes().to_vec();
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&body);
            b.extend_from_slice(&len.to_be_bytes());
            b
        }
        let mut f = block(
            0x0a0d_0d0a,
            &[
                0x1a, 0x2b, 0x3c, 0x4d, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        );
        let mut idb = vec![0, 1, 0, 0, 0, 0, 0, 0];
        idb.extend_from_slice(&[0, 9, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0]);
        f.extend(block(1, &idb));
        f.extend(block(99, b"custom"));
        for (ts, d) in recs {
            let mut epb = 0u32.to_be_bytes().to_vec();
            epb.extend_from_slice(&u32::try_from(ts >> 32).unwrap().to_be_bytes());
            epb.extend_from_slice(&u32::try_from(ts & 0xffff_ffff).unwrap().to_be_bytes());
            epb.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
            epb.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
            epb.extend_from_slice(d);
            f.extend(block(6, &epb));
        }
        f
    }

    #[test]
    fn pcap_roundtrip() {
        let f = pcap(&[(1_500_000, b"abc"), (2_000_001, b"")]);
        let r: Vec<_> = Capture::new(&f).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].ts_ns, 1_500_000_000);
        assert_eq!(r[0].data, b"abc");
        assert_eq!(r[1].ts_ns, 2_000_001_000);
        assert_eq!(r[0].link_type, linktype::ETHERNET);
    }

    #[test]
    fn pcapng_roundtrip_with_resolution_and_unknown_blocks() {
        let f = pcapng(&[(5_000_000_123, b"xyz")]);
        let r: Vec<_> = Capture::new(&f).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ts_ns, 5_000_000_123);
        assert_eq!(r[0].data, b"xyz");
    }

    #[test]
    fn corrupt_files_end_in_errors() {
        assert_eq!(
            Capture::new(b"nope").err(),
            Some(CaptureError::UnknownFormat)
        );
        let f = pcap(&[(0, b"abcdef")]);
        let cut = &f[..f.len() - 2];
        let r: Vec<_> = Capture::new(cut).unwrap().collect();
        assert!(matches!(r.last(), Some(Err(CaptureError::Truncated(24)))));
        let mut f = pcapng(&[(0, b"abc")]);
        let l = f.len();
        f[l - 8..l - 4].copy_from_slice(&[0; 4]); // harmless: trailing length
        let mut g = pcapng(&[(0, b"abc")]);
        g[4..8].copy_from_slice(&7u32.to_be_bytes()); // bad SHB length
        assert!(Capture::new(&g).unwrap().next().unwrap().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300), ng in any::<bool>()) {
            let mut b = b;
            if b.len() >= 4 {
                let magic: &[u8] = if ng { &[0x0a, 0x0d, 0x0d, 0x0a] } else { &[0xd4, 0xc3, 0xb2, 0xa1] };
                b[..4].copy_from_slice(magic);
            }
            if let Ok(c) = Capture::new(&b) {
                // Terminates: every step consumes bytes or stops.
                prop_assert!(c.take(1000).count() < 1000);
            }
        }

        #[test]
        fn records_roundtrip(recs in proptest::collection::vec((0u64..4_000_000_000_000_000, proptest::collection::vec(any::<u8>(), 0..80)), 0..8)) {
            let recs_us: Vec<(u64, &[u8])> = recs.iter().map(|(t, d)| (t / 1000 * 1000 / 1000, d.as_slice())).collect();
            let f = pcap(&recs_us);
            let got: Vec<_> = Capture::new(&f).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), recs.len());
            for (g, (t, d)) in got.iter().zip(&recs_us) {
                prop_assert_eq!(g.data, *d);
                prop_assert_eq!(g.ts_ns, t * 1000);
            }
            let f = pcapng(&recs.iter().map(|(t, d)| (*t, d.as_slice())).collect::<Vec<_>>());
            let got: Vec<_> = Capture::new(&f).unwrap().collect::<Result<_, _>>().unwrap();
            for (g, (t, d)) in got.iter().zip(&recs) {
                prop_assert_eq!(g.data, d.as_slice());
                prop_assert_eq!(g.ts_ns, *t);
            }
        }
    }
}
