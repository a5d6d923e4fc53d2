//! Swarm options: every knob of one simulated run, drawn from its seed.
//!
//! Like TigerBeetle's VOPR, a seed does not only pick *when* faults happen but *which* faults
//! exist at all and how hard they hit: one seed may have a lossless network and many crashes,
//! the next heavy loss, asymmetric partitions and no crashes. A [`Profile`] bounds the draw.
//!
//! ```text
//!   seed ──SeededRng::from_u64──▶ root ──child("options")──▶ Options::draw(profile)
//!                                      ├─child("keys")──────▶ node keys, cluster secrets, tokens
//!                                      ├─child("workload")──▶ the admission plan
//!                                      ├─child("faults")────▶ every fault decision
//!                                      └─child("madsim")────▶ madsim's scheduler seed
//! ```
//!
//! Options are drawn from a child generator of their own, so adding a knob shifts no fault
//! decision and no workload choice of any existing seed's other streams.

use core::fmt;
use core::str::FromStr;

use portcullis_core::rng::SeededRng;
use rand::Rng;

/// How wide the per-seed draw of knobs is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    /// Three founders, few tokens, mild faults: fast smoke runs and snapshots.
    Lite,
    /// Three to five founders, a mixed workload, every fault family at moderate strength.
    Default,
    /// Each fault family switched on or off per seed, intensities over wide ranges.
    Swarm,
}

impl Profile {
    /// The name the CLI accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Lite => "lite",
            Profile::Default => "default",
            Profile::Swarm => "swarm",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not `lite`, `default` or `swarm`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile `{0}` (expected lite, default or swarm)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lite" => Ok(Profile::Lite),
            "default" => Ok(Profile::Default),
            "swarm" => Ok(Profile::Swarm),
            other => Err(UnknownProfile(other.to_owned())),
        }
    }
}

/// A planted core bug a run can switch on (needs the `canaries` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// `Register` overwrites an existing record.
    RegisterOverwrites,
    /// `Revert` ignores the lease id.
    RevertIgnoresLease,
    /// The listener skips `BeginInFlight` and consumes directly.
    SkipBeginInFlight,
    /// A namespace join ignores its deadline.
    JoinIgnoresDeadline,
    /// Beacons and acks vouch for ops not yet durable.
    VouchBeforeDurable,
}

impl Canary {
    /// Every canary.
    pub const ALL: [Canary; 5] = [
        Canary::RegisterOverwrites,
        Canary::RevertIgnoresLease,
        Canary::SkipBeginInFlight,
        Canary::JoinIgnoresDeadline,
        Canary::VouchBeforeDurable,
    ];

    /// The name the CLI accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Canary::RegisterOverwrites => "register-overwrites",
            Canary::RevertIgnoresLease => "revert-ignores-lease",
            Canary::SkipBeginInFlight => "skip-begin-in-flight",
            Canary::JoinIgnoresDeadline => "join-ignores-deadline",
            Canary::VouchBeforeDurable => "vouch-before-durable",
        }
    }
}

impl fmt::Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canary name the simulator does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown canary `{0}` (expected register-overwrites, revert-ignores-lease, skip-begin-in-flight, join-ignores-deadline or vouch-before-durable)"
)]
pub struct UnknownCanary(pub String);

impl FromStr for Canary {
    type Err = UnknownCanary;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Canary::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCanary(s.to_owned()))
    }
}

/// Whether this build can switch canaries on.
pub const CANARIES_BUILT_IN: bool = cfg!(feature = "canaries");

/// Every knob of one run. Probabilities are per message (network) or per second of simulated
/// time (episodes); durations carry their unit in the name.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The profile the knobs were drawn from (`bench` for the standard scenario).
    pub profile_name: &'static str,
    /// Founding members; every founder holds the admission secrets.
    pub founders: usize,
    /// Founders healed in the liveness phase (a majority).
    pub core_size: usize,
    /// Valid tokens with a long expiry.
    pub valid_tokens: usize,
    /// Most joiners presenting one valid token concurrently.
    pub max_presenters: usize,
    /// Whether every valid token gets exactly `max_presenters` presenters.
    pub exact_presenters: bool,
    /// Valid tokens that expire around the time they are presented.
    pub short_ttl_tokens: usize,
    /// Tokens already expired when presented.
    pub expired_tokens: usize,
    /// Tokens signed with another join secret.
    pub forged_tokens: usize,
    /// Tokens pinned to another cluster.
    pub wrong_cluster_tokens: usize,
    /// Valid tokens the operator revokes around their presentation.
    pub revoked_tokens: usize,
    /// Presentations of valid tokens by a new key after the token was (probably) consumed.
    pub late_replays: usize,
    /// Admitted joiners that lose their disk and present their token again with their key.
    /// Off in every profile: a re-admitted member with an empty Raft log panics raft-rs on the
    /// leader's first heartbeat (see `tests/regressions.rs`), so it is opt-in.
    pub disk_wipes: usize,
    /// Presentations start within this window of the safety phase.
    pub workload_window_ms: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a `JoinAccepted` reply is lost (the joiner then presents again with
    /// the same key and must be served again).
    pub reply_loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that sending also re-sends an old datagram of the same sender.
    pub replay: f64,
    /// Smallest one-way latency.
    pub latency_min_ms: u64,
    /// Largest one-way latency (datagrams reorder within the window).
    pub latency_max_ms: u64,
    /// Probability that a datagram gets an extra delay of up to `reorder_max_ms`.
    pub reorder: f64,
    /// Largest extra delay of a reordered datagram.
    pub reorder_max_ms: u64,
    /// Partitions started per simulated second.
    pub partition_rate: f64,
    /// Longest partition.
    pub partition_max_ms: u64,
    /// Probability that a partition cuts one direction only.
    pub asymmetric: f64,
    /// Probability that the listener whose `BeginInFlight` just committed is cut off from
    /// everyone for a little longer than a lease (a targeted fault: its `Consume` and `Revert`
    /// come back late, after another listener may have taken the token).
    pub lease_nemesis: f64,
    /// Swizzle-clog episodes started per simulated second.
    pub clog_rate: f64,
    /// Time between two clog (or unclog) steps of an episode.
    pub clog_step_ms: u64,
    /// Crashes per simulated second (of the whole system).
    pub crash_rate: f64,
    /// Probability that a node is crashed while the batch it just emitted is being written
    /// (that batch's fsync is made slow, and the crash lands before it completes): the
    /// targeted fault for lost and torn writes.
    pub crash_on_write: f64,
    /// Longest time a crashed node stays down.
    pub max_down_ms: u64,
    /// Probability that the batch being written at a crash is torn.
    pub torn: f64,
    /// Shortest simulated fsync.
    pub fsync_min_ms: u64,
    /// Longest simulated fsync.
    pub fsync_max_ms: u64,
    /// Probability that an fsync is slow (50–500 ms).
    pub slow_fsync: f64,
    /// Largest wall-clock skew of a node, either way.
    pub max_skew_ms: u64,
    /// Core config: the lease a listener takes on a token.
    pub admission_lease_ms: u64,
    /// Core config: compact the Raft log after this many applied entries.
    pub compact_after_entries: u64,
    /// Core config: how long a joiner keeps trying.
    pub join_deadline_ms: u64,
    /// Length of the safety phase (faults on).
    pub safety_ms: u64,
    /// Bound of the liveness phase (core healed, no crashes); 0: no liveness phase.
    pub liveness_ms: u64,
    /// Period of the supervisor (workload, faults, periodic checks).
    pub tick_ms: u64,
    /// Namespaces created (each by a founder of the healed core); 0: no namespace workload.
    pub namespaces: usize,
    /// Namespace joins with a valid invitation, spread over the other founders.
    pub ns_joins: usize,
    /// Namespace joins with a bad invitation (forged, expired, signed by a non-admin, in turn).
    pub ns_bad_joins: usize,
    /// The budget of each namespace join attempt.
    pub ns_join_deadline_ms: u64,
    /// Share of joiners whose first seed is an earlier joiner instead: a member by then (it
    /// holds no join secret, so it redirects them to the voters), or not yet one (silent). Its
    /// choices come from a stream of their own, so the rest of a seed's draw is unchanged.
    /// 0 in every profile (a draw would change the runs of seeds that regression tests keep);
    /// `--set member_seed_rate=0.5` and `sim/tests/seeds.rs` switch it on.
    pub member_seed_rate: f64,
    /// Share of joiners with two or more seeds that start their join on the first ones alone
    /// and are handed the rest by `AddJoinSeeds` 0–2 s later, as the production driver does
    /// when its dials finish one by one. Its own stream, and 0 in every profile, for the same
    /// reason as `member_seed_rate`; `--set late_seed_rate=0.5` and `sim/tests/seeds.rs`
    /// switch it on.
    pub late_seed_rate: f64,
}

fn chance(rng: &mut SeededRng, p: f64) -> bool {
    rng.gen_bool(p.clamp(0.0, 1.0))
}

fn unit(rng: &mut SeededRng, max: f64) -> f64 {
    rng.gen_range(0.0..=max)
}

impl Options {
    /// Draws the knobs of `seed` within `profile`.
    pub fn draw(seed: u64, profile: Profile) -> Options {
        let mut rng = SeededRng::from_u64(seed).child("options");
        match profile {
            Profile::Lite => Self::lite(&mut rng),
            Profile::Default => Self::default_profile(&mut rng),
            Profile::Swarm => Self::swarm(&mut rng),
        }
    }

    fn lite(rng: &mut SeededRng) -> Options {
        let founders = 3;
        Options {
            profile_name: "lite",
            founders,
            core_size: 2 + usize::from(chance(rng, 0.5)),
            valid_tokens: rng.gen_range(2..=3),
            max_presenters: 2,
            exact_presenters: false,
            short_ttl_tokens: 0,
            expired_tokens: rng.gen_range(0..=1),
            forged_tokens: 1,
            wrong_cluster_tokens: rng.gen_range(0..=1),
            revoked_tokens: rng.gen_range(0..=1),
            late_replays: 1,
            disk_wipes: 0,
            workload_window_ms: 4_000,
            loss: unit(rng, 0.02),
            reply_loss: 0.3,
            duplicate: unit(rng, 0.02),
            replay: 0.0,
            latency_min_ms: 1,
            latency_max_ms: rng.gen_range(1..=5),
            reorder: 0.0,
            reorder_max_ms: 0,
            partition_rate: 0.0,
            partition_max_ms: 0,
            asymmetric: 0.0,
            lease_nemesis: 0.0,
            clog_rate: 0.0,
            clog_step_ms: 100,
            crash_rate: if chance(rng, 0.5) { 0.05 } else { 0.0 },
            crash_on_write: 0.002,
            max_down_ms: 1_000,
            torn: 0.5,
            fsync_min_ms: 0,
            fsync_max_ms: 2,
            slow_fsync: 0.02,
            max_skew_ms: 500,
            admission_lease_ms: 5_000,
            compact_after_entries: 10_000,
            join_deadline_ms: 30_000,
            safety_ms: 8_000,
            liveness_ms: 45_000,
            tick_ms: 50,
            namespaces: 1,
            ns_joins: 2,
            ns_bad_joins: 1,
            ns_join_deadline_ms: 5_000,
            member_seed_rate: 0.0,
            late_seed_rate: 0.0,
        }
    }

    fn default_profile(rng: &mut SeededRng) -> Options {
        let founders = rng.gen_range(3..=5);
        let majority = founders / 2 + 1;
        let latency_min_ms = rng.gen_range(1..=3);
        Options {
            profile_name: "default",
            founders,
            core_size: rng.gen_range(majority..=founders),
            valid_tokens: rng.gen_range(3..=6),
            max_presenters: 3,
            exact_presenters: false,
            short_ttl_tokens: rng.gen_range(0..=1),
            expired_tokens: rng.gen_range(0..=1),
            forged_tokens: rng.gen_range(0..=1),
            wrong_cluster_tokens: rng.gen_range(0..=1),
            revoked_tokens: rng.gen_range(0..=2),
            late_replays: rng.gen_range(0..=2),
            disk_wipes: 0,
            workload_window_ms: 10_000,
            loss: unit(rng, 0.10),
            reply_loss: unit(rng, 0.3),
            duplicate: unit(rng, 0.05),
            replay: unit(rng, 0.02),
            latency_min_ms,
            latency_max_ms: latency_min_ms + rng.gen_range(0..=20),
            reorder: unit(rng, 0.10),
            reorder_max_ms: 50,
            partition_rate: unit(rng, 0.15),
            partition_max_ms: 5_000,
            asymmetric: 0.3,
            lease_nemesis: unit(rng, 0.3),
            clog_rate: unit(rng, 0.05),
            clog_step_ms: rng.gen_range(50..=500),
            crash_rate: unit(rng, 0.15),
            crash_on_write: unit(rng, 0.005),
            max_down_ms: rng.gen_range(200..=5_000),
            torn: 0.3,
            fsync_min_ms: 0,
            fsync_max_ms: rng.gen_range(0..=5),
            slow_fsync: unit(rng, 0.05),
            max_skew_ms: rng.gen_range(0..=2_000),
            admission_lease_ms: [3_000, 5_000, 10_000][rng.gen_range(0..3usize)],
            compact_after_entries: 10_000,
            join_deadline_ms: 30_000,
            safety_ms: 20_000,
            liveness_ms: 60_000,
            tick_ms: 50,
            namespaces: rng.gen_range(1..=2),
            ns_joins: rng.gen_range(2..=5),
            ns_bad_joins: rng.gen_range(0..=2),
            ns_join_deadline_ms: rng.gen_range(2_000..=8_000),
            member_seed_rate: 0.0,
            late_seed_rate: 0.0,
        }
    }

    fn swarm(rng: &mut SeededRng) -> Options {
        let founders = rng.gen_range(3..=5);
        let majority = founders / 2 + 1;
        // Each family is on or off for the whole seed (swarm testing), then drawn in range.
        let on = |rng: &mut SeededRng| chance(rng, 0.5);
        let net = on(rng);
        let parts = on(rng);
        let clogs = on(rng);
        let crashes = on(rng);
        let skew = on(rng);
        let latency_min_ms = rng.gen_range(0..=5);
        Options {
            profile_name: "swarm",
            founders,
            core_size: rng.gen_range(majority..=founders),
            valid_tokens: rng.gen_range(1..=10),
            max_presenters: rng.gen_range(1..=4),
            exact_presenters: chance(rng, 0.3),
            short_ttl_tokens: rng.gen_range(0..=2),
            expired_tokens: rng.gen_range(0..=2),
            forged_tokens: rng.gen_range(0..=2),
            wrong_cluster_tokens: rng.gen_range(0..=2),
            revoked_tokens: rng.gen_range(0..=3),
            late_replays: rng.gen_range(0..=3),
            disk_wipes: 0,
            workload_window_ms: rng.gen_range(1_000..=20_000),
            loss: if net { unit(rng, 0.3) } else { 0.0 },
            reply_loss: unit(rng, 0.5),
            duplicate: if net { unit(rng, 0.2) } else { 0.0 },
            replay: if net { unit(rng, 0.05) } else { 0.0 },
            latency_min_ms,
            latency_max_ms: latency_min_ms + rng.gen_range(0..=100),
            reorder: if net { unit(rng, 0.3) } else { 0.0 },
            reorder_max_ms: rng.gen_range(0..=500),
            partition_rate: if parts { unit(rng, 0.3) } else { 0.0 },
            partition_max_ms: rng.gen_range(500..=15_000),
            asymmetric: unit(rng, 1.0),
            lease_nemesis: if parts { unit(rng, 0.5) } else { 0.0 },
            clog_rate: if clogs { unit(rng, 0.2) } else { 0.0 },
            clog_step_ms: rng.gen_range(10..=2_000),
            crash_rate: if crashes { unit(rng, 0.5) } else { 0.0 },
            crash_on_write: if crashes { unit(rng, 0.02) } else { 0.0 },
            max_down_ms: rng.gen_range(10..=15_000),
            torn: unit(rng, 1.0),
            fsync_min_ms: 0,
            fsync_max_ms: rng.gen_range(0..=20),
            slow_fsync: unit(rng, 0.2),
            max_skew_ms: if skew { rng.gen_range(0..=20_000) } else { 0 },
            admission_lease_ms: [1_500, 4_000, 10_000][rng.gen_range(0..3usize)],
            compact_after_entries: [30, 200, 10_000][rng.gen_range(0..3usize)],
            join_deadline_ms: 30_000,
            safety_ms: rng.gen_range(10_000..=40_000),
            liveness_ms: 90_000,
            tick_ms: 50,
            namespaces: rng.gen_range(0..=3),
            ns_joins: rng.gen_range(0..=10),
            ns_bad_joins: rng.gen_range(0..=4),
            ns_join_deadline_ms: rng.gen_range(500..=10_000),
            member_seed_rate: 0.0,
            late_seed_rate: 0.0,
        }
    }

    /// The standard benchmark scenario: 5 founders, 30 tokens with 3 presenters each, 10
    /// namespace joins (3 namespaces), exactly 60 simulated seconds under the default profile's faults of `seed` (no liveness phase).
    pub fn bench(seed: u64) -> Options {
        let faults = Self::draw(seed, Profile::Default);
        Options {
            profile_name: "bench",
            founders: 5,
            core_size: 5,
            valid_tokens: 30,
            max_presenters: 3,
            exact_presenters: true,
            short_ttl_tokens: 0,
            expired_tokens: 0,
            forged_tokens: 0,
            wrong_cluster_tokens: 0,
            revoked_tokens: 0,
            late_replays: 0,
            disk_wipes: 0,
            workload_window_ms: 40_000,
            safety_ms: 60_000,
            liveness_ms: 0,
            namespaces: 3,
            ns_joins: 10,
            ns_bad_joins: 0,
            ..faults
        }
    }

    /// The `key=value` pairs, in a stable order (for reports and JSON).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("profile", self.profile_name.to_owned()),
            ("founders", self.founders.to_string()),
            ("core_size", self.core_size.to_string()),
            ("valid_tokens", self.valid_tokens.to_string()),
            ("max_presenters", self.max_presenters.to_string()),
            ("exact_presenters", self.exact_presenters.to_string()),
            ("short_ttl_tokens", self.short_ttl_tokens.to_string()),
            ("expired_tokens", self.expired_tokens.to_string()),
            ("forged_tokens", self.forged_tokens.to_string()),
            (
                "wrong_cluster_tokens",
                self.wrong_cluster_tokens.to_string(),
            ),
            ("revoked_tokens", self.revoked_tokens.to_string()),
            ("late_replays", self.late_replays.to_string()),
            ("disk_wipes", self.disk_wipes.to_string()),
            ("workload_window_ms", self.workload_window_ms.to_string()),
            ("loss", format!("{}", self.loss)),
            ("reply_loss", format!("{}", self.reply_loss)),
            ("duplicate", format!("{}", self.duplicate)),
            ("replay", format!("{}", self.replay)),
            ("latency_min_ms", self.latency_min_ms.to_string()),
            ("latency_max_ms", self.latency_max_ms.to_string()),
            ("reorder", format!("{}", self.reorder)),
            ("reorder_max_ms", self.reorder_max_ms.to_string()),
            ("partition_rate", format!("{}", self.partition_rate)),
            ("partition_max_ms", self.partition_max_ms.to_string()),
            ("asymmetric", format!("{}", self.asymmetric)),
            ("lease_nemesis", format!("{}", self.lease_nemesis)),
            ("clog_rate", format!("{}", self.clog_rate)),
            ("clog_step_ms", self.clog_step_ms.to_string()),
            ("crash_rate", format!("{}", self.crash_rate)),
            ("crash_on_write", format!("{}", self.crash_on_write)),
            ("max_down_ms", self.max_down_ms.to_string()),
            ("torn", format!("{}", self.torn)),
            ("fsync_min_ms", self.fsync_min_ms.to_string()),
            ("fsync_max_ms", self.fsync_max_ms.to_string()),
            ("slow_fsync", format!("{}", self.slow_fsync)),
            ("max_skew_ms", self.max_skew_ms.to_string()),
            ("admission_lease_ms", self.admission_lease_ms.to_string()),
            (
                "compact_after_entries",
                self.compact_after_entries.to_string(),
            ),
            ("join_deadline_ms", self.join_deadline_ms.to_string()),
            ("safety_ms", self.safety_ms.to_string()),
            ("liveness_ms", self.liveness_ms.to_string()),
            ("tick_ms", self.tick_ms.to_string()),
            ("namespaces", self.namespaces.to_string()),
            ("ns_joins", self.ns_joins.to_string()),
            ("ns_bad_joins", self.ns_bad_joins.to_string()),
            ("ns_join_deadline_ms", self.ns_join_deadline_ms.to_string()),
            ("member_seed_rate", format!("{}", self.member_seed_rate)),
            ("late_seed_rate", format!("{}", self.late_seed_rate)),
        ]
    }
}

/// A `--set key=value` the options do not accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// No knob has this name.
    #[error("no option named `{0}`")]
    Unknown(String),
    /// The value does not parse for this knob.
    #[error("option `{key}`: cannot parse `{value}`")]
    BadValue {
        /// The knob.
        key: String,
        /// The value given.
        value: String,
    },
    /// Not `key=value`.
    #[error("expected key=value, got `{0}`")]
    NotKeyValue(String),
}

impl Options {
    /// Sets one knob by name (the names of [`Options::pairs`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        fn parse<T: FromStr>(key: &str, value: &str) -> Result<T, OptionError> {
            value.trim().parse().map_err(|_| OptionError::BadValue {
                key: key.to_owned(),
                value: value.to_owned(),
            })
        }
        macro_rules! fields {
            ($($field:ident),* $(,)?) => {
                match key {
                    $(stringify!($field) => self.$field = parse(key, value)?,)*
                    _ => return Err(OptionError::Unknown(key.to_owned())),
                }
            };
        }
        fields!(
            founders,
            core_size,
            valid_tokens,
            max_presenters,
            exact_presenters,
            short_ttl_tokens,
            expired_tokens,
            forged_tokens,
            wrong_cluster_tokens,
            revoked_tokens,
            late_replays,
            disk_wipes,
            workload_window_ms,
            loss,
            reply_loss,
            duplicate,
            replay,
            latency_min_ms,
            latency_max_ms,
            reorder,
            reorder_max_ms,
            partition_rate,
            partition_max_ms,
            asymmetric,
            lease_nemesis,
            clog_rate,
            clog_step_ms,
            crash_rate,
            crash_on_write,
            max_down_ms,
            torn,
            fsync_min_ms,
            fsync_max_ms,
            slow_fsync,
            max_skew_ms,
            admission_lease_ms,
            compact_after_entries,
            join_deadline_ms,
            safety_ms,
            liveness_ms,
            tick_ms,
            namespaces,
            ns_joins,
            ns_bad_joins,
            ns_join_deadline_ms,
            member_seed_rate,
            late_seed_rate,
        );
        Ok(())
    }

    /// Sets one knob from `key=value`.
    pub fn set_pair(&mut self, pair: &str) -> Result<(), OptionError> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| OptionError::NotKeyValue(pair.to_owned()))?;
        self.set(k.trim(), v)
    }

    /// Sets knobs from `key=value` pairs, in order (a later pair wins); stops at the first bad
    /// one and returns it with its error.
    pub fn set_pairs<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), (&'a str, OptionError)> {
        for pair in pairs {
            self.set_pair(pair).map_err(|e| (pair, e))?;
        }
        Ok(())
    }

    /// The knobs whose values differ from `base`, as `(key, value)` for `--set`.
    pub fn diff(&self, base: &Options) -> Vec<(&'static str, String)> {
        let theirs = base.pairs();
        self.pairs()
            .into_iter()
            .zip(theirs)
            .filter(|((k, a), (_, b))| *k != "profile" && a != b)
            .map(|((k, a), _)| (k, a))
            .collect()
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_and_within_bounds() {
        for seed in 0..200 {
            for profile in [Profile::Lite, Profile::Default, Profile::Swarm] {
                let a = Options::draw(seed, profile);
                assert_eq!(a, Options::draw(seed, profile));
                assert!(a.core_size > a.founders / 2 && a.core_size <= a.founders);
                assert!(a.latency_min_ms <= a.latency_max_ms);
                assert!(a.fsync_min_ms <= a.fsync_max_ms);
            }
        }
    }

    #[test]
    fn set_round_trips_every_pair() {
        let base = Options::draw(5, Profile::Swarm);
        let mut other = Options::draw(6, Profile::Default);
        for (k, v) in base.pairs() {
            if k != "profile" {
                other.set(k, &v).expect("every pair parses back");
            }
        }
        assert!(other.diff(&base).is_empty());
        assert!(other.set("nope", "1").is_err());
        assert!(other.set("loss", "x").is_err());
    }

    #[test]
    fn profiles_parse() {
        assert_eq!("swarm".parse::<Profile>(), Ok(Profile::Swarm));
        assert!("heavy".parse::<Profile>().is_err());
    }
}
