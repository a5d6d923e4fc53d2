//! The checkers catch the core's planted bugs (build with `--features canaries`; `.ci/sim` runs
//! this file). For each canary, a range of default-profile seeds must produce failures that are
//! not known core bugs, from the checker designed to catch it:
//!
//! * `Register` overwrites an existing record → the spec model (replica ≠ model) and
//!   `Consumed` never reverts;
//! * `Revert` ignores the lease id → the spec model (a stale revert changed state); the lease
//!   nemesis makes stale reverts common;
//! * the listener skips `BeginInFlight` → liveness (nobody is ever admitted);
//! * a namespace join ignores its deadline → `ns-deadline` (a join still open, or ending,
//!   after its budget: under partitions a partner goes silent and the join keeps switching);
//! * beacons and acks vouch for ops not yet durable → `ns-vouch` (a node's own beacon or ack
//!   covers an op missing from its simulated disk).
//!
//! Each must be caught within 2,000 seeds; these ranges are far shorter, so a checker that
//! weakens shows here first.
#![cfg(feature = "canaries")]

use std::collections::BTreeMap;

use portcullis_sim::{Canary, Profile, RunConfig, run_seed_on_fresh_thread};

/// Failures by checker over `seeds`, counting only failures that are not known core bugs.
fn caught(canary: Canary, seeds: std::ops::Range<u64>) -> BTreeMap<String, usize> {
    let mut by_checker = BTreeMap::new();
    for seed in seeds {
        let mut cfg = RunConfig::new(Profile::Default);
        cfg.canary = Some(canary);
        let r = run_seed_on_fresh_thread(seed, cfg);
        if let Some(f) = &r.failure
            && r.known_bug().is_none()
        {
            *by_checker.entry(f.checker.clone()).or_default() += 1;
        }
    }
    by_checker
}

#[test]
fn register_that_overwrites_is_caught_by_the_model_and_consumed_is_final() {
    let c = caught(Canary::RegisterOverwrites, 0..60);
    let total: usize = c.values().sum();
    assert!(total >= 40, "caught in only {total} of 60 seeds: {c:?}");
    assert!(c.contains_key("spec-model"), "{c:?}");
}

#[test]
fn revert_that_ignores_the_lease_is_caught_by_the_model() {
    let c = caught(Canary::RevertIgnoresLease, 0..200);
    assert!(c.get("spec-model").copied().unwrap_or(0) >= 5, "{c:?}");
}

#[test]
fn listener_that_skips_begin_in_flight_is_caught_by_liveness() {
    let c = caught(Canary::SkipBeginInFlight, 0..30);
    let total: usize = c.values().sum();
    assert!(total >= 25, "caught in only {total} of 30 seeds: {c:?}");
    assert!(c.contains_key("liveness"), "{c:?}");
}

#[test]
fn join_that_ignores_its_deadline_is_caught_by_the_deadline_checker() {
    let c = caught(Canary::JoinIgnoresDeadline, 0..60);
    assert!(c.get("ns-deadline").copied().unwrap_or(0) >= 3, "{c:?}");
}

#[test]
fn vouching_before_the_disk_is_caught_by_the_vouch_checker() {
    let c = caught(Canary::VouchBeforeDurable, 0..30);
    assert!(c.get("ns-vouch").copied().unwrap_or(0) >= 20, "{c:?}");
}

#[test]
fn without_a_canary_the_same_seeds_pass() {
    for seed in 0..30 {
        let r = run_seed_on_fresh_thread(seed, RunConfig::new(Profile::Default));
        assert!(
            r.passed() || r.known_bug().is_some(),
            "{}",
            r.failure_report()
        );
    }
}
