//! Host time inside a simulation, for the benchmark's seeds per second and "share of time in the
//! core".
//!
//! madsim replaces the libc `clock_gettime` symbol: inside a simulation `std::time::Instant`
//! returns *simulated* time, which is exactly right for everything else and useless for
//! measuring how long a core call really took. [`thread_cpu_ns`] asks the kernel directly with a
//! raw `clock_gettime` system call, which madsim does not intercept, for the CPU time of the
//! calling thread: a seed runs on one thread, so this is its cost on one core, unaffected by
//! other processes sharing the machine (wall time is not). It costs a system call (~200 ns),
//! too much to wrap each of a seed's ~100,000 core calls: those are timed with [`ticks`] (the
//! time-stamp counter), and the core's share is core ticks over the whole run's ticks.

/// CPU time used so far by the calling thread, in nanoseconds, bypassing madsim's clock
/// interception; `None` where no raw system call is available.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `SYS_clock_gettime` takes a clock id and a pointer to one `timespec`, which lives
    // on this stack frame for the whole call; the kernel writes nothing else. No Rust invariant
    // depends on the result beyond the return code, which is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_THREAD_CPUTIME_ID,
            &mut ts as *mut libc::timespec,
        )
    };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Thread CPU time: not available on this platform.
#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_ns() -> Option<u64> {
    None
}

/// A cheap, monotonic tick count for timing short regions: the CPU's time-stamp counter on
/// x86-64 (a few nanoseconds to read, so timing 100,000 core calls per seed barely disturbs
/// what it measures, unlike a system call per read), thread CPU nanoseconds elsewhere. Only
/// ratios of ticks are reported, so their unit never matters.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn ticks() -> u64 {
    // SAFETY: `rdtsc` reads a counter register; every x86-64 CPU has it, and it touches no
    // memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// See the x86-64 version: thread CPU nanoseconds here (0 where unavailable).
#[cfg(not(target_arch = "x86_64"))]
pub fn ticks() -> u64 {
    thread_cpu_ns().unwrap_or(0)
}

/// The measured cost of one timed region's two tick reads (median of a few hundred samples),
/// so the core's share can be reported net of the measurement itself.
pub fn call_overhead_ticks() -> u64 {
    let mut samples: Vec<u64> = (0..301)
        .map(|_| {
            let a = ticks();
            let b = ticks();
            b.saturating_sub(a)
        })
        .collect();
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}

/// A part of the simulator that a seed's time can be in, for the benchmark's breakdown of
/// "simulator overhead" (everything outside [`Region::Core`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Region {
    /// madsim's executor, timers and pipe tasks, and the driver loops around them: whatever no
    /// other region claims.
    Madsim,
    /// The core's `handle`, `poll_output` and `poll_timeout`.
    Core,
    /// The replica, committed-log and model checkers (after each step that applied entries).
    Checkers,
    /// The event trace and its digest.
    Trace,
    /// The fault layer: each transmit's fate (loss, delay, duplication, replay) and each
    /// arrival's (partition, clog, inbox).
    Faults,
    /// The simulated disks: persist batches and their completions.
    Disk,
    /// The rest of a step: inbox, outputs, workload, events, next wake-up.
    World,
    /// Frames put into madsim pipes.
    Pipes,
    /// Building the world: keys, tokens, workload plan, options.
    SetUp,
    /// Dropping the seed's tasks and runtime, and writing its report (the world itself is
    /// freed after the profile ends).
    TearDown,
}

impl Region {
    /// Every region, in the order the benchmark prints them.
    pub const ALL: [Region; 10] = [
        Region::Core,
        Region::Madsim,
        Region::Checkers,
        Region::World,
        Region::Faults,
        Region::Pipes,
        Region::Trace,
        Region::Disk,
        Region::SetUp,
        Region::TearDown,
    ];

    /// A stable one-word key for machine-readable reports.
    pub fn key(self) -> &'static str {
        match self {
            Region::Madsim => "madsim",
            Region::Core => "core",
            Region::Checkers => "checkers",
            Region::Trace => "trace",
            Region::Faults => "faults",
            Region::Disk => "disk",
            Region::World => "world",
            Region::Pipes => "pipes",
            Region::SetUp => "set_up",
            Region::TearDown => "tear_down",
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Region::Madsim => "madsim executor, timers, pipe tasks",
            Region::Core => "core calls",
            Region::Checkers => "checkers",
            Region::Trace => "trace",
            Region::Faults => "fault layer",
            Region::Disk => "simulated disks",
            Region::World => "world bookkeeping",
            Region::Pipes => "pipe sends",
            Region::SetUp => "set-up",
            Region::TearDown => "tear-down",
        }
    }
}

/// [`ticks`] spent in each [`Region`] during one profiled seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionTicks([u64; Region::ALL.len()]);

impl RegionTicks {
    /// Ticks spent in `region`.
    pub fn get(&self, region: Region) -> u64 {
        self.0[region as usize]
    }

    /// Ticks in all regions together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds `other`'s ticks to these.
    pub fn add(&mut self, other: &RegionTicks) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }
}

/// The region profiler of the current thread (a seed runs on one thread), while one runs.
struct Profiler {
    current: Region,
    since_ticks: u64,
    spent: RegionTicks,
}

thread_local! {
    static PROFILER: std::cell::RefCell<Option<Profiler>> = const { std::cell::RefCell::new(None) };
}

/// Moves the current thread's profiler into `to`, charging the time since the last move to
/// the region it leaves; returns that region. `None` when no profile runs on this thread.
fn switch_region(to: Region) -> Option<Region> {
    PROFILER.with_borrow_mut(|p| {
        let p = p.as_mut()?;
        let now = ticks();
        let slot = &mut p.spent.0[p.current as usize];
        *slot = slot.saturating_add(now.saturating_sub(p.since_ticks));
        p.since_ticks = now;
        Some(std::mem::replace(&mut p.current, to))
    })
}

/// Starts profiling this thread in [`Region::SetUp`] (replacing any profile already running).
pub fn start_profile() {
    PROFILER.with_borrow_mut(|p| {
        *p = Some(Profiler {
            current: Region::SetUp,
            since_ticks: ticks(),
            spent: RegionTicks::default(),
        });
    });
}

/// Ends this thread's profile and returns it; `None` if none ran.
pub fn finish_profile() -> Option<RegionTicks> {
    switch_region(Region::Madsim);
    PROFILER.with_borrow_mut(|p| p.take().map(|p| p.spent))
}

/// Charges the time until it drops to `region` (then returns to the region it interrupted).
/// Costs one thread-local check when no profile runs.
#[derive(Debug)]
#[must_use = "the region ends when the guard drops"]
pub struct InRegion(Option<Region>);

/// Enters `region` until the returned guard drops. Regions nest: an inner one's time is its
/// own, not its caller's.
pub fn enter(region: Region) -> InRegion {
    InRegion(switch_region(region))
}

impl Drop for InRegion {
    fn drop(&mut self) {
        if let Some(previous) = self.0 {
            switch_region(previous);
        }
    }
}

/// Time spent inside core calls during one run, in [`ticks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreTiming {
    /// Ticks inside `handle`, `poll_output` and `poll_timeout`, measurement included.
    pub core_ticks: u64,
    /// Timed calls.
    pub calls: u64,
}

impl CoreTiming {
    /// Runs `f`, adding its duration when timing is on.
    pub fn time<T>(timing: &mut Option<CoreTiming>, f: impl FnOnce() -> T) -> T {
        let Some(t) = timing.as_mut() else {
            return f();
        };
        let _core = enter(Region::Core);
        let start = ticks();
        let out = f();
        t.core_ticks = t.core_ticks.saturating_add(ticks().saturating_sub(start));
        t.calls += 1;
        out
    }
}

/// This machine's CPU cost of each signature operation, in nanoseconds: what the benchmark
/// multiplies a seed's [`op_counts`](portcullis_core::crypto::op_counts) by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignatureCosts {
    /// One ed25519 signature.
    pub sign_ns: f64,
    /// One verification (`verify_strict`).
    pub verify_ns: f64,
    /// Deriving a public key from a secret key.
    pub key_ns: f64,
}

impl SignatureCosts {
    /// Times each operation on this thread's CPU clock. `None` without a thread CPU clock.
    /// Takes about a tenth of a second.
    pub fn measure() -> Option<SignatureCosts> {
        use portcullis_core::crypto::{Domain, SecretKey};
        // Enough repetitions for a steady mean, few enough to stay well under a second.
        const ROUNDS: u32 = 400;
        // A beacon-sized message; the cost of hashing it is small next to the curve work.
        let message = [7u8; 120];
        let key = SecretKey::from_secret_bytes(&[1; 32]);
        let public = key.public();
        let signature = key.sign(Domain::Beacon, &message);
        let per_op = |ops: u32, f: &mut dyn FnMut()| -> Option<f64> {
            let start = thread_cpu_ns()?;
            for _ in 0..ops {
                f();
            }
            let spent = thread_cpu_ns()?.saturating_sub(start);
            Some(spent as f64 / f64::from(ops))
        };
        let sign_ns = per_op(ROUNDS, &mut || {
            std::hint::black_box(key.sign(Domain::Beacon, std::hint::black_box(&message)));
        })?;
        let verify_ns = per_op(ROUNDS, &mut || {
            assert!(
                public.verify(Domain::Beacon, &message, &signature).is_ok(),
                "a valid signature"
            );
        })?;
        let key_ns = per_op(ROUNDS, &mut || {
            std::hint::black_box(SecretKey::from_secret_bytes(std::hint::black_box(&[9; 32])));
        })?;
        Some(SignatureCosts {
            sign_ns,
            verify_ns,
            key_ns,
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Burns a little CPU so a region has ticks to its name.
    fn spin() {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
    }

    #[test]
    fn regions_nest_and_charge_their_own_time() {
        // No profile on this thread: guards do nothing and there is nothing to finish.
        drop(enter(Region::Core));
        assert_eq!(finish_profile(), None);
        start_profile();
        spin();
        {
            let _world = enter(Region::World);
            spin();
            {
                let _checkers = enter(Region::Checkers);
                spin();
            }
            spin();
        }
        let t = finish_profile().expect("a profile ran");
        for region in [Region::SetUp, Region::World, Region::Checkers] {
            assert!(t.get(region) > 0, "{region:?} got no time: {t:?}");
        }
        for region in [Region::Core, Region::Trace, Region::TearDown] {
            assert_eq!(t.get(region), 0, "{region:?} was never entered: {t:?}");
        }
        assert_eq!(
            t.total(),
            Region::ALL.iter().map(|r| t.get(*r)).sum::<u64>(),
            "every region is listed in ALL"
        );
        assert_eq!(finish_profile(), None, "finishing ends the profile");
    }

    #[test]
    fn signature_costs_are_measured_for_every_operation() {
        let c = SignatureCosts::measure().expect("Linux has a thread CPU clock");
        for (name, ns) in [
            ("sign", c.sign_ns),
            ("verify", c.verify_ns),
            ("key", c.key_ns),
        ] {
            assert!(ns.is_finite() && ns > 0.0, "{name}: {ns} ns");
        }
    }
}
