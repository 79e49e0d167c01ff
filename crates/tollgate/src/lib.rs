//! The `tollgate` binary's library side: the offline pipeline (`replay`) and
//! the dataplane commands (`lab`, `run`).

pub mod live;
pub mod replay;
