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
//! recurrence fails every run again. (Eight bugs found so far are fixed in the core and live on
//! only as regression tests: see `tests/regressions.rs`.)
//!
//! ```text
//!   failure ──▶ KNOWN_CORE_BUGS.iter().find(signature matches) ──▶ Some(bug): known, reported
//!                                                               └─▶ None: a new failure
//! ```

use crate::options::Options;
use crate::report::Failure;

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
    // Empty: every core bug the simulator found is fixed and replayed by a regression test.
];

/// The known bug `failure` (of a run with `options`) is, if any.
pub fn known_bug(failure: &Failure, options: &Options) -> Option<&'static KnownBug> {
    KNOWN_CORE_BUGS.iter().find(|b| b.matches(failure, options))
}
