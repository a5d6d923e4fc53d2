//! The simulated world: every node's slot, connections, the fault layer, disks, trace and
//! checkers, shared by the madsim tasks of one seed.
//!
//! One `World` lives behind a mutex that every task of the seed locks for short, non-async
//! critical sections (madsim runs all of them on one thread, so the lock is never contended;
//! it exists because madsim's node factories must be `Send + Sync`). A node's core is only
//! ever driven by that node's own driver task; other parties (the supervisor, peers) reach it
//! through its bounded inbox and wake the driver.
//!
//! ```text
//!   supervisor (madsim main) ── crash / restart / partition / workload actions ──┐
//!   pipe tasks of node i ── arrivals (partition, clog, epoch checks) ────┐        │
//!                                                                      ▼        ▼
//!                                              inbox[i] (Datagram | Control(Input)) ─ wake ─┐
//!   driver task of node i: step(i) = inbox → handle; fsyncs due → Persisted; timer due → Timer│
//!        after every handle: drain poll_output() ─▶ Transmit → fault layer → madsim pipe     │
//!                                                 ─▶ Persist → disk queue (fsync later)      │
//!                                                 ─▶ Connect → connection (Connected ×2)     │
//!                                                 ─▶ Event → facts + checkers                │
//!        end of step: observe replica → checkers ◀────────────────────────────────────────┘
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::runtime::Handle;
use portcullis_core::admission::JoinFailure;
use portcullis_core::config::Config;
use portcullis_core::crypto::{Hash32, JoinSecret, PublicKey, SecretKey};
use portcullis_core::durable::PersistBatch;
use portcullis_core::identity::AdmissionSecrets;
use portcullis_core::ledger::{Addrs, Command, LogEntry, MemberSpec, TokenState};
use portcullis_core::messages::PeerMessage;
use portcullis_core::node::{Event, Input, LocalCommand, Node, NodeSetup, Output, PeerId};
use portcullis_core::replication::raft_wire::{EntryPayload, EntryWire};
use portcullis_core::rng::{NodeSeed, SeededRng};
use portcullis_core::time::{Instant, Now};
use portcullis_core::token::{ClusterPin, Role};
use portcullis_core::wire::{self, BoundedString, Envelope, Limits, MessageKind};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

use crate::check::model::{LogChecker, SpecLedger, encoded_fingerprint, state_fingerprint};
use crate::check::{Checker, ReplicaView, Violation, default_checkers};
use crate::describe;
use crate::disk::{Completed, SimDisk, Submitted};
use crate::facts::{EPOCH_UNIX_MS, Facts, OpOutcome, Presentation, Revocation};
use crate::net::{Arrival, Datagram, NetChange, Network};
use crate::options::{Canary, Options};
use crate::report::{Failure, FailureKind};
use crate::timing::{CoreTiming, Region, enter};
use crate::trace::{Trace, TraceLevel, slot_name};
use crate::workload::{Action, AdmissionWorkload, Workload};

/// The world of one seed, shared by its tasks.
mod namespaces;

pub(crate) use namespaces::NsWork;

pub(crate) type Shared = Arc<Mutex<World>>;

/// Locks the world. A panic inside a core call poisons the mutex; the report still needs the
/// world afterwards, and nothing is half-updated in a way that matters to reporting.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, World> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The port every node's endpoint binds.
const PORT: u16 = 7_000;

/// Most datagrams waiting in one node's inbox; beyond it arrivals are dropped (a full socket
/// buffer). Control inputs are never dropped.
pub(crate) const MAX_INBOX_DATAGRAMS: usize = 8_192;

/// Simulated address of slot `i`.
pub(crate) fn addr_of(i: usize) -> SocketAddr {
    let raw = 0x0a00_0001u32.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(raw)), PORT)
}

/// Advertised address of slot `i`.
fn addrs_of(i: usize) -> Addrs {
    let mut addrs = Addrs::new();
    if let Ok(a) = BoundedString::try_new(addr_of(i).to_string()) {
        let _ = addrs.try_push(a);
    }
    addrs
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn peer(i: usize) -> PeerId {
    PeerId(i as u64)
}

/// What reaches a node's driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A datagram that passed the fault layer.
    Datagram(Datagram),
    /// A new connection to `peer` (connection `epoch`); its `Input::Connected`.
    Connected {
        peer: usize,
        epoch: u64,
        input: Input,
    },
    /// The connection to `peer` closed; its `Input::Disconnected`.
    Disconnected { peer: usize, input: Input },
    /// Any other input from the world (commands).
    Control(Input),
}

/// A datagram waiting in its sender's queue for its delay to pass.
#[derive(Debug)]
pub(crate) struct QueuedSend {
    pub due: Instant,
    /// Order among sends due at the same instant: the order they were made.
    seq: u64,
    pub to: usize,
    pub dg: Datagram,
}

impl PartialEq for QueuedSend {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for QueuedSend {}

impl PartialOrd for QueuedSend {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QueuedSend {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Founder or joiner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotRole {
    Founder,
    Joiner,
}

/// The run's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Faults on, workload running.
    Safety,
    /// Core healed, no crashes; waiting for every presentation to finish and replicas to converge.
    Liveness {
        /// When the liveness phase started.
        since: Instant,
    },
    /// Over.
    Done,
}

/// One simulated machine.
pub(crate) struct Slot {
    pub role: SlotRole,
    /// The node key (derived once: deriving the public half is a scalar multiplication).
    secret: SecretKey,
    pub key: PublicKey,
    core_seed: u64,
    /// Incarnations booted so far.
    pub boot: u64,
    /// The madsim node exists.
    pub started: bool,
    /// The madsim node is alive (not killed); its driver boots or runs.
    pub running: bool,
    /// The core is up (booted, not crashed).
    pub up: bool,
    /// The next boot is a fresh install (first boot, or after the disk was wiped).
    fresh: bool,
    pub node: Option<Node>,
    pub disk: SimDisk,
    inbox: VecDeque<Inbound>,
    datagrams_queued: usize,
    /// Datagrams this node has sent that leave its endpoint when their delay is up, earliest
    /// first (a crash loses them, as it loses a real host's send buffers).
    sends: BinaryHeap<Reverse<QueuedSend>>,
    waker: Option<Waker>,
    ep: Option<Endpoint>,
    pub skew_ms: i64,
    madsim_id: Option<madsim::task::NodeId>,
    pub down_until: Option<Instant>,
    /// Peers to reconnect to after a restart.
    known: BTreeSet<usize>,
    /// The connection (epoch) this node's core uses for each peer: what it was last told by
    /// `Connected`. Frames are sent on it; a frame on a connection that has since closed is
    /// lost, as on a real transport.
    views: BTreeMap<usize, u64>,
    last_applied: u64,
    scanned_commit: u64,
    /// The presentation in progress.
    pub open_op: Option<usize>,
    /// The application still wants to present its token.
    wants_join: bool,
    /// It has been handed its late seeds (`JoinerFacts::late_seeds`): every join uses them.
    late_seeds_given: bool,
    /// The presentation they were handed to by `AddJoinSeeds`, until it asks one of them.
    late_seeds_op: Option<usize>,
    /// A crash the supervisor carries out at its first tick from then (crash-on-write).
    crash_at: Option<Instant>,
}

impl core::fmt::Debug for Slot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slot")
            .field("role", &self.role)
            .field("boot", &self.boot)
            .field("up", &self.up)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Slot {
    fn new(role: SlotRole, secret: SecretKey, core_seed: u64, skew_ms: i64) -> Slot {
        Slot {
            role,
            key: secret.public(),
            secret,
            core_seed,
            boot: 0,
            started: false,
            running: false,
            up: false,
            fresh: true,
            node: None,
            disk: SimDisk::default(),
            inbox: VecDeque::new(),
            datagrams_queued: 0,
            sends: BinaryHeap::new(),
            waker: None,
            ep: None,
            skew_ms,
            madsim_id: None,
            down_until: None,
            known: BTreeSet::new(),
            views: BTreeMap::new(),
            last_applied: 0,
            scanned_commit: 0,
            open_op: None,
            wants_join: false,
            late_seeds_given: false,
            late_seeds_op: None,
            crash_at: None,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether this slot's core is a member (has a replica).
    pub(crate) fn is_member(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.member_id().is_some())
    }
}

/// The world of one seed.
pub(crate) struct World {
    pub seed: u64,
    pub opts: Options,
    pub config: Config,
    founders: Vec<MemberSpec>,
    secrets: AdmissionSecrets,
    pub slots: Vec<Slot>,
    by_key: BTreeMap<PublicKey, usize>,
    conns: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    /// Orders queued sends that fall due at the same instant.
    next_send_seq: u64,
    pub net: Network,
    /// Every fault decision (and nothing else) draws from here.
    rng: SeededRng,
    pub trace: Trace,
    pub facts: Facts,
    pub log: LogChecker,
    checkers: Vec<Box<dyn Checker>>,
    pub failure: Option<Failure>,
    pub phase: Phase,
    /// Founders healed in the liveness phase.
    pub core_set: BTreeSet<usize>,
    pub timing: Option<CoreTiming>,
    workload: Option<Box<dyn Workload>>,
    limits: Limits,
    /// Simulated time of the last supervisor tick (the run's length).
    pub last_tick: Instant,
    /// Highest committed index the lease nemesis has looked at.
    nemesis_index: u64,
    /// Record the first failure but keep simulating (benchmarks measure whole runs).
    pub keep_going: bool,
    /// The namespace workload and what it observed.
    pub ns: NsWork,
    /// The first state fingerprint observed at each applied index, and whose replica it was.
    first_states: BTreeMap<u64, (u64, usize)>,
    /// The run's madsim clock, fetched once: looking it up per call was a measurable share
    /// of the simulator's own time.
    clock: std::sync::OnceLock<madsim::time::TimeHandle>,
    /// Counts this world in [`live_worlds`] until it is dropped.
    _alive: Alive,
}

/// Worlds not yet dropped in this process.
static LIVE_WORLDS: AtomicUsize = AtomicUsize::new(0);

/// How many seeds' worlds are alive in this process. Once a run has returned its report, its
/// world must be gone: a world that outlives its run is a leak that grows with every seed.
pub fn live_worlds() -> usize {
    LIVE_WORLDS.load(Ordering::SeqCst)
}

/// One count in [`LIVE_WORLDS`], held by a world for its lifetime.
struct Alive;

impl Alive {
    fn new() -> Alive {
        LIVE_WORLDS.fetch_add(1, Ordering::SeqCst);
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        LIVE_WORLDS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl core::fmt::Debug for World {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("slots", &self.slots.len())
            .field("phase", &self.phase)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// The core configuration a run uses.
fn core_config(opts: &Options, canary: Option<Canary>) -> Config {
    #[cfg_attr(not(feature = "canaries"), allow(unused_mut))]
    let mut config = Config {
        admission_lease_ms: opts.admission_lease_ms,
        compact_after_entries: opts.compact_after_entries,
        join_deadline_ms: opts.join_deadline_ms,
        ..Config::default()
    };
    #[cfg(feature = "canaries")]
    {
        use portcullis_core::config::Canary as Planted;
        config.ledger.canary = match canary {
            None => Planted::None,
            Some(Canary::RegisterOverwrites) => Planted::RegisterOverwrites,
            Some(Canary::RevertIgnoresLease) => Planted::RevertIgnoresLease,
            Some(Canary::SkipBeginInFlight) => Planted::SkipBeginInFlight,
            Some(Canary::JoinIgnoresDeadline) => Planted::JoinIgnoresDeadline,
            Some(Canary::VouchBeforeDurable) => Planted::VouchBeforeDurable,
        };
    }
    // Without the feature a canary cannot be built in; `run_seed` refuses such a run first.
    #[cfg(not(feature = "canaries"))]
    let _ = canary;
    config
}

/// Current simulated time since the run started.
pub(crate) fn sim_now() -> Instant {
    let elapsed = madsim::time::TimeHandle::current().elapsed();
    Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
}

impl World {
    /// Draws everything of `seed`: keys, secrets, skews, the core set and the workload plan.
    pub(crate) fn new(
        seed: u64,
        opts: &Options,
        level: TraceLevel,
        time_core: bool,
        canary: Option<Canary>,
    ) -> World {
        let root = SeededRng::from_u64(seed);
        let mut keys = root.child("keys");
        let mut cores = root.child("cores");
        let mut clocks = root.child("clocks");
        let mut plan_rng = root.child("workload");
        let ns_rng = root.child("namespaces");
        let cluster_key = SecretKey::generate(&mut keys);
        let join_secret = JoinSecret::generate(&mut keys);
        let pin = ClusterPin::of(&cluster_key.public());
        let secrets = AdmissionSecrets {
            cluster_key,
            join_secret: join_secret.clone(),
        };
        let config = core_config(opts, canary);
        let skew = |rng: &mut SeededRng| {
            let max = i64::try_from(opts.max_skew_ms).unwrap_or(i64::MAX);
            if max == 0 {
                0
            } else {
                rng.gen_range(-max..=max)
            }
        };
        let mut slots: Vec<Slot> = (0..opts.founders)
            .map(|_| {
                Slot::new(
                    SlotRole::Founder,
                    SecretKey::from_secret_bytes(&keys.bytes32()),
                    cores.next_u64(),
                    skew(&mut clocks),
                )
            })
            .collect();
        let founders: Vec<MemberSpec> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| MemberSpec {
                node_key: s.key,
                role: Role::Member,
                addrs: addrs_of(i),
            })
            .collect();
        let mut all: Vec<usize> = (0..opts.founders).collect();
        all.shuffle(&mut plan_rng);
        let core_set: BTreeSet<usize> = all[..opts.core_size.min(all.len())]
            .iter()
            .copied()
            .collect();
        let mut facts = Facts {
            max_skew_ms: opts.max_skew_ms,
            ..Facts::default()
        };
        let planned = AdmissionWorkload::plan(
            &mut plan_rng,
            &mut keys,
            opts,
            &join_secret,
            pin,
            &core_set,
            &mut facts,
        );
        for secret in planned.joiner_keys {
            slots.push(Slot::new(
                SlotRole::Joiner,
                secret,
                cores.next_u64(),
                skew(&mut clocks),
            ));
        }
        let by_key = slots.iter().enumerate().map(|(i, s)| (s.key, i)).collect();
        let core_set_for_ns = core_set.clone();
        let log = LogChecker::new(SpecLedger::bootstrap(config.ledger.clone(), &founders));
        let grace_ms = config.ledger.record_grace_ms;
        World {
            seed,
            opts: opts.clone(),
            limits: config.limits(),
            config,
            founders,
            secrets,
            slots,
            by_key,
            conns: BTreeMap::new(),
            next_epoch: 1,
            next_send_seq: 0,
            net: Network::new(opts),
            rng: root.child("faults"),
            trace: Trace::new(level, opts.founders),
            facts,
            log,
            checkers: default_checkers(grace_ms),
            failure: None,
            phase: Phase::Safety,
            core_set,
            timing: time_core.then(CoreTiming::default),
            workload: Some(Box::new(planned.workload)),
            last_tick: Instant::ZERO,
            nemesis_index: 0,
            keep_going: false,
            ns: NsWork::plan(ns_rng, opts, &core_set_for_ns),
            first_states: BTreeMap::new(),
            clock: std::sync::OnceLock::new(),
            _alive: Alive::new(),
        }
    }

    /// Current simulated time since the run started (as [`sim_now`], from the cached clock).
    pub(crate) fn now(&self) -> Instant {
        let elapsed = self
            .clock
            .get_or_init(madsim::time::TimeHandle::current)
            .elapsed();
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Whether the run stopped (a failure, or the end).
    pub(crate) fn stopped(&self) -> bool {
        (self.failure.is_some() && !self.keep_going) || self.phase == Phase::Done
    }

    fn name(&self, i: usize) -> String {
        slot_name(i, self.opts.founders)
    }

    /// Records a failure (the first one wins) and stops the run.
    pub(crate) fn fail(&mut self, v: Violation) {
        if self.failure.is_some() {
            return;
        }
        let now = self.now();
        let message = v.message.clone();
        self.trace
            .record(now, None, "check.failed", message.as_bytes(), || {
                format!("{} [{}]: {}", v.kind.as_str(), v.checker, message)
            });
        self.failure = Some(Failure {
            kind: v.kind,
            checker: v.checker.to_owned(),
            message: v.message,
            at_ms: now.as_millis(),
            event: self.trace.events(),
        });
    }

    fn fail_crash(&mut self, checker: &'static str, message: String) {
        self.fail(Violation::new(FailureKind::Crash, checker, message));
    }

    fn now_for(&self, i: usize, now: Instant) -> Now {
        let unix = i128::from(EPOCH_UNIX_MS)
            + i128::from(now.as_millis())
            + i128::from(self.slots[i].skew_ms);
        Now::new(now, u64::try_from(unix.max(0)).unwrap_or(0))
    }

    // ---- madsim nodes --------------------------------------------------------------------

    /// Creates the madsim node of slot `i`; its driver boots the core.
    pub(crate) fn spawn_node(&mut self, i: usize, handle: &Handle, shared: &Shared) {
        let s = shared.clone();
        let id = handle
            .create_node()
            .name(self.name(i))
            .ip(addr_of(i).ip())
            .init(move || crate::driver::node_main(s.clone(), i))
            .build()
            .id();
        let slot = &mut self.slots[i];
        slot.madsim_id = Some(id);
        slot.started = true;
        slot.running = true;
        let now = self.now();
        self.trace
            .record(now, Some(i), "node.start", &[], String::new);
    }

    /// Called by slot `i`'s driver once its endpoint is bound: creates or recovers the core.
    /// Returns false if the node could not boot (the run has failed).
    pub(crate) fn boot_node(&mut self, i: usize, ep: Endpoint) -> bool {
        let _region = enter(Region::World);
        if self.stopped() {
            return false;
        }
        let now = self.now();
        let slot = &mut self.slots[i];
        slot.boot += 1;
        let setup = NodeSetup {
            config: self.config.clone(),
            seed: NodeSeed::from_u64(
                slot.core_seed ^ slot.boot.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            node_key: slot.secret.clone(),
            secrets: (slot.role == SlotRole::Founder).then(|| self.secrets.clone()),
        };
        let fresh = slot.fresh;
        let role = slot.role;
        let at = self.now_for(i, now);
        let built = match (fresh, role) {
            (true, SlotRole::Founder) => Node::bootstrap(setup, at, &self.founders),
            (true, SlotRole::Joiner) => Node::new_joiner(setup, at),
            (false, _) => Node::recover(setup, at, self.slots[i].disk.durable.clone()),
        };
        let node = match built {
            Ok(n) => n,
            Err(e) => {
                self.fail_crash(
                    "boot",
                    format!(
                        "{} cannot {}: {e}",
                        self.name(i),
                        if fresh {
                            "start"
                        } else {
                            "recover from its disk"
                        }
                    ),
                );
                return false;
            }
        };
        let slot = &mut self.slots[i];
        slot.fresh = false;
        slot.node = Some(node);
        slot.up = true;
        slot.ep = Some(ep);
        slot.last_applied = 0;
        let boot = slot.boot;
        self.trace
            .record(now, Some(i), "node.boot", &boot.to_le_bytes(), || {
                format!(
                    "incarnation {boot} ({})",
                    if fresh { "fresh" } else { "recovered" }
                )
            });
        self.drain(i);
        let mut peers: BTreeSet<usize> = self.slots[i].known.clone();
        if role == SlotRole::Founder {
            peers.extend(0..self.opts.founders);
        }
        for j in peers {
            self.connect(i, j);
        }
        // The application presents its token (again) if it is not a member: first start,
        // a restart mid-join, or a restart that lost the admission before it was durable.
        let member = self.slots[i].is_member();
        let admitted_before = self
            .facts
            .latest_of(i)
            .is_some_and(|(_, p)| matches!(p.outcome, OpOutcome::Admitted(_)));
        if role == SlotRole::Joiner && !member && (self.slots[i].wants_join || admitted_before) {
            self.issue_join(i);
        }
        self.observe(i);
        true
    }

    // ---- connections ---------------------------------------------------------------------

    /// Establishes a connection between two live cores (both get `Connected`).
    fn connect(&mut self, a: usize, b: usize) {
        if a == b || !self.slots[a].up || !self.slots[b].up || self.conns.contains_key(&pair(a, b))
        {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.conns.insert(pair(a, b), epoch);
        self.slots[a].known.insert(b);
        self.slots[b].known.insert(a);
        let (lo, hi) = pair(a, b);
        // Both ends see the same binding (a TLS exporter in production): join proofs sign it.
        let binding = Hash32::of(&[
            b"portcullis-sim.binding",
            &(lo as u64).to_le_bytes(),
            &(hi as u64).to_le_bytes(),
            &epoch.to_le_bytes(),
        ]);
        let now = self.now();
        let f = self.opts.founders;
        self.trace
            .record(now, Some(a), "net.connect", &epoch.to_le_bytes(), || {
                format!("{} <-> {} epoch {epoch}", slot_name(a, f), slot_name(b, f))
            });
        let (ka, kb) = (self.slots[a].key, self.slots[b].key);
        self.push_inbound(
            a,
            Inbound::Connected {
                peer: b,
                epoch,
                input: Input::Connected {
                    peer: peer(b),
                    node_key: kb,
                    binding,
                },
            },
        );
        self.push_inbound(
            b,
            Inbound::Connected {
                peer: a,
                epoch,
                input: Input::Connected {
                    peer: peer(a),
                    node_key: ka,
                    binding,
                },
            },
        );
    }

    fn push_control(&mut self, i: usize, input: Input) {
        self.push_inbound(i, Inbound::Control(input));
    }

    fn push_inbound(&mut self, i: usize, item: Inbound) {
        let slot = &mut self.slots[i];
        if !slot.up {
            return;
        }
        slot.inbox.push_back(item);
        slot.wake();
    }

    fn push_datagram(&mut self, i: usize, dg: Datagram) {
        let slot = &mut self.slots[i];
        if !slot.up {
            return;
        }
        if slot.datagrams_queued >= MAX_INBOX_DATAGRAMS {
            let now = self.now();
            self.trace
                .record(now, Some(i), "net.inbox_full", &[], String::new);
            return;
        }
        slot.datagrams_queued += 1;
        slot.inbox.push_back(Inbound::Datagram(dg));
        slot.wake();
    }

    /// A datagram arrived at slot `i`'s endpoint (one of its pipe tasks).
    pub(crate) fn arrive(&mut self, i: usize, dg: Datagram) {
        let _region = enter(Region::Faults);
        if self.stopped() || !self.slots[i].up {
            return;
        }
        if self.conns.get(&pair(dg.from, i)) != Some(&dg.epoch) {
            let now = self.now();
            let f = self.opts.founders;
            self.trace
                .record(now, Some(i), "net.stale", &dg.epoch.to_le_bytes(), || {
                    format!(
                        "from {} epoch {} (connection gone)",
                        slot_name(dg.from, f),
                        dg.epoch
                    )
                });
            return;
        }
        match self.net.arrive(i, &dg) {
            Arrival::Deliver => self.push_datagram(i, dg),
            other => {
                let now = self.now();
                let kind = match other {
                    Arrival::Blocked => "net.blocked",
                    Arrival::Held => "net.held",
                    _ => "net.held_overflow",
                };
                let f = self.opts.founders;
                self.trace.record(now, Some(i), kind, &[], || {
                    format!("from {}", slot_name(dg.from, f))
                });
            }
        }
    }

    // ---- the driver's step -----------------------------------------------------------------

    /// How long slot `i`'s driver may sleep: until its core's timer or its next fsync
    /// completion (`None`: only an inbox item wakes it).
    pub(crate) fn next_wakeup(&mut self, i: usize) -> Option<(Instant, Duration)> {
        let _region = enter(Region::World);
        let now = self.now();
        let World { slots, timing, .. } = self;
        let slot = &slots[i];
        let node = slot.node.as_ref()?;
        let timer = CoreTiming::time(timing, || node.poll_timeout());
        let disk = slot.disk.next_done(now);
        let send = slot.sends.peek().map(|Reverse(q)| q.due);
        let next = [timer, disk, send].into_iter().flatten().min()?;
        Some((next, next.saturating_duration_since(now)))
    }

    /// Takes slot `i`'s datagrams whose delay is up, in order, for its driver to send.
    pub(crate) fn take_due_sends(&mut self, i: usize) -> Vec<(usize, Datagram)> {
        let _region = enter(Region::Faults);
        let now = self.now();
        let sends = &mut self.slots[i].sends;
        let mut due = Vec::new();
        while sends.peek().is_some_and(|Reverse(q)| q.due <= now) {
            if let Some(Reverse(q)) = sends.pop() {
                due.push((q.to, q.dg));
            }
        }
        due
    }

    /// Queues `dg` from slot `i` to slot `to`, to leave after `delay_ms`.
    fn queue_send(&mut self, i: usize, to: usize, dg: Datagram, delay_ms: u64) {
        let seq = self.next_send_seq;
        self.next_send_seq += 1;
        let due = self.now().saturating_add_ms(delay_ms);
        self.slots[i]
            .sends
            .push(Reverse(QueuedSend { due, seq, to, dg }));
    }

    /// Whether slot `i` has inbox items to handle.
    pub(crate) fn has_inbox(&self, i: usize) -> bool {
        !self.slots[i].inbox.is_empty()
    }

    pub(crate) fn set_waker(&mut self, i: usize, waker: &Waker) {
        let slot = &mut self.slots[i];
        // The driver re-registers on every poll; cloning a waker that would wake the same task
        // only to drop the old one is two reference-count updates per poll for nothing.
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
    }

    /// The madsim node of every slot that ever started one.
    pub(crate) fn madsim_nodes(&self) -> Vec<madsim::task::NodeId> {
        self.slots.iter().filter_map(|s| s.madsim_id).collect()
    }

    /// One step of slot `i`'s driver: everything in its inbox, every completed fsync, then its
    /// timer if due; finally the replica observation.
    pub(crate) fn step(&mut self, i: usize) {
        let _region = enter(Region::World);
        if self.stopped() || self.slots[i].node.is_none() {
            return;
        }
        let now = self.now();
        while let Some(item) = self.slots[i].inbox.pop_front() {
            match item {
                Inbound::Datagram(dg) => {
                    self.slots[i].datagrams_queued -= 1;
                    // The connection may have closed while the datagram waited.
                    if self.conns.get(&pair(dg.from, i)) != Some(&dg.epoch) {
                        continue;
                    }
                    self.input(
                        i,
                        now,
                        Input::Received {
                            from: peer(dg.from),
                            bytes: dg.bytes,
                        },
                    );
                }
                Inbound::Connected { peer, epoch, input } => {
                    self.slots[i].views.insert(peer, epoch);
                    self.input(i, now, input);
                }
                Inbound::Disconnected { peer, input } => {
                    self.slots[i].views.remove(&peer);
                    self.input(i, now, input);
                }
                Inbound::Control(input) => self.input(i, now, input),
            }
            if self.stopped() {
                return;
            }
        }
        while let Some(done) = self.slots[i].disk.complete_next(now) {
            let (n, kind) = match done {
                Completed::Durable(n) => (n, "disk.durable"),
                Completed::AckedEarly(n) => (n, "disk.commit_only"),
            };
            self.trace.record(now, Some(i), kind, &n.to_le_bytes(), || {
                format!("batch {n}")
            });
            self.scan_committed(i, now);
            if self.stopped() {
                return;
            }
            self.input(i, now, Input::Persisted(n));
        }
        let World { slots, timing, .. } = self;
        let due = slots[i]
            .node
            .as_ref()
            .and_then(|n| CoreTiming::time(timing, || n.poll_timeout()))
            .is_some_and(|t| t <= now);
        if due {
            self.input(i, now, Input::Timer);
        }
        if !self.stopped() {
            self.observe(i);
        }
    }

    /// Hands one input to slot `i`'s core, then drains its outputs.
    fn input(&mut self, i: usize, now: Instant, input: Input) {
        if self.slots[i].node.is_none() {
            return;
        }
        self.trace_input(i, now, &input);
        self.ns_before_input(i, now, &input);
        let at = self.now_for(i, now);
        let World { slots, timing, .. } = self;
        if let Some(node) = slots[i].node.as_mut() {
            CoreTiming::time(timing, || node.handle(at, input));
        }
        self.drain(i);
        self.ns_after_input();
    }

    fn trace_input(&mut self, i: usize, now: Instant, input: &Input) {
        let names = |n: usize| slot_name(n, self.opts.founders);
        let wants = self.trace.wants_lines();
        match input {
            Input::Received { from, bytes } => {
                let from_n = from.0 as usize;
                let line = if wants {
                    describe::frame(bytes, &self.limits)
                } else {
                    String::new()
                };
                self.trace.record(now, Some(i), "in.recv", bytes, || {
                    format!("from {} {line}", names(from_n))
                });
            }
            Input::Connected { peer, binding, .. } => {
                let p = peer.0 as usize;
                self.trace
                    .record(now, Some(i), "in.connected", &binding.0, || names(p));
            }
            Input::Disconnected { peer } => {
                let p = peer.0 as usize;
                self.trace.record(
                    now,
                    Some(i),
                    "in.disconnected",
                    &peer.0.to_le_bytes(),
                    || names(p),
                );
            }
            Input::Persisted(n) => {
                self.trace
                    .record(now, Some(i), "in.persisted", &n.to_le_bytes(), || {
                        n.to_string()
                    });
            }
            Input::Timer => self
                .trace
                .record(now, Some(i), "in.timer", &[], String::new),
            Input::Command(c) => {
                let text = format!("{c:?}");
                self.trace
                    .record(now, Some(i), "in.command", text.as_bytes(), || text.clone());
            }
            other => {
                let text = format!("{other:?}");
                self.trace
                    .record(now, Some(i), "in.other", text.as_bytes(), || text.clone());
            }
        }
    }

    /// Carries out every output of slot `i`'s core, per the drain contract.
    fn drain(&mut self, i: usize) {
        loop {
            if self.stopped() {
                return;
            }
            let World { slots, timing, .. } = self;
            let Some(node) = slots[i].node.as_mut() else {
                return;
            };
            let Some(output) = CoreTiming::time(timing, || node.poll_output()) else {
                return;
            };
            let now = self.now();
            match output {
                Output::Transmit { to, bytes } => self.on_transmit(i, now, to, bytes),
                Output::Persist(batch) => self.on_persist(i, now, batch),
                Output::Connect { node_key, .. } => {
                    // A node not yet admitted connects only to follow a redirect.
                    let kind = if self.slots[i].is_member() {
                        "out.connect"
                    } else {
                        "out.follow"
                    };
                    self.trace.record(now, Some(i), kind, &node_key.0, || {
                        format!("to key {}", node_key.hash().short())
                    });
                    if let Some(j) = self.by_key.get(&node_key).copied() {
                        self.connect(i, j);
                    }
                }
                Output::Event(event) => self.on_node_event(i, now, event),
                other => {
                    let text = format!("{other:?}");
                    self.trace
                        .record(now, Some(i), "out.other", text.as_bytes(), || text.clone());
                }
            }
        }
    }

    fn on_transmit(&mut self, i: usize, now: Instant, to: PeerId, bytes: Vec<u8>) {
        let _region = enter(Region::Faults);
        let wants = self.trace.wants_lines();
        let line = if wants {
            describe::frame(&bytes, &self.limits)
        } else {
            String::new()
        };
        let j = usize::try_from(to.0).unwrap_or(usize::MAX);
        // Only formatted when a line or a failure needs it (most transmits need neither).
        let (founders, slot_count) = (self.opts.founders, self.slots.len());
        let to_name = move || {
            if j < slot_count {
                slot_name(j, founders)
            } else {
                format!("peer{}", to.0)
            }
        };
        self.trace.record(now, Some(i), "out.transmit", &bytes, || {
            format!("to {} {line}", to_name())
        });
        {
            let _checking = enter(Region::Checkers);
            self.ns_check_vouch(i, &bytes);
        }
        // The invocation of a presentation: the first time the joiner reveals its token.
        if let Some(op) = self.slots[i].open_op
            && self.facts.presentations[op].revealed_at.is_none()
            && matches!(
                PeerMessage::decode(&bytes, &self.limits),
                Ok(PeerMessage::JoinRequest(_))
            )
        {
            self.facts.presentations[op].revealed_at = Some(now);
            self.trace.record(
                now,
                Some(i),
                "work.reveal",
                &(op as u64).to_le_bytes(),
                || format!("presentation #{op} reveals its token to {}", to_name()),
            );
        }
        if j >= self.slots.len() {
            return;
        }
        if self.slots[i].late_seeds_op.is_some()
            && self.slots[i].late_seeds_op == self.slots[i].open_op
            && self
                .facts
                .joiners
                .get(&i)
                .is_some_and(|f| f.late_seeds().contains(&j))
        {
            // The join under way asked a seed it was handed by AddJoinSeeds.
            self.slots[i].late_seeds_op = None;
            self.trace
                .record(now, Some(i), "work.late_seed_asked", &[], to_name);
        }
        // Sent on the connection this core knows; if the world has closed it meanwhile, the
        // receiving side drops the frame (a dead connection).
        let Some(epoch) = self.slots[i].views.get(&j).copied() else {
            self.trace.record(now, Some(i), "net.no_conn", &[], to_name);
            return;
        };
        if self.slots[i].ep.is_none() {
            return;
        }
        // A lost admission reply: the joiner must present again and be served again.
        if j >= self.opts.founders
            && self.net.reply_loss > 0.0
            && Envelope::parse(&bytes, &self.limits)
                .is_ok_and(|e| e.kind == MessageKind::JoinAccepted)
            && self.rng.gen_bool(self.net.reply_loss.clamp(0.0, 1.0))
        {
            self.trace
                .record(now, Some(i), "net.reply_lost", &[], to_name);
            return;
        }
        let plan = self.net.plan(&mut self.rng, &self.opts);
        let dg = Datagram {
            from: i,
            epoch,
            bytes,
        };
        if plan.copies_ms.is_empty() {
            self.trace.record(now, Some(i), "net.loss", &[], to_name);
        }
        if plan.duplicated {
            self.trace.record(now, Some(i), "net.dup", &[], to_name);
        }
        self.net.remember(j, &dg);
        // The last copy takes the datagram itself: one byte copy fewer per frame.
        if let Some((last_ms, first_ms)) = plan.copies_ms.split_last() {
            for delay_ms in first_ms {
                self.queue_send(i, j, dg.clone(), *delay_ms);
            }
            self.queue_send(i, j, dg, *last_ms);
        }
        if let Some((k, old)) = self.net.pick_replay(&mut self.rng, &self.opts, i) {
            let delay_ms = self
                .rng
                .gen_range(self.opts.latency_min_ms..=self.opts.latency_max_ms);
            let f = self.opts.founders;
            self.trace
                .record(now, Some(i), "net.replay", &old.epoch.to_le_bytes(), || {
                    format!("old datagram to {} (epoch {})", slot_name(k, f), old.epoch)
                });
            self.queue_send(i, k, old, delay_ms);
        }
    }

    fn on_persist(&mut self, i: usize, now: Instant, batch: PersistBatch) {
        let _region = enter(Region::Disk);
        // The trace identifies a batch by its encoding's fingerprint (not its bytes).
        let batch_fp =
            encoded_fingerprint(|buffer| wire::encode_into(&batch, buffer)).to_le_bytes();
        let wants = self.trace.wants_lines();
        let line = if wants {
            describe::batch(&batch)
        } else {
            String::new()
        };
        self.trace
            .record(now, Some(i), "out.persist", &batch_fp, || line.clone());
        // The targeted fault: crash this node while this batch is being written.
        let crash_on_write = self.phase == Phase::Safety
            && now.as_millis() >= 1_000
            && self.slots[i].crash_at.is_none()
            && self.rng.gen_bool(self.opts.crash_on_write.clamp(0.0, 1.0));
        // A slow fsync now and then widens the window in which a crash loses or tears a batch.
        let fsync_ms = if crash_on_write {
            let ms = self.rng.gen_range(100..=300);
            let at = now.saturating_add_ms(self.rng.gen_range(0..=ms - 60));
            self.slots[i].crash_at = Some(at);
            ms
        } else if self.rng.gen_bool(self.opts.slow_fsync.clamp(0.0, 1.0)) {
            self.rng.gen_range(50..=500)
        } else {
            self.rng.gen_range(
                self.opts.fsync_min_ms..=self.opts.fsync_max_ms.max(self.opts.fsync_min_ms),
            )
        };
        let submitted = self.slots[i]
            .disk
            .submit(batch, now.saturating_add_ms(fsync_ms));
        if submitted == Submitted::Full {
            self.fail_crash(
                "disk",
                format!(
                    "{} has more than {} batches waiting for fsync",
                    self.name(i),
                    crate::disk::MAX_PENDING_BATCHES
                ),
            );
        }
    }

    fn on_node_event(&mut self, i: usize, now: Instant, event: Event) {
        let text = format!("{event:?}");
        self.trace
            .record(now, Some(i), "out.event", text.as_bytes(), || text.clone());
        if self.ns_on_event(i, now, &event) {
            return;
        }
        match &event {
            Event::JoinAdmitted { member_id } => {
                self.end_presentation(i, now, OpOutcome::Admitted(*member_id))
            }
            Event::JoinFailed(f) => {
                let outcome = match f {
                    JoinFailure::Rejected(r) => OpOutcome::Rejected(*r),
                    JoinFailure::TimedOut { .. } => OpOutcome::TimedOut,
                    _ => OpOutcome::Other,
                };
                self.end_presentation(i, now, outcome);
            }
            Event::TokenRevoked { hash, outcome } => {
                let t = self.facts.token_by_hash.get(hash).copied();
                if let Some(v) =
                    self.facts.revocations.iter_mut().find(|v| {
                        Some(v.token) == t && v.node == i && v.outcome.is_none() && !v.lost
                    })
                {
                    v.outcome = Some((*outcome, now));
                }
            }
            Event::Fatal(reason) => {
                let name = self.name(i);
                self.fail_crash(
                    "fatal",
                    format!("{name} stopped with a fatal error: {reason}"),
                );
            }
            Event::CommandRejected(e) => {
                let name = self.name(i);
                self.fail_crash(
                    "harness",
                    format!("{name} refused a command the harness gave it: {e}"),
                );
            }
            _ => {}
        }
        if self.stopped() {
            return;
        }
        let World {
            checkers, facts, ..
        } = self;
        for c in checkers.iter_mut() {
            if let Err(v) = c.on_event(facts, now, i, &event) {
                self.fail(v);
                return;
            }
        }
    }

    /// Ends slot `i`'s open presentation with `outcome`.
    fn end_presentation(&mut self, i: usize, now: Instant, outcome: OpOutcome) {
        let Some(op) = self.slots[i].open_op.take() else {
            if outcome != OpOutcome::Crashed {
                self.fail_crash(
                    "harness",
                    format!(
                        "{} reported a join result without a join in progress",
                        self.name(i)
                    ),
                );
            }
            return;
        };
        let p = &mut self.facts.presentations[op];
        p.outcome = outcome;
        p.ended_at = Some(now);
        if outcome.is_definite() {
            self.slots[i].wants_join = false;
        }
        let label = outcome.label();
        self.trace
            .record(now, Some(i), "work.end", label.as_bytes(), || {
                format!("presentation #{op}: {label}")
            });
        let World {
            checkers, facts, ..
        } = self;
        for c in checkers.iter_mut() {
            if let Err(v) = c.on_presentation_end(facts, now, op) {
                self.fail(v);
                return;
            }
        }
        if let OpOutcome::Admitted(m) = outcome {
            self.facts.admitted_as.insert(i, m);
        }
    }

    /// Newly committed entries on slot `i`'s disk, for the log checker.
    fn scan_committed(&mut self, i: usize, now: Instant) {
        let _region = enter(Region::Checkers);
        let World {
            slots,
            log,
            checkers,
            facts,
            nemesis_index,
            ..
        } = self;
        let slot = &mut slots[i];
        let durable = &slot.disk.durable;
        // Committed entries scan as soon as the node is told their commit is durable, even
        // when the commit index itself is deferred: a compaction may drop them from the log
        // before the commit index is written.
        let commit = slot.disk.acked_commit();
        if commit <= slot.scanned_commit {
            return;
        }
        let from = slot.scanned_commit + 1;
        let start = durable.entries.partition_point(|e| e.index < from);
        let mut result = Ok(());
        let mut lease_begins = Vec::new();
        for e in durable.entries[start..]
            .iter()
            .take_while(|e| e.index <= commit)
        {
            if e.index > *nemesis_index {
                *nemesis_index = e.index;
                if let Some(proposer) = lease_begin_proposer(e) {
                    lease_begins.push(proposer);
                }
            }
            result = log.on_committed(facts, now, i, e);
            for c in checkers.iter_mut() {
                if result.is_err() {
                    break;
                }
                result = c.on_committed(facts, now, i, e);
            }
            if result.is_err() {
                break;
            }
        }
        slot.scanned_commit = commit;
        if let Err(v) = result {
            self.fail(v);
            return;
        }
        for proposer in lease_begins {
            self.lease_nemesis(now, proposer);
        }
    }

    /// The targeted fault: the listener that just took a lease may be cut off for a little
    /// longer than the lease, so its `Consume`/`Revert` arrive after the lease has lapsed and
    /// another listener may hold the token.
    fn lease_nemesis(&mut self, now: Instant, proposer: u64) {
        let Ok(slot) = usize::try_from(proposer.saturating_sub(1)) else {
            return;
        };
        if self.opts.lease_nemesis <= 0.0
            || self.phase != Phase::Safety
            || slot >= self.opts.founders
            || !self.rng.gen_bool(self.opts.lease_nemesis.clamp(0.0, 1.0))
        {
            return;
        }
        let for_ms = self.opts.admission_lease_ms + self.rng.gen_range(500..=4_000);
        self.net.isolate_until(slot, now.saturating_add_ms(for_ms));
        let f = self.opts.founders;
        self.trace
            .record(now, Some(slot), "fault.net", &for_ms.to_le_bytes(), || {
                format!(
                    "isolate {} for {for_ms}ms (lease nemesis)",
                    slot_name(slot, f)
                )
            });
    }

    /// Slot `i`'s replica after a step: when its applied index changed, the checkers look.
    fn observe(&mut self, i: usize) {
        let _region = enter(Region::Checkers);
        let now = self.now();
        let World {
            slots,
            log,
            checkers,
            facts,
            first_states,
            ..
        } = self;
        let slot = &mut slots[i];
        let Some(node) = slot.node.as_ref() else {
            return;
        };
        if node.member_id().is_none() {
            return;
        }
        let ledger = node.ledger();
        let a = ledger.applied_index();
        if a == 0 || a == slot.last_applied {
            return;
        }
        slot.last_applied = a;
        let state_fp = state_fingerprint(ledger.state());
        let first = first_states.get(&a).copied();
        if first.is_none() {
            first_states.insert(a, (state_fp, i));
        }
        // A state seen before at this index holds nothing the facts have not recorded, at an
        // earlier or equal time (a different state is the replica checker's to report).
        let known_state = first.is_some_and(|(fp, _)| fp == state_fp);
        for (h, r) in ledger.state().records.iter().filter(|_| !known_state) {
            match r.state {
                TokenState::Consumed {
                    presenter,
                    member_id,
                    ..
                } => {
                    facts
                        .first_consumed
                        .entry(*h)
                        .or_insert((now, presenter, member_id));
                }
                TokenState::Aborted => {
                    facts.first_aborted.entry(*h).or_insert(now);
                }
                _ => {}
            }
        }
        let view = ReplicaView {
            node: i,
            ledger,
            state_fp,
            first,
        };
        let mut result = log.on_replica(facts, &view);
        for c in checkers.iter_mut() {
            if result.is_err() {
                break;
            }
            result = c.on_replica(facts, &view);
        }
        if let Err(v) = result {
            self.fail(v);
        }
    }

    // ---- workload --------------------------------------------------------------------------

    /// Tells joiner `i` to present its token (connecting it to its seeds first).
    fn issue_join(&mut self, i: usize) {
        if self.slots[i].open_op.is_some() || !self.slots[i].up {
            return;
        }
        let Some(f) = self.facts.joiners.get(&i).cloned() else {
            return;
        };
        let known_seeds = f.seeds_known(self.slots[i].late_seeds_given);
        self.connect_seeds(i, known_seeds);
        let now = self.now();
        let token = self.facts.tokens[f.token].token.clone();
        self.push_control(
            i,
            Input::Command(LocalCommand::JoinCluster {
                token,
                seeds: known_seeds.iter().map(|s| peer(*s)).collect(),
                addrs: addrs_of(i),
            }),
        );
        let op = self.facts.presentations.len();
        self.facts.presentations.push(Presentation {
            joiner: i,
            token: f.token,
            presenter: f.presenter,
            revealed_at: None,
            outcome: OpOutcome::Pending,
            ended_at: None,
        });
        self.slots[i].open_op = Some(op);
        self.slots[i].wants_join = true;
        let kind = self.facts.tokens[f.token].kind;
        self.trace.record(
            now,
            Some(i),
            "work.join",
            &(op as u64).to_le_bytes(),
            || {
                format!(
                    "presentation #{op}: {} token {} via {:?}",
                    kind.as_str(),
                    f.token,
                    known_seeds
                        .iter()
                        .map(|s| slot_name(*s, self.opts.founders))
                        .collect::<Vec<_>>()
                )
            },
        );
    }

    /// Connects joiner `i` to `seeds`; they stay known to each other, for reconnects.
    fn connect_seeds(&mut self, i: usize, seeds: &[usize]) {
        for s in seeds {
            self.slots[i].known.insert(*s);
            self.slots[*s].known.insert(i);
            self.connect(i, *s);
        }
    }

    /// Hands joiner `i` the seeds it held back: connected first, as the production driver
    /// does (it sends `AddJoinSeeds` only for dials that finished). Sent whether or not a join
    /// is under way (the core must ignore it when none is); a node that is down learns of them
    /// for its next join only.
    fn add_late_seeds(&mut self, i: usize) {
        let Some(f) = self.facts.joiners.get(&i) else {
            return;
        };
        let late: Vec<usize> = f.late_seeds().to_vec();
        self.slots[i].late_seeds_given = true;
        let now = self.now();
        let (up, joining) = (self.slots[i].up, self.slots[i].open_op.is_some());
        let kind = match (up, joining) {
            (false, _) => "work.add_seeds_down",
            (true, false) => "work.add_seeds_idle",
            (true, true) => "work.add_seeds",
        };
        self.trace.record(now, Some(i), kind, &[], || {
            format!(
                "{:?}",
                late.iter()
                    .map(|s| slot_name(*s, self.opts.founders))
                    .collect::<Vec<_>>()
            )
        });
        if !up {
            return;
        }
        self.slots[i].late_seeds_op = self.slots[i].open_op;
        self.connect_seeds(i, &late);
        self.push_control(
            i,
            Input::Command(LocalCommand::AddJoinSeeds {
                seeds: late.iter().map(|s| peer(*s)).collect(),
            }),
        );
    }

    fn run_action(&mut self, action: Action, handle: &Handle, shared: &Shared) {
        let now = self.now();
        match action {
            Action::StartJoiner(j) => {
                self.slots[j].wants_join = true;
                self.spawn_node(j, handle, shared);
            }
            Action::AddSeeds(j) => self.add_late_seeds(j),
            Action::Revoke(t) => {
                let live: Vec<usize> = (0..self.opts.founders)
                    .filter(|f| self.slots[*f].up)
                    .collect();
                let Some(f) = live.choose(&mut self.rng).copied() else {
                    self.trace
                        .record(now, None, "work.revoke_skipped", &[], String::new);
                    return;
                };
                let tf = &self.facts.tokens[t];
                let (hash, expires) = (tf.hash, tf.expires_at_unix_ms);
                self.push_control(
                    f,
                    Input::Command(LocalCommand::RevokeToken {
                        hash,
                        expires_at_unix_ms: expires,
                    }),
                );
                self.facts.revocations.push(Revocation {
                    token: t,
                    node: f,
                    issued_at: now,
                    outcome: None,
                    lost: false,
                });
                self.trace
                    .record(now, Some(f), "work.revoke", &hash.0.0, || {
                        format!("token {t}")
                    });
            }
            Action::WipeAndRejoin => {
                let candidates: Vec<usize> = self
                    .facts
                    .admitted_as
                    .keys()
                    .copied()
                    .filter(|j| self.slots[*j].up && self.slots[*j].is_member())
                    .collect();
                let Some(j) = candidates.choose(&mut self.rng).copied() else {
                    self.trace
                        .record(now, None, "work.wipe_skipped", &[], String::new);
                    return;
                };
                let down_ms = self.rng.gen_range(10..=1_000);
                self.crash(j, handle, true, down_ms);
            }
        }
    }

    // ---- faults ----------------------------------------------------------------------------

    /// Kills slot `i`'s node: unsynced batches are lost (the one in flight maybe torn),
    /// connections close, an open presentation becomes indeterminate. With `wipe`, the disk is
    /// lost too and the next boot is a fresh install.
    pub(crate) fn crash(&mut self, i: usize, handle: &Handle, wipe: bool, down_ms: u64) {
        if !self.slots[i].running {
            return;
        }
        if let Some(id) = self.slots[i].madsim_id {
            handle.kill(id);
        }
        let now = self.now();
        let torn = self.opts.torn;
        let slot = &mut self.slots[i];
        slot.running = false;
        slot.up = false;
        slot.node = None;
        slot.ep = None;
        slot.inbox.clear();
        slot.sends.clear();
        slot.views.clear();
        slot.datagrams_queued = 0;
        slot.waker = None;
        slot.last_applied = 0;
        slot.crash_at = None;
        slot.down_until = Some(now.saturating_add_ms(down_ms));
        let loss = slot.disk.crash(&mut self.rng, torn);
        self.ns_on_crash(i, now);
        self.trace.record(now, Some(i), "fault.crash", &[], || {
            format!(
                "down {down_ms}ms; lost batches {:?}; torn {:?}",
                loss.lost, loss.torn
            )
        });
        if wipe {
            let slot = &mut self.slots[i];
            slot.disk.wipe();
            slot.fresh = true;
            slot.scanned_commit = 0;
            for c in self.checkers.iter_mut() {
                c.on_replica_reset(i);
            }
            self.trace
                .record(now, Some(i), "fault.wipe", &[], String::new);
        }
        let gone: Vec<(usize, usize)> = self
            .conns
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for p in gone {
            self.conns.remove(&p);
            let other = if p.0 == i { p.1 } else { p.0 };
            self.push_inbound(
                other,
                Inbound::Disconnected {
                    peer: i,
                    input: Input::Disconnected { peer: peer(i) },
                },
            );
        }
        self.net.forget_node(i);
        if self.slots[i].open_op.is_some() {
            self.end_presentation(i, now, OpOutcome::Crashed);
        }
        for v in self.facts.revocations.iter_mut() {
            if v.node == i && v.outcome.is_none() {
                v.lost = true;
            }
        }
    }

    /// Restarts a killed node (its driver recovers the core from the disk).
    pub(crate) fn restart(&mut self, i: usize, handle: &Handle) {
        let slot = &mut self.slots[i];
        if slot.running || !slot.started {
            return;
        }
        let Some(id) = slot.madsim_id else {
            return;
        };
        slot.running = true;
        slot.down_until = None;
        handle.restart(id);
        let now = self.now();
        self.trace
            .record(now, Some(i), "fault.restart", &[], String::new);
    }

    fn apply_net_change(&mut self, change: NetChange) {
        let now = self.now();
        let names = |v: &[usize]| {
            v.iter()
                .map(|n| slot_name(*n, self.opts.founders))
                .collect::<Vec<_>>()
        };
        let text = match &change {
            NetChange::Partition { a, b, one_way } => format!(
                "{:?} {} {:?}",
                names(a),
                if *one_way { "-/->" } else { "<-/->" },
                names(b)
            ),
            NetChange::Healed => "healed".to_owned(),
            NetChange::Clogged(n) => format!("clog {}", self.name(*n)),
            NetChange::Unclogged(n) => format!("unclog {}", self.name(*n)),
        };
        self.trace
            .record(now, None, "fault.net", text.as_bytes(), || text.clone());
        if matches!(change, NetChange::Unclogged(_)) {
            for (to, dg) in self.net.release_flowing() {
                self.release(to, dg);
            }
        }
    }

    fn release(&mut self, to: usize, dg: Datagram) {
        if self.slots[to].up && self.conns.get(&pair(dg.from, to)) == Some(&dg.epoch) {
            self.push_datagram(to, dg);
        }
    }

    /// One supervisor tick of the safety phase: workload actions, then faults.
    pub(crate) fn safety_tick(&mut self, handle: &Handle, shared: &Shared) {
        let now = self.now();
        if let Some(mut w) = self.workload.take() {
            for action in w.due(now.as_millis()) {
                self.run_action(action, handle, shared);
                if self.stopped() {
                    break;
                }
            }
            self.workload = Some(w);
        }
        self.ns_tick(now);
        if self.stopped() {
            return;
        }
        let writers_due: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].crash_at.is_some_and(|t| t <= now))
            .collect();
        for i in writers_due {
            self.slots[i].crash_at = None;
            let down_ms = self.rng.gen_range(1..=self.opts.max_down_ms.max(1));
            self.crash(i, handle, false, down_ms);
        }
        // Crashes start after a warm-up, so every founder's founding batch is durable.
        if now.as_millis() >= 1_000 {
            let p = self.opts.crash_rate * self.opts.tick_ms as f64 / 1_000.0;
            if p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0)) {
                let up: Vec<usize> = (0..self.slots.len())
                    .filter(|i| self.slots[*i].running)
                    .collect();
                // Half the time, a node with a write in flight: that is where a crash loses
                // batches or tears one.
                let writing: Vec<usize> = up
                    .iter()
                    .copied()
                    .filter(|i| self.slots[*i].disk.pending_len() > 0)
                    .collect();
                let pool = if !writing.is_empty() && self.rng.gen_bool(0.5) {
                    &writing
                } else {
                    &up
                };
                if let Some(i) = pool.choose(&mut self.rng).copied() {
                    let down_ms = self.rng.gen_range(1..=self.opts.max_down_ms.max(1));
                    self.crash(i, handle, false, down_ms);
                }
            }
        }
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|i| {
                let s = &self.slots[*i];
                s.started && !s.running && s.down_until.is_some_and(|t| t <= now)
            })
            .collect();
        for i in due {
            self.restart(i, handle);
        }
        for n in self.net.expire_isolations(now) {
            let f = self.opts.founders;
            self.trace.record(now, Some(n), "fault.net", &[], || {
                format!("{} rejoins the network", slot_name(n, f))
            });
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].started)
            .collect();
        if let Some(c) = self
            .net
            .partition_tick(&mut self.rng, &self.opts, now, &live)
        {
            self.apply_net_change(c);
        }
        if let Some(c) = self.net.swizzle_tick(&mut self.rng, &self.opts, now, &live) {
            self.apply_net_change(c);
        }
    }

    /// Starts the liveness phase: heal the core (restart it, cut no link inside it, clog
    /// nothing), keep the non-core founders out, stop crashing.
    pub(crate) fn begin_liveness(&mut self, handle: &Handle, shared: &Shared) {
        let now = self.now();
        self.phase = Phase::Liveness { since: now };
        self.trace.record(now, None, "phase.liveness", &[], || {
            format!("core {:?}", self.core_set)
        });
        // Every joiner the plan has not started yet starts now, and every seed hand-over not yet
        // made is made (with the start it follows), so no join waits on a phase that is over.
        if let Some(mut w) = self.workload.take() {
            for action in w.due(u64::MAX) {
                if matches!(action, Action::StartJoiner(_) | Action::AddSeeds(_)) {
                    self.run_action(action, handle, shared);
                }
            }
        }
        for (to, dg) in self.net.heal_all() {
            self.release(to, dg);
        }
        let outside: Vec<usize> = (0..self.opts.founders)
            .filter(|f| !self.core_set.contains(f))
            .collect();
        self.net.isolate(&outside, self.slots.len());
        self.net.loss = self.net.loss.min(0.05);
        self.net.reply_loss = self.net.reply_loss.min(0.05);
        for i in 0..self.slots.len() {
            let core = i >= self.opts.founders || self.core_set.contains(&i);
            if core && self.slots[i].started && !self.slots[i].running {
                self.restart(i, handle);
            }
        }
    }

    /// One supervisor tick of the liveness phase. Returns the reasons the run is not done yet
    /// (empty: done).
    pub(crate) fn liveness_tick(&mut self) -> Vec<String> {
        let mut pending = self.ns_liveness(self.now());
        if self.stopped() {
            return pending;
        }
        let joiners: Vec<usize> = self.facts.joiners.keys().copied().collect();
        for j in joiners {
            if !self.slots[j].up {
                pending.push(format!("{} is not up", self.name(j)));
                continue;
            }
            let latest = self.facts.latest_of(j).map(|(op, p)| (op, p.outcome));
            // Liveness is owed to valid admissions. A token that can never admit may end
            // indeterminately: a wrong-cluster token is only refused once *every* seed proved to
            // be another cluster, and a seed outside the healed core may never answer.
            let may_admit = self
                .facts
                .joiners
                .get(&j)
                .is_some_and(|f| self.facts.tokens[f.token].kind.may_admit());
            if !may_admit && latest.is_some_and(|(_, o)| !matches!(o, OpOutcome::Pending)) {
                continue;
            }
            match latest {
                None => pending.push(format!("{} has not presented", self.name(j))),
                Some((op, OpOutcome::Pending)) => {
                    pending.push(format!("{}: presentation #{op} pending", self.name(j)));
                }
                Some((op, OpOutcome::TimedOut | OpOutcome::Crashed)) => {
                    // The application tries again, as often as it takes: the liveness bound,
                    // not the join deadline, decides (a stale lease stretched by a fast clock
                    // can legitimately outlast one join deadline).
                    pending.push(format!("{}: presentation #{op} re-issued", self.name(j)));
                    self.issue_join(j);
                }
                Some((op, OpOutcome::Admitted(_))) if !self.slots[j].is_member() => {
                    pending.push(format!(
                        "{}: admitted by #{op} but not a member",
                        self.name(j)
                    ));
                    self.issue_join(j);
                }
                Some(_) => {}
            }
        }
        // Every consumed token's consumer ends admitted.
        for (hash, (_, presenter, _)) in &self.facts.first_consumed {
            let Some(j) = self.facts.joiner_of(presenter) else {
                continue;
            };
            let admitted = self
                .facts
                .latest_of(j)
                .is_some_and(|(_, p)| matches!(p.outcome, OpOutcome::Admitted(_)));
            if !admitted {
                pending.push(format!(
                    "token {} consumed by {} who is not admitted",
                    hash.0.short(),
                    self.name(j)
                ));
            }
        }
        // Replicas of the healed part converge: equal applied index and digest.
        let replicas: Vec<usize> = (0..self.slots.len())
            .filter(|i| {
                (*i >= self.opts.founders || self.core_set.contains(i))
                    && self.slots[*i].is_member()
            })
            .collect();
        let applied: Vec<(usize, u64)> = replicas
            .iter()
            .filter_map(|i| {
                self.slots[*i]
                    .node
                    .as_ref()
                    .map(|n| (*i, n.ledger().applied_index()))
            })
            .collect();
        let top = applied.iter().map(|(_, a)| *a).max().unwrap_or(0);
        let behind: Vec<String> = applied
            .iter()
            .filter(|(_, a)| *a < top)
            .map(|(i, a)| format!("{} at applied index {a}", self.name(*i)))
            .collect();
        if !behind.is_empty() {
            pending.push(format!(
                "replicas behind applied index {top}: {}",
                behind.join(", ")
            ));
        } else {
            let digests: BTreeSet<Hash32> = replicas
                .iter()
                .filter_map(|i| self.slots[*i].node.as_ref().map(|n| n.ledger().digest()))
                .collect();
            if digests.len() > 1 {
                pending.push(format!(
                    "replicas at one index with {} digests",
                    digests.len()
                ));
            }
        }
        pending
    }

    /// The final checks, once the run is over.
    pub(crate) fn final_checks(&mut self) {
        if self.stopped() || self.failure.is_some() {
            return;
        }
        self.ns_final();
        if self.failure.is_some() {
            return;
        }
        let now = self.now();
        self.facts.registry = Some(self.log.model_state().members.clone());
        self.facts.ledger_tokens = Some(self.log.tokens_seen().clone());
        let World {
            checkers, facts, ..
        } = self;
        let mut result = Ok(());
        for c in checkers.iter_mut() {
            result = c.at_end(facts, now);
            if result.is_err() {
                break;
            }
        }
        if let Err(v) = result {
            self.fail(v);
        }
    }
}

/// The member id that proposed `e`, if it is a ledger entry that begins a lease.
fn lease_begin_proposer(e: &EntryWire) -> Option<u64> {
    let EntryPayload::Normal(data) = &e.payload else {
        return None;
    };
    if data.is_empty() {
        return None;
    }
    let entry = wire::decode_exact::<LogEntry>(data).ok()?;
    entry
        .commands
        .iter()
        .any(|c| matches!(c, Command::BeginInFlight { .. }))
        .then_some(entry.proposal.node.0)
}
