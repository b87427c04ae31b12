//! keybroker: a secrets broker. It expands `$SECRET_<path> $KEY_<field>` and
//! `$SAFE_<safe> $NAME_<object>` references against its sources, and hands the values over
//! without leaving copies in memory, logs or errors.
//!
//! The library is usable without the server: load a [`Config`], build a [`Broker`], call
//! [`Broker::read`] with an [`Ask`] (a [`Caller`], the [`Door`] it came through, and what it
//! asks: an [`Expand`] of a [`Document`] in a [`Layout`]). See ARCHITECTURE.md for the map.

// The public surface is the list below (as rustls' `lib.rs`): every room is private, so
// `unreachable_pub` and `dead_code` see into each of them and name what nothing uses. `cli`
// is the binary's; `testing` is what the tests, benches and fuzz targets drive by name.
#![warn(unreachable_pub)]

mod agent;
mod api;
mod app;
mod atomic_file;
mod audit;
mod backoff;
mod broker;
mod cache;
mod ccp_api;
/// The binary's commands: `main.rs` is clap and printing, and calls these.
pub mod cli;
mod config;
mod diag;
mod door;
mod egress;
mod exit;
mod identity;
mod manage;
mod metrics;
mod notify;
mod pem;
mod policy;
mod reference;
mod resilience;
mod secret;
mod source;
mod store;
mod vault_api;

#[doc(hidden)]
pub mod testing;

// The library's surface: load a configuration, build a broker, read through it.
pub use broker::{Ask, Broker, Caller, Document, Expand, Failure, Resolution, ResolveError};
pub use config::{Config, ConfigError};
pub use identity::Door;
pub use reference::{Format, Layout};
