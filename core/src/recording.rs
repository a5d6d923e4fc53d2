//! The flight recorder: a compact, versioned record of everything one [`Node`] was given, so a
//! production incident replays against the core the way a simulated one does.
//!
//! The core is deterministic: the same construction, the same seed and the same `(now, input)`
//! sequence give the same outputs. A [`Recorder`] observes exactly that — it builds the node,
//! then stands between the driver and [`Node::handle`]: it records the input, calls `handle`,
//! drains every output (so the driver keeps the drain contract by carrying out the returned
//! `Vec`), reads `poll_timeout`, and records a digest of all of it. Replay
//! (`portcullis-sim replay-recording`) rebuilds each input, calls the same core and compares
//! digests, naming the first record whose outputs differ.
//!
//! ```text
//!   driver ── start_node(setup, now, NodeStart) ──▶ Recorder ──▶ Node::bootstrap/new_joiner/recover
//!   driver ── handle(&mut node, now, input) ──────▶ Recorder ──▶ Node::handle, drain, poll_timeout
//!        ◀── Vec<Output> (carry out in order)          │
//!   driver ◀── poll_record() ── framed records ◀────────┘ (redact secrets, digest outputs)
//!   driver ──▶ file writer (io-tokio/src/recording.rs: rotation by size)
//!
//!   replay: files ──▶ read_files ──▶ Start: rebuild node (node key, secrets supplied, checked
//!           against the header's public key and fingerprints) ──▶ per record: rebuild input,
//!           handle, drain, compare digest ──▶ identical | first divergence
//! ```
//!
//! Recording is off unless a driver builds a [`Recorder`]: a driver without one calls
//! `Node::handle` directly and pays nothing.
//!
//! ## What a recording contains
//!
//! Every file starts with [`MAGIC`], the format version (`u16` LE, checked before anything else
//! is decoded) and one [`RecordingHeader`] (length-prefixed borsh), repeated at the top of every
//! rotated file so each file identifies itself. Then framed [`Record`]s (`u32` LE length ‖ borsh):
//!
//! * header: crate version, the node's **public** key, the 32-byte seed (or only its hash, see
//!   [`SeedPolicy`]), the whole [`Config`], and [`SecretsFingerprint`]: the cluster **public**
//!   key and a domain-separated SHA-256 of the join secret;
//! * record 0, [`Record::Start`]: how the node was built — bootstrap with the founder list, a
//!   new joiner, or recovered from a [`DurableState`] with every namespace identity key
//!   replaced by zeros (its public key is kept) plus the hash of the real state;
//! * records 1.., [`Record::Handle`]: `now` (monotonic instant and `unix_ms`), the input (peer
//!   ids, keys, connection bindings, frames, `Persisted` numbers, timers, commands), and an
//!   [`OutputsDigest`]: per output its kind, destination/number/event name and a 128-bit hash,
//!   plus the `poll_timeout` after the drain.
//!
//! Outputs themselves are never stored (a `Persist` batch may hold a namespace identity key).
//!
//! ## What a recording never contains, and what replay needs instead
//!
//! | secret | in the recording | replay needs |
//! |---|---|---|
//! | node secret key | its public key | the key (`--node-key`), checked against the public key |
//! | cluster key, join secret | the cluster public key, `SHA-256(domain ‖ join secret)` | the secrets dir (`--secrets`), checked against both |
//! | a token's HMAC tag (in a `JoinCluster` command or a received `JoinRequest` frame) | the token body (version, pin, id, expiry, role) and the token hash; the tag bytes are zeroed | the join secret, to recompute the tag; the rebuilt token must hash to the recorded hash |
//! | namespace identity and admin keys in a recovered durable state | zeros, and the public key | the keys (`--namespace-key`, [`ReplaySecrets::namespace_keys`]) |
//! | the seed, which derives the keys the node generates itself (namespace admin and identity keys) | with [`SeedPolicy::Withheld`] (the default): its hash | the seed (`--seed`, 64 hex characters) |
//!
//! A token whose tag the supplied join secret does not reproduce (a forgery, another
//! cluster's token) is replayed with an all-zero tag; replay notes it, and outputs that carry
//! its hash will diverge there. A frame the node cannot decode is stored with every byte that
//! cannot change how it fails zeroed (a refused header's payload; an undecodable
//! `JoinRequest`'s would-be tag), so a malformed request does not leak the token in it. Invitations are not secrets in portcullis
//! (they are signed by an admin and carried in every `MemberJoined` op of the governance log),
//! so they are recorded as given; the admin keys that sign them never are.

use std::collections::VecDeque;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::config::Config;
use crate::crypto::{Hash32, JoinSecret, PublicKey, SecretKey};
use crate::durable::{DurableState, NamespaceSecret};
use crate::identity::AdmissionSecrets;
use crate::ledger::{Addrs, MemberId, MemberSpec};
use crate::messages::JoinRequest;
use crate::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
use crate::node::{Event, Input, LocalCommand, Node, NodeError, NodeSetup, Output, PeerId};
use crate::rng::NodeSeed;
use crate::time::{Instant, Now};
use crate::token::{JoinToken, TOKEN_BODY_BYTES, TOKEN_BYTES, TOKEN_TAG_BYTES, TokenHash};
use crate::wire::{self, Envelope, Limits, MessageKind};

/// The first bytes of every recording file.
pub const MAGIC: [u8; 8] = *b"PCULREC\0";
/// The format version this build writes and reads. Version 2: the seed is 32 bytes (version 1
/// held a `u64` seed and is refused with [`RecordingError::UnsupportedVersion`]).
pub const FORMAT_VERSION: u16 = 2;
/// Largest header accepted (a config and a few keys are well below it).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest record accepted: a received frame is bounded by `max_frame_bytes`, but a
/// recovered durable state holds a snapshot (`max_snapshot_bytes`) and the log after it.
pub const MAX_RECORD_BYTES: usize = 1 << 30;
/// Default bound on encoded records waiting for the driver's [`Recorder::poll_record`].
pub const DEFAULT_MAX_PENDING_RECORDS: usize = 65_536;
/// Longest event name kept in an [`OutputSummary`].
const MAX_EVENT_NAME_BYTES: usize = 48;

const JOIN_SECRET_DOMAIN: &[u8] = b"portcullis.recording.join-secret.v1";
const SEED_DOMAIN: &[u8] = b"portcullis.recording.seed.v2";
const OUTPUT_DOMAIN: &[u8] = b"portcullis.recording.output.v1";
const DURABLE_DOMAIN: &[u8] = b"portcullis.recording.durable.v1";

/// Whether the header holds the seed or only its hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedPolicy {
    /// Only `SHA-256(domain ‖ seed)`: the seed derives the keys the node generates itself, so
    /// a recording with the seed would let its reader derive them. The driver keeps the seed
    /// with the node's data (mode 0600) for replay.
    #[default]
    Withheld,
    /// The seed itself: replay needs nothing more, but whoever reads the recording can derive
    /// the namespace keys this node generated while it was recorded.
    Included,
}

/// The seed as a header holds it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum RecordedSeed {
    /// The seed (its `Debug` shows the fingerprint only).
    Included(NodeSeed),
    /// Its hash ([`seed_fingerprint`]).
    Withheld(Hash32),
}

/// Identifies the admission secrets a node ran with, without holding them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SecretsFingerprint {
    /// The cluster public key.
    pub cluster_key: Option<PublicKey>,
    /// [`join_secret_fingerprint`] of the join secret.
    pub join_secret: Option<Hash32>,
}

impl SecretsFingerprint {
    /// The fingerprint of `secrets` (`None`: a node that does not admit).
    pub fn of(secrets: Option<&AdmissionSecrets>) -> SecretsFingerprint {
        SecretsFingerprint {
            cluster_key: secrets.map(|s| s.cluster_key.public()),
            join_secret: secrets.map(|s| join_secret_fingerprint(&s.join_secret)),
        }
    }
}

/// Domain-separated SHA-256 of a join secret (256 random bits: the hash reveals nothing).
pub fn join_secret_fingerprint(secret: &JoinSecret) -> Hash32 {
    Hash32::of(&[JOIN_SECRET_DOMAIN, secret.expose()])
}

/// Domain-separated SHA-256 of a seed's 32 bytes (for a [`NodeSeed::from_u64`] seed, of the
/// expanded bytes): what recording headers and logs hold instead of the seed.
pub fn seed_fingerprint(seed: &NodeSeed) -> Hash32 {
    Hash32::of(&[SEED_DOMAIN, seed.expose()])
}

/// What identifies a recording and the node it recorded.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct RecordingHeader {
    /// `portcullis-core`'s version that wrote it.
    pub crate_version: String,
    /// The node's public key.
    pub node_key: PublicKey,
    /// The node's seed, or its hash.
    pub seed: RecordedSeed,
    /// The node's configuration.
    pub config: Config,
    /// Which admission secrets it ran with.
    pub secrets: SecretsFingerprint,
}

/// How the recorded node was built.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum RecordedStart {
    /// [`Node::bootstrap`] with these founders.
    Bootstrap {
        /// The founder list.
        founders: Vec<MemberSpec>,
    },
    /// [`Node::new_joiner`].
    Joiner,
    /// [`Node::recover`] from this state, namespace identity keys zeroed.
    Recover {
        /// The durable state without its secrets.
        durable: Box<DurableState>,
        /// The public key of every identity that was zeroed.
        namespace_keys: Vec<(NamespaceId, PublicKey)>,
        /// Hash of the real state's encoding: replay checks that it rebuilt it exactly.
        durable_hash: Hash32,
    },
}

/// A token without its tag.
#[derive(Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct RedactedToken {
    /// The body (version, cluster pin, id, expiry, role): the tag is recomputed from it.
    pub body: [u8; TOKEN_BODY_BYTES],
    /// The hash of the whole token.
    pub hash: TokenHash,
}

impl core::fmt::Debug for RedactedToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedactedToken")
            .field("hash", &self.hash.0)
            .finish_non_exhaustive()
    }
}

impl RedactedToken {
    fn of(token: &JoinToken) -> RedactedToken {
        let bytes = token.expose_bytes();
        let mut body = [0u8; TOKEN_BODY_BYTES];
        body.copy_from_slice(&bytes[..TOKEN_BODY_BYTES]);
        RedactedToken {
            body,
            hash: token.hash(),
        }
    }
}

/// A received frame as recorded.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum RecordedFrame {
    /// Stored as received (no token in it).
    Verbatim(Vec<u8>),
    /// A `JoinRequest` whose token tag (at `tag_at`) was zeroed.
    TokenTagZeroed {
        /// The frame, tag bytes zeroed.
        frame: Vec<u8>,
        /// Offset of the tag in `frame`.
        tag_at: u32,
        /// The hash of the token as received.
        token: TokenHash,
    },
    /// A frame the node refuses to decode, with every byte that cannot change how it fails
    /// zeroed (the payload of a frame refused on its header; the would-be token tag of a
    /// `JoinRequest` that does not decode). Replayed as stored.
    Scrubbed(Vec<u8>),
}

/// A local command as recorded (tokens redacted).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant mirrors the `LocalCommand` of the same name.
pub enum RecordedCommand {
    JoinCluster {
        token: RedactedToken,
        seeds: Vec<u64>,
        addrs: Addrs,
    },
    PromoteMember {
        member_id: MemberId,
    },
    RevokeToken {
        hash: TokenHash,
        expires_at_unix_ms: u64,
    },
    CreateNamespace {
        salt: [u8; 16],
    },
    IssueInvitation {
        namespace: NamespaceId,
        expires_at_unix_ms: u64,
        policy: InvitePolicy,
    },
    JoinNamespace {
        invitation: SignedInvitation,
        deadline_ms: u64,
    },
    JoinNamespaceWithRetry {
        invitation: SignedInvitation,
        max_total_ms: u64,
    },
    LeaveNamespace {
        namespace: NamespaceId,
    },
    // Last, so recordings made before it existed still decode.
    AddJoinSeeds {
        seeds: Vec<u64>,
    },
}

/// An input as recorded. Peer ids are the driver's connection numbers.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant mirrors the `Input` of the same name.
pub enum RecordedInput {
    Connected {
        peer: u64,
        node_key: PublicKey,
        binding: Hash32,
    },
    Disconnected {
        peer: u64,
    },
    Received {
        from: u64,
        frame: RecordedFrame,
    },
    Persisted(u64),
    Timer,
    Command(RecordedCommand),
}

/// One output, as far as replay compares it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct OutputSummary {
    /// What it was.
    pub kind: OutputKind,
    /// First 16 bytes of a domain-separated SHA-256 of its content.
    pub hash: [u8; 16],
}

/// The readable part of an [`OutputSummary`].
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
#[allow(missing_docs)] // Named after the `Output` variants.
pub enum OutputKind {
    Transmit { to: u64, len: u64 },
    Persist { number: u64 },
    Connect { member_id: u64 },
    Event { name: String },
}

impl core::fmt::Display for OutputSummary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.kind {
            OutputKind::Transmit { to, len } => write!(f, "Transmit(to {to}, {len} bytes)")?,
            OutputKind::Persist { number } => write!(f, "Persist(#{number})")?,
            OutputKind::Connect { member_id } => write!(f, "Connect(member {member_id})")?,
            OutputKind::Event { name } => write!(f, "Event({name})")?,
        }
        write!(f, " {}", crate::crypto::to_hex(&self.hash[..6]))
    }
}

impl OutputSummary {
    /// The summary of `output`.
    pub fn of(output: &Output) -> OutputSummary {
        let (kind, content) = match output {
            Output::Transmit { to, bytes } => (
                OutputKind::Transmit {
                    to: to.0,
                    len: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                },
                bytes.clone(),
            ),
            Output::Persist(batch) => (
                OutputKind::Persist {
                    number: batch.number,
                },
                wire::encode(batch),
            ),
            Output::Connect {
                member_id,
                node_key,
                addrs,
            } => (
                OutputKind::Connect {
                    member_id: member_id.0,
                },
                wire::encode(&(member_id, node_key, addrs)),
            ),
            // Events are not borsh types; their Debug form is deterministic and never shows a
            // secret (tokens print their hash prefix only).
            Output::Event(event) => (
                OutputKind::Event {
                    name: event_name(event),
                },
                format!("{event:?}").into_bytes(),
            ),
        };
        let kind_bytes = wire::encode(&kind);
        let full = Hash32::of(&[OUTPUT_DOMAIN, &kind_bytes, &content]);
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&full.0[..16]);
        OutputSummary { kind, hash }
    }
}

fn event_name(event: &Event) -> String {
    let debug = format!("{event:?}");
    debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(MAX_EVENT_NAME_BYTES)
        .collect()
}

/// What one call produced: every drained output, then `poll_timeout`.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct OutputsDigest {
    /// One summary per output, in drain order.
    pub outputs: Vec<OutputSummary>,
    /// `poll_timeout` after the drain.
    pub next_timeout: Option<Instant>,
}

impl OutputsDigest {
    /// The digest of `outputs` and `next_timeout`.
    pub fn of(outputs: &[Output], next_timeout: Option<Instant>) -> OutputsDigest {
        OutputsDigest {
            outputs: outputs.iter().map(OutputSummary::of).collect(),
            next_timeout,
        }
    }
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum Record {
    /// Record 0: the node was built.
    Start {
        /// Always 0.
        index: u64,
        /// The `now` it was built with.
        now: Now,
        /// How.
        start: RecordedStart,
        /// What construction queued (drained at once).
        outputs: OutputsDigest,
    },
    /// One `handle` call.
    Handle {
        /// Position in the recording (1, 2, ...).
        index: u64,
        /// Its `now`.
        now: Now,
        /// Its input.
        input: RecordedInput,
        /// What it produced.
        outputs: OutputsDigest,
    },
}

impl Record {
    /// The record's position.
    pub fn index(&self) -> u64 {
        match self {
            Record::Start { index, .. } | Record::Handle { index, .. } => *index,
        }
    }

    /// The recorded outputs.
    pub fn outputs(&self) -> &OutputsDigest {
        match self {
            Record::Start { outputs, .. } | Record::Handle { outputs, .. } => outputs,
        }
    }
}

/// How to build the node that is recorded.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeStart {
    /// [`Node::bootstrap`].
    Bootstrap(Vec<MemberSpec>),
    /// [`Node::new_joiner`].
    Joiner,
    /// [`Node::recover`].
    Recover(Box<DurableState>),
}

/// Options of a [`Recorder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecorderOptions {
    /// Whether the seed goes into the header.
    pub seed: SeedPolicy,
    /// Most encoded records held for [`Recorder::poll_record`]; beyond it records are dropped
    /// (counted in [`Recorder::records_dropped`]; replay reports the gap).
    pub max_pending_records: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            seed: SeedPolicy::default(),
            max_pending_records: DEFAULT_MAX_PENDING_RECORDS,
        }
    }
}

/// Records one node's life from its construction. See the module docs.
///
/// # Example
/// ```
/// use portcullis_core::config::Config;
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::node::{Input, NodeSetup};
/// use portcullis_core::recording::{self, NodeStart, Recorder, RecorderOptions};
/// use portcullis_core::rng::{NodeSeed, SeededRng};
/// use portcullis_core::time::{Instant, Now};
///
/// let setup = NodeSetup {
///     config: Config::default(),
///     seed: NodeSeed::from_u64(7),
///     node_key: SecretKey::generate(&mut SeededRng::from_u64(7)),
///     secrets: None,
/// };
/// let now = Now::new(Instant::ZERO, 1_700_000_000_000);
/// let (mut node, mut recorder, outputs) =
///     Recorder::start_node(setup, now, NodeStart::Joiner, RecorderOptions::default())?;
/// assert!(!outputs.is_empty()); // carry these out, as after any `handle`
/// let outputs = recorder.handle(&mut node, now, Input::Timer);
/// # let _ = outputs;
///
/// // Every file starts with the header; records follow.
/// let mut file = recorder.header_bytes().to_vec();
/// while let Some(record) = recorder.poll_record() {
///     file.extend_from_slice(&record);
/// }
/// let read = recording::read(&file)?;
/// assert_eq!(read.records.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Recorder {
    header_bytes: Vec<u8>,
    next_index: u64,
    pending: VecDeque<Vec<u8>>,
    max_pending_records: usize,
    dropped: u64,
}

impl Recorder {
    /// Builds the node as `start` says and starts recording it. Returns the node, the
    /// recorder, and the outputs construction queued (carry them out).
    pub fn start_node(
        setup: NodeSetup,
        now: Now,
        start: NodeStart,
        options: RecorderOptions,
    ) -> Result<(Node, Recorder, Vec<Output>), NodeError> {
        let header = RecordingHeader {
            crate_version: env!("CARGO_PKG_VERSION").to_owned(),
            node_key: setup.node_key.public(),
            seed: match options.seed {
                SeedPolicy::Included => RecordedSeed::Included(setup.seed.clone()),
                SeedPolicy::Withheld => RecordedSeed::Withheld(seed_fingerprint(&setup.seed)),
            },
            config: setup.config.clone(),
            secrets: SecretsFingerprint::of(setup.secrets.as_ref()),
        };
        let (mut node, recorded) = match start {
            NodeStart::Bootstrap(founders) => {
                let node = Node::bootstrap(setup, now, &founders)?;
                (node, RecordedStart::Bootstrap { founders })
            }
            NodeStart::Joiner => (Node::new_joiner(setup, now)?, RecordedStart::Joiner),
            NodeStart::Recover(durable) => {
                let recorded = redact_durable(&durable);
                (Node::recover(setup, now, *durable)?, recorded)
            }
        };
        let mut recorder = Recorder {
            header_bytes: encode_header(&header),
            next_index: 0,
            pending: VecDeque::new(),
            max_pending_records: options.max_pending_records,
            dropped: 0,
        };
        let outputs = drain(&mut node);
        let digest = OutputsDigest::of(&outputs, node.poll_timeout());
        recorder.push(Record::Start {
            index: 0,
            now,
            start: recorded,
            outputs: digest,
        });
        Ok((node, recorder, outputs))
    }

    /// Records `input`, hands it to `node`, drains every output and returns them in order.
    pub fn handle(&mut self, node: &mut Node, now: Now, input: Input) -> Vec<Output> {
        let recorded = record_input(&input);
        node.handle(now, input);
        let outputs = drain(node);
        let digest = OutputsDigest::of(&outputs, node.poll_timeout());
        let index = self.next_index;
        self.push(Record::Handle {
            index,
            now,
            input: recorded,
            outputs: digest,
        });
        outputs
    }

    /// What every recording file starts with: [`MAGIC`], version, header.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The next framed record to append to the current file.
    pub fn poll_record(&mut self) -> Option<Vec<u8>> {
        self.pending.pop_front()
    }

    /// Records dropped because the driver did not take them in time.
    pub fn records_dropped(&self) -> u64 {
        self.dropped
    }

    fn push(&mut self, record: Record) {
        self.next_index += 1;
        if self.pending.len() >= self.max_pending_records {
            self.dropped += 1;
            return;
        }
        self.pending.push_back(frame_record(&record));
    }
}

fn frame_record(record: &Record) -> Vec<u8> {
    let body = wire::encode(record);
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn drain(node: &mut Node) -> Vec<Output> {
    let mut outputs = Vec::new();
    while let Some(output) = node.poll_output() {
        outputs.push(output);
    }
    outputs
}

fn encode_header(header: &RecordingHeader) -> Vec<u8> {
    let body = wire::encode(header);
    let mut out = Vec::with_capacity(MAGIC.len() + 6 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The hash of a durable state's encoding (what [`RecordedStart::Recover`] checks).
pub fn durable_hash(durable: &DurableState) -> Hash32 {
    Hash32::of(&[DURABLE_DOMAIN, &wire::encode(durable)])
}

fn redact_durable(durable: &DurableState) -> RecordedStart {
    let mut redacted = durable.clone();
    let mut namespace_keys = Vec::new();
    for (id, ns) in &mut redacted.namespaces {
        if let Some(secret) = ns.identity.as_mut() {
            namespace_keys.push((*id, secret.key().public()));
            *secret = NamespaceSecret([0; 32]);
        }
    }
    RecordedStart::Recover {
        durable: Box::new(redacted),
        namespace_keys,
        durable_hash: durable_hash(durable),
    }
}

fn record_input(input: &Input) -> RecordedInput {
    match input {
        Input::Connected {
            peer,
            node_key,
            binding,
        } => RecordedInput::Connected {
            peer: peer.0,
            node_key: *node_key,
            binding: *binding,
        },
        Input::Disconnected { peer } => RecordedInput::Disconnected { peer: peer.0 },
        Input::Received { from, bytes } => RecordedInput::Received {
            from: from.0,
            frame: record_frame(bytes),
        },
        Input::Persisted(n) => RecordedInput::Persisted(*n),
        Input::Timer => RecordedInput::Timer,
        Input::Command(command) => RecordedInput::Command(record_command(command)),
    }
}

fn record_command(command: &LocalCommand) -> RecordedCommand {
    match command {
        LocalCommand::JoinCluster {
            token,
            seeds,
            addrs,
        } => RecordedCommand::JoinCluster {
            token: RedactedToken::of(token),
            seeds: seeds.iter().map(|p| p.0).collect(),
            addrs: addrs.clone(),
        },
        LocalCommand::AddJoinSeeds { seeds } => RecordedCommand::AddJoinSeeds {
            seeds: seeds.iter().map(|p| p.0).collect(),
        },
        LocalCommand::PromoteMember { member_id } => RecordedCommand::PromoteMember {
            member_id: *member_id,
        },
        LocalCommand::RevokeToken {
            hash,
            expires_at_unix_ms,
        } => RecordedCommand::RevokeToken {
            hash: *hash,
            expires_at_unix_ms: *expires_at_unix_ms,
        },
        LocalCommand::CreateNamespace { salt } => RecordedCommand::CreateNamespace { salt: *salt },
        LocalCommand::IssueInvitation {
            namespace,
            expires_at_unix_ms,
            policy,
        } => RecordedCommand::IssueInvitation {
            namespace: *namespace,
            expires_at_unix_ms: *expires_at_unix_ms,
            policy: *policy,
        },
        LocalCommand::JoinNamespace {
            invitation,
            deadline_ms,
        } => RecordedCommand::JoinNamespace {
            invitation: invitation.clone(),
            deadline_ms: *deadline_ms,
        },
        LocalCommand::JoinNamespaceWithRetry {
            invitation,
            max_total_ms,
        } => RecordedCommand::JoinNamespaceWithRetry {
            invitation: invitation.clone(),
            max_total_ms: *max_total_ms,
        },
        LocalCommand::LeaveNamespace { namespace } => RecordedCommand::LeaveNamespace {
            namespace: *namespace,
        },
    }
}

/// Zeroes the token tag of a `JoinRequest` frame, and whatever could hold a token in a frame
/// the node refuses (see [`RecordedFrame::Scrubbed`]); every other frame is kept as received.
/// A `JoinRequest` frame that does not decode: if its first field announces a version-1 token,
/// that token's tag bytes are zeroed. A byte string's content never changes how the fields
/// after it decode, so the node refuses the scrubbed frame exactly as it refused the original.
fn scrub_undecodable_request(bytes: &[u8]) -> Vec<u8> {
    let mut frame = bytes.to_vec();
    let len_at = wire::HEADER_BYTES;
    let announced = frame
        .get(len_at..len_at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if announced == Some(u32::try_from(TOKEN_BYTES).unwrap_or(u32::MAX)) {
        let tag_at = len_at + 4 + TOKEN_BODY_BYTES;
        frame
            .iter_mut()
            .skip(tag_at)
            .take(TOKEN_TAG_BYTES)
            .for_each(|b| *b = 0);
    }
    frame
}

fn record_frame(bytes: &[u8]) -> RecordedFrame {
    let limits = Limits {
        max_frame_bytes: bytes.len(),
    };
    let envelope = match Envelope::parse(bytes, &limits) {
        Ok(envelope) => envelope,
        // Refused on its header (version, kind) or length: the payload is never read.
        Err(_) => {
            let mut frame = bytes.to_vec();
            frame
                .iter_mut()
                .skip(wire::HEADER_BYTES)
                .for_each(|b| *b = 0);
            return RecordedFrame::Scrubbed(frame);
        }
    };
    if envelope.kind != MessageKind::JoinRequest {
        return RecordedFrame::Verbatim(bytes.to_vec());
    }
    let request = match envelope.decode::<JoinRequest>() {
        Ok(request) => request,
        Err(_) => return RecordedFrame::Scrubbed(scrub_undecodable_request(bytes)),
    };
    let token = request.token.as_ref();
    if token.len() != TOKEN_BYTES {
        return RecordedFrame::Verbatim(bytes.to_vec());
    }
    // The token is the request's first field: a length-prefixed byte string right after the
    // envelope header. Should the layout ever change, look for its one contiguous run.
    let first_field_at = wire::HEADER_BYTES + 4;
    let at = if bytes.get(first_field_at..first_field_at + TOKEN_BYTES) == Some(token) {
        first_field_at
    } else {
        match bytes.windows(TOKEN_BYTES).position(|w| w == token) {
            Some(at) => at,
            None => return RecordedFrame::Verbatim(bytes.to_vec()),
        }
    };
    let tag_at = at + TOKEN_BODY_BYTES;
    let mut frame = bytes.to_vec();
    frame[tag_at..tag_at + TOKEN_TAG_BYTES].fill(0);
    RecordedFrame::TokenTagZeroed {
        frame,
        tag_at: u32::try_from(tag_at).unwrap_or(u32::MAX),
        token: TokenHash(Hash32::of(&[token])),
    }
}

// ---- reading ---------------------------------------------------------------------------------

/// Why a recording could not be read. The file (or whoever handed it over) is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a portcullis recording (bad magic)")]
    NotARecording,
    /// Written by a format version this build does not read.
    #[error("recording format version {got}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file's version.
        got: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The file ends inside a header or record.
    #[error("truncated at byte {at_byte}")]
    Truncated {
        /// Where the cut is.
        at_byte: u64,
    },
    /// A length prefix is beyond the limit.
    #[error("a {what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Header or record.
        what: &'static str,
        /// Its length prefix.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A header or record does not decode.
    #[error("corrupt {what} at byte {at_byte}: {reason}")]
    Corrupt {
        /// Header or record.
        what: &'static str,
        /// Where it starts.
        at_byte: u64,
        /// The decoder's complaint.
        reason: String,
    },
    /// Files of two different recordings were given together.
    #[error("file {file} belongs to another recording (its header differs)")]
    HeaderMismatch {
        /// The file's position in the list.
        file: usize,
    },
    /// Records are missing (dropped, or the file holding them was rotated away).
    #[error("records are missing: expected record {expected}, found {found}")]
    Gap {
        /// The index that should come next.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// Record 0 (the node's construction) is not there: the recording starts mid-run.
    #[error("the recording does not start with the node's construction (record 0)")]
    NoStart,
    /// No files were given.
    #[error("no recording files given")]
    Empty,
}

/// A decoded recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    /// The header.
    pub header: RecordingHeader,
    /// Every record, in order.
    pub records: Vec<Record>,
}

impl Recording {
    /// Encodes the whole recording as one file, exactly as a recorder frames it (tools that
    /// trim or edit recordings, and tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = encode_header(&self.header);
        for record in &self.records {
            out.extend_from_slice(&frame_record(record));
        }
        out
    }
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], RecordingError> {
    let end = at.checked_add(n).filter(|e| *e <= bytes.len());
    let Some(end) = end else {
        return Err(RecordingError::Truncated {
            at_byte: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        });
    };
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

fn take_len(
    bytes: &[u8],
    at: &mut usize,
    what: &'static str,
    max: usize,
) -> Result<usize, RecordingError> {
    let raw = take(bytes, at, 4)?;
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(RecordingError::TooLarge {
            what,
            len: u64::try_from(len).unwrap_or(u64::MAX),
            max: u64::try_from(max).unwrap_or(u64::MAX),
        });
    }
    Ok(len)
}

fn decode_at<T: BorshDeserialize>(
    bytes: &[u8],
    what: &'static str,
    at_byte: usize,
) -> Result<T, RecordingError> {
    wire::decode_exact(bytes).map_err(|e| RecordingError::Corrupt {
        what,
        at_byte: u64::try_from(at_byte).unwrap_or(u64::MAX),
        reason: e.to_string(),
    })
}

/// Reads one recording file: the header and its records (their indices need not start at 0
/// in a rotated file; [`read_files`] checks the whole).
pub fn read_file(bytes: &[u8]) -> Result<Recording, RecordingError> {
    let mut at = 0;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(RecordingError::NotARecording);
    }
    at += MAGIC.len();
    let raw = take(bytes, &mut at, 2)?;
    let version = u16::from_le_bytes([raw[0], raw[1]]);
    if version != FORMAT_VERSION {
        return Err(RecordingError::UnsupportedVersion {
            got: version,
            supported: FORMAT_VERSION,
        });
    }
    let len = take_len(bytes, &mut at, "header", MAX_HEADER_BYTES)?;
    let start = at;
    let header = decode_at(take(bytes, &mut at, len)?, "header", start)?;
    let mut records = Vec::new();
    while at < bytes.len() {
        let len = take_len(bytes, &mut at, "record", MAX_RECORD_BYTES)?;
        let start = at;
        records.push(decode_at(take(bytes, &mut at, len)?, "record", start)?);
    }
    Ok(Recording { header, records })
}

/// Reads one whole recording from a single file (see [`read_files`]).
pub fn read(bytes: &[u8]) -> Result<Recording, RecordingError> {
    read_files(&[bytes])
}

/// Reads a recording split over rotated files, oldest first: every header must be the same,
/// record 0 must be the construction, and indices must follow each other without a gap.
pub fn read_files(files: &[&[u8]]) -> Result<Recording, RecordingError> {
    let mut whole: Option<Recording> = None;
    for (i, bytes) in files.iter().enumerate() {
        let file = read_file(bytes)?;
        match whole.as_mut() {
            None => whole = Some(file),
            Some(w) if w.header != file.header => {
                return Err(RecordingError::HeaderMismatch { file: i });
            }
            Some(w) => w.records.extend(file.records),
        }
    }
    let whole = whole.ok_or(RecordingError::Empty)?;
    match whole.records.first() {
        Some(Record::Start { index: 0, .. }) => {}
        _ => return Err(RecordingError::NoStart),
    }
    for (expected, record) in (0u64..).zip(&whole.records) {
        if record.index() != expected {
            return Err(RecordingError::Gap {
                expected,
                found: record.index(),
            });
        }
        if expected > 0 && matches!(record, Record::Start { .. }) {
            return Err(RecordingError::Corrupt {
                what: "record",
                at_byte: 0,
                reason: format!("record {expected} is a second construction"),
            });
        }
    }
    Ok(whole)
}

// ---- rebuilding (replay) -----------------------------------------------------------------------

/// What replay needs that a recording never holds. See the module docs. `Debug` shows the
/// seed's hash only.
#[derive(Default)]
pub struct ReplaySecrets {
    /// The node's secret key.
    pub node_key: Option<SecretKey>,
    /// The cluster key and join secret, for a node that admits.
    pub admission: Option<AdmissionSecrets>,
    /// The join secret alone, to rebuild token tags on a node that does not admit (the
    /// operator issued its token with it). Taken from `admission` when that is set.
    pub join_secret: Option<JoinSecret>,
    /// The seed, when the header withholds it.
    pub seed: Option<NodeSeed>,
    /// Namespace identity keys of a recovered durable state.
    pub namespace_keys: Vec<SecretKey>,
}

impl core::fmt::Debug for ReplaySecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplaySecrets")
            .field("node_key", &self.node_key)
            .field("admission", &self.admission)
            .field("join_secret", &self.join_secret)
            .field("seed", &self.seed.as_ref().map(seed_fingerprint))
            .field("namespace_keys", &self.namespace_keys)
            .finish()
    }
}

impl ReplaySecrets {
    fn join_secret(&self) -> Option<&JoinSecret> {
        self.admission
            .as_ref()
            .map(|a| &a.join_secret)
            .or(self.join_secret.as_ref())
    }
}

/// Why replay could not rebuild the node or an input. The operator is at fault (a missing or
/// wrong secret), or the recording is inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// A secret replay needs was not supplied.
    #[error("replay needs {0}")]
    Missing(&'static str),
    /// A supplied secret is not the one the node ran with.
    #[error("the supplied {0} is not the one the recorded node ran with")]
    WrongSecret(&'static str),
    /// No supplied namespace key has this public key.
    #[error("no namespace key supplied for identity {0:?}")]
    MissingNamespaceKey(PublicKey),
    /// The rebuilt durable state does not hash to the recorded hash.
    #[error("the rebuilt durable state does not match the recorded hash")]
    DurableMismatch,
    /// The recorded node could not be constructed.
    #[error("construction: {0}")]
    Node(#[from] NodeError),
}

impl RecordingHeader {
    /// Rebuilds the node's setup from the header and the supplied secrets, checking each
    /// secret against what the header identifies.
    pub fn setup(&self, secrets: &ReplaySecrets) -> Result<NodeSetup, RebuildError> {
        let node_key = secrets
            .node_key
            .clone()
            .ok_or(RebuildError::Missing("the node key"))?;
        if node_key.public() != self.node_key {
            return Err(RebuildError::WrongSecret("node key"));
        }
        let seed = match &self.seed {
            RecordedSeed::Included(seed) => seed.clone(),
            RecordedSeed::Withheld(hash) => {
                let seed = secrets
                    .seed
                    .clone()
                    .ok_or(RebuildError::Missing("the seed"))?;
                if seed_fingerprint(&seed) != *hash {
                    return Err(RebuildError::WrongSecret("seed"));
                }
                seed
            }
        };
        let admission = match (&self.secrets.cluster_key, &secrets.admission) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(RebuildError::Missing(
                    "the cluster key and join secret (the node admits)",
                ));
            }
            (Some(key), Some(given)) => {
                if given.cluster_key.public() != *key {
                    return Err(RebuildError::WrongSecret("cluster key"));
                }
                if Some(join_secret_fingerprint(&given.join_secret)) != self.secrets.join_secret {
                    return Err(RebuildError::WrongSecret("join secret"));
                }
                Some(AdmissionSecrets {
                    cluster_key: given.cluster_key.clone(),
                    join_secret: given.join_secret.clone(),
                })
            }
        };
        Ok(NodeSetup {
            config: self.config.clone(),
            seed,
            node_key,
            secrets: admission,
        })
    }
}

impl RecordedStart {
    /// Builds the node as recorded (secrets from `secrets`) and drains what construction
    /// queued.
    pub fn rebuild(
        &self,
        setup: NodeSetup,
        now: Now,
        secrets: &ReplaySecrets,
    ) -> Result<(Node, Vec<Output>), RebuildError> {
        let mut node = match self {
            RecordedStart::Bootstrap { founders } => Node::bootstrap(setup, now, founders)?,
            RecordedStart::Joiner => Node::new_joiner(setup, now)?,
            RecordedStart::Recover {
                durable,
                namespace_keys,
                durable_hash: expected,
            } => {
                let mut durable = (**durable).clone();
                for (id, public) in namespace_keys {
                    let key = secrets
                        .namespace_keys
                        .iter()
                        .find(|k| k.public() == *public)
                        .ok_or(RebuildError::MissingNamespaceKey(*public))?;
                    if let Some(ns) = durable.namespaces.get_mut(id) {
                        ns.identity = Some(NamespaceSecret::of(key));
                    }
                }
                if durable_hash(&durable) != *expected {
                    return Err(RebuildError::DurableMismatch);
                }
                Node::recover(setup, now, durable)?
            }
        };
        let outputs = drain(&mut node);
        Ok((node, outputs))
    }
}

/// Something replay had to approximate while rebuilding an input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildNote {
    /// The join secret does not reproduce this token's tag (a forgery or another cluster's
    /// token): it was replayed with a zero tag, so outputs carrying its hash may differ.
    TokenNotRebuilt(TokenHash),
}

impl core::fmt::Display for RebuildNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RebuildNote::TokenNotRebuilt(hash) => write!(
                f,
                "token {} was not made with the supplied join secret; replayed with a zero tag",
                hash.0.short()
            ),
        }
    }
}

/// Rebuilds a token's bytes from its body: the tag is recomputed with `secret`.
fn rebuild_token_bytes(
    body: &[u8; TOKEN_BODY_BYTES],
    hash: TokenHash,
    secret: Option<&JoinSecret>,
    notes: &mut Vec<RebuildNote>,
) -> Result<Vec<u8>, RebuildError> {
    let secret = secret.ok_or(RebuildError::Missing(
        "the join secret (the recording holds tokens without their tags)",
    ))?;
    let mut bytes = vec![0u8; TOKEN_BYTES];
    bytes[..TOKEN_BODY_BYTES].copy_from_slice(body);
    // A body that does not parse was refused before any MAC check: its tag never mattered.
    if let Ok(unsigned) = JoinToken::from_bytes(&bytes) {
        let b = unsigned.body();
        let signed = JoinToken::issue(
            secret,
            b.cluster_pin,
            b.token_id,
            b.expires_at_unix_ms,
            b.role,
        );
        if signed.hash() == hash {
            return Ok(signed.expose_bytes().to_vec());
        }
    }
    notes.push(RebuildNote::TokenNotRebuilt(hash));
    Ok(bytes)
}

impl RecordedInput {
    /// Rebuilds the input the node was given (tokens re-signed with the supplied join
    /// secret), with notes on anything approximated.
    pub fn rebuild(
        &self,
        secrets: &ReplaySecrets,
    ) -> Result<(Input, Vec<RebuildNote>), RebuildError> {
        let mut notes = Vec::new();
        let input = match self {
            RecordedInput::Connected {
                peer,
                node_key,
                binding,
            } => Input::Connected {
                peer: PeerId(*peer),
                node_key: *node_key,
                binding: *binding,
            },
            RecordedInput::Disconnected { peer } => Input::Disconnected {
                peer: PeerId(*peer),
            },
            RecordedInput::Received { from, frame } => Input::Received {
                from: PeerId(*from),
                bytes: rebuild_frame(frame, secrets, &mut notes)?,
            },
            RecordedInput::Persisted(n) => Input::Persisted(*n),
            RecordedInput::Timer => Input::Timer,
            RecordedInput::Command(command) => {
                Input::Command(rebuild_command(command, secrets, &mut notes)?)
            }
        };
        Ok((input, notes))
    }
}

fn rebuild_frame(
    frame: &RecordedFrame,
    secrets: &ReplaySecrets,
    notes: &mut Vec<RebuildNote>,
) -> Result<Vec<u8>, RebuildError> {
    match frame {
        RecordedFrame::Verbatim(bytes) | RecordedFrame::Scrubbed(bytes) => Ok(bytes.clone()),
        RecordedFrame::TokenTagZeroed {
            frame,
            tag_at,
            token,
        } => {
            let tag_at = usize::try_from(*tag_at).unwrap_or(usize::MAX);
            let body_at = tag_at.checked_sub(TOKEN_BODY_BYTES);
            let end = tag_at.checked_add(TOKEN_TAG_BYTES);
            let (Some(body_at), Some(end)) = (body_at, end) else {
                return Ok(frame.clone());
            };
            let Some(body) = frame
                .get(body_at..tag_at)
                .and_then(|b| <[u8; TOKEN_BODY_BYTES]>::try_from(b).ok())
            else {
                return Ok(frame.clone());
            };
            if end > frame.len() {
                return Ok(frame.clone());
            }
            let token = rebuild_token_bytes(&body, *token, secrets.join_secret(), notes)?;
            let mut bytes = frame.clone();
            bytes[body_at..end].copy_from_slice(&token);
            Ok(bytes)
        }
    }
}

fn rebuild_command(
    command: &RecordedCommand,
    secrets: &ReplaySecrets,
    notes: &mut Vec<RebuildNote>,
) -> Result<LocalCommand, RebuildError> {
    Ok(match command {
        RecordedCommand::JoinCluster {
            token,
            seeds,
            addrs,
        } => {
            let bytes = rebuild_token_bytes(&token.body, token.hash, secrets.join_secret(), notes)?;
            // The body was taken from a parsed token, so it parses again; if the recording was
            // edited so it does not, the edit is what replay reports.
            let token = JoinToken::from_bytes(&bytes).map_err(|_| {
                RebuildError::WrongSecret("token body in a JoinCluster command (edited?)")
            })?;
            LocalCommand::JoinCluster {
                token,
                seeds: seeds.iter().map(|p| PeerId(*p)).collect(),
                addrs: addrs.clone(),
            }
        }
        RecordedCommand::AddJoinSeeds { seeds } => LocalCommand::AddJoinSeeds {
            seeds: seeds.iter().map(|p| PeerId(*p)).collect(),
        },
        RecordedCommand::PromoteMember { member_id } => LocalCommand::PromoteMember {
            member_id: *member_id,
        },
        RecordedCommand::RevokeToken {
            hash,
            expires_at_unix_ms,
        } => LocalCommand::RevokeToken {
            hash: *hash,
            expires_at_unix_ms: *expires_at_unix_ms,
        },
        RecordedCommand::CreateNamespace { salt } => LocalCommand::CreateNamespace { salt: *salt },
        RecordedCommand::IssueInvitation {
            namespace,
            expires_at_unix_ms,
            policy,
        } => LocalCommand::IssueInvitation {
            namespace: *namespace,
            expires_at_unix_ms: *expires_at_unix_ms,
            policy: *policy,
        },
        RecordedCommand::JoinNamespace {
            invitation,
            deadline_ms,
        } => LocalCommand::JoinNamespace {
            invitation: invitation.clone(),
            deadline_ms: *deadline_ms,
        },
        RecordedCommand::JoinNamespaceWithRetry {
            invitation,
            max_total_ms,
        } => LocalCommand::JoinNamespaceWithRetry {
            invitation: invitation.clone(),
            max_total_ms: *max_total_ms,
        },
        RecordedCommand::LeaveNamespace { namespace } => LocalCommand::LeaveNamespace {
            namespace: *namespace,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Domain;
    use crate::messages::{PeerMessage, join_proof_message};
    use crate::rng::SeededRng;
    use crate::token::{ClusterPin, Role};
    use crate::wire::BoundedBytes;

    fn token(secret: &JoinSecret, rng: &mut SeededRng) -> JoinToken {
        let pin = ClusterPin(Hash32([4; 32]));
        JoinToken::issue_random(secret, pin, rng, 1_700_000_600_000, Role::Member)
    }

    fn join_request(token: &JoinToken, rng: &mut SeededRng) -> Vec<u8> {
        let key = SecretKey::generate(rng);
        let binding = Hash32([9; 32]);
        PeerMessage::JoinRequest(JoinRequest {
            token: BoundedBytes::try_from_vec(token.expose_bytes().to_vec())
                .expect("invariant: a token fits its bound"),
            node_key: key.public(),
            addrs: Addrs::new(),
            proof: key.sign(
                Domain::JoinProof,
                &join_proof_message(&token.hash(), &binding),
            ),
        })
        .encode()
    }

    fn secrets_with(join_secret: JoinSecret) -> ReplaySecrets {
        ReplaySecrets {
            join_secret: Some(join_secret),
            ..ReplaySecrets::default()
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_join_request_frame_loses_its_tag_and_replay_restores_it_exactly() {
        let mut rng = SeededRng::from_u64(1);
        let secret = JoinSecret::generate(&mut rng);
        let t = token(&secret, &mut rng);
        let frame = join_request(&t, &mut rng);
        let recorded = record_frame(&frame);
        let RecordedFrame::TokenTagZeroed {
            frame: stored,
            token,
            ..
        } = &recorded
        else {
            panic!("a JoinRequest is redacted: {recorded:?}");
        };
        assert_eq!(*token, t.hash());
        let encoded = wire::encode(&recorded);
        assert!(!contains(&encoded, &t.expose_bytes()[TOKEN_BODY_BYTES..]));
        assert_eq!(stored.len(), frame.len());

        let input = RecordedInput::Received {
            from: 3,
            frame: recorded,
        };
        let (rebuilt, notes) = input.rebuild(&secrets_with(secret)).expect("rebuild");
        assert!(notes.is_empty());
        let Input::Received { from, bytes } = rebuilt else {
            panic!("a frame rebuilds as a frame");
        };
        assert_eq!((from, bytes), (PeerId(3), frame));
    }

    #[test]
    fn a_token_the_join_secret_did_not_make_is_noted_and_replayed_with_a_zero_tag() {
        let mut rng = SeededRng::from_u64(2);
        let ours = JoinSecret::generate(&mut rng);
        let forger = JoinSecret::generate(&mut rng);
        let forged = token(&forger, &mut rng);
        let frame = join_request(&forged, &mut rng);
        let input = RecordedInput::Received {
            from: 1,
            frame: record_frame(&frame),
        };
        let (rebuilt, notes) = input.rebuild(&secrets_with(ours)).expect("rebuild");
        assert_eq!(notes, vec![RebuildNote::TokenNotRebuilt(forged.hash())]);
        let Input::Received { bytes, .. } = rebuilt else {
            panic!("a frame rebuilds as a frame");
        };
        assert_ne!(bytes, frame);
        assert!(contains(&bytes, &[0; TOKEN_TAG_BYTES]));
        // Without any join secret, replay says what it needs.
        assert!(matches!(
            input.rebuild(&ReplaySecrets::default()),
            Err(RebuildError::Missing(_))
        ));
    }

    #[test]
    fn seeds_added_to_a_join_round_trip() {
        let command = Input::Command(LocalCommand::AddJoinSeeds {
            seeds: vec![PeerId(4), PeerId(1)],
        });
        let recorded = record_input(&command);
        let decoded: RecordedInput = wire::decode_exact(&wire::encode(&recorded)).expect("decodes");
        let (rebuilt, notes) = decoded.rebuild(&ReplaySecrets::default()).expect("rebuild");
        assert!(notes.is_empty());
        assert_eq!(format!("{rebuilt:?}"), format!("{command:?}"));
    }

    #[test]
    fn a_join_cluster_command_keeps_the_token_body_and_hash_only() {
        let mut rng = SeededRng::from_u64(3);
        let secret = JoinSecret::generate(&mut rng);
        let t = token(&secret, &mut rng);
        let recorded = record_input(&Input::Command(LocalCommand::JoinCluster {
            token: t.clone(),
            seeds: vec![PeerId(0), PeerId(2)],
            addrs: Addrs::new(),
        }));
        let encoded = wire::encode(&recorded);
        assert!(!contains(&encoded, &t.expose_bytes()[TOKEN_BODY_BYTES..]));
        assert!(contains(&encoded, &t.hash().0.0));
        let (rebuilt, notes) = recorded.rebuild(&secrets_with(secret)).expect("rebuild");
        assert!(notes.is_empty());
        let Input::Command(LocalCommand::JoinCluster { token, seeds, .. }) = rebuilt else {
            panic!("a command rebuilds as the same command");
        };
        assert_eq!(token, t);
        assert_eq!(seeds, vec![PeerId(0), PeerId(2)]);
    }

    #[test]
    fn frames_without_a_token_are_kept_as_received() {
        let frame = crate::wire::encode_frame(
            &crate::ledger::LogEntry::new(
                crate::ledger::ProposalId {
                    node: crate::ledger::NodeId(1),
                    seq: 1,
                },
                1_000,
                vec![],
            )
            .expect("an empty entry is valid"),
        );
        assert_eq!(record_frame(&frame), RecordedFrame::Verbatim(frame.clone()));
    }

    #[test]
    fn undecodable_frames_lose_any_token_tag_and_fail_the_same_way() {
        let mut rng = SeededRng::from_u64(6);
        let secret = JoinSecret::generate(&mut rng);
        let t = token(&secret, &mut rng);
        let tag = t.expose_bytes()[TOKEN_BODY_BYTES..].to_vec();
        let good = join_request(&t, &mut rng);
        let mut trailing = good.clone();
        trailing.push(7);
        let mut unknown_kind = good.clone();
        unknown_kind[2..4].copy_from_slice(&999u16.to_le_bytes());
        let mut future_version = good.clone();
        future_version[0..2].copy_from_slice(&999u16.to_le_bytes());
        let truncated = good[..good.len() - 5].to_vec();
        let limits = Limits::default();
        for (name, frame) in [
            ("trailing byte", trailing),
            ("unknown kind", unknown_kind),
            ("future version", future_version),
            ("truncated", truncated),
        ] {
            let recorded = record_frame(&frame);
            let RecordedFrame::Scrubbed(stored) = &recorded else {
                panic!("{name}: scrubbed, got {recorded:?}");
            };
            assert!(!contains(stored, &tag), "{name}: the tag is gone");
            let original = PeerMessage::decode(&frame, &limits).expect_err("refused");
            let replayed = PeerMessage::decode(stored, &limits).expect_err("refused");
            assert_eq!(original, replayed, "{name}: refused the same way");
        }
    }

    /// A joiner's setup with seed and node key drawn from `n`.
    fn joiner_setup(n: u64) -> NodeSetup {
        NodeSetup {
            config: Config::default(),
            seed: NodeSeed::from_u64(n),
            node_key: SecretKey::generate(&mut SeededRng::from_u64(n)),
            secrets: None,
        }
    }

    #[test]
    fn records_the_driver_does_not_take_are_dropped_counted_and_show_as_a_gap() {
        let setup = joiner_setup(5);
        let now = Now::new(Instant::ZERO, 1_700_000_000_000);
        let options = RecorderOptions {
            max_pending_records: 2,
            ..RecorderOptions::default()
        };
        let (mut node, mut recorder, _) =
            Recorder::start_node(setup, now, NodeStart::Joiner, options).expect("start");
        for _ in 0..3 {
            let _ = recorder.handle(&mut node, now, Input::Timer);
        }
        assert_eq!(recorder.records_dropped(), 2);
        let mut file = recorder.header_bytes().to_vec();
        while let Some(r) = recorder.poll_record() {
            file.extend_from_slice(&r);
        }
        let _ = recorder.handle(&mut node, now, Input::Timer);
        while let Some(r) = recorder.poll_record() {
            file.extend_from_slice(&r);
        }
        assert_eq!(
            read(&file),
            Err(RecordingError::Gap {
                expected: 2,
                found: 4
            })
        );
    }

    #[test]
    fn a_withheld_seed_must_be_supplied_and_must_match() {
        let mut rng = SeededRng::from_u64(4);
        let node_key = SecretKey::generate(&mut rng);
        let header = RecordingHeader {
            crate_version: "0".into(),
            node_key: node_key.public(),
            seed: RecordedSeed::Withheld(seed_fingerprint(&NodeSeed::from_bytes([42; 32]))),
            config: Config::default(),
            secrets: SecretsFingerprint::default(),
        };
        let mut secrets = ReplaySecrets {
            node_key: Some(node_key),
            ..ReplaySecrets::default()
        };
        assert!(matches!(
            header.setup(&secrets),
            Err(RebuildError::Missing("the seed"))
        ));
        // Only the last byte differs: all 32 count.
        let mut wrong = [42; 32];
        wrong[31] = 41;
        secrets.seed = Some(NodeSeed::from_bytes(wrong));
        assert!(matches!(
            header.setup(&secrets),
            Err(RebuildError::WrongSecret("seed"))
        ));
        secrets.seed = Some(NodeSeed::from_bytes([42; 32]));
        assert_eq!(
            header.setup(&secrets).expect("setup").seed,
            NodeSeed::from_bytes([42; 32])
        );
        // `Debug` of the secrets shows the seed's fingerprint, not the seed.
        let shown = format!("{secrets:?}");
        assert!(!shown.contains(&"2a".repeat(4)), "{shown}");
        assert!(!shown.contains("42, 42"), "{shown}");
    }

    #[test]
    fn a_version_1_recording_is_refused_by_version() {
        let setup = joiner_setup(8);
        let now = Now::new(Instant::ZERO, 1_700_000_000_000);
        let (_, mut recorder, _) =
            Recorder::start_node(setup, now, NodeStart::Joiner, RecorderOptions::default())
                .expect("start");
        let mut file = recorder.header_bytes().to_vec();
        while let Some(r) = recorder.poll_record() {
            file.extend_from_slice(&r);
        }
        assert!(read(&file).is_ok());
        // Version 1 held a u64 seed: its header would not decode as this one.
        file[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            read(&file),
            Err(RecordingError::UnsupportedVersion {
                got: 1,
                supported: 2
            })
        );
    }
}
