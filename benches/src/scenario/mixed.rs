//! Scenario (c): items that burn CPU, sleep, and burn again — the load where a fixed pool
//! stalls and an elastic one grows threads. Measures makespan, peak threads, context switches
//! and CPU time.

use std::time::{Duration, Instant};

use super::{warm_up, MixedConfig, MixedRun};
use crate::peer::{Peer, RunError};
use crate::sys::{burn_cpu, Foreign, Rusage, ThreadSampler};
use crate::tracker::Lease;

/// Submits `cfg.items` burn/sleep/burn items from the calling thread as fast as it can and
/// waits for all of them. With `hooked`, each sleep runs inside [`Peer::blocking`].
///
/// Context switches and CPU time are process-wide `getrusage` deltas less what the harness's own
/// threads (the sampler, and this thread while it waits) and threads that are not the peer's
/// (see [`Peer::thread_prefixes`]) spent, so they belong to the peer's threads and the
/// submitting loop.
pub fn run<P: Peer>(peer: &P, cfg: &MixedConfig, hooked: bool) -> Result<MixedRun, RunError> {
    warm_up(peer, 4)?;
    let mut lease = Lease::new(cfg.items);
    let t = lease.tracker();
    // The harness sleeps until the last item (no polling thread competes with the items).
    lease.wake_at_last();
    let sampler = ThreadSampler::start(Duration::from_millis(1))?;
    // The process-wide readings enclose the per-thread ones, so what is subtracted happened
    // inside the measured window: an idle thread waking up between two readings can only be
    // left in the peer's numbers, never taken out of them twice.
    let before = Rusage::process();
    let foreign = Foreign::snapshot(peer.thread_prefixes())?;
    let start = Instant::now();
    let (burn, sleep) = (cfg.burn, cfg.sleep);
    for i in 0..cfg.items {
        peer.spawn(move || {
            burn_cpu(burn);
            if hooked {
                P::blocking(|| std::thread::sleep(sleep));
            } else {
                std::thread::sleep(sleep);
            }
            burn_cpu(burn);
            t.hit_and_count_down(i);
        })?;
    }
    let waiter_before = Rusage::thread();
    lease.wait(cfg.timeout, Duration::from_millis(50));
    let makespan = start.elapsed();
    let waiter = Rusage::thread().since(waiter_before);
    let others = foreign.finish()?;
    let after = Rusage::process();
    let report = sampler.stop()?;
    let delta = after.since(before);
    // The sampler is one of the foreign threads, so `others` already holds its usage.
    let harness = Rusage {
        voluntary: waiter.voluntary + others.usage.voluntary,
        involuntary: waiter.involuntary + others.usage.involuntary,
        cpu: waiter.cpu + others.usage.cpu,
    };
    let own = delta.since(harness);
    let integrity = lease.verify();
    Ok(MixedRun {
        makespan,
        // The snapshot already holds the sampler, the one non-peer thread started for the run.
        peer_threads: report.peak.saturating_sub(others.threads),
        voluntary_switches: own.voluntary,
        involuntary_switches: own.involuntary,
        cpu: own.cpu,
        integrity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::FixedPool;

    #[test]
    fn a_fixed_pool_runs_every_item_and_counts_its_threads() {
        let pool = FixedPool::new(4, None).unwrap();
        let cfg = MixedConfig {
            items: 40,
            burn: Duration::from_micros(500),
            sleep: Duration::from_millis(1),
            timeout: Duration::from_secs(30),
        };
        let r = run(&pool, &cfg, false).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        // CPU time and context switch accounting is checked in tests/accounting.rs, in a process
        // of its own: here other tests' threads would blur the process-wide numbers.
        assert!(r.peer_threads >= 1, "the pool's threads were counted: {}", r.peer_threads);
    }
}
