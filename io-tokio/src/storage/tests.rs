use super::*;
use portcullis_core::durable::{NamespaceWrite, NodeMeta};
use portcullis_core::replication::raft_wire::{EntryPayload, Payload, SnapshotWire};
use proptest::prelude::*;
use std::fs;

fn payload(byte: u8) -> Payload {
    Payload::try_from_vec(vec![byte; usize::from(byte % 7)])
        .expect("invariant: at most 6 bytes, far below the payload bound")
}

fn entry(index: u64, term: u64) -> EntryWire {
    EntryWire {
        term,
        index,
        payload: EntryPayload::Normal(payload(index as u8)),
        context: Payload::default(),
    }
}

fn snapshot(index: u64, term: u64) -> SnapshotWire {
    SnapshotWire {
        index,
        term,
        conf_state: Default::default(),
        data: payload(term as u8),
    }
}

/// Four signed ops in two namespaces (each op creates its namespace; any op works as data).
fn op_pool() -> Vec<Op> {
    (0u8..4)
        .map(|i| {
            let admin = SecretKey::from_secret_bytes(&[i / 2 + 1; 32]);
            Op::create(&admin, [i; 16], 1_700_000_000_000 + u64::from(i))
        })
        .collect()
}

/// An abstract batch; `to_batch` turns it into a valid one against the model's current log.
#[derive(Clone, Debug)]
struct BatchPlan {
    boot: Option<u64>,
    hard_state: Option<(u64, u64, u64)>,
    /// (position in 0..=last+2, reuse the stored term?, term otherwise)
    snapshot: Option<(u64, bool, u64)>,
    /// (how far before last+1 the first new entry goes, count, term)
    entries: Option<(u64, u64, u64)>,
    /// (namespace 0..2, op 0..4, kind 0..5)
    namespaces: Vec<(usize, usize, u8)>,
}

fn plan() -> impl Strategy<Value = BatchPlan> {
    (
        proptest::option::of(0u64..5),
        proptest::option::of((0u64..9, 0u64..4, 0u64..20)),
        proptest::option::weighted(0.25, (0u64..30, any::<bool>(), 1u64..5)),
        proptest::option::weighted(0.8, (0u64..4, 1u64..6, 1u64..5)),
        proptest::collection::vec((0usize..2, 0usize..4, 0u8..5), 0..4),
    )
        .prop_map(
            |(boot, hard_state, snapshot, entries, namespaces)| BatchPlan {
                boot,
                hard_state,
                snapshot,
                entries,
                namespaces,
            },
        )
}

fn to_batch(plan: &BatchPlan, number: u64, model: &DurableState, ops: &[Op]) -> PersistBatch {
    let namespaces_ids: Vec<NamespaceId> = ops.iter().step_by(2).map(|o| o.namespace).collect();
    let mut batch = PersistBatch {
        number,
        meta: plan.boot.map(|boot_count| NodeMeta {
            boot_count,
            ..NodeMeta::default()
        }),
        hard_state: plan.hard_state.map(|(term, vote, commit)| HardStateRecord {
            term,
            vote,
            commit,
        }),
        ..PersistBatch::default()
    };
    let last = model.last_index();
    let mut floor = model.snapshot.as_ref().map_or(0, |s| s.index);
    let mut next = last + 1;
    if let Some((position, reuse, term)) = plan.snapshot {
        let index = position % (last + 3);
        let stored = model.entries.iter().find(|e| e.index == index);
        let term = match (reuse, stored) {
            (true, Some(e)) => e.term,
            _ => term,
        };
        // A snapshot never goes backwards (raft-rs never installs an older one).
        if index > floor {
            batch.snapshot = Some(snapshot(index, term));
            floor = index;
            if stored.is_none_or(|e| e.term != term) {
                next = index + 1;
            }
        }
    }
    if let Some((back, count, term)) = plan.entries {
        let first = next.saturating_sub(back).max(floor + 1);
        batch.entries = (first..first + count).map(|i| entry(i, term)).collect();
    }
    for &(ns, op, kind) in &plan.namespaces {
        let namespace = namespaces_ids[ns];
        batch.namespaces.push(match kind {
            0 => NamespaceWrite::Identity {
                namespace,
                secret: NamespaceSecret([op as u8; 32]),
            },
            1 => NamespaceWrite::AppendOps {
                namespace,
                ops: ops[op..].iter().take(2).cloned().collect(),
            },
            2 => NamespaceWrite::SetOutbox {
                namespace,
                op: Box::new(ops[op].clone()),
            },
            3 => NamespaceWrite::ClearOutbox {
                namespace,
                op: ops[op].hash(),
            },
            _ => NamespaceWrite::Left { namespace },
        });
    }
    batch
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The store, reopened at any point, holds exactly what `DurableState::apply_batch` builds
    /// from the same batches: log truncation, snapshot compaction, namespace writes included.
    #[test]
    fn reopened_store_equals_apply_batch(plans in proptest::collection::vec(plan(), 1..14), reopen_at in 0usize..14) {
        let dir = tempfile::tempdir().unwrap();
        let ops = op_pool();
        let mut model = DurableState::default();
        let mut store = Store::open(dir.path()).unwrap();
        for (i, plan) in plans.iter().enumerate() {
            let batch = to_batch(plan, i as u64 + 1, &model, &ops);
            model.apply_batch(&batch);
            store.persist(&batch).unwrap();
            if i == reopen_at {
                drop(store);
                store = Store::open(dir.path()).unwrap();
                let loaded = store.load().unwrap();
                prop_assert_eq!(loaded.as_ref(), Some(&model));
            }
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        prop_assert_eq!(store.load().unwrap(), Some(model));
    }
}

#[test]
fn fresh_store_loads_none_and_an_empty_batch_marks_it_initialized() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap(), None);
    store.persist(&PersistBatch::default()).unwrap();
    assert_eq!(store.load().unwrap(), Some(DurableState::default()));
}

#[test]
fn snapshot_compacts_agreeing_prefix_and_clears_a_conflicting_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .persist(&PersistBatch {
            number: 1,
            entries: (1..=6).map(|i| entry(i, 1)).collect(),
            ..PersistBatch::default()
        })
        .unwrap();
    // Local compaction at 3 (term agrees): entries 4..=6 stay.
    store
        .persist(&PersistBatch {
            number: 2,
            snapshot: Some(snapshot(3, 1)),
            ..PersistBatch::default()
        })
        .unwrap();
    let state = store.load().unwrap().unwrap();
    let indexes: Vec<u64> = state.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, vec![4, 5, 6]);
    assert_eq!(state.hard_state.commit, 3);
    // A received snapshot at 5 with another term: the whole log goes.
    store
        .persist(&PersistBatch {
            number: 3,
            snapshot: Some(snapshot(5, 2)),
            ..PersistBatch::default()
        })
        .unwrap();
    let state = store.load().unwrap().unwrap();
    assert!(state.entries.is_empty());
    assert_eq!(state.last_index(), 5);
    assert_eq!((state.hard_state.term, state.hard_state.commit), (2, 5));
    // Appending at 6, then a conflicting suffix from 7 truncates the old tail.
    store
        .persist(&PersistBatch {
            number: 4,
            entries: (6..=9).map(|i| entry(i, 2)).collect(),
            ..PersistBatch::default()
        })
        .unwrap();
    store
        .persist(&PersistBatch {
            number: 5,
            entries: vec![entry(7, 3)],
            ..PersistBatch::default()
        })
        .unwrap();
    let state = store.load().unwrap().unwrap();
    let log: Vec<(u64, u64)> = state.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(log, vec![(6, 2), (7, 3)]);
}

#[cfg(unix)]
#[test]
fn node_key_is_created_0600_once_and_reloaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = store.load_or_create_node_key().unwrap();
    let again = store.load_or_create_node_key().unwrap();
    assert_eq!(key.public(), again.public());
    let mode = |name: &str| {
        fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(NODE_KEY_FILE), 0o600);
    assert_eq!(mode(DB_FILE), 0o600);
    drop(store);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(
        reopened.load_or_create_node_key().unwrap().public(),
        key.public()
    );
}

#[cfg(unix)]
#[test]
fn world_readable_node_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.load_or_create_node_key().unwrap();
    let path = dir.path().join(NODE_KEY_FILE);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        store.load_or_create_node_key(),
        Err(StorageError::NodeKey(SecretsError::TooOpen { .. }))
    ));
}

/// A node key lost from a data directory with state was silently replaced by a new key:
/// the node came up under its old member id with a key no peer pins (found in review).
#[test]
fn a_missing_node_key_on_a_store_with_state_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.load_or_create_node_key().unwrap();
    store.persist(&PersistBatch::default()).unwrap();
    fs::remove_file(dir.path().join(NODE_KEY_FILE)).unwrap();
    assert!(matches!(
        store.load_or_create_node_key(),
        Err(StorageError::NodeKeyMissing { .. })
    ));
    assert!(!dir.path().join(NODE_KEY_FILE).exists(), "no key was made");
}

#[cfg(unix)]
#[test]
fn a_database_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let path = dir.path().join(DB_FILE);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StorageError::DatabaseNotPrivate(SecretsError::TooOpen {
            mode: 0o644,
            ..
        }))
    ));
}

#[test]
fn garbage_database_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.path().join(DB_FILE);
    fs::write(&path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Db { .. } | StorageError::Corrupted { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn undecodable_record_is_corrupted_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .persist(&PersistBatch {
            number: 1,
            entries: vec![entry(1, 1)],
            ..PersistBatch::default()
        })
        .unwrap();
    // Damage one record behind the store's back.
    let txn = store.db.begin_write().unwrap();
    txn.open_table(RAFT_LOG)
        .unwrap()
        .insert(1, [0xff_u8; 3].as_slice())
        .unwrap();
    txn.commit().unwrap();
    let err = store.load().unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupted { what, .. } if what == "log entry 1"),
        "{err:?}"
    );
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let txn = store.db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(KEY_FORMAT, 99u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(store);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StorageError::WrongFormat { found: 99, .. })
    ));
}
