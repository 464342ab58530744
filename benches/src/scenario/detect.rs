//! Scenario (e): how soon a pool learns that a worker sleeps — from the moment a running item
//! calls `std::thread::sleep` to the start of the item queued behind it on the same pool.
//!
//! Each sample queues item A, waits until A runs, queues item B behind it, and only then lets
//! A go on: A stamps the time and sleeps; B stamps its start. A pool that keeps one item running
//! per CPU (cmwq) starts B only once it learns of A's sleep, so B's start − A's sleep is the
//! detection latency plus one idle worker's wake-up. A pool that never learns runs B after A
//! wakes; such samples are counted as late (and their latency is about the sleep).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::throughput;
use super::{ThroughputConfig, ThroughputRun};
use crate::peer::{Peer, PeerError, RunError};
use crate::stats::percentile;
use crate::sys::{now_ns, pin_current_thread};
use crate::tracker::{Integrity, Lease, Tracker};

/// How often the submitter checks whether a sample's two items have run. It waits on a CPU other
/// than the pool's when it can, so its wake-ups do not delay the pool's workers.
const POLL: Duration = Duration::from_micros(100);

/// Scenario (e) parameters.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Measured samples (A/B pairs) per run.
    pub samples: usize,
    /// Unmeasured samples first, so no measured one pays for the pool's second worker.
    pub warmup: usize,
    /// How long item A sleeps: comfortably above any detection latency worth measuring, so a
    /// slow detection shows as a large latency rather than as a late sample.
    pub sleep: Duration,
    /// The CPU the peer's pool runs on; the submitting thread stays off it if another CPU is
    /// allowed.
    pub pool_cpu: usize,
    /// Give up on a sample (and the run) if A has not started, or A and B have not both
    /// finished, this long after the sleep they should have taken.
    pub timeout: Duration,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            samples: 300,
            warmup: 5,
            sleep: Duration::from_millis(10),
            pool_cpu: 0,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One run of scenario (e).
#[derive(Clone, Copy, Debug)]
pub struct DetectRun {
    /// Median sleep-to-next-start latency, µs (late samples included, early ones not).
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Worst sample, µs.
    pub max_us: f64,
    /// Samples where B started only after A had woken: the sleep went unnoticed.
    pub late: usize,
    /// Samples where B started before A slept: the pool ran two items at once without a sleep
    /// to justify it. Left out of the percentiles.
    pub early: usize,
    /// Lost or duplicated items (two per sample, warm-up included).
    pub integrity: Integrity,
}

/// What one sample's two items tell the submitter, and when.
#[derive(Default)]
struct Sample {
    a_started: AtomicBool,
    b_queued: AtomicBool,
    /// [`now_ns`] stamps; 0 = not yet.
    slept_at: AtomicU64,
    woke_at: AtomicU64,
    b_started: AtomicU64,
}

/// Runs `cfg.warmup + cfg.samples` A/B pairs one after the other from a thread kept off
/// `cfg.pool_cpu`. With `hooked`, A's sleep runs inside [`Peer::blocking`].
///
/// The peer should run both items on the same pool of one CPU (a bound queue of a one-CPU
/// wq-core runtime); on a pool with a spare running thread B simply starts at once and every
/// sample is early.
pub fn run<P: Peer>(peer: &P, cfg: &DetectConfig, hooked: bool) -> Result<DetectRun, RunError> {
    if cfg.samples == 0 {
        return Err(RunError::Harness("detect needs at least one sample".into()));
    }
    let total = cfg.warmup + cfg.samples;
    let mut lease = Lease::new(2 * total);
    let t = lease.tracker();
    let samples = thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<Arc<Sample>>, RunError> {
                pin_off(cfg.pool_cpu);
                let mut samples = Vec::with_capacity(total);
                for k in 0..total {
                    let s = Arc::new(Sample::default());
                    let finished = sample(peer, t, k, &s, cfg, hooked)?;
                    samples.push(s);
                    if !finished {
                        // The integrity check below reports the items that did not run.
                        break;
                    }
                }
                Ok(samples)
            })
            .join()
            .unwrap_or_else(|_| Err(PeerError("the detect submitter panicked".into()).into()))
    })?;
    if samples.len() < total {
        lease.wait(cfg.timeout, Duration::from_millis(1));
    }
    let integrity = lease.verify();
    let (mut lat, mut late, mut early) = (Vec::with_capacity(cfg.samples), 0, 0);
    for s in samples.iter().skip(cfg.warmup) {
        let (slept, woke, b) = (load(&s.slept_at), load(&s.woke_at), load(&s.b_started));
        if slept == 0 || b == 0 {
            continue;
        }
        if b < slept {
            early += 1;
            continue;
        }
        if woke != 0 && b >= woke {
            late += 1;
        }
        lat.push(b - slept);
    }
    lat.sort_unstable();
    let us = |p: f64| percentile(&lat, p).map_or(f64::NAN, |v| v as f64 / 1_000.0);
    Ok(DetectRun { p50_us: us(0.50), p99_us: us(0.99), max_us: us(1.0), late, early, integrity })
}

fn load(stamp: &AtomicU64) -> u64 {
    // Read after the tracker counted both items: `hit`'s Release and `completed`'s Acquire
    // order the stamps before this load.
    stamp.load(Ordering::Relaxed)
}

/// Queues one A/B pair (items `2k`, `2k + 1`) and waits for both. `Ok(false)` if it timed out.
fn sample<P: Peer>(
    peer: &P,
    t: &'static Tracker,
    k: usize,
    s: &Arc<Sample>,
    cfg: &DetectConfig,
    hooked: bool,
) -> Result<bool, RunError> {
    let (sa, sleep, patience) = (s.clone(), cfg.sleep, cfg.timeout);
    peer.spawn(move || {
        sa.a_started.store(true, Ordering::Release);
        // B must be pending behind a running A when A sleeps, so A waits until it is queued.
        // Yielding is a preemption, not a sleep: no detector may count it.
        let deadline = Instant::now() + patience;
        while !sa.b_queued.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::yield_now();
        }
        sa.slept_at.store(now_ns(), Ordering::Relaxed);
        if hooked {
            P::blocking(|| thread::sleep(sleep));
        } else {
            thread::sleep(sleep);
        }
        sa.woke_at.store(now_ns(), Ordering::Relaxed);
        t.hit(2 * k);
    })?;
    let deadline = Instant::now() + cfg.timeout;
    while !s.a_started.load(Ordering::Acquire) {
        if Instant::now() >= deadline {
            s.b_queued.store(true, Ordering::Release);
            return Ok(false);
        }
        thread::yield_now();
    }
    let sb = s.clone();
    let queued = peer.spawn(move || {
        sb.b_started.store(now_ns(), Ordering::Relaxed);
        t.hit(2 * k + 1);
    });
    // Released even if B was refused, so A does not wait out its deadline.
    s.b_queued.store(true, Ordering::Release);
    queued?;
    let deadline = Instant::now() + cfg.sleep + cfg.timeout;
    while t.completed() < 2 * (k + 1) {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL);
    }
    Ok(true)
}

/// The throughput scenario with one submitter kept off the pool's CPU, for the detectors'
/// overhead: a submitter free to land on the pool's own CPU turns some runs into same-CPU
/// hand-offs and others into cross-CPU ones, which made one row's runs span 2.5x.
pub fn throughput_off_pool<P: Peer>(
    peer: &P,
    cfg: &ThroughputConfig,
    pool_cpu: usize,
) -> Result<ThroughputRun, RunError> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // The submitter thread the scenario starts inherits this affinity.
                pin_off(pool_cpu);
                throughput::run(peer, cfg, 1)
            })
            .join()
            .map_err(|_| RunError::Harness("detect throughput thread panicked".into()))?
    })
}

/// Pins the calling thread to an allowed CPU other than `pool_cpu`, if there is one. Best
/// effort: unpinned, the numbers are only noisier.
fn pin_off(pool_cpu: usize) {
    if let Some(cpu) = allowed_cpu_other_than(pool_cpu) {
        let _ = pin_current_thread(cpu);
    }
}

/// The highest CPU the calling thread may run on other than `avoid`, if there is one.
fn allowed_cpu_other_than(avoid: usize) -> Option<usize> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    (0..libc::CPU_SETSIZE as usize).rev().find(|&cpu| {
        // SAFETY: `cpu` < CPU_SETSIZE, so CPU_ISSET reads inside `set`.
        cpu != avoid && unsafe { libc::CPU_ISSET(cpu, &set) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::wq::{WqConfig, WqSubmit};
    use crate::peers::FixedPool;

    fn small() -> DetectConfig {
        // 20 ms sleeps: the assertions below are about order, with units the scheduler cannot blur.
        DetectConfig { samples: 4, warmup: 1, sleep: Duration::from_millis(20), ..DetectConfig::default() }
    }

    #[test]
    fn a_one_thread_pool_starts_b_only_after_a_wakes() {
        let pool = FixedPool::new(1, Some(0)).unwrap();
        let r = run(&pool, &small(), false).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        assert_eq!((r.late, r.early), (4, 0), "{r:?}");
        assert!(r.p50_us >= 20_000.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us, "{r:?}");
    }

    #[test]
    fn the_explicit_hook_starts_b_while_a_sleeps() {
        let cfg = WqConfig { cpus: Some(vec![0]), detector: wq_core::Detector::ExplicitOnly, ..WqConfig::default() };
        let p = WqSubmit::new(&cfg).unwrap();
        let r = run(&p, &small(), true).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        assert_eq!((r.late, r.early), (0, 0), "{r:?}");
    }

    #[test]
    fn zero_samples_is_an_error() {
        let pool = FixedPool::new(1, None).unwrap();
        let cfg = DetectConfig { samples: 0, ..DetectConfig::default() };
        assert!(run(&pool, &cfg, false).is_err());
    }
}
