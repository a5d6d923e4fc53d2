//! Ledger replicas on madsim nodes: a first end-to-end simulation of the replicated ledger.
//!
//! A source node streams committed log entries (index + framed [`LogEntry`]) to every replica
//! over madsim's network, in a shuffled order and with every datagram sent twice. Each replica
//! buffers out-of-order entries, applies them strictly in index order, and reports its digest.
//! The run passes when every replica reaches the same digest as a reference ledger applied
//! in-process.
//!
//! ```text
//!   source ──(idx, entry) × shuffled, duplicated──▶ replica 1..n ──(digest)──▶ source
//! ```
//!
//! The full simulator (faults, Raft, workloads, checkers) builds on this driver shape.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use madsim::net::Endpoint;
use madsim::runtime::Runtime;
use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::Hash32;
use portcullis_core::ledger::{
    Command, LeaseId, Ledger, LogEntry, NodeId, PresenterId, ProposalId,
};
use portcullis_core::rng::SeededRng;
use portcullis_core::token::TokenHash;
use portcullis_core::wire::{self, Limits};
use rand::Rng;
use rand::seq::SliceRandom;

const PORT: u16 = 7_000;
const TAG_ENTRY: u64 = 1;
const TAG_DIGEST: u64 = 2;
/// Largest datagram a replica reads; entries here are far smaller.
const MAX_DATAGRAM_BYTES: usize = 64 << 10;

/// What one simulated run observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The digest of a ledger that applied the log in-process.
    pub reference_digest: Hash32,
    /// Each replica's digest, in replica order.
    pub replica_digests: Vec<Hash32>,
    /// Entries in the log.
    pub entries: usize,
}

impl ReplicaReport {
    /// Every replica agrees with the reference.
    pub fn converged(&self) -> bool {
        self.replica_digests
            .iter()
            .all(|d| *d == self.reference_digest)
    }
}

/// A random log of token commands: registrations, competing leases, consumes, reverts,
/// expiries and aborts over a small set of tokens, so conflicts are common.
pub fn random_log(rng: &mut SeededRng, entries: usize) -> Vec<(u64, LogEntry)> {
    let presenters: Vec<PresenterId> = (0..3u8).map(|n| PresenterId(Hash32([n; 32]))).collect();
    let mut unix_ms = 1_000u64;
    (1..=entries)
        .map(|i| {
            unix_ms += rng.gen_range(0..500);
            let hash = TokenHash(Hash32([rng.gen_range(0..8u8); 32]));
            let command = match rng.gen_range(0..6u8) {
                0 => Command::Register {
                    hash,
                    expires_at_unix_ms: unix_ms + rng.gen_range(0..20_000),
                },
                1 => Command::BeginInFlight {
                    hash,
                    presenter: *presenters.choose(rng).unwrap_or(&presenters[0]),
                    lease_id: LeaseId(rng.gen_range(0..4)),
                    lease_ms: rng.gen_range(1..3_000),
                },
                2 => Command::Revert {
                    hash,
                    lease_id: LeaseId(rng.gen_range(0..4)),
                },
                3 => Command::Expire { hash },
                4 => Command::Abort {
                    hash,
                    expires_at_unix_ms: unix_ms + 10_000,
                },
                _ => Command::Register {
                    hash,
                    expires_at_unix_ms: unix_ms + 5_000,
                },
            };
            let index = u64::try_from(i).unwrap_or(u64::MAX);
            let proposal = ProposalId {
                node: NodeId(1),
                seq: index,
            };
            // One command per entry; never more than the bound.
            let entry = LogEntry::new(proposal, unix_ms, vec![command])
                .expect("invariant: one command is within MAX_COMMANDS_PER_ENTRY");
            (index, entry)
        })
        .collect()
}

fn replica_addr(i: usize) -> SocketAddr {
    let last = u8::try_from(i + 2).unwrap_or(u8::MAX);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), PORT)
}

const SOURCE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Runs one seed: `replicas` madsim nodes receive a shuffled, duplicated stream of `entries`
/// log entries and must all reach the reference digest.
pub fn run_seed(seed: u64, replicas: usize, entries: usize) -> ReplicaReport {
    let runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    let mut rng = SeededRng::from_u64(seed);
    let log = random_log(&mut rng, entries);
    let mut reference = Ledger::new(LedgerConfig::default());
    for (index, entry) in &log {
        reference.apply(*index, entry);
    }
    let reference_digest = reference.digest();

    runtime.block_on(async move {
        let handle = madsim::runtime::Handle::current();
        let total = log.len();
        for i in 0..replicas {
            let addr = replica_addr(i);
            handle
                .create_node()
                .name(format!("replica-{i}"))
                .ip(addr.ip())
                .init(move || replica_task(addr, total))
                .build();
        }
        let source = handle
            .create_node()
            .name("source")
            .ip(IpAddr::V4(SOURCE_IP))
            .build();
        let replica_digests = source
            .spawn(source_task(log, replicas, rng))
            .await
            .expect("invariant: the source task does not panic");
        ReplicaReport {
            reference_digest,
            replica_digests,
            entries: total,
        }
    })
}

async fn source_task(
    log: Vec<(u64, LogEntry)>,
    replicas: usize,
    mut rng: SeededRng,
) -> Vec<Hash32> {
    let ep = Endpoint::bind((SOURCE_IP, PORT))
        .await
        .expect("invariant: the source binds its own simulated address");
    let mut frames: Vec<Vec<u8>> = log
        .iter()
        .map(|(index, entry)| {
            let mut frame = index.to_le_bytes().to_vec();
            frame.extend_from_slice(&wire::encode_frame(entry));
            frame
        })
        .collect();
    for i in 0..replicas {
        frames.shuffle(&mut rng);
        for frame in &frames {
            for _ in 0..2 {
                // madsim never duplicates: we do, to exercise replay of applied indices.
                let _ = ep.send_to(replica_addr(i), TAG_ENTRY, frame).await;
            }
        }
    }
    let mut digests = vec![Hash32::default(); replicas];
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    for _ in 0..replicas {
        let Ok((len, from)) = ep.recv_from(TAG_DIGEST, &mut buf).await else {
            continue;
        };
        let slot = (0..replicas).find(|i| replica_addr(*i).ip() == from.ip());
        if let (Some(slot), Ok(bytes)) = (slot, <[u8; 32]>::try_from(&buf[..len])) {
            digests[slot] = Hash32(bytes);
        }
    }
    digests
}

async fn replica_task(me: SocketAddr, total: usize) {
    let ep = Endpoint::bind(me)
        .await
        .expect("invariant: a replica binds its own simulated address");
    let mut ledger = Ledger::new(LedgerConfig::default());
    let mut pending: BTreeMap<u64, LogEntry> = BTreeMap::new();
    let mut next = 1u64;
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let limits = Limits::default();
    let total = u64::try_from(total).unwrap_or(u64::MAX);
    while next <= total {
        let Ok((len, _)) = ep.recv_from(TAG_ENTRY, &mut buf).await else {
            continue;
        };
        let Some((index_bytes, frame)) = buf[..len].split_first_chunk::<8>() else {
            continue;
        };
        let index = u64::from_le_bytes(*index_bytes);
        let Ok(entry) = wire::decode_frame::<LogEntry>(frame, &limits) else {
            continue;
        };
        if index >= next {
            pending.insert(index, entry);
        } else {
            // A duplicate of an applied index: replaying it must change nothing.
            let before = ledger.digest();
            ledger.apply(index, &entry);
            assert_eq!(
                ledger.digest(),
                before,
                "replayed index {index} changed state"
            );
        }
        while let Some(entry) = pending.remove(&next) {
            ledger.apply(next, &entry);
            next += 1;
        }
    }
    let _ = ep
        .send_to((SOURCE_IP, PORT), TAG_DIGEST, &ledger.digest().0)
        .await;
}
