//! Crafted Raft frames from authenticated members: a 3-founder cluster in the core's `testing`
//! harness, and the fuzzer writing whole `RaftMessageWire`s that one founder's key sends to
//! another, between runs of virtual time.
//!
//! ```text
//!   op ─▶ Cluster (run timers and the network / inject a crafted Raft frame as a member)
//!        └▶ check: no panic · every up replica's ledger invariants hold
//! ```
//!
//! Unlike `node_sequences`, this target checks no cross-replica safety property: a member that
//! lies in Raft messages (a fake leader with a higher term) can break Raft's agreement, which
//! no Raft implementation survives. What it must never do is panic a replica (raft-rs panics
//! on some lies; `raft_wire::from_wire` and `Node::on_raft` refuse those) or corrupt a
//! replica's own ledger.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_core::config::Config;
use portcullis_core::crypto::Hash32;
use portcullis_core::messages::PeerMessage;
use portcullis_core::replication::raft_wire::{
    ConfStateWire, EntryPayload, EntryWire, RaftMessageWire, SnapshotWire,
};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::wire::{BoundedBytes, BoundedVec};

/// Most ops run from one input.
const MAX_OPS: usize = 32;
/// Most entries in one crafted append.
const MAX_ENTRIES: usize = 4;
const FOUNDERS: usize = 3;

/// A number near what the receiver holds, or anywhere: most panics sit at "just past the
/// end of our log" or at the end of the index space.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Number {
    /// The receiver's current term or last applied index, plus this.
    Near(i8),
    Raw(u64),
}

impl Number {
    fn resolve(self, base: u64) -> u64 {
        match self {
            Number::Near(d) => base.saturating_add_signed(i64::from(d)),
            Number::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct Crafted {
    from: u8,
    to: u8,
    msg_type: u8,
    term: Number,
    log_term: Number,
    index: Number,
    commit: Number,
    commit_term: Number,
    entries: Vec<(Number, Number, Vec<u8>)>,
    snapshot: Option<(Number, Number, Vec<u8>)>,
    /// The snapshot's conf state: founders 1-3 as voters, or ids drawn from 1-5.
    conf: Option<Conf>,
    /// The snapshot carries the receiver's own ledger at its index instead of the bytes above
    /// (so the checks behind the data's, like the conf state's, are reached).
    genuine_data: bool,
    request_snapshot: Number,
    reject: bool,
    reject_hint: Number,
}

/// A conf state over ids 1-5 (raft-rs panics on some when installing a snapshot).
#[derive(Arbitrary, Debug, Clone)]
struct Conf {
    voters: Vec<u8>,
    learners: Vec<u8>,
    voters_outgoing: Vec<u8>,
    learners_next: Vec<u8>,
    auto_leave: bool,
}

impl Conf {
    fn wire(&self) -> ConfStateWire {
        let ids = |v: &[u8]| {
            BoundedVec::try_from_vec(v.iter().take(5).map(|b| u64::from(b % 5) + 1).collect())
                .expect("5 ids fit")
        };
        ConfStateWire {
            voters: ids(&self.voters),
            learners: ids(&self.learners),
            voters_outgoing: ids(&self.voters_outgoing),
            learners_next: ids(&self.learners_next),
            auto_leave: self.auto_leave,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Run every event due in the next `ms` (times 10) of virtual time.
    Run {
        ms: u8,
    },
    Inject(Crafted),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut c = Cluster::new(
        FOUNDERS,
        u64::from(input.seed),
        Config::default(),
        Faults::default(),
    );
    c.tracing = false;
    c.run_until(10_000, |c| c.leader().is_some());
    let mut next_external = 0u64;
    for op in input.ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Run { ms } => c.run_for(u64::from(ms) * 10),
            Op::Inject(m) => {
                let from = usize::from(m.from) % FOUNDERS;
                let to = usize::from(m.to) % FOUNDERS;
                let Some(node) = c.nodes[to].node.as_ref() else {
                    continue;
                };
                let (term, applied) = (node.term(), node.ledger().applied_index());
                let mut w = craft(&m, from, to, term, applied);
                if m.genuine_data
                    && let Some(s) = w.snapshot.as_mut()
                {
                    let mut ledger = node.ledger().clone();
                    ledger.advance_applied(s.index);
                    s.data = BoundedBytes::try_from_vec(ledger.snapshot())
                        .expect("a small ledger fits the payload bound");
                }
                next_external += 1;
                let key = c.nodes[from].node_key();
                let peer = c.connect_external(to, next_external, key, Hash32([9; 32]));
                c.inject(to, peer, PeerMessage::Raft(w).encode());
            }
        }
        for (i, sim) in c.nodes.iter().enumerate() {
            if let Some(node) = sim.node.as_ref() {
                assert_eq!(node.ledger().check_invariants(), Ok(()), "node {i}");
            }
        }
    }
});

fn craft(m: &Crafted, from: usize, to: usize, term: u64, applied: u64) -> RaftMessageWire {
    let payload = |bytes: &[u8]| {
        BoundedBytes::try_from_vec(bytes.iter().copied().take(256).collect())
            .expect("256 bytes fit every payload bound")
    };
    let entries = m
        .entries
        .iter()
        .take(MAX_ENTRIES)
        .map(|(t, i, data)| EntryWire {
            term: t.resolve(term),
            index: i.resolve(applied),
            payload: EntryPayload::Normal(payload(data)),
            context: BoundedBytes::default(),
        })
        .collect();
    RaftMessageWire {
        msg_type: m.msg_type % 20,
        to: to as u64 + 1,
        from: from as u64 + 1,
        term: m.term.resolve(term),
        log_term: m.log_term.resolve(term),
        index: m.index.resolve(applied),
        entries: BoundedVec::try_from_vec(entries).expect("MAX_ENTRIES fit the bound"),
        commit: m.commit.resolve(applied),
        commit_term: m.commit_term.resolve(term),
        snapshot: m.snapshot.as_ref().map(|(i, t, data)| SnapshotWire {
            index: i.resolve(applied),
            term: t.resolve(term),
            conf_state: m.conf.as_ref().map_or_else(
                || ConfStateWire {
                    voters: BoundedVec::try_from_vec(vec![1, 2, 3]).expect("3 ids fit"),
                    ..ConfStateWire::default()
                },
                Conf::wire,
            ),
            data: payload(data),
        }),
        request_snapshot: m.request_snapshot.resolve(applied),
        reject: m.reject,
        reject_hint: m.reject_hint.resolve(applied),
        context: BoundedBytes::default(),
        priority: 0,
    }
}
