//! Cost of the flight recorder (issue 7): the same harness scenario run with and without a
//! recorder on every node, then the recordings replayed.
//!
//! Run: `cargo bench -p portcullis-core --bench recording`
//!
//! Prints, as medians of interleaved rounds: the scenario's wall time unrecorded and recorded
//! (and their ratio), records and bytes written (bytes per record), and replay speed in records
//! per second. The scenario: 3 founders, 20 joiners admitted with tokens, then 60 s of
//! simulated steady state (heartbeats, sweeps).
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::time::Instant;

use portcullis_core::config::Config;
use portcullis_core::recording::{self, Record};
use portcullis_core::testing::{Cluster, Faults};

const JOINERS: usize = 20;
const ROUNDS: usize = 5;

fn scenario(recorded: bool) -> Cluster {
    let (config, faults) = (Config::default(), Faults::default());
    let mut c = if recorded {
        Cluster::new_recorded(3, 5, config, faults)
    } else {
        Cluster::new(3, 5, config, faults)
    };
    // Benchmarks measure the protocol, not the harness's trace digest.
    c.tracing = false;
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");
    let mut joiners = Vec::new();
    for _ in 0..JOINERS {
        let token = c.issue_token(600_000);
        let j = c.add_joiner(&[0, 1, 2]);
        c.join(j, token, &[0, 1, 2]);
        joiners.push(j);
    }
    assert!(
        c.run_until(60_000, |c| joiners.iter().all(|j| c.admitted(*j).is_some())),
        "admissions did not finish"
    );
    c.run_for(60_000);
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (mut plain, mut recorded, mut replay_rate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut records, mut bytes) = (0usize, 0usize);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::hint::black_box(scenario(false));
        plain.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let c = scenario(true);
        recorded.push(start.elapsed().as_secs_f64());

        let mut decoded = Vec::new();
        bytes = 0;
        for (i, node) in c.nodes.iter().enumerate() {
            let file = &node.recordings[0];
            bytes += file.len();
            decoded.push((i, recording::read(file).expect("a recording reads back")));
        }
        records = decoded.iter().map(|(_, r)| r.records.len()).sum();
        let start = Instant::now();
        for (i, rec) in &decoded {
            let secrets = c.replay_secrets(*i, 0);
            let setup = rec.header.setup(&secrets).expect("secrets match");
            let Some(Record::Start { now, start, .. }) = rec.records.first() else {
                panic!("record 0 is the start");
            };
            let (mut node, _) = start.rebuild(setup, *now, &secrets).expect("rebuild");
            for r in &rec.records[1..] {
                if let Record::Handle { now, input, .. } = r {
                    let (input, _) = input.rebuild(&secrets).expect("rebuild input");
                    node.handle(*now, input);
                    while node.poll_output().is_some() {}
                }
            }
        }
        replay_rate.push(records as f64 / start.elapsed().as_secs_f64());
    }
    let (p, r) = (median(plain), median(recorded));
    println!("scenario unrecorded: {:.1} ms", p * 1e3);
    println!("scenario recorded:   {:.1} ms ({:.2}x)", r * 1e3, r / p);
    println!(
        "recordings: {records} records, {bytes} bytes ({} bytes/record)",
        bytes / records.max(1)
    );
    println!(
        "replay (rebuild, handle, drain; no digest check): {:.0} records/s",
        median(replay_rate)
    );
}
