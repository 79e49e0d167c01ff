//! Tollgate's control plane, the pure parts: the configuration file and the
//! control socket's protocol.

#![forbid(unsafe_code)]

pub mod config;
pub mod proto;

pub use config::{load, parse, Config, ConfigError, ConfigErrors, Interfaces, Queues};
