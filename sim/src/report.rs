//! What one seed produced: its verdict, a summary, and everything needed to replay it.
//!
//! A failure is *typed* by who is at fault and what the exit code says: a broken safety
//! property (1), a liveness bound missed after healing (2), or a crash — a panic, a node's
//! fatal error, or the simulator catching itself in an impossible state (3). Every failure
//! report carries the seed, the commit, the options and one command that replays it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::json::Json;
use crate::known::{KnownBug, known_bug};
use crate::options::{Canary, Options, Profile};

/// The class of a failed seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// A safety property broke (a token admitted twice, replicas diverged, …).
    Safety,
    /// After healing, something that must finish did not within the bound.
    Liveness,
    /// A panic, a node's fatal error, or an impossible simulator state.
    Crash,
}

impl FailureKind {
    /// The CLI's exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::Safety => 1,
            FailureKind::Liveness => 2,
            FailureKind::Crash => 3,
        }
    }

    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Safety => "safety",
            FailureKind::Liveness => "liveness",
            FailureKind::Crash => "crash",
        }
    }

    /// Which of two classes decides the exit code of a run with both: safety first (the
    /// property this project exists for), then crashes, then liveness.
    pub fn severity(self) -> u8 {
        match self {
            FailureKind::Safety => 3,
            FailureKind::Crash => 2,
            FailureKind::Liveness => 1,
        }
    }
}

/// Why a seed failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Its class.
    pub kind: FailureKind,
    /// The checker (or mechanism) that stopped the seed.
    pub checker: String,
    /// What exactly was wrong.
    pub message: String,
    /// Simulated time of detection, in milliseconds.
    pub at_ms: u64,
    /// Number of trace events recorded before detection.
    pub event: u64,
}

/// Per-seed statistics, for the summary and the snapshot test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Trace events by kind.
    pub counts: BTreeMap<String, u64>,
    /// Presentations by how they ended.
    pub outcomes: BTreeMap<String, u64>,
    /// Tokens by kind and final ledger state (`valid:consumed`, …).
    pub tokens: BTreeMap<String, u64>,
    /// `(applied index, ledger digest prefix)` of every live member at the end, by slot name.
    pub replicas: BTreeMap<String, (u64, String)>,
    /// Highest index the spec model applied.
    pub model_index: u64,
    /// Replica observations compared with the spec model.
    pub model_compared: u64,
    /// Replica observations the model could not compare (it fell too far behind).
    pub model_unchecked: u64,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The profile its options were drawn from (explicit options are replayed as overrides of
    /// this profile's draw, or of the bench scenario's).
    pub profile: Profile,
    /// The planted core bug switched on, if any.
    pub canary: Option<Canary>,
    /// Every knob.
    pub options: Options,
    /// Why it failed, if it did.
    pub failure: Option<Failure>,
    /// Simulated time covered, in milliseconds.
    pub sim_ms: u64,
    /// Host time the seed took.
    pub wall: Duration,
    /// CPU time of the seed's thread, set-up and tear-down included (its cost on one core);
    /// `None` where the platform cannot tell.
    pub cpu: Option<Duration>,
    /// [`ticks`](crate::timing::ticks) inside core calls (net of measurement), when timed.
    pub core_ticks: Option<u64>,
    /// Timed core calls.
    pub core_calls: u64,
    /// [`ticks`](crate::timing::ticks) the whole seed took, when timed: the denominator of the
    /// core's share.
    pub run_ticks: u64,
    /// Where the seed's time went, by simulator region, when the run profiled regions
    /// ([`RunConfig::profile_regions`](crate::RunConfig::profile_regions), with `time_core`).
    pub regions: Option<crate::timing::RegionTicks>,
    /// The final trace digest.
    pub trace_digest: u64,
    /// Trace events.
    pub events: u64,
    /// The digest after each event (with `TraceLevel::Log` or `Full`).
    pub digest_log: Vec<u64>,
    /// Readable trace lines (with `TraceLevel::Full`).
    pub lines: Vec<String>,
    /// Statistics.
    pub summary: Summary,
}

/// The commit this binary was built from (`git rev-parse HEAD` at build time), or the
/// `PORTCULLIS_GIT_COMMIT` environment variable at run time, or `unknown`.
pub fn commit() -> String {
    if let Ok(c) = std::env::var("PORTCULLIS_GIT_COMMIT")
        && !c.is_empty()
    {
        return c;
    }
    option_env!("PORTCULLIS_SIM_BUILD_COMMIT")
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

impl SeedReport {
    /// Whether the seed passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// The known core bug this seed's failure is, if any.
    pub fn known_bug(&self) -> Option<&'static KnownBug> {
        self.failure
            .as_ref()
            .and_then(|f| known_bug(f, &self.options))
    }

    /// The one command that replays this seed with a full trace.
    pub fn replay_command(&self) -> String {
        let (mut profile, base) = if self.options.profile_name == "bench" {
            (" --bench-scenario".to_owned(), Options::bench(self.seed))
        } else {
            (
                format!(" --profile {}", self.profile),
                Options::draw(self.seed, self.profile),
            )
        };
        for (k, v) in self.options.diff(&base) {
            profile.push_str(&format!(" --set {k}={v}"));
        }
        let (features, canary) = match self.canary {
            Some(c) => (" --features canaries", format!(" --canary {c}")),
            None => ("", String::new()),
        };
        format!(
            "cargo run --release -p portcullis-sim{features} --bin portcullis-sim -- replay {}{profile}{canary} --trace",
            self.seed
        )
    }

    /// The multi-line failure report: seed, commit, options, failure and the replay command.
    pub fn failure_report(&self) -> String {
        let Some(f) = &self.failure else {
            return format!("seed {} passed", self.seed);
        };
        let known = self.known_bug().map_or(String::new(), |b| {
            format!(
                "\n  known core bug: {} (tests/regressions.rs: {})",
                b.id, b.regression_test
            )
        });
        format!(
            "FAILED seed {seed} ({kind}, exit {code})\n  checker: {checker}\n  at: t+{at}ms, event #{event}\n  \
             what: {message}{known}\n  commit: {commit}\n  options: {options}\n  replay: {replay}",
            seed = self.seed,
            kind = f.kind.as_str(),
            code = f.kind.exit_code(),
            checker = f.checker,
            at = f.at_ms,
            event = f.event,
            message = f.message,
            commit = commit(),
            options = self.options,
            replay = self.replay_command(),
        )
    }

    /// The report as JSON (no trace lines or digest log).
    pub fn to_json(&self) -> Json {
        let mut fields = vec![
            ("seed", Json::U64(self.seed)),
            ("passed", Json::Bool(self.passed())),
            ("sim_ms", Json::U64(self.sim_ms)),
            (
                "wall_ms",
                Json::U64(u64::try_from(self.wall.as_millis()).unwrap_or(u64::MAX)),
            ),
            ("events", Json::U64(self.events)),
            (
                "trace_digest",
                Json::Str(format!("{:016x}", self.trace_digest)),
            ),
        ];
        if let Some(f) = &self.failure {
            fields.push((
                "failure",
                Json::obj(vec![
                    ("kind", Json::Str(f.kind.as_str().to_owned())),
                    ("checker", Json::Str(f.checker.clone())),
                    ("message", Json::Str(f.message.clone())),
                    ("at_ms", Json::U64(f.at_ms)),
                    ("event", Json::U64(f.event)),
                    ("commit", Json::Str(commit())),
                    ("replay", Json::Str(self.replay_command())),
                    (
                        "known_bug",
                        self.known_bug()
                            .map_or(Json::Null, |b| Json::Str(b.id.to_owned())),
                    ),
                    (
                        "options",
                        Json::Obj(
                            self.options
                                .pairs()
                                .into_iter()
                                .map(|(k, v)| (k.to_owned(), Json::Str(v)))
                                .collect(),
                        ),
                    ),
                ]),
            ));
        }
        Json::obj(fields)
    }
}
