//! Node configuration: every limit and timing is a named field with its unit last.
//!
//! Fields that change the *replicated* state machine's behaviour live in [`LedgerConfig`]; all
//! replicas of one cluster MUST use the same `LedgerConfig`, or apply stops being deterministic.
//! Everything else is local to a node.

use crate::wire::Limits;

/// Default largest frame: 1 MiB fits a large backfill batch or snapshot chunk and no more.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// A planted bug (feature `canaries`, tests only): proves the simulator's checkers can fail.
#[cfg(feature = "canaries")]
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
    borsh::BorshSerialize,
    borsh::BorshDeserialize,
)]
#[non_exhaustive]
pub enum Canary {
    /// No planted bug.
    #[default]
    None,
    /// `Register` overwrites an existing record (resetting it to `Issued`).
    RegisterOverwrites,
    /// `Revert` ignores the lease id (a stale revert gives back someone else's lease).
    RevertIgnoresLease,
    /// The listener skips `BeginInFlight` and proposes `Consume` straight after `Register`.
    SkipBeginInFlight,
    /// A namespace join ignores its deadline.
    JoinIgnoresDeadline,
    /// Beacons and acks vouch for ops whose append is still in flight (a crash loses an op
    /// its joiner already cleared from its outbox).
    VouchBeforeDurable,
}

/// The replicated ledger's parameters. MUST be identical on every replica of a cluster.
///
/// Borsh-encoded only into flight recordings ([`crate::recording`]).
#[derive(Clone, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct LedgerConfig {
    /// Most token records held at once; `Register` beyond it is refused (`LedgerFull`).
    pub max_token_records: u32,
    /// Most members in the registry; `Consume` beyond it is refused (`MembershipFull`).
    pub max_members: u32,
    /// How long after `expires_at` a finished record is kept (so late replays still get a
    /// precise answer) before it is purged.
    pub record_grace_ms: u64,
    /// Longest lease a `BeginInFlight` may ask for. MUST be below `record_grace_ms`, so no
    /// lease outlives its record.
    pub max_lease_ms: u64,
    /// Most records purged while applying one entry; the rest wait for the next entry, so one
    /// apply never does unbounded work.
    pub max_purge_per_entry: u32,
    /// Recent proposals remembered per proposer for deduplication.
    pub proposal_window: u32,
    /// A planted bug (tests only; see [`Canary`]).
    #[cfg(feature = "canaries")]
    pub canary: Canary,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_token_records: 1_000_000,
            max_members: 10_000,
            record_grace_ms: 24 * 60 * 60 * 1_000,
            max_lease_ms: 60_000,
            max_purge_per_entry: 1_024,
            proposal_window: 1_024,
            #[cfg(feature = "canaries")]
            canary: Canary::None,
        }
    }
}

/// A node's configuration.
///
/// # Example
/// ```
/// use portcullis_core::config::Config;
/// let mut config = Config::default();
/// assert!(config.validate().is_ok());
/// config.admission_lease_ms = 0;
/// assert!(config.validate().is_err());
/// ```
// Borsh: a flight recording's header carries the config ([`crate::recording`]).
#[derive(Clone, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct Config {
    /// Replicated-state parameters (identical across the cluster).
    pub ledger: LedgerConfig,
    /// Largest frame accepted from a peer, header included.
    pub max_frame_bytes: usize,
    /// How far a token's expiry may be behind this node's wall clock and still be accepted
    /// at the listener (the ledger itself judges by entry time).
    pub token_clock_skew_ms: u64,
    /// Lease a listener takes on a token while it admits the presenter.
    pub admission_lease_ms: u64,
    /// How often the leader's sweeper looks for expired tokens and lapsed leases.
    pub sweep_interval_ms: u64,
    /// Most commands one sweep proposes.
    pub max_sweep_commands: u32,
    /// Most outputs queued before the node sheds work.
    pub max_output_queue: u32,
    /// Most admissions a listener handles at once; beyond it, `Overloaded`.
    pub max_inflight_admissions: u32,
    /// Length of one Raft tick.
    pub raft_tick_ms: u64,
    /// Ticks without a leader before an election (the timeout is drawn in `[E, 2E)`).
    pub election_ticks: u32,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: u32,
    /// Largest Raft append message.
    pub max_append_bytes: u64,
    /// Most in-flight appends per follower.
    pub max_inflight_appends: u32,
    /// Compact the Raft log into a snapshot once this many applied entries follow the last one.
    /// A snapshot costs O(ledger), so this amortizes it (etcd's default is 10,000 too); the
    /// log it bounds is about 300 bytes an entry.
    pub compact_after_entries: u64,
    /// Largest snapshot accepted (a whole ledger).
    pub max_snapshot_bytes: usize,
    /// How long a proposal may go unapplied before it is proposed (or forwarded) again.
    pub proposal_retry_ms: u64,
    /// Most proposals of this node waiting to be applied.
    pub max_pending_proposals: u32,
    /// How long a joiner waits for one seed's answer.
    pub join_request_timeout_ms: u64,
    /// How often a joiner sends its current request again while it waits (both requests are
    /// idempotent; a lost datagram costs this long, not a whole attempt).
    pub join_resend_ms: u64,
    /// A joiner's first retry delay; it doubles up to `join_retry_max_ms` (plus up to 25%
    /// jitter).
    pub join_retry_initial_ms: u64,
    /// A joiner's largest retry delay.
    pub join_retry_max_ms: u64,
    /// A joiner gives up after this long.
    pub join_deadline_ms: u64,
    /// How long before asking the driver again to connect to an unreachable member.
    pub connect_retry_ms: u64,
    /// Most learners in the metadata group. Members admitted beyond it hold credentials but do
    /// not replicate the metadata log (a metadata group of thousands of replicas helps no one).
    pub max_raft_learners: u32,
    /// Most voters in the metadata group (promotion beyond it is refused).
    pub max_raft_voters: u32,
    /// Namespaces (Protocol B): timings and limits.
    pub namespace: crate::namespace::NamespaceConfig,
    /// Most namespaces one node holds state for (created, joined or joining).
    pub max_namespaces: u32,
    /// Most published message ids remembered for duplicate suppression.
    pub max_seen_messages: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ledger: LedgerConfig::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            token_clock_skew_ms: 30_000,
            admission_lease_ms: 10_000,
            sweep_interval_ms: 1_000,
            max_sweep_commands: 256,
            max_output_queue: 65_536,
            max_inflight_admissions: 1_024,
            raft_tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 256,
            compact_after_entries: 10_000,
            max_snapshot_bytes: 256 << 20,
            proposal_retry_ms: 1_000,
            max_pending_proposals: 8_192,
            join_request_timeout_ms: 3_000,
            join_resend_ms: 500,
            join_retry_initial_ms: 200,
            join_retry_max_ms: 5_000,
            join_deadline_ms: 60_000,
            connect_retry_ms: 1_000,
            max_raft_learners: 512,
            max_raft_voters: 9,
            namespace: crate::namespace::NamespaceConfig::default(),
            max_namespaces: 256,
            max_seen_messages: 65_536,
        }
    }
}

/// A configuration the caller must fix. The caller is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A field is outside its allowed range.
    #[error("`{field}` = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Two fields contradict each other.
    #[error("`{field}` must be less than `{other}` ({value} >= {other_value})")]
    NotLessThan {
        /// The field that must be smaller.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The field it must be smaller than.
        other: &'static str,
        /// That field's value.
        other_value: u64,
    },
}

// Shared by every `validate()` in the crate (ledger, node, namespaces).
pub(crate) fn positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Zero { field });
    }
    Ok(())
}

pub(crate) fn within(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

pub(crate) fn less_than(
    (field, value): (&'static str, u64),
    (other, other_value): (&'static str, u64),
) -> Result<(), ConfigError> {
    if value >= other_value {
        return Err(ConfigError::NotLessThan {
            field,
            value,
            other,
            other_value,
        });
    }
    Ok(())
}

pub(crate) fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl LedgerConfig {
    /// Checks every field and every relation between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(
            "ledger.max_token_records",
            u64::from(self.max_token_records),
        )?;
        positive("ledger.max_members", u64::from(self.max_members))?;
        positive("ledger.max_lease_ms", self.max_lease_ms)?;
        positive(
            "ledger.max_purge_per_entry",
            u64::from(self.max_purge_per_entry),
        )?;
        within(
            "ledger.proposal_window",
            u64::from(self.proposal_window),
            1,
            1 << 16,
        )?;
        less_than(
            ("ledger.max_lease_ms", self.max_lease_ms),
            ("ledger.record_grace_ms", self.record_grace_ms),
        )
    }
}

impl Config {
    /// Checks every field and every relation between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ledger.validate()?;
        self.namespace.validate()?;
        within(
            "max_namespaces",
            u64::from(self.max_namespaces),
            1,
            crate::pubsub::MAX_TOPICS as u64,
        )?;
        positive("max_seen_messages", u64::from(self.max_seen_messages))?;
        // Below 4 KiB a single credential-bearing message would not fit; above 64 MiB one
        // frame could pin a large share of a small node's memory.
        within(
            "max_frame_bytes",
            as_u64(self.max_frame_bytes),
            4 << 10,
            64 << 20,
        )?;
        positive("admission_lease_ms", self.admission_lease_ms)?;
        less_than(
            ("admission_lease_ms", self.admission_lease_ms),
            (
                "ledger.max_lease_ms",
                self.ledger.max_lease_ms.saturating_add(1),
            ),
        )?;
        positive("sweep_interval_ms", self.sweep_interval_ms)?;
        positive("max_sweep_commands", u64::from(self.max_sweep_commands))?;
        within(
            "max_output_queue",
            u64::from(self.max_output_queue),
            64,
            1 << 24,
        )?;
        positive(
            "max_inflight_admissions",
            u64::from(self.max_inflight_admissions),
        )?;
        less_than(
            ("token_clock_skew_ms", self.token_clock_skew_ms),
            ("ledger.record_grace_ms", self.ledger.record_grace_ms),
        )?;
        positive("raft_tick_ms", self.raft_tick_ms)?;
        within("election_ticks", u64::from(self.election_ticks), 3, 1_000)?;
        positive("heartbeat_ticks", u64::from(self.heartbeat_ticks))?;
        less_than(
            ("heartbeat_ticks", u64::from(self.heartbeat_ticks)),
            ("election_ticks", u64::from(self.election_ticks)),
        )?;
        within("max_append_bytes", self.max_append_bytes, 1 << 10, 64 << 20)?;
        positive("max_inflight_appends", u64::from(self.max_inflight_appends))?;
        positive("compact_after_entries", self.compact_after_entries)?;
        positive("max_snapshot_bytes", as_u64(self.max_snapshot_bytes))?;
        positive("proposal_retry_ms", self.proposal_retry_ms)?;
        positive(
            "max_pending_proposals",
            u64::from(self.max_pending_proposals),
        )?;
        positive("join_request_timeout_ms", self.join_request_timeout_ms)?;
        positive("join_resend_ms", self.join_resend_ms)?;
        positive("join_retry_initial_ms", self.join_retry_initial_ms)?;
        less_than(
            ("join_retry_initial_ms", self.join_retry_initial_ms),
            (
                "join_retry_max_ms",
                self.join_retry_max_ms.saturating_add(1),
            ),
        )?;
        positive("join_deadline_ms", self.join_deadline_ms)?;
        positive("connect_retry_ms", self.connect_retry_ms)?;
        positive("max_raft_voters", u64::from(self.max_raft_voters))?;
        // Every id must fit the conf-state lists on the wire.
        let wire_max = as_u64(crate::replication::raft_wire::MAX_CONF_IDS);
        within(
            "max_raft_learners",
            u64::from(self.max_raft_learners),
            0,
            wire_max - u64::from(self.max_raft_voters).min(wire_max),
        )
    }

    /// The decoding limits peers' frames are held to.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = Config::default();
        c.ledger.max_token_records = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                field: "ledger.max_token_records"
            })
        );

        let c = Config {
            max_frame_bytes: 10,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                field: "max_frame_bytes",
                ..
            })
        ));

        let mut c = Config::default();
        c.ledger.max_lease_ms = c.ledger.record_grace_ms;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotLessThan {
                field: "ledger.max_lease_ms",
                ..
            })
        ));

        let c = Config {
            admission_lease_ms: LedgerConfig::default().max_lease_ms + 1,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotLessThan {
                field: "admission_lease_ms",
                ..
            })
        ));
    }
}
