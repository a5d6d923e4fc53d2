//! Hostile snapshots: `Ledger::from_snapshot` must never panic, a snapshot it accepts must be
//! consistent and round-trip, and the ledger it builds must go on applying entries without
//! breaking its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::config::LedgerConfig;
use portcullis_core::ledger::{
    Addrs, Command, LeaseId, Ledger, LogEntry, MAX_COMMANDS_PER_ENTRY, MemberSpec, NodeId,
    PresenterId, ProposalId, TokenState,
};
use portcullis_core::token::Role;
use portcullis_fuzz::{PRESENTERS, node_key, presenter};

const MAX_SNAPSHOT_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let config = LedgerConfig::default();
    let Ok(ledger) = Ledger::from_snapshot(config.clone(), data, MAX_SNAPSHOT_BYTES) else {
        return;
    };
    assert_eq!(ledger.check_invariants(), Ok(()));
    let bytes = ledger.snapshot();
    let again = Ledger::from_snapshot(config, &bytes, MAX_SNAPSHOT_BYTES)
        .expect("a ledger's own snapshot must load");
    assert_eq!(again.digest(), ledger.digest());
    assert_eq!(again.state(), ledger.state());
    assert_eq!(again.snapshot(), bytes);
    keep_applying(again);
});

/// Applies one entry made from the loaded state (take every lease to its end, lease every
/// issued token, poke the final ones, plus what the sweeper asks for), then checks that the
/// invariants still hold and that no consumed record changed.
fn keep_applying(mut ledger: Ledger) {
    let now = ledger.clock_unix_ms().saturating_add(1);
    let mut commands = Vec::new();
    for (&hash, record) in ledger.state().records.iter().take(64) {
        match record.state {
            TokenState::InFlight {
                presenter: holder,
                lease_id,
                ..
            } => {
                let key = (0..PRESENTERS)
                    .map(node_key)
                    .find(|k| PresenterId::of(k) == holder)
                    .unwrap_or_else(|| node_key(0));
                commands.push(Command::Consume {
                    hash,
                    presenter: holder,
                    lease_id,
                    member: MemberSpec {
                        node_key: key,
                        role: Role::Member,
                        addrs: Addrs::new(),
                    },
                });
            }
            TokenState::Issued => commands.push(Command::BeginInFlight {
                hash,
                presenter: presenter(1),
                lease_id: LeaseId(7),
                lease_ms: 1_000,
            }),
            TokenState::Consumed { .. } => {
                commands.push(Command::Abort {
                    hash,
                    expires_at_unix_ms: record.expires_at_unix_ms,
                });
                commands.push(Command::Expire { hash });
            }
            TokenState::Expired | TokenState::Aborted => commands.push(Command::Register {
                hash,
                expires_at_unix_ms: record.expires_at_unix_ms,
            }),
        }
    }
    commands.extend(ledger.sweep(now, 16));
    commands.truncate(MAX_COMMANDS_PER_ENTRY);
    let entry = LogEntry::new(
        ProposalId {
            node: NodeId(0xf022),
            seq: 1,
        },
        now,
        commands,
    )
    .expect("truncated to the bound");

    let consumed_before: Vec<_> = ledger
        .state()
        .records
        .iter()
        .filter(|(_, r)| matches!(r.state, TokenState::Consumed { .. }))
        .map(|(h, r)| (*h, *r))
        .collect();
    let index = ledger.applied_index().saturating_add(1);
    ledger.apply(index, &entry);
    assert_eq!(ledger.check_invariants(), Ok(()));
    let grace = ledger.config().record_grace_ms;
    for (hash, before) in consumed_before {
        match ledger.record(&hash) {
            Some(after) => assert_eq!(after.state, before.state, "a Consumed record changed"),
            None => assert!(
                ledger.clock_unix_ms() >= before.expires_at_unix_ms.saturating_add(grace),
                "a Consumed record was purged before its retention ran out"
            ),
        }
    }
}
