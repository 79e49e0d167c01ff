//! Protocol timeouts, defaulting to the kernel's (`net.netfilter.nf_conntrack_*_timeout*`).

/// One second in the core's time unit (nanoseconds).
pub const SEC: u64 = 1_000_000_000;

/// TCP timeouts per state, in seconds (kernel defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpTimeouts {
    /// SYN_SENT.
    pub syn_sent: u32,
    /// SYN_RECV.
    pub syn_recv: u32,
    /// ESTABLISHED.
    pub established: u32,
    /// FIN_WAIT.
    pub fin_wait: u32,
    /// CLOSE_WAIT.
    pub close_wait: u32,
    /// LAST_ACK.
    pub last_ack: u32,
    /// TIME_WAIT.
    pub time_wait: u32,
    /// CLOSE.
    pub close: u32,
    /// SYN_SENT2 (simultaneous open).
    pub syn_sent2: u32,
    /// Cap while a segment has been retransmitted `max_retrans` times.
    pub retrans: u32,
    /// Cap while data is unacknowledged.
    pub unack: u32,
}

impl Default for TcpTimeouts {
    fn default() -> Self {
        TcpTimeouts {
            syn_sent: 120,
            syn_recv: 60,
            established: 5 * 24 * 3600,
            fin_wait: 120,
            close_wait: 60,
            last_ack: 30,
            time_wait: 120,
            close: 10,
            syn_sent2: 120,
            retrans: 300,
            unack: 300,
        }
    }
}

/// Timeouts of the protocols other than TCP (TCP's live in
/// [`crate::proto::tcp::TcpConfig`]), in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// UDP before a reply was seen (`nf_conntrack_udp_timeout`).
    pub udp: u32,
    /// UDP once replied (`nf_conntrack_udp_timeout_stream`).
    pub udp_stream: u32,
    /// ICMP (`nf_conntrack_icmp_timeout`).
    pub icmp: u32,
    /// ICMPv6 (`nf_conntrack_icmpv6_timeout`).
    pub icmpv6: u32,
    /// GRE unreplied (`nf_conntrack_gre_timeout`).
    pub gre: u32,
    /// GRE replied (`nf_conntrack_gre_timeout_stream`).
    pub gre_stream: u32,
    /// Any other protocol (`nf_conntrack_generic_timeout`).
    pub generic: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            icmpv6: 30,
            gre: 30,
            gre_stream: 180,
            generic: 600,
        }
    }
}
