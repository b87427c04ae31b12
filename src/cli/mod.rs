//! The CLI as a door: each command of the `keybroker` binary, called by `main.rs` (which is
//! clap and dispatch), and the one way a command ends (`Failure`, mapped to an exit code in
//! `main.rs`; a failure class's code is `exit.rs`). The one part of the library that writes to
//! the terminal on purpose.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod agent;
pub mod check;
pub mod health;
pub mod logging;
pub mod pem;
pub mod policy;
pub mod resolve;
pub mod serve;

use std::path::Path;

use crate::config::Config;

/// How a command ended, mapped to an exit code in one place.
#[derive(Debug)]
pub enum Failure {
    /// 1: the request was understood and refused or could not be satisfied.
    Rejected,
    /// 2: usage, configuration or environment error.
    Usage(String),
    /// Another code (the agent's 75: try again later).
    Code(u8),
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the async runtime: {e}")))
}

pub fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Usage(format!("invalid configuration:\n{e}")))
}

/// An assembly error, at the setting it is about.
pub fn assembly(config: &Config, e: &crate::app::AppError) -> Failure {
    match e.diagnostic(config) {
        Some(d) => Failure::Usage(d.to_string()),
        None => Failure::Usage(e.to_string()),
    }
}
