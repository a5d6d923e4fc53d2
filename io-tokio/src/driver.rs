//! The node driver: one tokio task runs one [`Node`] over the QUIC [`Transport`] and the redb
//! [`Store`].
//!
//! The task follows the core's drain contract (`portcullis_core::node`): it `select!`s over
//! transport events, `Persisted` acknowledgements from the storage thread, local requests and
//! the core's timer; after **every** `handle` it drains `poll_output` to the end. A timer that
//! is already due (the core's "immediate" timer that flushes a burst's proofs and proposals as
//! one batch) fires right after the inputs already waiting are taken in, not at tokio's next
//! timer tick: an admission crosses several such hops.
//!
//! ```text
//!   transport events ─┐                        ┌─ Transmit ─▶ Transport::send (best effort)
//!   Persisted(n) ─────┼─▶ Node::handle(now, …) ┼─ Persist ──▶ storage thread: Store::persist
//!   requests ─────────┤   then poll_output()*  │               (one redb txn, fsync) ─▶ Persisted(n)
//!   sleep(poll_timeout)┘                        ├─ Connect ──▶ dial task (pinned key, backoff) ─▶ Connected
//!                                              └─ Event ────▶ broadcast to subscribers
//! ```
//!
//! `Persisted(n)` is reported only when the commit holding batch `n` has returned, which is
//! after redb's durable commit (fsync). Batches go to one storage thread in order; when several
//! are waiting, they are committed together in one transaction (`Store::persist_all`: one
//! fsync) and only the highest number is reported. One exception, as in etcd: batches that
//! only advance Raft's commit index (volatile state in Raft) are reported at once and written
//! with the next synced commit (see `storage_loop`).
//!
//! Connections: a `Connect` output is dialed with the member's key pinned, up to
//! `DIAL_ATTEMPTS` times with exponential backoff (`DIAL_BACKOFF_INITIAL_MS` doubling to
//! `DIAL_BACKOFF_MAX_MS`); the core asks again after `connect_retry_ms` if it still needs the
//! member. Inbound connections pass the [`MembershipPolicy`]: members always, unknown keys
//! (joiners) up to `max_joiner_connections` at once; the core then decides what each key may
//! do. A joiner dials its seeds without a pinned key, all at once, and the core checks the
//! seed's cluster against the token's pin in the first frames (see `transport::tls`). The join
//! starts on the first seed to connect; the others follow as `AddJoinSeeds`, so a dead seed
//! costs nothing while another answers.
//!
//! Time: the driver is allowed to read clocks. `Now::instant` is the monotonic time since the
//! driver started; `Now::unix_ms` is the wall clock. The seed is 32 bytes of OS entropy drawn at
//! every start. It derives the node's namespace admin and identity keys, so it is never logged: the
//! log shows the first bytes of its hash (`seed_fingerprint`, as in a flight recording's
//! header), which ties a run to its log and to a seed noted in `recording-seeds`.
//!
//! Stopping: the node task returns why it stopped ([`StopReason`]): asked to, or a failure
//! (a storage commit failed, the storage thread panicked, the core's fatal error).
//! [`NodeHandle::stopped`] waits for it, [`NodeHandle::shutdown`] returns a failure as
//! [`DriverError::Died`], and every wait on the node's events ends with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_core::config::Config;
use portcullis_core::crypto::PublicKey;
use portcullis_core::durable::{HardStateRecord, PersistBatch};
use portcullis_core::identity::AdmissionSecrets;
use portcullis_core::ledger::{Addr, Addrs, MemberId, MemberSpec};
use portcullis_core::namespace::ops::NamespaceId;
use portcullis_core::node::{
    Event, Input, LocalCommand, Node, NodeError, NodeMetrics, NodeSetup, Output, PeerId,
};
use portcullis_core::time::{Instant, Now};
use portcullis_core::token::JoinToken;
use rand_core::OsRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument;

use portcullis_core::recording::{NodeStart, Recorder, RecorderOptions};
use portcullis_core::rng::NodeSeed;
use zeroize::Zeroizing;

use crate::recording::{RecordingWriter, RecordingWriterConfig};
use crate::storage::{StorageError, Store};
use crate::transport::{
    PeerPolicy, Transport, TransportConfig, TransportError, TransportEvent, TransportMetrics,
};

/// Requests queued for the node task before callers wait.
const REQUEST_QUEUE: usize = 1024;
/// Events buffered per subscriber; a slower subscriber misses the oldest (it is told how many).
const EVENT_BUFFER: usize = 4096;
/// Dial attempts per `Connect` before giving up (the core asks again after `connect_retry_ms`).
const DIAL_ATTEMPTS: u32 = 5;
/// First and largest delay between dial attempts.
const DIAL_BACKOFF_INITIAL_MS: u64 = 50;
const DIAL_BACKOFF_MAX_MS: u64 = 2_000;
/// Commands waiting for their seed connection to be reported.
const MAX_DEFERRED_COMMANDS: usize = 64;
/// Closed connections remembered, so a command naming one is not deferred forever.
const MAX_RECENTLY_CLOSED: usize = 1024;
/// Most seeds one join dials.
pub const MAX_SEEDS: usize = 16;
/// How long a `JoinCluster` waits beyond the configured join deadline.
const JOIN_MARGIN_MS: u64 = 2_000;
/// Most waiting inputs taken in before a due timer fires (bounds the work between timers).
const MAX_READY_INPUTS: usize = 1_024;
/// Most persist batches in one storage commit.
const MAX_BATCHES_PER_COMMIT: usize = 256;
/// Due timers fired back to back before the node task yields to the runtime once.
const DUE_TIMERS_BEFORE_YIELD: u32 = 64;
/// Due timers fired back to back with no input between them after which each waits a
/// millisecond.
const DUE_TIMERS_BEFORE_BACKOFF: u32 = 1_024;

/// How to start a node.
#[derive(Debug)]
pub struct NodeOptions {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Address peers should dial (default: `listen`, after binding, so port 0 works).
    pub advertise: Option<SocketAddr>,
    /// Data directory: the redb store and the node key file (created if absent).
    pub data_dir: PathBuf,
    /// Core configuration.
    pub config: Config,
    /// Cluster key and join secret, on admitting nodes.
    pub secrets: Option<AdmissionSecrets>,
    /// The founding members (every founder passes the same list, in the same order). Empty:
    /// the node starts as a joiner. Ignored when the data directory holds state (restart).
    pub founders: Vec<MemberSpec>,
    /// Transport limits; `max_frame_bytes` is always taken from `config`.
    pub transport: TransportConfig,
    /// Most inbound connections at once from keys that are not members (joiners); members
    /// are always let in, so joiners can never crowd them out.
    pub max_joiner_connections: usize,
    /// The flight recorder (off by default): every input of this node's core goes to rotating
    /// files here (`crate::recording`). The recording name is `life-<unix_ms>`; the life's
    /// seed, which the recording withholds (it derives namespace keys), is appended to
    /// `DATA_DIR/recording-seeds` (mode 0600; a line `NAME HEX`, 32 bytes as 64 hex characters)
    /// for `portcullis-sim replay-recording --seed`.
    pub recording: Option<RecordingWriterConfig>,
    /// Storage faults a unit test injects.
    #[cfg(test)]
    pub(crate) faults: Arc<tests::StorageFaults>,
}

impl NodeOptions {
    /// Options with defaults for everything but the address and the data directory.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> NodeOptions {
        NodeOptions {
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            config: Config::default(),
            secrets: None,
            founders: Vec::new(),
            transport: TransportConfig::default(),
            max_joiner_connections: 256,
            recording: None,
            #[cfg(test)]
            faults: Arc::default(),
        }
    }
}

/// Why the driver failed. Each variant says who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The disk or data directory (operator / environment).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The core refused the setup (caller: config, founders, secrets).
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// The network could not be set up (caller's address or the OS).
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// An address does not fit the wire's bounds (caller).
    #[error("address {0} is too long for the wire")]
    Address(String),
    /// The node task has stopped (shut down, or a fatal error: see the log and `Event::Fatal`).
    #[error("the node has stopped")]
    Stopped,
    /// The flight recorder could not start (its directory, files or thread).
    #[error("flight recorder: {0}")]
    Recording(String),
    /// The node stopped on a failure (the reason says whose).
    #[error("the node stopped: {0}")]
    Died(#[source] StopReason),
}

/// Why a node task stopped.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// Asked to ([`NodeHandle::shutdown`], or every handle dropped): not a failure.
    #[error("shut down")]
    Shutdown,
    /// A storage commit failed (the disk or the operator): nothing after it was reported
    /// durable.
    #[error("storage failed: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// The storage thread panicked (a bug).
    #[error("the storage thread panicked: {0}")]
    StoragePanicked(String),
    /// The core hit a fatal error (`Event::Fatal`).
    #[error("the core stopped: {0}")]
    Fatal(String),
    /// The transport's events ended.
    #[error("the transport closed")]
    TransportClosed,
    /// The node task panicked or was cancelled (a bug, or the runtime shut down).
    #[error("the node task ended abruptly: {0}")]
    Panicked(String),
}

impl StopReason {
    /// Whether the node stopped without being asked to.
    pub fn is_failure(&self) -> bool {
        !matches!(self, StopReason::Shutdown)
    }
}

/// Why joining a cluster failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The cluster refused or the join timed out inside the core (see the reason).
    #[error("join failed: {0}")]
    Failed(portcullis_core::admission::JoinFailure),
    /// The core refused the command (e.g. already a member).
    #[error("command refused: {0}")]
    Refused(portcullis_core::node::CommandError),
    /// The seed could not be reached or authenticated.
    #[error("seed: {0}")]
    Seed(#[from] TransportError),
    /// No verdict within the join deadline.
    #[error("no verdict within {0} ms")]
    Timeout(u64),
    /// Our own endpoint could not be set up (the caller's bind address, or the OS).
    #[error("local endpoint: {0}")]
    Local(TransportError),
    /// The node (or the join client's endpoint) stopped before a verdict.
    #[error("the node stopped: {0}")]
    Stopped(#[source] StopReason),
}

/// A snapshot of a node's state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// Our member id, once admitted.
    pub member_id: Option<MemberId>,
    /// Our node key.
    pub node_key: PublicKey,
    /// The leader we know of.
    pub leader: Option<MemberId>,
    /// The Raft term.
    pub term: u64,
    /// Voters of the metadata group.
    pub voters: Vec<u64>,
    /// Learners of the metadata group.
    pub learners: Vec<u64>,
    /// Admissions in flight at this listener.
    pub admissions_in_flight: usize,
    /// The core's counters.
    pub metrics: NodeMetrics,
    /// The transport's counters.
    pub transport: TransportMetrics,
    /// Connections the core knows of.
    pub peers_connected: usize,
    /// Where we listen.
    pub listen: SocketAddr,
    /// The sticky fatal error, if any.
    pub fatal: Option<String>,
    /// Every namespace this node holds state for (at most `max_namespaces`).
    pub namespaces: Vec<NamespaceStatus>,
    /// Raft commit latency on this node: a log entry's local append (handed to storage) to
    /// its apply.
    pub raft_commit_ms: crate::metrics::Histogram,
}

/// One namespace as this node's replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceStatus {
    /// Its id.
    pub namespace: NamespaceId,
    /// Whether this node is a member.
    pub member: bool,
    /// Our identity key in it, if we hold one.
    pub identity: Option<PublicKey>,
    /// Its members in our replica (bounded by the governance limits).
    pub members: Vec<PublicKey>,
    /// Its admins in our replica.
    pub admins: Vec<PublicKey>,
    /// Ops applied in our replica.
    pub applied_through: u64,
}

enum Request {
    Command(LocalCommand),
    Status(oneshot::Sender<Status>),
    Dial {
        addr: SocketAddr,
        reply: oneshot::Sender<Result<PeerId, TransportError>>,
    },
    Shutdown,
}

/// A handle on a running node. Cheap to clone; every clone talks to the same node task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
    advertise: SocketAddr,
    advertise_addrs: Addrs,
    node_key: PublicKey,
    join_deadline_ms: u64,
    task: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<StopReason>>>>,
    /// Why the node task stopped, once it has.
    stop: tokio::sync::watch::Receiver<Option<StopReason>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command(c) => write!(f, "Command({c:?})"),
            Request::Status(_) => f.write_str("Status"),
            Request::Dial { addr, .. } => write!(f, "Dial({addr})"),
            Request::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The node key stored in `data_dir` (created on first use): what founders exchange before
/// they start.
pub fn node_public_key(data_dir: &Path) -> Result<PublicKey, DriverError> {
    let store = Store::open(data_dir)?;
    Ok(store.load_or_create_node_key()?.public())
}

/// A free UDP port on 127.0.0.1 (for demos and tests that must name founders' addresses
/// before the founders start). Another process may take it in between; callers retry.
pub fn reserve_loopback_addr() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// Wraps one socket address as the core's `Addrs`.
pub fn addrs_of(addr: SocketAddr) -> Result<Addrs, DriverError> {
    let text = addr.to_string();
    let one = Addr::try_new(text.clone()).map_err(|_| DriverError::Address(text.clone()))?;
    Addrs::try_from_vec(vec![one]).map_err(|_| DriverError::Address(text))
}

/// The socket addresses among `addrs` (the inverse of [`addrs_of`]); entries that do not parse
/// (a member may advertise names this build cannot dial) are left out.
///
/// # Example
/// ```
/// use portcullis_io_tokio::driver::{addrs_of, socket_addrs};
///
/// let addr = "127.0.0.1:7401".parse().unwrap();
/// assert_eq!(socket_addrs(&addrs_of(addr).unwrap()), vec![addr]);
/// ```
pub fn socket_addrs(addrs: &Addrs) -> Vec<SocketAddr> {
    addrs
        .iter()
        .filter_map(|a| a.as_str().parse().ok())
        .collect()
}

/// Starts a node: opens (or creates) its store, recovers or bootstraps the core, binds the
/// transport and spawns the node task. Must be called inside a tokio runtime.
///
/// # Example
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use portcullis_core::crypto::{JoinSecret, SecretKey};
/// use portcullis_core::identity::AdmissionSecrets;
/// use portcullis_core::ledger::MemberSpec;
/// use portcullis_core::token::Role;
/// use portcullis_io_tokio::driver::{self, NodeOptions};
/// use rand_core::OsRng;
///
/// let dir = tempfile::tempdir()?;
/// let mut opts = NodeOptions::new("127.0.0.1:0".parse()?, dir.path());
/// opts.secrets = Some(AdmissionSecrets {
///     cluster_key: SecretKey::generate(&mut OsRng),
///     join_secret: JoinSecret::generate(&mut OsRng),
/// });
/// // A single founder: a one-voter cluster at once.
/// opts.founders = vec![MemberSpec {
///     node_key: driver::node_public_key(dir.path())?,
///     role: Role::Member,
///     addrs: Default::default(),
/// }];
/// let node = driver::start(opts).await?;
/// let status = node.status().await?;
/// assert_eq!(status.voters, vec![1]);
/// node.shutdown().await?;
/// # Ok(()) }
/// ```
pub async fn start(opts: NodeOptions) -> Result<NodeHandle, DriverError> {
    let data_dir = opts.data_dir.clone();
    let (store, node_key, durable) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&data_dir)?;
        let key = store.load_or_create_node_key()?;
        let durable = store.load()?;
        Ok::<_, StorageError>((store, key, durable))
    })
    .await
    .map_err(|_| DriverError::Stopped)??;

    let clock = Clock::new();
    // 256 bits: the seed decides the namespace keys this node generates.
    let seed = NodeSeed::generate(&mut OsRng);
    let seed_hash = seed.fingerprint();
    let public = node_key.public();
    let setup = NodeSetup {
        config: opts.config.clone(),
        seed: seed.clone(),
        node_key: node_key.clone(),
        secrets: opts.secrets.clone(),
    };
    let now = clock.now();
    let (node, how, recorder) = match opts.recording.clone() {
        None => {
            let (node, how) = match durable {
                Some(state) => (Node::recover(setup, now, state)?, "recovered"),
                None if !opts.founders.is_empty() => {
                    (Node::bootstrap(setup, now, &opts.founders)?, "bootstrapped")
                }
                None => (Node::new_joiner(setup, now)?, "joiner"),
            };
            (node, how, None)
        }
        Some(mut writer_config) => {
            let (start, how) = match durable {
                Some(state) => (NodeStart::Recover(Box::new(state)), "recovered"),
                None if !opts.founders.is_empty() => {
                    (NodeStart::Bootstrap(opts.founders.clone()), "bootstrapped")
                }
                None => (NodeStart::Joiner, "joiner"),
            };
            let (node, recorder, outputs) =
                Recorder::start_node(setup, now, start, RecorderOptions::default())?;
            writer_config.name = format!("life-{}", now.unix_ms);
            let recording = start_recording(&opts.data_dir, writer_config, &recorder, &seed)?;
            (node, how, Some((recorder, recording, outputs)))
        }
    };

    let policy = Arc::new(MembershipPolicy::new(opts.max_joiner_connections));
    policy.refresh(&node);
    let transport_config = TransportConfig {
        max_frame_bytes: opts.config.max_frame_bytes,
        ..opts.transport.clone()
    };
    let (transport, transport_events) =
        Transport::bind(opts.listen, &node_key, policy.clone(), transport_config)?;
    let listen = transport
        .local_addr()
        .map_err(|source| TransportError::Bind {
            addr: opts.listen,
            source,
        })?;
    let advertise = opts.advertise.unwrap_or(listen);
    let advertise_addrs = addrs_of(advertise)?;
    tracing::info!(
        node = %public.hash(),
        %listen,
        seed_hash = %seed_hash.short(),
        how,
        member = ?node.member_id(),
        "node started"
    );

    let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let (stop_tx, stop) = tokio::sync::watch::channel(None);
    let (persisted_tx, persisted_rx) = mpsc::unbounded_channel();
    let (batch_tx, batch_rx) = std::sync::mpsc::channel::<PersistBatch>();
    let persist_all = move |group: &[PersistBatch]| store.persist_all(group);
    #[cfg(test)]
    let persist_all = opts.faults.clone().wrap(persist_all, &persisted_tx);
    let storage_thread = std::thread::Builder::new()
        .name(format!("portcullis-store-{}", public.hash().short()))
        .spawn(move || storage_loop(persist_all, batch_rx, persisted_tx))
        .map_err(|source| StorageError::Io {
            path: opts.data_dir.clone(),
            source,
        })?;
    let (recorder, recording_tx, recording_thread, startup_outputs) = match recorder {
        Some((recorder, (tx, thread), outputs)) => {
            (Some(recorder), Some(tx), Some(thread), outputs)
        }
        None => (None, None, None, Vec::new()),
    };
    let mut task = NodeTask {
        node,
        recorder,
        recording_tx,
        recording_thread,
        records_dropped: 0,
        appended: std::collections::VecDeque::new(),
        raft_commit_ms: crate::metrics::Histogram::default(),
        clock,
        transport: transport.clone(),
        transport_events,
        requests: request_rx,
        persisted_rx,
        batch_tx: Some(batch_tx),
        storage_thread: Some(storage_thread),
        events: events.clone(),
        stop_tx,
        dialing: BTreeSet::new(),
        dials: tokio::task::JoinSet::new(),
        policy,
        connected: BTreeMap::new(),
        deferred: Vec::new(),
        recently_closed: BTreeSet::new(),
        join_span: None,
        namespace_spans: BTreeMap::new(),
        listen,
    };
    // What construction queued (the recorder drained it already; otherwise it is queued).
    for output in startup_outputs {
        task.carry_out(output);
    }
    task.forward_records();
    let span = tracing::info_span!("node", key = %public.hash());
    let handle = tokio::spawn(task.run().instrument(span));
    Ok(NodeHandle {
        requests,
        events,
        advertise,
        advertise_addrs,
        node_key: public,
        join_deadline_ms: opts.config.join_deadline_ms,
        task: Arc::new(parking_lot::Mutex::new(Some(handle))),
        stop,
    })
}

impl NodeHandle {
    /// Sends a local command. Its outcome arrives as an [`Event`] (subscribe first).
    pub async fn command(&self, cmd: LocalCommand) -> Result<(), DriverError> {
        self.requests
            .send(Request::Command(cmd))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Every event the node emits from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The node's state.
    pub async fn status(&self) -> Result<Status, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Status(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Waits until the node task has stopped and says why (never returns while it runs).
    pub async fn stopped(&self) -> StopReason {
        let mut stop = self.stop.clone();
        match stop.wait_for(Option::is_some).await {
            // `wait_for` returns only a `Some`.
            Ok(reason) => reason.clone().unwrap_or(StopReason::Shutdown),
            // The task drops the sender only after publishing, unless it panicked.
            Err(_) => StopReason::Panicked("the node task ended without a reason".into()),
        }
    }

    /// The next event of `events` (a subscription to this node), skipping what a slow
    /// subscriber missed; once the node has stopped (and the events already buffered are
    /// read), why it stopped.
    pub async fn next_event(
        &self,
        events: &mut broadcast::Receiver<Event>,
    ) -> Result<Event, StopReason> {
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Ok(event) => return Ok(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // Never while this handle holds the sender; the stop tells why if it does.
                    Err(broadcast::error::RecvError::Closed) => return Err(self.stopped().await),
                },
                reason = self.stopped() => return Err(reason),
            }
        }
    }

    /// Our node key.
    pub fn node_key(&self) -> PublicKey {
        self.node_key
    }

    /// The address peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.advertise
    }

    /// Dials a peer without pinning its key (the core decides what it may do): how a node
    /// reaches a namespace member or a seed.
    pub async fn connect_peer(&self, addr: SocketAddr) -> Result<PeerId, TransportError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Dial { addr, reply })
            .await
            .map_err(|_| TransportError::Closed)?;
        rx.await.map_err(|_| TransportError::Closed)?
    }

    /// Joins a cluster: dials `seed`, presents `token` (the core checks the seed's cluster
    /// against the token's pin first), and waits for the verdict.
    pub async fn join_cluster(
        &self,
        token: JoinToken,
        seed: SocketAddr,
    ) -> Result<MemberId, JoinError> {
        self.join_cluster_via(token, &[seed]).await
    }

    /// Like [`NodeHandle::join_cluster`] with several seeds. Every seed is dialed at once; the
    /// join starts on the first to connect (with any others already up, in the caller's
    /// order), and each later one is handed to it as it connects
    /// ([`LocalCommand::AddJoinSeeds`]), so a dead seed costs nothing while another answers.
    /// A seed without the join secret redirects the join to the voters it knows, which it
    /// dials and tries before the seeds that redirected. At most [`MAX_SEEDS`] are dialed.
    /// If the node stops meanwhile, the join ends at once with [`JoinError::Stopped`].
    pub async fn join_cluster_via(
        &self,
        token: JoinToken,
        seeds: &[SocketAddr],
    ) -> Result<MemberId, JoinError> {
        tokio::select! {
            // A verdict that raced the node's death is not to be trusted (an admission whose
            // persist failed is not durable).
            biased;
            reason = self.stopped() => Err(JoinError::Stopped(reason)),
            result = self.join_cluster_while_running(token, seeds) => result,
        }
    }

    async fn join_cluster_while_running(
        &self,
        token: JoinToken,
        seeds: &[SocketAddr],
    ) -> Result<MemberId, JoinError> {
        let mut events = self.subscribe();
        let mut dials = tokio::task::JoinSet::new();
        for (i, seed) in seeds.iter().take(MAX_SEEDS).enumerate() {
            let (node, seed) = (self.clone(), *seed);
            dials.spawn(async move { (i, seed, node.connect_peer(seed).await) });
        }
        let mut last_error = None;
        let mut reached = Vec::new();
        while reached.is_empty() {
            let Some(done) = dials.join_next().await else {
                return Err(no_seed_reached(last_error));
            };
            reached.extend(dialed(done, &mut last_error));
            while let Some(done) = dials.try_join_next() {
                reached.extend(dialed(done, &mut last_error));
            }
        }
        reached.sort_unstable();
        let addrs = self.advertise_addrs.clone();
        if self
            .command(LocalCommand::JoinCluster {
                token,
                seeds: reached.into_iter().map(|(_, peer)| peer).collect(),
                addrs,
            })
            .await
            .is_err()
        {
            return Err(JoinError::Stopped(self.stopped().await));
        }
        let wait_ms = self.join_deadline_ms.saturating_add(JOIN_MARGIN_MS);
        let verdict = async {
            loop {
                tokio::select! {
                    Some(done) = dials.join_next(), if !dials.is_empty() => {
                        if let Some((_, peer)) = dialed(done, &mut last_error)
                            && self
                                .command(LocalCommand::AddJoinSeeds { seeds: vec![peer] })
                                .await
                                .is_err()
                        {
                            return Err(JoinError::Stopped(self.stopped().await));
                        }
                    }
                    event = self.next_event(&mut events) => match event {
                        Ok(Event::JoinAdmitted { member_id }) => return Ok(member_id),
                        Ok(Event::JoinFailed(failure)) => return Err(JoinError::Failed(failure)),
                        Ok(Event::CommandRejected(e)) => return Err(JoinError::Refused(e)),
                        Ok(_) => {}
                        Err(reason) => return Err(JoinError::Stopped(reason)),
                    },
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(wait_ms), verdict)
            .await
            .map_err(|_| JoinError::Timeout(wait_ms))?
    }

    /// Stops the node: the task finishes the batches it handed to storage, closes every
    /// connection and returns. Other clones of the handle see [`DriverError::Stopped`].
    /// A node that had stopped on a failure (or fails while finishing) gives
    /// [`DriverError::Died`].
    pub async fn shutdown(self) -> Result<(), DriverError> {
        // A full queue or a stopped task both end in the join below.
        let _ = self.requests.send(Request::Shutdown).await;
        let task = self.task.lock().take();
        let reason = match task {
            Some(task) => match task.await {
                Ok(reason) => reason,
                Err(e) if e.is_panic() => StopReason::Panicked(panic_text(&*e.into_panic())),
                Err(e) => StopReason::Panicked(e.to_string()),
            },
            // Another clone is shutting it down.
            None => self.stopped().await,
        };
        if reason.is_failure() {
            return Err(DriverError::Died(reason));
        }
        Ok(())
    }
}

/// A panic's message, when it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A finished seed dial: the seed's place in the caller's list, its address, and the
/// connection or the error.
pub(crate) type SeedDial = (usize, SocketAddr, Result<PeerId, TransportError>);

/// One finished seed dial (of a node's join or the join client's): the seed's place and its
/// peer when it connected; otherwise the error is logged and kept in `last_error`.
pub(crate) fn dialed(
    done: Result<SeedDial, tokio::task::JoinError>,
    last_error: &mut Option<TransportError>,
) -> Option<(usize, PeerId)> {
    match done {
        Ok((i, _, Ok(peer))) => Some((i, peer)),
        Ok((_, seed, Err(e))) => {
            tracing::warn!(%seed, error = %e, "seed unreachable");
            *last_error = Some(e);
            None
        }
        Err(_) => {
            *last_error = Some(TransportError::Closed);
            None
        }
    }
}

/// Why a join reached no seed: the last dial's error, or no seed given.
pub(crate) fn no_seed_reached(last_error: Option<TransportError>) -> JoinError {
    match last_error {
        Some(e) => JoinError::Seed(e),
        None => JoinError::Failed(portcullis_core::admission::JoinFailure::NoSeeds),
    }
}

/// Who may connect to a node: members always; keys the ledger does not know (joiners) while
/// fewer than `max_joiner_connections` of them are connected. The core then decides what each
/// key may do (a joiner gets `ClusterInfo` and join replies, nothing else).
#[derive(Debug)]
pub struct MembershipPolicy {
    members: parking_lot::RwLock<BTreeSet<PublicKey>>,
    joiners_connected: std::sync::atomic::AtomicUsize,
    max_joiner_connections: usize,
}

impl MembershipPolicy {
    /// A policy that knows no member yet.
    pub fn new(max_joiner_connections: usize) -> MembershipPolicy {
        MembershipPolicy {
            members: parking_lot::RwLock::new(BTreeSet::new()),
            joiners_connected: std::sync::atomic::AtomicUsize::new(0),
            max_joiner_connections,
        }
    }

    /// Replaces the member keys with `keys`.
    pub fn set_members(&self, keys: impl IntoIterator<Item = PublicKey>) {
        *self.members.write() = keys.into_iter().collect();
    }

    /// Reads the member keys from the node's ledger, when it holds another number of members
    /// than the set (the registry only grows, so an equal count is the same set): called on
    /// every admission and conf change, it rebuilds the set only when a member was added.
    fn refresh(&self, node: &Node) {
        let count = node.ledger().members().count();
        if count == self.members.read().len() {
            return;
        }
        self.set_members(node.ledger().members().map(|m| m.node_key));
    }

    /// A connection from `key` was established; returns whether it counts as a joiner's.
    pub fn on_connected(&self, key: &PublicKey) -> bool {
        let joiner = !self.members.read().contains(key);
        if joiner {
            self.joiners_connected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        joiner
    }

    /// A connection closed (`joiner`: what `on_connected` returned for it).
    pub fn on_disconnected(&self, joiner: bool) {
        if joiner {
            self.joiners_connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl PeerPolicy for MembershipPolicy {
    fn allow_inbound(&self, key: &PublicKey) -> bool {
        self.members.read().contains(key)
            || self
                .joiners_connected
                .load(std::sync::atomic::Ordering::Relaxed)
                < self.max_joiner_connections
    }
}

/// Monotonic time since start, and the wall clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: std::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Now {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Now::new(Instant::from_nanos(nanos), unix_ms())
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start) + Duration::from_nanos(at.as_nanos())
    }
}

/// The wall clock in Unix milliseconds (0 if the host clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        // A clock before 1970 is a broken host; tokens then look expired, which is safe.
        .unwrap_or(0)
}

/// Commits batches in order and reports the highest durable number. Batches that queued up
/// while the previous commit was fsyncing are committed together, in one redb transaction (one
/// fsync: group commit), at most `MAX_BATCHES_PER_COMMIT` at a time. Stops at the first
/// failure: nothing after a failed commit may be reported.
///
/// A group that changes nothing but the commit index (same term and vote as the last synced
/// hard state; no entries, snapshot, meta or namespace writes) is not written at once: Raft's
/// commit index is volatile state (the Raft paper, figure 2; etcd's `MustSync` skips the fsync
/// for it too), re-learned from the leader after a crash. It goes into the next synced
/// commit, ahead of that group's batches, or is written when the node stops.
fn storage_loop(
    mut persist_all: impl FnMut(&[PersistBatch]) -> Result<(), StorageError>,
    batches: std::sync::mpsc::Receiver<PersistBatch>,
    persisted: mpsc::UnboundedSender<Result<u64, StorageError>>,
) {
    // Term and vote of the last hard state synced by this life (None: none synced yet).
    let mut synced: Option<HardStateRecord> = None;
    // The newest commit-index-only hard state not yet written.
    let mut deferred: Option<HardStateRecord> = None;
    while let Ok(first) = batches.recv() {
        let mut group = vec![first];
        group.extend(batches.try_iter().take(MAX_BATCHES_PER_COMMIT - 1));
        // `group` is never empty: it starts with `first`.
        let last = group.last().map_or(0, |b| b.number);
        if group
            .iter()
            .all(|b| b.only_advances_commit(synced.as_ref()))
        {
            deferred = group.iter().rev().find_map(|b| b.hard_state);
        } else {
            if let Some(hard_state) = deferred.take() {
                group.insert(
                    0,
                    PersistBatch {
                        hard_state: Some(hard_state),
                        ..PersistBatch::default()
                    },
                );
            }
            if let Err(e) = persist_all(&group) {
                let _ = persisted.send(Err(e));
                return;
            }
            if let Some(hard_state) = group.iter().rev().find_map(|b| b.hard_state) {
                synced = Some(hard_state);
            }
        }
        if persisted.send(Ok(last)).is_err() {
            break;
        }
    }
    if let Some(hard_state) = deferred
        && let Err(e) = persist_all(&[PersistBatch {
            hard_state: Some(hard_state),
            ..PersistBatch::default()
        }])
    {
        tracing::warn!(error = %e, "the last commit index was not written");
    }
}

struct NodeTask {
    node: Node,
    /// The flight recorder, when recording is on: every `handle` goes through it.
    recorder: Option<Recorder>,
    /// Encoded records to the recording thread (bounded: a slow disk drops records, counted,
    /// rather than stalling the node).
    recording_tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Records the recording thread could not take (its queue was full).
    records_dropped: u64,
    /// Log entries handed to storage and not applied yet: (index, when), oldest first, at most
    /// `MAX_TIMED_ENTRIES` (the rest are not timed).
    appended: std::collections::VecDeque<(u64, std::time::Instant)>,
    raft_commit_ms: crate::metrics::Histogram,
    /// Joined at shutdown, so every record taken is written and synced.
    recording_thread: Option<std::thread::JoinHandle<()>>,
    clock: Clock,
    transport: Transport,
    transport_events: mpsc::Receiver<TransportEvent>,
    requests: mpsc::Receiver<Request>,
    persisted_rx: mpsc::UnboundedReceiver<Result<u64, StorageError>>,
    batch_tx: Option<std::sync::mpsc::Sender<PersistBatch>>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
    events: broadcast::Sender<Event>,
    /// Where the task says why it stopped.
    stop_tx: tokio::sync::watch::Sender<Option<StopReason>>,
    dialing: BTreeSet<PublicKey>,
    /// Dials under way: each yields the key it was dialing for `Connect` (None for
    /// requested dials). Aborted at shutdown, so no task keeps the endpoint (and its port).
    dials: tokio::task::JoinSet<Option<PublicKey>>,
    policy: Arc<MembershipPolicy>,
    /// Connections reported to the core, and whether each counts as a joiner's.
    connected: BTreeMap<PeerId, (PublicKey, bool)>,
    /// Connections closed lately (the newest `MAX_RECENTLY_CLOSED`).
    recently_closed: BTreeSet<PeerId>,
    /// Commands that name a seed connection the core has not been told of yet.
    deferred: Vec<LocalCommand>,
    join_span: Option<tracing::Span>,
    namespace_spans: BTreeMap<NamespaceId, tracing::Span>,
    listen: SocketAddr,
}

impl NodeTask {
    /// Runs until asked to stop or until a failure; returns why.
    async fn run(mut self) -> StopReason {
        // The constructor's outputs (the first Persist) come before any input.
        self.drain();
        // Due timers fired since the last wait, and those of them with no input before them.
        let (mut due_streak, mut idle_due) = (0u32, 0u32);
        let reason = loop {
            let deadline = self.node.poll_timeout().map(|t| self.clock.deadline(t));
            if deadline.is_some_and(|at| at <= tokio::time::Instant::now()) {
                // Due now (the core asks for an immediate timer to flush what a burst of inputs
                // queued: proofs, proposals). Take every input that is already waiting first, so
                // they join the batch, then fire without a trip through tokio's timer wheel,
                // which only turns at its next millisecond tick (one per hop of an admission).
                let taken = match self.take_ready_inputs() {
                    ControlFlow::Continue(taken) => taken,
                    ControlFlow::Break(reason) => break reason,
                };
                due_streak += 1;
                // Timers due again and again with no input between them.
                idle_due = if taken > 0 { 0 } else { idle_due + 1 };
                if idle_due >= DUE_TIMERS_BEFORE_BACKOFF {
                    // A deadline that stays due after firing would be a busy loop: fall back
                    // to the timer wheel's pace (what the driver did before due timers fired
                    // at once).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else if due_streak.is_multiple_of(DUE_TIMERS_BEFORE_YIELD) {
                    // Never starve the tasks that share this worker thread.
                    tokio::task::yield_now().await;
                }
                self.input(Input::Timer);
                if let Some(reason) = self.fatal() {
                    break reason;
                }
                continue;
            }
            (due_streak, idle_due) = (0, 0);
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let flow = tokio::select! {
                event = self.transport_events.recv() => self.on_transport_event(event),
                persisted = self.persisted_rx.recv() => self.on_persisted(persisted),
                request = self.requests.recv() => self.on_request(request),
                Some(done) = self.dials.join_next(), if !self.dials.is_empty() => {
                    if let Ok(Some(key)) = done {
                        self.dialing.remove(&key);
                    }
                    ControlFlow::Continue(())
                }
                () = sleep => {
                    self.input(Input::Timer);
                    ControlFlow::Continue(())
                }
            };
            if let ControlFlow::Break(reason) = flow {
                break reason;
            }
            if let Some(reason) = self.fatal() {
                break reason;
            }
        };
        self.stop(reason).await
    }

    /// The core's sticky fatal error, as a reason to stop.
    fn fatal(&self) -> Option<StopReason> {
        let reason = self.node.fatal()?;
        tracing::error!(%reason, "the core stopped");
        Some(StopReason::Fatal(reason.to_owned()))
    }

    /// Handles every input already waiting (at most `MAX_READY_INPUTS`), without waiting;
    /// returns how many.
    fn take_ready_inputs(&mut self) -> ControlFlow<StopReason, usize> {
        for taken in 0..MAX_READY_INPUTS {
            let flow = if let Ok(event) = self.transport_events.try_recv() {
                self.on_transport_event(Some(event))
            } else if let Ok(persisted) = self.persisted_rx.try_recv() {
                self.on_persisted(Some(persisted))
            } else if let Ok(request) = self.requests.try_recv() {
                self.on_request(Some(request))
            } else {
                return ControlFlow::Continue(taken);
            };
            flow?;
            if let Some(reason) = self.fatal() {
                return ControlFlow::Break(reason);
            }
        }
        ControlFlow::Continue(MAX_READY_INPUTS)
    }

    fn on_transport_event(&mut self, event: Option<TransportEvent>) -> ControlFlow<StopReason> {
        match event {
            Some(event) => {
                self.on_transport(event);
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(StopReason::TransportClosed),
        }
    }

    fn on_persisted(
        &mut self,
        persisted: Option<Result<u64, StorageError>>,
    ) -> ControlFlow<StopReason> {
        match persisted {
            Some(Ok(n)) => {
                self.input(Input::Persisted(n));
                ControlFlow::Continue(())
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "storage failed: stopping the node");
                let _ = self.events.send(Event::Fatal(format!("storage: {e}")));
                ControlFlow::Break(StopReason::Storage(Arc::new(e)))
            }
            // The storage thread reports every failure before it ends: it panicked (`stop`
            // finds its message when it joins the thread).
            None => ControlFlow::Break(StopReason::StoragePanicked(
                "the storage thread ended".into(),
            )),
        }
    }

    fn on_request(&mut self, request: Option<Request>) -> ControlFlow<StopReason> {
        match request {
            Some(Request::Command(cmd)) => self.on_command(cmd),
            Some(Request::Status(reply)) => {
                let _ = reply.send(self.status());
            }
            Some(Request::Dial { addr, reply }) => {
                let transport = self.transport.clone();
                self.dials.spawn(async move {
                    let _ = reply.send(transport.connect(addr, None).await);
                    None
                });
            }
            Some(Request::Shutdown) | None => return ControlFlow::Break(StopReason::Shutdown),
        }
        ControlFlow::Continue(())
    }

    /// Finishes storage, tells the handles why the node stopped, and releases the rest.
    async fn stop(&mut self, mut reason: StopReason) -> StopReason {
        // Closing the batch channel lets the storage thread finish what it was handed.
        self.batch_tx = None;
        if let Some(thread) = self.storage_thread.take() {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(payload)) => {
                    let panic = panic_text(&*payload);
                    tracing::error!(%panic, "the storage thread panicked");
                    if matches!(
                        reason,
                        StopReason::Shutdown | StopReason::StoragePanicked(_)
                    ) {
                        reason = StopReason::StoragePanicked(panic);
                    }
                }
                Err(e) => tracing::error!(error = %e, "the storage thread could not be joined"),
            }
        }
        // A commit of the batches handed before the stop may have failed after the loop ended.
        while let Ok(persisted) = self.persisted_rx.try_recv() {
            if let Err(e) = persisted {
                tracing::error!(error = %e, "storage failed while stopping");
                if !reason.is_failure() {
                    reason = StopReason::Storage(Arc::new(e));
                }
            }
        }
        // Waiters learn it now, not after the connections have drained.
        self.stop_tx.send_replace(Some(reason.clone()));
        self.dials.abort_all();
        while self.dials.join_next().await.is_some() {}
        self.transport.shutdown().await;
        // Closing the channel lets the recording thread write what it holds and sync.
        self.recording_tx = None;
        if let Some(thread) = self.recording_thread.take()
            && let Ok(Err(payload)) = tokio::task::spawn_blocking(move || thread.join()).await
        {
            let panic = panic_text(&*payload);
            tracing::error!(%panic, "the flight recorder's thread panicked");
        }
        if self.records_dropped > 0 {
            tracing::warn!(
                dropped = self.records_dropped,
                "flight recorder dropped records"
            );
        }
        if reason.is_failure() {
            tracing::error!(%reason, "node stopped");
        } else {
            tracing::info!("node stopped");
        }
        reason
    }

    fn input(&mut self, input: Input) {
        self.input_untimed(input);
        let applied = self.node.ledger().applied_index();
        while let Some((index, at)) = self.appended.front().copied() {
            if index > applied {
                break;
            }
            self.appended.pop_front();
            let ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.raft_commit_ms.observe(ms);
        }
    }

    fn input_untimed(&mut self, input: Input) {
        let now = self.clock.now();
        match self.recorder.as_mut() {
            Some(recorder) => {
                let outputs = recorder.handle(&mut self.node, now, input);
                for output in outputs {
                    self.carry_out(output);
                }
                self.forward_records();
            }
            None => {
                self.node.handle(now, input);
                self.drain();
            }
        }
    }

    /// Hands the recorder's finished records to the recording thread.
    fn forward_records(&mut self) {
        let (Some(recorder), Some(tx)) = (self.recorder.as_mut(), self.recording_tx.as_ref())
        else {
            return;
        };
        while let Some(record) = recorder.poll_record() {
            if tx.try_send(record).is_err() {
                // Replay reports the gap a dropped record leaves; say so once here.
                if self.records_dropped == 0 {
                    tracing::warn!("flight recorder queue full: records dropped");
                }
                self.records_dropped += 1;
            }
        }
    }

    fn on_transport(&mut self, event: TransportEvent) {
        match event {
            TransportEvent::Connected {
                peer,
                node_key,
                binding,
                ..
            } => {
                let joiner = self.policy.on_connected(&node_key);
                self.connected.insert(peer, (node_key, joiner));
                self.input(Input::Connected {
                    peer,
                    node_key,
                    binding,
                });
                self.run_deferred();
            }
            TransportEvent::Frame { peer, bytes } => {
                self.input(Input::Received { from: peer, bytes });
            }
            TransportEvent::Disconnected { peer } => {
                if let Some((_, joiner)) = self.connected.remove(&peer) {
                    self.policy.on_disconnected(joiner);
                    if self.recently_closed.len() >= MAX_RECENTLY_CLOSED {
                        self.recently_closed.pop_first();
                    }
                    self.recently_closed.insert(peer);
                    self.input(Input::Disconnected { peer });
                }
            }
        }
    }

    fn on_command(&mut self, cmd: LocalCommand) {
        if let LocalCommand::JoinCluster { seeds, .. } | LocalCommand::AddJoinSeeds { seeds } = &cmd
        {
            // A seed that is neither connected nor recently closed is a dial whose Connected
            // has not reached us yet (a closed one is passed on: the core copes with a dead
            // seed). Seeds added while a command waits wait behind it, so they never reach the
            // core before the join they belong to.
            let unreported = seeds
                .iter()
                .any(|s| !self.connected.contains_key(s) && !self.recently_closed.contains(s));
            let behind =
                matches!(cmd, LocalCommand::AddJoinSeeds { .. }) && !self.deferred.is_empty();
            if unreported || behind {
                if self.deferred.len() < MAX_DEFERRED_COMMANDS {
                    self.deferred.push(cmd);
                }
                return;
            }
        }
        if let LocalCommand::JoinCluster { token, .. } = &cmd {
            let span = tracing::info_span!("admission", token = %token.hash());
            span.in_scope(|| tracing::info!("presenting a join token"));
            self.join_span = Some(span);
        }
        match &cmd {
            LocalCommand::JoinNamespace { invitation, .. }
            | LocalCommand::JoinNamespaceWithRetry { invitation, .. } => {
                let namespace = invitation.invitation.namespace;
                let span = tracing::info_span!("namespace_join", %namespace);
                span.in_scope(|| tracing::info!("joining a namespace"));
                self.namespace_spans.insert(namespace, span);
            }
            _ => {}
        }
        self.input(Input::Command(cmd));
    }

    fn run_deferred(&mut self) {
        let waiting = std::mem::take(&mut self.deferred);
        for cmd in waiting {
            self.on_command(cmd);
        }
    }

    /// Carries out every output, per the drain contract.
    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            self.carry_out(output);
        }
    }

    /// Carries out one output.
    fn carry_out(&mut self, output: Output) {
        {
            match output {
                Output::Transmit { to, bytes } => {
                    self.transport.send(to, bytes);
                }
                Output::Persist(batch) => {
                    if let Some(last) = batch.entries.last()
                        && self.appended.len() < MAX_TIMED_ENTRIES
                    {
                        self.appended
                            .push_back((last.index, std::time::Instant::now()));
                    }
                    let sent = self
                        .batch_tx
                        .as_ref()
                        .is_some_and(|tx| tx.send(batch).is_ok());
                    if !sent {
                        // The storage thread died; its error (or the shutdown) ends the loop.
                        tracing::error!("storage thread gone: batch not persisted");
                    }
                }
                Output::Connect {
                    member_id,
                    node_key,
                    addrs,
                } => self.dial(member_id, node_key, &addrs),
                Output::Event(event) => self.on_event(event),
                other => tracing::warn!(?other, "output this driver does not know"),
            }
        }
    }

    fn dial(&mut self, member_id: MemberId, node_key: PublicKey, addrs: &Addrs) {
        if self.dialing.contains(&node_key) || self.transport.peer_for_key(&node_key).is_some() {
            return;
        }
        let targets = socket_addrs(addrs);
        if targets.is_empty() {
            tracing::debug!(member = member_id.0, "member has no dialable address");
            return;
        }
        self.dialing.insert(node_key);
        let transport = self.transport.clone();
        let span = tracing::debug_span!("dial", member = member_id.0);
        self.dials.spawn(
            async move {
                let mut backoff_ms = DIAL_BACKOFF_INITIAL_MS;
                'attempts: for attempt in 1..=DIAL_ATTEMPTS {
                    for addr in &targets {
                        match transport.connect(*addr, Some(node_key)).await {
                            Ok(_) => break 'attempts,
                            Err(e) => tracing::debug!(%addr, attempt, error = %e, "dial failed"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = backoff_ms.saturating_mul(2).min(DIAL_BACKOFF_MAX_MS);
                }
                Some(node_key)
            }
            .instrument(span),
        );
    }

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::ConfChanged { .. } | Event::Admission(_) => self.policy.refresh(&self.node),
            _ => {}
        }
        match &event {
            Event::JoinAdmitted { member_id } => {
                self.policy.refresh(&self.node);
                let span = self.join_span.take().unwrap_or_else(tracing::Span::none);
                span.in_scope(|| tracing::info!(member = member_id.0, "admitted"));
            }
            Event::JoinFailed(failure) => {
                let span = self.join_span.take().unwrap_or_else(tracing::Span::none);
                span.in_scope(|| tracing::warn!(%failure, "join failed"));
            }
            Event::Admission(record) => {
                let span = tracing::info_span!(
                    "admission",
                    token = %record.token,
                    presenter = %record.presenter_key.hash()
                );
                span.in_scope(|| match &record.result {
                    Ok(member) => tracing::info!(
                        member = member.0,
                        log_index = record.log_index,
                        elapsed_ms = record.elapsed_ms,
                        "admitted a node"
                    ),
                    Err(reason) => tracing::info!(
                        reason = reason.as_str(),
                        elapsed_ms = record.elapsed_ms,
                        "refused a node"
                    ),
                });
            }
            Event::NamespaceJoinStarted {
                namespace,
                partner_applied,
                ..
            } => self.in_namespace_span(namespace, |_| {
                tracing::info!(partner_applied, "backfilling from a ready member");
            }),
            Event::NamespaceJoinProgress { namespace, event } => {
                self.in_namespace_span(namespace, |_| tracing::info!(?event, "join progress"));
            }
            Event::NamespaceReady(report) => {
                let span = self.namespace_spans.remove(&report.namespace);
                span.unwrap_or_else(tracing::Span::none).in_scope(|| {
                    tracing::info!(
                        elapsed_ms = report.elapsed_ms,
                        members = report.members_learned,
                        "namespace ready"
                    );
                });
            }
            Event::NamespaceJoinFailed(failure) => {
                let span = self.namespace_spans.remove(&failure.report.namespace);
                span.unwrap_or_else(tracing::Span::none)
                    .in_scope(|| tracing::warn!(?failure, "namespace join failed"));
            }
            Event::LeaderChanged { leader, term } => {
                tracing::info!(leader, term, "leader changed");
            }
            Event::Fatal(reason) => tracing::error!(%reason, "fatal"),
            _ => tracing::debug!(?event, "event"),
        }
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    fn in_namespace_span(&self, namespace: &NamespaceId, f: impl FnOnce(&tracing::Span)) {
        let span = self
            .namespace_spans
            .get(namespace)
            .cloned()
            .unwrap_or_else(tracing::Span::none);
        span.in_scope(|| f(&span));
    }

    fn status(&self) -> Status {
        let (voters, learners) = self.node.conf();
        Status {
            member_id: self.node.member_id(),
            node_key: self.node.node_key(),
            leader: self.node.leader(),
            term: self.node.term(),
            voters,
            learners,
            admissions_in_flight: self.node.admissions_in_flight(),
            metrics: self.node.metrics().clone(),
            transport: self.transport.metrics(),
            peers_connected: self.connected.len(),
            listen: self.listen,
            fatal: self.node.fatal().map(str::to_owned),
            raft_commit_ms: self.raft_commit_ms.clone(),
            namespaces: self
                .node
                .namespace_ids()
                .into_iter()
                .map(|namespace| {
                    let governance = self.node.namespace(&namespace);
                    NamespaceStatus {
                        namespace,
                        member: self.node.is_namespace_member(&namespace),
                        identity: self.node.namespace_identity(&namespace),
                        members: governance
                            .map(|g| g.members().iter().copied().collect())
                            .unwrap_or_default(),
                        admins: governance
                            .map(|g| g.admins().iter().copied().collect())
                            .unwrap_or_default(),
                        applied_through: governance.map_or(0, |g| g.applied_through()),
                    }
                })
                .collect(),
        }
    }
}

/// Most log entries timed at once for the commit latency.
const MAX_TIMED_ENTRIES: usize = 4_096;

/// Most records queued for the recording thread.
const RECORDING_QUEUE: usize = 65_536;

/// Opens the recording files, notes the life's seed beside the store, and starts the thread
/// that appends records (file IO never runs on the node task).
fn start_recording(
    data_dir: &Path,
    config: RecordingWriterConfig,
    recorder: &Recorder,
    seed: &NodeSeed,
) -> Result<RecordingThread, DriverError> {
    let mut writer = RecordingWriter::create(config.clone(), recorder.header_bytes())
        .map_err(|e| DriverError::Recording(e.to_string()))?;
    let seeds_path = data_dir.join("recording-seeds");
    let note = Zeroizing::new(format!("{} {}\n", config.name, &*seed.expose_hex()));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&seeds_path)
            .map_err(|e| DriverError::Recording(format!("{}: {e}", seeds_path.display())))?;
        file.write_all(note.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| crate::dirsync::sync_dir(data_dir))
            .map_err(|e| DriverError::Recording(format!("{}: {e}", seeds_path.display())))?;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(RECORDING_QUEUE);
    let thread = std::thread::Builder::new()
        .name("portcullis-recorder".to_owned())
        .spawn(move || {
            for record in rx {
                if let Err(e) = writer.append(&record) {
                    tracing::error!(error = %e, "flight recorder stopped");
                    return;
                }
            }
            if let Err(e) = writer.sync() {
                tracing::error!(error = %e, "flight recorder: final sync failed");
            }
        })
        .map_err(|e| DriverError::Recording(e.to_string()))?;
    tracing::info!(dir = %config.dir.display(), name = %config.name, "flight recorder on");
    Ok((tx, thread))
}

/// The recording thread's queue and handle.
type RecordingThread = (
    std::sync::mpsc::SyncSender<Vec<u8>>,
    std::thread::JoinHandle<()>,
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_core::crypto::{JoinSecret, SecretKey};
    use portcullis_core::rng::SeededRng;
    use portcullis_core::token::Role;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Storage faults a test injects into one node (`NodeOptions::faults`).
    #[derive(Debug, Default)]
    pub(crate) struct StorageFaults {
        /// Every commit from now on fails.
        pub(crate) fail_commits: AtomicBool,
        /// The next commit panics, in the storage thread.
        pub(crate) panic_commits: AtomicBool,
        /// The storage thread's report channel (weak: it must close when the thread ends).
        report: parking_lot::Mutex<Option<mpsc::WeakUnboundedSender<Result<u64, StorageError>>>>,
    }

    impl StorageFaults {
        /// `persist_all` with the faults applied.
        pub(crate) fn wrap<F>(
            self: Arc<Self>,
            mut persist_all: F,
            report: &mpsc::UnboundedSender<Result<u64, StorageError>>,
        ) -> impl FnMut(&[PersistBatch]) -> Result<(), StorageError> + Send + use<F>
        where
            F: FnMut(&[PersistBatch]) -> Result<(), StorageError> + Send,
        {
            *self.report.lock() = Some(report.downgrade());
            move |group| {
                assert!(
                    !self.panic_commits.load(Ordering::Relaxed),
                    "injected storage panic"
                );
                if self.fail_commits.load(Ordering::Relaxed) {
                    return Err(injected());
                }
                persist_all(group)
            }
        }

        /// Reports a failed commit now, as the storage thread does when one fails.
        pub(crate) fn fail_now(&self) {
            let report = self.report.lock().as_ref().and_then(|w| w.upgrade());
            if let Some(report) = report {
                let _ = report.send(Err(injected()));
            }
        }
    }

    fn injected() -> StorageError {
        StorageError::Io {
            path: PathBuf::from("injected"),
            source: std::io::Error::other("injected fault"),
        }
    }

    fn secrets() -> AdmissionSecrets {
        AdmissionSecrets {
            cluster_key: SecretKey::generate(&mut OsRng),
            join_secret: JoinSecret::generate(&mut OsRng),
        }
    }

    /// Options for a node in `dir` on a free loopback port.
    pub(crate) fn options(dir: &Path) -> NodeOptions {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        NodeOptions::new(loopback, dir)
    }

    /// Options for a single founder (a one-voter cluster at once) in `dir`.
    pub(crate) fn founder_options(dir: &Path) -> NodeOptions {
        let mut opts = options(dir);
        opts.secrets = Some(secrets());
        opts.founders = vec![MemberSpec {
            // A fresh temporary directory takes a key.
            node_key: node_public_key(dir).expect("a node key in a temporary directory"),
            role: Role::Member,
            addrs: Addrs::default(),
        }];
        opts
    }

    /// Polls the node's status until `check` holds (a generous bound: a stuck node fails).
    pub(crate) async fn until(node: &NodeHandle, what: &str, check: impl Fn(&Status) -> bool) {
        for _ in 0..1_000 {
            let status = node.status().await.expect("the node runs");
            if check(&status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never: {what}");
    }

    /// Captures what the `tracing` macros write on this thread.
    #[derive(Clone, Default)]
    struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn node_started_logs_the_seed_hash_never_the_seed() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut opts = founder_options(dir.path());
        // With recording on, the driver notes the seed beside the store: the test reads it there.
        opts.recording = Some(RecordingWriterConfig::new(dir.path().join("rec"), "life"));
        let node = start(opts).await.expect("the founder starts");
        node.shutdown().await.expect("a clean stop");
        let note = std::fs::read_to_string(dir.path().join("recording-seeds"))
            .expect("the seed note is written at start");
        let hex = note
            .split_whitespace()
            .nth(1)
            .expect("`NAME SEED` in the note");
        assert_eq!(hex.len(), 64, "32 bytes in hex: {note}");
        let seed: NodeSeed = hex.parse().expect("the note's seed parses");
        let log = String::from_utf8_lossy(&capture.0.lock()).into_owned();
        assert!(log.contains("node started"), "{log}");
        // Not even an eighth of it (a 4-byte window anywhere).
        for window in hex.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).expect("hex is ASCII");
            assert!(!log.contains(window), "the seed is logged: {log}");
        }
        let hash = format!(
            "seed_hash={}",
            portcullis_core::recording::seed_fingerprint(&seed).short()
        );
        assert!(log.contains(&hash), "no {hash} in {log}");
    }

    #[tokio::test]
    async fn a_failed_commit_stops_the_node_and_shutdown_reports_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let opts = founder_options(dir.path());
        opts.faults.fail_commits.store(true, Ordering::Relaxed);
        let node = start(opts).await.expect("the founder starts");
        // The founding state's commit fails.
        let reason = node.stopped().await;
        assert!(matches!(reason, StopReason::Storage(_)), "{reason:?}");
        assert!(
            node.status().await.is_err(),
            "a stopped node answers nothing"
        );
        let err = node.shutdown().await.expect_err("the node had died");
        assert!(
            matches!(err, DriverError::Died(StopReason::Storage(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_panic_in_the_storage_thread_is_reported() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let opts = founder_options(dir.path());
        opts.faults.panic_commits.store(true, Ordering::Relaxed);
        let node = start(opts).await.expect("the founder starts");
        let reason = node.stopped().await;
        assert!(
            matches!(&reason, StopReason::StoragePanicked(m) if m.contains("injected storage panic")),
            "{reason:?}"
        );
        let err = node.shutdown().await.expect_err("the node had died");
        assert!(
            matches!(err, DriverError::Died(StopReason::StoragePanicked(_))),
            "{err:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_dies_mid_join_ends_the_join_at_once() {
        let (dir_a, dir_b) = (
            tempfile::tempdir().expect("a temporary directory"),
            tempfile::tempdir().expect("a temporary directory"),
        );
        // The seed is a node in no cluster: it never answers the join, so only the joiner's
        // death can end it before the join deadline (60 s).
        let seed = start(options(dir_b.path())).await.expect("the seed starts");
        let opts = options(dir_a.path());
        let faults = opts.faults.clone();
        let joiner = start(opts).await.expect("the joiner starts");
        let admission = secrets();
        let token = JoinToken::issue_random(
            &admission.join_secret,
            admission.pin(),
            &mut OsRng,
            unix_ms().saturating_add(600_000),
            Role::Member,
        );
        let join = tokio::spawn({
            let (joiner, seed) = (joiner.clone(), seed.addr());
            async move { joiner.join_cluster_via(token, &[seed]).await }
        });
        until(&seed, "the joiner connects", |s| s.peers_connected > 0).await;
        faults.fail_now();
        let result = join.await.expect("the join task does not panic");
        assert!(
            matches!(result, Err(JoinError::Stopped(StopReason::Storage(_)))),
            "{result:?}"
        );
        assert!(joiner.shutdown().await.is_err(), "the joiner had died");
        seed.shutdown().await.expect("the seed stops cleanly");
    }

    #[test]
    fn members_always_pass_and_joiners_only_within_their_budget() {
        let mut rng = SeededRng::from_u64(1);
        let member = SecretKey::generate(&mut rng).public();
        let (j1, j2) = (
            SecretKey::generate(&mut rng).public(),
            SecretKey::generate(&mut rng).public(),
        );
        let policy = MembershipPolicy::new(1);
        policy.set_members([member]);
        assert!(policy.allow_inbound(&j1), "room for one joiner");
        let first = policy.on_connected(&j1);
        assert!(first, "an unknown key counts as a joiner");
        assert!(!policy.allow_inbound(&j2), "the joiner budget is spent");
        assert!(
            policy.allow_inbound(&member),
            "members are never crowded out"
        );
        assert!(!policy.on_connected(&member), "a member is not a joiner");
        policy.on_disconnected(first);
        assert!(policy.allow_inbound(&j2), "the budget is free again");
    }
}
