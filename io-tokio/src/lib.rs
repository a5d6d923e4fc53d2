//! # portcullis-io-tokio
//!
//! The production driver of portcullis. Today it holds the operator's offline tooling (the
//! cluster secrets on disk and token issuance) that the `portcullis` CLI is built on. The
//! tokio and QUIC node driver and its durable storage build on this crate (DESIGN.md,
//! "Production adapter").

pub mod app;
pub mod config;
pub mod control;
pub mod demo;
pub mod driver;
pub mod join_client;
pub mod metrics;
pub mod recording;
pub mod secrets;
pub mod storage;
pub mod transport;
