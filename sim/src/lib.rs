//! # portcullis-sim
//!
//! The deterministic simulator: it drives the real `portcullis-core` state machines on madsim
//! nodes through a faulty network, crashing disks and restarts, from one seed — and any run
//! replays bit for bit from that seed.
//!
//! It MUST be built with `--cfg madsim` (the workspace's `.cargo/config.toml` sets it for
//! `cargo build`, `cargo test` and doctests).
//!
//! ## The flow of one seed
//!
//! ```text
//!  seed ─▶ Options (swarm knobs) ─▶ World: founders + joiners, keys, tokens, workload plan
//!     │
//!     ▼  madsim Runtime (seeded from the same seed)
//!  supervisor task ── every tick ──▶ workload actions (start joiners, revoke, wipe a disk)
//!     │                            ▶ faults (crash/restart, partitions, swizzle clogs)
//!     │                            ▶ phase: safety ─▶ liveness (heal the core) ─▶ final checks
//!     ▼
//!  one madsim node per founder / joiner:
//!     pipe tasks:   Endpoint pipes ─▶ fault layer (epoch, partition, clog) ─▶ inbox
//!     driver task:  inbox / fsync done / timer ─▶ Node::handle ─▶ drain poll_output():
//!                     Transmit ─▶ fault layer (loss, latency, reorder, dup, replay) ─▶ pipe
//!                     Persist  ─▶ simulated disk (applied at fsync time, lost/torn at a crash)
//!                     Connect  ─▶ authenticated connection (Connected on both ends)
//!                     Event    ─▶ facts (operation history) ─▶ checkers
//!                   after the step: replica observation ─▶ checkers
//!     ▼
//!  SeedReport: verdict (safety / liveness / crash), summary, trace digest (+ log, + lines)
//! ```
//!
//! One [`SeededRng`](portcullis_core::rng::SeededRng) from the seed is the only source of
//! randomness: its children seed every core (`NodeSetup::seed`), every fault decision, the
//! workload, the keys and madsim's own scheduler.
//!
//! Entry points: [`run_seed`] / [`run_seed_on_fresh_thread`] with a [`RunConfig`]; the
//! `portcullis-sim` binary (`run`, `replay`, `check-determinism`, `bench`).

#[cfg(not(madsim))]
compile_error!(
    "portcullis-sim needs `--cfg madsim`. The workspace's .cargo/config.toml sets it through \
     [build] rustflags; a RUSTFLAGS (or RUSTDOCFLAGS) environment variable REPLACES those flags. \
     Unset it, or add `--cfg madsim` to it: RUSTFLAGS=\"--cfg madsim\" cargo test --workspace"
);

mod check;
mod describe;
mod disk;
mod driver;
pub mod facts;
pub mod json;
pub mod known;
pub mod minimize;
mod net;
pub mod options;
pub mod replay_recording;
pub mod replicas;
pub mod report;
pub mod run;
pub mod timing;
pub mod trace;
mod workload;
mod world;

pub use known::{KNOWN_CORE_BUGS, KnownBug, known_bug};
pub use options::{CANARIES_BUILT_IN, Canary, Options, Profile};
pub use report::{Failure, FailureKind, SeedReport, Summary, commit};
pub use run::{RunConfig, install_panic_hook, run_seed, run_seed_on_fresh_thread};
pub use trace::TraceLevel;
