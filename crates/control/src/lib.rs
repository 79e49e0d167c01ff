//! Tollgate's control plane. For now: the configuration file.

pub mod config;

pub use config::{load, parse, Config, ConfigError, ConfigErrors, Interfaces, Queues};
