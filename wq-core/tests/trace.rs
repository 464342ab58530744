//! The timeline recorder writes valid Chrome trace-event JSON.

mod common;

use std::collections::HashMap;

use common::{one_cpu_runtime, seed_timeline, SleepKind};

#[test]
fn trace_has_one_begin_end_pair_per_item_on_worker_tracks() {
    let _cpu0 = common::cpu0();
    let rt = one_cpu_runtime();
    let q = rt.workqueue("traced").max_active(3).build().unwrap();
    let limited = rt.workqueue("limited").max_active(1).build().unwrap();
    rt.start_trace();
    seed_timeline(&q, &q, SleepKind::Hooked);
    for _ in 0..5 {
        limited.execute(|| ()).unwrap();
    }
    limited.flush().unwrap();
    let trace = rt.stop_trace();
    let json: serde_json::Value = serde_json::from_str(&trace.to_chrome_json()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("a traceEvents array");
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    let show: Vec<String> =
        events.iter().filter(|e| e["ph"] != "M").map(|e| format!("{} {} {}", e["ph"], e["name"], e["tid"])).collect();
    assert_eq!(count("B"), 8, "3 timeline items + 5 others: {show:#?}");
    assert_eq!(count("E"), 8);
    // Per track, begins and ends alternate and close.
    let mut open: HashMap<i64, i64> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "B" || e["ph"] == "E") {
        let depth = open.entry(e["tid"].as_i64().unwrap()).or_default();
        *depth += if e["ph"] == "B" { 1 } else { -1 };
        assert!((0..=1).contains(depth), "unbalanced track: {e}");
    }
    assert!(open.values().all(|d| *d == 0));
    let names: Vec<&str> =
        events.iter().filter(|e| e["ph"] == "M").map(|e| e["args"]["name"].as_str().unwrap()).collect();
    assert!(names.iter().all(|n| n.starts_with("wq/")), "{names:?}");
    assert!(names.len() >= 3, "the timeline needs three workers: {names:?}");
    let instant =
        |name: &str| events.iter().filter(|e| e["ph"] == "i" && e["name"].as_str().unwrap().starts_with(name)).count();
    assert_eq!(instant("queue_work"), 8);
    assert_eq!(instant("sleep"), 3);
    assert_eq!(instant("wake"), 3);
    assert!(instant("activate_work") >= 4, "max_active 1 makes later items wait for activation");
    // Recording is off again.
    q.execute(|| ()).unwrap();
    q.flush().unwrap();
    assert!(rt.stop_trace().events.is_empty());
}
