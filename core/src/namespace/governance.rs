//! One namespace's governance log: a DAG of signed ops, replicated by gossip and backfill.
//!
//! ## Why a DAG with a deterministic order
//!
//! Ops arrive from anyone, in any order, duplicated, and some are invalid. Replicas agree
//! without coordination because:
//!
//! 1. **validity is a pure function of the op and its causal past** (the ops its parents name,
//!    transitively). The causal past of an op is fixed by its parent hashes, so every replica
//!    that has an op's parents reaches the same verdict about it, whenever it does so;
//! 2. **the effect of valid ops is order-independent**. Each op has an order key
//!    `(depth, hash)` where `depth = 1 + max(parent depths)` (a `Create` has depth 0). Sorting
//!    by that key is a topological total order, identical on every replica. Membership is a
//!    last-writer-wins register per member key, where "last" means the largest order key among
//!    the valid `MemberJoined` / `MemberRemoved` ops naming it; revocations and admins are grow-only
//!    sets. Those merge in any order, so inserting ops one by one in *any* delivery order gives
//!    exactly the state of applying the whole set in total order.
//!
//! ```text
//!   insert(op) ─▶ seen? ─▶ Duplicate
//!             └─▶ stand-alone checks (namespace, canonical parents, signature, body shape)
//!                    └─▶ a parent rejected ─▶ Rejected(ParentRejected)
//!                    └─▶ a parent unknown ─▶ buffer (bounded; full ⇒ dropped + counted)
//!                    └─▶ all parents applied ─▶ causal checks ─▶ apply ─▶ wake buffered children
//! ```
//!
//! ## Who is an admin "in the causal past"
//!
//! A namespace id is `derive(admin, salt)` and a `Create` is valid only if it matches, so every
//! valid `Create` of a namespace names the same admin, and every valid non-genesis op has a
//! valid `Create` in its causal past. The replica's admin set is therefore the admin set of
//! every valid op's causal past. Revocations and single-use consumption are checked against
//! the true causal past (an ancestor search), because those sets do grow over time.
//!
//! ## `applied_through`
//!
//! `applied_through` is the number of valid ops applied. Because an op is applied only after
//! all its parents, the applied set is closed under "causal past" and equals the causal past of
//! the heads: `applied_through == |past(heads)|`. A beacon carries `(heads, applied_through)`
//! computed that way, so a joiner "has applied through the partner's `applied_through`" exactly
//! when [`Governance::applied_through_of`] of the partner's heads equals the partner's count —
//! i.e. the joiner holds the partner's whole causal past.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{Hash32, PublicKey, SignatureError};
use crate::wire;

use super::ops::{InvitePolicy, NamespaceId, Op, OpBody, OpHash};

/// Domain prefix of the state digest.
const DIGEST_DOMAIN: &[u8] = b"portcullis.governance-digest.v1";

/// Why an op is invalid. The op's author (or whoever forged it) is at fault; the op never
/// takes effect, on any replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpRejection {
    /// The op names another namespace than this replica's.
    #[error("op for namespace {got}, this replica is {expected}")]
    WrongNamespace {
        /// This replica's namespace.
        expected: NamespaceId,
        /// The op's namespace.
        got: NamespaceId,
    },
    /// Parents are not strictly increasing.
    #[error("parents are not sorted and unique")]
    ParentsNotCanonical,
    /// The author's signature does not verify.
    #[error("op signature: {0}")]
    BadSignature(SignatureError),
    /// A `Create` with parents: the genesis must come first.
    #[error("create must be the first op (it has parents)")]
    CreateNotGenesis,
    /// A `Create` whose namespace is not `derive(admin, salt)`, or not signed by its admin.
    #[error("create does not match its namespace id or is not signed by its admin")]
    CreateWrongNamespace,
    /// A non-genesis op without parents.
    #[error("non-genesis op without parents")]
    MissingParents,
    /// A parent was rejected, so this op is outside every valid history.
    #[error("parent {0} is invalid")]
    ParentRejected(OpHash),
    /// `MemberJoined` signed by someone other than the joining member.
    #[error("member_joined must be signed by the member itself")]
    SignerNotMember,
    /// The carried invitation is for another namespace.
    #[error("invitation is for another namespace")]
    InvitationWrongNamespace,
    /// The carried invitation's signature does not verify (forged).
    #[error("invitation signature: {0}")]
    InvitationBadSignature(SignatureError),
    /// The invitation was not signed by an admin of the op's causal past.
    #[error("inviter is not an admin of the namespace")]
    InviterNotAdmin,
    /// The invitation had expired at the op's own `unix_ms`.
    #[error("invitation expired at {expires_at_unix_ms}, op is at {op_unix_ms}")]
    InvitationExpired {
        /// The invitation's expiry.
        expires_at_unix_ms: u64,
        /// The op's time.
        op_unix_ms: u64,
    },
    /// The invitation was revoked in the op's causal past.
    #[error("invitation was revoked")]
    InvitationRevoked,
    /// A single-use invitation was already used in the op's causal past.
    #[error("single-use invitation already used")]
    InvitationUsed,
    /// `MemberRemoved` by someone who is not an admin.
    #[error("only an admin may remove members")]
    RemovalByNonAdmin,
    /// `MemberRemoved` naming the admin.
    #[error("the admin cannot be removed")]
    CannotRemoveAdmin,
    /// `InvitationRevoked` by someone who is not an admin.
    #[error("only an admin may revoke invitations")]
    RevocationByNonAdmin,
}

impl OpRejection {
    /// A stable lowercase name, for metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpRejection::WrongNamespace { .. } => "wrong_namespace",
            OpRejection::ParentsNotCanonical => "parents_not_canonical",
            OpRejection::BadSignature(_) => "bad_signature",
            OpRejection::CreateNotGenesis => "create_not_genesis",
            OpRejection::CreateWrongNamespace => "create_wrong_namespace",
            OpRejection::MissingParents => "missing_parents",
            OpRejection::ParentRejected(_) => "parent_rejected",
            OpRejection::SignerNotMember => "signer_not_member",
            OpRejection::InvitationWrongNamespace => "invitation_wrong_namespace",
            OpRejection::InvitationBadSignature(_) => "invitation_bad_signature",
            OpRejection::InviterNotAdmin => "inviter_not_admin",
            OpRejection::InvitationExpired { .. } => "invitation_expired",
            OpRejection::InvitationRevoked => "invitation_revoked",
            OpRejection::InvitationUsed => "invitation_used",
            OpRejection::RemovalByNonAdmin => "removal_by_non_admin",
            OpRejection::CannotRemoveAdmin => "cannot_remove_admin",
            OpRejection::RevocationByNonAdmin => "revocation_by_non_admin",
        }
    }
}

/// Why [`Governance::insert`] did not take an op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The op is invalid (the peer or author is at fault).
    #[error("rejected: {0}")]
    Rejected(OpRejection),
    /// Its parents are unknown and the buffer for such ops holds none (`max_pending_ops` is
    /// 0): dropped and counted (transient; a later delivery or backfill brings it again).
    /// With room for at least one op, a full buffer drops its oldest op instead.
    #[error("pending buffer full ({max} ops): op dropped")]
    BufferFull {
        /// The buffer's bound.
        max: usize,
    },
    /// The log holds `max_ops` ops already (policy: an operator must act).
    #[error("governance log full ({max} ops)")]
    LogFull {
        /// The bound.
        max: usize,
    },
}

/// What [`Governance::insert`] did with an op it took.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// Already applied or already buffered: nothing changed.
    Duplicate,
    /// Some parents are unknown: buffered until they arrive.
    Buffered {
        /// The parents still missing.
        missing: Vec<OpHash>,
    },
    /// Applied, with every buffered descendant that became applicable.
    Applied {
        /// Ops applied by this insert, in order (the op itself first).
        applied: Vec<OpHash>,
        /// Buffered descendants that turned out invalid.
        rejected: Vec<(OpHash, OpRejection)>,
    },
}

/// Bounds of one replica. MUST be the same on every replica of a namespace (a replica that
/// refuses ops for capacity stops converging).
// Borsh: a flight recording's header carries the config ([`crate::recording`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct GovernanceLimits {
    /// Most valid ops held.
    pub max_ops: usize,
    /// Most ops buffered while their parents are unknown.
    pub max_pending_ops: usize,
    /// Most rejected op hashes remembered (so their descendants are rejected at once).
    pub max_rejected_remembered: usize,
}

impl Default for GovernanceLimits {
    fn default() -> Self {
        GovernanceLimits {
            max_ops: 65_536,
            max_pending_ops: 4_096,
            max_rejected_remembered: 1_024,
        }
    }
}

/// Counters of what the replica refused (exported as metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GovernanceStats {
    /// Ops rejected as invalid, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Ops dropped from a full pending buffer (the oldest one goes).
    pub dropped_pending: u64,
    /// Ops dropped because the log was full.
    pub dropped_full: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
}

/// An op's place in the deterministic total order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub struct OrderKey {
    /// `1 + max(parent depth)`; 0 for `Create`.
    pub depth: u64,
    /// The op's hash (tie-breaker).
    pub hash: OpHash,
}

#[derive(Clone, Debug)]
struct AppliedOp {
    op: Op,
    depth: u64,
}

#[derive(Clone, Copy, Debug)]
struct Membership {
    last: OrderKey,
    present: bool,
}

/// A replica of one namespace's governance log. Pure: no clock, no IO, no randomness.
///
/// # Example
/// ```
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::governance::{Governance, GovernanceLimits};
/// use portcullis_core::namespace::ops::{InvitePolicy, Op, OpBody, SignedInvitation};
/// use portcullis_core::rng::SeededRng;
///
/// let mut rng = SeededRng::from_u64(1);
/// let (admin, joiner) = (SecretKey::generate(&mut rng), SecretKey::generate(&mut rng));
/// let create = Op::create(&admin, [0; 16], 1_000);
/// let ns = create.namespace;
/// let inv = SignedInvitation::issue(&admin, ns, 50_000, [1; 16], InvitePolicy::Reusable);
/// let parents = Op::canonical_parents(vec![create.hash()]).unwrap();
/// let joined = Op::sign(&joiner, ns, parents, 2_000,
///     OpBody::MemberJoined { member: joiner.public(), invitation: inv });
///
/// let mut replica = Governance::new(ns, GovernanceLimits::default());
/// replica.insert(joined.clone()).unwrap(); // parent unknown: buffered
/// replica.insert(create).unwrap();         // applies both
/// assert!(replica.is_member(&joiner.public()));
/// assert_eq!(replica.heads(), vec![joined.hash()]);
/// assert_eq!(replica.applied_through(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Governance {
    namespace: NamespaceId,
    limits: GovernanceLimits,
    applied: BTreeMap<OpHash, AppliedOp>,
    heads: BTreeSet<OpHash>,
    admins: BTreeSet<PublicKey>,
    membership: BTreeMap<PublicKey, Membership>,
    members: BTreeSet<PublicKey>,
    /// Valid revocation ops per nonce.
    revocations: BTreeMap<[u8; 16], Vec<OpHash>>,
    /// Valid `MemberJoined` ops per single-use nonce.
    single_uses: BTreeMap<[u8; 16], Vec<OpHash>>,
    pending: BTreeMap<OpHash, Op>,
    /// Buffered ops, oldest first, so a full buffer drops its oldest: ops whose parents never
    /// come (junk any key can sign) age out instead of filling the buffer for good. Holds
    /// stale entries for ops since applied or rejected; compacted when it reaches twice
    /// `max_pending_ops`.
    pending_order: VecDeque<OpHash>,
    /// Missing parent → buffered ops waiting for it.
    waiting_on: BTreeMap<OpHash, BTreeSet<OpHash>>,
    rejected: BTreeMap<OpHash, OpRejection>,
    rejected_fifo: VecDeque<OpHash>,
    stats: GovernanceStats,
}

impl Governance {
    /// An empty replica of `namespace`.
    pub fn new(namespace: NamespaceId, limits: GovernanceLimits) -> Governance {
        Governance {
            namespace,
            limits,
            applied: BTreeMap::new(),
            heads: BTreeSet::new(),
            admins: BTreeSet::new(),
            membership: BTreeMap::new(),
            members: BTreeSet::new(),
            revocations: BTreeMap::new(),
            single_uses: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_order: VecDeque::new(),
            waiting_on: BTreeMap::new(),
            rejected: BTreeMap::new(),
            rejected_fifo: VecDeque::new(),
            stats: GovernanceStats::default(),
        }
    }

    /// The namespace this replica holds.
    pub fn namespace(&self) -> NamespaceId {
        self.namespace
    }

    /// Current members (the admin included), sorted.
    pub fn members(&self) -> &BTreeSet<PublicKey> {
        &self.members
    }

    /// Whether `key` is a member now.
    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.members.contains(key)
    }

    /// The admins (empty until the `Create` is applied).
    pub fn admins(&self) -> &BTreeSet<PublicKey> {
        &self.admins
    }

    /// Every applied op, in hash order (for audits and checkers).
    pub fn applied_ops(&self) -> impl Iterator<Item = &Op> {
        self.applied.values().map(|a| &a.op)
    }

    /// Heads (applied ops without applied children), sorted.
    pub fn heads(&self) -> Vec<OpHash> {
        self.heads.iter().copied().collect()
    }

    /// Number of valid ops applied (= the size of the causal past of the heads).
    pub fn applied_through(&self) -> u64 {
        u64::try_from(self.applied.len()).unwrap_or(u64::MAX)
    }

    /// Whether `hash` is applied.
    pub fn contains(&self, hash: &OpHash) -> bool {
        self.applied.contains_key(hash)
    }

    /// The applied op `hash`.
    pub fn get(&self, hash: &OpHash) -> Option<&Op> {
        self.applied.get(hash).map(|a| &a.op)
    }

    /// The order key of the applied op `hash`.
    pub fn order_key(&self, hash: &OpHash) -> Option<OrderKey> {
        self.applied.get(hash).map(|a| OrderKey {
            depth: a.depth,
            hash: *hash,
        })
    }

    /// Whether `hash` is buffered waiting for parents.
    pub fn is_pending(&self, hash: &OpHash) -> bool {
        self.pending.contains_key(hash)
    }

    /// Ops buffered waiting for parents.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Why `hash` was rejected, if it was and is still remembered.
    pub fn rejection_of(&self, hash: &OpHash) -> Option<&OpRejection> {
        self.rejected.get(hash)
    }

    /// Whether the invitation `nonce` is revoked by some applied op.
    pub fn is_revoked(&self, nonce: &[u8; 16]) -> bool {
        self.revocations.contains_key(nonce)
    }

    /// Refusal counters.
    pub fn stats(&self) -> &GovernanceStats {
        &self.stats
    }

    /// Up to `max` heads to name as parents of a new op: the latest in total order, sorted
    /// by hash (canonical).
    pub fn parents_for_new_op(&self, max: usize) -> Vec<OpHash> {
        let mut keys: Vec<OrderKey> = self
            .heads
            .iter()
            .filter_map(|h| self.order_key(h))
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let mut out: Vec<OpHash> = keys.into_iter().take(max).map(|k| k.hash).collect();
        out.sort_unstable();
        out
    }

    /// A digest of the replicated state (namespace, applied count, heads, members,
    /// revocations): equal on replicas that applied the same ops.
    pub fn digest(&self) -> Hash32 {
        let heads = self.heads();
        let members: Vec<PublicKey> = self.members.iter().copied().collect();
        let revoked: Vec<[u8; 16]> = self.revocations.keys().copied().collect();
        let body = wire::encode(&(
            &self.namespace,
            self.applied_through(),
            &heads,
            &members,
            &revoked,
        ));
        Hash32::of(&[DIGEST_DOMAIN, &[0], &body])
    }

    /// Inserts many ops (a backfill batch): exactly [`Governance::insert`] on each in turn.
    pub fn insert_many(&mut self, ops: Vec<Op>) -> Vec<Result<Inserted, InsertError>> {
        ops.into_iter().map(|op| self.insert(op)).collect()
    }

    /// Inserts an op from any source. Never panics on peer input.
    pub fn insert(&mut self, op: Op) -> Result<Inserted, InsertError> {
        let hash = op.hash();
        if self.applied.contains_key(&hash) || self.pending.contains_key(&hash) {
            self.stats.duplicates += 1;
            return Ok(Inserted::Duplicate);
        }
        if let Some(reason) = self.rejected.get(&hash) {
            return Err(InsertError::Rejected(reason.clone()));
        }
        if let Err(reason) = self.check_standalone(&op) {
            self.remember_rejected(hash, reason.clone());
            return Err(InsertError::Rejected(reason));
        }
        if let Some(bad) = op.parents.iter().find(|p| self.rejected.contains_key(p)) {
            let reason = OpRejection::ParentRejected(*bad);
            self.remember_rejected(hash, reason.clone());
            return Err(InsertError::Rejected(reason));
        }
        let missing: Vec<OpHash> = op
            .parents
            .iter()
            .filter(|p| !self.applied.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            // Room is made by dropping the oldest; none can be made with no room at all.
            while self.pending.len() >= self.limits.max_pending_ops {
                if !self.drop_oldest_pending() {
                    self.stats.dropped_pending += 1;
                    return Err(InsertError::BufferFull {
                        max: self.limits.max_pending_ops,
                    });
                }
            }
            self.buffer(hash, op, &missing);
            return Ok(Inserted::Buffered { missing });
        }
        if self.applied.len() >= self.limits.max_ops {
            self.stats.dropped_full += 1;
            return Err(InsertError::LogFull {
                max: self.limits.max_ops,
            });
        }
        match self.validate_in_context(&op) {
            Err(reason) => {
                self.reject_with_descendants(hash, reason.clone(), &mut Vec::new());
                Err(InsertError::Rejected(reason))
            }
            Ok(depth) => {
                let mut applied = Vec::new();
                let mut rejected = Vec::new();
                self.apply(hash, op, depth);
                applied.push(hash);
                self.wake_children(hash, &mut applied, &mut rejected);
                Ok(Inserted::Applied { applied, rejected })
            }
        }
    }

    /// Buffers `op` under each parent it misses.
    fn buffer(&mut self, hash: OpHash, op: Op, missing: &[OpHash]) {
        for parent in missing {
            self.waiting_on.entry(*parent).or_default().insert(hash);
        }
        self.pending.insert(hash, op);
        if self.pending_order.len() >= self.limits.max_pending_ops.saturating_mul(2) {
            // Keep each buffered op once, at its oldest place (an op rejected, forgotten
            // and buffered again has an older stale entry too).
            let pending = &self.pending;
            let mut kept = BTreeSet::new();
            self.pending_order
                .retain(|h| pending.contains_key(h) && kept.insert(*h));
        }
        self.pending_order.push_back(hash);
    }

    /// Drops the oldest buffered op, if any (its buffered descendants stay: they wait for it
    /// to come again, as for any missing parent).
    fn drop_oldest_pending(&mut self) -> bool {
        while let Some(h) = self.pending_order.pop_front() {
            if self.unbuffer(&h).is_some() {
                self.stats.dropped_pending += 1;
                tracing::debug!(ns = %self.namespace, op = %h, "pending buffer full: oldest op dropped");
                return true;
            }
        }
        false
    }

    /// Removes `hash` from the buffer and from the index of its missing parents.
    fn unbuffer(&mut self, hash: &OpHash) -> Option<Op> {
        let op = self.pending.remove(hash)?;
        for p in op.parents.iter() {
            if let Some(set) = self.waiting_on.get_mut(p) {
                set.remove(hash);
                if set.is_empty() {
                    self.waiting_on.remove(p);
                }
            }
        }
        Some(op)
    }

    /// Checks that need no other op: namespace, parent form, body shape, then signatures.
    fn check_standalone(&self, op: &Op) -> Result<(), OpRejection> {
        if op.namespace != self.namespace {
            return Err(OpRejection::WrongNamespace {
                expected: self.namespace,
                got: op.namespace,
            });
        }
        if !op.parents_are_canonical() {
            return Err(OpRejection::ParentsNotCanonical);
        }
        match &op.body {
            OpBody::Create { .. } if !op.parents.is_empty() => {
                return Err(OpRejection::CreateNotGenesis);
            }
            OpBody::Create { admin, salt } => {
                if op.author != *admin || NamespaceId::derive(admin, salt) != op.namespace {
                    return Err(OpRejection::CreateWrongNamespace);
                }
            }
            _ if op.parents.is_empty() => return Err(OpRejection::MissingParents),
            OpBody::MemberJoined { member, invitation } => {
                if op.author != *member {
                    return Err(OpRejection::SignerNotMember);
                }
                if invitation.invitation.namespace != self.namespace {
                    return Err(OpRejection::InvitationWrongNamespace);
                }
            }
            OpBody::MemberRemoved { .. } | OpBody::InvitationRevoked { .. } => {}
        }
        op.verify_signature().map_err(OpRejection::BadSignature)?;
        if let OpBody::MemberJoined { invitation, .. } = &op.body {
            invitation
                .check_signature()
                .map_err(OpRejection::InvitationBadSignature)?;
        }
        Ok(())
    }

    /// Checks against the causal past; every parent is applied. Returns the op's depth.
    fn validate_in_context(&self, op: &Op) -> Result<u64, OpRejection> {
        if matches!(op.body, OpBody::Create { .. }) {
            return Ok(0);
        }
        let mut depth = 0u64;
        for p in op.parents.iter() {
            let Some(parent) = self.applied.get(p) else {
                // Callers only validate ops whose parents are all applied.
                return Err(OpRejection::ParentRejected(*p));
            };
            depth = depth.max(parent.depth.saturating_add(1));
        }
        let author_is_admin = self.admins.contains(&op.author);
        match &op.body {
            OpBody::Create { .. } => {}
            OpBody::MemberJoined { invitation, .. } => {
                let inv = &invitation.invitation;
                if !self.admins.contains(&inv.inviter) {
                    return Err(OpRejection::InviterNotAdmin);
                }
                if op.unix_ms >= inv.expires_at_unix_ms {
                    return Err(OpRejection::InvitationExpired {
                        expires_at_unix_ms: inv.expires_at_unix_ms,
                        op_unix_ms: op.unix_ms,
                    });
                }
                if self.any_in_past(self.revocations.get(&inv.nonce), &op.parents) {
                    return Err(OpRejection::InvitationRevoked);
                }
                if inv.policy == InvitePolicy::SingleUse
                    && self.any_in_past(self.single_uses.get(&inv.nonce), &op.parents)
                {
                    return Err(OpRejection::InvitationUsed);
                }
            }
            OpBody::MemberRemoved { member } => {
                if !author_is_admin {
                    return Err(OpRejection::RemovalByNonAdmin);
                }
                if self.admins.contains(member) {
                    return Err(OpRejection::CannotRemoveAdmin);
                }
            }
            OpBody::InvitationRevoked { .. } => {
                if !author_is_admin {
                    return Err(OpRejection::RevocationByNonAdmin);
                }
            }
        }
        Ok(depth)
    }

    /// Whether any of `targets` is in the causal past of `from` (inclusive of `from`).
    fn any_in_past(&self, targets: Option<&Vec<OpHash>>, from: &[OpHash]) -> bool {
        targets.is_some_and(|ts| ts.iter().any(|t| self.in_past(t, from)))
    }

    /// Whether `target` is one of `from` or an ancestor of one. Searches backwards, pruning
    /// below `target`'s depth (depth strictly decreases towards the genesis).
    fn in_past(&self, target: &OpHash, from: &[OpHash]) -> bool {
        let Some(target_depth) = self.applied.get(target).map(|a| a.depth) else {
            return false;
        };
        let mut stack: Vec<OpHash> = from.to_vec();
        let mut seen: BTreeSet<OpHash> = BTreeSet::new();
        while let Some(h) = stack.pop() {
            if h == *target {
                return true;
            }
            if !seen.insert(h) {
                continue;
            }
            let Some(node) = self.applied.get(&h) else {
                continue;
            };
            if node.depth <= target_depth {
                continue;
            }
            stack.extend(node.op.parents.iter().copied());
        }
        false
    }

    fn apply(&mut self, hash: OpHash, op: Op, depth: u64) {
        let order = OrderKey { depth, hash };
        for p in op.parents.iter() {
            self.heads.remove(p);
        }
        self.heads.insert(hash);
        match &op.body {
            OpBody::Create { admin, .. } => {
                self.admins.insert(*admin);
                self.set_membership(*admin, order, true);
            }
            OpBody::MemberJoined { member, invitation } => {
                self.set_membership(*member, order, true);
                if invitation.invitation.policy == InvitePolicy::SingleUse {
                    self.single_uses
                        .entry(invitation.invitation.nonce)
                        .or_default()
                        .push(hash);
                }
            }
            OpBody::MemberRemoved { member } => self.set_membership(*member, order, false),
            OpBody::InvitationRevoked { nonce } => {
                self.revocations.entry(*nonce).or_default().push(hash);
            }
        }
        tracing::trace!(ns = %self.namespace, op = %hash, kind = op.body.kind_name(), depth, "op applied");
        self.applied.insert(hash, AppliedOp { op, depth });
    }

    /// Last writer (largest order key) wins: any delivery order gives the same result.
    fn set_membership(&mut self, key: PublicKey, order: OrderKey, present: bool) {
        let newer = self.membership.get(&key).is_none_or(|m| m.last < order);
        if !newer {
            return;
        }
        self.membership.insert(
            key,
            Membership {
                last: order,
                present,
            },
        );
        if present {
            self.members.insert(key);
        } else {
            self.members.remove(&key);
        }
    }

    /// Applies (or rejects) buffered ops whose last missing parent was `hash`, transitively.
    fn wake_children(
        &mut self,
        hash: OpHash,
        applied: &mut Vec<OpHash>,
        rejected: &mut Vec<(OpHash, OpRejection)>,
    ) {
        let mut queue: VecDeque<OpHash> = VecDeque::from([hash]);
        while let Some(parent) = queue.pop_front() {
            let Some(waiters) = self.waiting_on.remove(&parent) else {
                continue;
            };
            for child in waiters {
                let ready = self
                    .pending
                    .get(&child)
                    .is_some_and(|op| op.parents.iter().all(|p| self.applied.contains_key(p)));
                if !ready {
                    continue;
                }
                let Some(op) = self.pending.remove(&child) else {
                    continue;
                };
                if self.applied.len() >= self.limits.max_ops {
                    self.stats.dropped_full += 1;
                    continue;
                }
                match self.validate_in_context(&op) {
                    Ok(depth) => {
                        self.apply(child, op, depth);
                        applied.push(child);
                        queue.push_back(child);
                    }
                    Err(reason) => self.reject_with_descendants(child, reason, rejected),
                }
            }
        }
    }

    /// Rejects `hash` and every buffered op that descends from it, listing them all in `out`.
    fn reject_with_descendants(
        &mut self,
        hash: OpHash,
        reason: OpRejection,
        out: &mut Vec<(OpHash, OpRejection)>,
    ) {
        let mut queue: VecDeque<(OpHash, OpRejection)> = VecDeque::from([(hash, reason)]);
        while let Some((h, why)) = queue.pop_front() {
            self.unbuffer(&h);
            if let Some(children) = self.waiting_on.remove(&h) {
                for child in children {
                    queue.push_back((child, OpRejection::ParentRejected(h)));
                }
            }
            tracing::debug!(ns = %self.namespace, op = %h, reason = why.as_str(), "op rejected");
            out.push((h, why.clone()));
            self.remember_rejected(h, why);
        }
    }

    fn remember_rejected(&mut self, hash: OpHash, reason: OpRejection) {
        *self.stats.rejected.entry(reason.as_str()).or_default() += 1;
        if self.limits.max_rejected_remembered == 0 {
            return;
        }
        if self.rejected.insert(hash, reason).is_none() {
            self.rejected_fifo.push_back(hash);
        }
        while self.rejected_fifo.len() > self.limits.max_rejected_remembered {
            if let Some(old) = self.rejected_fifo.pop_front() {
                self.rejected.remove(&old);
            }
        }
    }

    /// The causal past of the applied ops among `heads` (inclusive).
    fn past_of(&self, heads: &[OpHash]) -> BTreeSet<OpHash> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<OpHash> = heads
            .iter()
            .filter(|h| self.applied.contains_key(h))
            .copied()
            .collect();
        while let Some(h) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            if let Some(node) = self.applied.get(&h) {
                stack.extend(
                    node.op
                        .parents
                        .iter()
                        .filter(|p| !seen.contains(*p))
                        .copied(),
                );
            }
        }
        seen
    }

    /// `|past(heads)|` if every one of `heads` is applied, else `None`.
    ///
    /// A joiner holds a partner's whole causal past exactly when this equals the partner's
    /// advertised `applied_through` for the partner's advertised heads.
    pub fn applied_through_of(&self, heads: &[OpHash]) -> Option<u64> {
        if !heads.iter().all(|h| self.applied.contains_key(h)) {
            return None;
        }
        if heads.len() == self.heads.len() && heads.iter().all(|h| self.heads.contains(h)) {
            return Some(self.applied_through());
        }
        Some(u64::try_from(self.past_of(heads).len()).unwrap_or(u64::MAX))
    }

    /// Whether the applied op `ancestor` is `head` or in its causal past.
    pub fn descends_from(&self, head: &OpHash, ancestor: &OpHash) -> bool {
        self.in_past(ancestor, &[*head])
    }

    /// Every applied op that is not in the causal past of `their_heads`, in total order (so any
    /// prefix is closed under parents and applies without buffering). Unknown hashes in
    /// `their_heads` are ignored.
    pub fn ops_missing_for(&self, their_heads: &[OpHash]) -> Vec<Op> {
        self.missing_ops(their_heads, None, usize::MAX).0
    }

    /// Like [`Governance::ops_missing_for`], only ops ordered after `after` (if any, exclusive),
    /// at most `max` of them; the flag says whether more remain.
    pub fn missing_ops(
        &self,
        their_heads: &[OpHash],
        after: Option<OrderKey>,
        max: usize,
    ) -> (Vec<Op>, bool) {
        let known = self.past_of(their_heads);
        let mut keys: Vec<OrderKey> = self
            .applied
            .iter()
            .filter(|(h, _)| !known.contains(h))
            .map(|(h, a)| OrderKey {
                depth: a.depth,
                hash: *h,
            })
            .filter(|k| after.is_none_or(|after| *k > after))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > max;
        let ops = keys
            .into_iter()
            .take(max)
            .filter_map(|k| self.applied.get(&k.hash).map(|a| a.op.clone()))
            .collect();
        (ops, more)
    }

    /// Heads and applied count for a beacon carrying at most `max_heads` heads: all heads and
    /// `applied_through` when they fit; otherwise the latest `max_heads` heads and the size of
    /// *their* causal past, so the pair stays exact either way.
    pub fn beacon_view(&self, max_heads: usize) -> (Vec<OpHash>, u64) {
        if self.heads.len() <= max_heads {
            return (self.heads(), self.applied_through());
        }
        let heads = self.parents_for_new_op(max_heads);
        let applied = u64::try_from(self.past_of(&heads).len()).unwrap_or(u64::MAX);
        (heads, applied)
    }

    /// Checks the replica's internal invariants (tests, simulator, fuzzing). O(ops).
    pub fn check_invariants(&self) {
        // Every applied op's parents are applied, with smaller depth.
        for (h, a) in &self.applied {
            for p in a.op.parents.iter() {
                let parent = self.applied.get(p);
                assert!(parent.is_some(), "applied {h:?} has unapplied parent {p:?}");
                let parent_depth = parent.map_or(0, |x| x.depth);
                assert!(parent_depth < a.depth, "depth not increasing at {h:?}");
            }
        }
        // Heads are exactly the applied ops nobody names as a parent.
        let mut named: BTreeSet<OpHash> = BTreeSet::new();
        for a in self.applied.values() {
            named.extend(a.op.parents.iter().copied());
        }
        let expected: BTreeSet<OpHash> = self
            .applied
            .keys()
            .filter(|h| !named.contains(h))
            .copied()
            .collect();
        assert_eq!(expected, self.heads, "heads drifted");
        // Pending ops are not applied, each misses a parent, and is indexed.
        for (h, op) in &self.pending {
            assert!(!self.applied.contains_key(h), "{h:?} pending and applied");
            let missing: Vec<&OpHash> = op
                .parents
                .iter()
                .filter(|p| !self.applied.contains_key(p))
                .collect();
            assert!(!missing.is_empty(), "{h:?} pending with all parents");
            for p in missing {
                let indexed = self.waiting_on.get(p).is_some_and(|s| s.contains(h));
                assert!(indexed, "{h:?} not indexed under {p:?}");
            }
        }
        assert!(self.pending.len() <= self.limits.max_pending_ops);
        assert!(
            self.pending_order.len() <= self.limits.max_pending_ops.saturating_mul(2),
            "pending order unbounded"
        );
        let ordered: BTreeSet<&OpHash> = self.pending_order.iter().collect();
        assert!(
            self.pending.keys().all(|h| ordered.contains(h)),
            "a buffered op out of the drop order"
        );
        assert!(self.applied.len() <= self.limits.max_ops);
        // Members are exactly the present entries.
        let present: BTreeSet<PublicKey> = self
            .membership
            .iter()
            .filter(|(_, m)| m.present)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(present, self.members, "member set drifted");
    }
}
