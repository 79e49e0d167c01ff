//! L4 trackers, chosen by a `match` on the protocol (the kernel's
//! `nf_conntrack_l4proto`s): TCP has its own module; UDP, ICMP and the generic
//! tracker are small enough to live with the table.

pub mod tcp;
