//! Per-replica properties, judged at every change of a replica's applied index.
//!
//! * The ledger's own invariants hold (`Ledger::check_invariants`, in every build profile; a
//!   state equal to one already checked at its index only has its replica's indices checked).
//! * Replicas at equal applied index have equal ledger digests: the world records the first
//!   state fingerprint seen at each index with its replica (the fingerprint and the digest hash
//!   the same encoding), and every later sample at that index must equal it.
//! * A token is consumed by at most one presenter: across every replica and every listener's
//!   admission audit record, one token maps to one (presenter, member).
//! * `Consumed` never reverts: once replica `r` showed token `t` consumed at applied index `i`,
//!   every later observation of `r` at an index ≥ `i` shows the same consumption. A restart
//!   rewinds a replica to its snapshot, so observations below `i` are not judged; a disk wipe
//!   starts the replica over.
//!
//! ```text
//!   view(r, a, ledger) ──▶ invariants ──▶ first[a] == ? ──▶ for t consumed: consumer[t] == ?
//!                                                        └─▶ tracked[r][t] (i ≤ a) still consumed?
//! ```

use std::collections::BTreeMap;

use portcullis_core::crypto::PublicKey;
use portcullis_core::ledger::{MemberId, PresenterId, TokenState};
use portcullis_core::node::Event;
use portcullis_core::time::Instant;
use portcullis_core::token::TokenHash;

use super::{Checker, ReplicaView, Violation};
use crate::facts::Facts;

/// What replica `r` once showed about a consumed token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    index: u64,
    presenter: PresenterId,
    member: MemberId,
    expires_at_unix_ms: u64,
}

/// Invariants, digest agreement, single consumer, consumption is final.
#[derive(Debug, Default)]
pub(crate) struct ReplicaChecker {
    seen: BTreeMap<usize, BTreeMap<TokenHash, Seen>>,
    consumer: BTreeMap<TokenHash, (PresenterId, MemberId, usize)>,
    audited: BTreeMap<TokenHash, (PublicKey, MemberId, usize)>,
    grace_ms: u64,
}

impl ReplicaChecker {
    /// With the ledger's record grace (purged records are not "reverted").
    pub(crate) fn new(grace_ms: u64) -> ReplicaChecker {
        ReplicaChecker {
            grace_ms,
            ..ReplicaChecker::default()
        }
    }
}

impl Checker for ReplicaChecker {
    fn on_replica(&mut self, _facts: &Facts, view: &ReplicaView<'_>) -> Result<(), Violation> {
        let ledger = view.ledger;
        let r = view.node;
        let a = ledger.applied_index();
        // A state equal to the first one seen at this index passed the state's invariants
        // then (or the run has failed); only this replica's own indices are new.
        let known_state = matches!(view.first, Some((fp, _)) if fp == view.state_fp);
        let invariants = if known_state {
            ledger.check_index_invariants()
        } else {
            ledger.check_invariants()
        };
        if let Err(e) = invariants {
            return Err(Violation::safety(
                "ledger-invariants",
                format!("replica s{r} at applied index {a}: {e:?}"),
            ));
        }
        // The digest is SHA-256 over the state's canonical encoding and the fingerprint hashes
        // that same encoding, so equal fingerprints mean equal digests (but for a 2^-64
        // collision): the digest, ten times dearer, is only computed to report a difference.
        if let Some((fp, first)) = view.first.filter(|(fp, _)| *fp != view.state_fp) {
            return Err(Violation::safety(
                "equal-index-digest",
                format!(
                    "replicas s{first} and s{r} applied index {a} with different states \
                         (state fingerprints {fp:016x} / {:016x}; s{r}'s digest {})",
                    view.state_fp,
                    ledger.digest().short()
                ),
            ));
        }
        let seen_by_r = self.seen.entry(r).or_default();
        // Both maps are sorted by token hash, so each pass walks them side by side instead of
        // searching one per entry of the other (every replica, every applied index).
        let mut first_seen = Vec::new();
        let mut seen_keys = seen_by_r.keys().peekable();
        for (hash, record) in &ledger.state().records {
            let TokenState::Consumed {
                presenter,
                member_id,
                ..
            } = record.state
            else {
                continue;
            };
            // A state equal to the first one seen at this index holds the same consumptions,
            // already held against `consumer` when that one was observed.
            if !known_state {
                match self.consumer.get(hash) {
                    Some((p, m, first)) if (*p, *m) != (presenter, member_id) => {
                        return Err(Violation::safety(
                            "one-presenter-per-token",
                            format!(
                                "token {} consumed by presenter {} as member {} on s{first}, and by presenter {} as member {} on s{r}",
                                hash.0.short(),
                                p.0.short(),
                                m.0,
                                presenter.0.short(),
                                member_id.0
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.consumer.insert(*hash, (presenter, member_id, r));
                    }
                }
            }
            while seen_keys.next_if(|k| *k < hash).is_some() {}
            if seen_keys.peek() != Some(&hash) {
                first_seen.push((
                    *hash,
                    Seen {
                        index: a,
                        presenter,
                        member: member_id,
                        expires_at_unix_ms: record.expires_at_unix_ms,
                    },
                ));
            }
        }
        let clock = ledger.clock_unix_ms();
        let mut records = ledger.state().records.iter().peekable();
        for (hash, seen) in seen_by_r.iter() {
            if seen.index > a {
                continue; // Rewound by a restart; judged again once it is back.
            }
            while records.next_if(|(h, _)| *h < hash).is_some() {}
            let now = records
                .peek()
                .filter(|(h, _)| *h == hash)
                .map(|(_, rec)| rec.state);
            let still = matches!(now, Some(TokenState::Consumed { presenter, member_id, .. })
                if presenter == seen.presenter && member_id == seen.member);
            let purged =
                now.is_none() && seen.expires_at_unix_ms.saturating_add(self.grace_ms) <= clock;
            if !still && !purged {
                return Err(Violation::safety(
                    "consumed-is-final",
                    format!(
                        "replica s{r}: token {} was consumed (presenter {}, member {}) at applied index {}, \
                         but at applied index {a} it is {:?}",
                        hash.0.short(),
                        seen.presenter.0.short(),
                        seen.member.0,
                        seen.index,
                        now
                    ),
                ));
            }
        }
        // Consumed at `a` itself: nothing for the pass above to judge yet.
        seen_by_r.extend(first_seen);
        Ok(())
    }

    fn on_event(
        &mut self,
        _facts: &Facts,
        _now: Instant,
        node: usize,
        event: &Event,
    ) -> Result<(), Violation> {
        let Event::Admission(record) = event else {
            return Ok(());
        };
        let Ok(member) = record.result else {
            return Ok(());
        };
        match self.audited.get(&record.token) {
            Some((key, m, first)) if (*key, *m) != (record.presenter_key, member) => {
                Err(Violation::safety(
                    "one-presenter-per-token",
                    format!(
                        "token {}: listener s{first} admitted key {} as member {}, listener s{node} admitted key {} as member {}",
                        record.token.0.short(),
                        key.hash().short(),
                        m.0,
                        record.presenter_key.hash().short(),
                        member.0
                    ),
                ))
            }
            Some(_) => Ok(()),
            None => {
                self.audited
                    .insert(record.token, (record.presenter_key, member, node));
                Ok(())
            }
        }
    }

    fn on_replica_reset(&mut self, node: usize) {
        self.seen.remove(&node);
    }
}
