//! A deterministic multi-node harness for the core (feature `testing`).
//!
//! Several [`Node`]s, a virtual clock, and a network that can drop, delay, duplicate and
//! reorder messages, partition and heal; crash a node (losing every batch it had not made
//! durable) and restart it through [`Node::recover`]. Everything is driven from one seed, and
//! every output feeds a running digest, so two runs of one seed can be compared exactly.
//!
//! Modelled on raft-rs's test `Network` (`drop`, `isolate`, `recover`) and TigerBeetle's VOPR:
//! the harness follows the node's drain contract to the letter and checks invariants after
//! every step. [`Cluster::new_recorded`] runs every node behind a flight recorder
//! ([`crate::recording`]), so tests can replay what each node lived through.
//!
//! ```text
//!   step(): next event = min(message delivery, fsync completion, node timers)
//!           ─▶ handle(now, input) ─▶ drain outputs ─▶ network / disk / events
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::crypto::{Hash32, JoinSecret, PublicKey, SecretKey};
use crate::durable::{DurableState, PersistBatch};
use crate::identity::AdmissionSecrets;
use crate::ledger::{Addrs, MemberId, MemberSpec, TokenRecord};
use crate::namespace::join::{JoinFailure as NamespaceJoinFailure, ReadyReport};
use crate::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
use crate::node::{Event, Input, LocalCommand, Node, NodeSetup, Output, PeerId};
use crate::recording::{NodeStart, Recorder, RecorderOptions, ReplaySecrets};
use crate::rng::{NodeSeed, SeededRng};
use crate::time::{Instant, Now};
use crate::token::{ClusterPin, JoinToken, Role};
use crate::wire;

mod queue;

/// Network faults, as probabilities and delays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a message is dropped.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Smallest one-way delay.
    pub min_delay_ms: u64,
    /// Largest one-way delay (messages reorder within the window).
    pub max_delay_ms: u64,
    /// Time from `Persist` to `Persisted` (an fsync).
    pub fsync_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            min_delay_ms: 1,
            max_delay_ms: 1,
            fsync_ms: 0,
        }
    }
}

/// Wall-clock of the harness's epoch (2023-11-14), so tokens have realistic expiries.
pub const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;

#[derive(Debug)]
enum Pending {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Persisted {
        node: usize,
        boot: u64,
        batch: Box<PersistBatch>,
    },
}

/// One simulated machine.
#[derive(Debug)]
pub struct SimNode {
    /// The running node, `None` while crashed.
    pub node: Option<Node>,
    /// What survived on disk.
    pub disk: DurableState,
    /// The node's key (kept by its operator across restarts).
    key_bytes: [u8; 32],
    secrets: Option<(SecretKey, JoinSecret)>,
    seed: u64,
    boot: u64,
    /// Events this node emitted, in order.
    pub events: Vec<Event>,
    /// The flight recorder of the running node (clusters made with [`Cluster::new_recorded`]).
    recorder: Option<Recorder>,
    /// One recording file's bytes per life of the node (index = boot number).
    pub recordings: Vec<Vec<u8>>,
}

impl SimNode {
    /// The node's public key.
    pub fn node_key(&self) -> PublicKey {
        SecretKey::from_secret_bytes(&self.key_bytes).public()
    }

    fn setup(&self, config: &Config) -> NodeSetup {
        NodeSetup {
            config: config.clone(),
            seed: NodeSeed::from_u64(self.seed ^ self.boot.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            node_key: SecretKey::from_secret_bytes(&self.key_bytes),
            secrets: self.secrets.as_ref().map(|(k, s)| AdmissionSecrets {
                cluster_key: k.clone(),
                join_secret: s.clone(),
            }),
        }
    }

    /// This node's member id, if admitted.
    pub fn member_id(&self) -> Option<MemberId> {
        self.node.as_ref().and_then(|n| n.member_id())
    }

    fn blank(key_bytes: [u8; 32], secrets: Option<(SecretKey, JoinSecret)>, seed: u64) -> SimNode {
        SimNode {
            node: None,
            disk: DurableState::default(),
            key_bytes,
            secrets,
            seed,
            boot: 0,
            events: Vec::new(),
            recorder: None,
            recordings: Vec::new(),
        }
    }

    fn take_records(&mut self) {
        let (Some(recorder), Some(file)) = (self.recorder.as_mut(), self.recordings.last_mut())
        else {
            return;
        };
        while let Some(record) = recorder.poll_record() {
            file.extend_from_slice(&record);
        }
    }
}

/// The harness.
#[derive(Debug)]
pub struct Cluster {
    /// Configuration shared by every node.
    pub config: Config,
    /// Network faults in force.
    pub faults: Faults,
    /// The machines.
    pub nodes: Vec<SimNode>,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Pending>,
    seq: u64,
    rng: SeededRng,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    /// Live connections (unordered pairs) and their epoch.
    connections: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    trace: Sha256,
    cluster_key: SecretKey,
    join_secret: JoinSecret,
    /// Steps taken.
    pub steps: u64,
    /// Frames nodes sent to external peers: (node, external peer, frame).
    pub external_inbox: Vec<(usize, PeerId, Vec<u8>)>,
    /// Whether outputs feed the trace digest (benchmarks turn it off: hashing every frame
    /// costs more than the protocol).
    pub tracing: bool,
    /// Whether every node runs behind a flight recorder ([`Cluster::new_recorded`]).
    recording: bool,
}

/// Peer ids at or above this are external (test-driven) peers, not harness nodes.
pub const EXTERNAL_PEER_BASE: u64 = 1 << 32;

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn peer(i: usize) -> PeerId {
    PeerId(u64::try_from(i).unwrap_or(u64::MAX))
}

impl Cluster {
    /// A cluster of `founders` voters, all admitting, bootstrapped from `seed`.
    pub fn new(founders: usize, seed: u64, config: Config, faults: Faults) -> Cluster {
        Cluster::build(founders, seed, config, faults, false)
    }

    /// Like [`Cluster::new`], but every node (founders, joiners, restarts) runs behind a
    /// [`Recorder`]; each life's recording is in [`SimNode::recordings`]. A recorded node's
    /// outputs are drained before any is carried out, so a recorded run of a seed schedules
    /// differently from an unrecorded one.
    pub fn new_recorded(founders: usize, seed: u64, config: Config, faults: Faults) -> Cluster {
        Cluster::build(founders, seed, config, faults, true)
    }

    fn build(
        founders: usize,
        seed: u64,
        config: Config,
        faults: Faults,
        recording: bool,
    ) -> Cluster {
        let mut rng = SeededRng::from_u64(seed);
        let cluster_key = SecretKey::generate(&mut rng);
        let join_secret = JoinSecret::generate(&mut rng);
        let mut cluster = Cluster {
            config,
            faults,
            nodes: Vec::new(),
            now: Instant::from_millis(1),
            queue: BTreeMap::new(),
            seq: 0,
            rng,
            blocked: BTreeSet::new(),
            connections: BTreeMap::new(),
            next_epoch: 1,
            trace: Sha256::new(),
            cluster_key,
            join_secret,
            steps: 0,
            external_inbox: Vec::new(),
            tracing: true,
            recording,
        };
        let keys: Vec<[u8; 32]> = (0..founders).map(|_| cluster.rng.bytes32()).collect();
        let specs: Vec<MemberSpec> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| MemberSpec {
                node_key: SecretKey::from_secret_bytes(k).public(),
                role: Role::Member,
                addrs: addrs_of(i),
            })
            .collect();
        for key_bytes in keys {
            let secrets = Some((cluster.cluster_key.clone(), cluster.join_secret.clone()));
            let seed = cluster.rng.r#gen();
            cluster.nodes.push(SimNode::blank(key_bytes, secrets, seed));
            let i = cluster.nodes.len() - 1;
            cluster.start(i, NodeStart::Bootstrap(specs.clone()), false);
        }
        for i in 0..founders {
            cluster.drain(i);
        }
        for a in 0..founders {
            for b in a + 1..founders {
                cluster.connect(a, b);
            }
        }
        cluster
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    fn now_struct(&self) -> Now {
        Now::new(self.now, EPOCH_UNIX_MS + self.now.as_millis())
    }

    /// Wall-clock of now.
    pub fn unix_ms(&self) -> u64 {
        self.now_struct().unix_ms
    }

    /// The cluster's pin.
    pub fn pin(&self) -> ClusterPin {
        ClusterPin::of(&self.cluster_key.public())
    }

    /// A valid token that expires `ttl_ms` from now.
    pub fn issue_token(&mut self, ttl_ms: u64) -> JoinToken {
        let secret = self.join_secret.clone();
        let pin = self.pin();
        let expires = self.unix_ms() + ttl_ms;
        JoinToken::issue_random(&secret, pin, &mut self.rng, expires, Role::Member)
    }

    /// A token signed with another secret (a forgery).
    pub fn forge_token(&mut self, ttl_ms: u64) -> JoinToken {
        let secret = JoinSecret::generate(&mut self.rng);
        let pin = self.pin();
        let expires = self.unix_ms() + ttl_ms;
        JoinToken::issue_random(&secret, pin, &mut self.rng, expires, Role::Member)
    }

    /// A token for another cluster (right secret, wrong pin).
    pub fn wrong_cluster_token(&mut self, ttl_ms: u64) -> JoinToken {
        let secret = self.join_secret.clone();
        let other = ClusterPin(Hash32(self.rng.bytes32()));
        let expires = self.unix_ms() + ttl_ms;
        JoinToken::issue_random(&secret, other, &mut self.rng, expires, Role::Member)
    }

    /// A token that expired `ago_ms` ago (beyond the skew allowance).
    pub fn expired_token(&mut self, ago_ms: u64) -> JoinToken {
        let secret = self.join_secret.clone();
        let pin = self.pin();
        let expires = self.unix_ms().saturating_sub(ago_ms);
        JoinToken::issue_random(&secret, pin, &mut self.rng, expires, Role::Member)
    }

    /// Adds a fresh, non-admitting node connected to `seeds`; returns its index.
    pub fn add_joiner(&mut self, seeds: &[usize]) -> usize {
        let key_bytes = self.rng.bytes32();
        let seed = self.rng.r#gen();
        self.nodes.push(SimNode::blank(key_bytes, None, seed));
        let i = self.nodes.len() - 1;
        self.start(i, NodeStart::Joiner, true);
        for s in seeds {
            self.connect(i, *s);
        }
        i
    }

    // ---- namespaces ----------------------------------------------------------------------------

    /// Adds a standalone node (in no cluster) connected to `connect_to`; it can create and
    /// join namespaces. Returns its index.
    pub fn namespace_node(&mut self, connect_to: &[usize]) -> usize {
        self.add_joiner(connect_to)
    }

    /// Connects nodes `a` and `b` (idempotent).
    pub fn connect_nodes(&mut self, a: usize, b: usize) {
        self.connect(a, b);
    }

    /// Node `i` creates a namespace with `salt` and runs until it is durable
    /// ([`Event::NamespaceCreated`]); returns its id.
    pub fn create_namespace(&mut self, i: usize, salt: [u8; 16]) -> NamespaceId {
        let created = |c: &Cluster| {
            c.nodes[i]
                .events
                .iter()
                .filter(|e| matches!(e, Event::NamespaceCreated { .. }))
                .count()
        };
        let before = created(self);
        self.command(i, LocalCommand::CreateNamespace { salt });
        let fsync_ms = self.faults.fsync_ms;
        self.run_until(fsync_ms.saturating_add(1_000), |c| created(c) > before);
        self.nodes[i]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::NamespaceCreated { namespace, .. } => Some(*namespace),
                _ => None,
            })
            .expect("invariant: CreateNamespace completes once its batch is durable")
    }

    /// Admin node `i` issues a reusable invitation to `ns` valid for `ttl_ms`.
    pub fn invite(&mut self, i: usize, ns: NamespaceId, ttl_ms: u64) -> SignedInvitation {
        let expires_at_unix_ms = self.unix_ms() + ttl_ms;
        self.command(
            i,
            LocalCommand::IssueInvitation {
                namespace: ns,
                expires_at_unix_ms,
                policy: InvitePolicy::Reusable,
            },
        );
        self.nodes[i]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::InvitationIssued(inv) if inv.invitation.namespace == ns => Some(inv.clone()),
                _ => None,
            })
            .expect("invariant: node i administers ns")
    }

    /// Node `i` joins the invitation's namespace within `deadline_ms`.
    pub fn join_namespace(&mut self, i: usize, invitation: SignedInvitation, deadline_ms: u64) {
        self.command(
            i,
            LocalCommand::JoinNamespace {
                invitation,
                deadline_ms,
            },
        );
    }

    /// Node `i` joins with retries, within `max_total_ms`.
    pub fn join_namespace_with_retry(
        &mut self,
        i: usize,
        invitation: SignedInvitation,
        max_total_ms: u64,
    ) {
        self.command(
            i,
            LocalCommand::JoinNamespaceWithRetry {
                invitation,
                max_total_ms,
            },
        );
    }

    /// The report of node `i`'s latest successful join of `ns`.
    pub fn namespace_ready(&self, i: usize, ns: NamespaceId) -> Option<ReadyReport> {
        self.nodes[i].events.iter().rev().find_map(|e| match e {
            Event::NamespaceReady(r) if r.namespace == ns => Some(r.clone()),
            _ => None,
        })
    }

    /// Node `i`'s latest failed join of `ns`.
    pub fn namespace_join_failure(
        &self,
        i: usize,
        ns: NamespaceId,
    ) -> Option<NamespaceJoinFailure> {
        self.nodes[i].events.iter().rev().find_map(|e| match e {
            Event::NamespaceJoinFailed(f) if f.report.namespace == ns => Some(f.clone()),
            _ => None,
        })
    }

    /// The heads of node `i`'s replica of `ns`: the parents a new op there names. Panics if
    /// node `i` is down or does not hold `ns` (a test asking is wrong).
    pub fn namespace_heads(&self, i: usize, ns: NamespaceId) -> Vec<crate::namespace::ops::OpHash> {
        self.nodes[i]
            .node
            .as_ref()
            .and_then(|n| n.namespace(&ns))
            .map(|g| g.heads())
            .expect("the test names a live node that holds the namespace")
    }

    /// Whether node `i` (live) counts `member` as a member of `ns`.
    pub fn namespace_has_member(&self, i: usize, ns: NamespaceId, member: &PublicKey) -> bool {
        self.nodes[i]
            .node
            .as_ref()
            .and_then(|n| n.namespace(&ns))
            .is_some_and(|g| g.is_member(member))
    }

    /// Node `i`'s identity key in `ns`.
    pub fn namespace_identity(&self, i: usize, ns: NamespaceId) -> Option<PublicKey> {
        self.nodes[i]
            .node
            .as_ref()
            .and_then(|n| n.namespace_identity(&ns))
    }

    /// Tells node `i` to join with `token` through `seeds`.
    pub fn join(&mut self, i: usize, token: JoinToken, seeds: &[usize]) {
        let addrs = addrs_of(i);
        self.input(
            i,
            Input::Command(LocalCommand::JoinCluster {
                token,
                seeds: seeds.iter().map(|s| peer(*s)).collect(),
                addrs,
            }),
        );
    }

    /// Hands node `i`'s join under way more seeds ([`LocalCommand::AddJoinSeeds`]).
    pub fn add_join_seeds(&mut self, i: usize, seeds: &[usize]) {
        let seeds = seeds.iter().map(|s| peer(*s)).collect();
        self.input(i, Input::Command(LocalCommand::AddJoinSeeds { seeds }));
    }

    /// Sends a local command to node `i`.
    pub fn command(&mut self, i: usize, command: LocalCommand) {
        self.input(i, Input::Command(command));
    }

    fn connect(&mut self, a: usize, b: usize) {
        if a == b
            || self.connections.contains_key(&pair(a, b))
            || self.nodes[a].node.is_none()
            || self.nodes[b].node.is_none()
        {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.connections.insert(pair(a, b), epoch);
        let binding = Hash32::of(&[
            b"harness-binding",
            &(pair(a, b).0 as u64).to_le_bytes(),
            &(pair(a, b).1 as u64).to_le_bytes(),
            &epoch.to_le_bytes(),
        ]);
        let (ka, kb) = (self.nodes[a].node_key(), self.nodes[b].node_key());
        self.input(
            a,
            Input::Connected {
                peer: peer(b),
                node_key: kb,
                binding,
            },
        );
        self.input(
            b,
            Input::Connected {
                peer: peer(a),
                node_key: ka,
                binding,
            },
        );
    }

    /// Builds node `i`. Construction outputs are carried out at once when `carry_out`, else
    /// left in the node for a later [`Cluster::drain`]; a recorded node's are always carried
    /// out at once (its recorder has drained them already).
    fn start(&mut self, i: usize, start: NodeStart, carry_out: bool) {
        let setup = self.nodes[i].setup(&self.config);
        let now = self.now_struct();
        if !self.recording {
            let node = match start {
                NodeStart::Bootstrap(specs) => Node::bootstrap(setup, now, &specs),
                NodeStart::Joiner => Node::new_joiner(setup, now),
                NodeStart::Recover(durable) => Node::recover(setup, now, *durable),
            }
            .expect("invariant: harness nodes are valid and recover from their own disk");
            self.nodes[i].node = Some(node);
            if carry_out {
                self.drain(i);
            }
            return;
        }
        let (node, recorder, outputs) =
            Recorder::start_node(setup, now, start, RecorderOptions::default())
                .expect("invariant: harness nodes are valid and recover from their own disk");
        let sim = &mut self.nodes[i];
        sim.node = Some(node);
        sim.recordings.push(recorder.header_bytes().to_vec());
        sim.recorder = Some(recorder);
        sim.take_records();
        // A recorder drains at once; outputs wait here like they would in the node's queue.
        for output in outputs {
            self.carry_out(i, output);
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now_struct();
        let sim = &mut self.nodes[i];
        if let (Some(recorder), Some(node)) = (sim.recorder.as_mut(), sim.node.as_mut()) {
            let outputs = recorder.handle(node, now, input);
            sim.take_records();
            for output in outputs {
                self.carry_out(i, output);
            }
            return;
        }
        if let Some(node) = sim.node.as_mut() {
            node.handle(now, input);
        }
        self.drain(i);
    }

    /// Carries out every output of node `i`, per the drain contract.
    fn drain(&mut self, i: usize) {
        while let Some(output) = self.nodes[i].node.as_mut().and_then(|n| n.poll_output()) {
            self.carry_out(i, output);
        }
    }

    fn carry_out(&mut self, i: usize, output: Output) {
        {
            if self.tracing {
                self.trace_output(i, &output);
            }
            match output {
                Output::Transmit { to, bytes } => {
                    if to.0 >= EXTERNAL_PEER_BASE {
                        self.external_inbox.push((i, to, bytes));
                        return;
                    }
                    let to = usize::try_from(to.0).unwrap_or(usize::MAX);
                    self.send(i, to, bytes);
                }
                Output::Persist(batch) => {
                    let at = self.now.saturating_add_ms(self.faults.fsync_ms);
                    let boot = self.nodes[i].boot;
                    self.schedule(
                        at,
                        Pending::Persisted {
                            node: i,
                            boot,
                            batch: Box::new(batch),
                        },
                    );
                }
                Output::Connect { node_key, .. } => {
                    if let Some(j) = self.nodes.iter().position(|n| n.node_key() == node_key) {
                        self.connect(i, j);
                    }
                }
                Output::Event(event) => {
                    self.nodes[i].events.push(event);
                }
            }
        }
    }

    fn trace_output(&mut self, i: usize, output: &Output) {
        self.trace.update((i as u64).to_le_bytes());
        self.trace.update(self.now.as_nanos().to_le_bytes());
        match output {
            Output::Transmit { to, bytes } => {
                self.trace.update(b"T");
                self.trace.update(to.0.to_le_bytes());
                self.trace.update(bytes);
            }
            Output::Persist(batch) => {
                self.trace.update(b"P");
                self.trace.update(wire::encode(batch));
            }
            Output::Connect { node_key, .. } => {
                self.trace.update(b"C");
                self.trace.update(node_key.0);
            }
            Output::Event(event) => {
                self.trace.update(b"E");
                self.trace.update(format!("{event:?}").as_bytes());
            }
        }
    }

    fn schedule(&mut self, at: Instant, p: Pending) {
        self.seq += 1;
        self.queue.insert((at, self.seq), p);
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if to >= self.nodes.len() || self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.gen_bool(self.faults.loss.clamp(0.0, 1.0)) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(
                self.faults.min_delay_ms..=self.faults.max_delay_ms.max(self.faults.min_delay_ms),
            );
            let at = self.now.saturating_add_ms(delay);
            self.schedule(
                at,
                Pending::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// The time of the next thing that will happen.
    fn next_event_at(&self) -> Option<Instant> {
        let queued = self.queue.keys().next().map(|(t, _)| *t);
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref().and_then(|n| n.poll_timeout()))
            .min();
        match (queued, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs until virtual time `until` (or nothing is left to do).
    pub fn run_until_time(&mut self, until: Instant) {
        while let Some(t) = self.next_event_at() {
            if t > until {
                break;
            }
            self.step_at(t);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now.saturating_add_ms(ms);
        self.run_until_time(until);
    }

    /// Runs until `done` holds (checked after every step), for at most `max_ms`. Returns
    /// whether it held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let until = self.now.saturating_add_ms(max_ms);
        while !done(self) {
            match self.next_event_at() {
                Some(t) if t <= until => self.step_at(t),
                _ => {
                    self.now = self.now.max(until);
                    return done(self);
                }
            }
        }
        true
    }

    fn step_at(&mut self, t: Instant) {
        self.now = self.now.max(t);
        self.steps += 1;
        // Everything queued for now, in (time, sequence) order.
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            match entry.remove() {
                Pending::Deliver { from, to, bytes } => {
                    if self.nodes[to].node.is_some()
                        && self.connections.contains_key(&pair(from, to))
                    {
                        self.input(
                            to,
                            Input::Received {
                                from: peer(from),
                                bytes,
                            },
                        );
                    }
                }
                Pending::Persisted { node, boot, batch } => {
                    // A batch of an earlier life of the node died with it.
                    if self.nodes[node].boot == boot && self.nodes[node].node.is_some() {
                        self.nodes[node].disk.apply_batch(&batch);
                        self.input(node, Input::Persisted(batch.number));
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            let due = self.nodes[i]
                .node
                .as_ref()
                .and_then(|n| n.poll_timeout())
                .is_some_and(|t| t <= self.now);
            if due {
                self.input(i, Input::Timer);
            }
        }
    }

    /// Connects an external peer (a test acting as a client) to node `i`, authenticated as
    /// `node_key` with `binding`. Its frames go through [`Cluster::inject`]; replies land in
    /// [`Cluster::external_inbox`].
    pub fn connect_external(
        &mut self,
        i: usize,
        external: u64,
        node_key: PublicKey,
        binding: Hash32,
    ) -> PeerId {
        let p = PeerId(EXTERNAL_PEER_BASE + external);
        self.input(
            i,
            Input::Connected {
                peer: p,
                node_key,
                binding,
            },
        );
        p
    }

    /// Delivers a frame from an external peer to node `i` now.
    pub fn inject(&mut self, i: usize, from: PeerId, bytes: Vec<u8>) {
        self.input(i, Input::Received { from, bytes });
    }

    // ---- faults ------------------------------------------------------------------------------

    /// Crashes node `i`: it stops, and every batch it had not made durable is lost.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].node = None;
        self.nodes[i].recorder = None;
        self.nodes[i].boot += 1;
        let gone: Vec<(usize, usize)> = self
            .connections
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for p in gone {
            self.connections.remove(&p);
            let other = if p.0 == i { p.1 } else { p.0 };
            self.input(other, Input::Disconnected { peer: peer(i) });
        }
    }

    /// Restarts a crashed node from its disk, reconnecting it to every live node.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].node.is_none(), "kill before restart");
        let disk = Box::new(self.nodes[i].disk.clone());
        self.start(i, NodeStart::Recover(disk), true);
        for j in 0..self.nodes.len() {
            if j != i && self.nodes[j].node.is_some() {
                self.connect(i, j);
            }
        }
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                self.blocked.insert((*x, *y));
                self.blocked.insert((*y, *x));
            }
        }
    }

    /// Cuts node `i` off from everyone.
    pub fn isolate(&mut self, i: usize) {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != i).collect();
        self.partition(&[i], &others);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    // ---- observations ------------------------------------------------------------------------

    /// The node index that leads (the highest-term leader among live nodes).
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.node
                    .as_ref()
                    .filter(|n| n.is_leader())
                    .map(|n| (n.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// A digest of every output so far.
    pub fn trace_digest(&self) -> Hash32 {
        Hash32(self.trace.clone().finalize().into())
    }

    /// `(applied index, ledger digest)` of every live member.
    pub fn ledger_digests(&self) -> Vec<(usize, u64, Hash32)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let node = n.node.as_ref()?;
                node.member_id()?;
                Some((i, node.ledger().applied_index(), node.ledger().digest()))
            })
            .collect()
    }

    /// Whether the given nodes have applied the same index with the same digest.
    pub fn converged(&self, nodes: &[usize]) -> bool {
        // Cheap first: equal applied indices (digests encode whole ledgers).
        let indices: BTreeSet<Option<u64>> = nodes
            .iter()
            .map(|i| {
                self.nodes[*i]
                    .node
                    .as_ref()
                    .map(|n| n.ledger().applied_index())
            })
            .collect();
        if indices.len() != 1 || indices.contains(&None) {
            return false;
        }
        let digests: BTreeSet<(u64, Hash32)> = nodes
            .iter()
            .filter_map(|i| {
                let n = self.nodes[*i].node.as_ref()?;
                Some((n.ledger().applied_index(), n.ledger().digest()))
            })
            .collect();
        digests.len() == 1 && nodes.iter().all(|i| self.nodes[*i].node.is_some())
    }

    /// Node `i`'s ledger record of `token` (`None` if the node is down or has none).
    pub fn token_record(&self, i: usize, token: &crate::token::TokenHash) -> Option<TokenRecord> {
        self.nodes[i].node.as_ref()?.ledger().record(token).copied()
    }

    /// The member id node `i` was admitted as, per its own events.
    pub fn admitted(&self, i: usize) -> Option<MemberId> {
        self.nodes[i].events.iter().find_map(|e| match e {
            Event::JoinAdmitted { member_id } => Some(*member_id),
            _ => None,
        })
    }

    /// How node `i`'s join failed, per its own events.
    pub fn join_failure(&self, i: usize) -> Option<crate::admission::JoinFailure> {
        self.nodes[i].events.iter().find_map(|e| match e {
            Event::JoinFailed(f) => Some(f.clone()),
            _ => None,
        })
    }

    /// Events of node `i`.
    pub fn events(&self, i: usize) -> &[Event] {
        &self.nodes[i].events
    }

    /// Queued deliveries (for assertions that a run went quiet).
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Drops every queued message (a harsh network event).
    pub fn drop_in_flight(&mut self) {
        self.queue
            .retain(|_, p| matches!(p, Pending::Persisted { .. }));
    }

    /// Joiners waiting for an answer.
    pub fn pending_joins(&self) -> VecDeque<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].secrets.is_none()
                    && self.admitted(*i).is_none()
                    && self.join_failure(*i).is_none()
            })
            .collect()
    }

    /// Everything replaying node `i`'s recording of life `boot` needs: its key and seed, the
    /// cluster's secrets (the join secret too for a joiner, as its operator has it) and the
    /// namespace identity keys on its disk.
    pub fn replay_secrets(&self, i: usize, boot: u64) -> ReplaySecrets {
        let sim = &self.nodes[i];
        ReplaySecrets {
            node_key: Some(SecretKey::from_secret_bytes(&sim.key_bytes)),
            admission: sim.secrets.as_ref().map(|(k, s)| AdmissionSecrets {
                cluster_key: k.clone(),
                join_secret: s.clone(),
            }),
            join_secret: Some(self.join_secret.clone()),
            seed: Some(NodeSeed::from_u64(
                sim.seed ^ boot.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            namespace_keys: sim
                .disk
                .namespaces
                .values()
                .filter_map(|ns| ns.identity.as_ref().map(|s| s.key()))
                .collect(),
        }
    }

    /// The cluster's cluster key and join secret, as its operator holds them.
    pub fn admission_secrets(&self) -> AdmissionSecrets {
        AdmissionSecrets {
            cluster_key: self.cluster_key.clone(),
            join_secret: self.join_secret.clone(),
        }
    }

    /// Node `i`'s secret key bytes (tests search recordings for them).
    pub fn node_secret_bytes(&self, i: usize) -> [u8; 32] {
        self.nodes[i].key_bytes
    }
}

/// The default configuration with namespace timers shortened for harness runs (beacons every
/// second, quick probes, backfill silence and announce retries, a 2 s ack wait and retry
/// backoff): joins finish in simulated milliseconds and faults show within seconds.
pub fn quick_namespace_config() -> Config {
    Config {
        namespace: crate::namespace::NamespaceConfig {
            beacon_interval_ms: 1_000,
            beacon_ttl_ms: 3_000,
            probe_answer_interval_ms: 300,
            probe_retry_ms: 200,
            backfill_silence_ms: 300,
            announce_retry_ms: 300,
            subscriptions_refresh_ms: 500,
            ack_wait_ms: 2_000,
            retry_initial_ms: 500,
            retry_max_ms: 2_000,
            ..crate::namespace::NamespaceConfig::default()
        },
        ..Config::default()
    }
}

/// The advertised address of harness node `i`.
pub fn addrs_of(i: usize) -> Addrs {
    let mut addrs = Addrs::new();
    if let Ok(a) = crate::wire::BoundedString::try_new(format!("node-{i}")) {
        let _ = addrs.try_push(a);
    }
    addrs
}
