//! The replicated token ledger: the state machine behind "a token admits at most one node, ever".
//!
//! Every replica of the metadata group applies the same committed [`LogEntry`]s in the same
//! order and so reaches the same state. To make that true, apply:
//!
//! * is **deterministic**: it reads only the entry, never a local clock. Time checks use the
//!   ledger clock, `max(previous ledger clock, entry.unix_ms)` — the proposer's wall clock,
//!   clamped so ledger time never runs backwards (otherwise a proposer with a slow clock could
//!   resurrect a token that was already purged);
//! * is **idempotent**: an index at or below `applied_index` is skipped, and a proposal id seen
//!   before (a proposal forwarded twice and committed twice) returns its first outcomes without
//!   applying again;
//! * **never panics** on an invalid transition: each command gets a typed [`Outcome`], and a
//!   refused command changes nothing.
//!
//! ## Lifecycle (DESIGN.md, "Ledger")
//!
//! ```text
//!              Register                BeginInFlight                Consume (+ member, atomically)
//!   (absent) ───────────▶ Issued ─────────────────────▶ InFlight ─────────────────────▶ Consumed
//!                           ▲   ◀───────────────────────    │ lease        (final: never changes)
//!                           │    Revert (same lease only)   │
//!                           │                               │ BeginInFlight by another presenter
//!                           │                               └─ once the lease has run out
//!   Issued / InFlight / Aborted ──Expire (at or after expires_at)──▶ Expired
//!   anything but Consumed ──Abort──▶ Aborted
//! ```
//!
//! ## Bounds
//! Records are kept until `expires_at + record_grace_ms` of ledger time, then purged (at most
//! `max_purge_per_entry` per entry). `Register` refuses beyond `max_token_records`; `Consume`
//! refuses beyond `max_members`. A purged token can never come back: `Register` refuses a token
//! whose retention has already passed, and the ledger clock never runs backwards.

use std::collections::{BTreeMap, BTreeSet};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::config::LedgerConfig;
use crate::crypto::{Hash32, PublicKey};
use crate::token::{Role, TokenHash};
use crate::wire::{
    self, BoundedString, BoundedVec, DecodeError, MessageKind, TooMany, WireMessage,
};

/// Most commands in one log entry.
pub const MAX_COMMANDS_PER_ENTRY: usize = 256;
/// Most addresses a member advertises.
pub const MAX_MEMBER_ADDRS: usize = 8;
/// Longest advertised address, in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// Version of the snapshot encoding.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

const DIGEST_DOMAIN: &[u8] = b"portcullis.ledger.digest.v1";

/// A replica (Raft node) id.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct NodeId(pub u64);

/// Who proposed an entry, and their sequence number for it.
///
/// A proposer MUST never reuse a `(node, seq)` pair for different commands, including across
/// its own restarts; a reused id is answered with the first proposal's outcomes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct ProposalId {
    /// The proposing node.
    pub node: NodeId,
    /// The proposer's sequence number, increasing.
    pub seq: u64,
}

/// SHA-256 of a joiner's node key: who presents a token. Not an address — two joiners behind
/// one NAT are two presenters.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct PresenterId(pub Hash32);

impl PresenterId {
    /// The presenter id of `node_key`.
    pub fn of(node_key: &PublicKey) -> PresenterId {
        PresenterId(node_key.hash())
    }
}

/// A lease on a token, chosen by the admitting listener.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct LeaseId(pub u64);

/// A member's id in the cluster (also its Raft id).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct MemberId(pub u64);

/// One advertised address.
pub type Addr = BoundedString<MAX_ADDR_BYTES>;
/// A member's advertised addresses.
pub type Addrs = BoundedVec<Addr, MAX_MEMBER_ADDRS>;

/// What a listener asks the registry to add when it consumes a token.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct MemberSpec {
    /// The joiner's node key; its hash MUST be the presenter.
    pub node_key: PublicKey,
    /// The role the token grants.
    pub role: Role,
    /// Where the joiner can be reached.
    pub addrs: Addrs,
}

/// A member of the cluster, as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct MemberRecord {
    /// Assigned at consume time, deterministically.
    pub member_id: MemberId,
    /// The member's node key.
    pub node_key: PublicKey,
    /// Its role.
    pub role: Role,
    /// Its advertised addresses.
    pub addrs: Addrs,
    /// The token that admitted it.
    pub token_hash: TokenHash,
    /// Ledger time of admission.
    pub admitted_at_unix_ms: u64,
}

/// A token's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum TokenState {
    /// Registered, nobody is being admitted with it.
    Issued,
    /// A listener is admitting `presenter` under `lease_id` until `lease_until_unix_ms`.
    InFlight {
        /// Who is being admitted.
        presenter: PresenterId,
        /// The listener's lease.
        lease_id: LeaseId,
        /// Ledger time at which the lease runs out.
        lease_until_unix_ms: u64,
    },
    /// Final. `presenter` was admitted as `member_id`.
    Consumed {
        /// Who was admitted.
        presenter: PresenterId,
        /// The member it became.
        member_id: MemberId,
        /// Ledger time of consumption.
        at_unix_ms: u64,
    },
    /// Past its expiry; can no longer admit.
    Expired,
    /// Revoked by the operator; can no longer admit.
    Aborted,
}

/// The name of a [`TokenState`], for tables and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum StateKind {
    /// [`TokenState::Issued`].
    Issued,
    /// [`TokenState::InFlight`].
    InFlight,
    /// [`TokenState::Consumed`].
    Consumed,
    /// [`TokenState::Expired`].
    Expired,
    /// [`TokenState::Aborted`].
    Aborted,
}

impl TokenState {
    /// The state's name.
    pub fn kind(&self) -> StateKind {
        match self {
            TokenState::Issued => StateKind::Issued,
            TokenState::InFlight { .. } => StateKind::InFlight,
            TokenState::Consumed { .. } => StateKind::Consumed,
            TokenState::Expired => StateKind::Expired,
            TokenState::Aborted => StateKind::Aborted,
        }
    }

    /// Issued or InFlight: the token may still admit someone.
    pub fn is_live(&self) -> bool {
        matches!(self, TokenState::Issued | TokenState::InFlight { .. })
    }
}

/// One token's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct TokenRecord {
    /// Where it is in its lifecycle.
    pub state: TokenState,
    /// Wall-clock expiry, Unix milliseconds.
    pub expires_at_unix_ms: u64,
    /// How many leases have been taken on it.
    pub attempts: u32,
}

/// A command in a log entry. See the module docs for the lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Command {
    /// Insert the token as `Issued` if absent. Never overwrites.
    Register {
        /// The token.
        hash: TokenHash,
        /// Its expiry, from the verified token body.
        expires_at_unix_ms: u64,
    },
    /// Take a lease on the token for `presenter`.
    BeginInFlight {
        /// The token.
        hash: TokenHash,
        /// Who is being admitted.
        presenter: PresenterId,
        /// The listener's lease id.
        lease_id: LeaseId,
        /// Lease length (at most `max_lease_ms`).
        lease_ms: u64,
    },
    /// Consume the token for the lease holder and add it to the registry, atomically.
    Consume {
        /// The token.
        hash: TokenHash,
        /// Who is being admitted; MUST be the hash of `member.node_key`.
        presenter: PresenterId,
        /// The lease the listener holds.
        lease_id: LeaseId,
        /// The member to add.
        member: MemberSpec,
    },
    /// Give the lease back (the admission failed part-way). A stale lease id does nothing.
    Revert {
        /// The token.
        hash: TokenHash,
        /// The lease to give back.
        lease_id: LeaseId,
    },
    /// Mark the token expired (ledger time at or after its expiry).
    Expire {
        /// The token.
        hash: TokenHash,
    },
    /// Revoke the token (operator). Works before the token was ever presented, too: an absent
    /// token is recorded as `Aborted`, kept until `expires_at_unix_ms` + grace.
    Abort {
        /// The token.
        hash: TokenHash,
        /// The token's expiry, used only when it has no record yet.
        expires_at_unix_ms: u64,
    },
}

impl Command {
    /// The token the command is about.
    pub fn hash(&self) -> TokenHash {
        match self {
            Command::Register { hash, .. }
            | Command::BeginInFlight { hash, .. }
            | Command::Consume { hash, .. }
            | Command::Revert { hash, .. }
            | Command::Expire { hash }
            | Command::Abort { hash, .. } => *hash,
        }
    }
}

/// A replicated log entry: who proposed it, when (their wall clock), and what.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct LogEntry {
    /// The proposal this entry carries, for deduplication and outcome routing.
    pub proposal: ProposalId,
    /// The proposer's wall clock at proposal time.
    pub unix_ms: u64,
    /// The commands, applied in order.
    pub commands: BoundedVec<Command, MAX_COMMANDS_PER_ENTRY>,
}

impl LogEntry {
    /// An entry; fails if there are more than [`MAX_COMMANDS_PER_ENTRY`] commands.
    pub fn new(
        proposal: ProposalId,
        unix_ms: u64,
        commands: Vec<Command>,
    ) -> Result<LogEntry, TooMany> {
        Ok(LogEntry {
            proposal,
            unix_ms,
            commands: BoundedVec::try_from_vec(commands)?,
        })
    }
}

impl WireMessage for LogEntry {
    const KIND: MessageKind = MessageKind::LedgerEntry;
}

/// Why a command changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// No record of the token.
    UnknownToken,
    /// Consumed by another presenter.
    AlreadyConsumed,
    /// At or past its expiry.
    TokenExpired,
    /// Revoked.
    TokenAborted,
    /// Another presenter holds a valid lease.
    LeaseHeldByOther {
        /// When that lease runs out.
        lease_until_unix_ms: u64,
    },
    /// In flight under another lease or presenter.
    LeaseMismatch,
    /// The lease ran out before the consume was applied.
    LeaseLapsed,
    /// The token is not in flight.
    NotInFlight,
    /// `Expire` before the token's expiry.
    NotYetExpired,
    /// `Consumed` is final.
    ConsumedIsFinal,
    /// The presenter is not the hash of the member's node key.
    PresenterKeyMismatch,
    /// The node key is already a member (admitted by another token).
    NodeAlreadyMember {
        /// Its member id.
        member_id: MemberId,
    },
    /// `max_token_records` reached.
    LedgerFull,
    /// `max_members` reached.
    MembershipFull,
    /// `lease_ms` is zero or above `max_lease_ms`.
    InvalidLease,
    /// The token's retention (expiry + grace) has already passed.
    PastRetention,
    /// The proposal id is older than the deduplication window: it may or may not have been
    /// applied before, so it is refused; the proposer must propose again under a new id.
    StaleProposal,
}

/// What one command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Inserted as `Issued`.
    Registered,
    /// Already had a record; nothing was overwritten.
    AlreadyRegistered,
    /// A lease was taken (the `attempt`-th).
    LeaseBegun {
        /// The attempt counter after this lease.
        attempt: u32,
    },
    /// The same presenter already holds this same lease: no-op.
    LeaseAlreadyHeld,
    /// Consumed; the presenter is now `member_id`.
    Consumed {
        /// The new member.
        member_id: MemberId,
    },
    /// Already consumed by this same presenter: the admission is served again.
    AlreadyConsumedBySame {
        /// The member it became.
        member_id: MemberId,
    },
    /// Back to `Issued`.
    Reverted,
    /// Now (or already) `Expired`.
    Expired,
    /// Now (or already) `Aborted`.
    Aborted,
    /// Nothing changed, for this reason.
    Refused(Refusal),
}

impl Outcome {
    /// The refusal, if the command changed nothing for a reason.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Outcome::Refused(r) => Some(*r),
            _ => None,
        }
    }
}

/// How an entry was treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Applied now.
    Fresh,
    /// The proposal was applied before at another index; `outcomes` are the first ones.
    DuplicateProposal,
    /// The index was at or below `applied_index`: skipped, `outcomes` is empty.
    AlreadyApplied,
    /// The proposal id fell out of the deduplication window; every command is refused.
    StaleProposal,
}

/// The result of applying one entry, routed back to its proposer by `proposal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The entry's log index.
    pub index: u64,
    /// The proposal it carried.
    pub proposal: ProposalId,
    /// How it was treated.
    pub disposition: Disposition,
    /// One outcome per command, in order.
    pub outcomes: Vec<Outcome>,
}

/// A proposer's recent proposals, for deduplication.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Session {
    /// Every proposal seq below this has been forgotten.
    pub floor_seq: u64,
    /// Outcomes of recent proposals by seq.
    pub recent: BTreeMap<u64, Vec<Outcome>>,
    /// Log index of this proposer's latest applied proposal (for eviction).
    pub last_index: u64,
}

/// The replicated state, exactly as snapshots carry it and the digest covers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct LedgerState {
    /// Highest log index applied.
    pub applied_index: u64,
    /// Ledger clock: max of all applied entries' `unix_ms`.
    pub clock_unix_ms: u64,
    /// Token records by hash.
    pub records: BTreeMap<TokenHash, TokenRecord>,
    /// The membership registry.
    pub members: BTreeMap<MemberId, MemberRecord>,
    /// The id the next admitted member gets.
    pub next_member_id: u64,
    /// Deduplication sessions by proposer.
    pub sessions: BTreeMap<NodeId, Session>,
}

/// A whole-ledger snapshot as it travels and is stored.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct LedgerSnapshot {
    /// [`SNAPSHOT_FORMAT_VERSION`].
    pub format_version: u8,
    /// The state.
    pub state: LedgerState,
}

impl WireMessage for LedgerSnapshot {
    const KIND: MessageKind = MessageKind::LedgerSnapshot;
}

/// Why a snapshot could not be loaded. Whoever sent it is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not decode.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// Made by a snapshot format this build does not read.
    #[error("unsupported snapshot format {0}")]
    UnsupportedFormat(u8),
    /// It holds more than this ledger's configured bounds.
    #[error("snapshot holds {len} {what}, above the bound of {max}")]
    OverBound {
        /// What is over.
        what: &'static str,
        /// How many.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// It decodes but is internally inconsistent.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(#[from] InvariantViolation),
}

/// A broken ledger invariant. Seeing one means a bug (or a corrupt snapshot).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvariantViolation {
    /// The expiry index disagrees with the records.
    #[error("expiry index out of step with records")]
    ExpiryIndex,
    /// The live-token index disagrees with the records.
    #[error("live index out of step with records")]
    LiveIndex,
    /// The in-flight index disagrees with the records.
    #[error("in-flight index out of step with records")]
    InFlightIndex,
    /// A consumed token names a member that does not exist.
    #[error("token {0} is consumed by a member the registry does not have")]
    ConsumedWithoutMember(TokenHash),
    /// A consumed token's member came from another token or key.
    #[error("token {0} is consumed but its member does not match it")]
    ConsumedMemberMismatch(TokenHash),
    /// The key index disagrees with the members.
    #[error("member key index out of step with members")]
    MemberKeyIndex,
    /// A member id is not below `next_member_id`.
    #[error("member id {0} is not below next_member_id")]
    MemberIdAhead(u64),
    /// A member's key map entry is wrong.
    #[error("member {0} is stored under another id")]
    MemberIdMismatch(u64),
    /// Too many records or members.
    #[error("{0} over its bound")]
    OverBound(&'static str),
    /// A token that had a lease taken shows zero attempts.
    #[error("token {0} has no attempts but was leased")]
    NoAttempts(TokenHash),
    /// A session is over its window or below its floor.
    #[error("proposer session {0:?} broken")]
    Session(NodeId),
}

/// A key in a time-ordered index: `(time, first 8 bytes of the token hash)`.
///
/// Sixteen bytes of integers instead of a 40-byte `(time, hash)` keeps the indices small and
/// their comparisons cheap. Two hashes may share a prefix: entries are counted, and every use
/// resolves a key against `records` with a range scan over that prefix, so a collision costs a
/// little time and never correctness.
type TimeKey = (u64, u64);

fn hash_prefix(hash: &TokenHash) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash.0.0[..8]);
    u64::from_be_bytes(head)
}

/// All hashes that start with `prefix`, as a `records` range.
fn prefix_range(prefix: u64) -> core::ops::RangeInclusive<TokenHash> {
    let mut low = [0u8; 32];
    low[..8].copy_from_slice(&prefix.to_be_bytes());
    let mut high = [0xffu8; 32];
    high[..8].copy_from_slice(&prefix.to_be_bytes());
    TokenHash(Hash32(low))..=TokenHash(Hash32(high))
}

/// A multiset of [`TimeKey`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CountedIndex(BTreeMap<TimeKey, u32>);

impl CountedIndex {
    fn add(&mut self, time: u64, hash: &TokenHash) {
        *self.0.entry((time, hash_prefix(hash))).or_insert(0) += 1;
    }

    fn remove(&mut self, time: u64, hash: &TokenHash) {
        let key = (time, hash_prefix(hash));
        if let Some(count) = self.0.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&key);
            }
        }
    }
}

/// The derived indices, rebuilt from records on snapshot load. Kept apart from
/// [`LedgerState`] so a record and the indices can be borrowed mutably at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Indices {
    /// Expiry of every record: drives purge.
    by_expiry: CountedIndex,
    /// Expiry of Issued and InFlight records: drives the sweeper's `Expire`.
    live_by_expiry: CountedIndex,
    /// `(lease_until, hash)` of InFlight records (few): drives the sweeper's `Revert`.
    in_flight: BTreeSet<(u64, TokenHash)>,
}

impl Indices {
    fn track(&mut self, hash: &TokenHash, record: &TokenRecord) {
        self.by_expiry.add(record.expires_at_unix_ms, hash);
        self.track_state(hash, record);
    }

    fn track_state(&mut self, hash: &TokenHash, record: &TokenRecord) {
        if record.state.is_live() {
            self.live_by_expiry.add(record.expires_at_unix_ms, hash);
        }
        if let TokenState::InFlight {
            lease_until_unix_ms,
            ..
        } = record.state
        {
            self.in_flight.insert((lease_until_unix_ms, *hash));
        }
    }

    fn untrack_state(&mut self, hash: &TokenHash, record: &TokenRecord) {
        if record.state.is_live() {
            self.live_by_expiry.remove(record.expires_at_unix_ms, hash);
        }
        if let TokenState::InFlight {
            lease_until_unix_ms,
            ..
        } = record.state
        {
            self.in_flight.remove(&(lease_until_unix_ms, *hash));
        }
    }

    /// The one place a record's state changes, so the indices follow it.
    fn set_state(&mut self, hash: &TokenHash, record: &mut TokenRecord, state: TokenState) {
        // Consumed is final: the one property this crate exists for.
        assert!(
            !matches!(record.state, TokenState::Consumed { .. }),
            "a Consumed token changed state"
        );
        let was_live = record.state.is_live();
        if let TokenState::InFlight {
            lease_until_unix_ms,
            ..
        } = record.state
        {
            self.in_flight.remove(&(lease_until_unix_ms, *hash));
        }
        record.state = state;
        if let TokenState::InFlight {
            lease_until_unix_ms,
            ..
        } = state
        {
            self.in_flight.insert((lease_until_unix_ms, *hash));
        }
        // Issued <-> InFlight keeps the token live under the same expiry: no index change.
        match (was_live, state.is_live()) {
            (true, false) => self.live_by_expiry.remove(record.expires_at_unix_ms, hash),
            (false, true) => self.live_by_expiry.add(record.expires_at_unix_ms, hash),
            _ => {}
        }
    }

    fn rebuild(records: &BTreeMap<TokenHash, TokenRecord>) -> Indices {
        let mut indices = Indices::default();
        for (hash, record) in records {
            indices.track(hash, record);
        }
        indices
    }
}

/// The ledger: replicated state plus derived indices.
#[derive(Clone, Debug)]
pub struct Ledger {
    config: LedgerConfig,
    state: LedgerState,
    indices: Indices,
    /// Member id by node key.
    member_by_key: BTreeMap<PublicKey, MemberId>,
}

impl Ledger {
    /// An empty ledger. Every replica of a cluster MUST use the same `config`.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::config::LedgerConfig;
    /// use portcullis_core::crypto::Hash32;
    /// use portcullis_core::ledger::*;
    /// use portcullis_core::token::TokenHash;
    ///
    /// let mut ledger = Ledger::new(LedgerConfig::default());
    /// let hash = TokenHash(Hash32([1; 32]));
    /// let entry = LogEntry::new(
    ///     ProposalId { node: NodeId(1), seq: 1 },
    ///     1_000,
    ///     vec![Command::Register { hash, expires_at_unix_ms: 60_000 }],
    /// ).unwrap();
    /// let applied = ledger.apply(1, &entry);
    /// assert_eq!(applied.outcomes, vec![Outcome::Registered]);
    /// // Replaying the same index is a no-op.
    /// let digest = ledger.digest();
    /// assert_eq!(ledger.apply(1, &entry).disposition, Disposition::AlreadyApplied);
    /// assert_eq!(ledger.digest(), digest);
    /// ```
    pub fn new(config: LedgerConfig) -> Ledger {
        Ledger {
            config,
            state: LedgerState {
                next_member_id: 1,
                ..LedgerState::default()
            },
            indices: Indices::default(),
            member_by_key: BTreeMap::new(),
        }
    }

    /// The ledger a cluster starts from: `members` become members `1..=n`, in order, admitted
    /// by no token (the zero hash). Every founding node MUST pass the same list.
    pub fn bootstrap(config: LedgerConfig, members: &[MemberSpec]) -> Result<Ledger, TooMany> {
        let max = to_usize(config.max_members);
        if members.len() > max {
            return Err(TooMany {
                len: members.len(),
                max,
            });
        }
        let mut ledger = Ledger::new(config);
        for spec in members {
            let member_id = MemberId(ledger.state.next_member_id);
            ledger.state.next_member_id += 1;
            ledger.member_by_key.insert(spec.node_key, member_id);
            ledger.state.members.insert(
                member_id,
                MemberRecord {
                    member_id,
                    node_key: spec.node_key,
                    role: spec.role,
                    addrs: spec.addrs.clone(),
                    token_hash: TokenHash::default(),
                    admitted_at_unix_ms: 0,
                },
            );
        }
        Ok(ledger)
    }

    /// The replicated state.
    pub fn state(&self) -> &LedgerState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Highest applied log index.
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index
    }

    /// The ledger clock (max applied entry time).
    pub fn clock_unix_ms(&self) -> u64 {
        self.state.clock_unix_ms
    }

    /// A token's record.
    pub fn record(&self, hash: &TokenHash) -> Option<&TokenRecord> {
        self.state.records.get(hash)
    }

    /// How many token records are held.
    pub fn record_count(&self) -> usize {
        self.state.records.len()
    }

    /// A member by id.
    pub fn member(&self, id: MemberId) -> Option<&MemberRecord> {
        self.state.members.get(&id)
    }

    /// A member by node key.
    pub fn member_by_key(&self, key: &PublicKey) -> Option<&MemberRecord> {
        self.member_by_key
            .get(key)
            .and_then(|id| self.state.members.get(id))
    }

    /// All members, by id.
    pub fn members(&self) -> impl Iterator<Item = &MemberRecord> {
        self.state.members.values()
    }

    /// SHA-256 over the canonical encoding of the whole replicated state. Replicas at equal
    /// `applied_index` MUST have equal digests.
    pub fn digest(&self) -> Hash32 {
        Hash32::of(&[DIGEST_DOMAIN, &wire::encode(&self.state)])
    }

    /// Marks `index` applied without a ledger entry (Raft's empty and conf-change entries).
    pub fn advance_applied(&mut self, index: u64) {
        self.state.applied_index = self.state.applied_index.max(index);
    }

    /// Applies the committed entry at `index`.
    ///
    /// Indices MUST be fed in increasing order; gaps (entries that are not ledger entries) are
    /// allowed. An index at or below `applied_index` is skipped.
    pub fn apply(&mut self, index: u64, entry: &LogEntry) -> Applied {
        let mut applied = Applied {
            index,
            proposal: entry.proposal,
            disposition: Disposition::AlreadyApplied,
            outcomes: Vec::new(),
        };
        if index <= self.state.applied_index {
            return applied;
        }
        self.state.applied_index = index;
        self.state.clock_unix_ms = self.state.clock_unix_ms.max(entry.unix_ms);
        self.purge_expired();

        let (disposition, outcomes) = match self.session_lookup(entry.proposal) {
            SessionLookup::Duplicate(outcomes) => (Disposition::DuplicateProposal, outcomes),
            SessionLookup::Stale => (
                Disposition::StaleProposal,
                vec![Outcome::Refused(Refusal::StaleProposal); entry.commands.len()],
            ),
            SessionLookup::New => {
                let outcomes: Vec<Outcome> = entry
                    .commands
                    .iter()
                    .map(|c| self.apply_command(c))
                    .collect();
                self.session_record(entry.proposal, index, outcomes.clone());
                (Disposition::Fresh, outcomes)
            }
        };
        applied.disposition = disposition;
        applied.outcomes = outcomes;
        debug_assert_eq!(self.check_invariants(), Ok(()));
        applied
    }

    fn apply_command(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Register {
                hash,
                expires_at_unix_ms,
            } => self.insert(
                *hash,
                TokenState::Issued,
                *expires_at_unix_ms,
                Outcome::Registered,
            ),
            Command::BeginInFlight {
                hash,
                presenter,
                lease_id,
                lease_ms,
            } => self.begin_in_flight(*hash, *presenter, *lease_id, *lease_ms),
            Command::Consume {
                hash,
                presenter,
                lease_id,
                member,
            } => self.consume(*hash, *presenter, *lease_id, member),
            Command::Revert { hash, lease_id } => {
                let Some(record) = self.state.records.get_mut(hash) else {
                    return Outcome::Refused(Refusal::UnknownToken);
                };
                #[cfg(feature = "canaries")]
                let ignore_lease = self.config.canary == crate::config::Canary::RevertIgnoresLease;
                #[cfg(not(feature = "canaries"))]
                let ignore_lease = false;
                match record.state {
                    TokenState::InFlight { lease_id: held, .. }
                        if held == *lease_id || ignore_lease =>
                    {
                        self.indices.set_state(hash, record, TokenState::Issued);
                        Outcome::Reverted
                    }
                    TokenState::InFlight { .. } => Outcome::Refused(Refusal::LeaseMismatch),
                    _ => Outcome::Refused(Refusal::NotInFlight),
                }
            }
            Command::Expire { hash } => {
                let now = self.state.clock_unix_ms;
                let Some(record) = self.state.records.get_mut(hash) else {
                    return Outcome::Refused(Refusal::UnknownToken);
                };
                if matches!(record.state, TokenState::Consumed { .. }) {
                    return Outcome::Refused(Refusal::ConsumedIsFinal);
                }
                if now < record.expires_at_unix_ms {
                    return Outcome::Refused(Refusal::NotYetExpired);
                }
                self.indices.set_state(hash, record, TokenState::Expired);
                Outcome::Expired
            }
            Command::Abort {
                hash,
                expires_at_unix_ms,
            } => {
                let Some(record) = self.state.records.get_mut(hash) else {
                    return self.insert(
                        *hash,
                        TokenState::Aborted,
                        *expires_at_unix_ms,
                        Outcome::Aborted,
                    );
                };
                if matches!(record.state, TokenState::Consumed { .. }) {
                    return Outcome::Refused(Refusal::ConsumedIsFinal);
                }
                self.indices.set_state(hash, record, TokenState::Aborted);
                Outcome::Aborted
            }
        }
    }

    /// Inserts a record in `state` if the token has none (never overwrites).
    fn insert(
        &mut self,
        hash: TokenHash,
        state: TokenState,
        expires_at_unix_ms: u64,
        done: Outcome,
    ) -> Outcome {
        let retained_until = expires_at_unix_ms.saturating_add(self.config.record_grace_ms);
        let full = self.state.records.len() >= to_usize(self.config.max_token_records);
        let past_retention = retained_until <= self.state.clock_unix_ms;
        #[cfg(feature = "canaries")]
        if self.config.canary == crate::config::Canary::RegisterOverwrites
            && state == TokenState::Issued
            && let Some(old) = self.state.records.remove(&hash)
        {
            // Planted bug: forget the old record (even a Consumed one) and start over.
            self.indices.by_expiry.remove(old.expires_at_unix_ms, &hash);
            self.indices.untrack_state(&hash, &old);
        }
        match self.state.records.entry(hash) {
            std::collections::btree_map::Entry::Occupied(_) => Outcome::AlreadyRegistered,
            std::collections::btree_map::Entry::Vacant(_) if past_retention => {
                Outcome::Refused(Refusal::PastRetention)
            }
            std::collections::btree_map::Entry::Vacant(_) if full => {
                Outcome::Refused(Refusal::LedgerFull)
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                let record = slot.insert(TokenRecord {
                    state,
                    expires_at_unix_ms,
                    attempts: 0,
                });
                self.indices.track(&hash, record);
                done
            }
        }
    }

    fn begin_in_flight(
        &mut self,
        hash: TokenHash,
        presenter: PresenterId,
        lease_id: LeaseId,
        lease_ms: u64,
    ) -> Outcome {
        let now = self.state.clock_unix_ms;
        if lease_ms == 0 || lease_ms > self.config.max_lease_ms {
            return Outcome::Refused(Refusal::InvalidLease);
        }
        let Some(record) = self.state.records.get_mut(&hash) else {
            return Outcome::Refused(Refusal::UnknownToken);
        };
        match record.state {
            TokenState::Consumed { .. } => return Outcome::Refused(Refusal::AlreadyConsumed),
            TokenState::Aborted => return Outcome::Refused(Refusal::TokenAborted),
            TokenState::Expired => return Outcome::Refused(Refusal::TokenExpired),
            TokenState::InFlight {
                presenter: holder,
                lease_id: held,
                lease_until_unix_ms,
            } => {
                if holder == presenter && held == lease_id {
                    return Outcome::LeaseAlreadyHeld;
                }
                if now < lease_until_unix_ms {
                    return Outcome::Refused(Refusal::LeaseHeldByOther {
                        lease_until_unix_ms,
                    });
                }
            }
            TokenState::Issued => {}
        }
        if now >= record.expires_at_unix_ms {
            return Outcome::Refused(Refusal::TokenExpired);
        }
        record.attempts = record.attempts.saturating_add(1);
        self.indices.set_state(
            &hash,
            record,
            TokenState::InFlight {
                presenter,
                lease_id,
                lease_until_unix_ms: now.saturating_add(lease_ms),
            },
        );
        Outcome::LeaseBegun {
            attempt: record.attempts,
        }
    }

    fn consume(
        &mut self,
        hash: TokenHash,
        presenter: PresenterId,
        lease_id: LeaseId,
        member: &MemberSpec,
    ) -> Outcome {
        let now = self.state.clock_unix_ms;
        // A presenter that is not the hash of the member's key is a malformed command in every
        // state: check it before anything can be served on its behalf.
        if PresenterId::of(&member.node_key) != presenter {
            return Outcome::Refused(Refusal::PresenterKeyMismatch);
        }
        let Some(record) = self.state.records.get_mut(&hash) else {
            return Outcome::Refused(Refusal::UnknownToken);
        };
        match record.state {
            TokenState::Consumed {
                presenter: consumer,
                member_id,
                ..
            } => {
                if consumer == presenter {
                    return Outcome::AlreadyConsumedBySame { member_id };
                }
                return Outcome::Refused(Refusal::AlreadyConsumed);
            }
            TokenState::Issued => return Outcome::Refused(Refusal::NotInFlight),
            TokenState::Expired => return Outcome::Refused(Refusal::TokenExpired),
            TokenState::Aborted => return Outcome::Refused(Refusal::TokenAborted),
            TokenState::InFlight {
                presenter: holder,
                lease_id: held,
                lease_until_unix_ms,
            } => {
                if holder != presenter || held != lease_id {
                    return Outcome::Refused(Refusal::LeaseMismatch);
                }
                if now >= lease_until_unix_ms {
                    return Outcome::Refused(Refusal::LeaseLapsed);
                }
            }
        }
        let member_id = MemberId(self.state.next_member_id);
        // Ids are never reused: when they run out, the registry is full.
        let Some(next_member_id) = self.state.next_member_id.checked_add(1) else {
            return Outcome::Refused(Refusal::MembershipFull);
        };
        if self.state.members.len() >= to_usize(self.config.max_members) {
            return Outcome::Refused(Refusal::MembershipFull);
        }
        match self.member_by_key.entry(member.node_key) {
            std::collections::btree_map::Entry::Occupied(existing) => {
                return Outcome::Refused(Refusal::NodeAlreadyMember {
                    member_id: *existing.get(),
                });
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(member_id);
            }
        }
        self.state.next_member_id = next_member_id;
        self.state.members.insert(
            member_id,
            MemberRecord {
                member_id,
                node_key: member.node_key,
                role: member.role,
                addrs: member.addrs.clone(),
                token_hash: hash,
                admitted_at_unix_ms: now,
            },
        );
        self.indices.set_state(
            &hash,
            record,
            TokenState::Consumed {
                presenter,
                member_id,
                at_unix_ms: now,
            },
        );
        Outcome::Consumed { member_id }
    }

    /// Drops records whose retention has passed, at most `max_purge_per_entry` at a time.
    fn purge_expired(&mut self) {
        let now = self.state.clock_unix_ms;
        let grace = self.config.record_grace_ms;
        let mut budget = self.config.max_purge_per_entry;
        while budget > 0 {
            let Some((&(expires_at, prefix), _)) = self.indices.by_expiry.0.first_key_value()
            else {
                return;
            };
            if expires_at.saturating_add(grace) > now {
                return;
            }
            let due: Vec<TokenHash> = self
                .state
                .records
                .range(prefix_range(prefix))
                .filter(|(_, r)| r.expires_at_unix_ms == expires_at)
                .map(|(h, _)| *h)
                .take(to_usize(budget))
                .collect();
            if due.is_empty() {
                // Unreachable while the indices match the records; never spin on it.
                self.indices.by_expiry.0.remove(&(expires_at, prefix));
                continue;
            }
            for hash in due {
                if let Some(record) = self.state.records.remove(&hash) {
                    self.indices.by_expiry.remove(expires_at, &hash);
                    self.indices.untrack_state(&hash, &record);
                    budget -= 1;
                }
            }
        }
    }

    fn session_lookup(&self, proposal: ProposalId) -> SessionLookup {
        let Some(session) = self.state.sessions.get(&proposal.node) else {
            return SessionLookup::New;
        };
        if proposal.seq < session.floor_seq {
            return SessionLookup::Stale;
        }
        match session.recent.get(&proposal.seq) {
            Some(outcomes) => SessionLookup::Duplicate(outcomes.clone()),
            None => SessionLookup::New,
        }
    }

    fn session_record(&mut self, proposal: ProposalId, index: u64, outcomes: Vec<Outcome>) {
        // Bound the number of sessions: at most one per possible member plus bootstrap
        // proposers; beyond that, forget the proposer that has been quiet longest.
        let max_sessions = max_sessions(&self.config);
        if !self.state.sessions.contains_key(&proposal.node)
            && self.state.sessions.len() >= max_sessions
        {
            let quietest = self
                .state
                .sessions
                .iter()
                .min_by_key(|(node, s)| (s.last_index, **node))
                .map(|(node, _)| *node);
            if let Some(node) = quietest {
                self.state.sessions.remove(&node);
            }
        }
        let window = to_usize(self.config.proposal_window);
        let session = self.state.sessions.entry(proposal.node).or_default();
        session.recent.insert(proposal.seq, outcomes);
        session.last_index = index;
        while session.recent.len() > window {
            if let Some((oldest, _)) = session.recent.pop_first() {
                session.floor_seq = session.floor_seq.max(oldest.saturating_add(1));
            }
        }
    }

    /// Commands the leader should propose at `now_unix_ms`: `Expire` for live tokens past
    /// expiry, then `Revert` for leases that ran out on unexpired tokens; at most
    /// `max_commands`, in a deterministic order.
    pub fn sweep(&self, now_unix_ms: u64, max_commands: usize) -> Vec<Command> {
        let mut out = Vec::new();
        'expiry: for &(expires_at, prefix) in self.indices.live_by_expiry.0.keys() {
            if expires_at > now_unix_ms {
                break;
            }
            for (hash, record) in self.state.records.range(prefix_range(prefix)) {
                if out.len() >= max_commands {
                    break 'expiry;
                }
                if record.expires_at_unix_ms == expires_at && record.state.is_live() {
                    out.push(Command::Expire { hash: *hash });
                }
            }
        }
        for &(lease_until, hash) in &self.indices.in_flight {
            if lease_until > now_unix_ms || out.len() >= max_commands {
                break;
            }
            let Some(record) = self.state.records.get(&hash) else {
                continue;
            };
            let TokenState::InFlight { lease_id, .. } = record.state else {
                continue;
            };
            if record.expires_at_unix_ms <= now_unix_ms {
                continue; // Already asked to expire above.
            }
            out.push(Command::Revert { hash, lease_id });
        }
        out
    }

    /// The whole replicated state, encoded as a framed [`LedgerSnapshot`].
    pub fn snapshot(&self) -> Vec<u8> {
        wire::encode_frame(&LedgerSnapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            state: self.state.clone(),
        })
    }

    /// Rebuilds a ledger from [`Ledger::snapshot`] bytes, rebuilding and checking every index.
    ///
    /// `max_snapshot_bytes` bounds the input (snapshots are larger than frames).
    pub fn from_snapshot(
        config: LedgerConfig,
        bytes: &[u8],
        max_snapshot_bytes: usize,
    ) -> Result<Ledger, SnapshotError> {
        let limits = wire::Limits {
            max_frame_bytes: max_snapshot_bytes,
        };
        let snapshot: LedgerSnapshot = wire::decode_frame(bytes, &limits)?;
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedFormat(snapshot.format_version));
        }
        let state = snapshot.state;
        let over = |what, len: usize, max: u32| {
            if len > to_usize(max) {
                return Err(SnapshotError::OverBound {
                    what,
                    len,
                    max: to_usize(max),
                });
            }
            Ok(())
        };
        over(
            "token records",
            state.records.len(),
            config.max_token_records,
        )?;
        over("members", state.members.len(), config.max_members)?;
        let ledger = Ledger {
            config,
            indices: Indices::rebuild(&state.records),
            member_by_key: state
                .members
                .iter()
                .map(|(id, m)| (m.node_key, *id))
                .collect(),
            state,
        };
        ledger.check_invariants()?;
        Ok(ledger)
    }

    /// Checks every structural invariant. Called after every apply in debug builds, by the
    /// simulator's checkers, and on every loaded snapshot.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_state_invariants()?;
        self.check_index_invariants()
    }

    /// The invariants of the replicated [`LedgerState`] alone (bounds, consumed records and
    /// their members, member ids, proposer sessions): a pure function of the state and the
    /// config, so two ledgers with equal states and configs pass or fail them alike. A checker
    /// that has checked one replica's state need not check an equal state again; the derived
    /// indices, which each replica builds for itself, it MUST still check with
    /// [`Ledger::check_index_invariants`].
    ///
    /// # Example
    /// ```
    /// use portcullis_core::config::LedgerConfig;
    /// use portcullis_core::ledger::Ledger;
    ///
    /// let first = Ledger::new(LedgerConfig::default());
    /// let second = first.clone();
    /// // The whole check for the first replica seen with this state...
    /// assert_eq!(first.check_invariants(), Ok(()));
    /// // ...and only its own indices for another replica with an equal state.
    /// assert_eq!(second.state(), first.state());
    /// assert_eq!(second.check_index_invariants(), Ok(()));
    /// assert_eq!(second.check_state_invariants(), Ok(()));
    /// ```
    pub fn check_state_invariants(&self) -> Result<(), InvariantViolation> {
        let s = &self.state;
        if s.records.len() > to_usize(self.config.max_token_records) {
            return Err(InvariantViolation::OverBound("token records"));
        }
        if s.members.len() > to_usize(self.config.max_members) {
            return Err(InvariantViolation::OverBound("members"));
        }
        for (hash, record) in &s.records {
            let leased = matches!(
                record.state,
                TokenState::InFlight { .. } | TokenState::Consumed { .. }
            );
            if leased && record.attempts == 0 {
                return Err(InvariantViolation::NoAttempts(*hash));
            }
            if let TokenState::Consumed {
                presenter,
                member_id,
                ..
            } = record.state
            {
                let member = s
                    .members
                    .get(&member_id)
                    .ok_or(InvariantViolation::ConsumedWithoutMember(*hash))?;
                if member.token_hash != *hash {
                    return Err(InvariantViolation::ConsumedMemberMismatch(*hash));
                }
                if PresenterId::of(&member.node_key) != presenter {
                    return Err(InvariantViolation::ConsumedMemberMismatch(*hash));
                }
            }
        }
        for (id, member) in &s.members {
            if member.member_id != *id {
                return Err(InvariantViolation::MemberIdMismatch(id.0));
            }
            if id.0 >= s.next_member_id {
                return Err(InvariantViolation::MemberIdAhead(id.0));
            }
        }
        if s.sessions.len() > max_sessions(&self.config) {
            return Err(InvariantViolation::OverBound("proposer sessions"));
        }
        for (node, session) in &s.sessions {
            if session.recent.len() > to_usize(self.config.proposal_window) {
                return Err(InvariantViolation::Session(*node));
            }
            if session
                .recent
                .first_key_value()
                .is_some_and(|(seq, _)| *seq < session.floor_seq)
            {
                return Err(InvariantViolation::Session(*node));
            }
        }
        Ok(())
    }

    /// The invariants of this replica's derived indices (token expiry and lease indices, the
    /// member-by-key map): each must be exactly what the state implies.
    pub fn check_index_invariants(&self) -> Result<(), InvariantViolation> {
        let s = &self.state;
        let expected = Indices::rebuild(&s.records);
        if expected.by_expiry != self.indices.by_expiry {
            return Err(InvariantViolation::ExpiryIndex);
        }
        if expected.live_by_expiry != self.indices.live_by_expiry {
            return Err(InvariantViolation::LiveIndex);
        }
        if expected.in_flight != self.indices.in_flight {
            return Err(InvariantViolation::InFlightIndex);
        }
        if self.member_by_key.len() != s.members.len() {
            return Err(InvariantViolation::MemberKeyIndex);
        }
        for (id, member) in &s.members {
            if self.member_by_key.get(&member.node_key) != Some(id) {
                return Err(InvariantViolation::MemberKeyIndex);
            }
        }
        Ok(())
    }
}

enum SessionLookup {
    New,
    Duplicate(Vec<Outcome>),
    Stale,
}

/// At most one proposer session per possible member, plus a few for founders and restarts.
fn max_sessions(config: &LedgerConfig) -> usize {
    to_usize(config.max_members).saturating_add(16)
}

fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::rng::SeededRng;

    fn hash(n: u8) -> TokenHash {
        TokenHash(Hash32([n; 32]))
    }

    fn entry(seq: u64, unix_ms: u64, commands: Vec<Command>) -> LogEntry {
        LogEntry::new(
            ProposalId {
                node: NodeId(1),
                seq,
            },
            unix_ms,
            commands,
        )
        .unwrap()
    }

    fn spec(key: &SecretKey) -> MemberSpec {
        MemberSpec {
            node_key: key.public(),
            role: Role::Member,
            addrs: Addrs::new(),
        }
    }

    #[test]
    fn full_admission_then_replay_by_same_and_other_presenter() {
        let mut rng = SeededRng::from_u64(1);
        let alice = SecretKey::generate(&mut rng);
        let bob = SecretKey::generate(&mut rng);
        let pa = PresenterId::of(&alice.public());
        let pb = PresenterId::of(&bob.public());
        let mut l = Ledger::new(LedgerConfig::default());
        let h = hash(1);
        let a = l.apply(
            1,
            &entry(
                1,
                1_000,
                vec![
                    Command::Register {
                        hash: h,
                        expires_at_unix_ms: 100_000,
                    },
                    Command::BeginInFlight {
                        hash: h,
                        presenter: pa,
                        lease_id: LeaseId(7),
                        lease_ms: 5_000,
                    },
                ],
            ),
        );
        assert_eq!(
            a.outcomes,
            vec![Outcome::Registered, Outcome::LeaseBegun { attempt: 1 }]
        );
        let consume = |p, key: &SecretKey| Command::Consume {
            hash: h,
            presenter: p,
            lease_id: LeaseId(7),
            member: spec(key),
        };
        let c = l.apply(2, &entry(2, 2_000, vec![consume(pa, &alice)]));
        assert_eq!(
            c.outcomes,
            vec![Outcome::Consumed {
                member_id: MemberId(1)
            }]
        );
        assert_eq!(
            l.member_by_key(&alice.public()).unwrap().member_id,
            MemberId(1)
        );
        // Same presenter again: served again. Another presenter: refused.
        let again = l.apply(
            3,
            &entry(3, 2_100, vec![consume(pa, &alice), consume(pb, &bob)]),
        );
        assert_eq!(
            again.outcomes,
            vec![
                Outcome::AlreadyConsumedBySame {
                    member_id: MemberId(1)
                },
                Outcome::Refused(Refusal::AlreadyConsumed)
            ]
        );
    }

    #[test]
    fn duplicate_proposal_returns_first_outcomes_without_reapplying() {
        let mut l = Ledger::new(LedgerConfig::default());
        let e = entry(
            1,
            1_000,
            vec![Command::Register {
                hash: hash(1),
                expires_at_unix_ms: 10_000,
            }],
        );
        let first = l.apply(1, &e);
        let records_before = l.state().records.clone();
        let dup = l.apply(2, &e);
        assert_eq!(dup.disposition, Disposition::DuplicateProposal);
        assert_eq!(dup.outcomes, first.outcomes);
        assert_eq!(l.state().records, records_before);
    }

    #[test]
    fn proposals_below_the_window_are_refused_as_stale() {
        let config = LedgerConfig {
            proposal_window: 2,
            ..LedgerConfig::default()
        };
        let mut l = Ledger::new(config);
        for seq in 1..=3 {
            l.apply(seq, &entry(seq, 1_000, vec![]));
        }
        let stale = l.apply(4, &entry(1, 1_000, vec![Command::Expire { hash: hash(1) }]));
        assert_eq!(stale.disposition, Disposition::StaleProposal);
        assert_eq!(
            stale.outcomes,
            vec![Outcome::Refused(Refusal::StaleProposal)]
        );
    }

    #[test]
    fn records_are_purged_after_grace_and_cannot_return() {
        let config = LedgerConfig {
            record_grace_ms: 1_000,
            max_lease_ms: 500,
            ..LedgerConfig::default()
        };
        let mut l = Ledger::new(config);
        let reg = Command::Register {
            hash: hash(1),
            expires_at_unix_ms: 5_000,
        };
        l.apply(1, &entry(1, 1_000, vec![reg.clone()]));
        assert_eq!(l.record_count(), 1);
        l.apply(2, &entry(2, 6_000, vec![]));
        assert_eq!(l.record_count(), 0);
        // A proposer with a slow clock cannot bring it back: the ledger clock never runs back.
        let late = l.apply(3, &entry(3, 1_500, vec![reg]));
        assert_eq!(
            late.outcomes,
            vec![Outcome::Refused(Refusal::PastRetention)]
        );
        assert_eq!(l.clock_unix_ms(), 6_000);
    }

    #[test]
    fn hashes_sharing_an_index_prefix_are_swept_and_purged_exactly() {
        let config = LedgerConfig {
            record_grace_ms: 1_000,
            max_lease_ms: 500,
            ..LedgerConfig::default()
        };
        let mut l = Ledger::new(config);
        // Same first 8 bytes, same expiry: one index key with a count of two.
        let mut a = [7u8; 32];
        let mut b = [7u8; 32];
        a[31] = 1;
        b[31] = 2;
        let (a, b) = (TokenHash(Hash32(a)), TokenHash(Hash32(b)));
        let reg = |hash| Command::Register {
            hash,
            expires_at_unix_ms: 5_000,
        };
        l.apply(1, &entry(1, 1_000, vec![reg(a), reg(b)]));
        assert_eq!(
            l.sweep(5_000, 10),
            vec![Command::Expire { hash: a }, Command::Expire { hash: b }]
        );
        l.apply(2, &entry(2, 5_000, vec![Command::Expire { hash: a }]));
        assert_eq!(l.sweep(5_000, 10), vec![Command::Expire { hash: b }]);
        l.apply(3, &entry(3, 6_000, vec![]));
        assert_eq!(l.record_count(), 0);
        assert_eq!(l.check_invariants(), Ok(()));
    }

    /// Regression (found by the `ledger_snapshot` fuzz target's review, helper report): a
    /// snapshot with `next_member_id = u64::MAX` handed out that id twice, overwriting a member.
    #[test]
    fn member_ids_never_wrap_or_repeat() {
        let mut rng = SeededRng::from_u64(3);
        let keys: Vec<SecretKey> = (0..2).map(|_| SecretKey::generate(&mut rng)).collect();
        let mut l = Ledger::new(LedgerConfig::default());
        l.state.next_member_id = u64::MAX;
        let mut outcomes = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let n = u8::try_from(i).unwrap() + 1;
            let p = PresenterId::of(&key.public());
            let base = u64::from(n) * 10;
            l.apply(
                base,
                &entry(
                    base,
                    1_000,
                    vec![
                        Command::Register {
                            hash: hash(n),
                            expires_at_unix_ms: 90_000,
                        },
                        Command::BeginInFlight {
                            hash: hash(n),
                            presenter: p,
                            lease_id: LeaseId(1),
                            lease_ms: 5_000,
                        },
                    ],
                ),
            );
            let c = l.apply(
                base + 1,
                &entry(
                    base + 1,
                    1_000,
                    vec![Command::Consume {
                        hash: hash(n),
                        presenter: p,
                        lease_id: LeaseId(1),
                        member: spec(key),
                    }],
                ),
            );
            outcomes.push(c.outcomes[0]);
        }
        assert_eq!(
            outcomes,
            vec![
                Outcome::Refused(Refusal::MembershipFull),
                Outcome::Refused(Refusal::MembershipFull)
            ]
        );
        assert_eq!(l.check_invariants(), Ok(()));
    }

    #[test]
    fn snapshots_decode_only_in_canonical_order() {
        // Two records written in reverse key order: refused, so one state has one encoding.
        let mut l = Ledger::new(LedgerConfig::default());
        l.apply(
            1,
            &entry(
                1,
                1_000,
                vec![
                    Command::Register {
                        hash: hash(1),
                        expires_at_unix_ms: 9_000,
                    },
                    Command::Register {
                        hash: hash(2),
                        expires_at_unix_ms: 9_000,
                    },
                ],
            ),
        );
        let good = l.snapshot();
        assert!(Ledger::from_snapshot(LedgerConfig::default(), &good, 1 << 20).is_ok());
        let records: Vec<(TokenHash, TokenRecord)> = l
            .state()
            .records
            .iter()
            .rev()
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut bad = good.clone();
        let first = wire::encode(&records[1]);
        let second = wire::encode(&records[0]);
        let at = bad
            .windows(first.len())
            .position(|w| w == first.as_slice())
            .unwrap();
        bad[at..at + first.len()].copy_from_slice(&second);
        bad[at + first.len()..at + 2 * first.len()].copy_from_slice(&first);
        assert!(Ledger::from_snapshot(LedgerConfig::default(), &bad, 1 << 20).is_err());
    }

    /// The planted bugs really misbehave when switched on (and only then).
    #[cfg(feature = "canaries")]
    #[test]
    fn canaries_change_behaviour_only_when_selected() {
        use crate::config::Canary;
        let mut rng = SeededRng::from_u64(8);
        let alice = SecretKey::generate(&mut rng);
        let pa = PresenterId::of(&alice.public());
        let run = |canary: Canary| {
            let mut l = Ledger::new(LedgerConfig {
                canary,
                ..LedgerConfig::default()
            });
            let h = hash(1);
            let reg = Command::Register {
                hash: h,
                expires_at_unix_ms: 90_000,
            };
            l.apply(
                1,
                &entry(
                    1,
                    1_000,
                    vec![
                        reg.clone(),
                        Command::BeginInFlight {
                            hash: h,
                            presenter: pa,
                            lease_id: LeaseId(1),
                            lease_ms: 5_000,
                        },
                    ],
                ),
            );
            let stale = l.apply(
                2,
                &entry(
                    2,
                    1_100,
                    vec![Command::Revert {
                        hash: h,
                        lease_id: LeaseId(99),
                    }],
                ),
            );
            l.apply(
                3,
                &entry(
                    3,
                    1_200,
                    vec![
                        Command::BeginInFlight {
                            hash: h,
                            presenter: pa,
                            lease_id: LeaseId(1),
                            lease_ms: 5_000,
                        },
                        Command::Consume {
                            hash: h,
                            presenter: pa,
                            lease_id: LeaseId(1),
                            member: spec(&alice),
                        },
                    ],
                ),
            );
            let again = l.apply(4, &entry(4, 1_300, vec![reg]));
            (
                stale.outcomes[0],
                again.outcomes[0],
                l.record(&h).map(|r| r.state.kind()),
            )
        };
        assert_eq!(
            run(Canary::None),
            (
                Outcome::Refused(Refusal::LeaseMismatch),
                Outcome::AlreadyRegistered,
                Some(StateKind::Consumed)
            )
        );
        assert_eq!(run(Canary::RevertIgnoresLease).0, Outcome::Reverted);
        let (_, again, state) = run(Canary::RegisterOverwrites);
        assert_eq!(
            (again, state),
            (Outcome::Registered, Some(StateKind::Issued))
        );
    }

    #[test]
    fn ledger_full_refuses_register() {
        let config = LedgerConfig {
            max_token_records: 1,
            ..LedgerConfig::default()
        };
        let mut l = Ledger::new(config);
        let out = l.apply(
            1,
            &entry(
                1,
                1_000,
                (1..=2)
                    .map(|n| Command::Register {
                        hash: hash(n),
                        expires_at_unix_ms: 9_000,
                    })
                    .collect(),
            ),
        );
        assert_eq!(
            out.outcomes,
            vec![Outcome::Registered, Outcome::Refused(Refusal::LedgerFull)]
        );
    }

    #[test]
    fn sweep_expires_and_reverts_in_order_and_bounded() {
        let mut l = Ledger::new(LedgerConfig::default());
        let p = PresenterId(Hash32([9; 32]));
        l.apply(
            1,
            &entry(
                1,
                1_000,
                vec![
                    Command::Register {
                        hash: hash(1),
                        expires_at_unix_ms: 2_000,
                    },
                    Command::Register {
                        hash: hash(2),
                        expires_at_unix_ms: 90_000,
                    },
                    Command::BeginInFlight {
                        hash: hash(2),
                        presenter: p,
                        lease_id: LeaseId(3),
                        lease_ms: 1_000,
                    },
                ],
            ),
        );
        assert_eq!(l.sweep(1_500, 10), vec![]);
        assert_eq!(
            l.sweep(2_500, 10),
            vec![
                Command::Expire { hash: hash(1) },
                Command::Revert {
                    hash: hash(2),
                    lease_id: LeaseId(3)
                }
            ]
        );
        assert_eq!(l.sweep(2_500, 1).len(), 1);
    }

    #[test]
    fn snapshot_round_trip_and_corrupt_snapshot_is_refused() {
        let mut l = Ledger::new(LedgerConfig::default());
        l.apply(
            1,
            &entry(
                1,
                1_000,
                vec![Command::Register {
                    hash: hash(1),
                    expires_at_unix_ms: 9_000,
                }],
            ),
        );
        let bytes = l.snapshot();
        let back = Ledger::from_snapshot(LedgerConfig::default(), &bytes, 1 << 20).unwrap();
        assert_eq!(back.digest(), l.digest());
        assert!(Ledger::from_snapshot(LedgerConfig::default(), &bytes[..10], 1 << 20).is_err());
        let tight = LedgerConfig {
            max_token_records: 0,
            ..LedgerConfig::default()
        };
        assert!(matches!(
            Ledger::from_snapshot(tight, &bytes, 1 << 20),
            Err(SnapshotError::OverBound { .. })
        ));
    }
}
