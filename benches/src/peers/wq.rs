//! wq-core as a peer: `submit` on a bound and on an unbound workqueue, `queue` of prepared
//! [`Work`] items for throughput, and one-CPU runtimes with each sleep detector forced for the
//! detection scenario.
//!
//! Items that sleep without `wq_core::blocking` are seen by the runtime's sleep detector
//! (`Detector::Auto` unless a row forces one); the mixed scenario's rows named `detector=auto`
//! measure exactly that, next to the same queues with the sleep inside the hook.

use std::ops::Range;
use std::sync::Mutex;

use wq_core::{Detector, Flags, Runtime, Work, Workqueue};

use crate::peer::{Peer, PeerError, PeerSpec, Submitter};
use crate::scenario::Scenario;
use crate::tracker::Tracker;

/// wq-core names its workers `wq/<cpu>:<n>` and `wq/u<pool>:<n>`, its helpers `wq/monitor`,
/// `wq/timer` and so on.
pub(crate) const WQ_THREADS: &[&str] = &["wq/"];

/// Which runtime and workqueue a wq peer uses.
#[derive(Clone, Debug, Default)]
pub struct WqConfig {
    /// `Flags::UNBOUND` if true, a per-CPU (bound) queue otherwise.
    pub unbound: bool,
    /// Restrict the runtime to these CPUs (`Runtime::builder().cpus(..)`); all if `None`.
    pub cpus: Option<Vec<usize>>,
    /// How the runtime learns of sleeps outside `wq_core::blocking` (default `Auto`). A forced
    /// detector the kernel refuses fails the build rather than falling back, so a row named
    /// after a detector always measures that detector.
    pub detector: Detector,
}

fn build(cfg: &WqConfig) -> Result<(Runtime, Workqueue), PeerError> {
    let mut b = Runtime::builder().detector(cfg.detector);
    if let Some(cpus) = &cfg.cpus {
        b = b.cpus(cpus.iter().copied());
    }
    let rt = b.build().map_err(|e| PeerError::new("building the wq runtime", e))?;
    let mut wb = rt.workqueue(if cfg.unbound { "bench-unbound" } else { "bench-bound" });
    if cfg.unbound {
        wb = wb.flags(Flags::UNBOUND);
    }
    let wq = wb.build().map_err(|e| PeerError::new("building the workqueue", e))?;
    Ok((rt, wq))
}

/// `Workqueue::submit` of a closure, its `Completion` dropped (detached).
pub struct WqSubmit {
    wq: Workqueue,
    // Kept so the runtime lives exactly as long as the peer; dropped after the queue.
    _rt: Runtime,
}

impl WqSubmit {
    /// A fresh runtime and workqueue as `cfg` says.
    pub fn new(cfg: &WqConfig) -> Result<WqSubmit, PeerError> {
        let (rt, wq) = build(cfg)?;
        Ok(WqSubmit { wq, _rt: rt })
    }
}

impl Peer for WqSubmit {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.wq.submit(f).map(drop).map_err(|e| PeerError::new("wq submit", e))
    }

    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        wq_core::blocking(f)
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        WQ_THREADS
    }
}

impl Drop for WqSubmit {
    fn drop(&mut self) {
        // Runs are complete when a peer is dropped; destroy only makes the teardown explicit.
        let _ = self.wq.destroy();
    }
}

/// `Workqueue::queue` of [`Work`] items created before the clock starts.
pub struct WqQueueWork {
    inner: WqSubmit,
    // Works of earlier batches; freed with the peer rather than inside the timed loop.
    kept: Mutex<Vec<Vec<Work>>>,
}

impl WqQueueWork {
    /// A fresh runtime and workqueue as `cfg` says.
    pub fn new(cfg: &WqConfig) -> Result<WqQueueWork, PeerError> {
        Ok(WqQueueWork { inner: WqSubmit::new(cfg)?, kept: Mutex::new(Vec::new()) })
    }
}

impl Peer for WqQueueWork {
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.inner.spawn(f)
    }

    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        wq_core::blocking(f)
    }

    fn thread_prefixes(&self) -> &'static [&'static str] {
        WQ_THREADS
    }

    fn prepare_empty<'a>(&'a self, tracker: &'static Tracker, items: Range<usize>) -> Result<Submitter<'a>, PeerError> {
        let works: Vec<Work> = items.map(|i| Work::new(move || tracker.hit(i))).collect();
        Ok(Box::new(move || {
            for w in &works {
                // A fresh Work is never pending, so `false` can only mean the queue refused it.
                if !self.inner.wq.queue(w) {
                    return Err(PeerError("wq queue refused a fresh Work".into()));
                }
            }
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).push(works);
            Ok(())
        }))
    }
}

// The general-purpose wq rows are split by scenario: only the mixed rows sleep, so only their
// names need to say that the runtime's detector is what sees those sleeps.
const LATENCY_THROUGHPUT: &[Scenario] = &[Scenario::Latency, Scenario::Throughput];
const MIXED: &[Scenario] = &[Scenario::Mixed];
const DETECT: &[Scenario] = &[Scenario::Detect];

/// The wq-core rows of the tables.
pub fn specs() -> Vec<PeerSpec> {
    let bound = WqConfig::default();
    let unbound = WqConfig { unbound: true, ..WqConfig::default() };
    let one_cpu = WqConfig { cpus: Some(vec![0]), ..WqConfig::default() };
    let on_cpu0 = |detector| WqConfig { detector, ..one_cpu.clone() };
    let (auto, perf, procfs, explicit) =
        (on_cpu0(Detector::Auto), on_cpu0(Detector::Perf), on_cpu0(Detector::Procfs), on_cpu0(Detector::ExplicitOnly));
    let (b2, b3, u2, u3) = (bound.clone(), bound.clone(), unbound.clone(), unbound.clone());
    vec![
        PeerSpec::new("wq-core submit (bound)", LATENCY_THROUGHPUT, move || WqSubmit::new(&bound)),
        PeerSpec::new("wq-core submit (unbound)", LATENCY_THROUGHPUT, move || WqSubmit::new(&unbound)),
        PeerSpec::new("wq-core queue(Work) (bound)", &[Scenario::Throughput], move || WqQueueWork::new(&b2)),
        PeerSpec::new("wq-core queue(Work) (unbound)", &[Scenario::Throughput], move || WqQueueWork::new(&u3)),
        // Plain `std::thread::sleep` rows (the Auto detector sees the sleep), each followed by
        // its `+ blocking(sleep)` row (the hook tells the pool first; the detector then adds
        // nothing).
        PeerSpec::new("wq-core submit (bound), detector=auto", MIXED, move || WqSubmit::new(&b3)).with_blocking_hook(),
        PeerSpec::new("wq-core submit (unbound), detector=auto", MIXED, move || WqSubmit::new(&u2))
            .with_blocking_hook(),
        PeerSpec::new("wq-core submit (bound), cpus([0])", &[Scenario::Timeline], move || WqSubmit::new(&one_cpu)),
        // Auto arms each worker's perf event after a few polls under load (procfs until then).
        PeerSpec::new("wq-core detector=auto, cpus([0])", DETECT, move || WqSubmit::new(&auto)),
        PeerSpec::new("wq-core detector=perf, cpus([0])", DETECT, move || WqSubmit::new(&perf)),
        PeerSpec::new("wq-core detector=procfs, cpus([0])", DETECT, move || WqSubmit::new(&procfs)),
        // The hook on a runtime without a detector: the zero-detection-latency reference, and
        // the baseline the detectors' throughput overhead is measured against.
        PeerSpec::new("wq-core detector=explicit-only + blocking(sleep), cpus([0])", DETECT, move || {
            WqSubmit::new(&explicit)
        })
        .with_blocking_hook(),
    ]
}

/// What `Detector::Auto` resolves to on this machine, and why, from a throwaway runtime.
pub fn auto_detector() -> Result<(Detector, String), PeerError> {
    let rt = Runtime::builder().publish(false).build().map_err(|e| PeerError::new("building the wq runtime", e))?;
    let (kind, why) = rt.detector();
    Ok((kind, why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{throughput, ThroughputConfig};
    use crate::tracker::Lease;
    use std::time::Duration;

    #[test]
    fn submit_runs_every_item_once_on_bound_and_unbound_queues() {
        for unbound in [false, true] {
            let p = WqSubmit::new(&WqConfig { unbound, ..WqConfig::default() }).unwrap();
            let mut lease = Lease::new(1_000);
            let t = lease.tracker();
            for i in 0..1_000 {
                p.spawn(move || t.hit(i)).unwrap();
            }
            assert!(lease.wait(Duration::from_secs(20), Duration::from_millis(1)));
            assert!(lease.verify().is_clean(), "unbound = {unbound}");
        }
    }

    #[test]
    fn prepared_works_run_once_from_two_submitters() {
        let p = WqQueueWork::new(&WqConfig::default()).unwrap();
        let cfg = ThroughputConfig { items: 5_001, timeout: Duration::from_secs(30) };
        let r = throughput::run(&p, &cfg, 2).unwrap();
        assert!(r.integrity.is_clean(), "{:?}", r.integrity);
        assert_eq!(r.integrity.exact, 5_001);
    }

    #[test]
    fn forced_detectors_are_the_ones_in_use() {
        for d in [Detector::Perf, Detector::Procfs, Detector::ExplicitOnly] {
            let (rt, _wq) = build(&WqConfig { cpus: Some(vec![0]), detector: d, ..WqConfig::default() }).unwrap();
            assert_eq!(rt.detector().0, d, "{}", rt.detector().1);
        }
        assert_ne!(auto_detector().unwrap().0, Detector::Auto);
    }

    #[test]
    fn blocking_hook_returns_the_closures_value() {
        assert_eq!(<WqSubmit as Peer>::blocking(|| 7), 7);
    }
}
