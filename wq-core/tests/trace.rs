//! The timeline recorder writes valid Chrome trace-event JSON.

mod common;

use std::collections::HashMap;

use common::{seed_timeline, warmed_up, SleepKind};
use wq_core::{Detector, Runtime};

#[test]
fn trace_has_one_begin_end_pair_per_item_on_worker_tracks() {
    let _cpu0 = common::cpu0();
    // Explicit hooks only: the counts below are the hooks' events, and a
    // detector may add a sleep of its own (a worker waiting on a lock).
    let rt = warmed_up(Runtime::builder().cpus([0]).detector(Detector::ExplicitOnly).build().unwrap());
    let q = rt.workqueue("traced").max_active(3).build().unwrap();
    let limited = rt.workqueue("limited").max_active(1).build().unwrap();
    rt.start_trace();
    seed_timeline(&q, &q, SleepKind::Hooked);
    // A gate item holds the max_active 1 queue, so the five behind it each
    // wait for activation.
    let (open_gate, gate) = std::sync::mpsc::channel::<()>();
    limited.execute(move || wq_core::blocking(|| gate.recv().unwrap())).unwrap();
    for _ in 0..5 {
        limited.execute(|| ()).unwrap();
    }
    open_gate.send(()).unwrap();
    limited.flush().unwrap();
    let trace = rt.stop_trace();
    let json: serde_json::Value = serde_json::from_str(&trace.to_chrome_json()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("a traceEvents array");
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert_eq!(count("B"), 9, "3 timeline items, a gate and 5 others");
    assert_eq!(count("E"), 9);
    // Per track, begins and ends alternate and close.
    let mut open: HashMap<i64, i64> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "B" || e["ph"] == "E") {
        let depth = open.entry(e["tid"].as_i64().unwrap()).or_default();
        *depth += if e["ph"] == "B" { 1 } else { -1 };
        assert!((0..=1).contains(depth), "unbalanced track: {e}");
    }
    assert!(open.values().all(|d| *d == 0));
    // Every track with items is a worker's, named after it.
    let named: HashMap<i64, &str> = events
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| (e["tid"].as_i64().unwrap(), e["args"]["name"].as_str().unwrap()))
        .collect();
    for tid in open.keys() {
        assert!(named.get(tid).is_some_and(|n| n.starts_with("wq/")), "track {tid} is not a named worker: {named:?}");
    }
    let instant =
        |name: &str| events.iter().filter(|e| e["ph"] == "i" && e["name"].as_str().unwrap().starts_with(name)).count();
    assert_eq!(instant("queue_work"), 9);
    assert_eq!(instant("sleep"), 4, "the timeline's three sleeps and the gate's");
    assert_eq!(instant("wake"), 4);
    assert_eq!(instant("activate_work"), 5, "max_active 1: the five behind the gate wait for activation");
    // Recording is off again.
    q.execute(|| ()).unwrap();
    q.flush().unwrap();
    assert!(rt.stop_trace().events.is_empty());
}
