//! Why a packet is invalid or dropped: one list, each variant a metric label.

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $name:ident => $label:literal, )*) => {
        /// Why a packet was marked invalid or dropped. The label of each variant is
        /// its Prometheus label and its `"reason"` in replay output.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name, )*
        }

        impl DropReason {
            /// Every reason, in declaration order (for metric registration).
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$name, )* ];

            /// Position in [`Self::ALL`] (an index for counter arrays).
            pub fn index(self) -> usize {
                self as usize
            }

            /// Stable snake_case label.
            pub fn as_str(self) -> &'static str {
                match self { $( DropReason::$name => $label, )* }
            }
        }
    };
}

reasons! {
    // ---- frame and L3: dropped before conntrack, as the kernel's IP input does ----
    /// Frame shorter than its link-layer header.
    FrameTruncated => "frame_truncated",
    /// Frame larger than a UMEM frame or the configured MTU.
    FrameTooLarge => "frame_too_large",
    /// More VLAN tags than Tollgate parses (it never lets a tagged packet bypass policy).
    VlanTooDeep => "vlan_too_deep",
    /// Non-IP frame refused by the L2 policy.
    NonIp => "non_ip",
    /// Capture record of a link type Tollgate cannot read.
    UnknownLinkType => "unknown_link_type",
    /// IPv4 header shorter than 20 bytes or than its IHL.
    Ipv4Truncated => "ipv4_truncated",
    /// IPv4 version or IHL field wrong.
    Ipv4BadHeader => "ipv4_bad_header",
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// IPv4 total length larger than the frame or smaller than the header.
    Ipv4BadLength => "ipv4_bad_length",
    /// IPv6 header truncated or payload length beyond the frame.
    Ipv6Truncated => "ipv6_truncated",
    /// IPv6 version field wrong (the frame's EtherType said IPv6).
    Ipv6BadHeader => "ipv6_bad_header",
    /// IPv6 extension header chain truncated or malformed.
    Ipv6BadExtHeader => "ipv6_bad_ext_header",

    // ---- L4 header problems: conntrack marks these invalid (nf_conntrack_*_error) ----
    /// TCP header truncated.
    TcpTruncated => "tcp_truncated",
    /// TCP data offset below 5 or beyond the packet.
    TcpBadDataOffset => "tcp_bad_data_offset",
    /// TCP checksum wrong.
    TcpBadChecksum => "tcp_bad_checksum",
    /// TCP flag combination the kernel rejects (`tcp_valid_flags`).
    TcpBadFlags => "tcp_bad_flags",
    /// UDP header truncated.
    UdpTruncated => "udp_truncated",
    /// UDP length field inconsistent with the packet.
    UdpBadLength => "udp_bad_length",
    /// UDP checksum wrong (or zero over IPv6).
    UdpBadChecksum => "udp_bad_checksum",
    /// ICMP or ICMPv6 header truncated.
    IcmpTruncated => "icmp_truncated",
    /// ICMP or ICMPv6 checksum wrong.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// ICMP error whose quoted packet cannot be parsed.
    IcmpErrorBadInner => "icmp_error_bad_inner",
    /// ICMP error quoting a flow that is not tracked.
    IcmpErrorNoFlow => "icmp_error_no_flow",
    /// ICMP message of a type that cannot open an entry and matches none.
    IcmpBadType => "icmp_bad_type",
    /// Generic L4 header (GRE, SCTP, ...) truncated.
    L4Truncated => "l4_truncated",
    /// Enhanced GRE (version 1, PPTP) carrying something other than PPP.
    GreBadProtocol => "gre_bad_protocol",

    // ---- tracker verdicts: the packet is invalid and leaves the entry unchanged ----
    /// TCP packet that cannot start a connection (not a SYN, or loose pickup off).
    TcpNewNotSyn => "tcp_new_not_syn",
    /// TCP flags invalid in the entry's current state.
    TcpInvalidState => "tcp_invalid_state",
    /// TCP segment outside the tracked window.
    TcpOutOfWindow => "tcp_out_of_window",
    /// TCP RST whose sequence number is not the exact next one (kernel ignores it).
    TcpRstInexact => "tcp_rst_inexact",
    /// SYN-ACK, ACK or RST that answers nothing the tracker knows (ignored packet).
    TcpIgnored => "tcp_ignored",

    // ---- fragments ----
    /// Non-first IPv4/IPv6 fragment whose first fragment was never seen.
    FragmentNoFirst => "fragment_no_first",
    /// Fragment that overlaps an earlier one or is otherwise malformed.
    FragmentBad => "fragment_bad",
    /// Fragment tracking table full.
    FragmentTableFull => "fragment_table_full",

    // ---- table ----
    /// Table full and no non-assured entry could be early-dropped.
    TableFull => "table_full",
    /// Inserting the new entry clashed with one already confirmed.
    InsertFailed => "insert_failed",
    /// The source already has `max_per_source` connections.
    SourceLimit => "source_limit",

    // ---- policy ----
    /// A policy rule with `action = "drop"` matched.
    PolicyRule => "policy_rule",
    /// No rule matched and the default action is drop.
    PolicyDefault => "policy_default",
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            let l = r.as_str();
            assert!(l
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(seen.insert(l), "duplicate label {l}");
        }
    }
}
