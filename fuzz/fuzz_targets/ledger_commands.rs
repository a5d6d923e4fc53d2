//! Sequences of ledger commands over a small space of tokens, presenters and leases, applied
//! as committed log entries. After every step the ledger's own invariants must hold, no token
//! may be consumed by two presenters, and a consumed record may never change (only be purged
//! once its retention has passed, and then never come back).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_core::config::LedgerConfig;
use portcullis_core::ledger::{
    Addrs, Command, Disposition, LeaseId, Ledger, LogEntry, MemberSpec, NodeId, Outcome,
    PresenterId, ProposalId, Refusal, TokenState,
};
use portcullis_core::token::{Role, TokenHash};
use portcullis_core::wire::BoundedString;
use portcullis_fuzz::{
    PRESENTERS, START_UNIX_MS, TOKENS, node_key, presenter, small_ledger_config, token_hash,
};

/// Most commands taken from one `Op::Entry`.
const MAX_COMMANDS: usize = 16;
/// Most ops run from one input.
const MAX_OPS: usize = 256;
/// Proposers: nodes 0..PROPOSERS propose entries, node SWEEPER proposes the sweeper's.
const PROPOSERS: u8 = 3;
const SWEEPER: u64 = 9;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Tok(u8);
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pres(u8);
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Lease(u8);

impl Tok {
    fn hash(self) -> TokenHash {
        token_hash(usize::from(self.0) % TOKENS)
    }
}
impl Pres {
    fn index(self) -> usize {
        usize::from(self.0) % PRESENTERS
    }
}
impl Lease {
    fn id(self) -> LeaseId {
        LeaseId(u64::from(self.0 % 4))
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Cmd {
    Register {
        token: Tok,
    },
    Begin {
        token: Tok,
        presenter: Pres,
        lease: Lease,
        /// Taken modulo 6_001, so zero and over-`max_lease_ms` leases both occur.
        lease_ms: u16,
    },
    Consume {
        token: Tok,
        presenter: Pres,
        lease: Lease,
        /// Usually the presenter's own key; sometimes another one (a lying listener).
        key: Option<Pres>,
        addrs: u8,
    },
    Revert {
        token: Tok,
        lease: Lease,
    },
    Expire {
        token: Tok,
    },
    Abort {
        token: Tok,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    /// The proposer's next sequence number.
    Next,
    /// Commit again one of this proposer's earlier proposals, unchanged (a proposal forwarded
    /// twice and committed twice).
    Again(u8),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// One committed entry.
    Entry {
        node: u8,
        seq: Seq,
        advance_ms: u16,
        /// How far behind the driver clock the proposer's clock is.
        lag_ms: u16,
        /// Leave a gap in the log indices (a non-ledger Raft entry).
        gap: bool,
        commands: Vec<Cmd>,
    },
    /// The leader sweeps and commits what the sweeper proposes.
    Sweep { advance_ms: u16, max_commands: u8 },
    /// Re-apply an index at or below `applied_index`: must be a no-op.
    Replay { back: u8 },
    /// Snapshot and restore from the snapshot: nothing may change.
    SnapshotRestore,
}

fn command(cmd: &Cmd) -> Command {
    match *cmd {
        Cmd::Register { token } => Command::Register {
            hash: token.hash(),
            expires_at_unix_ms: expiry(token),
        },
        Cmd::Begin {
            token,
            presenter: p,
            lease,
            lease_ms,
        } => Command::BeginInFlight {
            hash: token.hash(),
            presenter: presenter(p.index()),
            lease_id: lease.id(),
            lease_ms: u64::from(lease_ms % 6_001),
        },
        Cmd::Consume {
            token,
            presenter: p,
            lease,
            key,
            addrs,
        } => {
            let mut list = Vec::new();
            for n in 0..addrs % 3 {
                list.push(BoundedString::try_new(format!("10.0.0.{n}:7000")).expect("short"));
            }
            Command::Consume {
                hash: token.hash(),
                presenter: presenter(p.index()),
                lease_id: lease.id(),
                member: MemberSpec {
                    node_key: node_key(key.unwrap_or(p).index()),
                    role: if addrs & 0x80 == 0 {
                        Role::Member
                    } else {
                        Role::Observer
                    },
                    addrs: Addrs::try_from_vec(list).expect("few addrs"),
                },
            }
        }
        Cmd::Revert { token, lease } => Command::Revert {
            hash: token.hash(),
            lease_id: lease.id(),
        },
        Cmd::Expire { token } => Command::Expire { hash: token.hash() },
        Cmd::Abort { token } => Command::Abort {
            hash: token.hash(),
            expires_at_unix_ms: expiry(token),
        },
    }
}

fn expiry(token: Tok) -> u64 {
    portcullis_fuzz::TOKEN_EXPIRY_UNIX_MS[usize::from(token.0) % TOKENS]
}

/// The driver and what it has seen, to check the ledger against.
struct Harness {
    config: LedgerConfig,
    ledger: Ledger,
    /// Driver wall clock, never going back.
    clock: u64,
    next_index: u64,
    /// Per proposer: the next seq and every entry it proposed, by seq.
    proposals: BTreeMap<u64, (u64, BTreeMap<u64, LogEntry>)>,
    /// First outcomes of every fresh proposal.
    first_outcomes: BTreeMap<ProposalId, Vec<Outcome>>,
    /// Who consumed each token, ever.
    consumed_by: BTreeMap<TokenHash, PresenterId>,
    /// The consumed record as it was when first seen; removed once purged.
    consumed_state: BTreeMap<TokenHash, TokenState>,
    /// Records seen in the previous step.
    present: BTreeSet<TokenHash>,
    /// Tokens whose record was purged: they must never come back.
    purged: BTreeSet<TokenHash>,
}

impl Harness {
    fn new() -> Harness {
        let config = small_ledger_config();
        assert_eq!(config.validate(), Ok(()));
        Harness {
            ledger: Ledger::new(config.clone()),
            config,
            clock: START_UNIX_MS,
            next_index: 1,
            proposals: BTreeMap::new(),
            first_outcomes: BTreeMap::new(),
            consumed_by: BTreeMap::new(),
            consumed_state: BTreeMap::new(),
            present: BTreeSet::new(),
            purged: BTreeSet::new(),
        }
    }

    fn propose(&mut self, node: u64, commands: Vec<Command>, unix_ms: u64) -> LogEntry {
        let (next_seq, sent) = self.proposals.entry(node).or_default();
        *next_seq += 1;
        let entry = LogEntry::new(
            ProposalId {
                node: NodeId(node),
                seq: *next_seq,
            },
            unix_ms,
            commands,
        )
        .expect("at most MAX_COMMANDS commands");
        sent.insert(*next_seq, entry.clone());
        entry
    }

    fn apply(&mut self, entry: &LogEntry) -> Vec<Outcome> {
        let index = self.next_index;
        self.next_index += 1;
        let applied = self.ledger.apply(index, entry);
        assert_eq!(applied.index, index);
        assert_eq!(applied.proposal, entry.proposal);
        assert_eq!(applied.outcomes.len(), entry.commands.len());
        assert_eq!(self.ledger.applied_index(), index);
        match applied.disposition {
            Disposition::Fresh => {
                let earlier = self
                    .first_outcomes
                    .insert(entry.proposal, applied.outcomes.clone());
                assert_eq!(earlier, None, "a proposal was applied fresh twice");
                for (command, outcome) in entry.commands.iter().zip(&applied.outcomes) {
                    self.check_outcome(command, outcome);
                }
            }
            Disposition::DuplicateProposal => {
                assert_eq!(
                    self.first_outcomes.get(&entry.proposal),
                    Some(&applied.outcomes),
                    "a duplicate got other outcomes than the first commit"
                );
            }
            Disposition::StaleProposal => {
                assert!(self.first_outcomes.contains_key(&entry.proposal));
                assert!(
                    applied
                        .outcomes
                        .iter()
                        .all(|o| *o == Outcome::Refused(Refusal::StaleProposal))
                );
            }
            other => panic!("index {index} is new, yet the entry was {other:?}"),
        }
        self.check();
        applied.outcomes
    }

    fn check_outcome(&mut self, command: &Command, outcome: &Outcome) {
        if let (
            Command::Consume {
                hash,
                presenter,
                member,
                ..
            },
            Outcome::Consumed { member_id },
        ) = (command, outcome)
        {
            let before = self.consumed_by.insert(*hash, *presenter);
            assert_eq!(before, None, "token consumed twice (first by {before:?})");
            let record = self
                .ledger
                .member(*member_id)
                .expect("consumed into a member");
            assert_eq!(record.token_hash, *hash);
            assert_eq!(record.node_key, member.node_key);
            assert_eq!(PresenterId::of(&record.node_key), *presenter);
        }
    }

    /// Everything that must hold between two steps.
    fn check(&mut self) {
        assert_eq!(self.ledger.check_invariants(), Ok(()));
        let now = self.ledger.clock_unix_ms();
        assert!(now <= self.clock, "ledger clock ahead of every proposer");
        let records = &self.ledger.state().records;

        for (hash, record) in records {
            assert!(!self.purged.contains(hash), "a purged token came back");
            if let TokenState::Consumed { presenter, .. } = record.state {
                let first = *self.consumed_by.entry(*hash).or_insert(presenter);
                assert_eq!(first, presenter, "token consumed by two presenters");
                let seen = *self.consumed_state.entry(*hash).or_insert(record.state);
                assert_eq!(seen, record.state, "a Consumed record changed");
            }
        }
        for hash in &self.present {
            if records.contains_key(hash) {
                continue;
            }
            // Purged: only once its retention has passed.
            let expires = expiry_of(hash);
            assert!(
                now >= expires.saturating_add(self.config.record_grace_ms),
                "record purged before its retention ran out"
            );
            self.purged.insert(*hash);
            self.consumed_state.remove(hash);
        }
        self.present = records.keys().copied().collect();
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Entry {
                node,
                seq,
                advance_ms,
                lag_ms,
                gap,
                commands,
            } => {
                self.clock += u64::from(*advance_ms);
                if *gap {
                    self.ledger.advance_applied(self.next_index);
                    self.next_index += 1;
                }
                let node = u64::from(node % PROPOSERS);
                let again = match seq {
                    Seq::Again(back) => self.proposals.get(&node).and_then(|(_, sent)| {
                        sent.values()
                            .rev()
                            .nth(usize::from(*back) % sent.len())
                            .cloned()
                    }),
                    Seq::Next => None,
                };
                let entry = again.unwrap_or_else(|| {
                    let commands = commands.iter().take(MAX_COMMANDS).map(command).collect();
                    let unix_ms = self.clock.saturating_sub(u64::from(*lag_ms));
                    self.propose(node, commands, unix_ms)
                });
                self.apply(&entry);
            }
            Op::Sweep {
                advance_ms,
                max_commands,
            } => {
                self.clock += u64::from(*advance_ms);
                let commands = self
                    .ledger
                    .sweep(self.clock, usize::from(*max_commands % 8));
                let entry = self.propose(SWEEPER, commands, self.clock);
                let outcomes = self.apply(&entry);
                // Applied at the clock it was computed for, every proposal of the sweeper
                // succeeds, unless the token was purged first.
                for (command, outcome) in entry.commands.iter().zip(&outcomes) {
                    let ok = match command {
                        Command::Expire { .. } => *outcome == Outcome::Expired,
                        Command::Revert { .. } => *outcome == Outcome::Reverted,
                        other => panic!("the sweeper proposed {other:?}"),
                    };
                    assert!(
                        ok || *outcome == Outcome::Refused(Refusal::UnknownToken),
                        "{command:?} -> {outcome:?}"
                    );
                }
            }
            Op::Replay { back } => {
                let applied = self.ledger.applied_index();
                let index = applied.saturating_sub(u64::from(*back));
                let digest = self.ledger.digest();
                let entry = LogEntry::new(ProposalId::default(), u64::MAX, vec![]).expect("empty");
                let result = self.ledger.apply(index, &entry);
                assert_eq!(result.disposition, Disposition::AlreadyApplied);
                assert!(result.outcomes.is_empty());
                assert_eq!(self.ledger.digest(), digest);
            }
            Op::SnapshotRestore => {
                let bytes = self.ledger.snapshot();
                let restored = Ledger::from_snapshot(self.config.clone(), &bytes, 64 << 20)
                    .expect("a ledger's own snapshot must load");
                assert_eq!(restored.digest(), self.ledger.digest());
                assert_eq!(restored.state(), self.ledger.state());
                assert_eq!(restored.snapshot(), bytes);
                self.ledger = restored;
                self.check();
            }
        }
    }
}

fn expiry_of(hash: &TokenHash) -> u64 {
    (0..TOKENS)
        .find(|&n| token_hash(n) == *hash)
        .map(|n| portcullis_fuzz::TOKEN_EXPIRY_UNIX_MS[n])
        .expect("only fixture tokens are registered")
}

fuzz_target!(|ops: Vec<Op>| {
    let mut harness = Harness::new();
    for op in ops.iter().take(MAX_OPS) {
        harness.run(op);
    }
});
