//! Durable storage of one node: what the core asks to persist, in one redb file.
//!
//! The core never writes. It emits [`PersistBatch`]es; the driver hands each one to
//! [`Store::persist`], which applies it in **one** redb write transaction committed with
//! [`Durability::Immediate`] (redb fsyncs before `commit` returns), and only then reports
//! `Persisted(n)`. On restart [`Store::load`] rebuilds the [`DurableState`] that
//! `Node::recover` needs. The result is, by construction and by test, exactly what
//! [`DurableState::apply_batch`] gives on the same batches: that method is the one definition of
//! what a batch means; this module only lays it out on disk so that a batch costs a few page
//! writes instead of rewriting the whole state.
//!
//! ```text
//!   core ──Persist(batch n)──▶ driver ──Store::persist──▶ [ one write txn ] ──fsync──▶ Persisted(n)
//!        (batches queued behind a commit: Store::persist_all, one txn and one fsync for all)
//!
//!   DATA_DIR/
//!     node.key          32 secret bytes of the node's ed25519 key             (0600)
//!     portcullis.redb   (0600: it holds namespace identity keys)
//!       meta      "format" → u32 LE       "initialized" → ()   (set by the first batch)
//!                 "node_meta" / "hard_state" / "snapshot" → borsh
//!       raft_log  index (u64) → borsh EntryWire            (contiguous, after the snapshot)
//!       ns        namespace id (32 bytes) → borsh header   (identity, outbox, active, op count)
//!       ns_ops    namespace id ‖ seq (u64 BE) → borsh Op   (applied order)
//! ```
//!
//! Every value read back is decoded with bounds (our borsh types carry bounded collections);
//! bytes that do not decode are a [`StorageError::Corrupted`] naming the table and key, never a
//! panic. redb itself asserts some of its page invariants with `debug_assert!` in debug builds;
//! [`Store::open`] and [`Store::load`] turn such a panic into `Corrupted` as well.

use std::fs::OpenOptions;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use borsh::{BorshDeserialize, BorshSerialize};
use portcullis_core::crypto::SecretKey;
use portcullis_core::durable::{
    DurableState, HardStateRecord, NamespaceDurable, NamespaceSecret, NamespaceWrite, PersistBatch,
};
use portcullis_core::namespace::ops::{NamespaceId, Op};
use portcullis_core::replication::raft_wire::EntryWire;
use portcullis_core::wire;
use rand_core::OsRng;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::secrets::{self, SecretsError};

/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the redb database inside the data directory.
pub const DB_FILE: &str = "portcullis.redb";
/// Version of the on-disk layout; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const NS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ns");
const NS_OPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ns_ops");

const KEY_FORMAT: &str = "format";
const KEY_INITIALIZED: &str = "initialized";
const KEY_NODE_META: &str = "node_meta";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT: &str = "snapshot";

/// Why the store failed. The disk or the operator is at fault in every case (never a peer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Creating the data directory or a file in it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// redb refused an operation (I/O error, file locked by another process, ...).
    #[error("{path}: {context}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// Stored bytes do not decode: the file is damaged or was written by something else.
    #[error("{path}: corrupted {what}: {reason}")]
    Corrupted {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The file was written with another layout version.
    #[error("{path}: storage format {found}, this build reads format {FORMAT_VERSION}")]
    WrongFormat {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The node key file is unusable.
    #[error("node key: {0}")]
    NodeKey(#[from] SecretsError),
    /// The node key file is gone from a data directory that holds a node's state. A new key
    /// would not match the member id and credential recovered from the database: the node
    /// would come up but no peer would accept it.
    #[error(
        "{path} is missing, but this data directory holds a node's state: restore the key file, \
         or start from an empty directory"
    )]
    NodeKeyMissing {
        /// Where the key should be.
        path: PathBuf,
    },
    /// The database file, which holds namespace secret keys, is readable by group or others.
    #[error("database file: {0}")]
    DatabaseNotPrivate(SecretsError),
}

/// The namespace record as stored; its ops live in `ns_ops`.
#[derive(Debug, Default, BorshSerialize, BorshDeserialize)]
struct NamespaceHeader {
    identity: Option<NamespaceSecret>,
    outbox: Option<Op>,
    active: bool,
    op_count: u64,
}

/// A node's durable state in one redb file, plus its key file. `Send + Sync`; every method
/// blocks (run it on a blocking thread from async code).
#[derive(Debug)]
pub struct Store {
    db: Database,
    dir: PathBuf,
    db_path: PathBuf,
}

fn ns_op_key(ns: &NamespaceId, seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&ns.0.0);
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = portcullis_io_tokio::storage::Store::open(dir.path()).unwrap();
    /// assert!(store.load().unwrap().is_none()); // fresh: nothing persisted yet
    /// ```
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let dir_err = |source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        };
        crate::dirsync::create_dir_all_synced(dir).map_err(dir_err)?;
        let db_path = dir.join(DB_FILE);
        // Create the file ourselves so it is 0600 from its first byte: it holds namespace
        // identity keys. redb then initialises an empty file or opens an existing database.
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        drop(options.open(&db_path).map_err(|source| StorageError::Io {
            path: db_path.clone(),
            source,
        })?);
        // An existing file keeps its mode: one opened up since (a copy, a restore) is refused
        // like a node key file would be.
        secrets::check_private(&db_path).map_err(StorageError::DatabaseNotPrivate)?;
        // The database's name must survive a power loss with the data redb fsyncs into it.
        crate::dirsync::sync_dir(dir).map_err(dir_err)?;
        let opened = catch_unwind(AssertUnwindSafe(|| Database::create(&db_path)));
        let db = match opened {
            Ok(result) => result.map_err(|e| db_err(&db_path, "open", e))?,
            Err(_) => {
                return Err(StorageError::Corrupted {
                    path: db_path,
                    what: "database file".into(),
                    reason: "redb failed an internal consistency check".into(),
                });
            }
        };
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            db_path,
        };
        store.init_tables()?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn init_tables(&self) -> Result<(), StorageError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err(&self.db_path, "begin", e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| db_err(&self.db_path, "open meta", e))?;
            let found = meta
                .get(KEY_FORMAT)
                .map_err(|e| db_err(&self.db_path, "read format", e))?
                .map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert(KEY_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| db_err(&self.db_path, "write format", e))?;
                }
                Some(bytes) => {
                    let version = <[u8; 4]>::try_from(bytes.as_slice())
                        .map(u32::from_le_bytes)
                        .map_err(|_| self.corrupted("format", "not 4 bytes"))?;
                    if version != FORMAT_VERSION {
                        return Err(StorageError::WrongFormat {
                            path: self.db_path.clone(),
                            found: version,
                        });
                    }
                }
            }
            txn.open_table(RAFT_LOG)
                .map_err(|e| db_err(&self.db_path, "open raft_log", e))?;
            txn.open_table(NS)
                .map_err(|e| db_err(&self.db_path, "open ns", e))?;
            txn.open_table(NS_OPS)
                .map_err(|e| db_err(&self.db_path, "open ns_ops", e))?;
        }
        txn.commit().map_err(|e| db_err(&self.db_path, "commit", e))
    }

    fn corrupted(&self, what: impl Into<String>, reason: impl ToString) -> StorageError {
        StorageError::Corrupted {
            path: self.db_path.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    fn decode<T: BorshDeserialize>(&self, what: &str, bytes: &[u8]) -> Result<T, StorageError> {
        wire::decode_exact(bytes).map_err(|e| self.corrupted(what, e))
    }

    /// Everything persisted so far, or `None` if no batch was ever persisted (a fresh node).
    pub fn load(&self) -> Result<Option<DurableState>, StorageError> {
        match catch_unwind(AssertUnwindSafe(|| self.load_inner())) {
            Ok(result) => result,
            Err(_) => {
                Err(self.corrupted("database file", "redb failed an internal consistency check"))
            }
        }
    }

    /// Whether a batch was ever persisted (the mark `load` starts from).
    fn is_initialized(&self) -> Result<bool, StorageError> {
        let path = &self.db_path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, "begin", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| db_err(path, "open meta", e))?;
        let found = meta
            .get(KEY_INITIALIZED)
            .map_err(|e| db_err(path, "read meta", e))?;
        Ok(found.is_some())
    }

    fn load_inner(&self) -> Result<Option<DurableState>, StorageError> {
        let path = &self.db_path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, "begin", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| db_err(path, "open meta", e))?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta
                .get(key)
                .map_err(|e| db_err(path, "read meta", e))?
                .map(|v| v.value().to_vec()))
        };
        if get(KEY_INITIALIZED)?.is_none() {
            return Ok(None);
        }
        let mut state = DurableState::default();
        if let Some(bytes) = get(KEY_NODE_META)? {
            state.meta = self.decode("node meta", &bytes)?;
        }
        if let Some(bytes) = get(KEY_HARD_STATE)? {
            state.hard_state = self.decode("hard state", &bytes)?;
        }
        if let Some(bytes) = get(KEY_SNAPSHOT)? {
            state.snapshot = Some(self.decode("snapshot", &bytes)?);
        }
        let log = txn
            .open_table(RAFT_LOG)
            .map_err(|e| db_err(path, "open raft_log", e))?;
        for row in log.iter().map_err(|e| db_err(path, "scan raft_log", e))? {
            let (index, bytes) = row.map_err(|e| db_err(path, "scan raft_log", e))?;
            let index = index.value();
            let entry: EntryWire = self.decode(&format!("log entry {index}"), bytes.value())?;
            if entry.index != index {
                return Err(self.corrupted(
                    format!("log entry {index}"),
                    format!("holds index {}", entry.index),
                ));
            }
            state.entries.push(entry);
        }
        let ns_table = txn.open_table(NS).map_err(|e| db_err(path, "open ns", e))?;
        let ops_table = txn
            .open_table(NS_OPS)
            .map_err(|e| db_err(path, "open ns_ops", e))?;
        for row in ns_table.iter().map_err(|e| db_err(path, "scan ns", e))? {
            let (key, bytes) = row.map_err(|e| db_err(path, "scan ns", e))?;
            let id: [u8; 32] = key
                .value()
                .try_into()
                .map_err(|_| self.corrupted("namespace key", "not 32 bytes"))?;
            let ns = NamespaceId(portcullis_core::crypto::Hash32(id));
            let header: NamespaceHeader =
                self.decode(&format!("namespace {}", ns.short()), bytes.value())?;
            let lo = ns_op_key(&ns, 0);
            let hi = ns_op_key(&ns, u64::MAX);
            let mut ops = Vec::new();
            for op in ops_table
                .range(lo.as_slice()..=hi.as_slice())
                .map_err(|e| db_err(path, "scan ns_ops", e))?
            {
                let (_, bytes) = op.map_err(|e| db_err(path, "scan ns_ops", e))?;
                ops.push(self.decode(&format!("op of namespace {}", ns.short()), bytes.value())?);
            }
            if ops.len() as u64 != header.op_count {
                return Err(self.corrupted(
                    format!("namespace {}", ns.short()),
                    format!("{} ops stored, header says {}", ops.len(), header.op_count),
                ));
            }
            state.namespaces.insert(
                ns,
                NamespaceDurable {
                    identity: header.identity,
                    ops,
                    outbox: header.outbox,
                    active: header.active,
                },
            );
        }
        Ok(Some(state))
    }

    /// Applies `batch` as [`DurableState::apply_batch`] defines, in one write transaction that
    /// is durable (fsynced) when this returns. Batches must be given in emission order.
    pub fn persist(&self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.persist_all(std::slice::from_ref(batch))
    }

    /// Applies `batches` in order, as [`Store::persist`] would one by one, in **one** write
    /// transaction and one fsync: the driver's group commit when batches queue up behind a
    /// commit. All or none of them are durable when this returns.
    pub fn persist_all(&self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        let path = &self.db_path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| db_err(path, "begin", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| db_err(path, "set durability", e))?;
        for batch in batches {
            self.apply_in(&txn, batch)?;
        }
        txn.commit().map_err(|e| db_err(path, "commit", e))
    }

    /// Writes one batch inside `txn`.
    fn apply_in(
        &self,
        txn: &redb::WriteTransaction,
        batch: &PersistBatch,
    ) -> Result<(), StorageError> {
        let path = &self.db_path;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| db_err(path, "open meta", e))?;
            let mut log = txn
                .open_table(RAFT_LOG)
                .map_err(|e| db_err(path, "open raft_log", e))?;
            meta.insert(KEY_INITIALIZED, [].as_slice())
                .map_err(|e| db_err(path, "write meta", e))?;
            if let Some(node_meta) = &batch.meta {
                put(&mut meta, KEY_NODE_META, node_meta, path)?;
            }
            let mut hard_state = batch.hard_state;
            if let Some(snapshot) = &batch.snapshot {
                let agrees = match log
                    .get(snapshot.index)
                    .map_err(|e| db_err(path, "read raft_log", e))?
                {
                    Some(bytes) => {
                        let entry: EntryWire = self.decode("log entry", bytes.value())?;
                        entry.term == snapshot.term
                    }
                    None => false,
                };
                if agrees {
                    log.retain_in(..=snapshot.index, |_, _| false)
                        .map_err(|e| db_err(path, "compact raft_log", e))?;
                } else {
                    log.retain(|_, _| false)
                        .map_err(|e| db_err(path, "clear raft_log", e))?;
                }
                let mut hs = match hard_state {
                    Some(hs) => hs,
                    None => match meta
                        .get(KEY_HARD_STATE)
                        .map_err(|e| db_err(path, "read meta", e))?
                    {
                        Some(bytes) => self.decode("hard state", bytes.value())?,
                        None => HardStateRecord::default(),
                    },
                };
                hs.commit = hs.commit.max(snapshot.index);
                hs.term = hs.term.max(snapshot.term);
                hard_state = Some(hs);
                put(&mut meta, KEY_SNAPSHOT, snapshot, path)?;
            }
            if let Some(hs) = &hard_state {
                put(&mut meta, KEY_HARD_STATE, hs, path)?;
            }
            if let Some(first) = batch.entries.first() {
                log.retain_in(first.index.., |_, _| false)
                    .map_err(|e| db_err(path, "truncate raft_log", e))?;
                for entry in &batch.entries {
                    let bytes = wire::encode(entry);
                    log.insert(entry.index, bytes.as_slice())
                        .map_err(|e| db_err(path, "append raft_log", e))?;
                }
            }
            if !batch.namespaces.is_empty() {
                let mut ns_table = txn.open_table(NS).map_err(|e| db_err(path, "open ns", e))?;
                let mut ops_table = txn
                    .open_table(NS_OPS)
                    .map_err(|e| db_err(path, "open ns_ops", e))?;
                for write in &batch.namespaces {
                    self.apply_namespace_write(&mut ns_table, &mut ops_table, write)?;
                }
            }
        }
        Ok(())
    }

    fn apply_namespace_write(
        &self,
        ns_table: &mut redb::Table<&[u8], &[u8]>,
        ops_table: &mut redb::Table<&[u8], &[u8]>,
        write: &NamespaceWrite,
    ) -> Result<(), StorageError> {
        let path = &self.db_path;
        let read = |table: &redb::Table<&[u8], &[u8]>,
                    ns: &NamespaceId|
         -> Result<Option<NamespaceHeader>, StorageError> {
            match table
                .get(ns.0.0.as_slice())
                .map_err(|e| db_err(path, "read ns", e))?
            {
                Some(bytes) => Ok(Some(self.decode("namespace header", bytes.value())?)),
                None => Ok(None),
            }
        };
        let (ns, header) = match write {
            NamespaceWrite::Identity { namespace, secret } => {
                let mut h = read(ns_table, namespace)?.unwrap_or_default();
                if h.identity.is_none() {
                    h.identity = Some(secret.clone());
                }
                (namespace, h)
            }
            NamespaceWrite::AppendOps { namespace, ops } => {
                let mut h = read(ns_table, namespace)?.unwrap_or_default();
                h.active = true;
                for op in ops {
                    let bytes = wire::encode(op);
                    ops_table
                        .insert(
                            ns_op_key(namespace, h.op_count).as_slice(),
                            bytes.as_slice(),
                        )
                        .map_err(|e| db_err(path, "append ns_ops", e))?;
                    h.op_count += 1;
                }
                (namespace, h)
            }
            NamespaceWrite::SetOutbox { namespace, op } => {
                let mut h = read(ns_table, namespace)?.unwrap_or_default();
                h.active = true;
                h.outbox = Some(Op::clone(op));
                (namespace, h)
            }
            NamespaceWrite::ClearOutbox { namespace, op } => {
                let Some(mut h) = read(ns_table, namespace)? else {
                    return Ok(());
                };
                if h.outbox.as_ref().is_some_and(|o| o.hash() == *op) {
                    h.outbox = None;
                }
                (namespace, h)
            }
            NamespaceWrite::Left { namespace } => {
                let Some(mut h) = read(ns_table, namespace)? else {
                    return Ok(());
                };
                let lo = ns_op_key(namespace, 0);
                let hi = ns_op_key(namespace, u64::MAX);
                ops_table
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                    .map_err(|e| db_err(path, "drop ns_ops", e))?;
                h.op_count = 0;
                h.outbox = None;
                h.active = false;
                (namespace, h)
            }
            // A write kind this build does not know would silently diverge from
            // `apply_batch`; refuse the batch instead.
            other => {
                return Err(self.corrupted(
                    "persist batch",
                    format!("unknown namespace write {other:?}"),
                ));
            }
        };
        let bytes = wire::encode(&header);
        ns_table
            .insert(ns.0.0.as_slice(), bytes.as_slice())
            .map_err(|e| db_err(path, "write ns", e))?;
        Ok(())
    }

    /// The node's long-term key: read from `DIR/node.key`, or generated and written there
    /// (mode `0600`, never overwritten) on first use. A key missing from a store that holds a
    /// node's state is an error ([`StorageError::NodeKeyMissing`]), never replaced.
    pub fn load_or_create_node_key(&self) -> Result<SecretKey, StorageError> {
        let path = self.dir.join(NODE_KEY_FILE);
        match secrets::read_secret32(&path) {
            Ok(bytes) => return Ok(SecretKey::from_secret_bytes(&bytes)),
            Err(SecretsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if self.is_initialized()? {
            return Err(StorageError::NodeKeyMissing { path });
        }
        let key = SecretKey::generate(&mut OsRng);
        match secrets::write_new(&path, key.secret_bytes().as_slice(), true) {
            Ok(()) => Ok(key),
            // Another opener won the race: use its key.
            Err(SecretsError::AlreadyExists(_)) => {
                let bytes = secrets::read_secret32(&path)?;
                Ok(SecretKey::from_secret_bytes(&bytes))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn put<T: BorshSerialize>(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: &T,
    path: &Path,
) -> Result<(), StorageError> {
    let bytes = wire::encode(value);
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| db_err(path, "write meta", e))?;
    Ok(())
}

fn db_err(path: &Path, context: &'static str, e: impl Into<redb::Error>) -> StorageError {
    StorageError::Db {
        path: path.to_path_buf(),
        context,
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests;
