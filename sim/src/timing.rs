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
    /// One single verification (`verify_strict`).
    pub verify_ns: f64,
    /// One signature inside a batch of the measured size.
    pub batch_item_ns: f64,
    /// Deriving a public key from a secret key.
    pub key_ns: f64,
}

impl SignatureCosts {
    /// Times each operation on this thread's CPU clock; batches hold `batch_size` signatures
    /// (at least 2: a batch of one is a single verification). `None` without a thread CPU
    /// clock. Takes about a tenth of a second.
    pub fn measure(batch_size: usize) -> Option<SignatureCosts> {
        use portcullis_core::crypto::{Domain, PublicKey, SecretKey, Signature, verify_batch};
        // Enough repetitions for a steady mean, few enough to stay well under a second.
        const ROUNDS: u32 = 400;
        let batch_size = batch_size.clamp(2, 64);
        // A beacon-sized message; the cost of hashing it is small next to the curve work.
        let message = [7u8; 120];
        let keys: Vec<SecretKey> = (0..batch_size)
            .map(|i| SecretKey::from_secret_bytes(&[u8::try_from(i).unwrap_or(0) + 1; 32]))
            .collect();
        let signed: Vec<(PublicKey, Signature)> = keys
            .iter()
            .map(|k| (k.public(), k.sign(Domain::Beacon, &message)))
            .collect();
        let per_op = |ops: u32, f: &mut dyn FnMut()| -> Option<f64> {
            let start = thread_cpu_ns()?;
            for _ in 0..ops {
                f();
            }
            let spent = thread_cpu_ns()?.saturating_sub(start);
            Some(spent as f64 / f64::from(ops))
        };
        let sign_ns = per_op(ROUNDS, &mut || {
            std::hint::black_box(keys[0].sign(Domain::Beacon, std::hint::black_box(&message)));
        })?;
        let verify_ns = per_op(ROUNDS, &mut || {
            let (key, sig) = &signed[0];
            assert!(
                key.verify(Domain::Beacon, &message, sig).is_ok(),
                "a valid signature"
            );
        })?;
        let items: Vec<(PublicKey, &[u8], Signature)> =
            signed.iter().map(|(k, s)| (*k, &message[..], *s)).collect();
        let batch_rounds = (ROUNDS / u32::try_from(batch_size).unwrap_or(1)).max(8);
        let batch_ns = per_op(batch_rounds, &mut || {
            assert!(
                verify_batch(Domain::Beacon, &items).iter().all(|ok| *ok),
                "a valid batch"
            );
        })?;
        let key_ns = per_op(ROUNDS, &mut || {
            std::hint::black_box(SecretKey::from_secret_bytes(std::hint::black_box(&[9; 32])));
        })?;
        Some(SignatureCosts {
            sign_ns,
            verify_ns,
            batch_item_ns: batch_ns / batch_size as f64,
            key_ns,
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn signature_costs_are_measured_for_every_operation() {
        let c = SignatureCosts::measure(4).expect("Linux has a thread CPU clock");
        for (name, ns) in [
            ("sign", c.sign_ns),
            ("verify", c.verify_ns),
            ("batch item", c.batch_item_ns),
            ("key", c.key_ns),
        ] {
            assert!(ns.is_finite() && ns > 0.0, "{name}: {ns} ns");
        }
    }
}
