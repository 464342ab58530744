//! The peer abstraction: anything that can run a closure on other threads.
//!
//! A peer implements the generic [`Peer`] trait (so the scenario loops are monomorphised and a
//! peer pays no extra boxing or dynamic dispatch per item that its real users would not pay).
//! The blanket impl of the object-safe [`Runner`] trait turns every `Peer` into something the
//! `compare` program can hold in a list. Adding a peer is one `impl Peer` plus one [`PeerSpec`]
//! line in [`registry`].

use std::fmt;
use std::ops::Range;

use crate::scenario::{
    detect, latency, mixed, throughput, timeline, DetectConfig, DetectRun, LatencyConfig, LatencyRun, MixedConfig,
    MixedRun, Scenario, ThroughputConfig, ThroughputRun, TimelineConfig, TimelineRun,
};
use crate::tracker::Tracker;

/// A peer refused or failed an operation (building it, or accepting an item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerError(pub String);

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

impl PeerError {
    /// Wraps any displayable error with what was being done.
    pub fn new(context: &str, err: impl fmt::Display) -> PeerError {
        PeerError(format!("{context}: {err}"))
    }
}

/// The submitting loop for a range of empty items, built before the clock starts.
pub type Submitter<'a> = Box<dyn FnOnce() -> Result<(), PeerError> + Send + 'a>;

/// A thread pool or executor measured by the scenarios.
pub trait Peer: Send + Sync + 'static {
    /// Runs `f` on the peer's threads, detached: the caller does not wait for it.
    fn spawn<F>(&self, f: F) -> Result<(), PeerError>
    where
        F: FnOnce() + Send + 'static;

    /// Name prefixes of the OS threads this peer runs items on (and any helpers it starts),
    /// so the scenarios can count its threads and subtract everyone else's context switches.
    /// Name the threads when building the pool if the library allows it.
    fn thread_prefixes(&self) -> &'static [&'static str];

    /// Runs `f`, a blocking section inside an item, through the peer's "I am about to block"
    /// hook if it has one (wq-core's `blocking`); by default just runs it.
    fn blocking<R>(f: impl FnOnce() -> R) -> R
    where
        Self: Sized,
    {
        f()
    }

    /// Prepares the submission of empty items `items` (untimed) and returns the loop that
    /// submits them (timed). Each item must call `tracker.hit(i)`. The default spawns closures;
    /// peers with a cheaper way to queue prepared items (wq-core's `queue(&Work)`) override it.
    fn prepare_empty<'a>(&'a self, tracker: &'static Tracker, items: Range<usize>) -> Result<Submitter<'a>, PeerError>
    where
        Self: Sized,
    {
        Ok(Box::new(move || {
            for i in items {
                self.spawn(move || tracker.hit(i))?;
            }
            Ok(())
        }))
    }
}

/// A scenario run failed outright (as opposed to finishing with lost or duplicated items,
/// which the run's [`crate::tracker::Integrity`] reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The peer refused an item or could not be built.
    Peer(PeerError),
    /// The harness itself failed (reading /proc, spawning a thread).
    Harness(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Peer(e) => write!(f, "peer error: {e}"),
            RunError::Harness(e) => write!(f, "harness error: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<PeerError> for RunError {
    fn from(e: PeerError) -> RunError {
        RunError::Peer(e)
    }
}

impl From<std::io::Error> for RunError {
    fn from(e: std::io::Error) -> RunError {
        RunError::Harness(e.to_string())
    }
}

/// Object-safe face of a [`Peer`]: one method per scenario.
pub trait Runner: Send + Sync {
    /// Scenario (a): wake latency of an idle pool.
    fn latency(&self, cfg: &LatencyConfig) -> Result<LatencyRun, RunError>;
    /// Scenario (b): empty-item throughput from `submitters` threads.
    fn throughput(&self, cfg: &ThroughputConfig, submitters: usize) -> Result<ThroughputRun, RunError>;
    /// Scenario (c): burn/sleep/burn items; `hooked` puts the sleep inside [`Peer::blocking`].
    fn mixed(&self, cfg: &MixedConfig, hooked: bool) -> Result<MixedRun, RunError>;
    /// Scenario (d): the seed's w0/w1/w2 timeline.
    fn timeline(&self, cfg: &TimelineConfig) -> Result<TimelineRun, RunError>;
    /// Scenario (e): sleep-to-next-start latency; `hooked` puts the sleep inside [`Peer::blocking`].
    fn detect(&self, cfg: &DetectConfig, hooked: bool) -> Result<DetectRun, RunError>;
    /// Scenario (b) with one submitter kept off `pool_cpu`: the detectors' overhead.
    fn detect_throughput(&self, cfg: &ThroughputConfig, pool_cpu: usize) -> Result<ThroughputRun, RunError>;
    /// See [`Peer::thread_prefixes`].
    fn thread_prefixes(&self) -> &'static [&'static str];
}

impl<P: Peer> Runner for P {
    fn latency(&self, cfg: &LatencyConfig) -> Result<LatencyRun, RunError> {
        latency::run(self, cfg)
    }
    fn throughput(&self, cfg: &ThroughputConfig, submitters: usize) -> Result<ThroughputRun, RunError> {
        throughput::run(self, cfg, submitters)
    }
    fn mixed(&self, cfg: &MixedConfig, hooked: bool) -> Result<MixedRun, RunError> {
        mixed::run(self, cfg, hooked)
    }
    fn timeline(&self, cfg: &TimelineConfig) -> Result<TimelineRun, RunError> {
        timeline::run(self, cfg)
    }
    fn detect(&self, cfg: &DetectConfig, hooked: bool) -> Result<DetectRun, RunError> {
        detect::run(self, cfg, hooked)
    }
    fn detect_throughput(&self, cfg: &ThroughputConfig, pool_cpu: usize) -> Result<ThroughputRun, RunError> {
        detect::throughput_off_pool(self, cfg, pool_cpu)
    }
    fn thread_prefixes(&self) -> &'static [&'static str] {
        Peer::thread_prefixes(self)
    }
}

/// How to build one peer, and where it takes part.
pub struct PeerSpec {
    /// Row label in the tables.
    pub name: String,
    /// Scenarios this peer runs in.
    pub scenarios: &'static [Scenario],
    /// Whether the mixed scenario also runs with the sleep inside the peer's blocking hook
    /// (and whether the detect scenario runs its sleep inside it).
    pub has_blocking_hook: bool,
    /// Builds a fresh instance; each run gets its own, dropped afterwards, so its threads count
    /// toward its own run only.
    pub build: Box<dyn Fn() -> Result<Box<dyn Runner>, PeerError> + Send + Sync>,
}

impl PeerSpec {
    /// A spec from a name, its scenarios and a constructor.
    pub fn new<P, B>(name: impl Into<String>, scenarios: &'static [Scenario], build: B) -> PeerSpec
    where
        P: Peer,
        B: Fn() -> Result<P, PeerError> + Send + Sync + 'static,
    {
        PeerSpec {
            name: name.into(),
            scenarios,
            has_blocking_hook: false,
            build: Box::new(move || Ok(Box::new(build()?) as Box<dyn Runner>)),
        }
    }

    /// Marks the peer as having a blocking hook worth measuring separately.
    pub fn with_blocking_hook(mut self) -> PeerSpec {
        self.has_blocking_hook = true;
        self
    }

    /// True if the peer takes part in `s`.
    pub fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

/// Scenarios every general-purpose pool takes part in.
pub const GENERAL: &[Scenario] = &[Scenario::Latency, Scenario::Throughput, Scenario::Mixed];

/// Every peer, in table order. The first wq-core row of a table is its reference for ratios.
pub fn registry() -> Vec<PeerSpec> {
    use crate::peers::*;
    let cpus = crate::sys::cpus();
    let mut v = Vec::new();
    v.extend(wq::specs());
    v.push(PeerSpec::new("tokio spawn_blocking", GENERAL, TokioBlocking::new));
    v.extend(adapters::specs());
    v.push(PeerSpec::new("rayon_core spawn", GENERAL, RayonSpawn::new));
    v.push(PeerSpec::new("smol blocking::unblock", GENERAL, SmolUnblock::new));
    v.push(PeerSpec::new(format!("std pool ({cpus} threads, channel)"), GENERAL, move || FixedPool::new(cpus, None)));
    v.push(PeerSpec::new("1-thread pool on CPU 0", &[Scenario::Timeline], || FixedPool::new(1, Some(0))));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_builds_and_names_are_unique() {
        let specs = registry();
        let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), specs.len());
        for s in &specs {
            assert!(!s.scenarios.is_empty(), "{}", s.name);
            (s.build)().unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
        // Every scenario has a wq-core row to take ratios against.
        for sc in Scenario::ALL {
            assert!(specs.iter().any(|s| s.runs(sc) && s.name.starts_with("wq-core")), "{sc}");
        }
    }
}
