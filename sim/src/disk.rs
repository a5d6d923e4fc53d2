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
}

impl SimDisk {
    /// Queues `batch`; it completes at `done_at` or after the batch before it, whichever is
    /// later. Returns false if the queue is over its bound (the batch is then dropped).
    pub(crate) fn submit(&mut self, batch: PersistBatch, done_at: Instant) -> bool {
        if self.pending.len() >= MAX_PENDING_BATCHES {
            return false;
        }
        let done_at = self
            .pending
            .back()
            .map_or(done_at, |(prev, _)| done_at.max(*prev));
        self.pending.push_back((done_at, batch));
        true
    }

    /// When the next fsync completes.
    pub(crate) fn next_done(&self) -> Option<Instant> {
        self.pending.front().map(|(t, _)| *t)
    }

    /// Takes the next batch whose fsync has completed by `now`, after applying it.
    pub(crate) fn complete_next(&mut self, now: Instant) -> Option<u64> {
        if self.pending.front().is_none_or(|(t, _)| *t > now) {
            return None;
        }
        let (_, batch) = self.pending.pop_front()?;
        self.durable.apply_batch(&batch);
        Some(batch.number)
    }

    /// Batches waiting for their fsync.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A crash: the batch in flight may be torn (with probability `torn`), the rest is lost.
    pub(crate) fn crash(&mut self, rng: &mut SeededRng, torn: f64) -> CrashLoss {
        let mut loss = CrashLoss::default();
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
        loss.lost = pending.into_iter().map(|(_, b)| b.number).collect();
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
        assert!(d.submit(
            PersistBatch {
                number: 1,
                entries: vec![entry(1)],
                ..PersistBatch::default()
            },
            t(5)
        ));
        // Submitted later with a shorter fsync: still completes after batch 1.
        assert!(d.submit(
            PersistBatch {
                number: 2,
                entries: vec![entry(2)],
                ..PersistBatch::default()
            },
            t(2)
        ));
        assert_eq!(d.complete_next(t(4)), None);
        assert_eq!(d.complete_next(t(5)), Some(1));
        assert_eq!(d.complete_next(t(5)), Some(2));
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
}
