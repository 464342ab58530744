//! What threads a runtime keeps: the manager and the monitor, plus one per
//! worker. The timer thread starts with the first delayed item, and
//! publishing counters for the `wq` tool runs on the manager. (Alone in
//! its test binary: other tests' runtimes would have threads of the same
//! names.)

use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Runtime};

fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("wq/"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_runtime_starts_its_timer_thread_with_the_first_delayed_item() {
    let rt = Runtime::builder().cpus([0]).publish(true).build().unwrap();
    let wq = rt.workqueue("q").build().unwrap();
    wq.submit(|| ()).unwrap().wait().unwrap();
    let names = thread_names();
    assert!(names.contains(&"wq/manager".to_owned()) && names.contains(&"wq/monitor".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n == "wq/timer" || n == "wq/publish"), "{names:?}");

    let (tx, rx) = std::sync::mpsc::channel();
    let dwork = DelayedWork::new(move || tx.send(Instant::now()).unwrap());
    let armed = Instant::now();
    assert!(wq.queue_delayed(&dwork, Duration::from_millis(20)));
    let fired = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(fired >= armed + Duration::from_millis(20));
    assert_eq!(thread_names().iter().filter(|n| *n == "wq/timer").count(), 1, "{:?}", thread_names());
}
