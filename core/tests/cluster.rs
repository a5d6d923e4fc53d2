//! Protocol A end to end in the core's deterministic harness (issue 3's acceptance list).

use portcullis_core::admission::JoinFailure;
use portcullis_core::config::Config;
use portcullis_core::messages::RejectReason;
use portcullis_core::testing::{Cluster, Faults};

fn config() -> Config {
    Config::default()
}

#[test]
fn three_nodes_elect_a_leader() {
    let mut c = Cluster::new(3, 1, config(), Faults::default());
    assert!(
        c.run_until(10_000, |c| c.leader().is_some()),
        "no leader after 10 s"
    );
    let leader = c.leader().unwrap();
    // Every node agrees on who leads.
    c.run_for(1_000);
    for n in &c.nodes {
        let node = n.node.as_ref().unwrap();
        assert_eq!(node.leader().map(|m| m.0), Some(leader as u64 + 1));
    }
}

/// Regression: the election timeout is drawn from the node's seeded RNG before every tick, so
/// raft-rs's `thread_rng` draw is never read. Same seed, same trace — forever.
#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let faults = Faults {
            loss: 0.1,
            duplicate: 0.1,
            min_delay_ms: 1,
            max_delay_ms: 20,
            fsync_ms: 1,
        };
        let mut c = Cluster::new(3, seed, config(), faults);
        c.run_for(20_000);
        (c.trace_digest(), c.steps, c.leader())
    };
    for seed in [1, 2, 3] {
        let a = std::thread::spawn(move || run(seed)).join().unwrap();
        let b = std::thread::spawn(move || run(seed)).join().unwrap();
        assert_eq!(a, b, "seed {seed} diverged");
    }
    assert_ne!(run(1).0, run(2).0, "different seeds should differ");
}

#[test]
fn a_joiner_is_admitted_and_becomes_a_learner() {
    let mut c = Cluster::new(3, 4, config(), Faults::default());
    assert!(c.run_until(10_000, |c| c.leader().is_some()));
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(c.run_until(10_000, |c| c.admitted(j).is_some()
        || c.join_failure(j).is_some()));
    let member = c.admitted(j).expect("admitted");
    assert_eq!(member.0, 4);
    // The leader adds it as a learner and it catches up.
    let leader = c.leader().unwrap();
    assert!(
        c.run_until(10_000, |c| {
            let (_, learners) = c.nodes[leader].node.as_ref().unwrap().conf();
            learners.contains(&4) && c.converged(&[0, 1, 2, j])
        }),
        "learner did not catch up"
    );
    let _ = (JoinFailure::NoSeeds, RejectReason::Expired);
}
