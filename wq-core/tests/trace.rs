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

/// A sleep the detector saw has its wake on the timeline, even when the
/// item ends before the monitor sees it run again (the item's end cleared
/// the sleep and recorded nothing: 3 sleeps, 0 wakes).
#[test]
fn every_detected_sleep_has_its_wake() {
    use std::time::Duration;
    use wq_core::TraceKind;
    let _cpu0 = common::cpu0();
    let rt = warmed_up(Runtime::builder().cpus([0]).detector(Detector::Procfs).publish(false).build().unwrap());
    let wq = rt.workqueue("sleepy").build().unwrap();
    rt.start_trace();
    for _ in 0..3 {
        let sleeper = wq.submit(|| std::thread::sleep(Duration::from_millis(200))).unwrap();
        let behind = wq.submit(|| ()).unwrap();
        sleeper.wait().unwrap();
        behind.wait().unwrap();
    }
    // A result is out before its item's end is recorded.
    wq.flush().unwrap();
    let trace = rt.stop_trace();
    let count = |k: TraceKind| trace.events.iter().filter(|e| e.kind == k).count();
    assert!(count(TraceKind::Sleep) >= 3, "{:?}", trace.events);
    assert_eq!(count(TraceKind::Sleep), count(TraceKind::Wake), "a sleep without its wake: {:?}", trace.events);
}

/// An item's queueing is recorded before any worker can start it (it was
/// recorded after the push, and a busy worker's start could come first).
#[test]
fn an_items_queueing_comes_before_its_start() {
    use std::sync::{mpsc, Arc};
    use wq_core::{TraceKind, Work};
    let _cpu0 = common::cpu0();
    let rt = warmed_up(Runtime::builder().cpus([0]).publish(false).build().unwrap());
    let wq = rt.workqueue("t").build().unwrap();
    let b = Arc::new(Work::new(|| ()));
    let mut bad = 0;
    for _ in 0..300 {
        rt.start_trace();
        let b2 = b.clone();
        let (tx, rx) = mpsc::channel();
        // A worker busy until B is pending takes B from the inbox at once.
        wq.execute(move || {
            tx.send(()).unwrap();
            while !b2.is_pending() {
                std::hint::spin_loop();
            }
        })
        .unwrap();
        rx.recv().unwrap();
        assert!(wq.queue_on(0, &b).unwrap());
        wq.flush().unwrap();
        let kinds: Vec<TraceKind> = rt
            .stop_trace()
            .events
            .iter()
            .map(|e| e.kind)
            .filter(|k| matches!(k, TraceKind::Queue | TraceKind::Start))
            .collect();
        if kinds != [TraceKind::Queue, TraceKind::Start, TraceKind::Queue, TraceKind::Start] {
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{bad} of 300 rounds recorded an item's start before its queueing");
}
