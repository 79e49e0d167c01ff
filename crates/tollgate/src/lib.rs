//! The `tollgate` binary's library side: the offline pipeline (`replay`),
//! the dataplane commands (`lab`, `run`), the daemon's control plane and
//! metrics, and the control-socket client.

#![forbid(unsafe_code)]

pub mod cli;
pub mod daemon;
pub mod live;
pub mod metrics;
pub mod replay;
