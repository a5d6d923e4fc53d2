//! `portcullis-sim`: run simulation seeds, replay one, check determinism, shrink a failure,
//! benchmark.
//!
//! ```text
//!   portcullis-sim run --seeds 0..2000 [--jobs 2] [--profile default] [--strict]
//!                                          progress on stderr, failures as they happen, JSON on stdout
//!   portcullis-sim replay 42 [--profile swarm] [--trace]     what one seed did (the full event trace)
//!   portcullis-sim check-determinism 42 [--profile P]        run twice, name the first differing event
//!   portcullis-sim minimize 42 [--profile P]                 shrink a failing seed's knobs
//!   portcullis-sim bench [--seeds 5]                         the standard scenario's speed on one core
//!   portcullis-sim replay-recording FILE... [--secrets DIR] [--node-key FILE] [--seed HEX]
//!                                          [--namespace-key FILE]...
//!                                          re-execute a flight recording, name the first divergence
//! ```
//!
//! Every command that runs a seed takes `--set KEY=VALUE` (repeatable) to override a knob of the
//! seed's draw, and `--canary NAME` to switch on a planted core bug (a build with
//! `--features canaries`). `replay` and `check-determinism` take `--bench-scenario`.
//!
//! Exit codes: 0 every seed passed (known, not yet fixed core bugs are listed but do not fail
//! `run` unless `--strict`); 1 a safety failure; 2 a liveness failure; 3 a crash (panic, fatal
//! node error, simulator inconsistency); 4 non-determinism; 64 usage. With several kinds of
//! failure, safety wins over crash, crash over liveness. `replay-recording`: 0 identical; 5 a
//! divergence; 6 the recording is unreadable, of another format version or incomplete; 7 a
//! secret is missing or is not the one the node ran with.

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use portcullis_core::crypto::op_counts;
use portcullis_core::rng::NodeSeed;
use portcullis_sim::json::Json;
use portcullis_sim::replay_recording::{self, ReplayError};
use portcullis_sim::timing::{Region, RegionTicks, SignatureCosts};
use portcullis_sim::{
    CANARIES_BUILT_IN, Canary, FailureKind, Options, Profile, RunConfig, SeedReport, TraceLevel,
    commit, run_seed_on_fresh_thread,
};

/// mimalloc instead of glibc's malloc: a seed allocates and frees at nearly every event, and
/// with glibc the allocator was about a tenth of a seed's perf samples (the standard scenario
/// ran 4.8% fewer instructions with mimalloc under callgrind, and ~10% less CPU time).
/// Allocation order never reaches a seed's behaviour, so the choice cannot change a trace.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_NONDETERMINISM: u8 = 4;
const EXIT_DIVERGENCE: u8 = 5;
const EXIT_BAD_RECORDING: u8 = 6;
const EXIT_REPLAY_SECRETS: u8 = 7;
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-sim",
    version,
    about = "Deterministic simulation of portcullis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a range of seeds; print failures as they happen and a JSON summary at the end.
    Run {
        /// Seeds to run, `A..B` (B excluded) or a single seed.
        #[arg(long, value_parser = parse_seeds)]
        seeds: Range<u64>,
        /// Worker threads (each seed still gets a fresh thread of its own).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Knob profile: lite, default or swarm.
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Switch on a planted core bug (build with `--features canaries`).
        #[arg(long)]
        canary: Option<Canary>,
        /// Let failures of known, not yet fixed core bugs fail the run too.
        #[arg(long)]
        strict: bool,
        /// Override a knob of every seed's draw (`--set loss=0`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Replay one seed and print what happened.
    Replay {
        /// The seed.
        seed: u64,
        /// Knob profile the seed ran with.
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Print the full event trace.
        #[arg(long)]
        trace: bool,
        /// Use the benchmark's standard scenario instead of a profile.
        #[arg(long)]
        bench_scenario: bool,
        /// Switch on a planted core bug (build with `--features canaries`).
        #[arg(long)]
        canary: Option<Canary>,
        /// Override a knob of the seed's draw (`--set loss=0`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Run a seed twice and report the first event whose digest differs.
    CheckDeterminism {
        /// The seed.
        seed: u64,
        /// Knob profile.
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Use the benchmark's standard scenario instead of a profile.
        #[arg(long)]
        bench_scenario: bool,
        /// Override a knob of the seed's draw (`--set loss=0`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Shrink a failing seed's options while it keeps failing the same way; print them as
    /// Rust for a regression test.
    Minimize {
        /// The seed.
        seed: u64,
        /// Knob profile the seed failed with.
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Switch on a planted core bug (build with `--features canaries`).
        #[arg(long)]
        canary: Option<Canary>,
        /// Start from the seed's draw with these overrides (`--set disk_wipes=1`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// The standard scenario (5 nodes, 30 tokens × 3 presenters, 60 s, default faults) on one
    /// core: seeds per second, simulated-to-real ratio, share of time inside the core, where the
    /// rest goes, and the ceilings the core's own time and its signatures set.
    Bench {
        /// Seeds to run (0..N).
        #[arg(long, default_value_t = 5)]
        seeds: u64,
    },
    /// Re-execute a flight recording against the core and report the first record whose
    /// outputs differ.
    ReplayRecording {
        /// The recording's files, oldest first (every file of a rotated recording, in order).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The cluster secrets directory (`cluster.key`, `join.secret`): needed for a node that
        /// admits, and for a joiner (its token's tag is rebuilt from the join secret).
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// The node's secret key: a file of 32 raw bytes.
        #[arg(long)]
        node_key: Option<PathBuf>,
        /// The node's seed, when the recording holds only its hash: 64 hex characters (32
        /// bytes, as `DATA_DIR/recording-seeds` notes it), or a simulator's decimal u64 seed.
        #[arg(long, value_name = "HEX")]
        seed: Option<NodeSeed>,
        /// A namespace identity key (32 raw bytes) of a node recovered from its durable state
        /// (the recording holds only its public key); repeatable.
        #[arg(long = "namespace-key", value_name = "FILE")]
        namespace_keys: Vec<PathBuf>,
    },
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("`{s}`: {e}"));
    match text.split_once("..") {
        Some((a, b)) => {
            let a = parse(a)?;
            let b = match b.strip_prefix('=') {
                Some(b) => parse(b)?.saturating_add(1),
                None => parse(b)?,
            };
            if a >= b {
                return Err(format!("empty range {text}"));
            }
            Ok(a..b)
        }
        None => {
            let a = parse(text)?;
            Ok(a..a.saturating_add(1))
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run {
            seeds,
            jobs,
            profile,
            canary,
            strict,
            sets,
        } => {
            if let Some(code) = refuse_canary(canary) {
                return code;
            }
            // Check the overrides once, before any seed runs.
            if let Err(code) = with_sets(Options::draw(seeds.start, profile), &sets) {
                return code;
            }
            run(seeds, jobs.max(1), profile, canary, strict, sets)
        }
        Command::Replay {
            seed,
            profile,
            trace,
            bench_scenario,
            canary,
            sets,
        } => {
            if let Some(code) = refuse_canary(canary) {
                return code;
            }
            let cfg = match config(seed, profile, bench_scenario, &sets) {
                Ok(mut cfg) => {
                    cfg.canary = canary;
                    cfg
                }
                Err(code) => return code,
            };
            replay(seed, cfg, trace)
        }
        Command::CheckDeterminism {
            seed,
            profile,
            bench_scenario,
            sets,
        } => match config(seed, profile, bench_scenario, &sets) {
            Ok(cfg) => check_determinism(seed, cfg),
            Err(code) => code,
        },
        Command::Minimize {
            seed,
            profile,
            canary,
            sets,
        } => {
            if let Some(code) = refuse_canary(canary) {
                return code;
            }
            match with_sets(Options::draw(seed, profile), &sets) {
                Ok(start) => minimize(seed, profile, start, canary),
                Err(code) => code,
            }
        }
        Command::Bench { seeds } => bench(seeds.max(1)),
        Command::ReplayRecording {
            files,
            secrets,
            node_key,
            seed,
            namespace_keys,
        } => replay_recording(
            &files,
            secrets.as_deref(),
            node_key.as_deref(),
            seed,
            &namespace_keys,
        ),
    }
}

fn replay_recording(
    files: &[PathBuf],
    secrets_dir: Option<&Path>,
    node_key: Option<&Path>,
    seed: Option<NodeSeed>,
    namespace_keys: &[PathBuf],
) -> ExitCode {
    let loaded = replay_recording::load_secrets(secrets_dir, node_key, seed).and_then(|mut s| {
        s.namespace_keys = replay_recording::load_keys(namespace_keys)?;
        Ok(s)
    });
    let secrets = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_REPLAY_SECRETS);
        }
    };
    match replay_recording::replay_files(files, &secrets) {
        Ok(report) => {
            for (index, note) in &report.notes {
                eprintln!("note: record {index}: {note}");
            }
            match &report.divergence {
                None => {
                    println!("identical: {} records replayed", report.records);
                    ExitCode::SUCCESS
                }
                Some(d) => {
                    print!("{d}");
                    ExitCode::from(EXIT_DIVERGENCE)
                }
            }
        }
        Err(e @ (ReplayError::Recording(_) | ReplayError::Io { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_RECORDING)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_REPLAY_SECRETS)
        }
    }
}

/// A canary needs a build with the `canaries` feature: say so instead of running.
fn refuse_canary(canary: Option<Canary>) -> Option<ExitCode> {
    if canary.is_some() && !CANARIES_BUILT_IN {
        eprintln!(
            "error: --canary needs a build with the planted bugs: \
             cargo run --release -p portcullis-sim --features canaries --bin portcullis-sim -- ..."
        );
        return Some(ExitCode::from(EXIT_USAGE));
    }
    None
}

/// Applies `--set` overrides; a bad one is a usage error.
fn with_sets(mut options: Options, sets: &[String]) -> Result<Options, ExitCode> {
    if let Err((pair, e)) = options.set_pairs(sets.iter().map(String::as_str)) {
        eprintln!("error: --set {pair}: {e}");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(options)
}

fn config(
    seed: u64,
    profile: Profile,
    bench_scenario: bool,
    sets: &[String],
) -> Result<RunConfig, ExitCode> {
    let mut cfg = RunConfig::new(profile);
    let base = if bench_scenario {
        Options::bench(seed)
    } else {
        Options::draw(seed, profile)
    };
    if bench_scenario || !sets.is_empty() {
        cfg.options = Some(with_sets(base, sets)?);
    }
    Ok(cfg)
}

fn exit_for(kinds: impl IntoIterator<Item = FailureKind>) -> ExitCode {
    kinds
        .into_iter()
        .max_by_key(|k| k.severity())
        .map_or(ExitCode::SUCCESS, |k| {
            ExitCode::from(u8::try_from(k.exit_code()).unwrap_or(1))
        })
}

fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

struct Progress {
    total: u64,
    done: u64,
    passed: u64,
    known: u64,
    by_kind: [u64; 3],
    started: Instant,
    last_print: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            done: 0,
            passed: 0,
            known: 0,
            by_kind: [0; 3],
            started: Instant::now(),
            last_print: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Counts one finished seed and redraws the line (at most every 200 ms on a terminal).
    fn count(&mut self, failure: Option<FailureKind>) {
        self.done += 1;
        match failure {
            None => self.passed += 1,
            Some(k) => self.by_kind[kind_index(k)] += 1,
        }
        self.show(false);
    }

    /// Draws the final line and ends it.
    fn finish(&mut self) {
        self.show(true);
        if self.terminal {
            eprintln!();
        }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let rate = self.done as f64 / elapsed.as_secs_f64().max(1e-9);
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            duration_text(Duration::from_secs_f64(left as f64 / rate))
        } else {
            "?".to_owned()
        };
        format!(
            "[{:>6}/{}] pass {} | known core bugs {} | safety {} | liveness {} | crash {} | {:.1} seeds/s | elapsed {} | eta {}",
            self.done,
            self.total,
            self.passed,
            self.known,
            self.by_kind[0],
            self.by_kind[1],
            self.by_kind[2],
            rate,
            duration_text(elapsed),
            eta
        )
    }

    fn show(&mut self, force: bool) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !force && self.last_print.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_print = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{}", self.line());
        } else {
            let _ = writeln!(err, "{}", self.line());
        }
        let _ = err.flush();
    }

    /// Prints a whole message above the progress line.
    fn message(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{text}");
        drop(err);
        self.show(true);
    }
}

fn kind_index(k: FailureKind) -> usize {
    match k {
        FailureKind::Safety => 0,
        FailureKind::Liveness => 1,
        FailureKind::Crash => 2,
    }
}

fn run(
    seeds: Range<u64>,
    jobs: usize,
    profile: Profile,
    canary: Option<Canary>,
    strict: bool,
    sets: Vec<String>,
) -> ExitCode {
    let sets = Arc::new(sets);
    let total = seeds.end - seeds.start;
    let next = Arc::new(AtomicU64::new(seeds.start));
    let (tx, rx) = mpsc::channel::<SeedReport>();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let next = next.clone();
        let tx = tx.clone();
        let end = seeds.end;
        let sets = sets.clone();
        workers.push(std::thread::spawn(move || {
            loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let mut cfg = RunConfig::new(profile);
                cfg.canary = canary;
                if !sets.is_empty() {
                    // Validated before the workers started.
                    cfg.options = with_sets(Options::draw(seed, profile), &sets).ok();
                }
                let report = run_seed_on_fresh_thread(seed, cfg);
                if tx.send(report).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut progress = Progress::new(total);
    progress.started = started;
    let mut failures: Vec<SeedReport> = Vec::new();
    let mut known: Vec<SeedReport> = Vec::new();
    let mut sim_ms_total = 0u64;
    for report in rx {
        progress.done += 1;
        sim_ms_total += report.sim_ms;
        match &report.failure {
            None => progress.passed += 1,
            // A canary run expects failures; known core bugs are listed apart unless strict.
            Some(_) if report.known_bug().is_some() && !strict && canary.is_none() => {
                progress.known += 1;
                known.push(report);
            }
            Some(f) => {
                progress.by_kind[kind_index(f.kind)] += 1;
                progress.message(&report.failure_report());
                failures.push(report);
            }
        }
        progress.show(false);
    }
    for w in workers {
        let _ = w.join();
    }
    progress.show(true);
    eprintln!();
    failures.sort_by_key(|r| r.seed);
    known.sort_by_key(|r| r.seed);
    let wall = started.elapsed();
    let mut known_by_bug: std::collections::BTreeMap<&str, Vec<Json>> = Default::default();
    for r in &known {
        if let Some(b) = r.known_bug() {
            known_by_bug
                .entry(b.id)
                .or_default()
                .push(Json::U64(r.seed));
        }
    }
    let summary = Json::obj(vec![
        ("command", Json::Str("run".into())),
        ("profile", Json::Str(profile.to_string())),
        (
            "seeds",
            Json::obj(vec![
                ("start", Json::U64(seeds.start)),
                ("end", Json::U64(seeds.end)),
            ]),
        ),
        ("jobs", Json::U64(jobs as u64)),
        ("commit", Json::Str(commit())),
        ("total", Json::U64(total)),
        (
            "canary",
            canary.map_or(Json::Null, |c| Json::Str(c.to_string())),
        ),
        ("passed", Json::U64(progress.passed)),
        ("failed", Json::U64(failures.len() as u64)),
        ("known_core_bugs", Json::U64(known.len() as u64)),
        (
            "known_core_bug_seeds",
            Json::Obj(
                known_by_bug
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Json::Arr(v)))
                    .collect(),
            ),
        ),
        (
            "failed_by_kind",
            Json::obj(vec![
                ("safety", Json::U64(progress.by_kind[0])),
                ("liveness", Json::U64(progress.by_kind[1])),
                ("crash", Json::U64(progress.by_kind[2])),
            ]),
        ),
        ("wall_ms", Json::U64(wall.as_millis() as u64)),
        ("simulated_ms", Json::U64(sim_ms_total)),
        (
            "seeds_per_second",
            Json::F64(total as f64 / wall.as_secs_f64().max(1e-9)),
        ),
        (
            "failures",
            Json::Arr(failures.iter().map(SeedReport::to_json).collect()),
        ),
    ]);
    println!("{}", summary.pretty());
    exit_for(
        failures
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| f.kind)),
    )
}

fn print_summary(report: &SeedReport) {
    let s = &report.summary;
    println!("seed {} — options: {}", report.seed, report.options);
    println!(
        "simulated {} ms in {} ({} events, trace digest {:016x})",
        report.sim_ms,
        duration_text(report.wall),
        report.events,
        report.trace_digest
    );
    println!("presentations: {:?}", s.outcomes);
    println!("tokens: {:?}", s.tokens);
    println!("replicas (applied index, digest): {:?}", s.replicas);
    println!(
        "spec model applied through index {} ({} replica observations compared, {} not)",
        s.model_index, s.model_compared, s.model_unchecked
    );
    println!("events by kind: {:?}", s.counts);
}

fn replay(seed: u64, cfg: RunConfig, trace: bool) -> ExitCode {
    let level = if trace {
        TraceLevel::Full
    } else {
        TraceLevel::Digest
    };
    let report = run_seed_on_fresh_thread(seed, cfg.with_trace(level));
    {
        let mut out = std::io::stdout().lock();
        for line in &report.lines {
            let _ = writeln!(out, "{line}");
        }
    }
    print_summary(&report);
    match &report.failure {
        None => {
            println!("PASSED seed {seed}");
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!("{}", report.failure_report());
            exit_for([f.kind])
        }
    }
}

fn check_determinism(seed: u64, cfg: RunConfig) -> ExitCode {
    let cfg = cfg.with_trace(TraceLevel::Full);
    let a = run_seed_on_fresh_thread(seed, cfg.clone());
    let b = run_seed_on_fresh_thread(seed, cfg);
    let first_diff = a
        .digest_log
        .iter()
        .zip(&b.digest_log)
        .position(|(x, y)| x != y)
        .or_else(|| {
            (a.digest_log.len() != b.digest_log.len())
                .then(|| a.digest_log.len().min(b.digest_log.len()))
        });
    let Some(i) = first_diff else {
        println!(
            "seed {seed} is deterministic: {} events, trace digest {:016x} in both runs",
            a.events, a.trace_digest
        );
        return ExitCode::SUCCESS;
    };
    println!("seed {seed} is NOT deterministic: event #{} differs", i + 1);
    // Lines are numbered from 1, like events; show some context before the first difference.
    let from = i.saturating_sub(5);
    for (name, r) in [("run 1", &a), ("run 2", &b)] {
        println!("--- {name} (events {}..={}):", from + 1, i + 1);
        for line in r.lines.iter().skip(from).take(i + 1 - from) {
            println!("{line}");
        }
    }
    println!("commit: {}\nreplay: {}", commit(), a.replay_command());
    ExitCode::from(EXIT_NONDETERMINISM)
}

fn minimize(seed: u64, profile: Profile, start: Options, canary: Option<Canary>) -> ExitCode {
    let Some(m) = portcullis_sim::minimize::minimize(seed, profile, start, canary, |knob| {
        eprintln!("shrunk {knob}");
    }) else {
        println!("seed {seed} passes with profile {profile}: nothing to minimize");
        return ExitCode::SUCCESS;
    };
    println!("signature kept: {}", m.signature);
    println!("shrunk: {:?}", m.shrunk);
    println!("{}", m.report.failure_report());
    println!("--- options for a regression test:\n{}", m.as_rust());
    exit_for(m.report.failure.as_ref().map(|f| f.kind))
}

fn bench(seeds: u64) -> ExitCode {
    let scenario = |seed: u64, time_core: bool, profile_regions: bool| {
        let mut cfg = RunConfig::new(Profile::Default);
        cfg.options = Some(Options::bench(seed));
        cfg.time_core = time_core;
        cfg.profile_regions = profile_regions;
        // Measure whole runs: a failure is reported but does not cut the run short.
        cfg.keep_going = true;
        cfg
    };
    // Pass 1: plain runs, one seed at a time, each on its own thread. Seeds per second on one
    // core come from the seed threads' CPU time, so other load on the machine does not count.
    let mut wall = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    let mut sim_ms = 0u64;
    let mut events = 0u64;
    let mut failures = Vec::new();
    let mut progress = Progress::new(3 * seeds);
    // Seeds run one at a time, so the process-wide counts between here and the end of the pass
    // are this pass's seeds' own.
    let ops_before = op_counts::snapshot();
    for seed in 0..seeds {
        let r = run_seed_on_fresh_thread(seed, scenario(seed, false, false));
        progress.count(r.failure.as_ref().map(|f| f.kind));
        wall += r.wall;
        cpu += r.cpu.unwrap_or(r.wall);
        sim_ms += r.sim_ms;
        events += r.events;
        if r.failure.is_some() {
            progress.message(&r.failure_report());
            failures.push(r);
        }
    }
    let ops = op_counts::snapshot().since(&ops_before);
    // Pass 2: the same seeds with every core call timed (time-stamp counter ticks, a few
    // nanoseconds a read), over the ticks of each whole seed.
    let mut timed_cpu = Duration::ZERO;
    let mut core_ticks = 0u64;
    let mut run_ticks = 0u64;
    let mut core_calls = 0u64;
    for seed in 0..seeds {
        let r = run_seed_on_fresh_thread(seed, scenario(seed, true, false));
        progress.count(r.failure.as_ref().map(|f| f.kind));
        timed_cpu += r.cpu.unwrap_or(r.wall);
        core_ticks += r.core_ticks.unwrap_or(0);
        run_ticks += r.run_ticks;
        core_calls += r.core_calls;
    }
    // Pass 3: the same seeds again, with the time of every simulator region measured too. A
    // pass of its own, so the region switches around each core call do not weigh on pass 2's
    // share.
    let mut regions = RegionTicks::default();
    for seed in 0..seeds {
        let r = run_seed_on_fresh_thread(seed, scenario(seed, true, true));
        progress.count(r.failure.as_ref().map(|f| f.kind));
        if let Some(t) = &r.regions {
            regions.add(t);
        }
    }
    progress.finish();
    let per_s = |d: Duration| seeds as f64 / d.as_secs_f64().max(1e-9);
    let seeds_per_s = per_s(cpu);
    let ratio = (sim_ms as f64 / 1_000.0) / cpu.as_secs_f64().max(1e-9);
    let share = core_ticks as f64 / (run_ticks as f64).max(1.0);
    println!(
        "bench: {seeds} seeds of the standard scenario (5 founders, 30 tokens x 3 presenters, 10 namespace joins, 60 simulated seconds, default faults)"
    );
    println!(
        "  seeds per second on one core: {seeds_per_s:.2} ({:.1} ms CPU per seed; wall: {:.2} seeds/s)",
        cpu.as_secs_f64() * 1e3 / seeds.max(1) as f64,
        per_s(wall)
    );
    println!(
        "  simulated / real time:        {ratio:.1}x ({} events per seed)",
        events / seeds.max(1)
    );
    println!(
        "  share of time in core calls (handle/poll_output/poll_timeout): {:.1}% ({} calls)",
        share * 100.0,
        core_calls
    );
    println!(
        "  timed pass: {:.1} ms CPU per seed (untimed: {:.1}; what the timing itself costs)",
        timed_cpu.as_secs_f64() * 1e3 / seeds.max(1) as f64,
        cpu.as_secs_f64() * 1e3 / seeds.max(1) as f64,
    );
    // Where pass 3's time went, region by region (the core's share above, from pass 2, is the
    // figure the target is about: region switches cost the core's calls a little in pass 3).
    let region_share =
        |region: Region| regions.get(region) as f64 / (regions.total() as f64).max(1.0);
    println!("  where a profiled pass's time went, by region of the simulator:");
    for region in Region::ALL {
        println!(
            "    {:<38} {:5.1}%",
            region.name(),
            100.0 * region_share(region)
        );
    }
    // What bounds seeds per second from below, whatever the simulator costs: the core's own
    // calls, and within them (and the set-up's keys) the public-key cryptography.
    let n = seeds.max(1) as f64;
    // The share and the CPU time of the same (timed) pass, so machine drift between the
    // passes does not mix in.
    let core_ms_per_seed = share * timed_cpu.as_secs_f64() * 1e3 / n;
    let ceiling = |ms: f64| 1e3 / ms.max(1e-9);
    println!(
        "  the core's calls alone: {core_ms_per_seed:.1} ms CPU per seed, so even a simulator that cost nothing would run at most {:.1} seeds/s",
        ceiling(core_ms_per_seed)
    );
    let per_seed = |count: u64| count as f64 / n;
    println!(
        "  signature work per seed: {:.1} signs, {:.1} verifications, {:.1} keys derived",
        per_seed(ops.signs),
        per_seed(ops.verifies),
        per_seed(ops.keys_derived)
    );
    let signature_ms_per_seed = SignatureCosts::measure().map(|c| {
        let ns = per_seed(ops.signs) * c.sign_ns
            + per_seed(ops.verifies) * c.verify_ns
            + per_seed(ops.keys_derived) * c.key_ns;
        println!(
            "    at this machine's costs (sign {:.1} us, verify {:.1} us, key {:.1} us): {:.1} ms CPU per seed, a ceiling of {:.1} seeds/s on its own",
            c.sign_ns / 1e3,
            c.verify_ns / 1e3,
            c.key_ns / 1e3,
            ns / 1e6,
            ceiling(ns / 1e6)
        );
        ns / 1e6
    });
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  target >= 20 seeds/s per core: {}; simulator overhead outside the core {:.1}% (target < 50%): {}",
        verdict(seeds_per_s >= 20.0),
        (1.0 - share) * 100.0,
        verdict(share > 0.5)
    );
    let json = Json::obj(vec![
        ("command", Json::Str("bench".into())),
        ("commit", Json::Str(commit())),
        ("seeds", Json::U64(seeds)),
        ("seeds_per_second", Json::F64(seeds_per_s)),
        ("sim_to_real", Json::F64(ratio)),
        ("core_share", Json::F64(share)),
        ("core_calls", Json::U64(core_calls)),
        ("wall_ms", Json::U64(wall.as_millis() as u64)),
        ("cpu_ms", Json::U64(cpu.as_millis() as u64)),
        ("events_per_seed", Json::U64(events / seeds.max(1))),
        ("core_ms_per_seed", Json::F64(core_ms_per_seed)),
        (
            "regions",
            Json::obj(
                Region::ALL
                    .iter()
                    .map(|r| (r.key(), Json::F64(region_share(*r))))
                    .collect(),
            ),
        ),
        (
            "signature_ms_per_seed",
            signature_ms_per_seed.map_or(Json::Null, Json::F64),
        ),
        ("signs", Json::U64(ops.signs)),
        ("verifications", Json::U64(ops.verifies)),
        ("keys_derived", Json::U64(ops.keys_derived)),
        ("simulated_ms", Json::U64(sim_ms)),
        ("failed", Json::U64(failures.len() as u64)),
    ]);
    println!("{}", json.pretty());
    exit_for(
        failures
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| f.kind)),
    )
}
