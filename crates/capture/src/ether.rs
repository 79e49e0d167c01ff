//! Ethernet framing: MAC addresses, up to two VLAN tags (802.1Q, 802.1ad and
//! the old 0x9100 QinQ tag), the inner EtherType and where L3 starts. A tagged
//! IP packet is exactly as trackable as an untagged one, so a tag can never be
//! used to slip past policy; a third tag is refused rather than guessed at.

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// A parsed Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// VLAN tag control fields, outermost first (0 = absent).
    pub vlans: [u16; 2],
    /// Number of VLAN tags (0 to 2).
    pub vlan_count: u8,
    /// EtherType after the tags.
    pub ethertype: u16,
    /// Offset of the L3 header in the frame.
    pub l3_offset: usize,
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its headers.
    #[error("frame truncated")]
    Truncated,
    /// More than two VLAN tags.
    #[error("more than two VLAN tags")]
    VlanTooDeep,
}

fn is_vlan(et: u16) -> bool {
    matches!(et, 0x8100 | 0x88a8 | 0x9100)
}

/// Parses the Ethernet header of `f`.
pub fn parse(f: &[u8]) -> Result<Frame, FrameError> {
    let hdr: &[u8; 14] = f
        .get(..14)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&hdr[..6]);
    let mut src = [0u8; 6];
    src.copy_from_slice(&hdr[6..12]);
    let mut et = u16::from_be_bytes([hdr[12], hdr[13]]);
    let mut off = 14;
    let mut vlans = [0u16; 2];
    let mut n = 0u8;
    while is_vlan(et) {
        if usize::from(n) == vlans.len() {
            return Err(FrameError::VlanTooDeep);
        }
        let tag = f.get(off..off + 4).ok_or(FrameError::Truncated)?;
        vlans[usize::from(n)] = u16::from_be_bytes([tag[0], tag[1]]);
        et = u16::from_be_bytes([tag[2], tag[3]]);
        n += 1;
        off += 4;
    }
    Ok(Frame {
        dst,
        src,
        vlans,
        vlan_count: n,
        ethertype: et,
        l3_offset: off,
    })
}

/// Linux cooked capture (SLL) header: the protocol and where L3 starts.
pub fn parse_sll(f: &[u8]) -> Result<(u16, usize), FrameError> {
    let h = f.get(..16).ok_or(FrameError::Truncated)?;
    Ok((u16::from_be_bytes([h[14], h[15]]), 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tags: &[u16], et: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        for t in tags {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&t.to_be_bytes());
        }
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn tags() {
        let f = parse(&frame(&[], ETH_P_IP)).unwrap();
        assert_eq!((f.ethertype, f.l3_offset, f.vlan_count), (ETH_P_IP, 14, 0));
        let f = parse(&frame(&[10], ETH_P_IPV6)).unwrap();
        assert_eq!((f.ethertype, f.l3_offset, f.vlans[0]), (ETH_P_IPV6, 18, 10));
        let f = parse(&frame(&[10, 20], ETH_P_IP)).unwrap();
        assert_eq!((f.l3_offset, f.vlans), (22, [10, 20]));
        assert_eq!(
            parse(&frame(&[1, 2, 3], ETH_P_IP)),
            Err(FrameError::VlanTooDeep)
        );
        assert_eq!(parse(&[0; 13]), Err(FrameError::Truncated));
        let mut cut = frame(&[5], ETH_P_IP);
        cut.truncate(16);
        assert_eq!(parse(&cut), Err(FrameError::Truncated));
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = parse(&b) {
                prop_assert!(f.l3_offset <= b.len());
            }
        }
    }
}
