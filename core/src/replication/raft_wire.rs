//! Raft messages on the wire as our own borsh structs.
//!
//! raft-rs speaks `eraftpb` (protobuf 2.28, advisory RUSTSEC-2024-0437: a crafted input can
//! crash the parser). So protobuf never parses a byte from the network:
//!
//! ```text
//!   local eraftpb::Message ──to_wire()──▶ RaftMessageWire ──borsh──▶ network
//!   network ──bounded borsh decode──▶ RaftMessageWire ──from_wire()──▶ eraftpb::Message ──▶ step
//! ```
//!
//! Conf-change entries are the one place raft-rs keeps protobuf bytes inside a payload. On the
//! wire they travel as a structured [`ConfChangeWire`]; `from_wire` *serializes* it to protobuf
//! locally, so the bytes raft-rs and our apply path later parse were written by this process.
//! Message types that only make sense locally (`MsgHup`, `MsgBeat`, `MsgPropose`, ...) are refused
//! from the network: followers forward proposals with our own message instead. So are the types
//! of features we never use (leader transfer, read index), and messages no correct replica
//! sends, on which raft-rs would panic (see [`from_wire`]).

// The protobuf-generated types carry hidden fields (`unknown_fields`, `cached_size`), so they
// are built from `default()` field by field.
#![allow(clippy::field_reassign_with_default)]

use borsh::{BorshDeserialize, BorshSerialize};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
// `write_to_bytes`/`parse_from_bytes`: only ever on bytes this process wrote (see module docs).
use protobuf::Message as ProtobufMessage;

use raft::{Changer, ProgressTracker};

use crate::wire::{BoundedBytes, BoundedVec, MessageKind, WireMessage};

/// Most entries in one append message (raft-rs batches up to `max_size_per_msg` bytes).
pub const MAX_ENTRIES_PER_MESSAGE: usize = 4_096;
/// Most bytes of one entry's data or context, or a snapshot's data.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// Most ids in one conf-state list.
pub const MAX_CONF_IDS: usize = 1_024;
/// Most single changes in one conf change.
pub const MAX_CONF_CHANGES: usize = 64;
/// Highest term or log index accepted from the network. raft-rs and our log compute `index + 1`
/// and `term + 1` unchecked; no real cluster comes near 2^62 of either.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

/// Opaque bytes with a bound (entry data, contexts, snapshot data).
pub type Payload = BoundedBytes<MAX_PAYLOAD_BYTES>;

/// A Raft conf state.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ConfStateWire {
    /// Voters.
    pub voters: BoundedVec<u64, MAX_CONF_IDS>,
    /// Learners.
    pub learners: BoundedVec<u64, MAX_CONF_IDS>,
    /// Voters of the outgoing config (joint consensus).
    pub voters_outgoing: BoundedVec<u64, MAX_CONF_IDS>,
    /// Learners of the next config.
    pub learners_next: BoundedVec<u64, MAX_CONF_IDS>,
    /// Leave the joint config automatically.
    pub auto_leave: bool,
}

/// A Raft conf change (v2).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ConfChangeWire {
    /// `ConfChangeTransition` as a number (validated).
    pub transition: u8,
    /// (change type, node id) pairs; change type is `ConfChangeType` as a number (validated).
    pub changes: BoundedVec<(u8, u64), MAX_CONF_CHANGES>,
    /// Opaque context.
    pub context: Payload,
}

/// The payload of an entry, by entry type.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum EntryPayload {
    /// A normal entry (our ledger entries, or raft-rs's empty entries).
    Normal(Payload),
    /// A v2 conf change, structured.
    ConfChangeV2(ConfChangeWire),
}

/// A Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct EntryWire {
    /// Term of the entry.
    pub term: u64,
    /// Log index.
    pub index: u64,
    /// The payload.
    pub payload: EntryPayload,
    /// Opaque context.
    pub context: Payload,
}

/// A Raft snapshot.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SnapshotWire {
    /// Last index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The conf state at `index`.
    pub conf_state: ConfStateWire,
    /// Our ledger snapshot bytes.
    pub data: Payload,
}

/// A Raft message between replicas.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct RaftMessageWire {
    /// `MessageType` as a number (validated against the network-allowed set).
    pub msg_type: u8,
    /// Recipient id.
    pub to: u64,
    /// Sender id.
    pub from: u64,
    /// Sender's term.
    pub term: u64,
    /// Term of the entry before `entries`.
    pub log_term: u64,
    /// Index of the entry before `entries`.
    pub index: u64,
    /// Entries.
    pub entries: BoundedVec<EntryWire, MAX_ENTRIES_PER_MESSAGE>,
    /// Leader's commit index.
    pub commit: u64,
    /// Term of the commit index.
    pub commit_term: u64,
    /// Snapshot, for `MsgSnapshot`.
    pub snapshot: Option<SnapshotWire>,
    /// Requested snapshot index.
    pub request_snapshot: u64,
    /// Rejection flag.
    pub reject: bool,
    /// Rejection hint.
    pub reject_hint: u64,
    /// Opaque context.
    pub context: Payload,
    /// Election priority.
    pub priority: i64,
}

impl WireMessage for RaftMessageWire {
    const KIND: MessageKind = MessageKind::Raft;
}

/// Why a Raft message was refused at the boundary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RaftWireError {
    /// A message type number raft-rs does not have.
    #[error("unknown raft message type {0}")]
    UnknownType(u8),
    /// A message type that must never come from the network.
    #[error("raft message type {0:?} is not accepted from the network")]
    LocalOnly(MessageType),
    /// An unknown conf change transition or change type.
    #[error("malformed conf change")]
    BadConfChange,
    /// A local entry raft-rs produced that we cannot represent (a v1 conf change: we only
    /// propose v2).
    #[error("unsupported local entry type {0:?}")]
    UnsupportedEntry(EntryType),
    /// A payload or list above its bound (a local message too large to send).
    #[error("{0} exceeds its wire bound")]
    TooLarge(&'static str),
    /// A message type portcullis never uses (leader transfer, read index).
    #[error("raft message type {0:?} is not used by portcullis")]
    Unused(MessageType),
    /// A message no correct replica sends (see [`from_wire`]); the sender is at fault.
    #[error("malformed raft message: {0}")]
    Malformed(&'static str),
}

fn message_type_from(raw: u8) -> Result<MessageType, RaftWireError> {
    use MessageType::*;
    let ty = match raw {
        0 => MsgHup,
        1 => MsgBeat,
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        10 => MsgUnreachable,
        11 => MsgSnapStatus,
        12 => MsgCheckQuorum,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        other => return Err(RaftWireError::UnknownType(other)),
    };
    // Local-only types, and proposals: followers forward proposals by our own message.
    if matches!(
        ty,
        MsgHup | MsgBeat | MsgPropose | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum
    ) {
        return Err(RaftWireError::LocalOnly(ty));
    }
    // Leader transfer and read-index reads: we never start either, so no correct replica
    // sends these. From a peer they would force an election, or make raft-rs forward a
    // message it then refuses to send and panic (found by the `raft_frames` fuzz target).
    if matches!(
        ty,
        MsgTransferLeader | MsgTimeoutNow | MsgReadIndex | MsgReadIndexResp
    ) {
        return Err(RaftWireError::Unused(ty));
    }
    Ok(ty)
}

/// The message-only checks of [`from_wire`].
fn check_from_network(ty: MessageType, w: &RaftMessageWire) -> Result<(), RaftWireError> {
    let malformed = |what| Err(RaftWireError::Malformed(what));
    let numbers = [
        w.term,
        w.log_term,
        w.index,
        w.commit,
        w.commit_term,
        w.request_snapshot,
        w.reject_hint,
    ];
    let entry_numbers = w.entries.iter().flat_map(|e| [e.term, e.index]);
    let snapshot_numbers = w.snapshot.iter().flat_map(|s| [s.term, s.index]);
    if numbers
        .into_iter()
        .chain(entry_numbers)
        .chain(snapshot_numbers)
        .any(|n| n > MAX_TERM_OR_INDEX)
    {
        return malformed("term or index out of range");
    }
    // raft-rs reads term 0 as a local message, and answers a vote request of term 0 with a
    // response it then refuses to send, and panics. Every message a replica sends has a term.
    if w.term == 0 {
        return malformed("term 0");
    }
    match ty {
        MessageType::MsgAppend => {
            if w.index > 0 && w.log_term == 0 {
                return malformed("append after an entry of term 0");
            }
            let mut previous_term = w.log_term;
            for (expected, e) in (w.index + 1..).zip(w.entries.iter()) {
                if e.index != expected {
                    return malformed("append entries not in sequence");
                }
                if e.term == 0 || e.term < previous_term || e.term > w.term {
                    return malformed("append entry term out of order");
                }
                previous_term = e.term;
            }
        }
        MessageType::MsgSnapshot => match &w.snapshot {
            None => return malformed("snapshot message without a snapshot"),
            Some(s) if s.index == 0 || s.term == 0 || s.term > w.term => {
                return malformed("snapshot index or term out of range");
            }
            Some(s) if !conf_state_restorable(&conf_state_from_wire(&s.conf_state)) => {
                return malformed("snapshot conf state raft-rs cannot restore");
            }
            Some(_) => {}
        },
        _ => {}
    }
    Ok(())
}

fn bounded<T, const MAX: usize>(
    items: Vec<T>,
    what: &'static str,
) -> Result<BoundedVec<T, MAX>, RaftWireError> {
    BoundedVec::try_from_vec(items).map_err(|_| RaftWireError::TooLarge(what))
}

fn payload(bytes: &[u8], what: &'static str) -> Result<Payload, RaftWireError> {
    Payload::try_from_vec(bytes.to_vec()).map_err(|_| RaftWireError::TooLarge(what))
}

/// Converts a conf state to its wire form.
pub fn conf_state_to_wire(cs: &ConfState) -> Result<ConfStateWire, RaftWireError> {
    Ok(ConfStateWire {
        voters: bounded(cs.voters.clone(), "voters")?,
        learners: bounded(cs.learners.clone(), "learners")?,
        voters_outgoing: bounded(cs.voters_outgoing.clone(), "voters_outgoing")?,
        learners_next: bounded(cs.learners_next.clone(), "learners_next")?,
        auto_leave: cs.auto_leave,
    })
}

/// Converts a wire conf state back.
pub fn conf_state_from_wire(w: &ConfStateWire) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = w.voters.to_vec();
    cs.learners = w.learners.to_vec();
    cs.voters_outgoing = w.voters_outgoing.to_vec();
    cs.learners_next = w.learners_next.to_vec();
    cs.auto_leave = w.auto_leave;
    cs
}

/// Whether raft-rs can install a snapshot carrying `cs`.
///
/// Installing a snapshot, raft-rs rebuilds its conf state change by change from an empty one
/// (`confchange::restore`, not public) and panics (`fatal!`) if a change fails (a learner with
/// no voter: "removed all voters") or if the result is not `cs` (an id both voter and learner).
/// This runs the same rebuild on a scratch tracker and reports instead of panicking.
pub fn conf_state_restorable(cs: &ConfState) -> bool {
    let single = |node_id: u64, change_type: ConfChangeType| {
        let mut c = ConfChangeSingle::default();
        c.node_id = node_id;
        c.set_change_type(change_type);
        c
    };
    // The rebuild of restore.rs: the outgoing voters alone, then (joint) the incoming config.
    let outgoing: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|&id| single(id, ConfChangeType::AddNode))
        .collect();
    let incoming: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|&id| single(id, ConfChangeType::RemoveNode))
        .chain(
            cs.voters
                .iter()
                .map(|&id| single(id, ConfChangeType::AddNode)),
        )
        .chain(
            cs.learners
                .iter()
                .chain(&cs.learners_next)
                .map(|&id| single(id, ConfChangeType::AddLearnerNode)),
        )
        .collect();
    // The in-flight limit and next index play no part in which configs are valid.
    let mut tracker = ProgressTracker::new(1);
    let simple = |tracker: &mut ProgressTracker, change: ConfChangeSingle| {
        let Ok((conf, changes)) = Changer::new(tracker).simple(&[change]) else {
            return false;
        };
        tracker.apply_conf(conf, changes, 1);
        true
    };
    if outgoing.is_empty() {
        if !incoming.into_iter().all(|c| simple(&mut tracker, c)) {
            return false;
        }
    } else {
        if !outgoing.into_iter().all(|c| simple(&mut tracker, c)) {
            return false;
        }
        let Ok((conf, changes)) = Changer::new(&tracker).enter_joint(cs.auto_leave, &incoming)
        else {
            return false;
        };
        tracker.apply_conf(conf, changes, 1);
    }
    // raft-rs compares as sets (`conf_state_eq`), and so does this.
    let rebuilt = tracker.conf().to_conf_state();
    let set = |ids: &[u64]| {
        ids.iter()
            .copied()
            .collect::<std::collections::BTreeSet<u64>>()
    };
    set(&rebuilt.voters) == set(&cs.voters)
        && set(&rebuilt.learners) == set(&cs.learners)
        && set(&rebuilt.voters_outgoing) == set(&cs.voters_outgoing)
        && set(&rebuilt.learners_next) == set(&cs.learners_next)
        && rebuilt.auto_leave == cs.auto_leave
}

/// Converts a conf change to its wire form.
pub fn conf_change_to_wire(cc: &ConfChangeV2) -> Result<ConfChangeWire, RaftWireError> {
    let transition = match cc.get_transition() {
        ConfChangeTransition::Auto => 0,
        ConfChangeTransition::Implicit => 1,
        ConfChangeTransition::Explicit => 2,
    };
    let changes = cc
        .get_changes()
        .iter()
        .map(|c| {
            let ty = match c.get_change_type() {
                ConfChangeType::AddNode => 0,
                ConfChangeType::RemoveNode => 1,
                ConfChangeType::AddLearnerNode => 2,
            };
            (ty, c.node_id)
        })
        .collect();
    Ok(ConfChangeWire {
        transition,
        changes: bounded(changes, "conf changes")?,
        context: payload(&cc.context, "conf change context")?,
    })
}

/// Builds the conf change a wire form describes (validating every number).
pub fn conf_change_from_wire(w: &ConfChangeWire) -> Result<ConfChangeV2, RaftWireError> {
    let mut cc = ConfChangeV2::default();
    cc.set_transition(match w.transition {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::Implicit,
        2 => ConfChangeTransition::Explicit,
        _ => return Err(RaftWireError::BadConfChange),
    });
    let mut changes = Vec::with_capacity(w.changes.len());
    for (ty, node_id) in w.changes.iter() {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(match ty {
            0 => ConfChangeType::AddNode,
            1 => ConfChangeType::RemoveNode,
            2 => ConfChangeType::AddLearnerNode,
            _ => return Err(RaftWireError::BadConfChange),
        });
        single.node_id = *node_id;
        changes.push(single);
    }
    cc.set_changes(changes.into());
    cc.context = w.context.to_vec().into();
    Ok(cc)
}

/// Parses the conf change inside a *local* entry: raft-rs wrote these bytes, or
/// [`entry_from_wire`] serialized them in this process — never network bytes.
pub fn local_conf_change(entry: &Entry) -> Result<ConfChangeV2, RaftWireError> {
    ConfChangeV2::parse_from_bytes(&entry.data).map_err(|_| RaftWireError::BadConfChange)
}

/// Converts a local entry to its wire form.
pub fn entry_to_wire(e: &Entry) -> Result<EntryWire, RaftWireError> {
    let payload_kind = match e.get_entry_type() {
        EntryType::EntryNormal => EntryPayload::Normal(payload(&e.data, "entry data")?),
        EntryType::EntryConfChangeV2 => {
            EntryPayload::ConfChangeV2(conf_change_to_wire(&local_conf_change(e)?)?)
        }
        other => return Err(RaftWireError::UnsupportedEntry(other)),
    };
    Ok(EntryWire {
        term: e.term,
        index: e.index,
        payload: payload_kind,
        context: payload(&e.context, "entry context")?,
    })
}

/// Converts a wire entry to raft-rs's form; conf changes are serialized here, locally.
pub fn entry_from_wire(w: &EntryWire) -> Result<Entry, RaftWireError> {
    let mut e = Entry::default();
    e.term = w.term;
    e.index = w.index;
    e.context = w.context.to_vec().into();
    match &w.payload {
        EntryPayload::Normal(data) => {
            e.set_entry_type(EntryType::EntryNormal);
            e.data = data.to_vec().into();
        }
        EntryPayload::ConfChangeV2(cc) => {
            e.set_entry_type(EntryType::EntryConfChangeV2);
            let bytes = conf_change_from_wire(cc)?
                .write_to_bytes()
                .map_err(|_| RaftWireError::BadConfChange)?;
            e.data = bytes.into();
        }
    }
    Ok(e)
}

/// Converts a snapshot to its wire form.
pub fn snapshot_to_wire(s: &Snapshot) -> Result<SnapshotWire, RaftWireError> {
    let meta = s.get_metadata();
    Ok(SnapshotWire {
        index: meta.index,
        term: meta.term,
        conf_state: conf_state_to_wire(meta.get_conf_state())?,
        data: payload(&s.data, "snapshot data")?,
    })
}

/// Converts a wire snapshot to raft-rs's form.
pub fn snapshot_from_wire(w: &SnapshotWire) -> Snapshot {
    let mut meta = SnapshotMetadata::default();
    meta.index = w.index;
    meta.term = w.term;
    meta.set_conf_state(conf_state_from_wire(&w.conf_state));
    let mut s = Snapshot::default();
    s.set_metadata(meta);
    s.data = w.data.to_vec().into();
    s
}

/// Converts a message raft-rs produced locally to its wire form.
pub fn to_wire(m: &Message) -> Result<RaftMessageWire, RaftWireError> {
    let entries = m
        .get_entries()
        .iter()
        .map(entry_to_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = if m.has_snapshot() {
        Some(snapshot_to_wire(m.get_snapshot())?)
    } else {
        None
    };
    Ok(RaftMessageWire {
        msg_type: m.get_msg_type() as u8,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: bounded(entries, "entries")?,
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot,
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: payload(&m.context, "message context")?,
        priority: m.priority,
    })
}

/// Converts a message from the network to raft-rs's form, refusing local-only types and the
/// types we never use (leader transfer, read index).
///
/// Refuses what no correct replica sends, because raft-rs trusts what it is stepped and panics
/// on some lies (found by `core/tests/raft_input.rs`):
///
/// * a term or index above [`MAX_TERM_OR_INDEX`] (raft-rs adds 1 to them unchecked), or a
///   message term of 0 (raft-rs reads it as a local message);
/// * an append whose entries do not run on from `index + 1`, have term 0, go back in term, or
///   are older than the previous entry or newer than the message;
/// * an append after a real entry (`index > 0`) claiming that entry has term 0: raft-rs reads
///   term 0 for every index past the end of our log, so it would "match", and raft-rs would
///   then commit past the end of our log and panic;
/// * a snapshot message without a snapshot, or with index or term 0 or a term above the
///   message's (the same fast-forward past the end of our log), or with a conf state raft-rs
///   cannot restore ([`conf_state_restorable`]).
///
/// The checks are on the message alone; [`crate::node::Node`] also checks a snapshot's data
/// and who may send what.
pub fn from_wire(w: &RaftMessageWire) -> Result<Message, RaftWireError> {
    let mut m = Message::default();
    m.set_msg_type(message_type_from(w.msg_type)?);
    check_from_network(m.get_msg_type(), w)?;
    m.to = w.to;
    m.from = w.from;
    m.term = w.term;
    m.log_term = w.log_term;
    m.index = w.index;
    let entries = w
        .entries
        .iter()
        .map(entry_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    m.set_entries(entries.into());
    m.commit = w.commit;
    m.commit_term = w.commit_term;
    if let Some(s) = &w.snapshot {
        m.set_snapshot(snapshot_from_wire(s));
    }
    m.request_snapshot = w.request_snapshot;
    m.reject = w.reject;
    m.reject_hint = w.reject_hint;
    m.context = w.context.to_vec().into();
    m.priority = w.priority;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        m.index = 4;
        m.log_term = 2;
        m.commit = 4;
        let mut e = Entry::default();
        e.term = 3;
        e.index = 5;
        e.data = vec![1, 2, 3].into();
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 9;
        cc.set_changes(vec![single].into());
        let mut ce = Entry::default();
        ce.set_entry_type(EntryType::EntryConfChangeV2);
        ce.term = 3;
        ce.index = 6;
        ce.data = cc.write_to_bytes().unwrap().into();
        m.set_entries(vec![e, ce].into());
        m
    }

    #[test]
    fn round_trip_through_the_wire_form() {
        let m = sample();
        let w = to_wire(&m).unwrap();
        let bytes = crate::wire::encode(&w);
        let back: RaftMessageWire = crate::wire::decode_exact(&bytes).unwrap();
        assert_eq!(back, w);
        let m2 = from_wire(&back).unwrap();
        assert_eq!(m2, m);
    }

    #[test]
    fn local_only_types_are_refused_from_the_network() {
        let mut w = to_wire(&sample()).unwrap();
        for ty in [0u8, 1, 2, 10, 11, 12] {
            w.msg_type = ty;
            assert!(
                matches!(from_wire(&w), Err(RaftWireError::LocalOnly(_))),
                "type {ty}"
            );
        }
        w.msg_type = 99;
        assert_eq!(from_wire(&w), Err(RaftWireError::UnknownType(99)));
    }

    #[test]
    fn conf_states_raft_rs_can_restore_are_told_from_those_it_panics_on() {
        let cs = |voters: &[u64], learners: &[u64], outgoing: &[u64], next: &[u64], auto| {
            let mut cs = ConfState::default();
            cs.voters = voters.to_vec();
            cs.learners = learners.to_vec();
            cs.voters_outgoing = outgoing.to_vec();
            cs.learners_next = next.to_vec();
            cs.auto_leave = auto;
            cs
        };
        // Simple configs, and the joint one our multi-learner changes pass through.
        assert!(conf_state_restorable(&cs(&[1, 2, 3], &[], &[], &[], false)));
        assert!(conf_state_restorable(&cs(
            &[1, 2, 3],
            &[4, 5],
            &[],
            &[],
            false
        )));
        assert!(conf_state_restorable(&cs(
            &[1, 2, 3],
            &[4, 5],
            &[1, 2, 3],
            &[],
            true
        )));
        // A voter demoted through a joint config: a learner-to-be of the outgoing voters.
        assert!(conf_state_restorable(&cs(
            &[1, 2],
            &[],
            &[1, 2, 3],
            &[3],
            false
        )));
        // Nobody at all: the rebuild agrees (raft-rs then refuses it before installing: the
        // receiver is not in it).
        assert!(conf_state_restorable(&cs(&[], &[], &[], &[], false)));
        // What raft-rs panics on.
        assert!(!conf_state_restorable(&cs(&[], &[1], &[], &[], false)));
        assert!(!conf_state_restorable(&cs(
            &[1, 2, 3],
            &[3],
            &[],
            &[],
            false
        )));
        assert!(!conf_state_restorable(&cs(
            &[1, 2],
            &[],
            &[1, 2, 3],
            &[4],
            false
        )));
        assert!(!conf_state_restorable(&cs(&[1], &[], &[], &[], true)));
    }

    #[test]
    fn bad_conf_change_numbers_are_refused() {
        let mut w = to_wire(&sample()).unwrap();
        if let EntryPayload::ConfChangeV2(cc) = &mut w.entries.to_vec()[1].payload {
            cc.transition = 7;
            assert_eq!(conf_change_from_wire(cc), Err(RaftWireError::BadConfChange));
        } else {
            panic!("sample has a conf change second");
        }
        w.msg_type = 3;
    }
}
