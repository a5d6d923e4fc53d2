//! Running one seed: the madsim runtime, the supervisor and its two phases, the report.
//!
//! ```text
//!   run_seed(seed) ── Options::draw ── madsim Runtime(seed') ── block_on(supervise)
//!     supervise: spawn founders ─▶ every tick_ms:
//!        safety   (0 .. safety_ms):  workload actions, crashes/restarts, partitions, clogs
//!        liveness (≤ liveness_ms):   core healed, no crashes; done when every presentation has
//!                                    finished and the healed replicas converged — else failure
//!        final checks (history, registry)
//!   a panic anywhere (core, checker) ─▶ caught ─▶ FailureKind::Crash with its message
//! ```
//!
//! Each seed must run on a thread of its own ([`run_seed_on_fresh_thread`]): madsim's context
//! and std's per-thread `HashMap` keys are thread state.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use portcullis_core::ledger::TokenState;
use portcullis_core::rng::SeededRng;
use rand::RngCore;

use crate::check::Violation;
use crate::options::{CANARIES_BUILT_IN, Canary, Options, Profile};
use crate::report::{Failure, FailureKind, SeedReport, Summary};
use crate::timing::{
    Region, call_overhead_ticks, enter, finish_profile, start_profile, thread_cpu_ns, ticks,
};
use crate::trace::{TraceLevel, slot_name};
pub use crate::world::live_worlds;
use crate::world::{Phase, Shared, World, lock, sim_now};

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The profile knobs are drawn from.
    pub profile: Profile,
    /// Explicit knobs instead of a draw (the bench scenario).
    pub options: Option<Options>,
    /// How much trace to keep.
    pub trace: TraceLevel,
    /// Measure host time inside core calls.
    pub time_core: bool,
    /// Also measure the time in each simulator [`Region`] (with `time_core`; a pass of its
    /// own, since switching regions costs a little around every core call).
    pub profile_regions: bool,
    /// A planted core bug to switch on (needs the `canaries` feature).
    pub canary: Option<Canary>,
    /// Record the first failure but keep simulating to the end (benchmarks).
    pub keep_going: bool,
}

impl RunConfig {
    /// A run of `profile` keeping only the trace digest.
    pub fn new(profile: Profile) -> RunConfig {
        RunConfig {
            profile,
            options: None,
            trace: TraceLevel::Digest,
            time_core: false,
            profile_regions: false,
            canary: None,
            keep_going: false,
        }
    }

    /// The same run keeping `trace`.
    pub fn with_trace(mut self, trace: TraceLevel) -> RunConfig {
        self.trace = trace;
        self
    }
}

thread_local! {
    /// The message and location of the last panic on this thread (the hook fills it in).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records panics of seed threads for their
/// report instead of printing them; other threads keep the previous hook.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let seed_thread = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("seed-"));
            if seed_thread {
                let text = format!("{info}");
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}

/// Runs `seed` on a new thread named `seed-<n>` and waits for it.
pub fn run_seed_on_fresh_thread(seed: u64, cfg: RunConfig) -> SeedReport {
    install_panic_hook();
    let profile = cfg.profile;
    let options = cfg.options.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        // Deep raft-rs and checker stacks in debug builds.
        .stack_size(16 << 20)
        .spawn(move || run_seed(seed, &cfg));
    let joined = spawned.map(|h| h.join());
    match joined {
        Ok(Ok(report)) => report,
        Ok(Err(payload)) => {
            // A panic outside the simulation (report building): still a typed crash.
            let options = options.unwrap_or_else(|| Options::draw(seed, profile));
            crash_report(seed, profile, options, panic_text(payload.as_ref()))
        }
        Err(e) => {
            let options = options.unwrap_or_else(|| Options::draw(seed, profile));
            crash_report(
                seed,
                profile,
                options,
                format!("cannot spawn a thread: {e}"),
            )
        }
    }
}

fn crash_report(seed: u64, profile: Profile, options: Options, message: String) -> SeedReport {
    SeedReport {
        seed,
        profile,
        canary: None,
        options,
        failure: Some(Failure {
            kind: FailureKind::Crash,
            checker: "panic".to_owned(),
            message,
            at_ms: 0,
            event: 0,
        }),
        sim_ms: 0,
        wall: Duration::ZERO,
        cpu: None,
        core_ticks: None,
        core_calls: 0,
        run_ticks: 0,
        regions: None,
        trace_digest: 0,
        events: 0,
        digest_log: Vec::new(),
        lines: Vec::new(),
        summary: Summary::default(),
    }
}

/// Runs one seed on the current thread (which must not run another seed; see the module docs).
pub fn run_seed(seed: u64, cfg: &RunConfig) -> SeedReport {
    let cpu_started_ns = thread_cpu_ns();
    let started_ticks = ticks();
    if cfg.time_core && cfg.profile_regions {
        // In `Region::SetUp` until the simulation starts.
        start_profile();
    }
    install_panic_hook();
    let options = cfg
        .options
        .clone()
        .unwrap_or_else(|| Options::draw(seed, cfg.profile));
    if cfg.canary.is_some() && !CANARIES_BUILT_IN {
        return crash_report(
            seed,
            cfg.profile,
            options,
            "a canary was asked for, but this build has no canaries (build with `--features canaries`)"
                .to_owned(),
        );
    }
    let madsim_seed = SeededRng::from_u64(seed).child("madsim").next_u64();
    let mut mconfig = madsim::Config::default();
    // Our fault layer decides every latency; madsim only adds a fixed hop.
    mconfig.net.send_latency = Duration::from_micros(50)..Duration::from_micros(51);
    let runtime = Runtime::with_seed_and_config(madsim_seed, mconfig);
    let world: Shared = Arc::new(Mutex::new(World::new(
        seed,
        &options,
        cfg.trace,
        cfg.time_core,
        cfg.canary,
    )));
    lock(&world).keep_going = cfg.keep_going;
    let overhead_ticks = if cfg.time_core {
        call_overhead_ticks()
    } else {
        0
    };
    // Host time: outside `block_on` std's clock is not simulated.
    let started = std::time::Instant::now();
    let supervised = world.clone();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _madsim = enter(Region::Madsim);
        runtime.block_on(supervise(supervised))
    }));
    let wall = started.elapsed();
    if let Err(payload) = outcome {
        let text = panic_text(payload.as_ref());
        let mut w = lock(&world);
        // The simulation may have failed already; the panic is then part of that story.
        if w.failure.is_none() {
            w.failure = Some(Failure {
                kind: FailureKind::Crash,
                checker: "panic".to_owned(),
                message: text,
                at_ms: w.last_tick.as_millis(),
                event: w.trace.events(),
            });
        }
    }
    let tear_down = enter(Region::TearDown);
    // A task's destructor must not take the report down with it.
    let _ = catch_unwind(AssertUnwindSafe(|| drop_tasks(&runtime, &world)));
    drop(runtime);
    let w = lock(&world);
    let mut r = report(&w, seed, cfg, options, wall, overhead_ticks);
    drop(w);
    if cfg.time_core {
        r.run_ticks = ticks().saturating_sub(started_ticks);
    }
    drop(tear_down);
    r.regions = finish_profile();
    r.cpu = cpu_started_ns
        .zip(thread_cpu_ns())
        .map(|(a, b)| Duration::from_nanos(b.saturating_sub(a)));
    r
}

/// Drops every task of the seed, so that the world they share is freed with the report.
///
/// Why: dropping a madsim runtime does not drop its pending tasks. Each task holds the shared
/// world, and a task waiting on a channel is held by that channel's waker list, which the task
/// itself keeps alive: a cycle nothing breaks. Every seed then leaked its whole world (about
/// 1.5 MB a seed of the default profile), and `run --seeds 6000..26000` ran out of memory.
/// Killing a madsim node wakes its tasks, and the executor drops the future of every woken
/// task of a killed node instead of polling it.
fn drop_tasks(runtime: &Runtime, world: &Shared) {
    let nodes = lock(world).madsim_nodes();
    runtime.block_on(async move {
        let handle = Handle::current();
        for node in nodes {
            handle.kill(node);
        }
        // One turn of the executor: it drops every killed task before polling this one again.
        madsim::task::yield_now().await;
    });
}

fn report(
    w: &World,
    seed: u64,
    cfg: &RunConfig,
    options: Options,
    wall: Duration,
    overhead_ticks: u64,
) -> SeedReport {
    let (core_ticks, core_calls) = match w.timing {
        Some(t) => (
            Some(
                t.core_ticks
                    .saturating_sub(overhead_ticks.saturating_mul(t.calls)),
            ),
            t.calls,
        ),
        None => (None, 0),
    };
    SeedReport {
        seed,
        profile: cfg.profile,
        canary: cfg.canary,
        options,
        failure: w.failure.clone(),
        sim_ms: w.last_tick.as_millis(),
        wall,
        cpu: None,
        core_ticks,
        core_calls,
        run_ticks: 0,
        regions: None,
        trace_digest: w.trace.digest(),
        events: w.trace.events(),
        digest_log: w.trace.log().to_vec(),
        lines: w.trace.lines(),
        summary: summarize(w),
    }
}

fn summarize(w: &World) -> Summary {
    let counts = w
        .trace
        .counts()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for p in &w.facts.presentations {
        *outcomes.entry(p.outcome.label()).or_default() += 1;
    }
    for label in w.ns.outcome_labels() {
        *outcomes.entry(label).or_default() += 1;
    }
    let model = w.log.model_state();
    let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
    for t in &w.facts.tokens {
        let state = match model.records.get(&t.hash).map(|r| r.state) {
            None => "absent",
            Some(TokenState::Issued) => "issued",
            Some(TokenState::InFlight { .. }) => "in_flight",
            Some(TokenState::Consumed { .. }) => "consumed",
            Some(TokenState::Expired) => "expired",
            Some(TokenState::Aborted) => "aborted",
        };
        *tokens
            .entry(format!("{}:{state}", t.kind.as_str()))
            .or_default() += 1;
    }
    let replicas = w
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let node = s.node.as_ref()?;
            node.member_id()?;
            Some((
                slot_name(i, w.opts.founders),
                (
                    node.ledger().applied_index(),
                    node.ledger().digest().short(),
                ),
            ))
        })
        .collect();
    Summary {
        counts,
        outcomes,
        tokens,
        replicas,
        model_index: w.log.model_index(),
        model_compared: w.log.compared,
        model_unchecked: w.log.unchecked,
    }
}

/// The supervisor: the madsim main task of the seed.
async fn supervise(shared: Shared) {
    let handle = Handle::current();
    let (founders, tick_ms) = {
        let w = lock(&shared);
        (w.opts.founders, w.opts.tick_ms)
    };
    {
        let mut w = lock(&shared);
        for i in 0..founders {
            w.spawn_node(i, &handle, &shared);
        }
    }
    loop {
        madsim::time::sleep(Duration::from_millis(tick_ms)).await;
        let mut w = lock(&shared);
        let now = sim_now();
        w.last_tick = now;
        if w.stopped() {
            break;
        }
        match w.phase {
            Phase::Safety => {
                w.safety_tick(&handle, &shared);
                if now.as_millis() >= w.opts.safety_ms && !w.stopped() {
                    if w.opts.liveness_ms == 0 {
                        // No liveness phase (the benchmark): judge what the safety phase did.
                        w.final_checks();
                        w.phase = Phase::Done;
                        break;
                    }
                    w.begin_liveness(&handle, &shared);
                }
            }
            Phase::Liveness { since } => {
                let pending = w.liveness_tick();
                if w.stopped() {
                    break;
                }
                if pending.is_empty() {
                    w.final_checks();
                    if !w.stopped() {
                        w.phase = Phase::Done;
                    }
                    break;
                }
                if now.saturating_ms_since(since) >= w.opts.liveness_ms {
                    let shown: Vec<&String> = pending.iter().take(8).collect();
                    let more = pending.len().saturating_sub(shown.len());
                    let bound = w.opts.liveness_ms;
                    w.fail(Violation::new(
                        FailureKind::Liveness,
                        "liveness",
                        format!(
                            "not done {bound} ms after healing the core: {:?}{}",
                            shown,
                            if more > 0 {
                                format!(" and {more} more")
                            } else {
                                String::new()
                            }
                        ),
                    ));
                    break;
                }
            }
            Phase::Done => break,
        }
    }
}
