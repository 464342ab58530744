//! Scenario (b): how many empty items a peer completes per second, submitted as fast as one
//! (or two) threads can.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use super::{warm_up, ThroughputConfig, ThroughputRun};
use crate::peer::{Peer, PeerError, RunError};
use crate::sys::{Foreign, ThreadSampler};
use crate::tracker::Lease;

/// Submits `cfg.items` empty items split over `submitters` threads and times them from the
/// moment the submitters are released until the last item has run.
pub fn run<P: Peer>(peer: &P, cfg: &ThroughputConfig, submitters: usize) -> Result<ThroughputRun, RunError> {
    if submitters == 0 {
        return Err(RunError::Harness("throughput needs at least one submitter".into()));
    }
    warm_up(peer, 4)?;
    let mut lease = Lease::new(cfg.items);
    let t = lease.tracker();
    let per = cfg.items.div_ceil(submitters);
    let mut batches = Vec::with_capacity(submitters);
    for s in 0..submitters {
        let range = (s * per).min(cfg.items)..((s + 1) * per).min(cfg.items);
        batches.push(peer.prepare_empty(t, range)?);
    }
    let foreign = Foreign::snapshot(peer.thread_prefixes())?;
    let sampler = ThreadSampler::start(Duration::from_millis(1))?;
    let gate = Barrier::new(submitters + 1);
    let failed = AtomicBool::new(false);
    let (elapsed, results, sampled) = thread::scope(|scope| {
        let handles: Vec<_> = batches
            .into_iter()
            .map(|submit| {
                let (gate, failed) = (&gate, &failed);
                scope.spawn(move || {
                    gate.wait();
                    let r = submit();
                    if r.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    r
                })
            })
            .collect();
        // The submitters exist and wait at the gate: make sure the peak includes them, since
        // they are subtracted from it below.
        let sampled = sampler.sample_now();
        gate.wait();
        let start = Instant::now();
        // Polling every 100 µs bounds the timing error to well under 1% of even the fastest run.
        lease.wait_or(cfg.timeout, Duration::from_micros(100), || failed.load(Ordering::Acquire));
        let elapsed = start.elapsed();
        let results: Vec<Result<(), PeerError>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(PeerError("a submitter panicked".into()))))
            .collect();
        (elapsed, results, sampled)
    });
    sampled?;
    let report = sampler.stop()?;
    let others = foreign.finish()?;
    for r in results {
        r?;
    }
    let integrity = lease.verify();
    Ok(ThroughputRun {
        items_per_sec: integrity.exact as f64 / elapsed.as_secs_f64(),
        // Everything in the peak that is not the peer's: the threads that were there before,
        // the sampler, and the submitters.
        peer_threads: report.peak.saturating_sub(others.threads + 1 + submitters),
        integrity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::FixedPool;

    #[test]
    fn counts_every_item_from_two_submitters() {
        let pool = FixedPool::new(2, None).unwrap();
        let cfg = ThroughputConfig { items: 10_001, timeout: Duration::from_secs(30) };
        let r = run(&pool, &cfg, 2).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        assert_eq!(r.integrity.exact, 10_001);
        assert!(r.items_per_sec > 0.0);
        // Thread counts are checked in tests/accounting.rs, away from other tests' threads.
    }

    #[test]
    fn zero_submitters_is_an_error() {
        let pool = FixedPool::new(1, None).unwrap();
        assert!(run(&pool, &ThroughputConfig::default(), 0).is_err());
    }
}
