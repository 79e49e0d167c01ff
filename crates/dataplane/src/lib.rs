//! Tollgate's AF_XDP dataplane: one AF_XDP socket per NIC queue, a worker that
//! moves frames between the two sides of the bridge through the conntrack
//! pipeline, and the lab of network namespaces `tollgate lab` runs on.
//!
//! All `unsafe` of the project's packet path lives in [`xsk`].

pub mod bpf;
pub mod fastreplay;
pub mod lab;
pub mod offload;
pub mod probe;
pub mod recheck;
pub mod worker;
pub mod xsk;

pub use worker::{mailbox, Counters, Inbox, Job, Mailbox, PostError, Worker, WorkerConfig};
