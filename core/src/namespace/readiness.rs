//! Readiness: signed beacons, probes, the beacon cache, and acknowledgements.
//!
//! A member whose log is caught up says so with a signed [`Beacon`] every
//! `beacon_interval_ms`, and at once (rate-limited per peer) when a joiner publishes a
//! [`ReadinessProbe`]. A joiner resolves its fast path on the first **fresh, verified** beacon
//! and backfills from its sender.
//!
//! ```text
//!   joiner ── publish ReadinessProbe{ns, nonce} ──▶ topic
//!   member ── ReadinessResponder::on_probe: ≤ 1 answer / probe_answer_interval_ms / peer
//!          ── Send Beacon{ns, member_key, heads, applied_through, unix_ms, sig} ──▶ joiner
//!   joiner ── BeaconCache::insert: namespace → member? → future? → stale? → replay? → signature
//! ```
//!
//! Why beacons are checked against *known members only*: a beacon picks the partner whose log
//! the joiner copies. At first the joiner knows one key it can trust — the inviter's, whose
//! signature it has just verified on the invitation — and it learns more members only from the
//! log it backfills. Beacons from keys it does not know yet are *parked* (bounded, unverified)
//! and promoted when the key shows up as a member.
//!
//! Freshness is judged two ways, both required: by the beacon's own `unix_ms` against our wall
//! clock (so a recorded old beacon replayed to a new joiner is not fresh), and by our monotonic
//! clock since we received it (so a cached beacon ages even if our wall clock jumps back).

use std::collections::{BTreeMap, BTreeSet};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{Domain, PublicKey, SecretKey, Signature, SignatureError};
use crate::node::PeerId;
use crate::time::{Instant, Now};
use crate::wire::{self, BoundedVec};

use super::NamespaceConfig;
use super::governance::Governance;
use super::ops::{NamespaceId, Op, OpBody, OpHash};

/// Most heads a beacon carries (see [`Governance::beacon_view`]).
pub const MAX_BEACON_HEADS: usize = 64;

/// A joiner asks the namespace's members to say whether they are ready.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ReadinessProbe {
    /// The namespace probed.
    pub namespace: NamespaceId,
    /// Random, for tracing one probe through the system.
    pub nonce: u64,
}

/// A member's signed statement "my log is at these heads" (domain `portcullis.beacon.v1`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Beacon {
    /// The namespace.
    pub namespace: NamespaceId,
    /// The member's namespace key (the signer).
    pub member_key: PublicKey,
    /// The member's heads (all of them, or the latest [`MAX_BEACON_HEADS`]).
    pub heads: BoundedVec<OpHash, MAX_BEACON_HEADS>,
    /// `|past(heads)|`: how many valid ops the heads' causal past holds.
    pub applied_through: u64,
    /// The member's wall clock when it signed.
    pub unix_ms: u64,
    /// Signature over all fields above.
    pub signature: Signature,
}

impl Beacon {
    /// Signs a beacon.
    pub fn sign(
        key: &SecretKey,
        namespace: NamespaceId,
        heads: BoundedVec<OpHash, MAX_BEACON_HEADS>,
        applied_through: u64,
        unix_ms: u64,
    ) -> Beacon {
        let member_key = key.public();
        let signature = key.sign(
            Domain::Beacon,
            &beacon_bytes(&namespace, &member_key, &heads, applied_through, unix_ms),
        );
        Beacon {
            namespace,
            member_key,
            heads,
            applied_through,
            unix_ms,
            signature,
        }
    }

    /// The beacon a member with replica `governance` signs now.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::crypto::SecretKey;
    /// use portcullis_core::namespace::governance::{Governance, GovernanceLimits};
    /// use portcullis_core::namespace::ops::Op;
    /// use portcullis_core::namespace::readiness::Beacon;
    /// use portcullis_core::rng::SeededRng;
    /// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
    /// let create = Op::create(&admin, [0; 16], 1_000);
    /// let mut replica = Governance::new(create.namespace, GovernanceLimits::default());
    /// replica.insert(create).unwrap();
    /// let beacon = Beacon::for_replica(&admin, &replica, 2_000);
    /// assert_eq!(beacon.applied_through, 1);
    /// assert!(beacon.verify().is_ok());
    /// ```
    pub fn for_replica(key: &SecretKey, governance: &Governance, unix_ms: u64) -> Beacon {
        Beacon::for_view(
            key,
            governance.namespace(),
            &BeaconView::of(governance),
            unix_ms,
        )
    }

    /// The beacon a member signs for a view taken earlier (a node beacons the view of its
    /// latest *durable* replica state, not the live one).
    pub fn for_view(
        key: &SecretKey,
        namespace: NamespaceId,
        view: &BeaconView,
        unix_ms: u64,
    ) -> Beacon {
        Beacon::sign(
            key,
            namespace,
            view.heads.clone(),
            view.applied_through,
            unix_ms,
        )
    }

    /// The bytes the signature covers (for verification outside the cache).
    pub fn signed_bytes(&self) -> Vec<u8> {
        beacon_bytes(
            &self.namespace,
            &self.member_key,
            &self.heads,
            self.applied_through,
            self.unix_ms,
        )
    }

    /// Checks the member's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.member_key.verify(
            Domain::Beacon,
            &beacon_bytes(
                &self.namespace,
                &self.member_key,
                &self.heads,
                self.applied_through,
                self.unix_ms,
            ),
            &self.signature,
        )
    }
}

/// What a beacon vouches for: a replica's heads (all of them, or the latest
/// [`MAX_BEACON_HEADS`]) and how many ops lie in their past.
///
/// A view is a value, so a node can take one when it issues an append batch and beacon it
/// only once that batch is durable.
///
/// # Example
/// ```
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::governance::{Governance, GovernanceLimits};
/// use portcullis_core::namespace::ops::Op;
/// use portcullis_core::namespace::readiness::BeaconView;
/// use portcullis_core::rng::SeededRng;
/// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let create = Op::create(&admin, [0; 16], 1_000);
/// let mut replica = Governance::new(create.namespace, GovernanceLimits::default());
/// assert!(BeaconView::of(&replica).is_empty());
/// replica.insert(create.clone()).unwrap();
/// let view = BeaconView::of(&replica);
/// assert_eq!(view.applied_through, 1);
/// assert_eq!(&view.heads[..], &[create.hash()]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BeaconView {
    /// The replica's heads.
    pub heads: BoundedVec<OpHash, MAX_BEACON_HEADS>,
    /// Ops in the past of `heads`.
    pub applied_through: u64,
}

impl BeaconView {
    /// The view of `governance` as it is now.
    pub fn of(governance: &Governance) -> BeaconView {
        let (heads, applied_through) = governance.beacon_view(MAX_BEACON_HEADS);
        // `beacon_view` returns at most MAX_BEACON_HEADS heads.
        let heads = BoundedVec::try_from_vec(heads).unwrap_or_default();
        BeaconView {
            heads,
            applied_through,
        }
    }

    /// Whether the view holds no op (nothing to vouch for).
    pub fn is_empty(&self) -> bool {
        self.applied_through == 0
    }
}

fn beacon_bytes(
    namespace: &NamespaceId,
    member_key: &PublicKey,
    heads: &BoundedVec<OpHash, MAX_BEACON_HEADS>,
    applied_through: u64,
    unix_ms: u64,
) -> Vec<u8> {
    wire::encode(&(namespace, member_key, heads, applied_through, unix_ms))
}

/// A member's signed acknowledgement that it applied an op (domain `portcullis.ack.v1`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Ack {
    /// The namespace.
    pub namespace: NamespaceId,
    /// The acknowledged op (a `MemberJoined`).
    pub op: OpHash,
    /// The acknowledging member.
    pub member_key: PublicKey,
    /// Signature over the fields above.
    pub signature: Signature,
}

impl Ack {
    /// `key` acknowledges `op`.
    pub fn sign(key: &SecretKey, namespace: NamespaceId, op: OpHash) -> Ack {
        let member_key = key.public();
        let signature = key.sign(Domain::Ack, &wire::encode(&(&namespace, &op, &member_key)));
        Ack {
            namespace,
            op,
            member_key,
            signature,
        }
    }

    /// Checks the member's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.member_key.verify(
            Domain::Ack,
            &wire::encode(&(&self.namespace, &self.op, &self.member_key)),
            &self.signature,
        )
    }
}

/// Member side: whether to acknowledge an announced op that `governance` has applied.
///
/// Validity never reads a clock, but a member SHOULD NOT vouch for a `MemberJoined` whose
/// timestamp is implausible (a joiner backdating past its invitation's expiry): acks only go
/// to applied `MemberJoined` ops whose `unix_ms` is within `max_skew_ms` of our wall clock.
pub fn should_ack(governance: &Governance, op: &Op, now_unix_ms: u64, max_skew_ms: u64) -> bool {
    matches!(op.body, OpBody::MemberJoined { .. })
        && governance.contains(&op.hash())
        && now_unix_ms.abs_diff(op.unix_ms) <= max_skew_ms
}

/// Why a beacon was not cached. The sender is at fault in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BeaconRejection {
    /// The beacon is for another namespace.
    #[error("beacon for another namespace")]
    WrongNamespace,
    /// The signer is not a member we know (parked until it is, if there is room).
    #[error("beacon from a key that is not a known member")]
    BeaconFromNonMember,
    /// Signed more than `max_future_skew_ms` ahead of our wall clock.
    #[error("beacon {ahead_ms} ms in the future")]
    BeaconFromFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
    /// Older than `beacon_ttl_ms` by our wall clock when it arrived.
    #[error("beacon is {age_ms} ms old")]
    StaleBeacon {
        /// Its age.
        age_ms: u64,
    },
    /// Not newer than the beacon we hold from that member (a replay).
    #[error("replayed beacon: {got_unix_ms} is not newer than the cached {cached_unix_ms}")]
    ReplayedBeacon {
        /// The cached beacon's time.
        cached_unix_ms: u64,
        /// The received beacon's time.
        got_unix_ms: u64,
    },
    /// The signature does not verify.
    #[error("beacon signature: {0}")]
    BadSignature(SignatureError),
}

impl BeaconRejection {
    /// A stable lowercase name, for metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            BeaconRejection::WrongNamespace => "wrong_namespace",
            BeaconRejection::BeaconFromNonMember => "from_non_member",
            BeaconRejection::BeaconFromFuture { .. } => "from_future",
            BeaconRejection::StaleBeacon { .. } => "stale",
            BeaconRejection::ReplayedBeacon { .. } => "replayed",
            BeaconRejection::BadSignature(_) => "bad_signature",
        }
    }
}

/// What [`BeaconCache::insert`] did with a beacon it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeaconAccepted {
    /// First beacon from this member.
    New,
    /// Newer than the cached one, which it replaces.
    Newer,
    /// The very beacon we hold (a network duplicate): nothing changed.
    Duplicate,
}

/// A verified beacon, with who delivered it and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBeacon {
    /// The transport peer that delivered it (where to send backfill requests).
    pub from: PeerId,
    /// The beacon.
    pub beacon: Beacon,
    /// Our monotonic time at arrival.
    pub received_at: Instant,
}

impl CachedBeacon {
    /// Fresh: younger than `ttl_ms` by both the beacon's clock and ours.
    pub fn is_fresh(&self, now: Now, ttl_ms: u64) -> bool {
        now.unix_ms.saturating_sub(self.beacon.unix_ms) <= ttl_ms
            && now.instant.saturating_ms_since(self.received_at) <= ttl_ms
    }
}

/// The newest verified beacon per member of one namespace. Bounded.
///
/// # Example
/// ```
/// use std::collections::BTreeSet;
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::NamespaceConfig;
/// use portcullis_core::namespace::ops::NamespaceId;
/// use portcullis_core::namespace::readiness::{Beacon, BeaconCache, BeaconRejection};
/// use portcullis_core::node::PeerId;
/// use portcullis_core::rng::SeededRng;
/// use portcullis_core::time::{Instant, Now};
/// use portcullis_core::wire::BoundedVec;
///
/// let member = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let ns = NamespaceId::derive(&member.public(), &[0; 16]);
/// let mut cache = BeaconCache::new(ns, &NamespaceConfig::default());
/// let now = Now::new(Instant::from_millis(10), 100_000);
/// let known = BTreeSet::from([member.public()]);
/// let b = Beacon::sign(&member, ns, BoundedVec::new(), 1, 100_000);
/// assert!(cache.insert(now, PeerId(1), b.clone(), |k| known.contains(k)).is_ok());
/// let old = Beacon::sign(&member, ns, BoundedVec::new(), 1, 99_000);
/// assert!(matches!(cache.insert(now, PeerId(1), old, |k| known.contains(k)),
///     Err(BeaconRejection::ReplayedBeacon { .. })));
/// ```
#[derive(Clone, Debug)]
pub struct BeaconCache {
    namespace: NamespaceId,
    ttl_ms: u64,
    max_future_skew_ms: u64,
    max_entries: usize,
    max_parked: usize,
    entries: BTreeMap<PublicKey, CachedBeacon>,
    /// Unverified beacons from keys not (yet) known as members.
    parked: BTreeMap<PublicKey, CachedBeacon>,
}

impl BeaconCache {
    /// An empty cache for `namespace`.
    pub fn new(namespace: NamespaceId, config: &NamespaceConfig) -> BeaconCache {
        BeaconCache {
            namespace,
            ttl_ms: config.beacon_ttl_ms,
            max_future_skew_ms: config.max_future_skew_ms,
            max_entries: config.max_cached_beacons,
            max_parked: config.max_parked_beacons,
            entries: BTreeMap::new(),
            parked: BTreeMap::new(),
        }
    }

    /// The namespace this cache is for.
    pub fn namespace(&self) -> NamespaceId {
        self.namespace
    }

    /// Verified beacons held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no verified beacon is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Unverified beacons parked for keys not yet known.
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// The cached beacon of `member`.
    pub fn get(&self, member: &PublicKey) -> Option<&CachedBeacon> {
        self.entries.get(member)
    }

    /// Checks and caches `beacon`, delivered by `from`. `is_member` says which keys we trust.
    ///
    /// Checks run cheapest first: namespace, membership (unknown keys are parked), future
    /// skew, staleness, replay, and only then the signature.
    pub fn insert(
        &mut self,
        now: Now,
        from: PeerId,
        beacon: Beacon,
        is_member: impl Fn(&PublicKey) -> bool,
    ) -> Result<BeaconAccepted, BeaconRejection> {
        self.insert_checked(now, from, beacon, is_member, false)
    }

    /// Like [`BeaconCache::insert`] for a beacon whose signature the caller has already
    /// verified (the node's verification pass): every other check still runs.
    pub fn insert_verified(
        &mut self,
        now: Now,
        from: PeerId,
        beacon: Beacon,
        is_member: impl Fn(&PublicKey) -> bool,
    ) -> Result<BeaconAccepted, BeaconRejection> {
        self.insert_checked(now, from, beacon, is_member, true)
    }

    fn insert_checked(
        &mut self,
        now: Now,
        from: PeerId,
        beacon: Beacon,
        is_member: impl Fn(&PublicKey) -> bool,
        verified: bool,
    ) -> Result<BeaconAccepted, BeaconRejection> {
        if beacon.namespace != self.namespace {
            return Err(BeaconRejection::WrongNamespace);
        }
        self.check_time(now, &beacon)?;
        if !is_member(&beacon.member_key) {
            self.park(now, from, beacon);
            return Err(BeaconRejection::BeaconFromNonMember);
        }
        if let Some(cached) = self.entries.get(&beacon.member_key) {
            if cached.beacon == beacon {
                return Ok(BeaconAccepted::Duplicate);
            }
            if beacon.unix_ms <= cached.beacon.unix_ms {
                return Err(BeaconRejection::ReplayedBeacon {
                    cached_unix_ms: cached.beacon.unix_ms,
                    got_unix_ms: beacon.unix_ms,
                });
            }
        }
        if !verified {
            beacon.verify().map_err(BeaconRejection::BadSignature)?;
        }
        let key = beacon.member_key;
        let outcome = if self.entries.contains_key(&key) {
            BeaconAccepted::Newer
        } else {
            self.make_room(now);
            BeaconAccepted::New
        };
        tracing::trace!(ns = %self.namespace, member = %key.hash(), applied = beacon.applied_through, "beacon cached");
        self.entries.insert(
            key,
            CachedBeacon {
                from,
                beacon,
                received_at: now.instant,
            },
        );
        self.parked.remove(&key);
        Ok(outcome)
    }

    fn check_time(&self, now: Now, beacon: &Beacon) -> Result<(), BeaconRejection> {
        let ahead_ms = beacon.unix_ms.saturating_sub(now.unix_ms);
        if ahead_ms > self.max_future_skew_ms {
            return Err(BeaconRejection::BeaconFromFuture { ahead_ms });
        }
        let age_ms = now.unix_ms.saturating_sub(beacon.unix_ms);
        if age_ms > self.ttl_ms {
            return Err(BeaconRejection::StaleBeacon { age_ms });
        }
        Ok(())
    }

    /// Drops stale entries, then the oldest, until there is room for one more.
    fn make_room(&mut self, now: Now) {
        if self.entries.len() < self.max_entries {
            return;
        }
        let ttl = self.ttl_ms;
        self.entries.retain(|_, c| c.is_fresh(now, ttl));
        while self.entries.len() >= self.max_entries.max(1) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(k, c)| (c.beacon.unix_ms, **k))
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
    }

    fn park(&mut self, now: Now, from: PeerId, beacon: Beacon) {
        if self.max_parked == 0 {
            return;
        }
        let key = beacon.member_key;
        if self
            .parked
            .get(&key)
            .is_some_and(|p| p.beacon.unix_ms >= beacon.unix_ms)
        {
            return;
        }
        if !self.parked.contains_key(&key) && self.parked.len() >= self.max_parked {
            let oldest = self
                .parked
                .iter()
                .min_by_key(|(k, c)| (c.received_at, **k))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.parked.remove(&k);
            }
        }
        self.parked.insert(
            key,
            CachedBeacon {
                from,
                beacon,
                received_at: now.instant,
            },
        );
    }

    /// Re-checks parked beacons whose key `is_member` now trusts; returns the members whose
    /// beacon was promoted into the cache.
    pub fn promote_parked(
        &mut self,
        now: Now,
        is_member: impl Fn(&PublicKey) -> bool,
    ) -> Vec<PublicKey> {
        let ready: Vec<PublicKey> = self
            .parked
            .keys()
            .filter(|k| is_member(k))
            .copied()
            .collect();
        let mut promoted = Vec::new();
        for key in ready {
            let Some(parked) = self.parked.remove(&key) else {
                continue;
            };
            if now.instant.saturating_ms_since(parked.received_at) > self.ttl_ms {
                continue;
            }
            let from = parked.from;
            if self.insert(now, from, parked.beacon, &is_member).is_ok() {
                promoted.push(key);
            }
        }
        promoted
    }

    /// The best fresh beacon among members `trusted` accepts, skipping `exclude`: highest
    /// `applied_through`, then newest, then smallest key (deterministic).
    pub fn best_fresh(
        &self,
        now: Now,
        trusted: impl Fn(&PublicKey) -> bool,
        exclude: &BTreeSet<PublicKey>,
    ) -> Option<&CachedBeacon> {
        self.entries
            .iter()
            .filter(|(k, c)| !exclude.contains(*k) && trusted(k) && c.is_fresh(now, self.ttl_ms))
            .max_by(|(ka, a), (kb, b)| {
                (a.beacon.applied_through, a.beacon.unix_ms)
                    .cmp(&(b.beacon.applied_through, b.beacon.unix_ms))
                    .then_with(|| kb.cmp(ka))
            })
            .map(|(_, c)| c)
    }

    /// Drops beacons that are no longer fresh.
    pub fn prune(&mut self, now: Now) {
        let ttl = self.ttl_ms;
        self.entries.retain(|_, c| c.is_fresh(now, ttl));
        self.parked
            .retain(|_, c| now.instant.saturating_ms_since(c.received_at) <= ttl);
    }
}

/// Why a probe was not answered. The prober is at fault (or just early).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeRefused {
    /// The probe is for another namespace.
    #[error("probe for another namespace")]
    WrongNamespace,
    /// This peer was answered less than `probe_answer_interval_ms` ago.
    #[error("rate-limited: next answer in {retry_after_ms} ms")]
    RateLimited {
        /// When it may be answered again.
        retry_after_ms: u64,
    },
}

impl ProbeRefused {
    /// A stable lowercase name, for metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProbeRefused::WrongNamespace => "wrong_namespace",
            ProbeRefused::RateLimited { .. } => "rate_limited",
        }
    }
}

/// Member side of readiness for one namespace: when to beacon, which probes to answer.
///
/// It does not sign: when [`ReadinessResponder::on_probe`] says yes, or
/// [`ReadinessResponder::beacon_due`] fires, the node signs [`Beacon::for_view`] with its
/// namespace key over its latest durable [`BeaconView`] (only if its log is caught up) and
/// sends or publishes it.
#[derive(Clone, Debug)]
pub struct ReadinessResponder {
    namespace: NamespaceId,
    beacon_interval_ms: u64,
    answer_interval_ms: u64,
    max_peers: usize,
    next_beacon_at: Instant,
    answered: BTreeMap<PeerId, Instant>,
}

impl ReadinessResponder {
    /// A responder whose first beacon is due at `now`.
    pub fn new(namespace: NamespaceId, config: &NamespaceConfig, now: Instant) -> Self {
        ReadinessResponder {
            namespace,
            beacon_interval_ms: config.beacon_interval_ms,
            answer_interval_ms: config.probe_answer_interval_ms,
            max_peers: config.max_probe_peers,
            next_beacon_at: now,
            answered: BTreeMap::new(),
        }
    }

    /// Whether to answer `probe` from `from` now (with a directly sent beacon). At most one
    /// answer per `probe_answer_interval_ms` per (peer, namespace).
    pub fn on_probe(
        &mut self,
        now: Instant,
        from: PeerId,
        probe: &ReadinessProbe,
    ) -> Result<(), ProbeRefused> {
        if probe.namespace != self.namespace {
            return Err(ProbeRefused::WrongNamespace);
        }
        if let Some(last) = self.answered.get(&from) {
            let since = now.saturating_ms_since(*last);
            if since < self.answer_interval_ms {
                return Err(ProbeRefused::RateLimited {
                    retry_after_ms: self.answer_interval_ms - since,
                });
            }
        }
        if !self.answered.contains_key(&from) && self.answered.len() >= self.max_peers {
            let window = self.answer_interval_ms;
            self.answered
                .retain(|_, at| now.saturating_ms_since(*at) < window);
            if self.answered.len() >= self.max_peers {
                let oldest = self
                    .answered
                    .iter()
                    .min_by_key(|(p, at)| (**at, **p))
                    .map(|(p, _)| *p);
                if let Some(p) = oldest {
                    self.answered.remove(&p);
                }
            }
        }
        self.answered.insert(from, now);
        Ok(())
    }

    /// Whether a periodic beacon is due at `now`; if so, schedules the next one.
    pub fn beacon_due(&mut self, now: Instant) -> bool {
        if now < self.next_beacon_at {
            return false;
        }
        self.next_beacon_at = now.saturating_add_ms(self.beacon_interval_ms);
        true
    }

    /// When the next periodic beacon is due.
    pub fn next_deadline(&self) -> Instant {
        self.next_beacon_at
    }
}
