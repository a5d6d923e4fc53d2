//! `replay-recording`: re-executes a production flight recording against the core and names the
//! first record whose outputs differ from what the node produced when it was recorded.
//!
//! No madsim runtime is involved: the core is plain function calls, so replay rebuilds the
//! node from record 0 and feeds it every recorded `(now, input)`, draining outputs exactly as
//! the recorder did (see `portcullis_core::recording`).
//!
//! ```text
//!   files ──read_files──▶ header ──setup(secrets supplied, checked)──▶ Start: rebuild node
//!                                                  │
//!   for each record: rebuild input (token tags re-signed) ──▶ handle ──▶ drain, poll_timeout
//!                    ──▶ OutputsDigest == recorded?  no ──▶ Divergence (index, input, diff)
//! ```
//!
//! What replay needs besides the files: the node's secret key (`--node-key FILE`: 32 raw
//! bytes, checked against the recorded public key), the cluster's secrets directory
//! (`--secrets DIR`, the layout `portcullis cluster init` writes: `cluster.key` and
//! `join.secret`, 32 raw bytes each; checked against the recorded fingerprints), and the seed
//! (`--seed HEX`: the 32 bytes as 64 hex characters, as `DATA_DIR/recording-seeds` notes them;
//! a decimal is a simulator `u64` seed) when the recording withholds it; for a node recovered
//! from its durable state,
//! its namespace identity keys (`--namespace-key FILE`, repeatable).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use portcullis_core::crypto::{JoinSecret, SecretKey};
use portcullis_core::identity::AdmissionSecrets;
use portcullis_core::node::Output;
use portcullis_core::recording::{
    self, OutputsDigest, RebuildError, RebuildNote, Record, RecordedFrame, RecordedInput,
    Recording, RecordingError, ReplaySecrets,
};
use portcullis_core::rng::NodeSeed;
use portcullis_core::wire::{Envelope, Limits};
use zeroize::Zeroizing;

/// File name of the cluster key in a secrets directory (`portcullis cluster init`).
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// File name of the join secret in a secrets directory (`portcullis cluster init`).
pub const JOIN_SECRET_FILE: &str = "join.secret";

/// Longest description of one output or input in a report.
const MAX_DESCRIPTION_CHARS: usize = 240;
/// Most differing outputs listed in a divergence's diff.
const MAX_DIFF_LINES: usize = 32;

/// Why a recording could not be replayed at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret file is not 32 bytes.
    #[error("{path} is {len} bytes, expected 32")]
    SecretLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The recording is unreadable, of another format version, or incomplete.
    #[error("recording: {0}")]
    Recording(#[from] RecordingError),
    /// The node or an input could not be rebuilt (missing or wrong secrets).
    #[error("record {index}: {source}")]
    Rebuild {
        /// The record.
        index: u64,
        /// Why.
        source: RebuildError,
    },
}

/// The first record whose outputs differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The record's index.
    pub index: u64,
    /// The recorded input, described.
    pub input: String,
    /// What the recorded node produced.
    pub expected: OutputsDigest,
    /// What the replayed node produced.
    pub actual: OutputsDigest,
    /// One line per differing output, with the replayed output's content.
    pub diff: Vec<String>,
    /// What replay approximated while rebuilding this record's input.
    pub notes: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "first divergence at record {}", self.index)?;
        writeln!(f, "  input: {}", self.input)?;
        writeln!(
            f,
            "  expected: {} outputs, next timeout {:?}",
            self.expected.outputs.len(),
            self.expected.next_timeout.map(|t| t.as_nanos())
        )?;
        writeln!(
            f,
            "  actual:   {} outputs, next timeout {:?}",
            self.actual.outputs.len(),
            self.actual.next_timeout.map(|t| t.as_nanos())
        )?;
        for line in &self.diff {
            writeln!(f, "  {line}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// What a replay found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records replayed (up to and including a divergence).
    pub records: u64,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// Approximations made on records that still matched: `(record, note)`.
    pub notes: Vec<(u64, String)>,
}

impl ReplayReport {
    /// Whether every record produced the recorded outputs.
    pub fn identical(&self) -> bool {
        self.divergence.is_none()
    }
}

/// Replays the recording split over `paths` (oldest first).
pub fn replay_files(
    paths: &[PathBuf],
    secrets: &ReplaySecrets,
) -> Result<ReplayReport, ReplayError> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        files.push(std::fs::read(path).map_err(|source| ReplayError::Io {
            path: path.clone(),
            source,
        })?);
    }
    let slices: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let recording = recording::read_files(&slices)?;
    replay(&recording, secrets)
}

/// Replays a decoded recording.
pub fn replay(recording: &Recording, secrets: &ReplaySecrets) -> Result<ReplayReport, ReplayError> {
    let rebuild = |index: u64| move |source: RebuildError| ReplayError::Rebuild { index, source };
    let mut records = recording.records.iter();
    let Some(Record::Start {
        now,
        start,
        outputs,
        ..
    }) = records.next()
    else {
        return Err(RecordingError::NoStart.into());
    };
    let setup = recording.header.setup(secrets).map_err(rebuild(0))?;
    let (mut node, produced) = start.rebuild(setup, *now, secrets).map_err(rebuild(0))?;
    let mut report = ReplayReport {
        records: 1,
        divergence: None,
        notes: Vec::new(),
    };
    let actual = OutputsDigest::of(&produced, node.poll_timeout());
    if actual != *outputs {
        report.divergence = Some(divergence(
            0,
            format!("{start:?}"),
            outputs,
            actual,
            &produced,
            &[],
        ));
        return Ok(report);
    }
    for record in records {
        let Record::Handle {
            index,
            now,
            input,
            outputs,
        } = record
        else {
            return Err(RecordingError::NoStart.into());
        };
        let (rebuilt, notes) = input.rebuild(secrets).map_err(rebuild(*index))?;
        node.handle(*now, rebuilt);
        let mut produced = Vec::new();
        while let Some(output) = node.poll_output() {
            produced.push(output);
        }
        report.records += 1;
        let actual = OutputsDigest::of(&produced, node.poll_timeout());
        if actual != *outputs {
            report.divergence = Some(divergence(
                *index,
                describe_input(input),
                outputs,
                actual,
                &produced,
                &notes,
            ));
            return Ok(report);
        }
        report
            .notes
            .extend(notes.iter().map(|n| (*index, n.to_string())));
    }
    Ok(report)
}

fn divergence(
    index: u64,
    input: String,
    expected: &OutputsDigest,
    actual: OutputsDigest,
    produced: &[Output],
    notes: &[RebuildNote],
) -> Divergence {
    let mut diff = Vec::new();
    let n = expected.outputs.len().max(actual.outputs.len());
    for k in 0..n {
        let (e, a) = (expected.outputs.get(k), actual.outputs.get(k));
        if e == a {
            continue;
        }
        if diff.len() == MAX_DIFF_LINES {
            diff.push("...".to_owned());
            break;
        }
        let shown = |s: Option<&recording::OutputSummary>| {
            s.map_or_else(|| "(none)".to_owned(), ToString::to_string)
        };
        let mut line = format!("output {k}: expected {}, got {}", shown(e), shown(a));
        if let Some(output) = produced.get(k) {
            let _ = write!(line, " = {}", truncate(format!("{output:?}")));
        }
        diff.push(line);
    }
    if expected.next_timeout != actual.next_timeout {
        diff.push(format!(
            "next timeout: expected {:?} ns, got {:?} ns",
            expected.next_timeout.map(|t| t.as_nanos()),
            actual.next_timeout.map(|t| t.as_nanos())
        ));
    }
    Divergence {
        index,
        input: truncate(input),
        expected: expected.clone(),
        actual,
        diff,
        notes: notes.iter().map(ToString::to_string).collect(),
    }
}

fn truncate(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_DESCRIPTION_CHARS) {
        text.truncate(at);
        text.push_str("...");
    }
    text
}

/// A one-line description of a recorded input (frames by kind and length, not bytes).
pub fn describe_input(input: &RecordedInput) -> String {
    let frame_kind = |bytes: &[u8]| {
        let limits = Limits {
            max_frame_bytes: bytes.len(),
        };
        Envelope::parse(bytes, &limits)
            .map_or_else(|e| format!("undecodable: {e}"), |e| format!("{:?}", e.kind))
    };
    match input {
        RecordedInput::Received { from, frame } => match frame {
            RecordedFrame::Verbatim(bytes) => format!(
                "Received {{ from: {from}, {} bytes, {} }}",
                bytes.len(),
                frame_kind(bytes)
            ),
            RecordedFrame::TokenTagZeroed { frame, token, .. } => format!(
                "Received {{ from: {from}, {} bytes, {}, token {} }}",
                frame.len(),
                frame_kind(frame),
                token.0.short()
            ),
            _ => format!("{input:?}"),
        },
        _ => format!("{input:?}"),
    }
}

fn read_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, ReplayError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    })?);
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| ReplayError::SecretLength {
            path: path.to_path_buf(),
            len: bytes.len(),
        })
}

/// Loads secret keys from files of 32 raw bytes each (namespace identity keys).
pub fn load_keys(paths: &[PathBuf]) -> Result<Vec<SecretKey>, ReplayError> {
    paths
        .iter()
        .map(|p| Ok(SecretKey::from_secret_bytes(&*read_secret(p)?)))
        .collect()
}

/// Loads what replay needs: the cluster secrets directory (an admitting node, or the join
/// secret a joiner's token was issued with), the node key file and the seed.
pub fn load_secrets(
    secrets_dir: Option<&Path>,
    node_key: Option<&Path>,
    seed: Option<NodeSeed>,
) -> Result<ReplaySecrets, ReplayError> {
    let mut secrets = ReplaySecrets {
        seed,
        ..ReplaySecrets::default()
    };
    if let Some(path) = node_key {
        secrets.node_key = Some(SecretKey::from_secret_bytes(&*read_secret(path)?));
    }
    if let Some(dir) = secrets_dir {
        let join_secret = JoinSecret::from_bytes(*read_secret(&dir.join(JOIN_SECRET_FILE))?);
        let cluster_key_path = dir.join(CLUSTER_KEY_FILE);
        if cluster_key_path.exists() {
            secrets.admission = Some(AdmissionSecrets {
                cluster_key: SecretKey::from_secret_bytes(&*read_secret(&cluster_key_path)?),
                join_secret: join_secret.clone(),
            });
        }
        secrets.join_secret = Some(join_secret);
    }
    Ok(secrets)
}
