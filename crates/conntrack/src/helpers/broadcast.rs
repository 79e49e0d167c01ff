//! NetBIOS-NS and SNMP: broadcast queries (the kernel's broadcast helper).
//! The payload is not parsed: a query to a
//! directed broadcast address expects answers from whichever hosts of the
//! subnet reply, to the client's port.

use super::HelpCx;
use crate::expect::{ExpectSpec, Mask};
use crate::packet::L4;
use crate::timeouts::SEC;
use crate::tuple::{ipproto, Addr, Family, Tuple};

/// The glue (the kernel's `nf_conntrack_broadcast_help`, which only acts on
/// queries to a directed broadcast address): one permanent expectation per
/// query, and the query's own entry lives as long as it.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    if !matches!(cx.pkt.l4, L4::Udp { .. }) || !cx.from_client {
        return;
    }
    let t = cx.pkt.tuple;
    let Some(prefix) = broadcast_prefix(t.dst, t.family) else {
        return;
    };
    cx.parsed();
    let kind = cx.kind;
    cx.asks().push(ExpectSpec {
        tuple: Tuple {
            src: t.dst,
            dst: t.src,
            src_port: t.dst_port,
            dst_port: t.src_port,
            proto: ipproto::UDP,
            family: t.family,
        },
        mask: Mask {
            src_addr: false,
            src_port: false,
            src_prefix: prefix,
        },
        helper: kind,
        child_helper: None,
        permanent: true,
        timeout: None,
    });
    let tmo = u64::from(cx.policy().timeout) * SEC;
    cx.set_deadline(cx.now + tmo);
}

/// The prefix length of the subnet whose directed broadcast address `dst` is
/// (host bits all ones), for IPv4; `None` for anything else. A bridge has no
/// interface address to read the mask from, as the kernel does, so the mask is
/// inferred from the address itself: whole trailing 255 octets mark the host
/// part (x.y.z.255 is a /24's broadcast even where it could be a /20's), and
/// below an octet the trailing one bits do (x.y.z.127 is a /25's). The limited
/// broadcast 255.255.255.255 names no subnet and, as in the kernel, gets no
/// expectation.
pub(crate) fn broadcast_prefix(dst: Addr, family: Family) -> Option<u8> {
    if family != Family::V4 {
        return None;
    }
    let a = u32::try_from(dst.0).ok()?;
    let ones = a.trailing_ones();
    if !(2..32).contains(&ones) {
        return None;
    }
    let host = if ones >= 8 { ones / 8 * 8 } else { ones };
    u8::try_from(32 - host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_prefixes() {
        assert_eq!(
            broadcast_prefix(Addr::v4([192, 168, 239, 255]), Family::V4),
            Some(24)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([10, 255, 255, 255]), Family::V4),
            Some(8)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([172, 16, 255, 255]), Family::V4),
            Some(16)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([10, 0, 0, 127]), Family::V4),
            Some(25)
        );
        assert_eq!(
            broadcast_prefix(Addr::v4([255, 255, 255, 255]), Family::V4),
            None
        );
        assert_eq!(broadcast_prefix(Addr::v4([10, 0, 0, 1]), Family::V4), None);
        assert_eq!(broadcast_prefix(Addr(u128::MAX), Family::V6), None);
    }
}
