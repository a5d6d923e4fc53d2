//! The in-memory Raft log that raft-rs reads through its `Storage` trait.
//!
//! It always starts from a snapshot (index ≥ 1 once the node belongs to a cluster), so new
//! members catch up by snapshot first and every replica's state is the ledger snapshot plus the
//! entries after it. Durability is not this type's job: every change here is mirrored into a
//! [`crate::durable::PersistBatch`] by the replica.
//!
//! Two conf states, on purpose: the snapshot's is the membership **at the snapshot's index**
//! (what a follower that installs it must start from, before it applies the entries after it),
//! while [`RaftLog::conf_state`] is the membership **as applied**, which moves on with every
//! conf change. Writing applied changes into the snapshot instead made a follower that caught
//! up by snapshot apply the same conf change twice (once in the snapshot, once from the log);
//! a second `AddLearner` is harmless, a second joint change is fatal.
//!
//! A new learner needs a snapshot that names it (raft-rs refuses one that does not), and the
//! base snapshot predates it. So when raft-rs asks for a snapshot that no held snapshot can
//! serve, the log answers "temporarily unavailable" and records who asked; the node then
//! offers an **outgoing** snapshot taken at its applied index, which is only sent, never a new
//! log base (the entries after it stay, so no other follower is pushed onto snapshots):
//!
//! ```text
//!   raft-rs: snapshot(for 7) ──▶ base names 7? ──yes──▶ base
//!                                  │ no
//!                                  ▼
//!                         outgoing names 7? ──yes──▶ outgoing
//!                                  │ no
//!                                  ▼
//!              Unavailable, wanted += {7} ──▶ node: offer_outgoing(applied, ledger) ──▶ retry
//! ```

use std::cell::RefCell;
use std::collections::BTreeSet;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Raft's view of the log: a snapshot, then contiguous entries.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// The conf state as applied (the snapshot's, then every conf change applied since).
    conf_state: ConfState,
    /// A snapshot after the base one, for peers the base does not name (see module docs).
    outgoing: Option<Snapshot>,
    /// Peers raft-rs asked a snapshot for that no held snapshot could serve. Written through
    /// `&self` (raft-rs asks through `Storage::snapshot(&self)`); bounded by the group's size.
    wanted: RefCell<BTreeSet<u64>>,
}

impl RaftLog {
    /// A log that starts at `snapshot` with `hard_state`, followed by `entries`.
    pub fn new(hard_state: HardState, snapshot: Snapshot, entries: Vec<Entry>) -> RaftLog {
        let mut log = RaftLog {
            hard_state,
            conf_state: snapshot.get_metadata().get_conf_state().clone(),
            snapshot,
            entries: Vec::new(),
            outgoing: None,
            wanted: RefCell::new(BTreeSet::new()),
        };
        log.append(&entries);
        log
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The conf state as applied: the snapshot's, as updated by the replica on conf changes.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot.
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Entries after the snapshot.
    pub fn entries_after_snapshot(&self) -> &[Entry] {
        &self.entries
    }

    /// Stores the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records a conf change applied at some index after the snapshot. The snapshot keeps the
    /// conf state of its own index; the next compaction takes this one.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Whether a peer waits for a snapshot that names it.
    pub fn snapshot_wanted(&self) -> bool {
        !self.wanted.borrow().is_empty()
    }

    /// Peers waiting for a snapshot that names them; taken by the caller, who offers one.
    pub fn take_wanted(&mut self) -> BTreeSet<u64> {
        std::mem::take(self.wanted.get_mut())
    }

    /// Keeps `snapshot` (taken at the applied index, with the applied conf state) to send to
    /// peers the base snapshot does not name. The log itself is unchanged.
    pub fn offer_outgoing(&mut self, snapshot: Snapshot) {
        self.outgoing = Some(snapshot);
    }

    /// Appends entries, truncating any existing suffix they conflict with.
    pub fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first() else {
            return;
        };
        let offset = self.snapshot_index() + 1;
        if first.index < offset {
            // Entries already covered by the snapshot: keep only the newer part.
            let skip = usize::try_from(offset - first.index).unwrap_or(usize::MAX);
            if skip < new.len() {
                self.append(&new[skip..]);
            }
            return;
        }
        let keep = usize::try_from(first.index - offset).unwrap_or(usize::MAX);
        self.entries.truncate(keep.min(self.entries.len()));
        self.entries.extend_from_slice(new);
    }

    /// Replaces everything up to the snapshot's index with the snapshot (install or compact).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        let term = snapshot.get_metadata().term;
        let offset = self.snapshot_index() + 1;
        // Keep entries after the snapshot only if the log agrees with it at its index.
        let agrees = index >= offset
            && self
                .entries
                .get(usize::try_from(index - offset).unwrap_or(usize::MAX))
                .is_some_and(|e| e.term == term);
        if agrees {
            let drop_count = usize::try_from(index - offset + 1).unwrap_or(usize::MAX);
            self.entries.drain(..drop_count.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        if self.hard_state.term < term {
            self.hard_state.term = term;
        }
        // Installed: the state machine now stands at the snapshot's index. Compacted: the
        // snapshot was taken at the applied index, so its conf state is the applied one.
        self.conf_state = snapshot.get_metadata().get_conf_state().clone();
        if self
            .outgoing
            .as_ref()
            .is_some_and(|o| o.get_metadata().index <= index)
        {
            self.outgoing = None;
        }
        self.snapshot = snapshot;
    }

    /// The term of `index`, if the log still knows it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        let snap = self.snapshot_index();
        if index == snap {
            return Some(self.snapshot.get_metadata().term);
        }
        if index < snap {
            return None;
        }
        let i = usize::try_from(index - snap - 1).ok()?;
        self.entries.get(i).map(|e| e.term)
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let offset = self.snapshot_index() + 1;
        if low < offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = self.snapshot_index() + self.entries.len() as u64;
        if high > last + 1 {
            // raft-rs promises never to ask; answer with an error rather than panic.
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = usize::try_from(low - offset).unwrap_or(usize::MAX);
        let hi = usize::try_from(high - offset).unwrap_or(usize::MAX);
        let mut out = self.entries[lo.min(hi)..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + self.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let serves = |s: &Snapshot| {
            s.get_metadata().index >= request_index && names(s.get_metadata().get_conf_state(), to)
        };
        if let Some(s) = [Some(&self.snapshot), self.outgoing.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| serves(s))
        {
            return Ok(s.clone());
        }
        self.wanted.borrow_mut().insert(to);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// Whether `cs` names `id` in any role (raft-rs refuses a snapshot that does not name it).
fn names(cs: &ConfState, id: u64) -> bool {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf types: see raft_wire
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    fn snap(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let mut log = RaftLog::new(HardState::default(), snap(1, 1), vec![]);
        log.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]);
        log.append(&[entry(3, 2)]);
        assert_eq!(log.last_index().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.term(1).unwrap(), 1);
        assert!(log.term(0).is_err());
        assert!(
            log.entries(1, 3, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }

    #[test]
    fn snapshot_keeps_agreeing_suffix_only() {
        let mut log = RaftLog::new(HardState::default(), snap(1, 1), vec![]);
        log.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]);
        log.apply_snapshot(snap(3, 1));
        assert_eq!(log.first_index().unwrap(), 4);
        assert_eq!(log.last_index().unwrap(), 4);
        log.apply_snapshot(snap(10, 5));
        assert_eq!(log.first_index().unwrap(), 11);
        assert_eq!(log.last_index().unwrap(), 10);
        assert_eq!(log.hard_state().commit, 10);
    }
}
