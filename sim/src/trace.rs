//! The event trace: a chained digest of everything that happened, optionally a per-event digest
//! log and readable lines.
//!
//! Every input a core is given, every output it produces and every action of the fault layer,
//! the workload and the supervisor is one *event*. Each event updates a running 64-bit digest
//! chained over the previous one, so two runs of one seed agree on the final digest exactly when
//! they agree on every event. [`TraceLevel::Log`] keeps the digest after each event (so
//! `check-determinism` can name the first event that differs); [`TraceLevel::Full`] also keeps
//! a readable line per event (`replay --trace`).
//!
//! ```text
//!   event ──▶ digest_n = H(digest_{n-1} ‖ time ‖ node ‖ kind ‖ bytes) ──▶ counts[kind] += 1
//!                 │                                                  └─▶ log[n]   (Log, Full)
//!                 └─▶ line "t+1.234567s n2  in.recv  from n1 Raft(Append …)"     (Full)
//! ```
//!
//! The hash is std's SipHash with fixed keys (`DefaultHasher::new`): deterministic within one
//! build, cheap enough to hash every frame. It is a fingerprint, not a security boundary.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};

use portcullis_core::time::Instant;

/// How much of the trace a run keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TraceLevel {
    /// The running digest and the counts by kind only (the cheapest; `run` and `bench`).
    #[default]
    Digest,
    /// Also the digest after every event (`check-determinism`, the determinism test).
    Log,
    /// Also a readable line per event (`replay --trace`).
    Full,
}

/// Most readable lines kept; a longer run keeps the last ones (the end is where failures are).
const MAX_LINES: usize = 2_000_000;

/// The trace of one run.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    level: TraceLevel,
    founders: usize,
    digest: u64,
    events: u64,
    log: Vec<u64>,
    lines: std::collections::VecDeque<String>,
    counts: BTreeMap<&'static str, u64>,
}

/// Fingerprint of arbitrary bytes (SipHash with fixed keys).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

impl Trace {
    /// An empty trace at `level`; slots below `founders` are named `n<i>`, the rest `j<i>`.
    pub fn new(level: TraceLevel, founders: usize) -> Trace {
        Trace {
            level,
            founders,
            ..Trace::default()
        }
    }

    /// Whether readable lines are kept (callers skip formatting otherwise).
    pub fn wants_lines(&self) -> bool {
        self.level == TraceLevel::Full
    }

    /// Records one event. `bytes` is what identifies its content; `line` is only called when
    /// readable lines are kept.
    pub fn record(
        &mut self,
        now: Instant,
        node: Option<usize>,
        kind: &'static str,
        bytes: &[u8],
        line: impl FnOnce() -> String,
    ) {
        let mut h = DefaultHasher::new();
        h.write_u64(self.digest);
        h.write_u64(now.as_nanos());
        h.write_u64(node.map_or(u64::MAX, |n| n as u64));
        h.write(kind.as_bytes());
        h.write(bytes);
        self.digest = h.finish();
        self.events += 1;
        *self.counts.entry(kind).or_default() += 1;
        if self.level >= TraceLevel::Log {
            self.log.push(self.digest);
        }
        if self.level == TraceLevel::Full {
            let who = node.map_or_else(|| "--".to_owned(), |n| slot_name(n, self.founders));
            let text = format!(
                "#{:<7} {:?} {:<4} {:<15} {}",
                self.events,
                now,
                who,
                kind,
                line()
            );
            if self.lines.len() >= MAX_LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(text);
        }
    }

    /// The running digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The digest after each event (empty below [`TraceLevel::Log`]).
    pub fn log(&self) -> &[u64] {
        &self.log
    }

    /// Readable lines (empty below [`TraceLevel::Full`]).
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// Events by kind.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }
}

/// The name of slot `n` in traces and reports: `n<i>` for founders, `j<i>` for joiners.
pub fn slot_name(n: usize, founders: usize) -> String {
    if n < founders {
        format!("n{n}")
    } else {
        format!("j{n}")
    }
}
