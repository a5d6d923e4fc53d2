//! Simulation seeds for the replicated ledger, run by `cargo test --workspace`.

use portcullis_sim::replicas::run_seed;

/// Seeds run in `cargo test`. Each runs on a fresh thread (madsim and std HashMap state are
/// per-thread; DESIGN.md, "Measured facts").
const SEEDS: std::ops::Range<u64> = 0..64;

fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("invariant: a seed's thread panics only on a failed check")
}

#[test]
fn replicas_converge_under_shuffled_duplicated_delivery() {
    for seed in SEEDS {
        let report = on_fresh_thread(move || run_seed(seed, 3, 300));
        assert!(
            report.converged(),
            "seed {seed}: replicas diverged: {report:?}\n\
             replay: cargo test -p portcullis-sim --test replicas"
        );
    }
}

#[test]
fn same_seed_same_run() {
    for seed in [1u64, 2, 3] {
        let a = on_fresh_thread(move || run_seed(seed, 3, 200));
        let b = on_fresh_thread(move || run_seed(seed, 3, 200));
        assert_eq!(a, b, "seed {seed} is not deterministic");
    }
}
