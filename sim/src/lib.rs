//! # portcullis-sim
//!
//! The deterministic simulator: it drives the real `portcullis-core` state machines on madsim
//! nodes, so any run replays bit for bit from its seed.
//!
//! It MUST be built with `--cfg madsim` (the workspace's `.cargo/config.toml` sets it for
//! `cargo build`, `cargo test` and doctests).

#[cfg(not(madsim))]
compile_error!(
    "portcullis-sim needs `--cfg madsim`. The workspace's .cargo/config.toml sets it through \
     [build] rustflags; a RUSTFLAGS (or RUSTDOCFLAGS) environment variable REPLACES those flags. \
     Unset it, or add `--cfg madsim` to it: RUSTFLAGS=\"--cfg madsim\" cargo test --workspace"
);

pub mod replicas;
