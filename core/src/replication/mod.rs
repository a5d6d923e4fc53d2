//! The Raft metadata group: raft-rs's `RawNode`, wrapped to be deterministic and sans-IO.
//!
//! ```text
//!   Node ──tick/step/propose──▶ Replica ──ready()──▶ ReadyWork {
//!            send_now      : messages safe to send before persistence (leader appends)
//!            batch         : entries / hard state / snapshot  ──▶ Output::Persist(n)
//!            persisted_msgs: held until Persisted(n)           ──▶ Transmit
//!            committed     : entries to apply to the ledger
//!   }
//! ```
//!
//! Determinism: raft-rs draws its randomized election timeout from `thread_rng`. Before **every**
//! `tick()` we draw the timeout `t ∈ [E, 2E)` from the node's seeded RNG — a new draw whenever
//! (term, role, leader) changes — and call `set_randomized_election_timeout(t)`, so whatever
//! `thread_rng` wrote is never read (raft-rs reads it only inside `tick`).
//!
//! Lazy ticks: most ticks change nothing but a counter (a follower that hears heartbeats never
//! reaches its election timeout; a leader acts only every `heartbeat_ticks`). So the node asks
//! [`Replica::ticks_until_due`] how many ticks may pass before one can act, sleeps that long, and
//! catches up every tick that fell due, in order, before it handles its next input. raft-rs sees
//! the same ticks at the same instants relative to every input; the driver is woken only for
//! the ticks that matter.
//!
//! Quiet learners: every admitted node is a learner, and raft-rs heartbeats every learner every
//! `heartbeat_ticks`, which is most of a large cluster's traffic. A heartbeat tells a learner
//! only the commit index (learners never campaign, so they need no proof of a live leader). So
//! [`Replica::should_send`] drops a heartbeat to a learner that has every entry, is being
//! replicated to, and was already told this commit index, unless `quiet_heartbeat_ticks` have
//! passed since its last heartbeat: a bound on how stale its view of the leader can get. It
//! also drops the empty appends that only broadcast a new commit index to such a learner: the
//! next heartbeat carries it instead (one message per heartbeat, not one per commit). Both are
//! lost messages as far as raft-rs knows, which it tolerates by design; voters get everything.
//!
//! Contracts with raft-rs (from its `RawNode` docs):
//! * a `Ready` MUST be fully handled before the next `step`/`propose`/`tick`;
//! * entries MUST be readable from `Storage` before `advance_append_async`, so [`Replica::ready_work`]
//!   appends them to the in-memory [`storage::RaftLog`] first;
//! * persisted messages MUST NOT be sent before `on_persist_ready(number)`.

pub mod raft_wire;
pub mod storage;

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message, MessageType, Snapshot};
use raft::{ProgressState, RawNode, StateRole};
use rand::Rng;

use crate::durable::{DurableState, HardStateRecord, PersistBatch};
use crate::rng::SeededRng;
use raft_wire::RaftWireError;
use storage::RaftLog;

/// Raft timing and batching knobs (from [`crate::config::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Ticks without a leader before an election (E; the timeout is drawn in `[E, 2E)`).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest append message, bytes.
    pub max_append_bytes: u64,
    /// Most in-flight append messages per follower.
    pub max_inflight_appends: usize,
    /// Longest gap between heartbeats to an up-to-date learner, in ticks (see "Quiet learners").
    pub quiet_heartbeat_ticks: u64,
}

/// Work the node must do after one raft-rs `Ready`.
#[derive(Debug, Default)]
pub struct ReadyWork {
    /// Send at once.
    pub send_now: Vec<Message>,
    /// Persist this (if not empty), then call [`Replica::on_persisted`].
    pub batch: PersistBatch,
    /// A snapshot was installed: rebuild the state machine from it.
    pub installed_snapshot: Option<Snapshot>,
    /// Entries to apply, in order.
    pub committed: Vec<Entry>,
    /// raft-rs's number for this ready.
    ready_number: u64,
    /// Messages to send after the batch is durable.
    persisted_messages: Vec<Message>,
}

/// Why the replica could not be built or driven. Always a bug or a corrupt store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// raft-rs refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A durable entry or snapshot could not be converted.
    #[error("durable log: {0}")]
    Wire(#[from] RaftWireError),
}

/// A Raft replica.
pub struct Replica {
    raw: RawNode<RaftLog>,
    config: ReplicaConfig,
    rng: SeededRng,
    timeout_key: Option<(u64, StateRole, u64)>,
    timeout_ticks: usize,
    /// (batch number, ready number, messages to send once durable), in order.
    awaiting: VecDeque<(u64, u64, Vec<Message>)>,
    /// Ticks since this replica started (the clock of quiet learner heartbeats).
    ticks: u64,
    /// What each learner was last told, for quiet heartbeats. Holds only current learners of
    /// a leader (cleared on every role change, pruned to the conf state when it would outgrow
    /// it), so it is bounded by the learner limit.
    learners_told: BTreeMap<u64, LearnerTold>,
}

/// What the leader last sent one learner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LearnerTold {
    /// Highest commit index in an append or heartbeat sent to it.
    commit: u64,
    /// [`Replica::ticks`] when it was last sent a heartbeat.
    heartbeat_at_tick: u64,
}

impl core::fmt::Debug for Replica {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id())
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("leader", &self.raw.raft.leader_id)
            .finish_non_exhaustive()
    }
}

/// A logger that drops everything: raft-rs logs through slog, we log through tracing.
fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Replica {
    /// A replica with id `id` over `log`, having applied through `applied`.
    pub fn new(
        id: u64,
        log: RaftLog,
        applied: u64,
        config: ReplicaConfig,
        rng: SeededRng,
    ) -> Result<Replica, ReplicaError> {
        let raft_config = raft::Config {
            id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.max_append_bytes,
            max_inflight_msgs: config.max_inflight_appends,
            // raft-rs's default is no limit: proposals the leader cannot commit (no quorum)
            // would pile up in its log for as long as forwards keep coming. This is what the
            // leader may have in flight to one follower anyway; past it raft-rs drops new
            // proposals, and their proposers retry.
            max_uncommitted_size: config
                .max_append_bytes
                .saturating_mul(u64::try_from(config.max_inflight_appends).unwrap_or(u64::MAX)),
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_config, log, &discard_logger())?;
        Ok(Replica {
            raw,
            config,
            rng,
            timeout_key: None,
            timeout_ticks: config.election_ticks,
            awaiting: VecDeque::new(),
            ticks: 0,
            learners_told: BTreeMap::new(),
        })
    }

    /// Rebuilds the in-memory log from what was persisted.
    pub fn log_from_durable(durable: &DurableState) -> Result<RaftLog, ReplicaError> {
        let mut hs = HardState {
            term: durable.hard_state.term,
            vote: durable.hard_state.vote,
            commit: durable.hard_state.commit,
            ..Default::default()
        };
        let snapshot = durable
            .snapshot
            .as_ref()
            .map(raft_wire::snapshot_from_wire)
            .unwrap_or_default();
        let entries = durable
            .entries
            .iter()
            .map(raft_wire::entry_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        // A commit index beyond the durable log (entries lost with a torn write) is clamped.
        let last = snapshot.get_metadata().index + entries.len() as u64;
        hs.commit = hs.commit.min(last);
        Ok(RaftLog::new(hs, snapshot, entries))
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The current leader's id (0 if unknown).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The current conf state.
    pub fn conf_state(&self) -> &ConfState {
        self.raw.store().conf_state()
    }

    /// Whether a conf change is proposed and not yet applied.
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// The index raft-rs considers applied.
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Index of the last entry in the log (unstable entries included).
    pub fn last_log_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Index of the first entry still in the log.
    pub fn first_log_index(&self) -> u64 {
        self.raw.store().latest_snapshot().get_metadata().index + 1
    }

    /// Pins raft-rs's randomized election timeout from our RNG: a new draw whenever (term, role,
    /// leader) changed since the last pin.
    fn pin_election_timeout(&mut self) {
        let r = &self.raw.raft;
        let key = (r.term, r.state, r.leader_id);
        if self.timeout_key != Some(key) {
            self.timeout_key = Some(key);
            // A role change ends every learner's quiet period: a new leader starts from scratch.
            self.learners_told.clear();
            let e = self.config.election_ticks;
            self.timeout_ticks = self.rng.gen_range(e..2 * e);
        }
        self.raw
            .raft
            .set_randomized_election_timeout(self.timeout_ticks);
    }

    /// Advances Raft's clock by one tick, with the election timeout pinned from our RNG.
    pub fn tick(&mut self) {
        self.pin_election_timeout();
        self.ticks += 1;
        self.raw.tick();
    }

    /// How many ticks from now the first one that can act falls (1 = the next tick), or `None`
    /// if no tick can act until an input arrives (a learner: it never campaigns).
    ///
    /// A leader acts when a heartbeat or a check-quorum falls due; a voter that is not leading
    /// acts when its election timeout passes. Every other tick only counts. The answer holds
    /// until the next `step`, `propose` or `tick`.
    pub fn ticks_until_due(&mut self) -> Option<u64> {
        self.pin_election_timeout();
        let r = &self.raw.raft;
        let remaining = |timeout: usize, elapsed: usize| timeout.saturating_sub(elapsed).max(1);
        let ticks = match r.state {
            StateRole::Leader => remaining(r.heartbeat_timeout(), r.heartbeat_elapsed())
                .min(remaining(r.election_timeout(), r.election_elapsed)),
            _ if r.promotable() => remaining(r.randomized_election_timeout(), r.election_elapsed),
            _ => return None,
        };
        Some(u64::try_from(ticks).unwrap_or(u64::MAX))
    }

    /// Whether the node should send `m`: false only for a heartbeat or a commit-only append a
    /// quiet learner does not need (see the module docs). Call for every outgoing message, in
    /// order: it also notes what each learner was told.
    pub fn should_send(&mut self, m: &Message) -> bool {
        let to = m.to;
        let r = &self.raw.raft;
        let learners = &self.raw.store().conf_state().learners;
        if r.state != StateRole::Leader || !learners.contains(&to) {
            return true;
        }
        if !self.learners_told.contains_key(&to) && self.learners_told.len() >= learners.len() {
            // Learners removed since: forget them before remembering a new one.
            self.learners_told.retain(|id, _| learners.contains(id));
        }
        let up_to_date = r.prs().get(to).is_some_and(|pr| {
            pr.state == ProgressState::Replicate
                && pr.matched == r.raft_log.last_index()
                && !pr.is_paused()
        });
        let told = self.learners_told.entry(to).or_default();
        match m.get_msg_type() {
            // An empty append to a learner that has every entry only broadcasts the commit
            // index: the next heartbeat carries it (it is not quiet while the learner lags).
            MessageType::MsgAppend if m.entries.is_empty() && up_to_date => false,
            MessageType::MsgAppend => {
                told.commit = told.commit.max(m.commit);
                true
            }
            MessageType::MsgHeartbeat => {
                let quiet_for = self.ticks.saturating_sub(told.heartbeat_at_tick);
                if up_to_date
                    && told.commit >= m.commit
                    && quiet_for < self.config.quiet_heartbeat_ticks
                {
                    return false;
                }
                told.commit = told.commit.max(m.commit);
                told.heartbeat_at_tick = self.ticks;
                true
            }
            _ => true,
        }
    }

    /// Forgets what learner `id` was told (its connection changed: it may have lost state).
    pub fn forget_learner(&mut self, id: u64) {
        self.learners_told.remove(&id);
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), raft::Error> {
        self.raw.step(msg)
    }

    /// Proposes `data` as a normal entry. Fails unless this replica leads.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), raft::Error> {
        if !self.is_leader() {
            return Err(raft::Error::ProposalDropped);
        }
        self.raw.propose(Vec::new(), data)
    }

    /// Proposes a conf change. Fails unless this replica leads and none is pending.
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2) -> Result<(), raft::Error> {
        if !self.is_leader() || self.has_pending_conf() {
            return Err(raft::Error::ProposalDropped);
        }
        self.raw.propose_conf_change(Vec::new(), cc)
    }

    /// Applies a committed conf change; returns the new conf state.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState, raft::Error> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.raw.mut_store().set_conf_state(cs.clone());
        Ok(cs)
    }

    /// Tells raft-rs the application applied through `index`.
    pub fn advance_applied(&mut self, index: u64) {
        self.raw.advance_apply_to(index);
    }

    /// Takes one `Ready`, updates the in-memory log, and returns the work for the node.
    /// `None` when raft-rs has nothing to do.
    pub fn ready_work(&mut self) -> Result<Option<ReadyWork>, ReplicaError> {
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut rd = self.raw.ready();
        let mut work = ReadyWork {
            send_now: rd.take_messages(),
            ready_number: rd.number(),
            ..ReadyWork::default()
        };
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            work.batch.snapshot = Some(raft_wire::snapshot_to_wire(&snapshot)?);
            self.raw.mut_store().apply_snapshot(snapshot.clone());
            work.installed_snapshot = Some(snapshot);
        }
        work.committed = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            work.batch.entries = rd
                .entries()
                .iter()
                .map(raft_wire::entry_to_wire)
                .collect::<Result<Vec<_>, _>>()?;
            self.raw.mut_store().append(rd.entries());
        }
        if let Some(hs) = rd.hs() {
            work.batch.hard_state = Some(HardStateRecord {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            });
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        work.persisted_messages = rd.take_persisted_messages();
        self.raw.advance_append_async(rd);
        Ok(Some(work))
    }

    /// The node emitted `work.batch` as batch `number` (or, if it was empty, `None`).
    /// Returns the messages that may be sent now.
    pub fn batch_emitted(&mut self, work: &mut ReadyWork, number: Option<u64>) -> Vec<Message> {
        let messages = std::mem::take(&mut work.persisted_messages);
        match number {
            Some(n) => {
                self.awaiting.push_back((n, work.ready_number, messages));
                Vec::new()
            }
            None if self.awaiting.is_empty() => {
                self.raw.on_persist_ready(work.ready_number);
                messages
            }
            // Nothing to write for this ready, but an earlier one is still in flight:
            // acknowledge in order, together with it.
            None => {
                let last = self.awaiting.back().map(|a| a.0).unwrap_or(0);
                self.awaiting.push_back((last, work.ready_number, messages));
                Vec::new()
            }
        }
    }

    /// A batch the node wrote on its own (compaction): acknowledged in order with the rest.
    pub fn track_local_batch(&mut self, number: u64) {
        let ready = self.awaiting.back().map_or(0, |a| a.1);
        self.awaiting.push_back((number, ready, Vec::new()));
    }

    /// Batches up to `number` are durable. Returns the messages now safe to send.
    pub fn on_persisted(&mut self, number: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let mut last_ready = None;
        while let Some((batch, _, _)) = self.awaiting.front() {
            if *batch > number {
                break;
            }
            if let Some((_, ready, messages)) = self.awaiting.pop_front() {
                last_ready = Some(ready);
                out.extend(messages);
            }
        }
        if let Some(ready) = last_ready.filter(|r| *r > 0) {
            self.raw.on_persist_ready(ready);
        }
        out
    }

    /// Whether every emitted batch is durable (compaction waits for this).
    pub fn all_persisted(&self) -> bool {
        self.awaiting.is_empty()
    }

    /// Compacts the log through `applied` into a snapshot holding `data`. Returns the
    /// snapshot to persist, or `None` if there is nothing to compact yet.
    pub fn compact(&mut self, applied: u64, data: Vec<u8>) -> Option<Snapshot> {
        if applied < self.first_log_index() {
            return None;
        }
        let snapshot = self.snapshot_at_applied(applied, data)?;
        self.raw.mut_store().apply_snapshot(snapshot.clone());
        Some(snapshot)
    }

    /// A snapshot of the state machine at `applied` holding `data`, with the applied conf
    /// state. `None` if the log no longer knows the term of `applied`.
    fn snapshot_at_applied(&self, applied: u64, data: Vec<u8>) -> Option<Snapshot> {
        let term = self.raw.store().term_of(applied)?;
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = applied;
        snapshot.mut_metadata().term = term;
        snapshot
            .mut_metadata()
            .set_conf_state(self.conf_state().clone());
        snapshot.data = data.into();
        Some(snapshot)
    }

    /// Whether a peer waits for a snapshot that names it (a learner added after the log's
    /// base snapshot; see [`storage`]): the node then calls [`Replica::offer_snapshot`].
    pub fn snapshot_wanted(&self) -> bool {
        self.raw.store().snapshot_wanted()
    }

    /// Offers a snapshot of the state machine at `applied` (with the applied conf state) to the
    /// peers that wait for one, and retries the append to each at once. The log keeps its base.
    pub fn offer_snapshot(&mut self, applied: u64, data: Vec<u8>) {
        let wanted = self.raw.mut_store().take_wanted();
        let Some(snapshot) = self.snapshot_at_applied(applied, data) else {
            return; // Not in the log: nothing newer than the base to offer.
        };
        self.raw.mut_store().offer_outgoing(snapshot);
        if self.is_leader() {
            let me = self.id();
            for id in wanted.into_iter().filter(|id| *id != me) {
                self.raw.raft.send_append(id);
            }
        }
    }

    /// Reports a snapshot handed to the transport (raft-rs resumes appends to that peer).
    pub fn report_snapshot_finished(&mut self, id: u64) {
        self.raw.report_snapshot(id, raft::SnapshotStatus::Finish);
    }

    /// Reports a snapshot that was never handed to the transport: raft-rs moves the peer back
    /// to probing and prepares a new snapshot when it is reachable again.
    pub fn report_snapshot_failed(&mut self, id: u64) {
        self.raw.report_snapshot(id, raft::SnapshotStatus::Failure);
    }

    /// On the leader: a follower reports that it lacks entries we count as matched (it lost
    /// its disk). Probe it again from just after its commit index and send at once; appends
    /// that it already holds are accepted as duplicates, so a false alarm only costs traffic.
    /// `matched` is left alone (raft-rs never lowers it); a voter that loses its disk is
    /// outside Raft's fault model anyway — this is for learners that are readmitted.
    pub fn probe_lagging_follower(&mut self, id: u64, follower_commit: u64) {
        if !self.is_leader() || id == self.id() {
            return;
        }
        let Some(pr) = self.raw.raft.mut_prs().get_mut(id) else {
            return;
        };
        if pr.state == raft::ProgressState::Snapshot {
            return; // A snapshot is on its way, which brings it up to date.
        }
        pr.become_probe();
        pr.next_idx = pr.next_idx.min(follower_commit.saturating_add(1)).max(1);
        self.raw.raft.send_append(id);
    }

    /// Reports that a peer could not be reached (raft-rs backs off its appends).
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf types: see raft_wire
mod tests {
    //! A bare group of replicas with instant disks and a message pump that can cut a replica
    //! off (as raft-rs's own harness does with `isolate`/`recover`), for contracts that sit
    //! below the node.
    use std::collections::BTreeSet;

    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, EntryType};
    use raft::{GetEntriesContext, Storage};

    use super::*;

    fn config() -> ReplicaConfig {
        ReplicaConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 64,
            quiet_heartbeat_ticks: 10,
        }
    }

    struct Group {
        replicas: Vec<Replica>,
        isolated: BTreeSet<u64>,
        next_batch: u64,
    }

    impl Group {
        /// `n` voters with ids `1..=n`, all at the founding snapshot (index 1).
        fn new(n: u64) -> Group {
            let voters: Vec<u64> = (1..=n).collect();
            let replicas = voters
                .iter()
                .map(|&id| {
                    let mut snapshot = Snapshot::default();
                    snapshot.mut_metadata().index = 1;
                    snapshot.mut_metadata().term = 1;
                    snapshot.mut_metadata().set_conf_state(ConfState {
                        voters: voters.clone(),
                        ..Default::default()
                    });
                    let hs = HardState {
                        term: 1,
                        commit: 1,
                        ..Default::default()
                    };
                    let log = RaftLog::new(hs, snapshot, Vec::new());
                    // Fixed inputs: a founding replica always builds.
                    Replica::new(id, log, 1, config(), SeededRng::from_u64(id)).expect("replica")
                })
                .collect();
            Group {
                replicas,
                isolated: BTreeSet::new(),
                next_batch: 0,
            }
        }

        /// A learner-to-be with id `id` and an empty log, as an admitted node starts.
        fn add_empty(&mut self, id: u64) {
            let r = Replica::new(id, RaftLog::default(), 0, config(), SeededRng::from_u64(id));
            // Fixed inputs: an empty replica always builds.
            self.replicas.push(r.expect("replica"));
        }

        fn replica(&mut self, id: u64) -> &mut Replica {
            // Tests name only replicas they built.
            let i = self
                .replicas
                .iter()
                .position(|r| r.id() == id)
                .expect("built");
            &mut self.replicas[i]
        }

        fn leader(&self) -> Option<u64> {
            self.replicas
                .iter()
                .find(|r| r.is_leader())
                .map(Replica::id)
        }

        /// Handles every ready (each disk write durable at once) and delivers the messages,
        /// until nothing moves. Fails if a replica applies a conf change it already holds.
        fn settle(&mut self) -> Result<(), String> {
            for _ in 0..1_000 {
                let mut mail = Vec::new();
                let Group {
                    replicas,
                    next_batch,
                    ..
                } = self;
                for r in replicas.iter_mut() {
                    if r.snapshot_wanted() {
                        let applied = r.applied_index();
                        r.offer_snapshot(applied, Vec::new());
                    }
                    while let Some(mut work) = r.ready_work().map_err(|e| e.to_string())? {
                        mail.append(&mut work.send_now);
                        let number = (!work.batch.is_empty()).then(|| {
                            *next_batch += 1;
                            *next_batch
                        });
                        mail.extend(r.batch_emitted(&mut work, number));
                        if let Some(n) = number {
                            mail.extend(r.on_persisted(n));
                        }
                        if let Some(s) = work.installed_snapshot.take() {
                            r.advance_applied(s.get_metadata().index);
                        }
                        for e in &work.committed {
                            if e.get_entry_type() != EntryType::EntryConfChangeV2 {
                                continue;
                            }
                            let cc = raft_wire::local_conf_change(e).map_err(|e| e.to_string())?;
                            for c in &cc.changes {
                                if c.change_type == ConfChangeType::AddLearnerNode
                                    && r.conf_state().learners.contains(&c.node_id)
                                {
                                    return Err(format!(
                                        "replica {} applies the addition of learner {} at index \
                                         {} a second time",
                                        r.id(),
                                        c.node_id,
                                        e.index
                                    ));
                                }
                            }
                            r.apply_conf_change(&cc)
                                .map_err(|err| format!("replica {}: {err}", r.id()))?;
                        }
                        if let Some(last) = work.committed.last() {
                            r.advance_applied(last.index);
                        }
                    }
                }
                if mail.is_empty() {
                    return Ok(());
                }
                for m in mail {
                    let cut = self.isolated.contains(&m.from) || self.isolated.contains(&m.to);
                    let Some(to) = self.replicas.iter_mut().find(|r| r.id() == m.to) else {
                        continue; // A learner that never started.
                    };
                    if cut {
                        continue;
                    }
                    let (from, snapshot) = (m.from, m.get_msg_type() == MessageType::MsgSnapshot);
                    let target = m.to;
                    let _ = to.step(m);
                    if snapshot {
                        self.replica(from).report_snapshot_finished(target);
                    }
                }
            }
            Err("the group never settled".to_owned())
        }

        /// Commits `count` entries through `leader`, then compacts its log through them.
        /// Returns the compaction index.
        fn commit_and_compact(&mut self, leader: u64, count: u8) -> Result<u64, String> {
            for i in 0..count {
                self.replica(leader)
                    .propose(vec![i])
                    .map_err(|e| e.to_string())?;
                self.settle()?;
            }
            let applied = self.replica(leader).applied_index();
            assert!(self.replica(leader).compact(applied, Vec::new()).is_some());
            Ok(applied)
        }

        /// Ticks every replica once, then settles.
        fn tick(&mut self) -> Result<(), String> {
            for r in &mut self.replicas {
                r.tick();
            }
            self.settle()
        }

        fn elect(&mut self) -> Result<u64, String> {
            for _ in 0..100 {
                self.tick()?;
                if let Some(l) = self.leader() {
                    return Ok(l);
                }
            }
            Err("no leader".to_owned())
        }
    }

    fn add_learners(ids: &[u64]) -> ConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        cc.changes = ids
            .iter()
            .map(|&id| {
                let mut c = ConfChangeSingle::default();
                c.change_type = ConfChangeType::AddLearnerNode;
                c.node_id = id;
                c
            })
            .collect();
        cc
    }

    /// A leader cut off from its quorum commits nothing; proposals past what it may have in
    /// flight to one follower (`max_append_bytes` × `max_inflight_appends`, 64 MiB here) are
    /// dropped instead of piling up in its log without end.
    #[test]
    fn a_leader_without_a_quorum_stops_taking_proposals_at_the_uncommitted_bound()
    -> Result<(), String> {
        let mut group = Group::new(3);
        let leader = group.elect()?;
        for id in (1..=3).filter(|&id| id != leader) {
            group.isolated.insert(id);
        }
        let chunk = vec![7u8; 1 << 20];
        let mut taken = 0usize;
        for _ in 0..80 {
            if group.replica(leader).propose(chunk.clone()).is_ok() {
                taken += 1;
            }
            group.settle()?;
        }
        assert!(
            (60..=65).contains(&taken),
            "{taken} proposals of 1 MiB taken without a quorum"
        );
        Ok(())
    }

    #[test]
    fn snapshot_keeps_the_conf_state_of_its_index() {
        let mut log = RaftLog::new(HardState::default(), Snapshot::default(), Vec::new());
        let mut at_three = Snapshot::default();
        at_three.mut_metadata().index = 3;
        at_three.mut_metadata().term = 1;
        at_three.mut_metadata().set_conf_state(ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        });
        log.apply_snapshot(at_three);
        log.set_conf_state(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        });
        let sent = log.snapshot(3, 2).expect("the snapshot at 3");
        assert!(sent.get_metadata().get_conf_state().learners.is_empty());
        assert_eq!(
            log.initial_state().expect("in memory").conf_state.learners,
            vec![4]
        );
        assert!(
            log.entries(4, 4, None, GetEntriesContext::empty(false))
                .expect("empty range")
                .is_empty()
        );
    }

    /// Story: a follower that catches up by snapshot was handed the leader's *applied* conf
    /// state under the snapshot's older index, then applied the log's conf changes after that
    /// index again (a joint change applied twice is fatal: "config is already joint").
    #[test]
    fn follower_caught_up_by_snapshot_applies_each_conf_change_once() -> Result<(), String> {
        let mut group = Group::new(3);
        let leader = group.elect()?;
        let behind = (1..=3).find(|&id| id != leader).expect("three voters");
        group.isolated.insert(behind);
        group.commit_and_compact(leader, 5)?;
        // Two learners in one change: a joint change, left automatically.
        group
            .replica(leader)
            .propose_conf_change(add_learners(&[4, 5]))
            .map_err(|e| e.to_string())?;
        group.settle()?;
        for _ in 0..10 {
            group.tick()?;
        }
        assert_eq!(group.replica(leader).conf_state().learners, vec![4, 5]);
        group.isolated.clear();
        for _ in 0..20 {
            group.tick()?;
        }
        let caught_up = group.replica(behind);
        assert!(caught_up.first_log_index() > 2, "it caught up by snapshot");
        assert_eq!(caught_up.conf_state().learners, vec![4, 5]);
        assert!(caught_up.conf_state().voters_outgoing.is_empty());
        Ok(())
    }

    /// Story: a learner added after the leader's last compaction asked for a snapshot, and the
    /// only one held predates it; raft-rs refuses a snapshot that does not name it, so the
    /// leader offers one taken at its applied index and the learner catches up from it.
    #[test]
    fn learner_added_after_compaction_catches_up_by_an_outgoing_snapshot() -> Result<(), String> {
        let mut group = Group::new(3);
        let leader = group.elect()?;
        let applied = group.commit_and_compact(leader, 5)?;
        group.add_empty(4);
        group
            .replica(leader)
            .propose_conf_change(add_learners(&[4]))
            .map_err(|e| e.to_string())?;
        for _ in 0..20 {
            group.tick()?;
        }
        let last = group.replica(leader).last_log_index();
        let base = group.replica(leader).first_log_index();
        assert_eq!(base, applied + 1, "the leader's log keeps its base");
        let learner = group.replica(4);
        assert_eq!(learner.conf_state().learners, vec![4]);
        assert!(
            learner.first_log_index() > applied + 1,
            "from the outgoing snapshot"
        );
        assert_eq!(learner.applied_index(), last);
        Ok(())
    }
}
