//! Shrinking a failing seed's options to the fewest faults and the smallest workload that still
//! fail the same way.
//!
//! The seed stays fixed; knobs are switched off or made smaller one at a time, and a change is
//! kept when the run still fails with the same signature (the same known core bug, or else the
//! same checker). Probabilities set to zero still draw from the fault stream (`gen_bool(0.0)`
//! consumes a number), so most of the trajectory survives a change and shrinking converges.
//!
//! ```text
//!   options ──▶ for each knob: try smaller ──▶ run(seed) fails the same way? keep : undo
//!           └─▶ repeat until a whole pass changes nothing ──▶ Rust snippet for a regression test
//! ```

use crate::options::{Canary, Options, Profile};
use crate::report::SeedReport;
use crate::run::{RunConfig, run_seed_on_fresh_thread};

/// What identifies "the same failure".
fn signature(r: &SeedReport) -> Option<String> {
    let f = r.failure.as_ref()?;
    Some(match r.known_bug() {
        Some(b) => format!("known:{}", b.id),
        None => format!("{}:{}", f.kind.as_str(), f.checker),
    })
}

type Shrink = fn(&mut Options) -> bool;

/// One candidate change per knob: returns false when the knob is already minimal.
const SHRINKS: &[(&str, Shrink)] = &[
    ("crash_rate", |o| zero_f(&mut o.crash_rate)),
    ("crash_on_write", |o| zero_f(&mut o.crash_on_write)),
    ("partition_rate", |o| zero_f(&mut o.partition_rate)),
    ("clog_rate", |o| zero_f(&mut o.clog_rate)),
    ("loss", |o| zero_f(&mut o.loss)),
    ("duplicate", |o| zero_f(&mut o.duplicate)),
    ("replay", |o| zero_f(&mut o.replay)),
    ("reorder", |o| zero_f(&mut o.reorder)),
    ("reply_loss", |o| zero_f(&mut o.reply_loss)),
    ("torn", |o| zero_f(&mut o.torn)),
    ("slow_fsync", |o| zero_f(&mut o.slow_fsync)),
    ("lease_nemesis", |o| zero_f(&mut o.lease_nemesis)),
    ("max_skew_ms", |o| zero_u(&mut o.max_skew_ms)),
    ("latency_max_ms", |o| {
        let changed = o.latency_max_ms != o.latency_min_ms;
        o.latency_max_ms = o.latency_min_ms;
        changed
    }),
    ("fsync_max_ms", |o| {
        let changed = o.fsync_max_ms != o.fsync_min_ms;
        o.fsync_max_ms = o.fsync_min_ms;
        changed
    }),
    ("short_ttl_tokens", |o| zero_n(&mut o.short_ttl_tokens)),
    ("expired_tokens", |o| zero_n(&mut o.expired_tokens)),
    ("forged_tokens", |o| zero_n(&mut o.forged_tokens)),
    ("wrong_cluster_tokens", |o| {
        zero_n(&mut o.wrong_cluster_tokens)
    }),
    ("revoked_tokens", |o| zero_n(&mut o.revoked_tokens)),
    ("late_replays", |o| zero_n(&mut o.late_replays)),
    ("disk_wipes", |o| zero_n(&mut o.disk_wipes)),
    ("valid_tokens", |o| dec(&mut o.valid_tokens, 1)),
    ("max_presenters", |o| dec(&mut o.max_presenters, 1)),
    ("founders", |o| {
        if o.founders <= 3 {
            return false;
        }
        o.founders -= 1;
        o.core_size = o.core_size.min(o.founders).max(o.founders / 2 + 1);
        true
    }),
    ("safety_ms", |o| {
        if o.safety_ms <= 4_000 {
            return false;
        }
        o.safety_ms = (o.safety_ms / 2).max(4_000);
        true
    }),
];

fn zero_f(x: &mut f64) -> bool {
    let changed = *x != 0.0;
    *x = 0.0;
    changed
}

fn zero_u(x: &mut u64) -> bool {
    let changed = *x != 0;
    *x = 0;
    changed
}

fn zero_n(x: &mut usize) -> bool {
    let changed = *x != 0;
    *x = 0;
    changed
}

fn dec(x: &mut usize, min: usize) -> bool {
    if *x <= min {
        return false;
    }
    *x -= 1;
    true
}

/// The result of shrinking.
#[derive(Clone, Debug)]
pub struct Minimized {
    /// The seed.
    pub seed: u64,
    /// The profile the original options were drawn from.
    pub profile: Profile,
    /// The smallest options found.
    pub options: Options,
    /// The knobs that were shrunk, in order.
    pub shrunk: Vec<&'static str>,
    /// The failure signature kept throughout.
    pub signature: String,
    /// The final run's report.
    pub report: SeedReport,
}

/// Shrinks `seed`'s options (`start`, e.g. drawn from `profile`) while it keeps failing the
/// same way. `None` if the seed passes. `progress` hears about every kept change.
pub fn minimize(
    seed: u64,
    profile: Profile,
    start: Options,
    canary: Option<Canary>,
    mut progress: impl FnMut(&str),
) -> Option<Minimized> {
    let run = |o: &Options| {
        let mut cfg = RunConfig::new(profile);
        cfg.options = Some(o.clone());
        cfg.canary = canary;
        run_seed_on_fresh_thread(seed, cfg)
    };
    let mut best = start;
    let mut report = run(&best);
    let target = signature(&report)?;
    let mut shrunk = Vec::new();
    loop {
        let mut changed = false;
        for (name, shrink) in SHRINKS {
            let mut candidate = best.clone();
            if !shrink(&mut candidate) {
                continue;
            }
            let r = run(&candidate);
            if signature(&r).as_deref() == Some(target.as_str()) {
                progress(name);
                best = candidate;
                report = r;
                shrunk.push(*name);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Some(Minimized {
        seed,
        profile,
        options: best,
        shrunk,
        signature: target,
        report,
    })
}

impl Minimized {
    /// Rust code that rebuilds the minimized options from the seed's draw.
    pub fn as_rust(&self) -> String {
        let base = Options::draw(self.seed, self.profile);
        let mut lines = vec![format!(
            "let mut o = Options::draw({}, Profile::{:?});",
            self.seed, self.profile
        )];
        for (k, v) in self.options.diff(&base) {
            lines.push(format!("o.set(\"{k}\", \"{v}\").unwrap();"));
        }
        lines.join("\n")
    }
}
