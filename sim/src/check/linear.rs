//! The history of token operations: expectations per token kind and linearizability.
//!
//! Each token is a single-consumption register. Its sequential specification:
//!
//! ```text
//!   present(P): consumer = none, token live  → consumer := P; Admitted(member)
//!               consumer = P                  → Admitted(same member)        (served again)
//!               consumer = Q ≠ P              → AlreadyConsumed
//!               revoked                       → Revoked;  expired → Expired
//!   revoke():   consumer = none               → Aborted (the token can never admit)
//!               consumer set                  → ConsumedIsFinal
//! ```
//!
//! A history is the set of presentations (invoked when the joiner first reveals the token,
//! completed by its final event; timeouts and crashes are *indeterminate*: their effect may
//! take place at any point after invocation) and revocations. Because there is at most one
//! state-changing event per token (the consumption, or the abort), a linearization exists iff
//! one point `L` can be chosen for it such that:
//!
//! * `L` falls inside an operation of the consumer `W` that could have had the effect: one
//!   that was invoked before the first replica applied the consumption (`revealed ≤ C`) and did
//!   not complete with a refusal;
//! * every `Admitted` and every `AlreadyConsumed` completes after `L` — checked against `C`,
//!   the first time any replica showed the consumption, which bounds `L` from above;
//! * only `W` is ever admitted (one member id), and `W` is never told `AlreadyConsumed`; a
//!   presentation `W` starts after the consumption is served again (never refused);
//! * consumption and abort exclude each other, and `Revoked` is only answered after an abort
//!   was issued and applied.
//!
//! Expectations per kind: a forged token is only ever refused `BadMac`, a wrong-cluster token
//! is never even revealed (the joiner checks the pin first) and is refused `WrongCluster`, an
//! expired token is refused `Expired`; retryable reasons are never final.

use portcullis_core::ledger::Outcome;
use portcullis_core::messages::RejectReason;
use portcullis_core::time::Instant;

use super::{Checker, Violation};
use crate::facts::{EPOCH_UNIX_MS, Facts, OpOutcome, TokenKind};
use crate::report::FailureKind;

/// Expectations, single admission, registry membership and linearizability.
#[derive(Debug, Default)]
pub(crate) struct HistoryChecker;

fn safety(checker: &'static str, message: String) -> Violation {
    Violation::safety(checker, message)
}

/// The results a presentation of `kind` may end with (besides indeterminate ones).
fn expected(facts: &Facts, op: usize) -> Result<(), Violation> {
    let p = &facts.presentations[op];
    let t = &facts.tokens[p.token];
    let name = |r: RejectReason| r.as_str();
    let at = p.ended_at.unwrap_or_default();
    match p.outcome {
        OpOutcome::Pending | OpOutcome::TimedOut | OpOutcome::Crashed => Ok(()),
        OpOutcome::Other => Err(Violation::new(
            FailureKind::Crash,
            "harness",
            format!(
                "presentation #{op} of j{} failed for a reason the harness never causes",
                p.joiner
            ),
        )),
        OpOutcome::Admitted(m) if !t.kind.may_admit() => Err(safety(
            "token-expectations",
            format!(
                "a {} token admitted j{} as member {}",
                t.kind.as_str(),
                p.joiner,
                m.0
            ),
        )),
        OpOutcome::Admitted(_) => Ok(()),
        OpOutcome::Rejected(r) if r.is_retryable() => Err(safety(
            "token-expectations",
            format!(
                "j{} gave up on a retryable rejection `{}` (presentation #{op})",
                p.joiner,
                name(r)
            ),
        )),
        OpOutcome::Rejected(r) => {
            // Some node's wall clock may run `max_skew_ms` ahead of true time: expiry is judged
            // by the fastest clock that saw the token.
            let true_unix = EPOCH_UNIX_MS + at.as_millis();
            let expired_somewhere = t.expires_at_unix_ms <= true_unix + facts.max_skew_ms;
            let revoke_issued = facts
                .revocations
                .iter()
                .any(|v| v.token == p.token && v.issued_at <= at);
            let ok = match (t.kind, r) {
                (TokenKind::Forged, RejectReason::BadMac) => true,
                (TokenKind::WrongCluster, RejectReason::WrongCluster) => true,
                (TokenKind::Expired, RejectReason::Expired) => true,
                (
                    TokenKind::Valid | TokenKind::ShortTtl | TokenKind::Revoked,
                    RejectReason::AlreadyConsumed,
                ) => true,
                (
                    TokenKind::Valid | TokenKind::ShortTtl | TokenKind::Revoked,
                    RejectReason::Expired,
                ) => expired_somewhere,
                (TokenKind::Revoked, RejectReason::Revoked) => revoke_issued,
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(safety(
                    "token-expectations",
                    format!(
                        "a {} token (expires at unix {}, true time {}) refused j{} with `{}` (presentation #{op})",
                        t.kind.as_str(),
                        t.expires_at_unix_ms,
                        true_unix,
                        p.joiner,
                        name(r)
                    ),
                ))
            }
        }
    }
}

/// The linearizability conditions of token `t` (module docs), judged on the history so far.
fn linearizable(facts: &Facts, t: usize) -> Result<(), Violation> {
    let token = &facts.tokens[t];
    let ops: Vec<(usize, &crate::facts::Presentation)> = facts
        .presentations
        .iter()
        .enumerate()
        .filter(|(_, p)| p.token == t)
        .collect();
    let short = token.hash.0.short();
    if token.kind == TokenKind::WrongCluster
        && let Some((op, p)) = ops.iter().find(|(_, p)| p.revealed_at.is_some())
    {
        return Err(safety(
            "token-expectations",
            format!(
                "j{} revealed a token pinned to another cluster (presentation #{op})",
                p.joiner
            ),
        ));
    }
    // At most one presenter, one member id.
    let mut admitted = ops.iter().filter_map(|(op, p)| match p.outcome {
        OpOutcome::Admitted(m) => Some((*op, p.presenter, m, p.ended_at.unwrap_or_default())),
        _ => None,
    });
    let first_admitted = admitted.next();
    if let Some((op0, p0, m0, _)) = first_admitted
        && let Some((op1, p1, m1, _)) = admitted.find(|(_, p, m, _)| (*p, *m) != (p0, m0))
    {
        return Err(safety(
            "one-presenter-per-token",
            format!(
                "token {short} admitted presenter {} as member {} (#{op0}) and presenter {} as member {} (#{op1})",
                p0.0.short(),
                m0.0,
                p1.0.short(),
                m1.0
            ),
        ));
    }
    let consumed = facts.first_consumed.get(&token.hash).copied();
    let aborted = facts.first_aborted.get(&token.hash).copied();
    let revoked_ok = facts
        .revocations
        .iter()
        .any(|v| v.token == t && matches!(v.outcome, Some((Outcome::Aborted, _))));
    match consumed {
        Some((c_at, w, member)) => {
            if facts
                .joiner_of(&w)
                .is_none_or(|j| facts.joiners[&j].token != t)
            {
                return Err(safety(
                    "linearizability",
                    format!(
                        "token {short} consumed by presenter {} who never presented it",
                        w.0.short()
                    ),
                ));
            }
            if let Some(a) = aborted {
                return Err(safety(
                    "linearizability",
                    format!(
                        "token {short} both consumed (first seen {c_at:?}) and aborted (first seen {a:?})"
                    ),
                ));
            }
            if revoked_ok {
                return Err(safety(
                    "linearizability",
                    format!("token {short} consumed although a revocation reported it aborted"),
                ));
            }
            for (op, p) in &ops {
                let end = p.ended_at.unwrap_or_default();
                match p.outcome {
                    OpOutcome::Admitted(m) if p.presenter != w || m != member => {
                        return Err(safety(
                            "one-presenter-per-token",
                            format!(
                                "token {short} consumed by {} as member {}, but j{} was admitted as member {} (#{op})",
                                w.0.short(),
                                member.0,
                                p.joiner,
                                m.0
                            ),
                        ));
                    }
                    OpOutcome::Admitted(_) | OpOutcome::Rejected(RejectReason::AlreadyConsumed)
                        if end < c_at =>
                    {
                        return Err(safety(
                            "linearizability",
                            format!(
                                "token {short}: j{} completed {} at {end:?}, before any replica applied the consumption ({c_at:?}) (#{op})",
                                p.joiner,
                                p.outcome.label()
                            ),
                        ));
                    }
                    OpOutcome::Rejected(RejectReason::AlreadyConsumed) if p.presenter == w => {
                        return Err(safety(
                            "linearizability",
                            format!(
                                "token {short}: its consumer j{} was told AlreadyConsumed instead of being served again (#{op})",
                                p.joiner
                            ),
                        ));
                    }
                    // Once W consumed the token, a presentation W starts afterwards must be
                    // served again, whatever else holds (the token may have expired since).
                    OpOutcome::Rejected(r)
                        if p.presenter == w && p.revealed_at.is_some_and(|t| t > c_at) =>
                    {
                        return Err(safety(
                            "served-again",
                            format!(
                                "token {short}: its consumer j{} presented it again after the consumption ({c_at:?}) \
                                 and was told `{}` instead of being served again (#{op})",
                                p.joiner,
                                r.as_str()
                            ),
                        ));
                    }
                    OpOutcome::Rejected(RejectReason::Revoked) => {
                        return Err(safety(
                            "linearizability",
                            format!(
                                "token {short} is consumed, yet j{} was told Revoked (#{op})",
                                p.joiner
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            // The consumption must fall inside an operation of W that could have caused it.
            let cause = ops.iter().any(|(_, p)| {
                p.presenter == w
                    && !matches!(p.outcome, OpOutcome::Rejected(_))
                    && p.revealed_at.is_some_and(|r| r <= c_at)
            });
            if !cause {
                return Err(safety(
                    "linearizability",
                    format!(
                        "token {short} was consumed by {} (first seen {c_at:?}) outside every presentation of it \
                         that could have consumed it",
                        w.0.short()
                    ),
                ));
            }
        }
        None => {
            if let Some((op, p)) = ops.iter().find(|(_, p)| {
                matches!(
                    p.outcome,
                    OpOutcome::Admitted(_) | OpOutcome::Rejected(RejectReason::AlreadyConsumed)
                )
            }) {
                return Err(safety(
                    "linearizability",
                    format!(
                        "token {short}: j{} completed {} but no replica had applied a consumption (#{op})",
                        p.joiner,
                        p.outcome.label()
                    ),
                ));
            }
        }
    }
    for (op, p) in &ops {
        if p.outcome != OpOutcome::Rejected(RejectReason::Revoked) {
            continue;
        }
        let end = p.ended_at.unwrap_or_default();
        if aborted.is_none_or(|a| a > end) {
            return Err(safety(
                "linearizability",
                format!(
                    "token {short}: j{} was told Revoked at {end:?} before any replica applied an abort (#{op})",
                    p.joiner
                ),
            ));
        }
    }
    Ok(())
}

impl Checker for HistoryChecker {
    fn on_presentation_end(
        &mut self,
        facts: &Facts,
        _now: Instant,
        op: usize,
    ) -> Result<(), Violation> {
        expected(facts, op)?;
        let p = &facts.presentations[op];
        if let (OpOutcome::Admitted(m), Some(prev)) = (p.outcome, facts.admitted_as.get(&p.joiner))
            && *prev != m
        {
            return Err(safety(
                "one-presenter-per-token",
                format!(
                    "j{} admitted as member {} and later as member {}",
                    p.joiner, prev.0, m.0
                ),
            ));
        }
        linearizable(facts, p.token)
    }

    fn at_end(&mut self, facts: &Facts, _now: Instant) -> Result<(), Violation> {
        for t in 0..facts.tokens.len() {
            linearizable(facts, t)?;
        }
        // Forged and wrong-cluster tokens never reach the ledger: the pin and the MAC are
        // checked before any Raft round trip.
        if let Some(seen) = &facts.ledger_tokens
            && let Some(t) = facts.tokens.iter().find(|t| {
                matches!(t.kind, TokenKind::Forged | TokenKind::WrongCluster)
                    && seen.contains(&t.hash)
            })
        {
            return Err(safety(
                "token-expectations",
                format!(
                    "a {} token ({}) reached the ledger",
                    t.kind.as_str(),
                    t.hash.0.short()
                ),
            ));
        }
        // Every admitted presenter is a member of the registry, admitted by its token.
        if let Some(registry) = &facts.registry {
            for (j, m) in &facts.admitted_as {
                let f = &facts.joiners[j];
                let ok = registry.get(m).is_some_and(|r| {
                    r.node_key == f.key && r.token_hash == facts.tokens[f.token].hash
                });
                if !ok {
                    return Err(safety(
                        "admitted-is-member",
                        format!(
                            "j{j} was admitted as member {} but the registry has {:?}",
                            m.0,
                            registry
                                .get(m)
                                .map(|r| (r.node_key.hash().short(), r.token_hash.0.short()))
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{JoinerFacts, Presentation, TokenFacts};
    use portcullis_core::crypto::{Hash32, JoinSecret, SecretKey};
    use portcullis_core::ledger::{MemberId, PresenterId};
    use portcullis_core::rng::SeededRng;
    use portcullis_core::token::{ClusterPin, JoinToken, Role};

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// One valid token presented by joiners 10 and 11.
    fn facts() -> (Facts, [PresenterId; 2]) {
        let mut rng = SeededRng::from_u64(1);
        let secret = JoinSecret::generate(&mut rng);
        let token = JoinToken::issue_random(
            &secret,
            ClusterPin(Hash32([1; 32])),
            &mut rng,
            EPOCH_UNIX_MS + 3_600_000,
            Role::Member,
        );
        let mut f = Facts::default();
        let hash = token.hash();
        f.token_by_hash.insert(hash, 0);
        f.tokens.push(TokenFacts {
            kind: TokenKind::Valid,
            token,
            hash,
            expires_at_unix_ms: EPOCH_UNIX_MS + 3_600_000,
        });
        let mut presenters = [PresenterId(Hash32::default()); 2];
        for (k, j) in [10usize, 11].into_iter().enumerate() {
            let key = SecretKey::generate(&mut rng).public();
            presenters[k] = PresenterId::of(&key);
            f.joiners.insert(
                j,
                JoinerFacts {
                    token: 0,
                    key,
                    presenter: presenters[k],
                    seeds: vec![0],
                    late_seeds: 0,
                },
            );
        }
        (f, presenters)
    }

    fn op(j: usize, p: PresenterId, revealed: u64, outcome: OpOutcome, end: u64) -> Presentation {
        Presentation {
            joiner: j,
            token: 0,
            presenter: p,
            revealed_at: Some(t(revealed)),
            outcome,
            ended_at: Some(t(end)),
        }
    }

    #[test]
    fn one_winner_and_late_losers_linearize() {
        let (mut f, [a, b]) = facts();
        let hash = f.tokens[0].hash;
        f.first_consumed.insert(hash, (t(50), a, MemberId(4)));
        f.presentations
            .push(op(10, a, 10, OpOutcome::Admitted(MemberId(4)), 60));
        f.presentations.push(op(
            11,
            b,
            12,
            OpOutcome::Rejected(RejectReason::AlreadyConsumed),
            70,
        ));
        assert_eq!(linearizable(&f, 0), Ok(()));
    }

    #[test]
    fn already_consumed_before_the_consumption_does_not_linearize() {
        let (mut f, [a, b]) = facts();
        let hash = f.tokens[0].hash;
        f.first_consumed.insert(hash, (t(50), a, MemberId(4)));
        f.presentations
            .push(op(10, a, 10, OpOutcome::Admitted(MemberId(4)), 60));
        f.presentations.push(op(
            11,
            b,
            12,
            OpOutcome::Rejected(RejectReason::AlreadyConsumed),
            40,
        ));
        let v = linearizable(&f, 0).expect_err("AlreadyConsumed at 40 < consumption at 50");
        assert_eq!(v.checker, "linearizability");
    }

    #[test]
    fn two_admitted_presenters_are_caught() {
        let (mut f, [a, b]) = facts();
        f.presentations
            .push(op(10, a, 10, OpOutcome::Admitted(MemberId(4)), 60));
        f.presentations
            .push(op(11, b, 12, OpOutcome::Admitted(MemberId(5)), 70));
        let v = linearizable(&f, 0).expect_err("two winners");
        assert_eq!(v.checker, "one-presenter-per-token");
    }

    #[test]
    fn a_consumption_no_presentation_could_cause_is_caught() {
        let (mut f, [a, _]) = facts();
        let hash = f.tokens[0].hash;
        // Consumed by `a` at 5, but `a` only revealed the token at 10.
        f.first_consumed.insert(hash, (t(5), a, MemberId(4)));
        f.presentations
            .push(op(10, a, 10, OpOutcome::Admitted(MemberId(4)), 60));
        let v = linearizable(&f, 0).expect_err("consumed before revealed");
        assert_eq!(v.checker, "linearizability");
    }

    #[test]
    fn the_consumer_refused_after_its_consumption_is_caught() {
        let (mut f, [a, _]) = facts();
        let hash = f.tokens[0].hash;
        f.first_consumed.insert(hash, (t(50), a, MemberId(4)));
        f.presentations.push(op(10, a, 10, OpOutcome::TimedOut, 55));
        f.presentations.push(op(
            10,
            a,
            80,
            OpOutcome::Rejected(RejectReason::Expired),
            90,
        ));
        let v = linearizable(&f, 0).expect_err("not served again");
        assert_eq!(v.checker, "served-again");
    }
}
