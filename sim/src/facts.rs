//! What the workload intended and what was observed: the shared ground truth of the checkers.
//!
//! * **Tokens** — each with a [`TokenKind`] (valid, forged, expired, …) that fixes which results
//!   a presentation may have.
//! * **Operations** — the history the linearizability checker reads. A *presentation* is one
//!   `JoinCluster` command of one joiner: invoked when the joiner first reveals the token (sends
//!   its `JoinRequest`), completed by `JoinAdmitted` or `JoinFailed`. A timeout or a crash leaves
//!   it *indeterminate*: its effect may have happened at any time after the invocation. A
//!   *revocation* is one `RevokeToken` command, completed by `TokenRevoked`.
//! * **Observations** — when a token was first seen consumed (or aborted) at any replica, which
//!   bounds when the consumption really happened.
//!
//! ```text
//!   workload plan ──▶ tokens, joiners ──┐
//!   world: commands, outputs, events ───┼──▶ Facts ──▶ checkers (read-only)
//!   replica observations ───────────────┘
//! ```

use std::collections::BTreeMap;

use portcullis_core::crypto::PublicKey;
use portcullis_core::ledger::{MemberId, MemberRecord, Outcome, PresenterId};
use portcullis_core::messages::RejectReason;
use portcullis_core::time::Instant;
use portcullis_core::token::{JoinToken, TokenHash};

/// True wall-clock time at simulated instant zero (2023-11-14), so tokens have realistic
/// expiries. A node's `unix_ms` is this plus simulated time plus its skew.
pub const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;

/// What kind of token the workload made, and so which results are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenKind {
    /// Valid, expiring long after the run.
    Valid,
    /// Valid, expiring around its presentation (races the sweeper's `Expire`).
    ShortTtl,
    /// Already expired when presented.
    Expired,
    /// Signed with another join secret.
    Forged,
    /// Pinned to another cluster.
    WrongCluster,
    /// Valid, and the operator revokes it around its presentation.
    Revoked,
}

impl TokenKind {
    /// Whether a presentation of this kind may ever admit.
    pub fn may_admit(self) -> bool {
        matches!(
            self,
            TokenKind::Valid | TokenKind::ShortTtl | TokenKind::Revoked
        )
    }

    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Valid => "valid",
            TokenKind::ShortTtl => "short_ttl",
            TokenKind::Expired => "expired",
            TokenKind::Forged => "forged",
            TokenKind::WrongCluster => "wrong_cluster",
            TokenKind::Revoked => "revoked",
        }
    }
}

/// One token of the workload.
#[derive(Clone, Debug)]
pub(crate) struct TokenFacts {
    pub kind: TokenKind,
    pub token: JoinToken,
    pub hash: TokenHash,
    pub expires_at_unix_ms: u64,
}

/// One joiner of the workload.
#[derive(Clone, Debug)]
pub(crate) struct JoinerFacts {
    /// Index into `Facts::tokens`.
    pub token: usize,
    pub key: PublicKey,
    pub presenter: PresenterId,
    /// Founders it may use as seeds.
    pub seeds: Vec<usize>,
    /// How many of `seeds` (the last ones) it learns of only later, by `AddJoinSeeds`
    /// (knob `late_seed_rate`); 0: it presents with all of them.
    pub late_seeds: usize,
}

impl JoinerFacts {
    /// The seeds it is handed late, by `AddJoinSeeds`.
    pub(crate) fn late_seeds(&self) -> &[usize] {
        &self.seeds[self.seeds.len() - self.late_seeds..]
    }

    /// The seeds it presents with: all, once it has been handed the late ones.
    pub(crate) fn seeds_known(&self, late_given: bool) -> &[usize] {
        if late_given {
            &self.seeds
        } else {
            &self.seeds[..self.seeds.len() - self.late_seeds]
        }
    }
}

/// How a presentation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// Still running.
    Pending,
    /// Admitted as this member.
    Admitted(MemberId),
    /// Refused for good.
    Rejected(RejectReason),
    /// The joiner gave up (indeterminate).
    TimedOut,
    /// The joiner crashed (indeterminate).
    Crashed,
    /// Another failure the joiner reported (a harness problem).
    Other,
}

impl OpOutcome {
    /// Definite: the op's effect (or its absence) is known.
    pub fn is_definite(self) -> bool {
        matches!(self, OpOutcome::Admitted(_) | OpOutcome::Rejected(_))
    }

    /// A stable name for summaries.
    pub fn label(self) -> String {
        match self {
            OpOutcome::Pending => "pending".to_owned(),
            OpOutcome::Admitted(_) => "admitted".to_owned(),
            OpOutcome::Rejected(r) => format!("rejected:{}", r.as_str()),
            OpOutcome::TimedOut => "timed_out".to_owned(),
            OpOutcome::Crashed => "crashed".to_owned(),
            OpOutcome::Other => "other".to_owned(),
        }
    }
}

/// One presentation (a `JoinCluster` command).
#[derive(Clone, Debug)]
pub(crate) struct Presentation {
    pub joiner: usize,
    pub token: usize,
    pub presenter: PresenterId,
    /// When the token was first revealed (the joiner's first `JoinRequest`).
    pub revealed_at: Option<Instant>,
    pub outcome: OpOutcome,
    pub ended_at: Option<Instant>,
}

/// One revocation (a `RevokeToken` command).
#[derive(Clone, Debug)]
pub(crate) struct Revocation {
    pub token: usize,
    pub node: usize,
    pub issued_at: Instant,
    /// The ledger outcome, and when the proposer learnt it.
    pub outcome: Option<(Outcome, Instant)>,
    /// The proposer crashed first (indeterminate).
    pub lost: bool,
}

/// The ground truth shared by the checkers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    pub max_skew_ms: u64,
    pub tokens: Vec<TokenFacts>,
    pub token_by_hash: BTreeMap<TokenHash, usize>,
    /// Joiner slot → its facts.
    pub joiners: BTreeMap<usize, JoinerFacts>,
    pub presentations: Vec<Presentation>,
    pub revocations: Vec<Revocation>,
    /// First time any replica showed the token consumed, and by whom.
    pub first_consumed: BTreeMap<TokenHash, (Instant, PresenterId, MemberId)>,
    /// First time any replica showed the token aborted.
    pub first_aborted: BTreeMap<TokenHash, Instant>,
    /// Member ids each joiner was admitted as (by its own `JoinAdmitted`).
    pub admitted_as: BTreeMap<usize, MemberId>,
    /// The membership registry of the spec model, filled in before the final checks.
    pub registry: Option<BTreeMap<MemberId, MemberRecord>>,
    /// Every token the spec model's ledger ever held a record for (filled in before the final
    /// checks).
    pub ledger_tokens: Option<std::collections::BTreeSet<TokenHash>>,
}

impl Facts {
    /// The latest presentation of joiner `j`.
    pub(crate) fn latest_of(&self, j: usize) -> Option<(usize, &Presentation)> {
        self.presentations
            .iter()
            .enumerate()
            .rev()
            .find(|(_, p)| p.joiner == j)
    }

    /// The joiner slot whose key hashes to `presenter`.
    pub(crate) fn joiner_of(&self, presenter: &PresenterId) -> Option<usize> {
        self.joiners
            .iter()
            .find(|(_, f)| f.presenter == *presenter)
            .map(|(j, _)| *j)
    }
}
