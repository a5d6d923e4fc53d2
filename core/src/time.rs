//! Time as an input.
//!
//! The core never reads a clock. A driver passes [`Now`] with every input:
//!
//! * [`Instant`] — a monotonic point in nanoseconds since an arbitrary epoch the driver picks
//!   (process start, simulation start). It orders timers and measures elapsed time on one node
//!   only; it means nothing on another machine.
//! * `unix_ms` — wall-clock milliseconds since the Unix epoch, for the facts that are compared
//!   across machines: token and invitation expiry, beacon timestamps, ledger entry times.
//!
//! Keeping the two apart is what lets the simulator skew one node's wall clock without bending
//! its timers, and lets a recorded production run replay exactly.

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

use borsh::{BorshDeserialize, BorshSerialize};

/// A monotonic point in time, in nanoseconds since a driver-chosen epoch.
///
/// Arithmetic saturates: a core that runs for 584 years stops moving forward rather than
/// wrapping around, and no peer input can make time arithmetic panic.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant { nanos: 0 };

    /// A point `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant { nanos }
    }

    /// A point `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            nanos: millis.saturating_mul(1_000_000),
        }
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Whole milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.nanos / 1_000_000
    }

    /// `self + d`, saturating at the far end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let add_nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant {
            nanos: self.nanos.saturating_add(add_nanos),
        }
    }

    /// `self + ms` milliseconds, saturating.
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        Instant {
            nanos: self.nanos.saturating_add(ms.saturating_mul(1_000_000)),
        }
    }

    /// Time elapsed from `earlier` to `self`; zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }

    /// Whole milliseconds elapsed from `earlier` to `self`; zero when `earlier` is later.
    pub fn saturating_ms_since(self, earlier: Instant) -> u64 {
        self.nanos.saturating_sub(earlier.nanos) / 1_000_000
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        self.saturating_add(rhs)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.nanos / 1_000_000_000;
        let rem_micros = (self.nanos % 1_000_000_000) / 1_000;
        write!(f, "t+{secs}.{rem_micros:06}s")
    }
}

/// What the driver knows about "now", passed with every input.
///
/// # Example
/// ```
/// use portcullis_core::time::{Instant, Now};
/// let now = Now::new(Instant::from_millis(1_500), 1_700_000_000_000);
/// assert_eq!(now.instant.as_millis(), 1_500);
/// assert_eq!(now.unix_ms, 1_700_000_000_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Now {
    /// Monotonic time, for timers and elapsed-time measurement on this node.
    pub instant: Instant,
    /// Wall-clock Unix milliseconds, for facts compared across machines (expiry).
    pub unix_ms: u64,
}

impl Now {
    /// Bundles a monotonic instant with the wall clock read at the same moment.
    pub const fn new(instant: Instant, unix_ms: u64) -> Self {
        Now { instant, unix_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let end = Instant::from_nanos(u64::MAX);
        assert_eq!(end.saturating_add_ms(5), end);
        assert_eq!(end + Duration::from_secs(u64::MAX), end);
        assert_eq!(Instant::ZERO - end, Duration::ZERO);
        assert_eq!(Instant::from_millis(u64::MAX).as_nanos(), u64::MAX);
    }

    #[test]
    fn millis_round_trip_and_debug() {
        let t = Instant::from_millis(2_500);
        assert_eq!(t.as_millis(), 2_500);
        assert_eq!(t.saturating_ms_since(Instant::from_millis(500)), 2_000);
        assert_eq!(format!("{t:?}"), "t+2.500000s");
    }
}
