//! Tollgate's measurement tooling, apart from the dataplane it measures:
//! the lab's traffic generators (live-frames test runs or an XDP broadcast
//! loop), the steering and bare-forwarding programs the lab tests use, the
//! forwarders compared side by side (the Linux bridge with and without
//! conntrack, Open vSwitch, Tollgate with and without its fast path, plain
//! XDP redirect) and the plots; `tg-rfc` and `tg-bench` run them. None of it
//! is on Tollgate's packet path.

#![deny(unsafe_code)]

pub mod benchlab;
pub mod fwd;
pub mod gen;
pub mod plot;
pub mod steer;
