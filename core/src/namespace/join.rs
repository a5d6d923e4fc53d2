//! The namespace join machine, its durable announce outbox, and the retry wrapper.
//!
//! ## One budget, no blind sleeps
//!
//! A [`JoinMachine`] runs one join attempt inside one deadline (`budget_ms`, by default
//! `join_deadline_ms`). Every wait ends on an event or on a timer derived from that budget:
//!
//! ```text
//!  t0 ─ start ─┬─ verify invitation ──✗──────────────────────────────▶ Failed(InvalidInvitation)
//!              ├─ Subscribe, PersistIdentity (if new), Publish(Probe) (again every probe_retry_ms)
//!  Probing     ├─ fresh verified beacon (cached now, or arriving) ───▶ JoinStarted
//!              └─ t0 + min(fast_path_max_ms, budget/2) ──────────────▶ Failed(NoReadyPeers)
//!  Backfilling ── Send BackfillRequest ▶ partner ◀ BackfillBatch …   until Complete
//!              └─ no batch for backfill_silence_ms ─▶ switch to another fresh partner (or ask again)
//!  MeshWait    ── connected subscribers ≥ min(mesh_low, known subscribers), identity durable
//!  AwaitingAcks── MemberJoined: PersistOutbox + Publish; Ack (verified member) …
//!              ├─ acks ≥ min_acks ───────────────────────────────────▶ Ready(ReadyReport)
//!              └─ min(now + ack_wait_ms, deadline) ──────────────────▶ Failed(AcksMissing)
//!  any phase   ── t0 + budget ───────────────────────────────────────▶ Failed(DeadlineExceeded)
//! ```
//!
//! Unused fast-path time rolls over: the fast path only bounds the wait for a beacon, and every
//! later phase runs against the attempt's single deadline.
//!
//! ## The outbox
//!
//! The `MemberJoined` op goes to an [`AnnounceOutbox`] that is persisted (`PersistOutbox`) and
//! re-published every `announce_retry_ms` until an ack from a member, or a member's beacon
//! naming it or a head descending from it, proves it is in that member's durable log (both
//! vouch for durable ops only); then `ClearOutbox`. Another op descending from it proves
//! nothing: its author may be a joiner that heard ours while no member holds it. It outlives the join's verdict: a join that failed for lack of acks
//! keeps announcing, and a restarted node rebuilds it with [`AnnounceOutbox::resume`].
//!
//! ## Retries
//!
//! [`RetryingJoin`] retries only `NoReadyPeers` (nobody was ready: a later attempt may find
//! someone). Delays grow from `retry_initial_ms`, doubling to `retry_max_ms`, plus up to
//! `retry_jitter_percent` of jitter from the seeded RNG. Each attempt gets
//! `min(join_deadline_ms, remaining)` where `remaining` runs to `start + retry_max_total_ms`,
//! measured after the (jittered) delay, so no attempt ever ends past the total. A fresh beacon
//! arriving during a delay ends the delay early.

use std::collections::BTreeSet;

use rand::Rng;

use crate::crypto::{PublicKey, SecretKey};
use crate::node::PeerId;
use crate::rng::SeededRng;
use crate::time::{Instant, Now};

use super::backfill::{self, BackfillBatch, Progress};
use super::governance::{Governance, InsertError, Inserted, OpRejection, OrderKey};
use super::ops::{InvitationError, MAX_PARENTS, NamespaceId, Op, OpBody, OpHash, SignedInvitation};
use super::readiness::{Ack, Beacon, BeaconAccepted, BeaconCache, ReadinessProbe};
use super::{NamespaceConfig, NamespaceMessage};

/// A node's key in one namespace: created once, persisted, reused for every join and op.
#[derive(Clone, Debug)]
pub struct NamespaceIdentity {
    key: SecretKey,
    state: IdentityState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdentityState {
    /// Generated now; must be persisted before it signs anything others keep.
    New,
    /// `PersistIdentity` was emitted; waiting for `IdentityPersisted`.
    Persisting,
    /// Durable.
    Durable,
}

impl NamespaceIdentity {
    /// The stored key if there is one (idempotent: the same stored key is always reused),
    /// else a fresh key from `rng` that the join machine will ask to persist.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::namespace::join::NamespaceIdentity;
    /// use portcullis_core::rng::SeededRng;
    /// let mut rng = SeededRng::from_u64(1);
    /// let fresh = NamespaceIdentity::provision(None, &mut rng);
    /// assert!(fresh.is_new());
    /// let again = NamespaceIdentity::provision(Some(fresh.key().clone()), &mut rng);
    /// assert_eq!(again.public(), fresh.public());
    /// assert!(!again.is_new());
    /// ```
    pub fn provision(stored: Option<SecretKey>, rng: &mut SeededRng) -> NamespaceIdentity {
        match stored {
            Some(key) => NamespaceIdentity::durable(key),
            None => NamespaceIdentity {
                key: SecretKey::generate(rng),
                state: IdentityState::New,
            },
        }
    }

    /// A key whose persist batch was emitted but is not yet durable.
    pub fn persisting(key: SecretKey) -> NamespaceIdentity {
        NamespaceIdentity {
            key,
            state: IdentityState::Persisting,
        }
    }

    /// A key that is already durable.
    pub fn durable(key: SecretKey) -> NamespaceIdentity {
        NamespaceIdentity {
            key,
            state: IdentityState::Durable,
        }
    }

    /// The secret key (signs ops and nothing else).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// The public key: our member key in the namespace.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Whether the key was generated by this provisioning and is not yet durable.
    pub fn is_new(&self) -> bool {
        self.state == IdentityState::New
    }

    /// Whether the key is known to be durable.
    pub fn is_durable(&self) -> bool {
        self.state == IdentityState::Durable
    }
}

/// Connection and subscription facts about peers, fed by the caller. Bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshFacts {
    connected: BTreeSet<PeerId>,
    subscribed: BTreeSet<PeerId>,
}

impl MeshFacts {
    /// Peers known to subscribe to the namespace topic.
    pub fn known_subscribers(&self) -> usize {
        self.subscribed.len()
    }

    /// Subscribed peers we are connected to.
    pub fn connected_subscribers(&self) -> usize {
        self.subscribed.intersection(&self.connected).count()
    }

    /// Whether enough subscribers are connected: `min(mesh_low, known subscribers)`.
    pub fn is_ready(&self, mesh_low: usize) -> bool {
        self.connected_subscribers() >= mesh_low.min(self.known_subscribers())
    }

    /// Applies a fact from `input`; returns whether it was one. Facts about new peers beyond
    /// `max_peers` are ignored.
    pub fn apply(&mut self, input: &JoinInput, max_peers: usize) -> bool {
        fn add(set: &mut BTreeSet<PeerId>, peer: PeerId, max: usize) {
            if set.len() < max || set.contains(&peer) {
                set.insert(peer);
            }
        }
        match input {
            JoinInput::PeerConnected(p) => add(&mut self.connected, *p, max_peers),
            JoinInput::PeerDisconnected(p) => {
                self.connected.remove(p);
            }
            JoinInput::PeerSubscribed(p) => add(&mut self.subscribed, *p, max_peers),
            JoinInput::PeerUnsubscribed(p) => {
                self.subscribed.remove(p);
            }
            _ => return false,
        }
        true
    }
}

/// An input to a join (or outbox, or retry wrapper).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JoinInput {
    /// `next_deadline` was reached.
    Timer,
    /// A beacon arrived from `from` (direct answer or topic).
    Beacon {
        /// The delivering peer.
        from: PeerId,
        /// The beacon.
        beacon: Beacon,
    },
    /// A backfill batch arrived.
    Batch {
        /// The delivering peer.
        from: PeerId,
        /// The batch.
        batch: BackfillBatch,
    },
    /// An ack arrived.
    Ack {
        /// The delivering peer.
        from: PeerId,
        /// The ack.
        ack: Ack,
    },
    /// A governance op arrived on the topic.
    Op {
        /// The delivering peer.
        from: PeerId,
        /// The op.
        op: Op,
    },
    /// The transport connected to `peer`.
    PeerConnected(PeerId),
    /// The transport lost `peer`.
    PeerDisconnected(PeerId),
    /// `peer` subscribes to the namespace topic.
    PeerSubscribed(PeerId),
    /// `peer` no longer subscribes.
    PeerUnsubscribed(PeerId),
    /// The identity key from `PersistIdentity` is durable.
    IdentityPersisted,
}

/// What a join asks the node to do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JoinAction {
    /// Publish on the namespace's topic.
    Publish(NamespaceId, NamespaceMessage),
    /// Send to one peer.
    Send(PeerId, NamespaceMessage),
    /// Subscribe to the namespace's topic (idempotent).
    Subscribe(NamespaceId),
    /// Persist this namespace key (once; report `IdentityPersisted`). `Debug` shows only the
    /// public key.
    PersistIdentity {
        /// The namespace.
        namespace: NamespaceId,
        /// The key to store.
        key: SecretKey,
    },
    /// Persist this op as the namespace's announce outbox (resume it after a restart with
    /// [`AnnounceOutbox::resume`]).
    PersistOutbox(Op),
    /// The announce is proven included: delete the persisted outbox.
    ClearOutbox {
        /// The namespace.
        namespace: NamespaceId,
        /// The op that was in it.
        op: OpHash,
    },
    /// Tell the application.
    Event(JoinEvent),
}

/// Where a join got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum JoinPhase {
    /// Waiting for a fresh verified beacon.
    Probing,
    /// Copying the partner's log.
    Backfilling,
    /// Waiting for connected subscribers (and a durable identity).
    MeshWait,
    /// Announced; collecting acks.
    AwaitingAcks,
    /// Finished (the verdict was emitted).
    Finished,
}

/// What proved an announce is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InclusionProof {
    /// A member's verified ack.
    Ack(PublicKey),
    /// A member's verified beacon names it, or a head that descends from it.
    Beacon(PublicKey),
}

/// Why a partner was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchReason {
    /// No batch within `backfill_silence_ms`.
    Silent,
    /// It said it had sent everything, but we are not complete.
    Incomplete,
    /// Its beacon's heads and count disagree with the ops it sent.
    Inconsistent,
}

/// The result of a join, with real values (partial on failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyReport {
    /// The namespace.
    pub namespace: NamespaceId,
    /// Our heads at the end, sorted.
    pub final_heads: Vec<OpHash>,
    /// Valid ops applied in our replica at the end.
    pub applied_through: u64,
    /// Members in our replica at the end.
    pub members_learned: u64,
    /// Members whose verified ack we hold, sorted.
    pub acked_by: Vec<PublicKey>,
    /// Time from the attempt's start to the verdict.
    pub elapsed_ms: u64,
    /// The backfill partner's member key, if one was chosen.
    pub partner: Option<PublicKey>,
    /// Our `MemberJoined` op, if it was announced.
    pub announced: Option<OpHash>,
    /// The phase the join was in when it finished.
    pub phase: JoinPhase,
    /// Which attempt this was (1 for the first).
    pub attempt: u32,
}

/// Why a join failed. Each carries who is at fault in its doc.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinFailReason {
    /// The invitation is forged or expired (the inviter or caller is at fault; final).
    #[error("invalid invitation: {0}")]
    InvalidInvitation(InvitationError),
    /// No fresh verified beacon within the fast-path budget (transient: retried).
    #[error("no ready peers after {waited_ms} ms")]
    NoReadyPeers {
        /// How long we waited.
        waited_ms: u64,
    },
    /// The budget ran out in `phase` (transient).
    #[error("deadline exceeded while {phase:?}")]
    DeadlineExceeded {
        /// Where.
        phase: JoinPhase,
    },
    /// The ack wait ended with fewer acks than the policy needs (transient; the outbox keeps
    /// announcing).
    #[error("{received} of {required} acks")]
    AcksMissing {
        /// Distinct members that acked.
        received: usize,
        /// Acks needed.
        required: usize,
    },
    /// The namespace's log refuses our `MemberJoined` (policy: invitation revoked, used, not
    /// from an admin, or expired by the time we announced; final).
    #[error("announce rejected by the log: {0}")]
    AnnounceRejected(OpRejection),
    /// Our replica could not take our own op (log full; an operator must act).
    #[error("replica refused the announce: {0}")]
    ReplicaRefused(InsertError),
}

impl JoinFailReason {
    /// Whether [`RetryingJoin`] tries again (only `NoReadyPeers`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, JoinFailReason::NoReadyPeers { .. })
    }

    /// A stable lowercase name, for metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            JoinFailReason::InvalidInvitation(_) => "invalid_invitation",
            JoinFailReason::NoReadyPeers { .. } => "no_ready_peers",
            JoinFailReason::DeadlineExceeded { .. } => "deadline_exceeded",
            JoinFailReason::AcksMissing { .. } => "acks_missing",
            JoinFailReason::AnnounceRejected(_) => "announce_rejected",
            JoinFailReason::ReplicaRefused(_) => "replica_refused",
        }
    }
}

/// A failed join: why, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("join failed: {reason}")]
pub struct JoinFailure {
    /// Why.
    pub reason: JoinFailReason,
    /// The partial report.
    pub report: ReadyReport,
}

/// What happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinEvent {
    /// A fresh verified beacon picked the backfill partner.
    JoinStarted {
        /// The partner's transport peer.
        partner: PeerId,
        /// The partner's member key.
        partner_key: PublicKey,
        /// The partner's heads (backfill target).
        partner_head: Vec<OpHash>,
        /// The partner's `applied_through` (backfill target).
        partner_applied: u64,
    },
    /// The backfill partner was replaced.
    PartnerSwitched {
        /// The old partner.
        from: PublicKey,
        /// The new partner.
        to: PublicKey,
        /// Why.
        reason: SwitchReason,
    },
    /// We hold the partner's whole causal past.
    BackfillComplete {
        /// Our count then.
        applied_through: u64,
    },
    /// `MemberJoined` published.
    Announced {
        /// Its hash.
        op: OpHash,
    },
    /// The outbox's op is proven included; the outbox is cleared.
    AnnounceIncluded {
        /// The op.
        op: OpHash,
        /// What proved it.
        proof: InclusionProof,
    },
    /// An attempt ended with `NoReadyPeers`; the next one starts after `delay_ms`.
    Retrying {
        /// The attempt that starts next.
        next_attempt: u32,
        /// The delay, jitter included.
        delay_ms: u64,
        /// The failure being retried.
        failure: JoinFailure,
    },
    /// Joined: the ack policy is met.
    Ready(ReadyReport),
    /// The join failed for good.
    Failed(JoinFailure),
}

/// What a join needs to decide.
#[derive(Debug)]
pub struct JoinCtx<'a> {
    /// Now.
    pub now: Now,
    /// Namespace configuration.
    pub config: &'a NamespaceConfig,
    /// Randomness for request ids and jitter (a child RNG of the node's).
    pub rng: &'a mut SeededRng,
    /// The namespace's beacon cache (long-lived: beacons cached before the join count).
    pub beacons: &'a mut BeaconCache,
    /// Where actions go.
    pub actions: &'a mut Vec<JoinAction>,
}

/// The announce outbox: one `MemberJoined` op, re-published until proven included.
///
/// # Example: resume after a restart
/// ```
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::NamespaceConfig;
/// use portcullis_core::namespace::join::{AnnounceOutbox, JoinAction, JoinInput};
/// use portcullis_core::namespace::ops::{InvitePolicy, Op, OpBody, SignedInvitation};
/// use portcullis_core::namespace::readiness::Ack;
/// use portcullis_core::node::PeerId;
/// use portcullis_core::rng::SeededRng;
/// use portcullis_core::time::{Instant, Now};
///
/// let mut rng = SeededRng::from_u64(1);
/// let (admin, me) = (SecretKey::generate(&mut rng), SecretKey::generate(&mut rng));
/// let create = Op::create(&admin, [0; 16], 1_000);
/// let ns = create.namespace;
/// let inv = SignedInvitation::issue(&admin, ns, 60_000, [1; 16], InvitePolicy::Reusable);
/// let op = Op::sign(&me, ns, Op::canonical_parents(vec![create.hash()]).unwrap(), 2_000,
///     OpBody::MemberJoined { member: me.public(), invitation: inv });
///
/// let config = NamespaceConfig::default();
/// let now = Now::new(Instant::from_millis(0), 3_000);
/// let mut actions = Vec::new();
/// let mut outbox = AnnounceOutbox::resume(op.clone(), now, &config, &mut actions).unwrap();
/// assert!(matches!(actions[0], JoinAction::Publish(..)));
/// let ack = Ack::sign(&admin, ns, op.hash()); // the inviter is trusted from the invitation
/// outbox.handle(now, &JoinInput::Ack { from: PeerId(1), ack }, &mut actions);
/// assert!(outbox.is_done());
/// assert_eq!(outbox.next_deadline(), None);
/// ```
#[derive(Clone, Debug)]
pub struct AnnounceOutbox {
    namespace: NamespaceId,
    op: Op,
    op_hash: OpHash,
    author: PublicKey,
    /// Keys whose acks and beacons count when the outbox runs on its own.
    trusted: BTreeSet<PublicKey>,
    retry_ms: u64,
    next_publish_at: Instant,
    done: bool,
}

/// Why an op cannot go into an outbox. The caller is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Only `MemberJoined` ops are announced through the outbox.
    #[error("only member_joined ops go through the announce outbox")]
    NotAnAnnounce,
}

/// Most keys an outbox trusts on its own.
const MAX_OUTBOX_TRUSTED: usize = 1_024;

impl AnnounceOutbox {
    /// An outbox for `op` that was just published; next publish after `announce_retry_ms`.
    pub fn new(op: Op, now: Now, config: &NamespaceConfig) -> Result<AnnounceOutbox, OutboxError> {
        let OpBody::MemberJoined { invitation, .. } = &op.body else {
            return Err(OutboxError::NotAnAnnounce);
        };
        let trusted = BTreeSet::from([invitation.invitation.inviter]);
        Ok(AnnounceOutbox {
            namespace: op.namespace,
            op_hash: op.hash(),
            author: op.author,
            trusted,
            retry_ms: config.announce_retry_ms,
            next_publish_at: now.instant.saturating_add_ms(config.announce_retry_ms),
            op,
            done: false,
        })
    }

    /// Rebuilds the outbox from the persisted op after a restart, and publishes it at once.
    /// It trusts the invitation's inviter; add members known from a persisted replica with
    /// [`AnnounceOutbox::trust`].
    pub fn resume(
        op: Op,
        now: Now,
        config: &NamespaceConfig,
        actions: &mut Vec<JoinAction>,
    ) -> Result<AnnounceOutbox, OutboxError> {
        let mut outbox = AnnounceOutbox::new(op, now, config)?;
        outbox.publish(now, actions);
        tracing::info!(ns = %outbox.namespace, op = %outbox.op_hash, "announce outbox resumed");
        Ok(outbox)
    }

    /// The announced op's hash.
    pub fn op_hash(&self) -> OpHash {
        self.op_hash
    }

    /// The announced op.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Whether the op is proven included (nothing left to do).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Also accept acks and beacons from `member` (bounded).
    pub fn trust(&mut self, member: PublicKey) {
        if self.trusted.len() < MAX_OUTBOX_TRUSTED {
            self.trusted.insert(member);
        }
    }

    /// When the next re-publish is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.done).then_some(self.next_publish_at)
    }

    fn publish(&mut self, now: Now, actions: &mut Vec<JoinAction>) {
        self.next_publish_at = now.instant.saturating_add_ms(self.retry_ms);
        actions.push(JoinAction::Publish(
            self.namespace,
            NamespaceMessage::Op(self.op.clone()),
        ));
    }

    /// Re-publishes if due.
    pub fn on_timer(&mut self, now: Now, actions: &mut Vec<JoinAction>) {
        if !self.done && now.instant >= self.next_publish_at {
            tracing::debug!(ns = %self.namespace, op = %self.op_hash, "announce re-published");
            self.publish(now, actions);
        }
    }

    /// Records proof of inclusion: clears the outbox (once).
    pub fn mark_included(&mut self, proof: InclusionProof, actions: &mut Vec<JoinAction>) {
        if self.done {
            return;
        }
        self.done = true;
        tracing::info!(ns = %self.namespace, op = %self.op_hash, ?proof, "announce included");
        actions.push(JoinAction::ClearOutbox {
            namespace: self.namespace,
            op: self.op_hash,
        });
        actions.push(JoinAction::Event(JoinEvent::AnnounceIncluded {
            op: self.op_hash,
            proof,
        }));
    }

    /// Standalone driving (after a restart): timers, and acks or beacons from trusted keys. A
    /// beacon counts if its heads name the op; see [`AnnounceOutbox::handle_with_replica`] for
    /// heads that moved past it.
    pub fn handle(&mut self, now: Now, input: &JoinInput, actions: &mut Vec<JoinAction>) {
        self.handle_with_replica(now, input, None, actions);
    }

    /// [`AnnounceOutbox::handle`], where a beacon also counts if one of its heads descends
    /// from the op in `replica` (ours, recovered from disk and fed the topic's ops).
    ///
    /// After a restart the log has often moved on: members already acked the op (they ack
    /// once) and their beacons name only later heads, so a beacon naming the op itself may
    /// never come again.
    pub fn handle_with_replica(
        &mut self,
        now: Now,
        input: &JoinInput,
        replica: Option<&Governance>,
        actions: &mut Vec<JoinAction>,
    ) {
        if self.done {
            return;
        }
        match input {
            JoinInput::Timer => self.on_timer(now, actions),
            JoinInput::Ack { ack, .. }
                if ack.namespace == self.namespace
                    && ack.op == self.op_hash
                    && ack.member_key != self.author
                    && self.trusted.contains(&ack.member_key)
                    && ack.verify().is_ok() =>
            {
                self.mark_included(InclusionProof::Ack(ack.member_key), actions);
            }
            JoinInput::Beacon { beacon, .. }
                if beacon.namespace == self.namespace
                    && beacon.member_key != self.author
                    && self.trusted.contains(&beacon.member_key)
                    && beacon_covers(beacon, &self.op_hash, replica)
                    && beacon.verify().is_ok() =>
            {
                self.mark_included(InclusionProof::Beacon(beacon.member_key), actions);
            }
            _ => {}
        }
    }
}

/// Whether `beacon` vouches for `op`: one of its heads is the op, or descends from it in
/// `replica` (ours: a head we have not applied proves nothing yet).
fn beacon_covers(beacon: &Beacon, op: &OpHash, replica: Option<&Governance>) -> bool {
    beacon
        .heads
        .iter()
        .any(|h| h == op || replica.is_some_and(|g| g.descends_from(h, op)))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Partner {
    peer: PeerId,
    key: PublicKey,
    heads: Vec<OpHash>,
    applied: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Probing {
        next_probe_at: Instant,
    },
    Backfilling {
        partner: Partner,
        request_id: u64,
        silent_at: Instant,
        /// The pass's cursor: the request asked for ops ordered after it.
        after: Option<OrderKey>,
    },
    MeshWait {
        partner: Partner,
    },
    AwaitingAcks {
        partner: Partner,
        op: OpHash,
        until: Instant,
    },
    Finished,
}

impl Phase {
    fn public(&self) -> JoinPhase {
        match self {
            Phase::Probing { .. } => JoinPhase::Probing,
            Phase::Backfilling { .. } => JoinPhase::Backfilling,
            Phase::MeshWait { .. } => JoinPhase::MeshWait,
            Phase::AwaitingAcks { .. } => JoinPhase::AwaitingAcks,
            Phase::Finished => JoinPhase::Finished,
        }
    }
}

/// How to start one join attempt.
#[derive(Clone, Debug)]
pub struct JoinParams {
    /// The admin's invitation.
    pub invitation: SignedInvitation,
    /// Our namespace key.
    pub identity: NamespaceIdentity,
    /// The attempt's whole budget.
    pub budget_ms: u64,
    /// Connection and subscription facts known so far.
    pub mesh: MeshFacts,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl JoinParams {
    /// A first attempt with the configured budget (`join_deadline_ms`) and no mesh facts.
    pub fn new(
        invitation: SignedInvitation,
        identity: NamespaceIdentity,
        config: &NamespaceConfig,
    ) -> JoinParams {
        JoinParams {
            invitation,
            identity,
            budget_ms: config.join_deadline_ms,
            mesh: MeshFacts::default(),
            attempt: 1,
        }
    }
}

/// One namespace join attempt. See the module docs for the phases.
#[derive(Debug)]
pub struct JoinMachine {
    namespace: NamespaceId,
    invitation: SignedInvitation,
    identity: NamespaceIdentity,
    attempt: u32,
    started: Instant,
    fast_deadline: Instant,
    deadline: Instant,
    phase: Phase,
    governance: Governance,
    mesh: MeshFacts,
    acked_by: BTreeSet<PublicKey>,
    last_partner: Option<PublicKey>,
    announced: Option<OpHash>,
    outbox: Option<AnnounceOutbox>,
    verdict: Option<Result<ReadyReport, JoinFailure>>,
}

impl JoinMachine {
    /// Starts a join attempt at `ctx.now`: validates the invitation, provisions the identity,
    /// subscribes and probes, and resolves at once if a fresh verified beacon is cached.
    ///
    /// `ctx.beacons` MUST be the cache of the invitation's namespace.
    pub fn start(ctx: &mut JoinCtx<'_>, params: JoinParams) -> JoinMachine {
        let namespace = params.invitation.invitation.namespace;
        debug_assert_eq!(
            ctx.beacons.namespace(),
            namespace,
            "beacon cache of another namespace"
        );
        let started = ctx.now.instant;
        let budget_ms = params.budget_ms;
        let fast_ms = ctx.config.fast_path_max_ms.min(budget_ms / 2);
        let mut machine = JoinMachine {
            namespace,
            governance: Governance::new(namespace, ctx.config.governance),
            invitation: params.invitation,
            identity: params.identity,
            attempt: params.attempt,
            started,
            fast_deadline: started.saturating_add_ms(fast_ms),
            deadline: started.saturating_add_ms(budget_ms),
            phase: Phase::Probing {
                next_probe_at: started,
            },
            mesh: params.mesh,
            acked_by: BTreeSet::new(),
            last_partner: None,
            announced: None,
            outbox: None,
            verdict: None,
        };
        tracing::info!(
            ns = %namespace,
            invitation = %machine.invitation.hash(),
            attempt = machine.attempt,
            budget_ms,
            fast_ms,
            "namespace join starts"
        );
        // 1. The invitation, before the inviter is trusted for anything.
        if let Err(e) = machine.invitation.verify(ctx.now.unix_ms) {
            tracing::warn!(ns = %namespace, error = %e, "invalid invitation");
            machine.fail(ctx, JoinFailReason::InvalidInvitation(e));
            return machine;
        }
        // 2. Identity, subscription, probe.
        if machine.identity.state == IdentityState::New {
            machine.identity.state = IdentityState::Persisting;
            ctx.actions.push(JoinAction::PersistIdentity {
                namespace,
                key: machine.identity.key.clone(),
            });
        }
        ctx.actions.push(JoinAction::Subscribe(namespace));
        machine.probe(ctx);
        // 3. A beacon cached before we started counts.
        machine.try_resolve(ctx);
        machine.debug_check();
        machine
    }

    /// The namespace.
    pub fn namespace(&self) -> NamespaceId {
        self.namespace
    }

    /// The current phase.
    pub fn phase(&self) -> JoinPhase {
        self.phase.public()
    }

    /// When the attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The attempt's deadline (start + budget).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the fast path gives up.
    pub fn fast_path_deadline(&self) -> Instant {
        self.fast_deadline
    }

    /// Our namespace identity (its durability state included).
    pub fn identity(&self) -> &NamespaceIdentity {
        &self.identity
    }

    /// Our replica of the namespace log.
    pub fn governance(&self) -> &Governance {
        &self.governance
    }

    /// The verdict, once emitted.
    pub fn verdict(&self) -> Option<&Result<ReadyReport, JoinFailure>> {
        self.verdict.as_ref()
    }

    /// Whether the verdict was emitted.
    pub fn is_finished(&self) -> bool {
        self.verdict.is_some()
    }

    /// Whether nothing is left to do: finished and no outbox waiting for inclusion.
    pub fn is_idle(&self) -> bool {
        self.is_finished() && self.outbox.as_ref().is_none_or(AnnounceOutbox::is_done)
    }

    /// The outbox, if an announce was made.
    pub fn outbox(&self) -> Option<&AnnounceOutbox> {
        self.outbox.as_ref()
    }

    /// When to call `handle(.., JoinInput::Timer)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Probing { next_probe_at } => Some(self.fast_deadline.min(*next_probe_at)),
            Phase::Backfilling { silent_at, .. } => Some(*silent_at),
            Phase::MeshWait { .. } => Some(self.deadline),
            Phase::AwaitingAcks { until, .. } => Some(*until),
            Phase::Finished => None,
        };
        let phase = phase.map(|t| t.min(self.deadline));
        let outbox = self.outbox.as_ref().and_then(AnnounceOutbox::next_deadline);
        match (phase, outbox) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one input at `ctx.now`. Timers run first, so the budget always wins.
    pub fn handle(&mut self, ctx: &mut JoinCtx<'_>, input: JoinInput) {
        self.mesh.apply(&input, ctx.config.max_mesh_peers);
        self.on_time(ctx);
        match input {
            JoinInput::Timer => {}
            JoinInput::Beacon { from, beacon } => self.on_beacon(ctx, from, beacon),
            JoinInput::Batch { from, batch } => self.on_batch(ctx, from, batch),
            JoinInput::Ack { ack, .. } => self.on_ack(ctx, &ack),
            JoinInput::Op { op, .. } => self.on_op(op),
            JoinInput::IdentityPersisted => {
                if self.identity.state != IdentityState::Durable {
                    self.identity.state = IdentityState::Durable;
                    self.maybe_announce(ctx);
                }
            }
            JoinInput::PeerConnected(_)
            | JoinInput::PeerDisconnected(_)
            | JoinInput::PeerSubscribed(_)
            | JoinInput::PeerUnsubscribed(_) => self.maybe_announce(ctx),
        }
        self.debug_check();
    }

    fn trusts(&self, key: &PublicKey) -> bool {
        *key == self.invitation.invitation.inviter || self.governance.is_member(key)
    }

    fn probe(&mut self, ctx: &mut JoinCtx<'_>) {
        let nonce = ctx.rng.r#gen();
        ctx.actions.push(JoinAction::Publish(
            self.namespace,
            NamespaceMessage::Probe(ReadinessProbe {
                namespace: self.namespace,
                nonce,
            }),
        ));
        if let Phase::Probing { next_probe_at } = &mut self.phase {
            *next_probe_at = ctx.now.instant.saturating_add_ms(ctx.config.probe_retry_ms);
        }
    }

    /// Everything timers decide, in budget order.
    fn on_time(&mut self, ctx: &mut JoinCtx<'_>) {
        let now = ctx.now.instant;
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.on_timer(ctx.now, ctx.actions);
        }
        if self.verdict.is_some() {
            return;
        }
        if let Phase::Probing { next_probe_at } = self.phase {
            if now >= self.fast_deadline {
                let waited_ms = now.saturating_ms_since(self.started);
                tracing::info!(ns = %self.namespace, waited_ms, "no ready peers");
                return self.fail(ctx, JoinFailReason::NoReadyPeers { waited_ms });
            }
            if now >= next_probe_at {
                self.probe(ctx);
            }
            return;
        }
        // The ack wait is clamped to the budget, so it ends first (or together with it).
        if let Phase::AwaitingAcks { until, .. } = self.phase
            && now >= until
        {
            let received = self.acked_by.len();
            let required = ctx.config.min_acks;
            tracing::info!(ns = %self.namespace, received, required, "ack wait over");
            return self.fail(ctx, JoinFailReason::AcksMissing { received, required });
        }
        if now >= self.deadline {
            let phase = self.phase.public();
            tracing::info!(ns = %self.namespace, ?phase, "join deadline exceeded");
            return self.fail(ctx, JoinFailReason::DeadlineExceeded { phase });
        }
        if let Phase::Backfilling { silent_at, .. } = self.phase
            && now >= silent_at
        {
            self.switch_partner(ctx, SwitchReason::Silent, true);
        }
    }

    fn on_beacon(&mut self, ctx: &mut JoinCtx<'_>, from: PeerId, beacon: Beacon) {
        let inviter = self.invitation.invitation.inviter;
        let governance = &self.governance;
        let accepted = ctx.beacons.insert(ctx.now, from, beacon.clone(), |k| {
            *k == inviter || governance.is_member(k)
        });
        match accepted {
            Err(e) => {
                tracing::debug!(ns = %self.namespace, member = %beacon.member_key.hash(), reason = e.as_str(), "beacon refused");
                return;
            }
            Ok(BeaconAccepted::New | BeaconAccepted::Newer | BeaconAccepted::Duplicate) => {}
        }
        // A verified beacon from a member: does it prove our announce is included?
        if let Some(op) = self.announced
            && beacon.member_key != self.identity.public()
            && beacon_covers(&beacon, &op, Some(&self.governance))
            && let Some(outbox) = self.outbox.as_mut()
        {
            outbox.mark_included(InclusionProof::Beacon(beacon.member_key), ctx.actions);
        }
        if matches!(self.phase, Phase::Probing { .. }) && self.verdict.is_none() {
            self.try_resolve(ctx);
        }
    }

    /// Step 3: the best fresh verified beacon from a trusted key becomes the partner.
    fn try_resolve(&mut self, ctx: &mut JoinCtx<'_>) {
        if self.verdict.is_some() || !matches!(self.phase, Phase::Probing { .. }) {
            return;
        }
        let best = ctx
            .beacons
            .best_fresh(ctx.now, |k| self.trusts(k), &BTreeSet::new())
            .map(|c| Partner {
                peer: c.from,
                key: c.beacon.member_key,
                heads: c.beacon.heads.to_vec(),
                applied: c.beacon.applied_through,
            });
        let Some(partner) = best else {
            return;
        };
        tracing::info!(
            ns = %self.namespace,
            partner = %partner.key.hash(),
            applied = partner.applied,
            waited_ms = ctx.now.instant.saturating_ms_since(self.started),
            "join started"
        );
        ctx.actions.push(JoinAction::Event(JoinEvent::JoinStarted {
            partner: partner.peer,
            partner_key: partner.key,
            partner_head: partner.heads.clone(),
            partner_applied: partner.applied,
        }));
        self.begin_backfill(ctx, partner);
    }

    /// Starts a backfill pass from `partner`, from the beginning of its order.
    fn begin_backfill(&mut self, ctx: &mut JoinCtx<'_>, partner: Partner) {
        self.request_backfill(ctx, partner, None);
    }

    /// Asks `partner` for the ops we lack that it orders after `after` (all of them with
    /// `None`): one request of a pass (see the `backfill` module docs).
    fn request_backfill(
        &mut self,
        ctx: &mut JoinCtx<'_>,
        partner: Partner,
        after: Option<OrderKey>,
    ) {
        self.last_partner = Some(partner.key);
        match backfill::progress(&self.governance, &partner.heads, partner.applied) {
            Progress::Complete => return self.backfill_complete(ctx, partner),
            Progress::Inconsistent { .. } | Progress::Incomplete => {}
        }
        let request_id = ctx.rng.r#gen();
        ctx.actions.push(JoinAction::Send(
            partner.peer,
            NamespaceMessage::BackfillRequest(backfill::request_for(
                &self.governance,
                request_id,
                after,
            )),
        ));
        self.phase = Phase::Backfilling {
            partner,
            request_id,
            silent_at: ctx
                .now
                .instant
                .saturating_add_ms(ctx.config.backfill_silence_ms),
            after,
        };
    }

    /// Replaces a silent or faulty partner with the best other fresh one; with none,
    /// `ask_again` re-sends to the same partner, else it waits for the silence timer.
    fn switch_partner(&mut self, ctx: &mut JoinCtx<'_>, reason: SwitchReason, ask_again: bool) {
        let Phase::Backfilling { partner, .. } = &self.phase else {
            return;
        };
        let current = partner.clone();
        let promoted = {
            let inviter = self.invitation.invitation.inviter;
            let governance = &self.governance;
            ctx.beacons
                .promote_parked(ctx.now, |k| *k == inviter || governance.is_member(k))
        };
        if !promoted.is_empty() {
            tracing::debug!(ns = %self.namespace, promoted = promoted.len(), "parked beacons promoted");
        }
        let exclude = BTreeSet::from([current.key]);
        let next = ctx
            .beacons
            .best_fresh(ctx.now, |k| self.trusts(k), &exclude)
            .map(|c| Partner {
                peer: c.from,
                key: c.beacon.member_key,
                heads: c.beacon.heads.to_vec(),
                applied: c.beacon.applied_through,
            });
        match next {
            Some(partner) => {
                tracing::info!(ns = %self.namespace, from = %current.key.hash(), to = %partner.key.hash(), ?reason, "backfill partner switched");
                ctx.actions
                    .push(JoinAction::Event(JoinEvent::PartnerSwitched {
                        from: current.key,
                        to: partner.key,
                        reason,
                    }));
                self.begin_backfill(ctx, partner);
            }
            None if ask_again => {
                tracing::debug!(ns = %self.namespace, partner = %current.key.hash(), "no other partner: asking again");
                self.begin_backfill(ctx, current);
            }
            None => {}
        }
    }

    fn on_batch(&mut self, ctx: &mut JoinCtx<'_>, from: PeerId, batch: BackfillBatch) {
        let Phase::Backfilling {
            partner,
            request_id,
            after: asked_after,
            ..
        } = &self.phase
        else {
            tracing::trace!(ns = %self.namespace, "batch outside backfill ignored");
            return;
        };
        let asked_after = *asked_after;
        if from != partner.peer || batch.request_id != *request_id {
            tracing::debug!(ns = %self.namespace, peer = from.0, "unexpected backfill batch ignored");
            return;
        }
        let partner = partner.clone();
        let more = batch.more;
        let received = batch.ops.len();
        let last = batch.ops.last().map(Op::hash);
        let rejected = self
            .governance
            .insert_many(batch.ops.into_inner())
            .iter()
            .filter(|r| r.is_err())
            .count();
        tracing::debug!(
            ns = %self.namespace,
            received,
            rejected,
            applied = self.governance.applied_through(),
            target = partner.applied,
            "backfill batch"
        );
        match backfill::progress(&self.governance, &partner.heads, partner.applied) {
            Progress::Complete => self.backfill_complete(ctx, partner),
            Progress::Inconsistent { ours } => {
                tracing::warn!(ns = %self.namespace, partner = %partner.key.hash(), ours, claimed = partner.applied, "partner beacon inconsistent");
                self.switch_partner(ctx, SwitchReason::Inconsistent, false);
            }
            Progress::Incomplete if more => {
                // The pass goes on after the last op received: applied here, its key is the
                // partner's (depth follows from the parents). An honest partner's last op always
                // applies and moves the cursor on; anything else would ask the same again.
                let after = last.and_then(|h| self.governance.order_key(&h));
                if after.is_none() || after <= asked_after {
                    tracing::warn!(ns = %self.namespace, partner = %partner.key.hash(), "backfill batch made no progress");
                    self.switch_partner(ctx, SwitchReason::Inconsistent, false);
                } else {
                    self.request_backfill(ctx, partner, after);
                }
            }
            Progress::Incomplete => self.switch_partner(ctx, SwitchReason::Incomplete, false),
        }
    }

    fn backfill_complete(&mut self, ctx: &mut JoinCtx<'_>, partner: Partner) {
        let applied_through = self.governance.applied_through();
        tracing::info!(ns = %self.namespace, applied_through, members = self.governance.members().len(), "backfill complete");
        ctx.actions
            .push(JoinAction::Event(JoinEvent::BackfillComplete {
                applied_through,
            }));
        self.phase = Phase::MeshWait { partner };
        self.maybe_announce(ctx);
    }

    /// Step 5 → 6: announce once the mesh is ready and the identity durable.
    fn maybe_announce(&mut self, ctx: &mut JoinCtx<'_>) {
        let Phase::MeshWait { partner } = &self.phase else {
            return;
        };
        if self.verdict.is_some()
            || !self.mesh.is_ready(ctx.config.mesh_low)
            || !self.identity.is_durable()
        {
            return;
        }
        let partner = partner.clone();
        let me = self.identity.public();
        let parents = self.governance.parents_for_new_op(MAX_PARENTS);
        let Ok(parents) = Op::canonical_parents(parents) else {
            // `parents_for_new_op(MAX_PARENTS)` returns at most MAX_PARENTS hashes.
            return;
        };
        let op = Op::sign(
            &self.identity.key,
            self.namespace,
            parents,
            ctx.now.unix_ms,
            OpBody::MemberJoined {
                member: me,
                invitation: self.invitation.clone(),
            },
        );
        let hash = op.hash();
        match self.governance.insert(op.clone()) {
            Ok(Inserted::Applied { .. } | Inserted::Duplicate) => {}
            Ok(Inserted::Buffered { .. }) => {
                // Unreachable: every parent is one of our applied heads.
                return self.fail(
                    ctx,
                    JoinFailReason::DeadlineExceeded {
                        phase: JoinPhase::MeshWait,
                    },
                );
            }
            Err(InsertError::Rejected(r)) => {
                tracing::warn!(ns = %self.namespace, reason = r.as_str(), "our announce is invalid in the log");
                return self.fail(ctx, JoinFailReason::AnnounceRejected(r));
            }
            Err(e) => return self.fail(ctx, JoinFailReason::ReplicaRefused(e)),
        }
        ctx.actions.push(JoinAction::PersistOutbox(op.clone()));
        ctx.actions.push(JoinAction::Publish(
            self.namespace,
            NamespaceMessage::Op(op.clone()),
        ));
        ctx.actions
            .push(JoinAction::Event(JoinEvent::Announced { op: hash }));
        match AnnounceOutbox::new(op, ctx.now, ctx.config) {
            Ok(outbox) => self.outbox = Some(outbox),
            Err(OutboxError::NotAnAnnounce) => {} // Unreachable: the op is a MemberJoined.
        }
        self.announced = Some(hash);
        let until = ctx
            .now
            .instant
            .saturating_add_ms(ctx.config.ack_wait_ms)
            .min(self.deadline);
        tracing::info!(ns = %self.namespace, op = %hash, "member_joined announced");
        self.phase = Phase::AwaitingAcks {
            partner,
            op: hash,
            until,
        };
    }

    fn on_ack(&mut self, ctx: &mut JoinCtx<'_>, ack: &Ack) {
        let Some(op) = self.announced else {
            return;
        };
        let valid = ack.namespace == self.namespace
            && ack.op == op
            && ack.member_key != self.identity.public()
            && self.trusts(&ack.member_key)
            && !self.acked_by.contains(&ack.member_key)
            && ack.verify().is_ok();
        if !valid {
            tracing::trace!(ns = %self.namespace, "ack ignored");
            return;
        }
        self.acked_by.insert(ack.member_key);
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.mark_included(InclusionProof::Ack(ack.member_key), ctx.actions);
        }
        if self.verdict.is_none()
            && matches!(self.phase, Phase::AwaitingAcks { .. })
            && self.acked_by.len() >= ctx.config.min_acks
        {
            let report = self.report(ctx.now.instant);
            tracing::info!(ns = %self.namespace, acks = report.acked_by.len(), elapsed_ms = report.elapsed_ms, "namespace joined");
            self.phase = Phase::Finished;
            self.verdict = Some(Ok(report.clone()));
            ctx.actions
                .push(JoinAction::Event(JoinEvent::Ready(report)));
        }
    }

    /// An op on the topic joins our replica. An op descending from our announce proves
    /// nothing about inclusion: its author may be another joiner that heard ours while no
    /// member holds it, and even a member's op does not say our op is durable there. Only a
    /// member's ack or beacon does (both vouch for durable ops only).
    fn on_op(&mut self, op: Op) {
        let _ = self.governance.insert(op);
    }

    fn report(&self, now: Instant) -> ReadyReport {
        ReadyReport {
            namespace: self.namespace,
            final_heads: self.governance.heads(),
            applied_through: self.governance.applied_through(),
            members_learned: u64::try_from(self.governance.members().len()).unwrap_or(u64::MAX),
            acked_by: self.acked_by.iter().copied().collect(),
            elapsed_ms: now.saturating_ms_since(self.started),
            partner: self.last_partner,
            announced: self.announced,
            phase: self.phase.public(),
            attempt: self.attempt,
        }
    }

    fn fail(&mut self, ctx: &mut JoinCtx<'_>, reason: JoinFailReason) {
        if self.verdict.is_some() {
            return;
        }
        let failure = JoinFailure {
            report: self.report(ctx.now.instant),
            reason,
        };
        self.phase = Phase::Finished;
        self.verdict = Some(Err(failure.clone()));
        ctx.actions
            .push(JoinAction::Event(JoinEvent::Failed(failure)));
    }

    /// Cheap invariants, asserted after every input in debug builds.
    pub fn check_invariants(&self) {
        assert!(
            self.fast_deadline <= self.deadline,
            "fast path past the deadline"
        );
        assert!(
            self.started <= self.fast_deadline,
            "fast path before the start"
        );
        if let Phase::AwaitingAcks { until, op, .. } = &self.phase {
            assert!(*until <= self.deadline, "ack wait overshoots the budget");
            assert_eq!(Some(*op), self.announced, "announced op drifted");
        }
        assert_eq!(
            self.verdict.is_some(),
            self.phase == Phase::Finished,
            "verdict and phase disagree"
        );
        if let Some(Ok(report)) = &self.verdict {
            assert!(!report.acked_by.is_empty(), "ready without an ack");
        }
        if self.outbox.is_some() {
            assert!(self.announced.is_some(), "outbox without an announce");
        }
    }

    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        self.check_invariants();
    }
}

/// A join that retries `NoReadyPeers` with jittered exponential backoff, never past
/// `retry_max_total_ms` from its start.
#[derive(Debug)]
pub struct RetryingJoin {
    invitation: SignedInvitation,
    identity: NamespaceIdentity,
    mesh: MeshFacts,
    started: Instant,
    total_deadline: Instant,
    attempt: u32,
    backoff_ms: u64,
    machine: Option<JoinMachine>,
    waiting_until: Option<Instant>,
    verdict: Option<Result<ReadyReport, JoinFailure>>,
}

impl RetryingJoin {
    /// Starts the first attempt at `ctx.now`.
    pub fn start(
        ctx: &mut JoinCtx<'_>,
        invitation: SignedInvitation,
        identity: NamespaceIdentity,
    ) -> RetryingJoin {
        let started = ctx.now.instant;
        let mut join = RetryingJoin {
            invitation,
            identity,
            mesh: MeshFacts::default(),
            started,
            total_deadline: started.saturating_add_ms(ctx.config.retry_max_total_ms),
            attempt: 0,
            backoff_ms: ctx.config.retry_initial_ms,
            machine: None,
            waiting_until: None,
            verdict: None,
        };
        join.start_attempt(ctx);
        join
    }

    /// When the retrying join started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// `start + retry_max_total_ms`: nothing happens after it.
    pub fn total_deadline(&self) -> Instant {
        self.total_deadline
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The current (or last) attempt.
    pub fn machine(&self) -> Option<&JoinMachine> {
        self.machine.as_ref()
    }

    /// The final verdict, once emitted.
    pub fn verdict(&self) -> Option<&Result<ReadyReport, JoinFailure>> {
        self.verdict.as_ref()
    }

    /// Whether the final verdict was emitted.
    pub fn is_finished(&self) -> bool {
        self.verdict.is_some()
    }

    /// Whether nothing is left to do (verdict emitted, outbox done).
    pub fn is_idle(&self) -> bool {
        self.is_finished() && self.machine.as_ref().is_none_or(JoinMachine::is_idle)
    }

    /// When to call `handle(.., JoinInput::Timer)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.waiting_until, &self.machine) {
            (Some(until), _) => Some(until),
            (None, Some(m)) => m.next_deadline(),
            (None, None) => None,
        }
    }

    fn start_attempt(&mut self, ctx: &mut JoinCtx<'_>) {
        self.waiting_until = None;
        self.attempt += 1;
        let remaining = self.total_deadline.saturating_ms_since(ctx.now.instant);
        let params = JoinParams {
            invitation: self.invitation.clone(),
            identity: self.identity.clone(),
            budget_ms: ctx.config.join_deadline_ms.min(remaining),
            mesh: self.mesh.clone(),
            attempt: self.attempt,
        };
        let mut actions = Vec::new();
        let machine = {
            let mut sub = JoinCtx {
                now: ctx.now,
                config: ctx.config,
                rng: ctx.rng,
                beacons: ctx.beacons,
                actions: &mut actions,
            };
            JoinMachine::start(&mut sub, params)
        };
        self.identity = machine.identity().clone();
        self.machine = Some(machine);
        self.forward(ctx, actions);
    }

    /// Passes the attempt's actions on, turning a retryable failure into a delay.
    fn forward(&mut self, ctx: &mut JoinCtx<'_>, actions: Vec<JoinAction>) {
        for action in actions {
            match action {
                JoinAction::Event(JoinEvent::Failed(failure)) if failure.reason.is_retryable() => {
                    match self.next_start(ctx) {
                        Some(at) => {
                            let delay_ms = at.saturating_ms_since(ctx.now.instant);
                            tracing::info!(
                                attempt = self.attempt,
                                delay_ms,
                                "namespace join retries"
                            );
                            self.waiting_until = Some(at);
                            ctx.actions.push(JoinAction::Event(JoinEvent::Retrying {
                                next_attempt: self.attempt + 1,
                                delay_ms,
                                failure,
                            }));
                        }
                        None => {
                            tracing::info!(
                                attempts = self.attempt,
                                "namespace join out of retry budget"
                            );
                            self.verdict = Some(Err(failure.clone()));
                            ctx.actions
                                .push(JoinAction::Event(JoinEvent::Failed(failure)));
                        }
                    }
                }
                JoinAction::Event(JoinEvent::Failed(failure)) => {
                    self.verdict = Some(Err(failure.clone()));
                    ctx.actions
                        .push(JoinAction::Event(JoinEvent::Failed(failure)));
                }
                JoinAction::Event(JoinEvent::Ready(report)) => {
                    self.verdict = Some(Ok(report.clone()));
                    ctx.actions
                        .push(JoinAction::Event(JoinEvent::Ready(report)));
                }
                other => ctx.actions.push(other),
            }
        }
    }

    /// When the next attempt may start, or `None` when the total budget leaves no room.
    fn next_start(&mut self, ctx: &mut JoinCtx<'_>) -> Option<Instant> {
        let base = self.backoff_ms;
        let jitter_max = base.saturating_mul(ctx.config.retry_jitter_percent) / 100;
        let jitter = ctx.rng.gen_range(0..=jitter_max);
        self.backoff_ms = base.saturating_mul(2).min(ctx.config.retry_max_ms);
        let at = ctx
            .now
            .instant
            .saturating_add_ms(base.saturating_add(jitter));
        (at < self.total_deadline).then_some(at)
    }

    /// Handles one input at `ctx.now`.
    pub fn handle(&mut self, ctx: &mut JoinCtx<'_>, input: JoinInput) {
        self.mesh.apply(&input, ctx.config.max_mesh_peers);
        if let JoinInput::IdentityPersisted = input {
            self.identity.state = IdentityState::Durable;
        }
        let Some(until) = self.waiting_until else {
            let Some(machine) = self.machine.as_mut() else {
                return;
            };
            let mut actions = Vec::new();
            {
                let mut sub = JoinCtx {
                    now: ctx.now,
                    config: ctx.config,
                    rng: ctx.rng,
                    beacons: ctx.beacons,
                    actions: &mut actions,
                };
                machine.handle(&mut sub, input);
            }
            self.identity = machine.identity().clone();
            self.forward(ctx, actions);
            return;
        };
        // Waiting between attempts: a fresh beacon from the inviter ends the wait early.
        let mut early = false;
        if let JoinInput::Beacon { from, beacon } = input {
            let inviter = self.invitation.invitation.inviter;
            let member = beacon.member_key;
            if ctx
                .beacons
                .insert(ctx.now, from, beacon, |k| *k == inviter)
                .is_ok()
            {
                early = ctx
                    .beacons
                    .get(&member)
                    .is_some_and(|c| c.is_fresh(ctx.now, ctx.config.beacon_ttl_ms));
            }
        }
        if early || ctx.now.instant >= until {
            self.start_attempt(ctx);
        }
    }
}
