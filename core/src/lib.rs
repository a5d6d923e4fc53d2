//! # portcullis-core
//!
//! The sans-IO heart of portcullis: every state machine that admits nodes into a cluster and
//! members into namespaces, with no sockets, no clock and no OS randomness. Drivers (the madsim
//! simulator, the tokio + QUIC adapter) feed it inputs with the current time and carry out its
//! outputs; the core never learns which driver runs it.
//!
//! ```text
//!            ┌────────────────────────── driver (sim / io-tokio) ──────────────────────────┐
//!            │  datagrams, timers, fsync acks, local commands        Transmit / Persist    │
//!            └──────────────┬───────────────────────────────────────────────▲──────────────┘
//!                  now, Input│                                               │ poll_output()
//!            ┌───────────────▼───────────────────────────────────────────────┴──────────────┐
//!            │ core: wire (bounded decode) → token (MAC, expiry) → ledger (replicated FSM)    │
//!            └────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Modules, bottom up:
//! * [`time`] — `Instant` and wall-clock `unix_ms`, both passed in.
//! * [`rng`] — seeded ChaCha20 with label-derived children; [`rng::NodeSeed`], the node's
//!   256-bit seed.
//! * [`config`] — every limit, unit-suffixed, with `validate()`.
//! * [`wire`] — the versioned borsh envelope and bounded decoding.
//! * [`crypto`] — ed25519 keys that zeroize, domain-separated signatures, hashes.
//! * [`token`] — single-use join tokens: issue, parse, verify.
//! * [`ledger`] — the replicated token-lifecycle state machine and membership registry.

pub mod admission;
pub mod config;
pub mod crypto;
pub mod durable;
pub mod identity;
pub mod ledger;
pub mod messages;
pub mod namespace;
pub mod node;
pub mod pubsub;
pub mod recording;
pub mod replication;
pub mod rng;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod token;
pub mod wire;
