//! The simulated disk of one node: batches become durable only when their fsync completes.
//!
//! madsim's own file system keeps everything at a crash, which would hide exactly the bugs a
//! disk model is for. Here a `Persist(batch)` is queued with a completion time; only when that
//! time has come is it applied with [`DurableState::apply_batch`] (the one definition of what a
//! persist does) and acknowledged with `Persisted(n)`. Fsyncs complete in order.
//!
//! ```text
//!   Persist(n) ──▶ pending: [(done_at, n), (done_at', n+1), …]  (done_at non-decreasing)
//!   time ≥ done_at ──▶ apply_batch(n) ──▶ Persisted(n) to the core
//!   crash ──▶ the head batch may be torn: a prefix of its entries lands, nothing else of it;
//!             every other pending batch is lost; none is ever acknowledged
//! ```
//!
//! A torn batch keeps only a prefix of its *entries*: its hard state, meta and snapshot are the
//! parts a log-structured store commits last, and an unacknowledged append of a prefix is what
//! a power cut in the middle of a write leaves behind.
//!
//! Like the production driver (and etcd), a batch that only advances the commit index
//! ([`PersistBatch::only_advances_commit`]) reaching an idle disk is acknowledged at once and
//! written ahead of the next batch: a crash before then loses it, and the node must re-learn
//! its commit index. The simulator exercises the drain contract's one exception this way.
//!
//! ```text
//!   commit-only Persist(n), nothing pending ──▶ Persisted(n) now; deferred = n
//!   next batch's fsync done ──▶ apply deferred, then the batch      crash ──▶ deferred lost
//! ```

use std::collections::VecDeque;

use portcullis_core::durable::{DurableState, PersistBatch};
use portcullis_core::rng::SeededRng;
use portcullis_core::time::Instant;
use rand::Rng;

/// Most batches waiting for their fsync before the simulation calls the node broken (the core
/// bounds its own queues; this only keeps a runaway from eating memory).
pub(crate) const MAX_PENDING_BATCHES: usize = 65_536;

/// What a crash did to the disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrashLoss {
    /// Batches that never became durable.
    pub lost: Vec<u64>,
    /// The torn batch: (number, entries kept, entries in the batch).
    pub torn: Option<(u64, usize, usize)>,
}

/// One node's disk.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimDisk {
    /// What survived: the state `Node::recover` gets after a restart.
    pub durable: DurableState,
    pending: VecDeque<(Instant, PersistBatch)>,
    /// The newest commit-only batch acknowledged but not yet written.
    deferred: Option<PersistBatch>,
    /// Commit-only batches acknowledged at once, to report on the next step.
    acked_early: VecDeque<u64>,
}

/// What became of a submitted batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// Queued for its fsync.
    Queued,
    /// Commit-only on an idle disk: acknowledged at once, written with the next batch.
    AckedEarly,
    /// The queue is over its bound (the batch is dropped).
    Full,
}

/// How a batch became acknowledgeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// Its fsync completed.
    Durable(u64),
    /// Commit-only, acknowledged before it is durable.
    AckedEarly(u64),
}

impl SimDisk {
    /// Queues `batch`; it completes at `done_at` or after the batch before it, whichever is
    /// later. A commit-only batch on an idle disk is acknowledged at once instead (see the
    /// module docs).
    pub(crate) fn submit(&mut self, batch: PersistBatch, done_at: Instant) -> Submitted {
        if self.pending.is_empty() && batch.only_advances_commit(Some(&self.durable.hard_state)) {
            self.acked_early.push_back(batch.number);
            self.deferred = Some(batch);
            return Submitted::AckedEarly;
        }
        if self.pending.len() >= MAX_PENDING_BATCHES {
            return Submitted::Full;
        }
        let done_at = self
            .pending
            .back()
            .map_or(done_at, |(prev, _)| done_at.max(*prev));
        self.pending.push_back((done_at, batch));
        Submitted::Queued
    }

    /// When the next acknowledgement is due (`now` for an early one).
    pub(crate) fn next_done(&self, now: Instant) -> Option<Instant> {
        if !self.acked_early.is_empty() {
            return Some(now);
        }
        self.pending.front().map(|(t, _)| *t)
    }

    /// The next batch to acknowledge by `now`: an early-acknowledged commit-only batch, or the
    /// next whose fsync has completed (applied first, after any deferred commit-only batch).
    pub(crate) fn complete_next(&mut self, now: Instant) -> Option<Completed> {
        if let Some(n) = self.acked_early.pop_front() {
            return Some(Completed::AckedEarly(n));
        }
        if self.pending.front().is_none_or(|(t, _)| *t > now) {
            return None;
        }
        let (_, batch) = self.pending.pop_front()?;
        if let Some(deferred) = self.deferred.take() {
            self.durable.apply_batch(&deferred);
        }
        self.durable.apply_batch(&batch);
        Some(Completed::Durable(batch.number))
    }

    /// The commit index acknowledged to the node: the durable one, or a newer one in a
    /// deferred commit-only batch. Every entry up to it is durable here (a commit-only batch is
    /// only acknowledged early when every batch before it is durable).
    pub(crate) fn acked_commit(&self) -> u64 {
        let durable = self.durable.hard_state.commit;
        self.deferred
            .as_ref()
            .and_then(|b| b.hard_state)
            .map_or(durable, |hs| hs.commit.max(durable))
    }

    /// Batches waiting for their fsync.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A crash: the batch in flight may be torn (with probability `torn`), the rest is lost.
    pub(crate) fn crash(&mut self, rng: &mut SeededRng, torn: f64) -> CrashLoss {
        let mut loss = CrashLoss::default();
        self.acked_early.clear();
        if let Some(deferred) = self.deferred.take() {
            loss.lost.push(deferred.number);
        }
        let mut pending = std::mem::take(&mut self.pending);
        if let Some((_, head)) = pending.front()
            && !head.entries.is_empty()
            && rng.gen_bool(torn.clamp(0.0, 1.0))
        {
            let total = head.entries.len();
            let kept = rng.gen_range(0..total);
            if kept > 0 {
                let prefix = PersistBatch {
                    number: head.number,
                    entries: head.entries[..kept].to_vec(),
                    ..PersistBatch::default()
                };
                self.durable.apply_batch(&prefix);
            }
            loss.torn = Some((head.number, kept, total));
            pending.pop_front();
        }
        loss.lost.extend(pending.into_iter().map(|(_, b)| b.number));
        loss
    }

    /// The operator lost the disk (a fresh install keeps only the node key).
    pub(crate) fn wipe(&mut self) {
        *self = SimDisk::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::durable::HardStateRecord;
    use portcullis_core::replication::raft_wire::{EntryPayload, EntryWire, Payload};

    fn entry(index: u64) -> EntryWire {
        EntryWire {
            term: 1,
            index,
            payload: EntryPayload::Normal(Payload::default()),
            context: Payload::default(),
        }
    }

    #[test]
    fn batches_apply_only_when_their_fsync_completes_and_in_order() {
        let mut d = SimDisk::default();
        let t = Instant::from_millis;
        assert_eq!(
            d.submit(
                PersistBatch {
                    number: 1,
                    entries: vec![entry(1)],
                    ..PersistBatch::default()
                },
                t(5)
            ),
            Submitted::Queued
        );
        // Submitted later with a shorter fsync: still completes after batch 1.
        assert_eq!(
            d.submit(
                PersistBatch {
                    number: 2,
                    entries: vec![entry(2)],
                    ..PersistBatch::default()
                },
                t(2)
            ),
            Submitted::Queued
        );
        assert_eq!(d.complete_next(t(4)), None);
        assert_eq!(d.complete_next(t(5)), Some(Completed::Durable(1)));
        assert_eq!(d.complete_next(t(5)), Some(Completed::Durable(2)));
        assert_eq!(d.durable.last_index(), 2);
    }

    #[test]
    fn a_torn_batch_keeps_a_strict_prefix_of_entries_and_nothing_else() {
        let mut rng = SeededRng::from_u64(3);
        for _ in 0..50 {
            let mut d = SimDisk::default();
            d.submit(
                PersistBatch {
                    number: 1,
                    hard_state: Some(HardStateRecord {
                        term: 2,
                        vote: 1,
                        commit: 3,
                    }),
                    entries: (1..=4).map(entry).collect(),
                    ..PersistBatch::default()
                },
                Instant::from_millis(9),
            );
            let loss = d.crash(&mut rng, 1.0);
            let (n, kept, total) = loss.torn.expect("torn");
            assert_eq!((n, total), (1, 4));
            assert!(kept < total);
            assert_eq!(d.durable.entries.len(), kept);
            assert_eq!(d.durable.hard_state, HardStateRecord::default());
            assert_eq!(d.pending_len(), 0);
        }
    }

    #[test]
    fn a_commit_only_batch_is_acked_at_once_and_lost_by_a_crash_before_the_next_write() {
        let t = Instant::from_millis;
        let hs = |commit| HardStateRecord {
            term: 2,
            vote: 1,
            commit,
        };
        let synced = |d: &mut SimDisk| {
            d.submit(
                PersistBatch {
                    number: 1,
                    hard_state: Some(hs(1)),
                    entries: vec![entry(1), entry(2)],
                    ..PersistBatch::default()
                },
                t(1),
            );
            assert_eq!(d.complete_next(t(1)), Some(Completed::Durable(1)));
        };
        let commit_only = |n, commit| PersistBatch {
            number: n,
            hard_state: Some(hs(commit)),
            ..PersistBatch::default()
        };
        // Acknowledged at once; written ahead of the next batch.
        let mut d = SimDisk::default();
        synced(&mut d);
        assert_eq!(d.submit(commit_only(2, 2), t(9)), Submitted::AckedEarly);
        assert_eq!(d.next_done(t(2)), Some(t(2)));
        assert_eq!(d.complete_next(t(2)), Some(Completed::AckedEarly(2)));
        assert_eq!(d.durable.hard_state.commit, 1, "not written yet");
        let next = PersistBatch {
            number: 3,
            entries: vec![entry(3)],
            ..PersistBatch::default()
        };
        assert_eq!(d.submit(next, t(4)), Submitted::Queued);
        assert_eq!(d.complete_next(t(4)), Some(Completed::Durable(3)));
        assert_eq!(d.durable.hard_state.commit, 2);
        // A crash before the next write loses it.
        let mut d = SimDisk::default();
        synced(&mut d);
        d.submit(commit_only(2, 2), t(9));
        let loss = d.crash(&mut SeededRng::from_u64(1), 1.0);
        assert_eq!(loss.lost, vec![2]);
        assert_eq!(d.durable.hard_state.commit, 1);
        // Behind a pending batch it waits its turn like any other.
        let mut d = SimDisk::default();
        synced(&mut d);
        d.submit(
            PersistBatch {
                number: 2,
                entries: vec![entry(3)],
                ..PersistBatch::default()
            },
            t(5),
        );
        assert_eq!(d.submit(commit_only(3, 3), t(6)), Submitted::Queued);
    }
}
