//! Crafted Raft messages from an authenticated member: peer input never panics a replica and
//! never stops it.
//!
//! Any admitted node may send Raft frames (learners answer appends). raft-rs trusts what it is
//! stepped: an append whose previous entry lies past our log with term 0 "matches" (raft-rs
//! reports term 0 for any index past the end), and it then commits past the end and panics; so
//! do out-of-order entries, snapshot metadata past the end, and indices near `u64::MAX`. A
//! snapshot whose data is not a ledger made the node fatal. Each case below is sent by a
//! founder's key to another founder with a term above the cluster's, so raft-rs acts on it.

use portcullis_core::config::Config;
use portcullis_core::crypto::Hash32;
use portcullis_core::messages::PeerMessage;
use portcullis_core::replication::raft_wire::{
    ConfStateWire, EntryPayload, EntryWire, RaftMessageWire, SnapshotWire,
};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::wire::{BoundedBytes, BoundedVec};

/// raft-rs's message type numbers (eraftpb).
const MSG_APPEND: u8 = 3;
const MSG_SNAPSHOT: u8 = 7;
const MSG_HEARTBEAT: u8 = 8;
const MSG_TIMEOUT_NOW: u8 = 14;

fn ready_cluster(seed: u64) -> Cluster {
    let mut c = Cluster::new(3, seed, Config::default(), Faults::default());
    assert!(c.run_until(10_000, |c| c.leader().is_some()), "no leader");
    c.run_for(1_000);
    c
}

/// A message from founder `from` (member id `from + 1`) to founder `to`.
fn message(c: &Cluster, from: usize, to: usize, msg_type: u8) -> RaftMessageWire {
    let term = c.nodes[to].node.as_ref().expect("founder is up").term();
    RaftMessageWire {
        msg_type,
        to: to as u64 + 1,
        from: from as u64 + 1,
        term: term + 1,
        log_term: 0,
        index: 0,
        entries: BoundedVec::default(),
        commit: 0,
        commit_term: 0,
        snapshot: None,
        request_snapshot: 0,
        reject: false,
        reject_hint: 0,
        context: BoundedBytes::default(),
        priority: 0,
    }
}

fn entry(term: u64, index: u64) -> EntryWire {
    EntryWire {
        term,
        index,
        payload: EntryPayload::Normal(BoundedBytes::default()),
        context: BoundedBytes::default(),
    }
}

fn snapshot(index: u64, term: u64, data: Vec<u8>) -> SnapshotWire {
    SnapshotWire {
        index,
        term,
        conf_state: ConfStateWire {
            voters: BoundedVec::try_from_vec(vec![1, 2, 3]).expect("3 ids fit"),
            ..ConfStateWire::default()
        },
        data: BoundedBytes::try_from_vec(data).expect("small payload fits"),
    }
}

/// Sends `w` to founder `to` as founder `from`, and checks that `to` is still up, refused the
/// message, and that the cluster still admits a joiner afterwards.
fn survives(mut c: Cluster, from: usize, to: usize, w: RaftMessageWire, case: &str) {
    let key = c.nodes[from].node_key();
    let peer = c.connect_external(to, 1, key, Hash32([7; 32]));
    let refused_before = c.nodes[to]
        .node
        .as_ref()
        .unwrap()
        .metrics()
        .raft_messages_refused;
    c.inject(to, peer, PeerMessage::Raft(w).encode());
    let node = c.nodes[to].node.as_ref().expect("founder is up");
    assert_eq!(node.fatal(), None, "{case}: the message stopped the node");
    assert_eq!(
        node.metrics().raft_messages_refused,
        refused_before + 1,
        "{case}: the message was not refused"
    );
    c.run_for(2_000);
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(
        c.run_until(20_000, |c| c.admitted(j).is_some()),
        "{case}: the cluster no longer admits"
    );
    for (i, n) in c.nodes.iter().take(3).enumerate() {
        assert_eq!(
            n.node.as_ref().and_then(|n| n.fatal()),
            None,
            "{case}: s{i} fatal"
        );
    }
}

#[test]
fn an_empty_append_past_our_log_with_term_zero_is_refused() {
    let c = ready_cluster(11);
    let mut w = message(&c, 1, 0, MSG_APPEND);
    w.index = 1_000;
    w.log_term = 0;
    w.commit = 1_000;
    survives(c, 1, 0, w, "empty append past the end");
}

#[test]
fn an_append_with_entries_out_of_order_is_refused() {
    let c = ready_cluster(12);
    let mut w = message(&c, 1, 0, MSG_APPEND);
    let last = c.nodes[0].node.as_ref().unwrap().ledger().applied_index();
    w.index = last;
    w.log_term = 1;
    w.commit = 0;
    // Indices must run on from `index + 1`; these go backwards.
    w.entries = BoundedVec::try_from_vec(vec![entry(1, 1), entry(1, 0)]).unwrap();
    survives(c, 1, 0, w, "entries out of order");
}

#[test]
fn an_append_near_the_end_of_the_index_space_is_refused() {
    let c = ready_cluster(13);
    let mut w = message(&c, 1, 0, MSG_APPEND);
    w.index = u64::MAX;
    w.log_term = 1;
    w.entries = BoundedVec::try_from_vec(vec![entry(1, 0)]).unwrap();
    survives(c, 1, 0, w, "index u64::MAX");
}

#[test]
fn a_snapshot_past_our_log_with_term_zero_is_refused() {
    let c = ready_cluster(14);
    let mut w = message(&c, 1, 0, MSG_SNAPSHOT);
    w.snapshot = Some(snapshot(1_000, 0, vec![]));
    survives(c, 1, 0, w, "snapshot with term 0");
}

#[test]
fn a_snapshot_at_the_end_of_the_index_space_is_refused() {
    let c = ready_cluster(15);
    let mut w = message(&c, 1, 0, MSG_SNAPSHOT);
    w.snapshot = Some(snapshot(u64::MAX, 5, vec![]));
    survives(c, 1, 0, w, "snapshot index u64::MAX");
}

#[test]
fn a_snapshot_whose_data_is_not_a_ledger_is_refused() {
    let c = ready_cluster(16);
    let mut w = message(&c, 1, 0, MSG_SNAPSHOT);
    w.snapshot = Some(snapshot(1_000, 50, vec![0xff; 40]));
    survives(c, 1, 0, w, "snapshot data garbage");
}

/// raft-rs rebuilds a snapshot's conf state change by change and panics (`fatal!`) when a
/// change fails or the result is not the conf state it was given: a learner with no voters, or
/// an id listed both as voter and as learner. The ledger data is genuine, so only the conf
/// state is wrong.
#[test]
fn a_snapshot_whose_conf_state_raft_rs_cannot_restore_is_refused() {
    let cases: [(&str, Vec<u64>, Vec<u64>); 2] = [
        ("no voters", vec![], vec![1]),
        ("a voter that is also a learner", vec![1, 2, 3], vec![3]),
    ];
    for (k, (case, voters, learners)) in cases.into_iter().enumerate() {
        let c = ready_cluster(30 + k as u64);
        let mut ledger = c.nodes[0].node.as_ref().unwrap().ledger().clone();
        let index = ledger.applied_index() + 1_000;
        ledger.advance_applied(index);
        let mut w = message(&c, 1, 0, MSG_SNAPSHOT);
        let mut s = snapshot(index, w.term, ledger.snapshot());
        s.conf_state = ConfStateWire {
            voters: BoundedVec::try_from_vec(voters).expect("few ids fit"),
            learners: BoundedVec::try_from_vec(learners).expect("few ids fit"),
            ..ConfStateWire::default()
        };
        w.snapshot = Some(s);
        survives(c, 1, 0, w, case);
    }
}

#[test]
fn a_snapshot_message_without_a_snapshot_is_refused() {
    let c = ready_cluster(17);
    let w = message(&c, 1, 0, MSG_SNAPSHOT);
    survives(c, 1, 0, w, "snapshot message without snapshot");
}

/// raft-rs reads term 0 as a local message and answered this vote request with a response it
/// then refused to send, and panicked (found by the `raft_frames` fuzz target).
#[test]
fn a_vote_request_of_term_zero_is_refused() {
    const MSG_REQUEST_VOTE: u8 = 5;
    let c = ready_cluster(20);
    let mut w = message(&c, 1, 0, MSG_REQUEST_VOTE);
    w.term = 0;
    survives(c, 1, 0, w, "vote request of term 0");
}

#[test]
fn a_heartbeat_with_a_huge_term_is_refused() {
    let c = ready_cluster(18);
    let mut w = message(&c, 1, 0, MSG_HEARTBEAT);
    w.term = u64::MAX;
    survives(c, 1, 0, w, "term u64::MAX");
}

/// We never transfer leadership or read by index, so no correct replica sends these. From a
/// member, `MsgTimeoutNow` forced an election, and `MsgReadIndex` or `MsgTransferLeader` at
/// the current term made raft-rs forward a message it then refused to send, and panic (found
/// by the `raft_frames` fuzz target).
#[test]
fn leader_transfer_and_read_index_messages_are_refused() {
    const MSG_TRANSFER_LEADER: u8 = 13;
    const MSG_READ_INDEX: u8 = 15;
    const MSG_READ_INDEX_RESP: u8 = 16;
    for (k, ty) in [
        MSG_TRANSFER_LEADER,
        MSG_TIMEOUT_NOW,
        MSG_READ_INDEX,
        MSG_READ_INDEX_RESP,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = ready_cluster(19 + k as u64);
        let leader = c.leader().expect("ready cluster has a leader");
        let follower = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let mut w = message(&c, other, follower, ty);
        w.term -= 1; // the current term
        let term_before = c.nodes[follower].node.as_ref().unwrap().term();
        let key = c.nodes[other].node_key();
        let peer = c.connect_external(follower, 1, key, Hash32([7; 32]));
        c.inject(follower, peer, PeerMessage::Raft(w).encode());
        c.run_for(10);
        let node = c.nodes[follower].node.as_ref().unwrap();
        assert_eq!(node.term(), term_before, "type {ty} forced an election");
        assert_eq!(node.metrics().raft_messages_refused, 1, "type {ty}");
    }
}
