//! Writes the seed corpora under `fuzz/corpus/<target>/`: real encodings made with the core's
//! own encoders and the fixtures in `src/lib.rs`, so every target starts from valid input.
//!
//! ```text
//! cd fuzz && cargo run --example make_corpus            # writes ./corpus
//! cd fuzz && cargo run --example make_corpus -- DIR     # writes DIR
//! ```
//!
//! The output is deterministic: run it again after a wire-format change and commit the diff.

use std::fs;
use std::path::{Path, PathBuf};

use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::Hash32;
use portcullis_core::ledger::{
    Addrs, Command, LeaseId, Ledger, LogEntry, MemberSpec, NodeId, Outcome, ProposalId,
};
use portcullis_core::token::{Role, TokenHash};
use portcullis_core::wire::{self, BoundedString, HEADER_BYTES};
use portcullis_fuzz::{
    START_UNIX_MS, TOKEN_EXPIRY_UNIX_MS, node_key, presenter, token, token_hash,
};

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));

    let entry = entry_with_every_command();
    let entry_frame = wire::encode_frame(&entry);
    let ledger = ledger_in_every_state();
    let snapshot = ledger.snapshot();
    let empty_snapshot = Ledger::new(LedgerConfig::default()).snapshot();

    write(&out, "wire_envelope/log_entry.bin", &entry_frame);
    write(
        &out,
        "wire_envelope/log_entry_payload.bin",
        &entry_frame[HEADER_BYTES..],
    );
    write(&out, "wire_envelope/ledger_snapshot.bin", &snapshot);

    write(&out, "ledger_snapshot/every_state.bin", &snapshot);
    write(&out, "ledger_snapshot/empty.bin", &empty_snapshot);

    let t = token(0);
    write(&out, "token_parse/token.bin", &t.expose_bytes()[..]);
    write(&out, "token_parse/token.txt", t.expose_text().as_bytes());
    let observer = token(2);
    let padded = format!("  {}\n", observer.expose_text().as_str());
    write(&out, "token_parse/observer_padded.txt", padded.as_bytes());

    // ledger_commands decodes its input with `arbitrary`, whose byte layout is not a stable
    // format: seed it with plain deterministic bytes and let coverage do the rest.
    for (n, len) in [(0u8, 256usize), (1, 1024)] {
        let mut bytes = Vec::with_capacity(len);
        let mut block = Hash32::of(&[b"portcullis.fuzz.seed", &[n]]);
        while bytes.len() < len {
            bytes.extend_from_slice(&block.0);
            block = Hash32::of(&[&block.0]);
        }
        bytes.truncate(len);
        write(&out, &format!("ledger_commands/random_{n}.bin"), &bytes);
    }
}

fn write(root: &Path, name: &str, bytes: &[u8]) {
    assert!(bytes.len() < 4096, "{name}: seed files stay under 4 KiB");
    let path = root.join(name);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("create corpus dir");
    fs::write(&path, bytes).expect("write seed");
    println!("{:>5} bytes  {}", bytes.len(), path.display());
}

fn proposal(seq: u64) -> ProposalId {
    ProposalId {
        node: NodeId(1),
        seq,
    }
}

fn spec(n: usize) -> MemberSpec {
    MemberSpec {
        node_key: node_key(n),
        role: Role::Member,
        addrs: Addrs::try_from_vec(vec![
            BoundedString::try_new("10.0.0.1:7000").expect("short"),
            BoundedString::try_new("[fd00::1]:7000").expect("short"),
        ])
        .expect("two addrs"),
    }
}

/// One entry holding each kind of command.
fn entry_with_every_command() -> LogEntry {
    let hash = token_hash(1);
    LogEntry::new(
        proposal(7),
        START_UNIX_MS,
        vec![
            Command::Register {
                hash,
                expires_at_unix_ms: TOKEN_EXPIRY_UNIX_MS[1],
            },
            Command::BeginInFlight {
                hash,
                presenter: presenter(0),
                lease_id: LeaseId(3),
                lease_ms: 2_000,
            },
            Command::Consume {
                hash,
                presenter: presenter(0),
                lease_id: LeaseId(3),
                member: spec(0),
            },
            Command::Revert {
                hash,
                lease_id: LeaseId(3),
            },
            Command::Expire {
                hash: token_hash(0),
            },
            Command::Abort {
                hash: TokenHash(Hash32([0xab; 32])),
                expires_at_unix_ms: u64::MAX,
            },
        ],
    )
    .expect("few commands")
}

/// A ledger with a consumed token (and its member), a token in flight with a fixture
/// presenter, an issued one, an aborted one, and a proposer session.
fn ledger_in_every_state() -> Ledger {
    let mut ledger = Ledger::new(LedgerConfig::default());
    let register = |n: usize| Command::Register {
        hash: token_hash(n),
        expires_at_unix_ms: TOKEN_EXPIRY_UNIX_MS[n],
    };
    let first = LogEntry::new(
        proposal(1),
        START_UNIX_MS,
        vec![
            register(0),
            register(1),
            register(2),
            Command::Abort {
                hash: token_hash(3),
                expires_at_unix_ms: TOKEN_EXPIRY_UNIX_MS[3],
            },
            Command::BeginInFlight {
                hash: token_hash(1),
                presenter: presenter(0),
                lease_id: LeaseId(1),
                lease_ms: 30_000,
            },
            Command::BeginInFlight {
                hash: token_hash(2),
                presenter: presenter(1),
                lease_id: LeaseId(2),
                lease_ms: 30_000,
            },
        ],
    )
    .expect("few commands");
    ledger.apply(1, &first);
    let second = LogEntry::new(
        proposal(2),
        START_UNIX_MS + 500,
        vec![Command::Consume {
            hash: token_hash(1),
            presenter: presenter(0),
            lease_id: LeaseId(1),
            member: spec(0),
        }],
    )
    .expect("one command");
    let applied = ledger.apply(2, &second);
    assert!(
        matches!(applied.outcomes[..], [Outcome::Consumed { .. }]),
        "{applied:?}"
    );
    assert_eq!(ledger.check_invariants(), Ok(()));
    ledger
}
