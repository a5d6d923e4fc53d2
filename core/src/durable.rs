//! What a node keeps on disk, and how a driver applies what the core asks it to persist.
//!
//! The core never writes: it emits [`PersistBatch`]es and waits for `Persisted(n)` before doing
//! anything that depends on them (sending Raft's persisted messages, answering a join). A driver
//! MUST apply batches in the order they were emitted, make each durable (fsync) before it
//! reports `Persisted(number)`, and, on restart, hand the recovered [`DurableState`] to
//! `Node::recover`. `Persisted(n)` means every batch up to `n` is durable.
//!
//! [`DurableState::apply_batch`] is the one definition of what a batch does; the simulator's disk
//! and the redb store both follow it.
//!
//! ```text
//!   core ──Persist(batch n)──▶ driver: apply_batch, fsync ──Persisted(n)──▶ core
//!   restart: driver reads DurableState ──▶ Node::recover
//! ```

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::PublicKey;
use crate::identity::Credential;
use crate::ledger::MemberId;
use crate::replication::raft_wire::{EntryWire, SnapshotWire};

/// Raft's hard state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct HardStateRecord {
    /// Current term.
    pub term: u64,
    /// Vote in the current term.
    pub vote: u64,
    /// Commit index.
    pub commit: u64,
}

/// The node's own durable facts, outside the Raft log.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NodeMeta {
    /// Incremented at every recovery; the high half of proposal sequence numbers, so a
    /// restarted node never reuses a proposal id.
    pub boot_count: u64,
    /// Our member id, once admitted (or at bootstrap).
    pub member_id: Option<MemberId>,
    /// The cluster public key, once known.
    pub cluster_key: Option<PublicKey>,
    /// Our membership credential.
    pub credential: Option<Credential>,
}

/// One atomic write the core asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct PersistBatch {
    /// Acknowledge with `Persisted(number)`; numbers increase by one per batch.
    pub number: u64,
    /// Replace the node meta.
    pub meta: Option<NodeMeta>,
    /// Replace the hard state.
    pub hard_state: Option<HardStateRecord>,
    /// Install a snapshot: the log up to its index is replaced by it (a received snapshot, or
    /// local compaction). Applied before `entries`.
    pub snapshot: Option<SnapshotWire>,
    /// Append entries; existing entries at or after the first one's index are dropped first.
    pub entries: Vec<EntryWire>,
}

impl PersistBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.meta.is_none()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
    }
}

/// Everything a node persisted: what `Node::recover` rebuilds from.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct DurableState {
    /// The node's own facts.
    pub meta: NodeMeta,
    /// Raft's hard state.
    pub hard_state: HardStateRecord,
    /// The latest snapshot (none before the node joined a cluster).
    pub snapshot: Option<SnapshotWire>,
    /// Log entries after the snapshot, contiguous.
    pub entries: Vec<EntryWire>,
}

impl DurableState {
    /// Applies one batch, exactly as a driver must.
    pub fn apply_batch(&mut self, batch: &PersistBatch) {
        if let Some(meta) = &batch.meta {
            self.meta = meta.clone();
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        if let Some(snapshot) = &batch.snapshot {
            // Keep only entries after the snapshot that agree with it. Entries are contiguous
            // and sorted by index, so positions come from binary search.
            let at = self.entries.partition_point(|e| e.index < snapshot.index);
            let agrees = self
                .entries
                .get(at)
                .is_some_and(|e| e.index == snapshot.index && e.term == snapshot.term);
            if agrees {
                self.entries.drain(..=at);
            } else {
                self.entries.clear();
            }
            self.hard_state.commit = self.hard_state.commit.max(snapshot.index);
            self.hard_state.term = self.hard_state.term.max(snapshot.term);
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(first) = batch.entries.first() {
            let keep = self.entries.partition_point(|e| e.index < first.index);
            self.entries.truncate(keep);
            self.entries.extend(batch.entries.iter().cloned());
        }
    }

    /// The index of the last durable log entry (or of the snapshot).
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::raft_wire::{EntryPayload, Payload, SnapshotWire};

    fn entry(index: u64, term: u64) -> EntryWire {
        EntryWire {
            term,
            index,
            payload: EntryPayload::Normal(Payload::default()),
            context: Payload::default(),
        }
    }

    fn snapshot(index: u64, term: u64) -> SnapshotWire {
        SnapshotWire {
            index,
            term,
            conf_state: Default::default(),
            data: Payload::default(),
        }
    }

    #[test]
    fn batches_truncate_conflicts_and_snapshots_keep_agreeing_suffixes() {
        let mut d = DurableState::default();
        d.apply_batch(&PersistBatch {
            entries: (1..=5).map(|i| entry(i, 1)).collect(),
            ..PersistBatch::default()
        });
        d.apply_batch(&PersistBatch {
            entries: vec![entry(4, 2)],
            ..PersistBatch::default()
        });
        assert_eq!(d.last_index(), 4);
        assert_eq!(d.entries.last().map(|e| e.term), Some(2));
        d.apply_batch(&PersistBatch {
            snapshot: Some(snapshot(2, 1)),
            ..PersistBatch::default()
        });
        assert_eq!(
            d.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
        d.apply_batch(&PersistBatch {
            snapshot: Some(snapshot(9, 3)),
            ..PersistBatch::default()
        });
        assert!(d.entries.is_empty());
        assert_eq!(d.last_index(), 9);
        assert_eq!(d.hard_state.commit, 9);
    }
}
