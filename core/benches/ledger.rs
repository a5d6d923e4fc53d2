//! Ledger and token benchmark (issue 2). Prints figures; asserts nothing about speed.
//!
//! Run: `cargo bench -p portcullis-core --bench ledger`
//!
//! Reports:
//! * ledger apply rate, commands per second (target ≥ 1,000,000 on one core), for one
//!   admission per entry (Register+BeginInFlight, then Consume) and for Raft-style batches;
//! * bytes of memory per token record (target ≤ 256), counted by a wrapping allocator;
//! * token verifications per second next to raw HMAC-SHA256 operations per second.
// The benchmark measures wall time and counts allocations; neither is core logic.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use hmac::{Hmac, Mac};
use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::{Hash32, JoinSecret, PublicKey};
use portcullis_core::ledger::*;
use portcullis_core::rng::SeededRng;
use portcullis_core::token::{ClusterPin, JoinToken, Role, TokenHash};
use rand::RngCore;
use sha2::Sha256;

/// Counts live heap bytes so memory per record is measured, not estimated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKENS: usize = 200_000;
/// Expiry of the first token. Later tokens expire 1 ms apart: with a fixed TTL, tokens expire in
/// roughly the order they are issued and presented, which is what the expiry index sees.
const FIRST_EXPIRY_UNIX_MS: u64 = 1 << 40;

fn config() -> LedgerConfig {
    LedgerConfig {
        max_token_records: 2_000_000,
        max_members: 2_000_000,
        ..LedgerConfig::default()
    }
}

struct Admission {
    hash: TokenHash,
    expires_at_unix_ms: u64,
    key: PublicKey,
    presenter: PresenterId,
}

fn admissions(rng: &mut SeededRng, n: usize) -> Vec<Admission> {
    (0..n)
        .map(|i| {
            let mut h = [0u8; 32];
            rng.fill_bytes(&mut h);
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            let key = PublicKey(k);
            Admission {
                hash: TokenHash(Hash32(h)),
                expires_at_unix_ms: FIRST_EXPIRY_UNIX_MS + u64::try_from(i).unwrap_or(0),
                key,
                presenter: PresenterId::of(&key),
            }
        })
        .collect()
}

fn admission_commands(a: &Admission, lease: u64) -> [Vec<Command>; 2] {
    [
        vec![
            Command::Register {
                hash: a.hash,
                expires_at_unix_ms: a.expires_at_unix_ms,
            },
            Command::BeginInFlight {
                hash: a.hash,
                presenter: a.presenter,
                lease_id: LeaseId(lease),
                lease_ms: 10_000,
            },
        ],
        vec![Command::Consume {
            hash: a.hash,
            presenter: a.presenter,
            lease_id: LeaseId(lease),
            member: MemberSpec {
                node_key: a.key,
                role: Role::Member,
                addrs: Addrs::new(),
            },
        }],
    ]
}

/// Entries of at most `batch` commands each, one proposal id per entry.
fn entries(commands: Vec<Command>, batch: usize) -> Vec<LogEntry> {
    commands
        .chunks(batch)
        .enumerate()
        .map(|(i, chunk)| {
            let seq = u64::try_from(i).unwrap_or(u64::MAX) + 1;
            LogEntry::new(
                ProposalId {
                    node: NodeId(1),
                    seq,
                },
                1_000,
                chunk.to_vec(),
            )
            .expect("invariant: chunks are at most MAX_COMMANDS_PER_ENTRY")
        })
        .collect()
}

fn apply_rate(label: &str, log: &[LogEntry]) -> f64 {
    let commands: usize = log.iter().map(|e| e.commands.len()).sum();
    let mut ledger = Ledger::new(config());
    let start = Instant::now();
    for (i, entry) in log.iter().enumerate() {
        let index = u64::try_from(i).unwrap_or(u64::MAX) + 1;
        black_box(ledger.apply(index, entry));
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = commands as f64 / secs;
    println!(
        "  {label:<44} {commands:>9} commands in {:>7.1} ms = {:>12.0} commands/s",
        secs * 1e3,
        rate
    );
    assert_eq!(ledger.record_count(), TOKENS, "every token recorded");
    rate
}

fn main() {
    let mut rng = SeededRng::from_u64(2026);
    println!("portcullis-core ledger benchmark (release, one thread)\n");

    // 1. Apply rate.
    println!("ledger apply rate ({TOKENS} admissions = 3 commands each):");
    let adm = admissions(&mut rng, TOKENS);
    let per_admission: Vec<LogEntry> = adm
        .iter()
        .enumerate()
        .flat_map(|(i, a)| admission_commands(a, u64::try_from(i).unwrap_or(0)))
        .enumerate()
        .map(|(i, commands)| {
            let seq = u64::try_from(i).unwrap_or(u64::MAX) + 1;
            LogEntry::new(
                ProposalId {
                    node: NodeId(1),
                    seq,
                },
                1_000,
                commands,
            )
            .expect("invariant: at most 2 commands")
        })
        .collect();
    let r1 = apply_rate("one admission step per entry", &per_admission);
    let all: Vec<Command> = adm
        .iter()
        .enumerate()
        .flat_map(|(i, a)| admission_commands(a, u64::try_from(i).unwrap_or(0)))
        .flatten()
        .collect();
    let r64 = apply_rate("batched, 64 commands per entry", &entries(all, 64));
    let best = r1.max(r64);
    println!(
        "  => {:.2} M commands/s per entry, {:.2} M batched; target >= 1.00 M: {}\n",
        r1 / 1e6,
        r64 / 1e6,
        if best >= 1e6 { "met" } else { "MISSED" }
    );

    // 2. Memory per token record.
    println!("memory per token record ({TOKENS} records, counted by the allocator):");
    let registers: Vec<Command> = adm
        .iter()
        .map(|a| Command::Register {
            hash: a.hash,
            expires_at_unix_ms: a.expires_at_unix_ms,
        })
        .collect();
    let log = entries(registers, 64);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut ledger = Ledger::new(config());
    for (i, e) in log.iter().enumerate() {
        ledger.apply(u64::try_from(i).unwrap_or(u64::MAX) + 1, e);
    }
    let issued_bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / TOKENS as f64;
    drop(ledger);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut ledger = Ledger::new(config());
    for (i, e) in per_admission.iter().enumerate() {
        ledger.apply(u64::try_from(i).unwrap_or(u64::MAX) + 1, e);
    }
    let consumed_bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / TOKENS as f64;
    drop(ledger);
    println!(
        "  Issued record (record + expiry/live indices):     {issued_bytes:>6.0} bytes; target <= 256: {}",
        if issued_bytes <= 256.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  Consumed record + its member record and key index: {consumed_bytes:>6.0} bytes (informational)\n"
    );

    // 3. Token verification vs raw HMAC.
    let n = 300_000;
    let secret = JoinSecret::generate(&mut rng);
    let pin = ClusterPin(Hash32([7; 32]));
    let token = JoinToken::issue_random(&secret, pin, &mut rng, FIRST_EXPIRY_UNIX_MS, Role::Member);
    let bytes = token.expose_bytes();
    let text = token.expose_text();
    println!("token verification ({n} each):");
    let start = Instant::now();
    let mut ok = 0usize;
    for _ in 0..n {
        let t = JoinToken::from_bytes(black_box(bytes.as_slice())).expect("valid");
        ok += usize::from(t.verify(&secret, pin, 1_000, 0).is_ok());
    }
    let verify_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ok, n);
    let start = Instant::now();
    for _ in 0..n {
        let t = JoinToken::parse(black_box(text.as_str())).expect("valid");
        black_box(t.verify(&secret, pin, 1_000, 0).is_ok());
    }
    let parse_verify_rate = n as f64 / start.elapsed().as_secs_f64();
    let body = [0u8; 78]; // domain (19) + separator (1) + body (58): what a verify MACs.
    let start = Instant::now();
    for _ in 0..n {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose()).expect("any key");
        m.update(black_box(&body));
        black_box(m.finalize().into_bytes());
    }
    let hmac_rate = n as f64 / start.elapsed().as_secs_f64();
    println!("  raw HMAC-SHA256 (78-byte message):      {hmac_rate:>12.0} ops/s");
    println!(
        "  token from_bytes + verify:              {verify_rate:>12.0} ops/s  ({:.2} x raw HMAC)",
        verify_rate / hmac_rate
    );
    println!(
        "  token parse (hex text) + verify:        {parse_verify_rate:>12.0} ops/s  ({:.2} x raw HMAC)",
        parse_verify_rate / hmac_rate
    );
}
