//! The same seed gives the same run, event for event: the per-event digest logs of two runs on
//! fresh threads are equal. (madsim's own determinism check only sees its scheduler and clock;
//! this one sees every input and output of every core.)

use portcullis_sim::{
    Options, Profile, RunConfig, SeedReport, TraceLevel, run_seed_on_fresh_thread,
};

fn twice(seed: u64, cfg: RunConfig) -> (SeedReport, SeedReport) {
    let cfg = cfg.with_trace(TraceLevel::Log);
    (
        run_seed_on_fresh_thread(seed, cfg.clone()),
        run_seed_on_fresh_thread(seed, cfg),
    )
}

fn assert_same(a: &SeedReport, b: &SeedReport) {
    assert!(!a.digest_log.is_empty(), "no events were logged");
    let first = a
        .digest_log
        .iter()
        .zip(&b.digest_log)
        .position(|(x, y)| x != y);
    assert_eq!(
        first,
        None,
        "seed {} diverged at event #{}; check-determinism names it: \
         cargo run --release -p portcullis-sim --bin portcullis-sim -- check-determinism {}",
        a.seed,
        first.map_or(0, |i| i + 1),
        a.seed
    );
    assert_eq!(
        a.digest_log.len(),
        b.digest_log.len(),
        "seed {}: different lengths",
        a.seed
    );
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_eq!(a.summary, b.summary);
}

#[test]
fn same_seed_same_events_default_and_swarm() {
    for (seed, profile) in [
        (3, Profile::Default),
        (7, Profile::Default),
        (21, Profile::Swarm),
    ] {
        let (a, b) = twice(seed, RunConfig::new(profile));
        assert_same(&a, &b);
    }
}

#[test]
fn same_seed_same_events_with_crashes_and_torn_writes() {
    // Crashes are forced on (and every crash tears the unsynced writes), so nodes crash with
    // writes in flight whatever else the seed draws.
    let mut cfg = RunConfig::new(Profile::Lite);
    cfg.options = Some(Options {
        crash_rate: 0.5,
        crash_on_write: 0.01,
        torn: 1.0,
        ..Options::draw(5, Profile::Lite)
    });
    let (a, b) = twice(5, cfg);
    assert_same(&a, &b);
    assert!(a.summary.counts.contains_key("fault.crash"));
}

#[test]
fn different_seeds_differ() {
    let cfg = RunConfig::new(Profile::Lite);
    let a = run_seed_on_fresh_thread(1, cfg.clone());
    let b = run_seed_on_fresh_thread(2, cfg);
    assert_ne!(a.trace_digest, b.trace_digest);
}

#[test]
fn the_bench_scenario_is_deterministic_too() {
    let mut cfg = RunConfig::new(Profile::Default);
    cfg.options = Some(Options::bench(1));
    cfg.keep_going = true;
    let (a, b) = twice(1, cfg);
    assert_same(&a, &b);
}
