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

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{PublicKey, SecretKey};
use crate::identity::Credential;
use crate::ledger::MemberId;
use crate::namespace::ops::{NamespaceId, Op, OpHash};
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
    /// The voters we were given at admission: until our ledger catches up, they are how we
    /// recognise the leader's Raft messages (so they must survive a restart before the first
    /// snapshot; found by the simulator: learner-restart-before-first-snapshot).
    pub known_members: Vec<crate::messages::MemberInfo>,
}

/// A namespace identity's secret key bytes, as stored. Wiped from memory on drop; `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, Zeroize, ZeroizeOnDrop)]
pub struct NamespaceSecret(pub [u8; 32]);

impl NamespaceSecret {
    /// The stored bytes of `key`.
    pub fn of(key: &SecretKey) -> NamespaceSecret {
        NamespaceSecret(*key.secret_bytes())
    }

    /// The key these bytes hold.
    pub fn key(&self) -> SecretKey {
        SecretKey::from_secret_bytes(&self.0)
    }
}

impl core::fmt::Debug for NamespaceSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NamespaceSecret(..)")
    }
}

/// One change to a namespace's durable state.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum NamespaceWrite {
    /// Store our identity key in `namespace` (once; a second write of another key is ignored,
    /// so an identity is never replaced).
    Identity {
        /// The namespace.
        namespace: NamespaceId,
        /// The key.
        secret: NamespaceSecret,
    },
    /// Append applied ops to the namespace's op log (in applied order; duplicates ignored).
    AppendOps {
        /// The namespace.
        namespace: NamespaceId,
        /// The ops.
        ops: Vec<Op>,
    },
    /// Set the announce outbox.
    SetOutbox {
        /// The namespace.
        namespace: NamespaceId,
        /// The `MemberJoined` op.
        op: Box<Op>,
    },
    /// Clear the announce outbox if it still holds `op`.
    ClearOutbox {
        /// The namespace.
        namespace: NamespaceId,
        /// The op that was in it.
        op: OpHash,
    },
    /// We left the namespace: drop its op log and outbox (the identity is kept, so a later
    /// join reuses it).
    Left {
        /// The namespace.
        namespace: NamespaceId,
    },
}

/// What a node keeps about one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NamespaceDurable {
    /// Our identity key in the namespace.
    pub identity: Option<NamespaceSecret>,
    /// Ops we applied, in applied order (a replay rebuilds the replica).
    pub ops: Vec<Op>,
    /// The announce waiting for proof of inclusion.
    pub outbox: Option<Op>,
    /// Whether the namespace is active (false after a leave).
    pub active: bool,
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
    /// Namespace changes, applied in order after everything above.
    pub namespaces: Vec<NamespaceWrite>,
}

impl PersistBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.meta.is_none()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.namespaces.is_empty()
    }

    /// Whether this batch changes nothing but the commit index of `durable`, the last hard
    /// state made durable (same term and vote; no meta, snapshot, entries or namespace
    /// writes). The drain contract lets a driver acknowledge such a batch before it is durable
    /// (see `node`'s module docs): Raft's commit index is volatile state.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::durable::{HardStateRecord, PersistBatch};
    ///
    /// let durable = HardStateRecord { term: 3, vote: 1, commit: 10 };
    /// let commit_only = PersistBatch {
    ///     number: 7,
    ///     hard_state: Some(HardStateRecord { commit: 12, ..durable }),
    ///     ..PersistBatch::default()
    /// };
    /// assert!(commit_only.only_advances_commit(Some(&durable)));
    /// let new_term = PersistBatch {
    ///     hard_state: Some(HardStateRecord { term: 4, ..durable }),
    ///     ..commit_only.clone()
    /// };
    /// assert!(!new_term.only_advances_commit(Some(&durable)));
    /// // Nothing durable yet: everything must be synced.
    /// assert!(!commit_only.only_advances_commit(None));
    /// ```
    pub fn only_advances_commit(&self, durable: Option<&HardStateRecord>) -> bool {
        let same_term_and_vote = match (self.hard_state, durable) {
            (Some(hs), Some(d)) => hs.term == d.term && hs.vote == d.vote,
            _ => false,
        };
        same_term_and_vote
            && self.meta.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.namespaces.is_empty()
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
    /// Per namespace: identity, op log, outbox.
    pub namespaces: BTreeMap<NamespaceId, NamespaceDurable>,
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
        for write in &batch.namespaces {
            self.apply_namespace_write(write);
        }
    }

    fn apply_namespace_write(&mut self, write: &NamespaceWrite) {
        match write {
            NamespaceWrite::Identity { namespace, secret } => {
                let ns = self.namespaces.entry(*namespace).or_default();
                if ns.identity.is_none() {
                    ns.identity = Some(secret.clone());
                }
            }
            NamespaceWrite::AppendOps { namespace, ops } => {
                let ns = self.namespaces.entry(*namespace).or_default();
                ns.active = true;
                ns.ops.extend(ops.iter().cloned());
            }
            NamespaceWrite::SetOutbox { namespace, op } => {
                let ns = self.namespaces.entry(*namespace).or_default();
                ns.active = true;
                ns.outbox = Some(Op::clone(op));
            }
            NamespaceWrite::ClearOutbox { namespace, op } => {
                if let Some(ns) = self.namespaces.get_mut(namespace)
                    && ns.outbox.as_ref().is_some_and(|o| o.hash() == *op)
                {
                    ns.outbox = None;
                }
            }
            NamespaceWrite::Left { namespace } => {
                if let Some(ns) = self.namespaces.get_mut(namespace) {
                    ns.ops.clear();
                    ns.outbox = None;
                    ns.active = false;
                }
            }
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
