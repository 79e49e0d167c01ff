//! Tollgate's AF_XDP dataplane: one AF_XDP socket per NIC queue, a worker that
//! moves frames between the two sides of the bridge through the conntrack
//! pipeline, and the lab of network namespaces `tollgate lab` runs on.
//!
//! Its `unsafe` is in three modules: [`xsk`] (the AF_XDP rings and UMEM),
//! `offload::shm` (the fast path's shared memory) and [`sys`] (every other
//! system call, behind safe functions). The lint denies it everywhere else.

#![deny(unsafe_code)]

pub mod bpf;
pub mod fastreplay;
pub mod lab;
pub mod offload;
pub mod probe;
pub mod recheck;
#[allow(unsafe_code)]
pub mod sys;
pub mod worker;
#[allow(unsafe_code)]
pub mod xsk;

pub use worker::{mailbox, Counters, Inbox, Job, Mailbox, PostError, Worker, WorkerConfig};
