//! The scenarios, each a generic function over [`Peer`] that returns one round's numbers.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::peer::{Peer, PeerError, RunError};
use crate::tracker::{Integrity, Lease};

pub use detect::{DetectConfig, DetectRun};

pub mod detect;
pub mod latency;
pub mod mixed;
pub mod throughput;
pub mod timeline;

/// One of the comparison scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// (a) Submit-to-start latency of an idle pool.
    Latency,
    /// (b) Empty-item throughput from one and from two threads.
    Throughput,
    /// (c) Items that burn, sleep and burn again.
    Mixed,
    /// (d) The kernel documentation's w0/w1/w2 example on one CPU.
    Timeline,
    /// (e) How soon a plain sleep in an item lets the next pending item start, per sleep detector.
    Detect,
}

impl Scenario {
    /// All scenarios, in the order `compare` runs them.
    pub const ALL: [Scenario; 5] =
        [Scenario::Latency, Scenario::Throughput, Scenario::Mixed, Scenario::Timeline, Scenario::Detect];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::Mixed => "mixed",
            Scenario::Timeline => "timeline",
            Scenario::Detect => "detect",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s).ok_or_else(|| {
            format!("unknown scenario `{s}` (expected one of: latency, throughput, mixed, timeline, detect)")
        })
    }
}

/// Scenario (a) parameters.
#[derive(Clone, Debug)]
pub struct LatencyConfig {
    /// Measured items (and floor round trips).
    pub samples: usize,
    /// Pause between items, long enough for the pool to go idle.
    pub interval: Duration,
    /// Unmeasured items first, so no sample pays for the pool's first thread.
    pub warmup: usize,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig { samples: 1_000, interval: Duration::from_millis(1), warmup: 20 }
    }
}

/// One round of scenario (a), or of one of its floors.
#[derive(Clone, Copy, Debug)]
pub struct LatencyRun {
    /// Median submit-to-start latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Worst sample, µs.
    pub max_us: f64,
    /// Lost or duplicated items.
    pub integrity: Integrity,
}

/// Scenario (b) parameters.
#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    /// Empty items per run, split evenly among the submitting threads.
    pub items: usize,
    /// Give up waiting (and report the missing items as lost) after this long.
    pub timeout: Duration,
}

impl Default for ThroughputConfig {
    fn default() -> Self {
        ThroughputConfig { items: 200_000, timeout: Duration::from_secs(120) }
    }
}

/// One round of scenario (b).
#[derive(Clone, Copy, Debug)]
pub struct ThroughputRun {
    /// Items completed per second, from the submitters' start to the last completion.
    pub items_per_sec: f64,
    /// The peer's own OS threads at the peak: the process's peak less the threads that are not
    /// the peer's (see [`crate::Peer::thread_prefixes`]), the sampler and the submitters.
    pub peer_threads: usize,
    /// Lost or duplicated items.
    pub integrity: Integrity,
}

/// Scenario (c) parameters.
#[derive(Clone, Debug)]
pub struct MixedConfig {
    /// Items per run.
    pub items: usize,
    /// Thread CPU time burnt before and again after the sleep.
    pub burn: Duration,
    /// Sleep in the middle of each item.
    pub sleep: Duration,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

impl Default for MixedConfig {
    fn default() -> Self {
        MixedConfig {
            items: 2_000,
            burn: Duration::from_micros(200),
            sleep: Duration::from_millis(2),
            timeout: Duration::from_secs(120),
        }
    }
}

impl MixedConfig {
    /// Total burn divided by the CPUs: no schedule can finish sooner.
    pub fn ideal(&self) -> Duration {
        let total = self.burn * 2 * self.items as u32;
        total / crate::sys::cpus() as u32
    }
}

/// One round of scenario (c).
#[derive(Clone, Copy, Debug)]
pub struct MixedRun {
    /// First submit to last completion.
    pub makespan: Duration,
    /// The peer's own OS threads at the peak: the process's peak less the threads that are not
    /// the peer's (see [`crate::Peer::thread_prefixes`]), the sampler and the submitters.
    pub peer_threads: usize,
    /// Voluntary context switches of the process, less the harness's waiting and sampling.
    pub voluntary_switches: u64,
    /// Involuntary context switches, counted the same way.
    pub involuntary_switches: u64,
    /// CPU time (user + system) of the process, counted the same way.
    pub cpu: Duration,
    /// Lost or duplicated items.
    pub integrity: Integrity,
}

/// Scenario (d) parameters: the seed's units doubled.
#[derive(Clone, Debug)]
pub struct TimelineConfig {
    /// Thread CPU time each burn takes.
    pub burn: Duration,
    /// Sleep of each item (inside the peer's blocking hook).
    pub sleep: Duration,
    /// The CPU the submitting thread is pinned to, so bound queues use that CPU's pool.
    pub cpu: usize,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig { burn: Duration::from_millis(10), sleep: Duration::from_millis(20), cpu: 0 }
    }
}

/// One round of scenario (d).
#[derive(Clone, Copy, Debug)]
pub struct TimelineRun {
    /// Finish time of w0, w1, w2 in ms after the first submit.
    pub finish_ms: [f64; 3],
    /// Lost or duplicated items.
    pub integrity: Integrity,
}

/// Runs `items` items one at a time, waiting for each, so the peer has started its threads.
pub(crate) fn warm_up<P: Peer>(peer: &P, items: usize) -> Result<(), RunError> {
    for _ in 0..items {
        let mut lease = Lease::new(1);
        let t = lease.tracker();
        peer.spawn(move || t.hit(0))?;
        let done = lease.wait(Duration::from_secs(10), Duration::from_micros(100));
        if !done || !lease.verify().is_clean() {
            return Err(PeerError("a warm-up item did not run exactly once in 10 s".into()).into());
        }
    }
    Ok(())
}

/// Waits for a run's items, then counts lost and duplicated ones.
pub(crate) fn finish(lease: &mut Lease, timeout: Duration, poll: Duration) -> Integrity {
    lease.wait(timeout, poll);
    lease.verify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        assert!("nope".parse::<Scenario>().unwrap_err().contains("unknown scenario"));
    }

    #[test]
    fn ideal_is_total_burn_over_cpus() {
        let c = MixedConfig::default();
        assert_eq!(c.ideal() * crate::sys::cpus() as u32, Duration::from_micros(400) * 2_000);
    }
}
