//! The `tollgate` binary's library side: the offline pipeline (`replay`).

pub mod replay;
