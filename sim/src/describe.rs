//! Short readable descriptions of frames and persist batches, for `replay --trace`.
//!
//! Only used when a run keeps readable lines: decoding every frame again costs time a normal
//! run does not spend.

use portcullis_core::durable::PersistBatch;
use portcullis_core::ledger::{Command, LogEntry};
use portcullis_core::messages::PeerMessage;
use portcullis_core::replication::raft_wire::RaftMessageWire;
use portcullis_core::wire::Limits;

/// raft-rs's `MessageType` numbering (eraftpb), for readable traces.
fn raft_type(t: u8) -> &'static str {
    match t {
        0 => "Hup",
        1 => "Beat",
        2 => "Propose",
        3 => "Append",
        4 => "AppendResp",
        5 => "Vote",
        6 => "VoteResp",
        7 => "Snapshot",
        8 => "Heartbeat",
        9 => "HeartbeatResp",
        10 => "Unreachable",
        11 => "SnapStatus",
        12 => "CheckQuorum",
        13 => "TransferLeader",
        14 => "TimeoutNow",
        15 => "ReadIndex",
        16 => "ReadIndexResp",
        17 => "PreVote",
        18 => "PreVoteResp",
        _ => "?",
    }
}

fn raft(m: &RaftMessageWire) -> String {
    let mut s = format!(
        "Raft({} {}->{} term {} idx {} logterm {} commit {}",
        raft_type(m.msg_type),
        m.from,
        m.to,
        m.term,
        m.index,
        m.log_term,
        m.commit
    );
    if !m.entries.is_empty() {
        let first = m.entries.first().map_or(0, |e| e.index);
        let last = m.entries.last().map_or(0, |e| e.index);
        s.push_str(&format!(" entries {first}..={last}"));
    }
    if m.reject {
        s.push_str(&format!(" REJECT hint {}", m.reject_hint));
    }
    if let Some(snap) = &m.snapshot {
        s.push_str(&format!(" snapshot@{}", snap.index));
    }
    s.push(')');
    s
}

/// A ledger entry: its proposal and its commands' names with their tokens.
fn entry(e: &LogEntry) -> String {
    let commands: Vec<String> = e
        .commands
        .iter()
        .map(|c| {
            let name = match c {
                Command::Register { .. } => "Register",
                Command::BeginInFlight { .. } => "BeginInFlight",
                Command::Consume { .. } => "Consume",
                Command::Revert { .. } => "Revert",
                Command::Expire { .. } => "Expire",
                Command::Abort { .. } => "Abort",
            };
            format!("{name} {}", c.hash().0.short())
        })
        .collect();
    format!(
        "proposal {}/{:#x}: {}",
        e.proposal.node.0,
        e.proposal.seq,
        commands.join(", ")
    )
}

/// One frame, decoded.
pub(crate) fn frame(bytes: &[u8], limits: &Limits) -> String {
    match PeerMessage::decode(bytes, limits) {
        Ok(PeerMessage::Raft(m)) => raft(&m),
        Ok(PeerMessage::Forward(f)) => {
            let entries: Vec<String> = f.entries.iter().map(entry).collect();
            format!("Forward({})", entries.join("; "))
        }
        Ok(PeerMessage::ClusterInfoRequest(r)) => format!("ClusterInfoRequest(nonce {})", r.nonce),
        Ok(PeerMessage::ClusterInfo(i)) => format!(
            "ClusterInfo(nonce {}, member {})",
            i.nonce, i.credential.body.member_id.0
        ),
        Ok(PeerMessage::JoinRequest(r)) => {
            format!("JoinRequest(key {})", r.node_key.hash().short())
        }
        Ok(PeerMessage::JoinAccepted(a)) => format!("JoinAccepted(member {})", a.member_id.0),
        Ok(PeerMessage::JoinRejected(r)) => match r.retry_after_ms {
            Some(ms) => format!("JoinRejected({}, retry after {ms} ms)", r.reason.as_str()),
            None => format!("JoinRejected({})", r.reason.as_str()),
        },
        Ok(PeerMessage::Redirect(r)) => format!("Redirect({} members)", r.admitting.len()),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("undecodable ({e})"),
    }
}

/// One persist batch.
pub(crate) fn batch(b: &PersistBatch) -> String {
    let mut s = format!("batch {}", b.number);
    if b.meta.is_some() {
        s.push_str(" meta");
    }
    if let Some(hs) = b.hard_state {
        s.push_str(&format!(
            " hs(term {} vote {} commit {})",
            hs.term, hs.vote, hs.commit
        ));
    }
    if let Some(snap) = &b.snapshot {
        s.push_str(&format!(" snapshot@{}", snap.index));
    }
    if let (Some(first), Some(last)) = (b.entries.first(), b.entries.last()) {
        s.push_str(&format!(" entries {}..={}", first.index, last.index));
    }
    s
}
