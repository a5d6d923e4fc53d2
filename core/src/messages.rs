//! Every message nodes exchange, and their framing.
//!
//! One enum, [`PeerMessage`], one envelope kind per variant. Decoding is bounded and typed (see
//! [`crate::wire`]); a frame that does not decode is dropped and counted, never a panic.
//!
//! ```text
//!   joiner                         listener (admitting member)              leader
//!     │── ClusterInfoRequest ──────▶│
//!     │◀─ ClusterInfo{key, cred} ───│   joiner checks pin + credential
//!     │── JoinRequest{token,key,proof}▶│ MAC, expiry, pin, proof: before any Raft round trip
//!     │                             │── ForwardProposal{Register+BeginInFlight} ─▶│ (or propose)
//!     │                             │◀──────────── Raft replication ─────────────│
//!     │                             │── ForwardProposal{Consume} ────────────────▶│
//!     │◀─ JoinAccepted{member, credential} / JoinRejected{reason, retry_after} / Redirect
//! ```

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{PublicKey, Signature};
use crate::identity::Credential;
use crate::ledger::{Addrs, LogEntry, MemberId};
use crate::replication::raft_wire::RaftMessageWire;
use crate::token::TOKEN_BYTES;
use crate::wire::{
    self, BoundedBytes, BoundedVec, DecodeError, Envelope, Limits, MessageKind, WireMessage,
};

/// Most members listed in one message.
pub const MAX_LISTED_MEMBERS: usize = 1_024;

/// A member's public identity and addresses.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct MemberInfo {
    /// Its member (and Raft) id.
    pub member_id: MemberId,
    /// Its node key.
    pub node_key: PublicKey,
    /// Where to reach it.
    pub addrs: Addrs,
}

/// A joiner asks a seed who the cluster is.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ClusterInfoRequest {
    /// Echoed back, to match replies to requests.
    pub nonce: u64,
}

/// A member shows the cluster key and its own credential.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ClusterInfo {
    /// The request's nonce.
    pub nonce: u64,
    /// The cluster public key (the joiner checks it hashes to its token's pin).
    pub cluster_key: PublicKey,
    /// The member's credential for the node key the transport authenticated.
    pub credential: Credential,
}

/// The bytes a join proof signs: the token hash and the connection's binding.
pub fn join_proof_message(
    token_hash: &crate::token::TokenHash,
    binding: &crate::crypto::Hash32,
) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&token_hash.0.0);
    out[32..].copy_from_slice(&binding.0);
    out
}

/// A joiner presents a token.
#[derive(Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct JoinRequest {
    /// The token's bytes (secret: never logged).
    pub token: BoundedBytes<TOKEN_BYTES>,
    /// The joiner's node key.
    pub node_key: PublicKey,
    /// Where the joiner can be reached once admitted.
    pub addrs: Addrs,
    /// Signature by `node_key` over [`join_proof_message`] (domain `portcullis.join-proof.v1`).
    pub proof: Signature,
}

impl core::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("node_key", &self.node_key)
            .finish_non_exhaustive()
    }
}

/// Admission granted.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct JoinAccepted {
    /// The new member's id.
    pub member_id: MemberId,
    /// Its credential.
    pub credential: Credential,
    /// The cluster key (verified against the token's pin).
    pub cluster_key: PublicKey,
    /// The members at admission time, so the new node can reach the group.
    pub members: BoundedVec<MemberInfo, MAX_LISTED_MEMBERS>,
}

/// Why an admission was refused. Each has its own CLI exit code and metric label.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
#[non_exhaustive]
pub enum RejectReason {
    /// The token expired.
    Expired,
    /// The token admitted another node.
    AlreadyConsumed,
    /// Another presenter holds the token right now; try again later.
    Conflict,
    /// The operator revoked the token.
    Revoked,
    /// The token's MAC does not verify (forged or corrupted).
    BadMac,
    /// The token is for another cluster.
    WrongCluster,
    /// The token does not parse.
    Malformed,
    /// The token's format version is not supported.
    UnsupportedVersion,
    /// The proof of possession of the node key does not verify.
    BadProof,
    /// This node does not admit (no join secret).
    NotAdmitting,
    /// Too many admissions in flight; try again later.
    Overloaded,
    /// The node key is already a member (admitted with another token).
    AlreadyMember,
    /// The metadata group could not decide in time (no quorum, leader change); try again.
    Unavailable,
    /// The membership registry is at its configured size; an operator must act.
    ClusterFull,
}

impl RejectReason {
    /// Whether the joiner should try again (elsewhere, later).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RejectReason::Conflict
                | RejectReason::NotAdmitting
                | RejectReason::Overloaded
                | RejectReason::Unavailable
        )
    }

    /// A stable lowercase name, for metrics labels and CLI messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Expired => "expired",
            RejectReason::AlreadyConsumed => "already_consumed",
            RejectReason::Conflict => "conflict",
            RejectReason::Revoked => "revoked",
            RejectReason::BadMac => "bad_mac",
            RejectReason::WrongCluster => "wrong_cluster",
            RejectReason::Malformed => "malformed",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::BadProof => "bad_proof",
            RejectReason::NotAdmitting => "not_admitting",
            RejectReason::Overloaded => "overloaded",
            RejectReason::AlreadyMember => "already_member",
            RejectReason::Unavailable => "unavailable",
            RejectReason::ClusterFull => "cluster_full",
        }
    }
}

/// Admission refused.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct JoinRejected {
    /// Why.
    pub reason: RejectReason,
    /// For [`RejectReason::Conflict`]: how long until the lease that holds the token runs out,
    /// by the listener's clock and at most the lease length. `None` for every other reason.
    ///
    /// A hint that only ever shortens a joiner's wait: the joiner retries no later than this
    /// (plus its jitter), but never waits longer for it than its own backoff. Why: a joiner
    /// refused while a crashed listener's lease holds the token would otherwise sleep out a
    /// backoff of up to `join_retry_max_ms` after the lease has already run out.
    pub retry_after_ms: Option<u64>,
}

impl JoinRejected {
    /// A refusal for `reason` with no retry hint.
    pub fn new(reason: RejectReason) -> JoinRejected {
        JoinRejected {
            reason,
            retry_after_ms: None,
        }
    }
}

/// This node does not admit; these members might.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Redirect {
    /// Candidate admitting members.
    pub admitting: BoundedVec<MemberInfo, MAX_LISTED_MEMBERS>,
}

/// Most entries in one forwarded batch.
pub const MAX_FORWARDED_ENTRIES: usize = 256;

/// A follower's proposals, forwarded to the leader (never as raft-rs `MsgPropose`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ForwardProposal {
    /// The entries to propose, each with its proposal id (which MUST name the sender).
    pub entries: BoundedVec<LogEntry, MAX_FORWARDED_ENTRIES>,
    /// The sender's admitter proof ([`crate::identity::AdmissionSecrets::admitter_proof`]):
    /// only admitting nodes may have the leader propose for them.
    pub admitter_proof: Signature,
}

macro_rules! wire_kind {
    ($($ty:ty => $kind:ident),* $(,)?) => {
        $(impl WireMessage for $ty { const KIND: MessageKind = MessageKind::$kind; })*
    };
}

wire_kind! {
    ClusterInfoRequest => ClusterInfoRequest,
    ClusterInfo => ClusterInfo,
    JoinRequest => JoinRequest,
    JoinAccepted => JoinAccepted,
    JoinRejected => JoinRejected,
    Redirect => Redirect,
    ForwardProposal => ForwardProposal,
}

/// Any message between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerMessage {
    /// Raft between replicas.
    Raft(RaftMessageWire),
    /// Proposal forwarding.
    Forward(ForwardProposal),
    /// Joiner → seed.
    ClusterInfoRequest(ClusterInfoRequest),
    /// Seed → joiner.
    ClusterInfo(ClusterInfo),
    /// Joiner → listener.
    JoinRequest(JoinRequest),
    /// Listener → joiner.
    JoinAccepted(JoinAccepted),
    /// Listener → joiner.
    JoinRejected(JoinRejected),
    /// Non-admitting member → joiner.
    Redirect(Redirect),
    /// A node's topic subscriptions.
    Subscriptions(crate::pubsub::Subscriptions),
    /// A message published to a topic.
    Publish(crate::pubsub::Publish),
    /// A namespace-protocol message (kinds 30..=35): sent directly (probe answers, backfill)
    /// or carried inside a [`crate::pubsub::Publish`] payload as a whole frame.
    Namespace(Box<crate::namespace::NamespaceMessage>),
}

impl PeerMessage {
    /// Encodes as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PeerMessage::Raft(m) => wire::encode_frame(m),
            PeerMessage::Forward(m) => wire::encode_frame(m),
            PeerMessage::ClusterInfoRequest(m) => wire::encode_frame(m),
            PeerMessage::ClusterInfo(m) => wire::encode_frame(m),
            PeerMessage::JoinRequest(m) => wire::encode_frame(m),
            PeerMessage::JoinAccepted(m) => wire::encode_frame(m),
            PeerMessage::JoinRejected(m) => wire::encode_frame(m),
            PeerMessage::Redirect(m) => wire::encode_frame(m),
            PeerMessage::Subscriptions(m) => wire::encode_frame(m),
            PeerMessage::Publish(m) => wire::encode_frame(m),
            PeerMessage::Namespace(m) => {
                let payload = m.encode_payload();
                let mut out = Vec::with_capacity(wire::HEADER_BYTES + payload.len());
                out.extend_from_slice(&wire::PROTOCOL_VERSION.to_le_bytes());
                out.extend_from_slice(&m.kind().to_le_bytes());
                out.extend_from_slice(&payload);
                out
            }
        }
    }

    /// Decodes one frame; typed errors, never panics.
    pub fn decode(frame: &[u8], limits: &Limits) -> Result<PeerMessage, DecodeError> {
        let env = Envelope::parse(frame, limits)?;
        Ok(match env.kind {
            MessageKind::Raft => PeerMessage::Raft(env.decode()?),
            MessageKind::ForwardProposal => PeerMessage::Forward(env.decode()?),
            MessageKind::ClusterInfoRequest => PeerMessage::ClusterInfoRequest(env.decode()?),
            MessageKind::ClusterInfo => PeerMessage::ClusterInfo(env.decode()?),
            MessageKind::JoinRequest => PeerMessage::JoinRequest(env.decode()?),
            MessageKind::JoinAccepted => PeerMessage::JoinAccepted(env.decode()?),
            MessageKind::JoinRejected => PeerMessage::JoinRejected(env.decode()?),
            MessageKind::Redirect => PeerMessage::Redirect(env.decode()?),
            MessageKind::Subscriptions => PeerMessage::Subscriptions(env.decode()?),
            MessageKind::Publish => PeerMessage::Publish(env.decode()?),
            MessageKind::ReadinessProbe
            | MessageKind::Beacon
            | MessageKind::BackfillRequest
            | MessageKind::BackfillBatch
            | MessageKind::NamespaceOp
            | MessageKind::NamespaceAck => PeerMessage::Namespace(Box::new(
                crate::namespace::NamespaceMessage::decode_payload(env.kind as u16, env.payload)?,
            )),
            // Kinds that are valid frames but never travel between peers.
            MessageKind::LedgerEntry | MessageKind::LedgerSnapshot => {
                return Err(DecodeError::UnknownKind(env.kind as u16));
            }
        })
    }
}
