//! keybroker: a secrets broker. It expands `$SECRET_<path> $KEY_<field>` and
//! `$SAFE_<safe> $NAME_<object>` references against its sources, and hands the values over
//! without leaving copies in memory, logs or errors.
//!
//! The library is usable without the server: load a [`config::Config`], build a
//! [`broker::Broker`], call [`broker::Broker::read`] with a [`broker::Ask`]. See ARCHITECTURE.md for the map.

// `pub` only where something outside the crate uses it (as rustls); tests and benches keep
// their own support modules public. The rooms no binary, test, bench or fuzz target names are
// private, so `unreachable_pub` sees inside them (`metrics` stays public: `Broker::metrics`
// hands it out).
#![warn(unreachable_pub)]

pub mod agent;
pub mod api;
pub mod app;
mod atomic_file;
mod audit;
mod backoff;
pub mod broker;
mod cache;
pub mod ccp_api;
pub mod cli;
pub mod config;
mod diag;
pub mod door;
pub mod egress;
pub mod exit;
pub mod identity;
mod manage;
pub mod metrics;
mod notify;
pub mod pem;
pub mod policy;
pub mod reference;
mod resilience;
pub mod secret;
pub mod source;
mod store;
pub mod vault_api;
