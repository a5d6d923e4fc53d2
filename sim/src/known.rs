//! Core bugs the simulator found that are not fixed yet, and how to recognise their failures.
//!
//! The simulator does not fix the core (another engineer owns it). Each bug found is minimized to
//! a seed, kept as a test in `tests/regressions.rs` (`#[ignore]`d while the bug is open), and
//! listed here with a signature: a predicate on the failure and the run's options. `run` and
//! the seed tests report a failure matching a known signature as *known* (listed, not hidden)
//! and do not let it fail the run unless asked (`run --strict`); any other failure fails as
//! usual.
//!
//! When a bug is fixed, delete its entry and un-ignore its regression test: from then on a
//! recurrence fails every run again. (Five bugs found earlier are fixed in the core and live on
//! only as regression tests: see `tests/regressions.rs`.)
//!
//! ```text
//!   failure ──▶ KNOWN_CORE_BUGS.iter().find(signature matches) ──▶ Some(bug): known, reported
//!                                                               └─▶ None: a new failure
//! ```

use crate::options::Options;
use crate::report::{Failure, FailureKind};

/// A core bug found by the simulator and not fixed yet.
#[derive(Clone, Copy, Debug)]
pub struct KnownBug {
    /// A short stable id.
    pub id: &'static str,
    /// The regression test in `tests/regressions.rs` that replays it.
    pub regression_test: &'static str,
    /// What goes wrong, in one line.
    pub story: &'static str,
    matches: fn(&Failure, &Options) -> bool,
}

impl KnownBug {
    /// Whether `failure` (of a run with `options`) is this bug's.
    pub fn matches(&self, failure: &Failure, options: &Options) -> bool {
        (self.matches)(failure, options)
    }
}

/// The known, not yet fixed core bugs.
pub const KNOWN_CORE_BUGS: &[KnownBug] = &[
    KnownBug {
        id: "late-consume-of-expired-token-never-served",
        regression_test: "consumer_of_a_token_that_expired_meanwhile_is_never_served",
        story: "a listener cut off from the quorum answers Unavailable, but its Consume stays in \
                the log and commits after healing; by then the token is past expiry and the \
                consumer, presenting again, was already refused Expired: a registered member \
                that never learns it was admitted",
        matches: |f, _| {
            f.kind == FailureKind::Liveness && f.message.contains("who is not admitted")
        },
    },
    KnownBug {
        id: "readmitted-learner-with-empty-log-stalls",
        regression_test: "learner_that_lost_its_disk_is_readmitted_but_never_catches_up",
        story: "a learner that lost its disk is served its admission again under its old member \
                id and restarts Raft with an empty log, but the leader still believes it holds \
                everything up to its old match index; in a quiet cluster nothing new is appended, \
                so the leader never sends it anything and it stays at applied index 0",
        matches: |f, o| {
            f.kind == FailureKind::Liveness
                && f.message.contains("at applied index 0")
                && o.disk_wipes > 0
        },
    },
    KnownBug {
        id: "snapshot-to-disconnected-follower-stalls-it",
        regression_test: "follower_whose_snapshot_could_not_be_sent_never_catches_up",
        story: "when the leader must send a snapshot to a follower it has no connection to (the \
            follower just crashed and its entries were compacted), the core drops the message and \
            reports the peer unreachable but never reports the snapshot as failed; raft-rs keeps \
            that follower in Snapshot state (paused) for good and it never catches up",
        matches: |f, o| {
            f.kind == FailureKind::Liveness
                && f.message.contains("replicas behind applied index")
                && o.compact_after_entries < 10_000
        },
    },
];

/// The known bug `failure` (of a run with `options`) is, if any.
pub fn known_bug(failure: &Failure, options: &Options) -> Option<&'static KnownBug> {
    KNOWN_CORE_BUGS.iter().find(|b| b.matches(failure, options))
}
