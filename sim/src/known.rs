//! Core bugs the simulator found that are not fixed yet, and how to recognise their failures.
//!
//! The simulator does not fix the core (another engineer owns it). Each bug found is minimized to
//! a seed, kept as an `#[ignore]`d test in `tests/regressions.rs`, and listed here with a
//! signature: a predicate on the failure that identifies it. `run` and the seed tests report a
//! failure matching a known signature as *known* (listed, not hidden) and do not let it fail the
//! run unless asked (`run --strict`); any other failure fails as usual.
//!
//! When a bug is fixed, delete its entry: from then on a recurrence fails every run again.
//!
//! ```text
//!   failure ──▶ KNOWN_CORE_BUGS.iter().find(signature matches) ──▶ Some(bug): known, reported
//!                                                               └─▶ None: a new failure
//! ```

use crate::report::{Failure, FailureKind};

/// A core bug found by the simulator and not fixed yet.
#[derive(Clone, Copy, Debug)]
pub struct KnownBug {
    /// A short stable id.
    pub id: &'static str,
    /// The `#[ignore]`d regression test in `tests/regressions.rs` that replays it.
    pub regression_test: &'static str,
    /// What goes wrong, in one line.
    pub story: &'static str,
    matches: fn(&Failure) -> bool,
}

impl KnownBug {
    /// Whether `failure` is this bug's.
    pub fn matches(&self, failure: &Failure) -> bool {
        (self.matches)(failure)
    }
}

/// The known core bugs.
pub const KNOWN_CORE_BUGS: &[KnownBug] = &[
    KnownBug {
        id: "stale-join-proof-after-reconnect",
        regression_test: "stale_join_proof_after_reconnect_is_refused_bad_proof",
        story: "the joiner re-sends its JoinRequest with a proof signed over the binding of a \
                connection that has since been replaced (the listener restarted); the listener \
                answers BadProof, which is final, so a valid presenter gives up for good",
        matches: |f| {
            f.kind == FailureKind::Safety
                && f.checker == "token-expectations"
                && f.message.contains("with `bad_proof`")
        },
    },
    KnownBug {
        id: "learner-restart-before-first-snapshot",
        regression_test: "learner_restarted_before_its_first_snapshot_never_catches_up",
        story: "a joiner that crashes after admission but before its first snapshot recovers \
                with an empty ledger and no member list (JoinAccepted's members are not \
                persisted), so it refuses every Raft message and never catches up",
        matches: |f| {
            f.kind == FailureKind::Liveness
                && f.message.contains("replicas behind applied index")
                && (f.message.contains("at applied index 0,")
                    || f.message.contains("at applied index 0\""))
        },
    },
    KnownBug {
        id: "snapshot-install-keeps-raft-applied-behind",
        regression_test: "follower_campaigning_after_snapshot_install_panics",
        story: "after installing a leader's snapshot the core never advances raft-rs's applied \
                index to the snapshot; a follower that then campaigns panics reading compacted \
                entries ('unexpected error getting unapplied entries … Compacted')",
        matches: |f| {
            f.kind == FailureKind::Crash
                && f.message
                    .contains("unexpected error getting unapplied entries")
                && f.message.contains("Compacted")
        },
    },
    KnownBug {
        id: "consumer-of-expired-token-never-served",
        regression_test: "consumer_of_a_token_that_expired_meanwhile_is_never_served",
        story: "the listener checks a token's expiry before the ledger, so once a token is past \
                expiry (+ skew allowance) its consumer is refused Expired instead of being served \
                again — whether its reply was lost, or its Consume committed after the listener \
                had already answered Unavailable: a registered member that never learns it",
        matches: |f| {
            (f.kind == FailureKind::Safety
                && f.checker == "served-again"
                && f.message.contains("was told `expired`"))
                || (f.kind == FailureKind::Liveness && f.message.contains("who is not admitted"))
        },
    },
    KnownBug {
        id: "readmitted-member-with-empty-log-panics",
        regression_test: "member_that_lost_its_disk_is_readmitted_and_panics",
        story: "a member that lost its disk presents its token again and is re-admitted under \
                its old member id with an empty Raft log; the leader's next heartbeat carries \
                the old commit index and raft-rs panics ('to_commit … out of range')",
        matches: |f| {
            f.kind == FailureKind::Crash
                && f.message.contains("to_commit")
                && f.message.contains("out of range [last_index 0]")
        },
    },
];

/// The known bug `failure` is, if any.
pub fn known_bug(failure: &Failure) -> Option<&'static KnownBug> {
    KNOWN_CORE_BUGS.iter().find(|b| b.matches(failure))
}
