//! Host time inside a simulation, for the benchmark's seeds per second and "share of time in the
//! core".
//!
//! madsim replaces the libc `clock_gettime` symbol: inside a simulation `std::time::Instant`
//! returns *simulated* time, which is exactly right for everything else and useless for
//! measuring how long a core call really took. [`thread_cpu_ns`] asks the kernel directly with a
//! raw `clock_gettime` system call, which madsim does not intercept, for the CPU time of the
//! calling thread: a seed runs on one thread, so this is its cost on one core, unaffected by
//! other processes sharing the machine (wall time is not). It costs a system call (~200 ns), so
//! it is only used around core calls when a run asks for core timing, and
//! [`call_overhead_ns`] measures that cost so reports can subtract it.

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

/// The measured cost of one timed region's two clock reads, in nanoseconds (median of a few
/// hundred samples), so the core share can be reported net of the measurement itself.
pub fn call_overhead_ns() -> u64 {
    let mut samples: Vec<u64> = (0..301)
        .filter_map(|_| {
            let a = thread_cpu_ns()?;
            let b = thread_cpu_ns()?;
            Some(b.saturating_sub(a))
        })
        .collect();
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}

/// Time spent inside core calls during one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreTiming {
    /// CPU nanoseconds inside `handle`, `poll_output` and `poll_timeout`, measurement included.
    pub core_ns: u64,
    /// Timed calls.
    pub calls: u64,
}

impl CoreTiming {
    /// Runs `f`, adding its duration when timing is on.
    pub fn time<T>(timing: &mut Option<CoreTiming>, f: impl FnOnce() -> T) -> T {
        let Some(t) = timing.as_mut() else {
            return f();
        };
        let start = thread_cpu_ns();
        let out = f();
        if let (Some(a), Some(b)) = (start, thread_cpu_ns()) {
            t.core_ns = t.core_ns.saturating_add(b.saturating_sub(a));
            t.calls += 1;
        }
        out
    }
}
