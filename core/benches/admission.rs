//! Admission throughput of a 3-node cluster in the in-memory harness, one thread (issue 3).
//!
//! Run: `cargo bench -p portcullis-core --bench admission`
//!
//! Prints admissions completed per second, this machine's raw ed25519 verifications per second
//! measured in the same run, and their ratio (target ≥ 0.5). Joiners are external peers whose
//! requests are signed before the clock starts: what is timed is the cluster's work — proof
//! verification, two Raft proposals replicated to three ledgers, credential signing.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use portcullis_core::config::Config;
use portcullis_core::crypto::{Domain, Hash32, SecretKey};
use portcullis_core::messages::{JoinRequest, PeerMessage, join_proof_message};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::wire::{BoundedBytes, Limits};

/// Admissions timed (override with `PORTCULLIS_BENCH_ADMISSIONS`, e.g. for a profiler run).
const DEFAULT_ADMISSIONS: usize = 6_000;
const CONCURRENCY: usize = 64;

fn raw_verify_rate() -> f64 {
    let key = SecretKey::from_secret_bytes(&[1; 32]);
    let msgs: Vec<[u8; 64]> = (0..256u32)
        .map(|i| {
            let mut m = [0u8; 64];
            m[..4].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    let sigs: Vec<_> = msgs
        .iter()
        .map(|m| key.sign(Domain::JoinProof, m))
        .collect();
    let public = key.public();
    let n = 20_000;
    let start = Instant::now();
    for i in 0..n {
        let k = i % msgs.len();
        black_box(public.verify(Domain::JoinProof, &msgs[k], &sigs[k]).is_ok());
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let admissions: usize = std::env::var("PORTCULLIS_BENCH_ADMISSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ADMISSIONS);
    let faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        min_delay_ms: 0,
        max_delay_ms: 0,
        fsync_ms: 0,
    };
    let config = Config {
        max_inflight_admissions: 4_096,
        ..Config::default()
    };
    let mut c = Cluster::new(3, 2026, config, faults);
    c.tracing = false;
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");

    // Prepare every request (tokens, keys, proofs) before timing.
    let mut requests = Vec::with_capacity(admissions);
    for i in 0..admissions {
        let token = c.issue_token(3_600_000);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let key = SecretKey::from_secret_bytes(&seed);
        let binding = Hash32::of(&[&seed]);
        let listener = i % 3;
        let peer = c.connect_external(listener, i as u64, key.public(), binding);
        let proof = key.sign(
            Domain::JoinProof,
            &join_proof_message(&token.hash(), &binding),
        );
        let frame = PeerMessage::JoinRequest(JoinRequest {
            token: BoundedBytes::try_from_vec(token.expose_bytes().to_vec()).expect("90 bytes"),
            node_key: key.public(),
            addrs: Default::default(),
            proof,
        })
        .encode();
        requests.push((listener, peer, frame));
    }
    c.external_inbox.clear();

    let start = Instant::now();
    let mut accepted = 0usize;
    for wave in requests.chunks(CONCURRENCY) {
        let before = c.external_inbox.len();
        for (listener, peer, frame) in wave {
            c.inject(*listener, *peer, frame.clone());
        }
        let want = wave.len();
        if !c.run_until(60_000, |c| c.external_inbox.len() - before >= want) {
            let got = c.external_inbox.len() - before;
            for i in 0..3 {
                let n = c.nodes[i].node.as_ref().unwrap();
                eprintln!(
                    "node {i}: leader={:?} term={} in_flight={} applied={} fatal={:?} metrics={:?}",
                    n.leader(),
                    n.term(),
                    n.admissions_in_flight(),
                    n.ledger().applied_index(),
                    n.fatal(),
                    n.metrics()
                );
            }
            panic!(
                "wave starting at {} got {got}/{want} answers; accepted so far {accepted}",
                before
            );
        }
        for (_, _, bytes) in &c.external_inbox[before..] {
            if matches!(
                PeerMessage::decode(bytes, &Limits::default()),
                Ok(PeerMessage::JoinAccepted(_))
            ) {
                accepted += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(accepted, admissions, "every admission accepted");
    let rate = admissions as f64 / secs;
    let verify = raw_verify_rate();
    println!("portcullis-core admission benchmark (release, 3 nodes in-memory, one thread)\n");
    println!(
        "  admissions completed:        {admissions} in {:.2} s ({CONCURRENCY} in flight)",
        secs
    );
    println!("  admissions per second:       {rate:>10.0}");
    println!("  raw ed25519 verify per sec:  {verify:>10.0}");
    println!(
        "  ratio admissions / verify:   {:>10.2}  (target >= 0.50: {})",
        rate / verify,
        if rate / verify >= 0.5 {
            "met"
        } else {
            "MISSED"
        }
    );
}
