//! # portcullis-io-tokio
//!
//! The production adapter of portcullis (DESIGN.md, "Production adapter"): it runs the
//! sans-IO core on tokio.
//!
//! * [`driver`]: one tokio task per node over the QUIC [`transport`] (quinn, raw-key TLS)
//!   and the redb [`storage`]; [`join_client`] presents a token without running a node.
//! * [`control`] (the Unix control socket), [`metrics`] (Prometheus text) and [`recording`]
//!   (the flight recorder's files) around a running node.
//! * [`secrets`] and [`config`]: the cluster secrets on disk and node config files.
//! * [`app`]: the `portcullis` command line; [`demo`]: `portcullis demo` and the in-process
//!   [`demo::LocalCluster`] that tests and examples start.

pub mod app;
pub mod config;
pub mod control;
pub mod demo;
mod dirsync;
pub mod driver;
pub mod join_client;
pub mod metrics;
pub mod recording;
pub mod secrets;
pub mod storage;
pub mod transport;
