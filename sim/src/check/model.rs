//! The spec model of the ledger, fed with the committed log, compared with every replica.
//!
//! [`SpecLedger`] re-implements the token lifecycle of DESIGN.md ("Ledger") from its table —
//! independently of `portcullis_core::ledger::Ledger::apply`, but producing the same
//! [`LedgerState`] value (records, registry, sessions and outcomes), so a replica and the model
//! can be compared *exactly* at equal applied index. A bug planted in the core's apply (a
//! `Register` that overwrites, a `Revert` that ignores its lease) makes the replica's state
//! differ from the model's at the first entry that exercises it.
//!
//! [`LogChecker`] learns the committed log from the simulated disks: whenever a batch becomes
//! durable, every entry at or below that node's persisted commit index is committed. Entries
//! seen at one index from several nodes must be identical (Raft's state machine safety). The
//! contiguous prefix is applied to the model; each replica observation is compared with the
//! model's state at the replica's applied index (waiting, bounded, if the model is behind).
//!
//! ```text
//!   disk of node n: hard_state.commit = c, entries ≤ c ──▶ committed[i] agree? ──▶ model.apply(i)
//!   replica n at applied a: fingerprint(state) ──▶ == model_fp[a]?   (or wait until model ≥ a)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::PublicKey;
use portcullis_core::ledger::{
    Command, LeaseId, LedgerState, LogEntry, MemberId, MemberRecord, MemberSpec, NodeId, Outcome,
    PresenterId, ProposalId, Refusal, Session, TokenRecord, TokenState,
};
use portcullis_core::replication::raft_wire::{EntryPayload, EntryWire};
use portcullis_core::time::Instant;
use portcullis_core::token::TokenHash;
use portcullis_core::wire;

use super::{Checker, ReplicaView, Violation};
use crate::facts::Facts;
use crate::report::FailureKind;
use crate::trace::fingerprint;

/// The ledger as DESIGN.md's table defines it.
#[derive(Clone, Debug)]
pub(crate) struct SpecLedger {
    config: LedgerConfig,
    state: LedgerState,
    by_key: BTreeMap<PublicKey, MemberId>,
}

impl SpecLedger {
    /// The founding state: founders are members `1..=n`, admitted by no token, applied through
    /// index 1 (the founding snapshot).
    pub(crate) fn bootstrap(config: LedgerConfig, founders: &[MemberSpec]) -> SpecLedger {
        let mut spec = SpecLedger {
            config,
            state: LedgerState {
                applied_index: 1,
                next_member_id: 1,
                ..LedgerState::default()
            },
            by_key: BTreeMap::new(),
        };
        for f in founders {
            let id = MemberId(spec.state.next_member_id);
            spec.state.next_member_id += 1;
            spec.by_key.insert(f.node_key, id);
            spec.state.members.insert(
                id,
                MemberRecord {
                    member_id: id,
                    node_key: f.node_key,
                    role: f.role,
                    addrs: f.addrs.clone(),
                    token_hash: TokenHash::default(),
                    admitted_at_unix_ms: 0,
                },
            );
        }
        spec
    }

    pub(crate) fn state(&self) -> &LedgerState {
        &self.state
    }

    pub(crate) fn applied(&self) -> u64 {
        self.state.applied_index
    }

    /// A committed Raft entry that is not a ledger entry (empty, conf change, undecodable).
    pub(crate) fn skip(&mut self, index: u64) {
        self.state.applied_index = self.state.applied_index.max(index);
    }

    /// Applies the ledger entry committed at `index`.
    pub(crate) fn apply(&mut self, index: u64, entry: &LogEntry) {
        if index <= self.state.applied_index {
            return;
        }
        self.state.applied_index = index;
        // Ledger time never runs backwards: the max of every entry's proposer clock.
        self.state.clock_unix_ms = self.state.clock_unix_ms.max(entry.unix_ms);
        self.purge();
        let p = entry.proposal;
        let session = self.state.sessions.get(&p.node);
        if session.is_some_and(|s| p.seq < s.floor_seq) {
            return; // Stale: every command refused, nothing recorded.
        }
        if session.is_some_and(|s| s.recent.contains_key(&p.seq)) {
            return; // Duplicate: applied before, its first outcomes stand.
        }
        let outcomes: Vec<Outcome> = entry.commands.iter().map(|c| self.command(c)).collect();
        self.remember(p, index, outcomes);
    }

    /// Records past retention (`expires_at + grace ≤ clock`) disappear, oldest expiry first, at
    /// most `max_purge_per_entry` per entry.
    fn purge(&mut self) {
        let now = self.state.clock_unix_ms;
        let grace = self.config.record_grace_ms;
        let mut due: Vec<(u64, TokenHash)> = self
            .state
            .records
            .iter()
            .filter(|(_, r)| r.expires_at_unix_ms.saturating_add(grace) <= now)
            .map(|(h, r)| (r.expires_at_unix_ms, *h))
            .collect();
        due.sort_unstable();
        let budget = usize::try_from(self.config.max_purge_per_entry).unwrap_or(usize::MAX);
        for (_, h) in due.into_iter().take(budget) {
            self.state.records.remove(&h);
        }
    }

    fn remember(&mut self, p: ProposalId, index: u64, outcomes: Vec<Outcome>) {
        let max_sessions = usize::try_from(self.config.max_members)
            .unwrap_or(usize::MAX)
            .saturating_add(16);
        if !self.state.sessions.contains_key(&p.node) && self.state.sessions.len() >= max_sessions {
            let quietest: Option<NodeId> = self
                .state
                .sessions
                .iter()
                .min_by_key(|(n, s)| (s.last_index, **n))
                .map(|(n, _)| *n);
            if let Some(n) = quietest {
                self.state.sessions.remove(&n);
            }
        }
        let window = usize::try_from(self.config.proposal_window).unwrap_or(usize::MAX);
        let s: &mut Session = self.state.sessions.entry(p.node).or_default();
        s.recent.insert(p.seq, outcomes);
        s.last_index = index;
        while s.recent.len() > window {
            if let Some((oldest, _)) = s.recent.pop_first() {
                s.floor_seq = s.floor_seq.max(oldest.saturating_add(1));
            }
        }
    }

    fn command(&mut self, c: &Command) -> Outcome {
        let now = self.state.clock_unix_ms;
        match c {
            Command::Register {
                hash,
                expires_at_unix_ms,
            } => self.insert(
                *hash,
                TokenState::Issued,
                *expires_at_unix_ms,
                Outcome::Registered,
            ),
            Command::BeginInFlight {
                hash,
                presenter,
                lease_id,
                lease_ms,
            } => self.begin(now, *hash, *presenter, *lease_id, *lease_ms),
            Command::Consume {
                hash,
                presenter,
                lease_id,
                member,
            } => self.consume(now, *hash, *presenter, *lease_id, member),
            Command::Revert { hash, lease_id } => {
                let Some(r) = self.state.records.get_mut(hash) else {
                    return Outcome::Refused(Refusal::UnknownToken);
                };
                match r.state {
                    // Only the lease that is held can be given back.
                    TokenState::InFlight { lease_id: held, .. } if held == *lease_id => {
                        r.state = TokenState::Issued;
                        Outcome::Reverted
                    }
                    TokenState::InFlight { .. } => Outcome::Refused(Refusal::LeaseMismatch),
                    _ => Outcome::Refused(Refusal::NotInFlight),
                }
            }
            Command::Expire { hash } => {
                let Some(r) = self.state.records.get_mut(hash) else {
                    return Outcome::Refused(Refusal::UnknownToken);
                };
                if matches!(r.state, TokenState::Consumed { .. }) {
                    return Outcome::Refused(Refusal::ConsumedIsFinal);
                }
                if now < r.expires_at_unix_ms {
                    return Outcome::Refused(Refusal::NotYetExpired);
                }
                r.state = TokenState::Expired;
                Outcome::Expired
            }
            Command::Abort {
                hash,
                expires_at_unix_ms,
            } => match self.state.records.get_mut(hash) {
                None => self.insert(
                    *hash,
                    TokenState::Aborted,
                    *expires_at_unix_ms,
                    Outcome::Aborted,
                ),
                Some(r) if matches!(r.state, TokenState::Consumed { .. }) => {
                    Outcome::Refused(Refusal::ConsumedIsFinal)
                }
                Some(r) => {
                    r.state = TokenState::Aborted;
                    Outcome::Aborted
                }
            },
        }
    }

    /// Inserts a record if absent; an existing record is **never** overwritten.
    fn insert(
        &mut self,
        hash: TokenHash,
        state: TokenState,
        expires: u64,
        done: Outcome,
    ) -> Outcome {
        if self.state.records.contains_key(&hash) {
            return Outcome::AlreadyRegistered;
        }
        if expires.saturating_add(self.config.record_grace_ms) <= self.state.clock_unix_ms {
            return Outcome::Refused(Refusal::PastRetention);
        }
        let max = usize::try_from(self.config.max_token_records).unwrap_or(usize::MAX);
        if self.state.records.len() >= max {
            return Outcome::Refused(Refusal::LedgerFull);
        }
        self.state.records.insert(
            hash,
            TokenRecord {
                state,
                expires_at_unix_ms: expires,
                attempts: 0,
            },
        );
        done
    }

    fn begin(
        &mut self,
        now: u64,
        hash: TokenHash,
        presenter: PresenterId,
        lease_id: LeaseId,
        lease_ms: u64,
    ) -> Outcome {
        if lease_ms == 0 || lease_ms > self.config.max_lease_ms {
            return Outcome::Refused(Refusal::InvalidLease);
        }
        let Some(r) = self.state.records.get_mut(&hash) else {
            return Outcome::Refused(Refusal::UnknownToken);
        };
        match r.state {
            TokenState::Consumed { .. } => return Outcome::Refused(Refusal::AlreadyConsumed),
            TokenState::Aborted => return Outcome::Refused(Refusal::TokenAborted),
            TokenState::Expired => return Outcome::Refused(Refusal::TokenExpired),
            TokenState::InFlight {
                presenter: holder,
                lease_id: held,
                lease_until_unix_ms,
            } => {
                if holder == presenter && held == lease_id {
                    return Outcome::LeaseAlreadyHeld;
                }
                // Another lease can only be taken once the held one has run out.
                if now < lease_until_unix_ms {
                    return Outcome::Refused(Refusal::LeaseHeldByOther {
                        lease_until_unix_ms,
                    });
                }
            }
            TokenState::Issued => {}
        }
        if now >= r.expires_at_unix_ms {
            return Outcome::Refused(Refusal::TokenExpired);
        }
        r.attempts = r.attempts.saturating_add(1);
        r.state = TokenState::InFlight {
            presenter,
            lease_id,
            lease_until_unix_ms: now.saturating_add(lease_ms),
        };
        Outcome::LeaseBegun {
            attempt: r.attempts,
        }
    }

    fn consume(
        &mut self,
        now: u64,
        hash: TokenHash,
        presenter: PresenterId,
        lease_id: LeaseId,
        member: &MemberSpec,
    ) -> Outcome {
        if PresenterId::of(&member.node_key) != presenter {
            return Outcome::Refused(Refusal::PresenterKeyMismatch);
        }
        let Some(r) = self.state.records.get(&hash) else {
            return Outcome::Refused(Refusal::UnknownToken);
        };
        match r.state {
            TokenState::Consumed {
                presenter: consumer,
                member_id,
                ..
            } => {
                return if consumer == presenter {
                    Outcome::AlreadyConsumedBySame { member_id }
                } else {
                    Outcome::Refused(Refusal::AlreadyConsumed)
                };
            }
            TokenState::Issued => return Outcome::Refused(Refusal::NotInFlight),
            TokenState::Expired => return Outcome::Refused(Refusal::TokenExpired),
            TokenState::Aborted => return Outcome::Refused(Refusal::TokenAborted),
            TokenState::InFlight {
                presenter: holder,
                lease_id: held,
                lease_until_unix_ms,
            } => {
                // Only the lease holder consumes, and only while its lease is valid.
                if holder != presenter || held != lease_id {
                    return Outcome::Refused(Refusal::LeaseMismatch);
                }
                if now >= lease_until_unix_ms {
                    return Outcome::Refused(Refusal::LeaseLapsed);
                }
            }
        }
        let member_id = MemberId(self.state.next_member_id);
        let Some(next) = self.state.next_member_id.checked_add(1) else {
            return Outcome::Refused(Refusal::MembershipFull);
        };
        let max = usize::try_from(self.config.max_members).unwrap_or(usize::MAX);
        if self.state.members.len() >= max {
            return Outcome::Refused(Refusal::MembershipFull);
        }
        if let Some(existing) = self.by_key.get(&member.node_key) {
            return Outcome::Refused(Refusal::NodeAlreadyMember {
                member_id: *existing,
            });
        }
        self.by_key.insert(member.node_key, member_id);
        self.state.next_member_id = next;
        self.state.members.insert(
            member_id,
            MemberRecord {
                member_id,
                node_key: member.node_key,
                role: member.role,
                addrs: member.addrs.clone(),
                token_hash: hash,
                admitted_at_unix_ms: now,
            },
        );
        if let Some(r) = self.state.records.get_mut(&hash) {
            r.state = TokenState::Consumed {
                presenter,
                member_id,
                at_unix_ms: now,
            };
        }
        Outcome::Consumed { member_id }
    }
}

/// Most replica observations waiting for the model to catch up.
const MAX_WAITING: usize = 1_024;
/// Most committed entries held while an earlier index is still unknown.
const MAX_GAP_ENTRIES: usize = 65_536;
/// Model states kept for readable mismatch reports.
const RECENT_STATES: usize = 256;

/// Committed-log agreement and replica-vs-model comparison.
#[derive(Debug)]
pub(crate) struct LogChecker {
    spec: SpecLedger,
    /// Index → (term, fingerprint of the entry) of every committed entry seen.
    committed: BTreeMap<u64, (u64, u64, usize)>,
    /// Committed entries past a gap, waiting to be applied.
    ahead: BTreeMap<u64, EntryWire>,
    /// Index → fingerprint of the model state after applying it.
    model_fp: BTreeMap<u64, u64>,
    recent: VecDeque<LedgerState>,
    /// Replica observations ahead of the model: (node, index, fingerprint, state for reports).
    /// Replicas at one index with one fingerprint share one copy of the state.
    waiting: VecDeque<(usize, u64, u64, Arc<LedgerState>)>,
    /// Observations never compared (the waiting queue overflowed).
    pub unchecked: u64,
    /// Observations compared.
    pub compared: u64,
    /// Every token that ever had a record (forged and wrong-cluster tokens must never).
    tokens_seen: BTreeSet<TokenHash>,
}

/// Fingerprint of a ledger state (its canonical encoding).
pub(crate) fn state_fingerprint(state: &LedgerState) -> u64 {
    encoded_fingerprint(|buffer| wire::encode_into(state, buffer))
}

/// Fingerprint of what `encode` writes. Every replica's every applied index and committed
/// entry is fingerprinted: one buffer per thread (a seed runs on one thread) instead of a
/// fresh, regrown one each time.
pub(crate) fn encoded_fingerprint(encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        encode(buffer);
        fingerprint(buffer)
    })
}

impl LogChecker {
    pub(crate) fn new(spec: SpecLedger) -> LogChecker {
        let mut model_fp = BTreeMap::new();
        model_fp.insert(spec.applied(), state_fingerprint(spec.state()));
        let recent = VecDeque::from([spec.state().clone()]);
        LogChecker {
            spec,
            committed: BTreeMap::new(),
            ahead: BTreeMap::new(),
            model_fp,
            recent,
            waiting: VecDeque::new(),
            unchecked: 0,
            compared: 0,
            tokens_seen: BTreeSet::new(),
        }
    }

    /// Every token the model's ledger ever held a record for.
    pub(crate) fn tokens_seen(&self) -> &BTreeSet<TokenHash> {
        &self.tokens_seen
    }

    /// Highest index the model applied.
    pub(crate) fn model_index(&self) -> u64 {
        self.spec.applied()
    }

    /// The model's current state.
    pub(crate) fn model_state(&self) -> &LedgerState {
        self.spec.state()
    }

    fn apply_entry(&mut self, e: &EntryWire) {
        match &e.payload {
            EntryPayload::Normal(data) if data.is_empty() => self.spec.skip(e.index),
            EntryPayload::Normal(data) => match wire::decode_exact::<LogEntry>(data) {
                Ok(entry) => self.spec.apply(e.index, &entry),
                // Every replica skips undecodable bytes alike.
                Err(_) => self.spec.skip(e.index),
            },
            EntryPayload::ConfChangeV2(_) => self.spec.skip(e.index),
        }
        self.tokens_seen
            .extend(self.spec.state().records.keys().copied());
        self.model_fp
            .insert(e.index, state_fingerprint(self.spec.state()));
        if self.recent.len() >= RECENT_STATES {
            self.recent.pop_front();
        }
        self.recent.push_back(self.spec.state().clone());
    }

    fn compare(
        &mut self,
        node: usize,
        index: u64,
        fp: u64,
        replica: Option<&LedgerState>,
    ) -> Result<(), Violation> {
        let Some(expected) = self.model_fp.get(&index) else {
            return Ok(());
        };
        self.compared += 1;
        if *expected == fp {
            return Ok(());
        }
        let model = self.recent.iter().find(|s| s.applied_index == index);
        let detail = match (model, replica) {
            (Some(m), Some(r)) => describe_difference(m, r),
            _ => "state fingerprints differ (model state at that index no longer kept)".to_owned(),
        };
        Err(Violation::new(
            FailureKind::Safety,
            "spec-model",
            format!(
                "replica s{node} at applied index {index} differs from the spec model: {detail}"
            ),
        ))
    }
}

/// The first difference between the model's and a replica's state, readably.
pub(crate) fn describe_difference(model: &LedgerState, replica: &LedgerState) -> String {
    for (h, m) in &model.records {
        match replica.records.get(h) {
            Some(r) if r == m => {}
            Some(r) => {
                return format!("token {}: model {:?} / replica {:?}", h.0.short(), m, r);
            }
            None => {
                return format!(
                    "token {}: model {:?} / replica has no record",
                    h.0.short(),
                    m
                );
            }
        }
    }
    for (h, r) in &replica.records {
        if !model.records.contains_key(h) {
            return format!(
                "token {}: model has no record / replica {:?}",
                h.0.short(),
                r
            );
        }
    }
    if model.members != replica.members {
        return format!(
            "members: model {:?} / replica {:?}",
            model.members.keys().collect::<Vec<_>>(),
            replica.members.keys().collect::<Vec<_>>()
        );
    }
    if model.next_member_id != replica.next_member_id {
        return format!(
            "next member id: model {} / replica {}",
            model.next_member_id, replica.next_member_id
        );
    }
    if model.clock_unix_ms != replica.clock_unix_ms {
        return format!(
            "ledger clock: model {} / replica {}",
            model.clock_unix_ms, replica.clock_unix_ms
        );
    }
    for (n, s) in &model.sessions {
        if replica.sessions.get(n) != Some(s) {
            let seqs = |s: Option<&Session>| {
                s.map(|s| {
                    s.recent
                        .iter()
                        .map(|(q, o)| (*q, o.clone()))
                        .collect::<Vec<_>>()
                })
            };
            return format!(
                "session of proposer {}: model {:?} / replica {:?}",
                n.0,
                seqs(Some(s)),
                seqs(replica.sessions.get(n))
            );
        }
    }
    "sessions differ".to_owned()
}

impl Checker for LogChecker {
    fn on_committed(
        &mut self,
        _facts: &Facts,
        _now: Instant,
        node: usize,
        e: &EntryWire,
    ) -> Result<(), Violation> {
        let fp = encoded_fingerprint(|buffer| wire::encode_into(e, buffer));
        match self.committed.get(&e.index) {
            Some((term, seen, first)) if (*term, *seen) != (e.term, fp) => {
                return Err(Violation::new(
                    FailureKind::Safety,
                    "committed-log",
                    format!(
                        "two different entries committed at index {}: term {} on s{} and term {} on s{node}",
                        e.index, term, first, e.term
                    ),
                ));
            }
            Some(_) => return Ok(()),
            None => {
                self.committed.insert(e.index, (e.term, fp, node));
            }
        }
        if e.index <= self.spec.applied() {
            return Ok(());
        }
        if self.ahead.len() < MAX_GAP_ENTRIES {
            self.ahead.insert(e.index, e.clone());
        }
        while let Some(next) = self.ahead.remove(&(self.spec.applied() + 1)) {
            self.apply_entry(&next);
        }
        // Observations that waited for the model.
        let reached = self.spec.applied();
        let mut still = VecDeque::new();
        while let Some((n, index, fp, state)) = self.waiting.pop_front() {
            if index <= reached {
                self.compare(n, index, fp, Some(&state))?;
            } else {
                still.push_back((n, index, fp, state));
            }
        }
        self.waiting = still;
        Ok(())
    }

    fn on_replica(&mut self, _facts: &Facts, view: &ReplicaView<'_>) -> Result<(), Violation> {
        let index = view.ledger.applied_index();
        let fp = view.state_fp;
        if index <= self.spec.applied() {
            return self.compare(view.node, index, fp, Some(view.ledger.state()));
        }
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.pop_front();
            self.unchecked += 1;
        }
        let state = self
            .waiting
            .iter()
            .find(|(_, i, f, _)| (*i, *f) == (index, fp))
            .map(|(.., state)| Arc::clone(state))
            .unwrap_or_else(|| Arc::new(view.ledger.state().clone()));
        self.waiting.push_back((view.node, index, fp, state));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::crypto::{Hash32, SecretKey};
    use portcullis_core::ledger::{Addrs, Ledger};
    use portcullis_core::rng::SeededRng;
    use portcullis_core::token::Role;
    use rand::Rng;

    /// A random log over few tokens, presenters, leases and proposers, with duplicate and stale
    /// proposal ids, every command kind, and entry times that jump back and forth.
    fn random_log(seed: u64, len: u64) -> Vec<LogEntry> {
        let mut rng = SeededRng::from_u64(seed);
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate(&mut rng)).collect();
        let mut unix_ms = 1_000u64;
        let mut seqs = [0u64; 3];
        (0..len)
            .map(|_| {
                unix_ms = unix_ms.saturating_add_signed(rng.gen_range(-300i64..=700));
                let hash = TokenHash(Hash32([rng.gen_range(0..6u8); 32]));
                let key = &keys[rng.gen_range(0..keys.len())];
                let presenter = PresenterId::of(&key.public());
                let lease_id = LeaseId(rng.gen_range(0..3));
                let command = match rng.gen_range(0..7u8) {
                    0 => Command::Register {
                        hash,
                        expires_at_unix_ms: unix_ms + rng.gen_range(0..15_000),
                    },
                    1 | 2 => Command::BeginInFlight {
                        hash,
                        presenter,
                        lease_id,
                        lease_ms: rng.gen_range(0..4_000),
                    },
                    3 => Command::Consume {
                        hash,
                        // Now and then a presenter that is not the member's key.
                        presenter: if rng.gen_bool(0.1) {
                            PresenterId(Hash32([9; 32]))
                        } else {
                            presenter
                        },
                        lease_id,
                        member: MemberSpec {
                            node_key: key.public(),
                            role: Role::Member,
                            addrs: Addrs::new(),
                        },
                    },
                    4 => Command::Revert { hash, lease_id },
                    5 => Command::Expire { hash },
                    _ => Command::Abort {
                        hash,
                        expires_at_unix_ms: unix_ms + 5_000,
                    },
                };
                let node = rng.gen_range(0..3usize);
                // Mostly new proposals; sometimes a repeat of a recent one (a retried forward).
                if !rng.gen_bool(0.15) || seqs[node] == 0 {
                    seqs[node] += 1;
                }
                let proposal = ProposalId {
                    node: NodeId(node as u64 + 1),
                    seq: seqs[node],
                };
                LogEntry::new(proposal, unix_ms, vec![command]).expect("one command fits")
            })
            .collect()
    }

    /// The spec model and the core's ledger reach the same state, entry after entry, on random
    /// logs: the model is a faithful second implementation (a divergence in a simulation is a
    /// real difference, not a modelling slip).
    #[test]
    fn the_model_agrees_with_the_core_ledger_on_random_logs() {
        let config = LedgerConfig {
            proposal_window: 8,
            max_token_records: 5,
            max_members: 2,
            record_grace_ms: 20_000,
            max_lease_ms: 3_000,
            ..LedgerConfig::default()
        };
        for seed in 0..300 {
            let mut spec = SpecLedger::bootstrap(config.clone(), &[]);
            let mut core = Ledger::new(config.clone());
            core.advance_applied(1);
            assert_eq!(
                spec.state(),
                core.state(),
                "seed {seed}: initial states differ"
            );
            for (i, entry) in random_log(seed, 200).iter().enumerate() {
                let index = i as u64 + 2;
                spec.apply(index, entry);
                core.apply(index, entry);
                assert_eq!(
                    spec.state(),
                    core.state(),
                    "seed {seed}, index {index}: {}",
                    describe_difference(spec.state(), core.state())
                );
            }
        }
    }
}
