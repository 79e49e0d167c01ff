//! Reading packet captures (pcap and pcapng) and Ethernet frames. Everything
//! here parses untrusted bytes: a corrupt file ends in an error carrying its
//! offset, never a panic, an endless loop or a huge allocation.

#![forbid(unsafe_code)]

pub mod ether;
pub mod pcap;

pub use ether::{Frame, FrameError};
pub use pcap::{Capture, CaptureError, Record};
