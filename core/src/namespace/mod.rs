//! Protocol B: namespaces, signed invitations, the governance log, readiness, and the join
//! machine (DESIGN.md, "Protocol B — namespace join with invitations").
//!
//! Everything here is sans-IO and deterministic, like the rest of the core: time arrives as
//! [`crate::time::Now`], randomness from a [`crate::rng::SeededRng`] the node derives, and every
//! effect is an action the [`crate::node::Node`] carries out. Every collection is bounded
//! ([`NamespaceConfig`]), and every peer input that is refused gets a typed reason.
//!
//! ```text
//!  admin ── SignedInvitation (out of band) ──▶ joiner
//!
//!  joiner: JoinMachine (one deadline budget, every wait ends on an event or the budget)
//!   1 verify invitation ──✗──▶ Failed(InvalidInvitation)
//!   2 identity (persist if new), Subscribe(ns), Publish(ReadinessProbe)
//!   3 first fresh verified beacon (cached or new) ──▶ JoinStarted{partner, head, applied}
//!        fast-path budget min(2 s, deadline/2) runs out ──▶ Failed(NoReadyPeers)  ◀── retried
//!   4 BackfillRequest/Batch with the partner until applied through its applied_through
//!        partner silent ──▶ switch to another fresh partner
//!   5 wait for min(mesh_low, known_subscribers) connected subscribers
//!   6 MemberJoined (signed by our namespace key) ──▶ PersistOutbox + Publish; collect Acks
//!   7 Ready(ReadyReport)   |   zero/too few acks ──▶ Failed(AcksMissing, partial report)
//!   outbox: re-publish every announce_retry_ms until an ack or a beacon proves inclusion
//!
//!  member: Governance (insert any op, any order) · ReadinessResponder (beacons, probes)
//!          backfill::answer (bounded batches) · readiness::should_ack + Ack::sign
//! ```
//!
//! Modules:
//! * [`ops`] — namespace ids, invitations, ops, op hashes (values and signatures).
//! * [`governance`] — a replica of one namespace's op DAG; validity from the causal past.
//! * [`readiness`] — beacons, probes, the beacon cache, acks, the member-side responder.
//! * [`backfill`] — bounded, pull-based log copying with an exact completion test.
//! * [`join`] — the join machine, the durable announce outbox, and the retry wrapper.
//!
//! ## Wire messages
//!
//! [`NamespaceMessage`] lists the messages of this protocol with the envelope kind numbers they
//! ask for ([`kinds`]); [`NamespaceMessage::encode_payload`] and
//! [`NamespaceMessage::decode_payload`] are the borsh payloads (bounded, typed errors) that the
//! node wraps in the versioned envelope.

pub mod backfill;
pub mod governance;
pub mod join;
pub mod ops;
pub mod readiness;
#[cfg(feature = "testing")]
pub mod testkit;

use crate::config::{ConfigError, as_u64, less_than, positive, within};
use crate::wire::{self, DecodeError};

use self::backfill::{BackfillBatch, BackfillRequest, MAX_OPS_PER_BATCH};
use self::governance::GovernanceLimits;
use self::ops::Op;
use self::readiness::{Ack, Beacon, ReadinessProbe};

/// The envelope kind numbers this protocol asks for (to be registered in
/// [`crate::wire::MessageKind`]; 30..49 are reserved for namespaces).
pub mod kinds {
    /// [`super::readiness::ReadinessProbe`].
    pub const READINESS_PROBE: u16 = 30;
    /// [`super::readiness::Beacon`].
    pub const BEACON: u16 = 31;
    /// [`super::backfill::BackfillRequest`].
    pub const BACKFILL_REQUEST: u16 = 32;
    /// [`super::backfill::BackfillBatch`].
    pub const BACKFILL_BATCH: u16 = 33;
    /// [`super::ops::Op`], gossiped (a `MemberJoined` announce, or any governance op).
    pub const NAMESPACE_OP: u16 = 34;
    /// [`super::readiness::Ack`].
    pub const ACK: u16 = 35;
}

/// Every namespace-protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamespaceMessage {
    /// Joiner → topic: is anyone ready?
    Probe(ReadinessProbe),
    /// Member → topic or prober: I am ready, at these heads.
    Beacon(Beacon),
    /// Joiner → partner.
    BackfillRequest(BackfillRequest),
    /// Partner → joiner.
    BackfillBatch(BackfillBatch),
    /// Anyone → topic: a governance op.
    Op(Op),
    /// Member → topic: I applied this `MemberJoined`.
    Ack(Ack),
}

impl NamespaceMessage {
    /// The envelope kind number (see [`kinds`]).
    pub fn kind(&self) -> u16 {
        match self {
            NamespaceMessage::Probe(_) => kinds::READINESS_PROBE,
            NamespaceMessage::Beacon(_) => kinds::BEACON,
            NamespaceMessage::BackfillRequest(_) => kinds::BACKFILL_REQUEST,
            NamespaceMessage::BackfillBatch(_) => kinds::BACKFILL_BATCH,
            NamespaceMessage::Op(_) => kinds::NAMESPACE_OP,
            NamespaceMessage::Ack(_) => kinds::ACK,
        }
    }

    /// The borsh payload (without the envelope header).
    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            NamespaceMessage::Probe(m) => wire::encode(m),
            NamespaceMessage::Beacon(m) => wire::encode(m),
            NamespaceMessage::BackfillRequest(m) => wire::encode(m),
            NamespaceMessage::BackfillBatch(m) => wire::encode(m),
            NamespaceMessage::Op(m) => wire::encode(m),
            NamespaceMessage::Ack(m) => wire::encode(m),
        }
    }

    /// Decodes the payload of an envelope of kind `kind`: bounded, typed errors, no panics.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::namespace::NamespaceMessage;
    /// use portcullis_core::namespace::ops::NamespaceId;
    /// use portcullis_core::namespace::readiness::ReadinessProbe;
    /// let msg = NamespaceMessage::Probe(ReadinessProbe { namespace: NamespaceId::default(), nonce: 9 });
    /// let back = NamespaceMessage::decode_payload(msg.kind(), &msg.encode_payload())?;
    /// assert_eq!(back, msg);
    /// assert!(NamespaceMessage::decode_payload(99, &[]).is_err());
    /// # Ok::<(), portcullis_core::wire::DecodeError>(())
    /// ```
    pub fn decode_payload(kind: u16, payload: &[u8]) -> Result<NamespaceMessage, DecodeError> {
        Ok(match kind {
            kinds::READINESS_PROBE => NamespaceMessage::Probe(wire::decode_exact(payload)?),
            kinds::BEACON => NamespaceMessage::Beacon(wire::decode_exact(payload)?),
            kinds::BACKFILL_REQUEST => {
                NamespaceMessage::BackfillRequest(wire::decode_exact(payload)?)
            }
            kinds::BACKFILL_BATCH => NamespaceMessage::BackfillBatch(wire::decode_exact(payload)?),
            kinds::NAMESPACE_OP => NamespaceMessage::Op(wire::decode_exact(payload)?),
            kinds::ACK => NamespaceMessage::Ack(wire::decode_exact(payload)?),
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Every limit and timing of the namespace protocol, units last.
///
/// # Example
/// ```
/// use portcullis_core::namespace::NamespaceConfig;
/// let mut config = NamespaceConfig::default();
/// assert!(config.validate().is_ok());
/// config.beacon_ttl_ms = config.beacon_interval_ms; // beacons would go stale between emissions
/// assert!(config.validate().is_err());
/// ```
// Borsh: a flight recording's header carries the config ([`crate::recording`]).
#[derive(Clone, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct NamespaceConfig {
    /// How often a caught-up member beacons.
    pub beacon_interval_ms: u64,
    /// How long a beacon counts as fresh (by its own clock and by ours since arrival).
    pub beacon_ttl_ms: u64,
    /// Beacons signed further ahead of our wall clock are rejected.
    pub max_future_skew_ms: u64,
    /// A member answers probes from one peer at most this often.
    pub probe_answer_interval_ms: u64,
    /// A joiner re-publishes its probe this often during the fast path (a probe may be lost).
    pub probe_retry_ms: u64,
    /// Most verified beacons cached per namespace.
    pub max_cached_beacons: usize,
    /// Most unverified beacons from not-yet-known keys parked per namespace.
    pub max_parked_beacons: usize,
    /// Most peers whose last probe answer a responder remembers.
    pub max_probe_peers: usize,
    /// One join attempt's whole budget (fast path, backfill, mesh, announce and acks); also the
    /// most any retry attempt gets.
    pub join_deadline_ms: u64,
    /// The fast path (waiting for a beacon) gets `min(fast_path_max_ms, budget / 2)`; unused
    /// time rolls over to the rest of the join.
    pub fast_path_max_ms: u64,
    /// A backfill partner that sends no batch for this long is replaced.
    pub backfill_silence_ms: u64,
    /// Ops per backfill batch a member sends (at most [`MAX_OPS_PER_BATCH`]).
    pub backfill_batch_ops: usize,
    /// Wanted connected subscribers before announcing: `min(mesh_low, known subscribers)`.
    pub mesh_low: usize,
    /// Most peers a join tracks connection and subscription facts for.
    pub max_mesh_peers: usize,
    /// Longest wait for acks after announcing (clamped by the remaining budget).
    pub ack_wait_ms: u64,
    /// Acks (from distinct members) the announce needs.
    pub min_acks: usize,
    /// The outbox re-publishes an unconfirmed announce this often.
    pub announce_retry_ms: u64,
    /// A node re-announces its topic subscriptions to every connected peer this often (a lost
    /// announcement would hide it from fan-out).
    pub subscriptions_refresh_ms: u64,
    /// Members only ack a `MemberJoined` whose time is this close to their clock.
    pub ack_max_skew_ms: u64,
    /// First retry delay after `NoReadyPeers`; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Largest retry delay (before jitter).
    pub retry_max_ms: u64,
    /// Up to this percentage of the delay is added as jitter (seeded RNG).
    pub retry_jitter_percent: u64,
    /// A retrying join never runs longer than this, jitter included.
    pub retry_max_total_ms: u64,
    /// The governance replica's bounds.
    pub governance: GovernanceLimits,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            beacon_interval_ms: 5_000,
            beacon_ttl_ms: 15_000,
            max_future_skew_ms: 60_000,
            probe_answer_interval_ms: 2_500,
            probe_retry_ms: 1_000,
            max_cached_beacons: 1_024,
            max_parked_beacons: 64,
            max_probe_peers: 1_024,
            join_deadline_ms: 10_000,
            fast_path_max_ms: 2_000,
            backfill_silence_ms: 2_000,
            backfill_batch_ops: MAX_OPS_PER_BATCH,
            mesh_low: 4,
            max_mesh_peers: 4_096,
            ack_wait_ms: 5_000,
            min_acks: 1,
            announce_retry_ms: 1_000,
            subscriptions_refresh_ms: 5_000,
            ack_max_skew_ms: 60_000,
            retry_initial_ms: 3_000,
            retry_max_ms: 30_000,
            retry_jitter_percent: 25,
            retry_max_total_ms: 60_000,
            governance: GovernanceLimits::default(),
        }
    }
}

impl NamespaceConfig {
    /// Checks every field and every relation between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("namespace.beacon_interval_ms", self.beacon_interval_ms)?;
        less_than(
            ("namespace.beacon_interval_ms", self.beacon_interval_ms),
            ("namespace.beacon_ttl_ms", self.beacon_ttl_ms),
        )?;
        positive("namespace.max_future_skew_ms", self.max_future_skew_ms)?;
        positive(
            "namespace.probe_answer_interval_ms",
            self.probe_answer_interval_ms,
        )?;
        positive("namespace.probe_retry_ms", self.probe_retry_ms)?;
        positive(
            "namespace.max_cached_beacons",
            as_u64(self.max_cached_beacons),
        )?;
        within(
            "namespace.max_parked_beacons",
            as_u64(self.max_parked_beacons),
            0,
            1 << 16,
        )?;
        positive("namespace.max_probe_peers", as_u64(self.max_probe_peers))?;
        positive("namespace.join_deadline_ms", self.join_deadline_ms)?;
        positive("namespace.fast_path_max_ms", self.fast_path_max_ms)?;
        positive("namespace.backfill_silence_ms", self.backfill_silence_ms)?;
        within(
            "namespace.backfill_batch_ops",
            as_u64(self.backfill_batch_ops),
            1,
            as_u64(MAX_OPS_PER_BATCH),
        )?;
        within("namespace.mesh_low", as_u64(self.mesh_low), 0, 1_024)?;
        positive("namespace.max_mesh_peers", as_u64(self.max_mesh_peers))?;
        positive("namespace.ack_wait_ms", self.ack_wait_ms)?;
        within("namespace.min_acks", as_u64(self.min_acks), 1, 1_024)?;
        positive("namespace.announce_retry_ms", self.announce_retry_ms)?;
        positive(
            "namespace.subscriptions_refresh_ms",
            self.subscriptions_refresh_ms,
        )?;
        positive("namespace.ack_max_skew_ms", self.ack_max_skew_ms)?;
        positive("namespace.retry_initial_ms", self.retry_initial_ms)?;
        less_than(
            ("namespace.retry_initial_ms", self.retry_initial_ms),
            (
                "namespace.retry_max_ms",
                self.retry_max_ms.saturating_add(1),
            ),
        )?;
        within(
            "namespace.retry_jitter_percent",
            self.retry_jitter_percent,
            0,
            100,
        )?;
        less_than(
            ("namespace.join_deadline_ms", self.join_deadline_ms),
            (
                "namespace.retry_max_total_ms",
                self.retry_max_total_ms.saturating_add(1),
            ),
        )?;
        positive(
            "namespace.governance.max_ops",
            as_u64(self.governance.max_ops),
        )?;
        positive(
            "namespace.governance.max_pending_ops",
            as_u64(self.governance.max_pending_ops),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = NamespaceConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.beacon_interval_ms, 5_000);
        assert_eq!(c.probe_answer_interval_ms, 2_500);
        assert_eq!(c.max_future_skew_ms, 60_000);
        assert_eq!((c.retry_initial_ms, c.retry_max_ms), (3_000, 30_000));
        assert_eq!(c.retry_jitter_percent, 25);
        assert_eq!((c.join_deadline_ms, c.fast_path_max_ms), (10_000, 2_000));
        assert_eq!(c.ack_wait_ms, 5_000);
    }

    #[test]
    fn each_bad_field_is_named() {
        let c = NamespaceConfig {
            min_acks: 0,
            ..NamespaceConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                field: "namespace.min_acks",
                ..
            })
        ));
        let c = NamespaceConfig {
            join_deadline_ms: 70_000,
            ..NamespaceConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotLessThan {
                field: "namespace.join_deadline_ms",
                ..
            })
        ));
        let c = NamespaceConfig {
            backfill_batch_ops: MAX_OPS_PER_BATCH + 1,
            ..NamespaceConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
