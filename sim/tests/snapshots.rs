//! A golden summary of a few fixed seeds: events by kind, how every presentation ended, the
//! final state of every token and every replica's (applied index, ledger digest). Any change to
//! the core's or the simulator's behaviour shows up here; review it, then accept it with
//! `INSTA_UPDATE=always cargo test -p portcullis-sim --test snapshots`.

use portcullis_sim::{Profile, RunConfig, run_seed_on_fresh_thread};

fn summary(seed: u64, profile: Profile) -> String {
    let r = run_seed_on_fresh_thread(seed, RunConfig::new(profile));
    let mut out = format!(
        "seed {seed} ({profile}): {}\nsimulated_ms: {}\nevents: {}\nmodel_index: {}\nmodel_compared: {}\n",
        r.failure.as_ref().map_or("passed".to_owned(), |f| format!(
            "FAILED {} {}",
            f.kind.as_str(),
            f.checker
        )),
        r.sim_ms,
        r.events,
        r.summary.model_index,
        r.summary.model_compared
    );
    out.push_str("events by kind:\n");
    for (k, v) in &r.summary.counts {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str("presentations:\n");
    for (k, v) in &r.summary.outcomes {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str("tokens:\n");
    for (k, v) in &r.summary.tokens {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str("replicas (applied index, ledger digest):\n");
    for (k, (index, digest)) in &r.summary.replicas {
        out.push_str(&format!("  {k}: {index} {digest}\n"));
    }
    out
}

#[test]
fn lite_seed_1() {
    insta::assert_snapshot!(summary(1, Profile::Lite));
}

#[test]
fn lite_seed_5_crashes_and_torn_writes() {
    insta::assert_snapshot!(summary(5, Profile::Lite));
}

#[test]
fn default_seed_3() {
    insta::assert_snapshot!(summary(3, Profile::Default));
}
