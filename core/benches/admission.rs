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
const DEFAULT_ADMISSIONS: usize = 2_000;
/// Requests in flight across the three listeners (64 each: one full proof batch per listener).
const CONCURRENCY: usize = 192;

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

/// Rounds of (admissions, raw verify), interleaved so machine drift hits both alike.
const ROUNDS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Prepares `n` signed join requests from fresh keys (not timed).
fn prepare(
    c: &mut Cluster,
    n: usize,
    first_key: u64,
) -> Vec<(usize, portcullis_core::node::PeerId, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let token = c.issue_token(3_600_000);
            let k = first_key + i as u64;
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(k + 1).to_le_bytes());
            let key = SecretKey::from_secret_bytes(&seed);
            let binding = Hash32::of(&[&seed]);
            let listener = i % 3;
            let peer = c.connect_external(listener, k, key.public(), binding);
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
            (listener, peer, frame)
        })
        .collect()
}

/// Runs the requests in waves of `CONCURRENCY`; returns admissions per second.
fn run_admissions(
    c: &mut Cluster,
    requests: &[(usize, portcullis_core::node::PeerId, Vec<u8>)],
) -> f64 {
    c.external_inbox.clear();
    let start = Instant::now();
    let mut accepted = 0usize;
    for wave in requests.chunks(CONCURRENCY) {
        let before = c.external_inbox.len();
        for (listener, peer, frame) in wave {
            c.inject(*listener, *peer, frame.clone());
        }
        let want = wave.len();
        assert!(
            c.run_until(60_000, |c| c.external_inbox.len() - before >= want),
            "a wave did not finish"
        );
        accepted += c.external_inbox[before..]
            .iter()
            .filter(|(_, _, bytes)| {
                matches!(
                    PeerMessage::decode(bytes, &Limits::default()),
                    Ok(PeerMessage::JoinAccepted(_))
                )
            })
            .count();
    }
    let secs = start.elapsed().as_secs_f64();
    if accepted != requests.len() {
        let mut reasons = std::collections::BTreeMap::new();
        for (_, _, bytes) in &c.external_inbox {
            *reasons
                .entry(format!(
                    "{:?}",
                    PeerMessage::decode(bytes, &Limits::default()).map(|m| match m {
                        PeerMessage::JoinRejected(r) => format!("{:?}", r.reason),
                        other => format!("{:?}", std::mem::discriminant(&other)),
                    })
                ))
                .or_insert(0) += 1;
        }
        for i in 0..3 {
            let n = c.nodes[i].node.as_ref().unwrap();
            eprintln!(
                "node {i}: in_flight={} members={} records={} metrics={:?}",
                n.admissions_in_flight(),
                n.ledger().members().count(),
                n.ledger().record_count(),
                n.metrics()
            );
        }
        panic!("accepted {accepted}/{}: {reasons:?}", requests.len());
    }
    requests.len() as f64 / secs
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
    let mut config = Config {
        max_inflight_admissions: 4_096,
        ..Config::default()
    };
    config.ledger.max_members = 1_000_000;
    let mut c = Cluster::new(3, 2026, config, faults);
    c.tracing = false;
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");

    // Warm-up round, not counted: the leader adds its first `max_raft_learners` members as
    // learners here, so the measured rounds see the steady state.
    let warmup = prepare(&mut c, admissions, 0);
    run_admissions(&mut c, &warmup);
    let mut admission_rates = Vec::new();
    let mut verify_rates = Vec::new();
    for round in 1..=ROUNDS {
        let requests = prepare(&mut c, admissions, (round * admissions) as u64);
        admission_rates.push(run_admissions(&mut c, &requests));
        verify_rates.push(raw_verify_rate());
    }
    let rate = median(admission_rates.clone());
    let verify = median(verify_rates.clone());
    // Each round's ratio pairs measurements taken moments apart, so machine drift cancels.
    let ratios: Vec<f64> = admission_rates
        .iter()
        .zip(&verify_rates)
        .map(|(a, v)| a / v)
        .collect();
    let ratio = median(ratios.clone());
    println!("portcullis-core admission benchmark (release, 3 nodes in-memory, one thread)\n");
    println!("  {ROUNDS} rounds x {admissions} admissions, {CONCURRENCY} in flight; medians below");
    println!(
        "  admissions per second:       {rate:>10.0}   (rounds: {:?})",
        admission_rates
            .iter()
            .map(|r| r.round() as u64)
            .collect::<Vec<_>>()
    );
    println!(
        "  raw ed25519 verify per sec:  {verify:>10.0}   (rounds: {:?})",
        verify_rates
            .iter()
            .map(|r| r.round() as u64)
            .collect::<Vec<_>>()
    );
    println!(
        "  ratio admissions / verify:   {ratio:>10.2}   (median of per-round ratios {:?}; target >= 0.50: {})",
        ratios
            .iter()
            .map(|r| (r * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        if ratio >= 0.5 { "met" } else { "MISSED" }
    );
}
