//! Checkers: properties judged continuously while a seed runs, and once more at its end.
//!
//! The world calls every registered [`Checker`] at these points:
//!
//! ```text
//!   replica applied index changed ──▶ on_replica(view)        (ledger, its fingerprint)
//!   a batch became durable ─────────▶ on_committed(entry)     (each newly committed entry)
//!   a node emitted an Event ────────▶ on_event(node, event)
//!   a presentation ended ───────────▶ on_presentation_end(op)
//!   a node lost its disk ───────────▶ on_replica_reset(node)
//!   end of the run ─────────────────▶ at_end()
//! ```
//!
//! Each returns a typed [`Violation`]; the first one stops the seed. Checkers read the shared
//! [`Facts`] (what the workload intended, what was observed) and keep their own state. To add a
//! property (namespace workloads will), implement [`Checker`] and register it in
//! [`default_checkers`].
//!
//! The registered checkers and the bugs they are designed to catch:
//! * [`replica::ReplicaChecker`] — ledger invariants; equal applied index ⇒ equal digest; a
//!   token is consumed by at most one presenter across all replicas; `Consumed` never reverts.
//! * [`model::LogChecker`] — committed entries agree across nodes; every replica equals the
//!   spec model at its applied index (catches a `Register` that overwrites, a `Revert` that
//!   ignores its lease id).
//! * [`linear::HistoryChecker`] — per-kind expectations (forged → `BadMac`, …), at most one
//!   admitted presenter per token, a consumer is served again, admitted presenters are members,
//!   and a linearization of each token's history with one consumption point consistent with
//!   real time.
//! * Liveness (the world's liveness phase, bounded by the supervisor in [`crate::run`]): after
//!   healing, every valid presentation finishes, every consumer ends admitted and the healed
//!   replicas converge — a listener that never takes a lease never admits anyone.

pub(crate) mod linear;
pub(crate) mod model;
pub(crate) mod replica;

use portcullis_core::ledger::Ledger;
use portcullis_core::node::Event;
use portcullis_core::replication::raft_wire::EntryWire;
use portcullis_core::time::Instant;

use crate::facts::Facts;
use crate::report::FailureKind;

/// A property that does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub kind: FailureKind,
    pub checker: &'static str,
    pub message: String,
}

impl Violation {
    pub(crate) fn new(kind: FailureKind, checker: &'static str, message: String) -> Violation {
        Violation {
            kind,
            checker,
            message,
        }
    }

    pub(crate) fn safety(checker: &'static str, message: String) -> Violation {
        Violation::new(FailureKind::Safety, checker, message)
    }
}

/// One replica observation: a member whose applied index changed.
#[derive(Debug)]
pub(crate) struct ReplicaView<'a> {
    pub node: usize,
    pub ledger: &'a Ledger,
    /// Fingerprint of `ledger.state()` (computed once, shared by checkers).
    pub state_fp: u64,
    /// The first state fingerprint observed at this applied index and its replica (`None`:
    /// this is the first observation at this index).
    pub first: Option<(u64, usize)>,
}

/// A property checked while a seed runs. Every hook defaults to "nothing to check".
pub(crate) trait Checker: Send + core::fmt::Debug {
    /// A member's applied index changed.
    fn on_replica(&mut self, _facts: &Facts, _view: &ReplicaView<'_>) -> Result<(), Violation> {
        Ok(())
    }

    /// `entry` is committed (learnt from `node`'s disk).
    fn on_committed(
        &mut self,
        _facts: &Facts,
        _now: Instant,
        _node: usize,
        _entry: &EntryWire,
    ) -> Result<(), Violation> {
        Ok(())
    }

    /// `node` emitted `event` (after the facts were updated with it).
    fn on_event(
        &mut self,
        _facts: &Facts,
        _now: Instant,
        _node: usize,
        _event: &Event,
    ) -> Result<(), Violation> {
        Ok(())
    }

    /// Presentation `op` ended (definitely or not).
    fn on_presentation_end(
        &mut self,
        _facts: &Facts,
        _now: Instant,
        _op: usize,
    ) -> Result<(), Violation> {
        Ok(())
    }

    /// `node` lost its disk: its replica starts over.
    fn on_replica_reset(&mut self, _node: usize) {}

    /// The run is over (after the liveness phase).
    fn at_end(&mut self, _facts: &Facts, _now: Instant) -> Result<(), Violation> {
        Ok(())
    }
}

/// The checkers every admission run registers besides the spec model (which the world keeps
/// by its concrete type: its state feeds the summary and the registry facts).
pub(crate) fn default_checkers(record_grace_ms: u64) -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(replica::ReplicaChecker::new(record_grace_ms)),
        Box::new(linear::HistoryChecker),
    ]
}
