//! The mixed scenario's accounting, for every peer: its threads carry the names its
//! `thread_prefixes` say (otherwise they would be counted as someone else's and their context
//! switches subtracted as harness noise), and the CPU time and context switches it reports
//! cover at least the work the items did. One test in its own process, so no other test's
//! threads blur the process-wide numbers.

use std::collections::HashSet;
use std::time::Duration;

use benches::registry;
use benches::scenario::{MixedConfig, Scenario, ThroughputConfig};
use benches::sys::tasks;

#[test]
fn peers_threads_cpu_time_and_switches_are_accounted() {
    let cfg = MixedConfig {
        items: 64,
        burn: Duration::from_micros(100),
        sleep: Duration::from_millis(2),
        timeout: Duration::from_secs(30),
    };
    for spec in registry().iter().filter(|s| s.runs(Scenario::Mixed)) {
        let before: HashSet<i32> = tasks().unwrap().iter().map(|t| t.tid).collect();
        let peer = (spec.build)().unwrap();
        let run = peer.mixed(&cfg, false).unwrap();
        assert!(run.integrity.is_clean(), "{}: {:?}", spec.name, run.integrity);
        let prefixes = peer.thread_prefixes();
        let strangers: Vec<String> = tasks()
            .unwrap()
            .into_iter()
            .filter(|t| !before.contains(&t.tid))
            .filter(|t| !prefixes.iter().any(|p| t.name.starts_with(p)))
            .map(|t| t.name)
            .collect();
        assert!(strangers.is_empty(), "{}: threads not named {prefixes:?}: {strangers:?}", spec.name);
        assert!(run.peer_threads >= 1, "{}: no threads of its own counted", spec.name);
        // Every item burns 2 x 100 µs of its own thread's CPU time and sleeps once (a voluntary
        // switch), so the peer's share can be no less.
        assert!(run.cpu >= Duration::from_micros(200) * 64, "{}: cpu {:?}", spec.name, run.cpu);
        assert!(run.voluntary_switches >= 64, "{}: {} switches", spec.name, run.voluntary_switches);
        let tp = peer.throughput(&ThroughputConfig { items: 20_000, timeout: Duration::from_secs(60) }, 2).unwrap();
        assert!(tp.integrity.is_clean(), "{}: {:?}", spec.name, tp.integrity);
        assert!(tp.peer_threads >= 1, "{}: no threads of its own counted in throughput", spec.name);
        drop(peer);
    }
}
