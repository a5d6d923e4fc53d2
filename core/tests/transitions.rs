//! The ledger's full transition table as a golden file.
//!
//! Every start state × every command × three points in time (lease valid, lease lapsed, token
//! expired), with the outcome and the resulting state. A change to the table is a change to the
//! protocol: review the diff of `snapshots/transitions__transition_table.snap` line by line.

use std::fmt::Write as _;

use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::{Hash32, SecretKey};
use portcullis_core::ledger::*;
use portcullis_core::token::{Role, TokenHash};

const EXPIRES_AT: u64 = 10_000;
const LEASE_BEGUN_AT: u64 = 1_500;
const LEASE_MS: u64 = 1_000;

fn key(n: u8) -> SecretKey {
    SecretKey::from_secret_bytes(&[n; 32])
}

fn presenter(n: u8) -> PresenterId {
    PresenterId::of(&key(n).public())
}

fn hash() -> TokenHash {
    TokenHash(Hash32([0xaa; 32]))
}

#[derive(Clone, Copy, Debug)]
enum Start {
    Absent,
    Issued,
    InFlight,
    Consumed,
    Expired,
    Aborted,
}

const STARTS: [Start; 6] = [
    Start::Absent,
    Start::Issued,
    Start::InFlight,
    Start::Consumed,
    Start::Expired,
    Start::Aborted,
];

/// (label, entry time): before the lease runs out, after it, after the token's expiry.
const PHASES: [(&str, u64); 3] = [
    ("lease-valid", 2_000),
    ("lease-lapsed", 3_000),
    ("expired", 12_000),
];

fn commands() -> Vec<(&'static str, Command)> {
    let h = hash();
    let consume = |p: u8, lease: u64, key_of: u8| Command::Consume {
        hash: h,
        presenter: presenter(p),
        lease_id: LeaseId(lease),
        member: MemberSpec {
            node_key: key(key_of).public(),
            role: Role::Member,
            addrs: Addrs::new(),
        },
    };
    let begin = |p: u8, lease: u64, lease_ms: u64| Command::BeginInFlight {
        hash: h,
        presenter: presenter(p),
        lease_id: LeaseId(lease),
        lease_ms,
    };
    vec![
        (
            "Register",
            Command::Register {
                hash: h,
                expires_at_unix_ms: EXPIRES_AT,
            },
        ),
        ("BeginInFlight(P1,L1)", begin(1, 1, LEASE_MS)),
        ("BeginInFlight(P2,L2)", begin(2, 2, LEASE_MS)),
        ("BeginInFlight(P2,L2,0ms)", begin(2, 2, 0)),
        ("Consume(P1,L1)", consume(1, 1, 1)),
        ("Consume(P2,L2)", consume(2, 2, 2)),
        ("Consume(P1,L2)", consume(1, 2, 1)),
        ("Consume(P1,L1,key=P2)", consume(1, 1, 2)),
        (
            "Revert(L1)",
            Command::Revert {
                hash: h,
                lease_id: LeaseId(1),
            },
        ),
        (
            "Revert(L2)",
            Command::Revert {
                hash: h,
                lease_id: LeaseId(2),
            },
        ),
        ("Expire", Command::Expire { hash: h }),
        (
            "Abort",
            Command::Abort {
                hash: h,
                expires_at_unix_ms: EXPIRES_AT,
            },
        ),
    ]
}

/// A ledger whose token is in `start`, built through real commands.
fn ledger_in(start: Start) -> (Ledger, u64) {
    let mut ledger = Ledger::new(LedgerConfig::default());
    let h = hash();
    let mut setup: Vec<(u64, Command)> = Vec::new();
    let register = Command::Register {
        hash: h,
        expires_at_unix_ms: EXPIRES_AT,
    };
    let begin = Command::BeginInFlight {
        hash: h,
        presenter: presenter(1),
        lease_id: LeaseId(1),
        lease_ms: LEASE_MS,
    };
    match start {
        Start::Absent => {}
        Start::Issued => setup.push((1_000, register)),
        Start::InFlight => setup.extend([(1_000, register), (LEASE_BEGUN_AT, begin)]),
        Start::Consumed => setup.extend([
            (1_000, register),
            (LEASE_BEGUN_AT, begin),
            (
                1_600,
                Command::Consume {
                    hash: h,
                    presenter: presenter(1),
                    lease_id: LeaseId(1),
                    member: MemberSpec {
                        node_key: key(1).public(),
                        role: Role::Member,
                        addrs: Addrs::new(),
                    },
                },
            ),
        ]),
        // Expire needs ledger time at expiry; the table's later phases then start there.
        Start::Expired => {
            setup.extend([(1_000, register), (EXPIRES_AT, Command::Expire { hash: h })])
        }
        Start::Aborted => setup.extend([
            (1_000, register),
            (
                LEASE_BEGUN_AT,
                Command::Abort {
                    hash: h,
                    expires_at_unix_ms: EXPIRES_AT,
                },
            ),
        ]),
    }
    let mut index = 0;
    for (unix_ms, command) in setup {
        index += 1;
        let entry = LogEntry::new(
            ProposalId {
                node: NodeId(9),
                seq: index,
            },
            unix_ms,
            vec![command],
        )
        .unwrap();
        let applied = ledger.apply(index, &entry);
        assert!(
            applied.outcomes.iter().all(|o| o.refusal().is_none()),
            "setup of {start:?} was refused: {applied:?}"
        );
    }
    (ledger, index)
}

fn show_state(ledger: &Ledger) -> String {
    let Some(record) = ledger.record(&hash()) else {
        return "absent".into();
    };
    let who = |p: &PresenterId| {
        (1..=2)
            .find(|n| presenter(*n) == *p)
            .map_or("P?".to_string(), |n| format!("P{n}"))
    };
    let state = match record.state {
        TokenState::Issued => "Issued".to_string(),
        TokenState::InFlight {
            presenter,
            lease_id,
            lease_until_unix_ms,
        } => format!(
            "InFlight({},L{},until={lease_until_unix_ms})",
            who(&presenter),
            lease_id.0
        ),
        TokenState::Consumed {
            presenter,
            member_id,
            ..
        } => format!("Consumed({},m{})", who(&presenter), member_id.0),
        TokenState::Expired => "Expired".to_string(),
        TokenState::Aborted => "Aborted".to_string(),
    };
    format!("{state} attempts={}", record.attempts)
}

// The header is written through the rows' format string so the columns line up.
#[allow(clippy::write_literal)]
fn table() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "token expires_at={EXPIRES_AT}; InFlight = lease L1 of P1 taken at {LEASE_BEGUN_AT} for {LEASE_MS} ms\n\
         clock = ledger time the command ran at = max(ledger clock after setup, entry time)\n"
    );
    let _ = writeln!(
        out,
        "{:<9} {:<13} {:>6}  {:<25} {:<46} {}",
        "start", "phase", "clock", "command", "outcome", "after"
    );
    for start in STARTS {
        for (phase, unix_ms) in PHASES {
            for (name, command) in commands() {
                let (mut ledger, last) = ledger_in(start);
                let entry = LogEntry::new(
                    ProposalId {
                        node: NodeId(1),
                        seq: 1,
                    },
                    unix_ms,
                    vec![command],
                )
                .unwrap();
                let applied = ledger.apply(last + 1, &entry);
                assert_eq!(ledger.check_invariants(), Ok(()));
                let _ = writeln!(
                    out,
                    "{:<9} {:<13} {:>6}  {:<25} {:<46} {}",
                    format!("{start:?}"),
                    phase,
                    ledger.clock_unix_ms(),
                    name,
                    format!("{:?}", applied.outcomes[0]),
                    show_state(&ledger)
                );
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn transition_table() {
    insta::assert_snapshot!(table());
}
