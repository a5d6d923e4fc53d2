//! The node: the only entry point of the core.
//!
//! ## Drain contract
//!
//! A driver owns the sockets, the clock, the disk and the timer. It MUST:
//!
//! 1. call [`Node::handle`] with the current [`Now`] for every input — a connection the
//!    transport authenticated, a frame received, a batch made durable, a timer that fired, a
//!    local command. `now` MUST NOT go backwards;
//! 2. after **every** `handle`, drain [`Node::poll_output`] until it returns `None`, carrying
//!    out each output in order: `Transmit` (best effort: the core tolerates loss, duplication
//!    and reordering), `Persist` (apply with [`crate::durable::DurableState::apply_batch`]
//!    semantics, fsync, then report `Persisted(number)`; batches in order), `Connect` (dial that
//!    member, then report `Connected`) and `Event`;
//! 3. then read [`Node::poll_timeout`] and call `handle(now, Input::Timer)` no later than it.
//!
//! A driver MUST NOT report `Persisted(n)` before batch `n` is durable: Raft's votes and
//! appends are only safe if they survive a crash. One exception, as in etcd (`MustSync`): a
//! batch that changes nothing but the hard state's commit index (same term and vote as the last
//! durable hard state; see [`PersistBatch::only_advances_commit`]) MAY be reported at once, if
//! it is written no later than the next durable batch. Raft's commit index is volatile state:
//! a node that loses it re-learns it from the leader. The node never blocks and never reads a
//! clock, so the same inputs always produce the same outputs.
//!
//! ```text
//!   Input ──▶ handle(now, input) ──▶ [peer msgs → Raft / listener / joiner]
//!                                     [timers → ticks, retries, sweeper, deadlines]
//!                                     [Raft ready → Persist, Transmit, apply → ledger]
//!   driver ◀── poll_output() until None;  poll_timeout() ──▶ next Timer
//! ```
//!
//! ## Namespaces
//!
//! The same node also carries Protocol B (see [`crate::namespace`]): per namespace it holds a
//! governance replica, a readiness responder (beacons every `beacon_interval_ms` once caught
//! up, rate-limited probe answers), a beacon cache, its identity key, an optional join (one
//! attempt or the retry wrapper) and the durable announce outbox. Namespace messages travel
//! as framed [`crate::namespace::NamespaceMessage`]s inside topic publishes
//! ([`crate::pubsub`]) or directly (probe answers, backfill). Namespaces need no cluster
//! membership: a node made with [`Node::new_joiner`] can create and join them. Local commands
//! ([`LocalCommand::CreateNamespace`], [`LocalCommand::IssueInvitation`],
//! [`LocalCommand::JoinNamespace`], [`LocalCommand::JoinNamespaceWithRetry`],
//! [`LocalCommand::LeaveNamespace`]) complete with typed [`Event`]s.
//!
//! ## Who may propose
//!
//! Every ledger command is a token's lifecycle, and the leader proposes a follower's forwarded
//! entries as they are: `Register` → `BeginInFlight` → `Consume` of a made-up token would add
//! any key to the registry. So only admitting nodes (holding the cluster key) have proposals
//! proposed for them: a [`ForwardProposal`] carries the cluster key's signature over its
//! sender's key ([`AdmissionSecrets::admitter_proof`], made once per node), which the leader
//! checks once per sender. A node without the secrets never forwards, and refuses
//! [`LocalCommand::RevokeToken`] ([`CommandError::NotAdmitting`]).
//!
//! ```text
//!   admitting follower ──Forward{entries, admitter proof}──▶ leader: proof ok? ──▶ propose
//!   other member ──Forward{…, anything}──▶ leader: refused (forwards_refused)
//! ```

mod namespaces;

use core::fmt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, EntryType, Message, MessageType,
};

use crate::admission::{
    AdmissionId, AdmissionRecord, AdmissionStep, JoinFailure, Joiner, JoinerAction, JoinerCtx,
    Listener, ListenerAction, ListenerCtx, cluster_info,
};
use crate::config::Config;

use crate::crypto::{Hash32, PublicKey, SecretKey, Signature};
use crate::durable::{DurableState, NodeMeta, PersistBatch};
use crate::identity::{self, AdmissionSecrets, Credential, CredentialBody};
use crate::ledger::{
    Addrs, Applied, Command, Disposition, Ledger, LogEntry, MemberId, MemberSpec, NodeId, Outcome,
    ProposalId,
};
use crate::messages::{ForwardProposal, JoinRejected, MemberInfo, PeerMessage, RejectReason};
use crate::namespace::join::{JoinEvent, ReadyReport};
use crate::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
use crate::namespace::readiness::Beacon;
use crate::pubsub::PubSub;
use crate::replication::raft_wire;
use crate::replication::storage::RaftLog;
use crate::replication::{ReadyWork, Replica, ReplicaConfig, ReplicaError};
use crate::rng::{NodeSeed, SeededRng};
use crate::time::{Instant, Now};
use crate::token::{JoinToken, Role, TokenHash};
use crate::wire::{self, DecodeError};

/// A transport-level peer, as the driver numbers its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

/// A local command from the application or operator.
#[derive(Debug)]
#[non_exhaustive]
pub enum LocalCommand {
    /// Join a cluster with a token, through the given (connected) seed peers.
    JoinCluster {
        /// The token.
        token: JoinToken,
        /// Connected peers to try, in order.
        seeds: Vec<PeerId>,
        /// Where this node can be reached once admitted.
        addrs: Addrs,
    },
    /// More connected seeds for the join under way ([`LocalCommand::JoinCluster`]), tried
    /// after the seeds it has. A driver that dials its seeds in parallel starts the join on
    /// the first to connect and hands over the rest as they come up, so a dead seed does not
    /// hold the join back for a handshake timeout. Seeds the join already has are skipped,
    /// and a join holds at most [`crate::admission::MAX_JOINER_SEEDS`]. Ignored when no join
    /// is under way: the join may end before a slow dial does, and that race is nobody's
    /// fault.
    AddJoinSeeds {
        /// Connected peers, in the order to try them.
        seeds: Vec<PeerId>,
    },
    /// Promote a learner to voter (must be sent to the leader).
    PromoteMember {
        /// The learner.
        member_id: MemberId,
    },
    /// Revoke a token (operator), before or after it was presented.
    RevokeToken {
        /// The token's hash.
        hash: TokenHash,
        /// Its expiry (for retention if it was never presented).
        expires_at_unix_ms: u64,
    },
    /// Create a namespace with a fresh admin key: its id is `derive(admin, salt)`.
    /// Completes with [`Event::NamespaceCreated`] once the key and the create op are durable.
    CreateNamespace {
        /// The salt of the namespace id.
        salt: [u8; 16],
    },
    /// Issue an invitation to a namespace we administer. Completes with
    /// [`Event::InvitationIssued`]; refused with [`CommandError::NamespaceNotDurable`] until
    /// our admin key is durable.
    IssueInvitation {
        /// The namespace.
        namespace: NamespaceId,
        /// Wall-clock expiry.
        expires_at_unix_ms: u64,
        /// Reusable or single-use.
        policy: InvitePolicy,
    },
    /// Join a namespace with an invitation, within `deadline_ms`. Completes with
    /// [`Event::NamespaceReady`] or [`Event::NamespaceJoinFailed`].
    JoinNamespace {
        /// The admin's invitation.
        invitation: SignedInvitation,
        /// The attempt's whole budget.
        deadline_ms: u64,
    },
    /// Join, retrying `NoReadyPeers` with backoff, never past `max_total_ms`.
    JoinNamespaceWithRetry {
        /// The admin's invitation.
        invitation: SignedInvitation,
        /// The whole budget, every attempt and delay included.
        max_total_ms: u64,
    },
    /// Leave a namespace: stop beaconing, unsubscribe, drop its log (the identity is kept).
    /// Completes with [`Event::NamespaceLeft`].
    LeaveNamespace {
        /// The namespace.
        namespace: NamespaceId,
    },
}

/// An input to [`Node::handle`].
///
/// `Debug` shows a received frame as its length and hash: a frame may hold a token.
#[non_exhaustive]
pub enum Input {
    /// The transport authenticated `peer` as `node_key`; `binding` is unique to this connection
    /// (e.g. a TLS exporter), and join proofs sign it.
    Connected {
        /// The connection.
        peer: PeerId,
        /// The authenticated key.
        node_key: PublicKey,
        /// Connection binding.
        binding: Hash32,
    },
    /// The connection closed.
    Disconnected {
        /// The connection.
        peer: PeerId,
    },
    /// A frame from a peer.
    Received {
        /// The connection.
        from: PeerId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Every persist batch up to this number is durable.
    Persisted(u64),
    /// `poll_timeout` was reached.
    Timer,
    /// A local command.
    Command(LocalCommand),
}

/// Why a local command was refused. The caller is at fault, or must retry elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Only the leader does this; here is who leads, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader.
        leader: Option<MemberId>,
    },
    /// This node is already a member or already joining.
    #[error("already a member or joining")]
    AlreadyJoined,
    /// This node is not a member of a cluster.
    #[error("not a member")]
    NotMember,
    /// Only an admitting node (one holding the cluster key and join secret) does this.
    #[error("this node does not hold the cluster secrets: run this on an admitting node")]
    NotAdmitting,
    /// No such member, or it is not a learner.
    #[error("member {0:?} is not a learner")]
    NotALearner(MemberId),
    /// A conf change is still in progress.
    #[error("a membership change is in progress")]
    Busy,
    /// The metadata group already has `max_raft_voters` voters.
    #[error("the metadata group already has {voters} voters")]
    TooManyVoters {
        /// Voters now.
        voters: usize,
    },
    /// We hold no such namespace (or already left it).
    #[error("unknown namespace {0}")]
    UnknownNamespace(NamespaceId),
    /// Only an admin of the namespace can do this.
    #[error("not an admin of namespace {0}")]
    NotNamespaceAdmin(NamespaceId),
    /// Already a member of the namespace, or joining it.
    #[error("already in namespace {0}")]
    AlreadyInNamespace(NamespaceId),
    /// This node holds `max_namespaces` namespaces already.
    #[error("too many namespaces")]
    TooManyNamespaces,
    /// Our key in the namespace is not durable yet (the create or join is still being
    /// written): retry once `NamespaceCreated` (or the join's progress) says it is.
    #[error("namespace {0}: our key is not durable yet")]
    NamespaceNotDurable(NamespaceId),
}

/// Something the application should know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This node was admitted.
    JoinAdmitted {
        /// Our member id.
        member_id: MemberId,
    },
    /// This node's join failed for good.
    JoinFailed(JoinFailure),
    /// An admission attempt at this listener finished (the audit trail).
    Admission(AdmissionRecord),
    /// The Raft membership changed.
    ConfChanged {
        /// Voters.
        voters: Vec<u64>,
        /// Learners.
        learners: Vec<u64>,
    },
    /// Leadership changed (0: unknown).
    LeaderChanged {
        /// The leader's id.
        leader: u64,
        /// The term.
        term: u64,
    },
    /// A revoke command was applied.
    TokenRevoked {
        /// The token.
        hash: TokenHash,
        /// What the ledger did.
        outcome: Outcome,
    },
    /// A local command was refused.
    CommandRejected(CommandError),
    /// A namespace was created; we are its admin.
    NamespaceCreated {
        /// Its id.
        namespace: NamespaceId,
        /// Our admin key in it.
        admin: PublicKey,
    },
    /// An invitation was issued (hand it to the joiner out of band).
    InvitationIssued(SignedInvitation),
    /// A namespace join found a ready partner and started backfilling.
    NamespaceJoinStarted {
        /// The namespace.
        namespace: NamespaceId,
        /// The partner's connection.
        partner: PeerId,
        /// The partner's member key.
        partner_key: PublicKey,
        /// The partner's `applied_through`.
        partner_applied: u64,
    },
    /// Another step of a namespace join (partner switched, backfill complete, announced,
    /// announce included, retrying).
    NamespaceJoinProgress {
        /// The namespace.
        namespace: NamespaceId,
        /// What happened.
        event: JoinEvent,
    },
    /// A namespace join finished: we are a member.
    NamespaceReady(ReadyReport),
    /// A namespace join failed for good (with a partial report).
    NamespaceJoinFailed(crate::namespace::join::JoinFailure),
    /// We left a namespace.
    NamespaceLeft {
        /// The namespace.
        namespace: NamespaceId,
    },
    /// The node hit a fatal error and stopped (sticky).
    Fatal(String),
}

/// What the driver must do.
///
/// `Debug` shows a frame to send as its length and hash: a frame may hold a token.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
// `Persist` is the large variant; outputs are moved once each, so boxing would only add an
// allocation per batch.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Send a frame to a peer.
    Transmit {
        /// The connection.
        to: PeerId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Make this durable, then report `Persisted(batch.number)`.
    Persist(PersistBatch),
    /// Connect to this member (then report `Connected`).
    Connect {
        /// The member.
        member_id: MemberId,
        /// Its key (the transport must authenticate exactly this key).
        node_key: PublicKey,
        /// Its addresses.
        addrs: Addrs,
    },
    /// Tell the application.
    Event(Event),
}

/// A frame in `Debug` output: its length and the first bytes of its SHA-256, never its bytes
/// (a `JoinRequest` frame holds a whole token).
struct FrameSummary<'a>(&'a [u8]);

impl fmt::Debug for FrameSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{} bytes, sha256 {}>",
            self.0.len(),
            Hash32::of(&[self.0]).short()
        )
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Connected {
                peer,
                node_key,
                binding,
            } => f
                .debug_struct("Connected")
                .field("peer", peer)
                .field("node_key", node_key)
                .field("binding", binding)
                .finish(),
            Input::Disconnected { peer } => {
                f.debug_struct("Disconnected").field("peer", peer).finish()
            }
            Input::Received { from, bytes } => f
                .debug_struct("Received")
                .field("from", from)
                .field("bytes", &FrameSummary(bytes))
                .finish(),
            Input::Persisted(n) => f.debug_tuple("Persisted").field(n).finish(),
            Input::Timer => f.write_str("Timer"),
            Input::Command(c) => f.debug_tuple("Command").field(c).finish(),
        }
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Transmit { to, bytes } => f
                .debug_struct("Transmit")
                .field("to", to)
                .field("bytes", &FrameSummary(bytes))
                .finish(),
            Output::Persist(batch) => f.debug_tuple("Persist").field(batch).finish(),
            Output::Connect {
                member_id,
                node_key,
                addrs,
            } => f
                .debug_struct("Connect")
                .field("member_id", member_id)
                .field("node_key", node_key)
                .field("addrs", addrs)
                .finish(),
            Output::Event(e) => f.debug_tuple("Event").field(e).finish(),
        }
    }
}

/// Counters of what the node refused or dropped (exported as metrics by drivers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Frames that did not decode, by error.
    pub frames_rejected: BTreeMap<&'static str, u64>,
    /// Frames from connections the transport never authenticated.
    pub unauthenticated_frames: u64,
    /// Raft messages from non-members or with wrong ids, or refused by raft-rs.
    pub raft_messages_refused: u64,
    /// Heartbeats not sent to up-to-date learners (see "Quiet learners" in `replication`).
    pub quiet_heartbeats: u64,
    /// Forwarded proposals refused (sender not a member, or spoofed proposal id).
    pub forwards_refused: u64,
    /// Transmits dropped because the output queue was full.
    pub transmits_dropped: u64,
    /// Admissions granted at this listener.
    pub admissions_granted: u64,
    /// Admissions refused at this listener, by reason.
    pub admissions_rejected: BTreeMap<&'static str, u64>,
    /// Committed entries that did not decode (skipped by every replica alike).
    pub bad_entries: u64,
    /// Namespace messages dropped: bad signature, wrong topic, unknown namespace, queue full
    /// (including our own acks held past their bound while the op log's fsync is pending).
    pub namespace_messages_refused: u64,
    /// Namespace inputs refused, by (message, typed reason): `("beacon", "replayed")` is a
    /// [`crate::namespace::readiness::BeaconRejection::ReplayedBeacon`], `("probe",
    /// "rate_limited")` a [`crate::namespace::readiness::ProbeRefused::RateLimited`], `("ack",
    /// "bad_signature")` an ack whose signature does not verify. Ops are counted by the
    /// namespace's own [`crate::namespace::governance::GovernanceStats`].
    pub namespace_rejected: BTreeMap<(&'static str, &'static str), u64>,
}

impl NodeMetrics {
    /// Counts one refused namespace input.
    pub(crate) fn namespace_rejected(&mut self, message: &'static str, reason: &'static str) {
        *self
            .namespace_rejected
            .entry((message, reason))
            .or_default() += 1;
    }
}

/// Why a node could not be constructed. The caller is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Bootstrap needs the cluster key and join secret.
    #[error("bootstrap needs admission secrets")]
    NoSecrets,
    /// Our node key is not among the founders.
    #[error("this node's key is not in the founder list")]
    NotAFounder,
    /// Too many founders.
    #[error("founder list: {0}")]
    Founders(#[from] crate::wire::TooMany),
    /// The durable state could not be loaded.
    #[error("durable state: {0}")]
    Durable(String),
    /// raft-rs refused.
    #[error("replica: {0}")]
    Replica(#[from] ReplicaError),
}

/// Who a pending proposal reports to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Admission(AdmissionId, AdmissionStep),
    Sweep,
    Revoke(TokenHash),
    Detached,
}

#[derive(Clone, Debug)]
struct Pending {
    entry: LogEntry,
    owner: Owner,
    retry_at: Instant,
    attempts: u32,
}

/// Most proposals held for one group commit before they are sent anyway.
const PROPOSAL_BATCH_MAX: usize = 256;

/// Most join proofs queued for one verification pass before it runs anyway.
const PROOF_BATCH_MAX: usize = 64;

/// Retries for proposals nobody waits on (reverts, sweeps): after this many, the sweeper's
/// next pass covers them.
const DETACHED_ATTEMPTS: u32 = 5;
/// Most peers whose admitter proof is remembered as verified; past it the set starts over
/// (a peer then verifies once more). Admitting nodes are a handful.
const MAX_VERIFIED_ADMITTERS: usize = 1_024;

#[derive(Clone, Copy, Debug)]
struct Peer {
    node_key: PublicKey,
    binding: Hash32,
}

/// What every node is constructed from. The driver keeps the node key and secrets durable.
///
/// `Debug` shows the seed's hash only: the seed derives the namespace keys the node makes.
pub struct NodeSetup {
    /// Configuration (validated at construction).
    pub config: Config,
    /// Seed of every random choice this node makes, the keys it generates included: 256 bits
    /// from the OS in production ([`NodeSeed::generate`]).
    pub seed: NodeSeed,
    /// This node's identity key.
    pub node_key: SecretKey,
    /// Cluster key and join secret, on admitting nodes.
    pub secrets: Option<AdmissionSecrets>,
}

impl fmt::Debug for NodeSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSetup")
            .field("config", &self.config)
            .field("seed", &self.seed)
            .field("node_key", &self.node_key)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// A portcullis node. See the module docs for the drain contract.
#[derive(Debug)]
pub struct Node {
    config: Config,
    node_key: SecretKey,
    secrets: Option<AdmissionSecrets>,
    /// Our admitter proof, made once (an admitting node's forwards carry it).
    admitter_proof: Option<Signature>,
    /// Peers whose admitter proof verified (a proof is fixed per key), at most
    /// [`MAX_VERIFIED_ADMITTERS`].
    verified_admitters: BTreeSet<PublicKey>,
    rng: SeededRng,
    meta: NodeMeta,
    /// Proposals wait until the meta batch with our boot count is durable, so a proposal id
    /// is never reused across restarts.
    meta_durable_at: Option<u64>,
    next_batch: u64,
    peers: BTreeMap<PeerId, Peer>,
    peer_by_key: BTreeMap<PublicKey, PeerId>,
    connect_asked: BTreeMap<MemberId, Instant>,
    replica: Option<Replica>,
    ledger: Ledger,
    known_members: Vec<MemberInfo>,
    outputs: VecDeque<Output>,
    now: Now,
    /// When the next Raft tick falls due (ticks fall on this grid, every `raft_tick_ms`).
    next_tick_at: Instant,
    /// When the first tick that can act falls due (see "Lazy ticks" in `replication`); `None`
    /// if none can until an input arrives. Recomputed at the end of every `handle`.
    raft_due_at: Option<Instant>,
    next_sweep_at: Instant,
    proposal_counter: u64,
    pending: BTreeMap<ProposalId, Pending>,
    listener: Listener,
    joiner: Option<Joiner>,
    sweep_pending: Option<ProposalId>,
    last_leader: (u64, u64),
    /// A conf change applied since the leader last looked for members to add as learners.
    reconcile_due: bool,
    /// Applied index at which the ledger's invariants were last checked (debug builds).
    ledger_checked_at: u64,
    /// Proposals waiting for the group commit on the next timer.
    outbox: Vec<LogEntry>,
    /// A snapshot installed from the leader, to report to raft-rs as applied once durable.
    snapshot_applied_at: Option<u64>,
    /// The last heartbeat claimed a commit index beyond our log: we lost entries the leader
    /// believes we hold (a wiped disk). Our heartbeat responses say so (see `send_raft`).
    log_behind_leader_commit: bool,
    metrics: NodeMetrics,
    fatal: Option<String>,
    /// Topic fan-out for namespaces.
    pubsub: PubSub,
    /// Every namespace we hold state for.
    namespaces: BTreeMap<NamespaceId, namespaces::NsState>,
    /// Received beacons waiting for one verification pass on the next immediate timer.
    beacon_queue: Vec<(PeerId, Beacon)>,
    /// Namespaces changed since their invariants were last checked.
    ns_dirty: BTreeSet<NamespaceId>,
    /// When our subscriptions are re-announced to connected peers.
    next_subscriptions_refresh_at: Instant,
    /// Refresh rounds so far (peers with no topics are refreshed every few rounds only).
    subscriptions_refresh_round: u64,
}

impl Node {
    fn base(setup: NodeSetup, now: Now) -> Result<Node, NodeError> {
        setup.config.validate()?;
        let rng = SeededRng::from_seed(*setup.seed.expose());
        let setup_max_seen = setup.config.max_seen_messages;
        Ok(Node {
            ledger: Ledger::new(setup.config.ledger.clone()),
            next_tick_at: now.instant,
            raft_due_at: Some(now.instant),
            next_sweep_at: now
                .instant
                .saturating_add_ms(setup.config.sweep_interval_ms),
            config: setup.config,
            admitter_proof: setup
                .secrets
                .as_ref()
                .map(|s| s.admitter_proof(&setup.node_key.public())),
            verified_admitters: BTreeSet::new(),
            node_key: setup.node_key,
            secrets: setup.secrets,
            rng,
            meta: NodeMeta::default(),
            meta_durable_at: None,
            next_batch: 1,
            peers: BTreeMap::new(),
            peer_by_key: BTreeMap::new(),
            connect_asked: BTreeMap::new(),
            replica: None,
            known_members: Vec::new(),
            outputs: VecDeque::new(),
            now,
            proposal_counter: 0,
            pending: BTreeMap::new(),
            listener: Listener::default(),
            joiner: None,
            sweep_pending: None,
            last_leader: (0, 0),
            reconcile_due: false,
            ledger_checked_at: u64::MAX,
            outbox: Vec::new(),
            snapshot_applied_at: None,
            log_behind_leader_commit: false,
            metrics: NodeMetrics::default(),
            fatal: None,
            pubsub: PubSub::new(usize::try_from(setup_max_seen).unwrap_or(usize::MAX)),
            namespaces: BTreeMap::new(),
            beacon_queue: Vec::new(),
            ns_dirty: BTreeSet::new(),
            next_subscriptions_refresh_at: now.instant,
            subscriptions_refresh_round: 0,
        })
    }

    fn replica_config(config: &Config) -> ReplicaConfig {
        ReplicaConfig {
            election_ticks: usize::try_from(config.election_ticks).unwrap_or(10),
            heartbeat_ticks: usize::try_from(config.heartbeat_ticks).unwrap_or(2),
            max_append_bytes: config.max_append_bytes,
            max_inflight_appends: usize::try_from(config.max_inflight_appends).unwrap_or(256),
            // A learner hears from the leader at least once per election timeout.
            quiet_heartbeat_ticks: u64::from(config.election_ticks),
        }
    }

    /// A node not yet in any cluster; send it [`LocalCommand::JoinCluster`].
    pub fn new_joiner(setup: NodeSetup, now: Now) -> Result<Node, NodeError> {
        let mut node = Node::base(setup, now)?;
        node.persist_meta();
        Ok(node)
    }

    /// A founding node of a new cluster. Every founder MUST pass the same `founders` list
    /// (members `1..=n` in order, all voters); a single founder is a one-voter group at once.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::config::Config;
    /// use portcullis_core::crypto::{JoinSecret, SecretKey};
    /// use portcullis_core::identity::AdmissionSecrets;
    /// use portcullis_core::ledger::{Addrs, MemberSpec};
    /// use portcullis_core::node::{Node, NodeSetup, Output};
    /// use portcullis_core::rng::{NodeSeed, SeededRng};
    /// use portcullis_core::time::{Instant, Now};
    /// use portcullis_core::token::Role;
    ///
    /// let mut rng = SeededRng::from_u64(7);
    /// let node_key = SecretKey::generate(&mut rng);
    /// let founders = [MemberSpec { node_key: node_key.public(), role: Role::Member, addrs: Addrs::new() }];
    /// let secrets = AdmissionSecrets {
    ///     cluster_key: SecretKey::generate(&mut rng),
    ///     join_secret: JoinSecret::generate(&mut rng),
    /// };
    /// // Deterministic for the example; a driver draws `NodeSeed::generate(&mut OsRng)`.
    /// let seed = NodeSeed::from_u64(7);
    /// let setup = NodeSetup { config: Config::default(), seed, node_key, secrets: Some(secrets) };
    /// let now = Now::new(Instant::ZERO, 1_700_000_000_000);
    /// let mut node = Node::bootstrap(setup, now, &founders)?;
    /// // The first output persists the founding state; drain everything after every input.
    /// assert!(matches!(node.poll_output(), Some(Output::Persist(_))));
    /// while node.poll_output().is_some() {}
    /// assert!(node.poll_timeout().is_some());
    /// # Ok::<(), portcullis_core::node::NodeError>(())
    /// ```
    pub fn bootstrap(
        setup: NodeSetup,
        now: Now,
        founders: &[MemberSpec],
    ) -> Result<Node, NodeError> {
        let mut node = Node::base(setup, now)?;
        let secrets = node.secrets.clone().ok_or(NodeError::NoSecrets)?;
        let me = founders
            .iter()
            .position(|f| f.node_key == node.node_key.public())
            .ok_or(NodeError::NotAFounder)?;
        let mut ledger = Ledger::bootstrap(node.config.ledger.clone(), founders)?;
        // The founding state is the snapshot at index 1 on every founder.
        ledger.advance_applied(1);
        let member_id = MemberId(u64::try_from(me).unwrap_or(0) + 1);
        let voters: Vec<u64> = (1..=u64::try_from(founders.len()).unwrap_or(0)).collect();
        let mut snapshot = raft::eraftpb::Snapshot::default();
        snapshot.mut_metadata().index = 1;
        snapshot.mut_metadata().term = 1;
        snapshot
            .mut_metadata()
            .set_conf_state(raft::eraftpb::ConfState {
                voters,
                ..Default::default()
            });
        snapshot.data = ledger.snapshot().into();
        let hs = raft::eraftpb::HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        let log = RaftLog::new(hs, snapshot.clone(), Vec::new());
        let replica = Replica::new(
            member_id.0,
            log,
            1,
            Self::replica_config(&node.config),
            node.rng.child("raft"),
        )?;
        node.meta = NodeMeta {
            known_members: Vec::new(),
            boot_count: 0,
            member_id: Some(member_id),
            cluster_key: Some(secrets.cluster_key.public()),
            credential: Some(Credential::issue(
                &secrets.cluster_key,
                CredentialBody {
                    member_id,
                    node_key: node.node_key.public(),
                    role: founders[me].role,
                    cluster_pin: secrets.pin(),
                    issued_at_unix_ms: 0,
                },
            )),
        };
        node.ledger = ledger;
        node.replica = Some(replica);
        let number = node.take_batch_number();
        node.meta_durable_at = Some(number);
        node.outputs.push_back(Output::Persist(PersistBatch {
            number,
            meta: Some(node.meta.clone()),
            hard_state: Some(crate::durable::HardStateRecord {
                term: 1,
                vote: 0,
                commit: 1,
            }),
            snapshot: raft_wire::snapshot_to_wire(&snapshot).ok(),
            entries: Vec::new(),
            namespaces: Vec::new(),
        }));
        Ok(node)
    }

    /// Rebuilds a node after a restart from what it had persisted.
    pub fn recover(setup: NodeSetup, now: Now, durable: DurableState) -> Result<Node, NodeError> {
        let mut node = Node::base(setup, now)?;
        node.meta = durable.meta.clone();
        node.known_members = node.meta.known_members.clone();
        node.meta.boot_count = node.meta.boot_count.saturating_add(1);
        if let Some(member_id) = node.meta.member_id {
            let log = Replica::log_from_durable(&durable)?;
            let applied = log.latest_snapshot().get_metadata().index;
            if let Some(snap) = &durable.snapshot {
                node.ledger = Ledger::from_snapshot(
                    node.config.ledger.clone(),
                    &snap.data,
                    node.config.max_snapshot_bytes,
                )
                .map_err(|e| NodeError::Durable(e.to_string()))?;
            }
            node.replica = Some(Replica::new(
                member_id.0,
                log,
                applied,
                Self::replica_config(&node.config),
                node.rng.child_indexed("raft", node.meta.boot_count),
            )?);
        }
        node.persist_meta();
        node.recover_namespaces(&durable);
        Ok(node)
    }

    fn take_batch_number(&mut self) -> u64 {
        let n = self.next_batch;
        self.next_batch += 1;
        n
    }

    fn persist_meta(&mut self) {
        let number = self.take_batch_number();
        self.meta_durable_at = Some(number);
        self.outputs.push_back(Output::Persist(PersistBatch {
            number,
            meta: Some(self.meta.clone()),
            ..PersistBatch::default()
        }));
    }

    // ---- queries -------------------------------------------------------------------------

    /// Our member id, once a member.
    pub fn member_id(&self) -> Option<MemberId> {
        self.meta.member_id
    }

    /// Our node key's public half.
    pub fn node_key(&self) -> PublicKey {
        self.node_key.public()
    }

    /// The local ledger replica.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether this node leads the metadata group.
    pub fn is_leader(&self) -> bool {
        self.replica.as_ref().is_some_and(|r| r.is_leader())
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<MemberId> {
        self.replica
            .as_ref()
            .map(|r| r.leader_id())
            .filter(|id| *id != 0)
            .map(MemberId)
    }

    /// The Raft term.
    pub fn term(&self) -> u64 {
        self.replica.as_ref().map_or(0, |r| r.term())
    }

    /// Voters and learners of the metadata group.
    pub fn conf(&self) -> (Vec<u64>, Vec<u64>) {
        self.replica.as_ref().map_or((Vec::new(), Vec::new()), |r| {
            (
                r.conf_state().voters.clone(),
                r.conf_state().learners.clone(),
            )
        })
    }

    /// Refusal and drop counters.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Admissions in flight at this listener.
    pub fn admissions_in_flight(&self) -> usize {
        self.listener.in_flight()
    }

    /// The sticky fatal error, if any.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    // ---- the sans-IO interface -------------------------------------------------------------

    /// The next output to carry out. Drain until `None` after every `handle`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle(now, Input::Timer)` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fatal.is_some() {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.replica.is_some() {
            consider(self.raft_due_at);
        }
        if self.is_leader() {
            consider(Some(self.next_sweep_at));
        }
        consider(self.pending.values().map(|p| p.retry_at).min());
        consider(self.listener.next_deadline());
        if self.listener.proofs_pending() > 0 || !self.outbox.is_empty() {
            // Queued proofs and proposals go out in one batch on the next timer, right away.
            consider(Some(self.now.instant));
        }
        consider(self.joiner.as_ref().and_then(|j| j.next_deadline()));
        consider(self.ns_next_deadline());
        next
    }

    /// Feeds one input. See the module docs for what the driver must do afterwards.
    pub fn handle(&mut self, now: Now, input: Input) {
        if self.fatal.is_some() {
            return;
        }
        let timer_fired = matches!(input, Input::Timer);
        // Time never runs backwards inside the core, whatever the driver does.
        self.now = Now::new(now.instant.max(self.now.instant), now.unix_ms);
        // Ticks that fell due while the driver slept come first, as if each had fired on time.
        let ticked = self.catch_up_ticks();
        match input {
            Input::Connected {
                peer,
                node_key,
                binding,
            } => {
                self.peers.insert(peer, Peer { node_key, binding });
                self.peer_by_key.insert(node_key, peer);
                self.forget_learner(&node_key);
                self.ns_on_connected(peer);
                if let Some(joiner) = self.joiner.as_mut() {
                    let mut actions = Vec::new();
                    let mut ctx = JoinerCtx {
                        now: self.now,
                        config: &self.config,
                        node_key: &self.node_key,
                        rng: &mut self.rng,
                        actions: &mut actions,
                    };
                    joiner.on_connected(&mut ctx, peer, &binding);
                    joiner.on_seed_connected(peer, &node_key);
                    self.run_joiner_actions(actions);
                }
            }
            Input::Disconnected { peer } => {
                if let Some(p) = self.peers.remove(&peer) {
                    if self.peer_by_key.get(&p.node_key) == Some(&peer) {
                        self.peer_by_key.remove(&p.node_key);
                    }
                    self.forget_learner(&p.node_key);
                }
                self.ns_on_disconnected(peer);
            }
            Input::Received { from, bytes } => self.on_frame(from, &bytes),
            Input::Persisted(number) => self.on_persisted(number),
            Input::Timer => {}
            Input::Command(command) => self.on_command(command),
        }
        self.on_timers(timer_fired, ticked);
        self.ns_on_timers(timer_fired);
        if timer_fired {
            self.flush_outbox();
        }
        self.drive();
        self.schedule_raft_tick();
        self.check_invariants();
    }

    // ---- inputs ----------------------------------------------------------------------------

    fn on_persisted(&mut self, number: u64) {
        if self.meta_durable_at.is_some_and(|m| m <= number) {
            self.meta_durable_at = None;
        }
        let messages = self
            .replica
            .as_mut()
            .map(|r| r.on_persisted(number))
            .unwrap_or_default();
        if let Some(index) = self.snapshot_applied_at
            && let Some(replica) = self.replica.as_mut()
            && replica.all_persisted()
        {
            self.snapshot_applied_at = None;
            if index > replica.applied_index() {
                replica.advance_applied(index);
            }
        }
        for m in messages {
            self.send_raft(m);
        }
        self.ns_on_persisted(number);
    }

    fn on_frame(&mut self, from: PeerId, bytes: &[u8]) {
        let Some(peer) = self.peers.get(&from).copied() else {
            self.metrics.unauthenticated_frames += 1;
            return;
        };
        let msg = match PeerMessage::decode(bytes, &self.config.limits()) {
            Ok(m) => m,
            Err(e) => {
                *self
                    .metrics
                    .frames_rejected
                    .entry(decode_error_label(&e))
                    .or_default() += 1;
                return;
            }
        };
        match msg {
            PeerMessage::Raft(w) => self.on_raft(peer, &w),
            PeerMessage::Forward(f) => self.on_forward(peer, f),
            PeerMessage::ClusterInfoRequest(req) => {
                if let Some(reply) =
                    cluster_info(&req, self.meta.cluster_key, self.meta.credential.as_ref())
                {
                    self.transmit(from, &reply);
                }
            }
            PeerMessage::JoinRequest(req) => {
                if self.replica.is_none() || self.meta.credential.is_none() {
                    self.transmit(
                        from,
                        &PeerMessage::JoinRejected(JoinRejected::new(RejectReason::NotAdmitting)),
                    );
                    return;
                }
                self.with_listener(|listener, ctx| {
                    listener.on_join_request(ctx, from, &peer.node_key, &peer.binding, &req)
                });
            }
            other @ (PeerMessage::ClusterInfo(_)
            | PeerMessage::JoinAccepted(_)
            | PeerMessage::JoinRejected(_)
            | PeerMessage::Redirect(_)) => {
                let Some(joiner) = self.joiner.as_mut() else {
                    return;
                };
                let mut actions = Vec::new();
                let mut ctx = JoinerCtx {
                    now: self.now,
                    config: &self.config,
                    node_key: &self.node_key,
                    rng: &mut self.rng,
                    actions: &mut actions,
                };
                joiner.on_message(&mut ctx, from, &peer.node_key, &peer.binding, &other);
                self.run_joiner_actions(actions);
            }
            PeerMessage::Subscriptions(subs) => self.ns_on_subscriptions(from, &subs),
            PeerMessage::Publish(msg) => self.ns_on_publish(from, msg),
            PeerMessage::Namespace(m) => self.on_ns_message(from, *m),
            // A future message kind this build decodes but does not route.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// The member id of an authenticated peer key, from the ledger or the admission list.
    fn member_of_key(&self, key: &PublicKey) -> Option<MemberId> {
        crate::admission::lookup_member(&self.ledger, &self.known_members, key)
    }

    fn on_raft(&mut self, peer: Peer, w: &raft_wire::RaftMessageWire) {
        let Some(me) = self.meta.member_id else {
            self.metrics.raft_messages_refused += 1;
            return;
        };
        let sender = self.member_of_key(&peer.node_key);
        if sender != Some(MemberId(w.from)) || w.to != me.0 {
            self.metrics.raft_messages_refused += 1;
            return;
        }
        let mut msg = match raft_wire::from_wire(w) {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(from = w.from, %error, "raft message refused");
                self.metrics.raft_messages_refused += 1;
                return;
            }
        };
        if let Err(why) = self.check_raft_message(&msg) {
            tracing::debug!(from = w.from, why, "raft message refused");
            self.metrics.raft_messages_refused += 1;
            return;
        }
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        // A heartbeat's commit index is only a hint; raft-rs panics if it lies beyond our log
        // (a member that lost its disk, which the leader still believes matched). Clamp it, and
        // let the append path bring the log back (found by the simulator:
        // readmitted-member-with-empty-log-panics).
        match msg.get_msg_type() {
            MessageType::MsgHeartbeat => {
                self.log_behind_leader_commit = msg.commit > replica.last_log_index();
                msg.commit = msg.commit.min(replica.last_log_index());
            }
            // Our own flag (raft-rs ignores `reject` on heartbeat responses): the follower lost
            // entries we count as matched, and in a quiet cluster raft-rs would never send it
            // anything again (found by the simulator:
            // readmitted-learner-with-empty-log-stalls).
            MessageType::MsgHeartbeatResponse if msg.reject => {
                replica.probe_lagging_follower(msg.from, msg.commit);
            }
            _ => {}
        }
        if replica.step(msg).is_err() {
            self.metrics.raft_messages_refused += 1;
        }
    }

    /// The check on a peer's Raft message that needs our configuration
    /// ([`raft_wire::from_wire`] did those on the message alone).
    ///
    /// A snapshot's data MUST be a ledger at the snapshot's index, checked before raft-rs
    /// installs it: once installed, a bad one could only stop the node.
    fn check_raft_message(&self, msg: &Message) -> Result<(), &'static str> {
        match msg.get_msg_type() {
            MessageType::MsgSnapshot => {
                let snapshot = msg.get_snapshot();
                let ledger = Ledger::from_snapshot(
                    self.config.ledger.clone(),
                    &snapshot.data,
                    self.config.max_snapshot_bytes,
                )
                .map_err(|_| "snapshot data is not a ledger")?;
                if ledger.applied_index() != snapshot.get_metadata().index {
                    return Err("snapshot data is at another index");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_forward(&mut self, peer: Peer, f: ForwardProposal) {
        let sender = self.member_of_key(&peer.node_key).map(|m| NodeId(m.0));
        // A member may only propose under its own id.
        if sender.is_none() || f.entries.iter().any(|e| Some(e.proposal.node) != sender) {
            self.metrics.forwards_refused += 1;
            return;
        }
        if !self.is_leader() {
            return; // Dropped; the proposer retries towards the leader it learns of.
        }
        if !self.verified_admitters.contains(&peer.node_key) {
            let proven = self.meta.cluster_key.is_some_and(|cluster| {
                identity::verify_admitter_proof(&cluster, &peer.node_key, &f.admitter_proof).is_ok()
            });
            if !proven {
                tracing::debug!(peer = %peer.node_key.hash().short(), "forward without an admitter proof refused");
                self.metrics.forwards_refused += 1;
                return;
            }
            if self.verified_admitters.len() >= MAX_VERIFIED_ADMITTERS {
                self.verified_admitters.clear();
            }
            self.verified_admitters.insert(peer.node_key);
        }
        self.outbox.extend(f.entries.into_inner());
        if self.outbox.len() >= PROPOSAL_BATCH_MAX {
            self.flush_outbox();
        }
    }

    fn on_command(&mut self, command: LocalCommand) {
        match command {
            LocalCommand::JoinCluster {
                token,
                seeds,
                addrs,
            } => {
                if self.meta.member_id.is_some()
                    || self.joiner.as_ref().is_some_and(|j| !j.is_done())
                {
                    return self.reject_command(CommandError::AlreadyJoined);
                }
                tracing::info!(token = %token.hash(), seeds = seeds.len(), "joining");
                self.joiner = Some(Joiner::new(token, addrs, seeds, &self.config, self.now));
            }
            LocalCommand::AddJoinSeeds { seeds } => match self.joiner.as_mut() {
                Some(joiner) if !joiner.is_done() => joiner.add_seeds(&seeds),
                _ => tracing::debug!(seeds = seeds.len(), "no join under way: seeds dropped"),
            },
            LocalCommand::PromoteMember { member_id } => {
                let leader = self.leader();
                let Some(replica) = self.replica.as_mut() else {
                    return self.reject_command(CommandError::NotMember);
                };
                if !replica.is_leader() {
                    return self.reject_command(CommandError::NotLeader { leader });
                }
                if !replica.conf_state().learners.contains(&member_id.0) {
                    return self.reject_command(CommandError::NotALearner(member_id));
                }
                let voters = replica.conf_state().voters.len();
                if voters >= usize::try_from(self.config.max_raft_voters).unwrap_or(0) {
                    return self.reject_command(CommandError::TooManyVoters { voters });
                }
                let cc = conf_change([(ConfChangeType::AddNode, member_id.0)]);
                if replica.propose_conf_change(cc).is_err() {
                    self.reject_command(CommandError::Busy);
                }
            }
            LocalCommand::RevokeToken {
                hash,
                expires_at_unix_ms,
            } => {
                if self.meta.member_id.is_none() {
                    return self.reject_command(CommandError::NotMember);
                }
                if self.secrets.is_none() {
                    return self.reject_command(CommandError::NotAdmitting);
                }
                self.propose(
                    vec![Command::Abort {
                        hash,
                        expires_at_unix_ms,
                    }],
                    Owner::Revoke(hash),
                );
            }
            LocalCommand::CreateNamespace { salt } => self.create_namespace(salt),
            LocalCommand::IssueInvitation {
                namespace,
                expires_at_unix_ms,
                policy,
            } => self.issue_invitation(namespace, expires_at_unix_ms, policy),
            LocalCommand::JoinNamespace {
                invitation,
                deadline_ms,
            } => self.join_namespace(invitation, Some(deadline_ms), false),
            LocalCommand::JoinNamespaceWithRetry {
                invitation,
                max_total_ms,
            } => self.join_namespace(invitation, Some(max_total_ms), true),
            LocalCommand::LeaveNamespace { namespace } => self.leave_namespace(namespace),
        }
    }

    fn reject_command(&mut self, e: CommandError) {
        self.outputs
            .push_back(Output::Event(Event::CommandRejected(e)));
    }

    // ---- timers ----------------------------------------------------------------------------

    /// Runs every Raft tick due by now, in order; returns whether any ran. A driver that slept
    /// long gets at most two election timeouts of ticks: enough to notice a dead leader, bounded
    /// so one input never does unbounded work.
    fn catch_up_ticks(&mut self) -> bool {
        let Some(replica) = self.replica.as_mut() else {
            return false;
        };
        let now = self.now.instant;
        let tick_ms = self.config.raft_tick_ms;
        let max_ticks = 2 * self.config.election_ticks;
        let mut ticks = 0;
        while self.next_tick_at <= now && ticks < max_ticks {
            replica.tick();
            self.next_tick_at = self.next_tick_at.saturating_add_ms(tick_ms);
            ticks += 1;
        }
        if self.next_tick_at <= now {
            self.next_tick_at = now.saturating_add_ms(tick_ms);
        }
        ticks > 0
    }

    /// Wakes the driver for the first tick that can act, not for every tick.
    fn schedule_raft_tick(&mut self) {
        let tick_ms = self.config.raft_tick_ms;
        self.raft_due_at = self.replica.as_mut().and_then(|r| {
            let ticks = r.ticks_until_due()?;
            Some(
                self.next_tick_at
                    .saturating_add_ms(tick_ms.saturating_mul(ticks.saturating_sub(1))),
            )
        });
    }

    /// A learner's connection came or went: it may have lost what it was told.
    fn forget_learner(&mut self, node_key: &PublicKey) {
        if let Some(member) = self.member_of_key(node_key)
            && let Some(replica) = self.replica.as_mut()
        {
            replica.forget_learner(member.0);
        }
    }

    fn on_timers(&mut self, timer_fired: bool, ticked: bool) {
        let now = self.now.instant;
        if self.replica.is_some() {
            // Once per tick or after a membership change, not per input: it scans the
            // registry.
            if ticked || self.reconcile_due {
                self.reconcile_due = false;
                self.reconcile_learners();
            }
        }
        // Proofs queued by join requests: one verification pass for all of them, when the
        // driver comes back for the immediate timer (after the inputs that arrived together),
        // or as soon as a full queue's worth has arrived.
        let flush = self.listener.proofs_pending() > 0
            && (timer_fired || self.listener.proofs_pending() >= PROOF_BATCH_MAX);
        if flush {
            self.with_listener(|listener, ctx| listener.flush_proofs(ctx));
        }
        // Listener deadlines.
        if self.listener.next_deadline().is_some_and(|d| d <= now) {
            self.with_listener(|listener, ctx| listener.on_timer(ctx));
        }
        // Joiner.
        if let Some(joiner) = self.joiner.as_mut()
            && joiner.next_deadline().is_some_and(|d| d <= now)
        {
            let mut actions = Vec::new();
            let mut ctx = JoinerCtx {
                now: self.now,
                config: &self.config,
                node_key: &self.node_key,
                rng: &mut self.rng,
                actions: &mut actions,
            };
            joiner.on_timer(&mut ctx);
            self.run_joiner_actions(actions);
        }
        // Proposal retries.
        let due: Vec<ProposalId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let give_up = self.pending.get(&id).is_some_and(|p| {
                !matches!(p.owner, Owner::Admission(..)) && p.attempts >= DETACHED_ATTEMPTS
            });
            if give_up {
                if let Some(p) = self.pending.remove(&id)
                    && p.owner == Owner::Sweep
                {
                    self.sweep_pending = None;
                }
                continue;
            }
            self.send_proposal(id);
        }
        // The leader's sweeper.
        if self.is_leader() && self.next_sweep_at <= now {
            self.next_sweep_at = now.saturating_add_ms(self.config.sweep_interval_ms);
            if self.sweep_pending.is_none() {
                let max = usize::try_from(self.config.max_sweep_commands).unwrap_or(256);
                let commands = self.ledger.sweep(self.now.unix_ms, max);
                if !commands.is_empty() {
                    self.sweep_pending = self.propose(commands, Owner::Sweep);
                }
            }
        }
    }

    /// The leader adds every registry member that is not yet in the Raft group as a learner,
    /// one conf change at a time.
    fn reconcile_learners(&mut self) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if !replica.is_leader() || replica.has_pending_conf() {
            return;
        }
        let cs = replica.conf_state();
        if cs.learners.len() >= usize::try_from(self.config.max_raft_learners).unwrap_or(0) {
            return;
        }
        let in_group: std::collections::BTreeSet<u64> = cs
            .voters
            .iter()
            .chain(cs.learners.iter())
            .copied()
            .collect();
        let room = usize::try_from(self.config.max_raft_learners)
            .unwrap_or(0)
            .saturating_sub(cs.learners.len())
            .min(MAX_LEARNERS_PER_CONF_CHANGE);
        let missing: Vec<u64> = self
            .ledger
            .members()
            .map(|m| m.member_id.0)
            .filter(|id| !in_group.contains(id))
            .take(room)
            .collect();
        if !missing.is_empty() {
            // Several learners go in one change (a joint change that raft-rs leaves by itself):
            // under a burst of admissions that is two entries per batch, not one per member.
            let _ = replica.propose_conf_change(conf_change(
                missing
                    .into_iter()
                    .map(|id| (ConfChangeType::AddLearnerNode, id)),
            ));
        }
    }

    // ---- proposals -------------------------------------------------------------------------

    /// Queues a proposal and sends it (or forwards it) now if possible.
    fn propose(&mut self, commands: Vec<Command>, owner: Owner) -> Option<ProposalId> {
        let member = self.meta.member_id?;
        if self.pending.len() >= usize::try_from(self.config.max_pending_proposals).unwrap_or(0) {
            tracing::warn!("proposal queue full; dropping");
            return None;
        }
        self.proposal_counter += 1;
        // Boot count in the high half: a restarted node never reuses a proposal id.
        let seq = (self.meta.boot_count << 32) | (self.proposal_counter & 0xffff_ffff);
        let id = ProposalId {
            node: NodeId(member.0),
            seq,
        };
        let entry = LogEntry::new(id, self.now.unix_ms, commands).ok()?;
        self.pending.insert(
            id,
            Pending {
                entry,
                owner,
                retry_at: self.now.instant,
                attempts: 0,
            },
        );
        self.send_proposal(id);
        Some(id)
    }

    fn send_proposal(&mut self, id: ProposalId) {
        let retry_at = self
            .now
            .instant
            .saturating_add_ms(self.config.proposal_retry_ms);
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        p.retry_at = retry_at;
        if self.meta_durable_at.is_some() {
            return; // Not before our boot count is durable; the retry timer sends it.
        }
        p.attempts += 1;
        let entry = p.entry.clone();
        self.outbox.push(entry);
        if self.outbox.len() >= PROPOSAL_BATCH_MAX {
            self.flush_outbox();
        }
    }

    /// Group commit: proposals made while handling a burst of inputs go out together on the
    /// next (immediate) timer — one Raft append and one persist batch at the leader, one
    /// forward message from a follower — instead of one of each per proposal.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.outbox);
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if replica.is_leader() {
            for entry in &entries {
                let _ = replica.propose(wire::encode(entry));
            }
            return;
        }
        let leader = replica.leader_id();
        if leader == 0 {
            return; // No leader known: the retry timers send them again.
        }
        // A node without the cluster key cannot have the leader propose for it: its proposals
        // (a sweep begun while it led) wait for it to lead again, or are given up.
        let Some(admitter_proof) = self.admitter_proof else {
            return;
        };
        for chunk in entries.chunks(crate::messages::MAX_FORWARDED_ENTRIES) {
            let Ok(entries) = crate::wire::BoundedVec::try_from_vec(chunk.to_vec()) else {
                continue;
            };
            self.send_to_member(
                MemberId(leader),
                &PeerMessage::Forward(ForwardProposal {
                    entries,
                    admitter_proof,
                }),
            );
        }
    }

    fn route_outcomes(&mut self, applied: &Applied) {
        let Some(pending) = self.pending.remove(&applied.proposal) else {
            return;
        };
        match pending.owner {
            Owner::Admission(id, step) => {
                self.with_listener(|listener, ctx| {
                    listener.on_outcomes(ctx, id, step, &applied.outcomes)
                });
            }
            Owner::Sweep => self.sweep_pending = None,
            Owner::Revoke(hash) => {
                if let Some(outcome) = applied.outcomes.first() {
                    self.outputs.push_back(Output::Event(Event::TokenRevoked {
                        hash,
                        outcome: *outcome,
                    }));
                }
            }
            Owner::Detached => {}
        }
    }

    /// Runs `f` on the listener with a fresh context, then carries out its actions.
    fn with_listener(&mut self, f: impl FnOnce(&mut Listener, &mut ListenerCtx<'_>)) {
        let voters = self.conf().0;
        let mut actions = Vec::new();
        let mut ctx = ListenerCtx {
            now: self.now,
            config: &self.config,
            secrets: self.secrets.as_ref(),
            ledger: &self.ledger,
            voters: &voters,
            known: &self.known_members,
            rng: &mut self.rng,
            actions: &mut actions,
        };
        f(&mut self.listener, &mut ctx);
        self.run_listener_actions(actions);
    }

    fn run_listener_actions(&mut self, actions: Vec<ListenerAction>) {
        for action in actions {
            match action {
                ListenerAction::Propose {
                    admission,
                    step,
                    commands,
                } => {
                    if self
                        .propose(commands, Owner::Admission(admission, step))
                        .is_none()
                    {
                        tracing::warn!("admission proposal dropped; its deadline will answer");
                    }
                }
                ListenerAction::ProposeDetached(commands) => {
                    // Stop retrying the admission's other proposals: it has finished.
                    let _ = self.propose(commands, Owner::Detached);
                }
                ListenerAction::Reply(peer, message) => self.transmit(peer, &message),
                ListenerAction::Finished(id, record) => {
                    // The admission is over: stop retrying its proposals. One already in the
                    // log may still commit; the ledger keeps that safe (a lost reply is served
                    // again, a stray lease is reverted by the sweeper).
                    if let Some(id) = id {
                        self.pending
                            .retain(|_, p| !matches!(p.owner, Owner::Admission(a, _) if a == id));
                    }
                    self.count_admission(&record);
                    self.outputs
                        .push_back(Output::Event(Event::Admission(record)));
                }
            }
        }
    }

    fn count_admission(&mut self, record: &AdmissionRecord) {
        match record.result {
            Ok(_) => self.metrics.admissions_granted += 1,
            Err(reason) => {
                *self
                    .metrics
                    .admissions_rejected
                    .entry(reason.as_str())
                    .or_default() += 1;
            }
        }
    }

    fn run_joiner_actions(&mut self, actions: Vec<JoinerAction>) {
        for action in actions {
            match action {
                JoinerAction::Send(peer, message) => self.transmit(peer, &message),
                JoinerAction::Failed(failure) => {
                    tracing::warn!(%failure, "join failed");
                    self.outputs
                        .push_back(Output::Event(Event::JoinFailed(failure)));
                }
                JoinerAction::Admitted(accepted) => self.become_member(accepted),
                JoinerAction::Follow(members) => {
                    for member in members {
                        match self.peer_by_key.get(&member.node_key) {
                            // Already connected: no `Connected` will come for it.
                            Some(peer) => {
                                if let Some(joiner) = self.joiner.as_mut() {
                                    joiner.on_seed_connected(*peer, &member.node_key);
                                }
                            }
                            None => self.outputs.push_back(Output::Connect {
                                member_id: member.member_id,
                                node_key: member.node_key,
                                addrs: member.addrs,
                            }),
                        }
                    }
                }
            }
        }
    }

    /// Admitted: persist who we are and start a (learner) replica with an empty log; the
    /// leader catches it up by snapshot.
    fn become_member(&mut self, accepted: crate::messages::JoinAccepted) {
        let member_id = accepted.member_id;
        self.meta.member_id = Some(member_id);
        self.meta.cluster_key = Some(accepted.cluster_key);
        self.meta.credential = Some(accepted.credential.clone());
        self.known_members = accepted.members.to_vec();
        self.meta.known_members = self.known_members.clone();
        match Replica::new(
            member_id.0,
            RaftLog::default(),
            0,
            Self::replica_config(&self.config),
            self.rng.child_indexed("raft", self.meta.boot_count),
        ) {
            Ok(replica) => self.replica = Some(replica),
            Err(e) => return self.set_fatal(format!("cannot start replica: {e}")),
        }
        self.next_tick_at = self.now.instant;
        self.persist_meta();
        tracing::info!(member = member_id.0, "admitted");
        self.outputs
            .push_back(Output::Event(Event::JoinAdmitted { member_id }));
    }

    // ---- Raft ------------------------------------------------------------------------------

    fn drive(&mut self) {
        loop {
            let Some(replica) = self.replica.as_mut() else {
                return;
            };
            if replica.snapshot_wanted() {
                replica.offer_snapshot(self.ledger.applied_index(), self.ledger.snapshot());
            }
            let mut work = match replica.ready_work() {
                Ok(Some(work)) => work,
                Ok(None) => break,
                Err(e) => return self.set_fatal(format!("raft ready: {e}")),
            };
            let send_now = std::mem::take(&mut work.send_now);
            if let Some(snapshot) = work.installed_snapshot.take() {
                match Ledger::from_snapshot(
                    self.config.ledger.clone(),
                    &snapshot.data,
                    self.config.max_snapshot_bytes,
                ) {
                    Ok(ledger) => self.ledger = ledger,
                    Err(e) => return self.set_fatal(format!("snapshot from leader: {e}")),
                }
                // The state machine now stands at the snapshot: raft-rs must learn it (once the
                // snapshot is durable), or a later campaign reads "unapplied" entries that were
                // compacted away (found by the simulator: snapshot-install-keeps-raft-applied-behind).
                self.snapshot_applied_at = Some(snapshot.get_metadata().index);
            }
            let number = if work.batch.is_empty() {
                None
            } else {
                let n = self.take_batch_number();
                let mut batch = std::mem::take(&mut work.batch);
                batch.number = n;
                self.outputs.push_back(Output::Persist(batch));
                Some(n)
            };
            let Some(replica) = self.replica.as_mut() else {
                return;
            };
            let after_persist = replica.batch_emitted(&mut work, number);
            for m in send_now.into_iter().chain(after_persist) {
                self.send_raft(m);
            }
            self.apply_committed(work);
        }
        self.observe_leadership();
        self.maybe_compact();
    }

    fn apply_committed(&mut self, mut work: ReadyWork) {
        let committed = std::mem::take(&mut work.committed);
        let Some(last) = committed.last().map(|e| e.index) else {
            return;
        };
        for entry in committed {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.ledger.advance_applied(entry.index);
                }
                EntryType::EntryNormal => match wire::decode_exact::<LogEntry>(&entry.data) {
                    Ok(log_entry) => {
                        let applied = self.ledger.apply(entry.index, &log_entry);
                        let mine = self.meta.member_id.map(|m| NodeId(m.0));
                        if Some(applied.proposal.node) == mine
                            && applied.disposition != Disposition::AlreadyApplied
                        {
                            self.route_outcomes(&applied);
                        }
                    }
                    Err(_) => {
                        // Every replica sees the same bytes and skips them alike.
                        self.metrics.bad_entries += 1;
                        self.ledger.advance_applied(entry.index);
                    }
                },
                EntryType::EntryConfChangeV2 => {
                    self.ledger.advance_applied(entry.index);
                    // raft-rs's own error is kept: "malformed" hid a conf change applied twice.
                    let applied = match (raft_wire::local_conf_change(&entry), &mut self.replica) {
                        (Ok(cc), Some(r)) => r.apply_conf_change(&cc).map_err(|e| e.to_string()),
                        (Err(e), _) => Err(e.to_string()),
                        (Ok(_), None) => Err("no replica".to_owned()),
                    };
                    match applied {
                        Ok(cs) => {
                            self.reconcile_due = true;
                            self.outputs.push_back(Output::Event(Event::ConfChanged {
                                voters: cs.voters,
                                learners: cs.learners,
                            }));
                        }
                        Err(e) => {
                            return self
                                .set_fatal(format!("conf change at index {}: {e}", entry.index));
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    // We only ever propose v2 conf changes.
                    self.ledger.advance_applied(entry.index);
                }
            }
        }
        if let Some(replica) = self.replica.as_mut() {
            replica.advance_applied(last);
        }
    }

    fn observe_leadership(&mut self) {
        let Some(replica) = self.replica.as_ref() else {
            return;
        };
        let current = (replica.leader_id(), replica.term());
        if current != self.last_leader {
            self.last_leader = current;
            if replica.is_leader() {
                // A new leader sweeps soon, rather than a full interval later.
                self.next_sweep_at = self.now.instant;
            }
            self.outputs.push_back(Output::Event(Event::LeaderChanged {
                leader: current.0,
                term: current.1,
            }));
        }
    }

    fn maybe_compact(&mut self) {
        let applied = self.ledger.applied_index();
        let threshold = self.config.compact_after_entries;
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if !replica.all_persisted() || applied < replica.first_log_index() + threshold {
            return;
        }
        let Some(snapshot) = replica.compact(applied, self.ledger.snapshot()) else {
            return;
        };
        let wire_snapshot = match raft_wire::snapshot_to_wire(&snapshot) {
            Ok(w) => w,
            Err(e) => return self.set_fatal(format!("snapshot too large to persist: {e}")),
        };
        let number = self.take_batch_number();
        self.outputs.push_back(Output::Persist(PersistBatch {
            number,
            snapshot: Some(wire_snapshot),
            ..PersistBatch::default()
        }));
        // Raft has no ready for this batch; track it so later acknowledgements stay in order.
        if let Some(replica) = self.replica.as_mut() {
            replica.track_local_batch(number);
        }
    }

    // ---- sending ---------------------------------------------------------------------------

    fn send_raft(&mut self, m: Message) {
        let to = MemberId(m.to);
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let mut m = m;
        if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
            m.reject = self.log_behind_leader_commit;
        }
        if self.replica.as_mut().is_some_and(|r| !r.should_send(&m)) {
            self.metrics.quiet_heartbeats += 1;
            return;
        }
        match raft_wire::to_wire(&m) {
            Ok(w) => {
                let sent = self.send_to_member(to, &PeerMessage::Raft(w));
                if let Some(replica) = self.replica.as_mut() {
                    if !sent {
                        replica.report_unreachable(to.0);
                        if is_snapshot {
                            // raft-rs pauses a follower in Snapshot state until told; without
                            // this it would wait for a snapshot that was never sent, for good.
                            replica.report_snapshot_failed(to.0);
                        }
                    } else if is_snapshot {
                        // We cannot know delivery; raft-rs retries if the follower rejects.
                        replica.report_snapshot_finished(to.0);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "raft message not representable"),
        }
    }

    /// Sends to a member over its connection, or asks the driver to connect. Returns whether
    /// a connection existed.
    fn send_to_member(&mut self, member: MemberId, message: &PeerMessage) -> bool {
        let info = self
            .ledger
            .member(member)
            .map(|m| (m.node_key, m.addrs.clone()))
            .or_else(|| {
                self.known_members
                    .iter()
                    .find(|m| m.member_id == member)
                    .map(|m| (m.node_key, m.addrs.clone()))
            });
        let Some((key, addrs)) = info else {
            return false;
        };
        if let Some(peer) = self.peer_by_key.get(&key).copied() {
            self.transmit(peer, message);
            return true;
        }
        let due = self
            .connect_asked
            .get(&member)
            .is_none_or(|at| *at <= self.now.instant);
        if due {
            self.connect_asked.insert(
                member,
                self.now
                    .instant
                    .saturating_add_ms(self.config.connect_retry_ms),
            );
            self.outputs.push_back(Output::Connect {
                member_id: member,
                node_key: key,
                addrs,
            });
        }
        false
    }

    fn transmit(&mut self, to: PeerId, message: &PeerMessage) {
        if self.outputs.len() >= usize::try_from(self.config.max_output_queue).unwrap_or(usize::MAX)
        {
            // The network may drop anything; the queue must stay bounded.
            self.metrics.transmits_dropped += 1;
            return;
        }
        self.outputs.push_back(Output::Transmit {
            to,
            bytes: message.encode(),
        });
    }

    fn set_fatal(&mut self, reason: String) {
        tracing::error!(%reason, "fatal");
        self.fatal = Some(reason.clone());
        self.outputs.push_back(Output::Event(Event::Fatal(reason)));
    }

    fn check_invariants(&mut self) {
        if cfg!(debug_assertions) {
            // The ledger's check is O(records): run it whenever the ledger changed.
            let applied = self.ledger.applied_index();
            if applied != self.ledger_checked_at {
                self.ledger_checked_at = applied;
                debug_assert_eq!(self.ledger.check_invariants(), Ok(()));
            }
            debug_assert!(
                self.pending.len()
                    <= usize::try_from(self.config.max_pending_proposals).unwrap_or(usize::MAX)
            );
            debug_assert!(
                self.listener.in_flight()
                    <= usize::try_from(self.config.max_inflight_admissions).unwrap_or(usize::MAX)
            );
            if !self.ns_dirty.is_empty() {
                self.check_ns_invariants();
            }
        }
    }
}

/// Most learners one conf change adds (bounds the entry and the joint step it takes).
const MAX_LEARNERS_PER_CONF_CHANGE: usize = 64;

/// One conf change of `changes`, in order.
fn conf_change(changes: impl IntoIterator<Item = (ConfChangeType, u64)>) -> ConfChangeV2 {
    let changes: Vec<ConfChangeSingle> = changes
        .into_iter()
        .map(|(ty, node_id)| {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ty);
            single.node_id = node_id;
            single
        })
        .collect();
    let mut cc = ConfChangeV2::default();
    cc.set_changes(changes.into());
    cc
}

fn decode_error_label(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::FrameTooLarge { .. } => "frame_too_large",
        DecodeError::Truncated => "truncated",
        DecodeError::UnsupportedVersion { .. } => "unsupported_version",
        DecodeError::UnknownKind(_) => "unknown_kind",
        DecodeError::WrongKind { .. } => "wrong_kind",
        DecodeError::CollectionTooLong { .. } => "collection_too_long",
        DecodeError::TrailingBytes(_) => "trailing_bytes",
        DecodeError::Malformed(_) => "malformed",
    }
}

/// The member spec a founder or joiner advertises.
pub fn member_spec(node_key: PublicKey, role: Role, addrs: Addrs) -> MemberSpec {
    MemberSpec {
        node_key,
        role,
        addrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame may hold a whole token: `Debug` of an input or output shows its length and hash.
    #[test]
    fn debug_never_shows_frame_bytes_or_the_seed() {
        let secret = b"TOKEN-TAG-SECRET-0123456789".to_vec();
        let hex_secret = crate::crypto::to_hex(&secret);
        let input = format!(
            "{:?}",
            Input::Received {
                from: PeerId(1),
                bytes: secret.clone()
            }
        );
        let output = format!(
            "{:?}",
            Output::Transmit {
                to: PeerId(1),
                bytes: secret.clone()
            }
        );
        for shown in [&input, &output] {
            assert!(shown.contains("27 bytes, sha256 "), "{shown}");
            assert!(!shown.contains("84, 79, 75"), "{shown}"); // "TOK" as a byte list
            assert!(!shown.contains(&hex_secret[..12]), "{shown}");
        }
        let setup = NodeSetup {
            config: Config::default(),
            seed: NodeSeed::from_u64(0x1234_5678_9abc_def0),
            node_key: SecretKey::from_secret_bytes(&[3; 32]),
            secrets: None,
        };
        let shown = format!("{setup:?}");
        assert!(
            !shown.contains(&0x1234_5678_9abc_def0_u64.to_string()),
            "{shown}"
        );
        assert!(!shown.contains("123456789abcdef0"), "{shown}");
        assert!(!shown.contains(&setup.seed.expose_hex()[..8]), "{shown}");
        assert!(shown.contains(&setup.seed.fingerprint().short()), "{shown}");
    }

    /// The namespace admin key a fresh node seeded with `seed` generates.
    fn admin_key_from(seed: NodeSeed) -> crate::crypto::PublicKey {
        let now = Now::new(Instant::ZERO, 1_700_000_000_000);
        let setup = NodeSetup {
            config: Config::default(),
            seed,
            node_key: SecretKey::from_secret_bytes(&[3; 32]),
            secrets: None,
        };
        let mut node =
            Node::new_joiner(setup, now).expect("invariant: the default config is valid");
        node.handle(
            now,
            Input::Command(LocalCommand::CreateNamespace { salt: [1; 16] }),
        );
        // The namespace is announced once its admin key is durable.
        let batches: Vec<u64> = std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                Output::Persist(batch) => Some(batch.number),
                _ => None,
            })
            .collect();
        for number in batches {
            node.handle(now, Input::Persisted(number));
        }
        std::iter::from_fn(|| node.poll_output())
            .find_map(|o| match o {
                Output::Event(Event::NamespaceCreated { admin, .. }) => Some(admin),
                _ => None,
            })
            .expect("invariant: a fresh node announces its namespace once the key is durable")
    }

    /// All 256 bits of the seed reach the keys the node generates: seeds differing only in
    /// their last byte give different admin keys (a u64 seed would have ignored 24 bytes).
    #[test]
    fn every_seed_byte_reaches_the_namespace_admin_key() {
        let a = [0x11; 32];
        let mut b = a;
        b[31] ^= 0x80;
        let key_a = admin_key_from(NodeSeed::from_bytes(a));
        assert_eq!(
            key_a,
            admin_key_from(NodeSeed::from_bytes(a)),
            "deterministic"
        );
        assert_ne!(key_a, admin_key_from(NodeSeed::from_bytes(b)));
    }
}
