//! A seed's run frees everything it built.
//!
//! Found by a 20,000-seed sweep (`portcullis-sim run --seeds 6000..26000`) whose memory grew by
//! about 1.5 MB a seed until the machine ran short: dropping a madsim runtime does not drop its
//! pending tasks, and those tasks held the seed's whole world. This test is its own binary, so
//! no other test's world is alive while it counts.

use portcullis_sim::run::live_worlds;
use portcullis_sim::{Profile, RunConfig, run_seed_on_fresh_thread};

#[test]
fn a_finished_seed_leaves_no_world_behind() {
    for seed in 0..3u64 {
        let report = run_seed_on_fresh_thread(seed, RunConfig::new(Profile::Default));
        assert!(
            report.failure.is_none(),
            "seed {seed} failed: {:?}",
            report.failure
        );
        assert_eq!(
            live_worlds(),
            0,
            "seed {seed}'s world outlived its run: every seed of a long `run` would leak one"
        );
    }
}
