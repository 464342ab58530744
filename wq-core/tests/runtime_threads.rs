//! What threads a runtime keeps: the manager and the monitor, plus one per
//! worker. The timer thread starts with the first delayed item, and
//! publishing counters for the `wq` tool runs on the manager. (Alone in
//! its test binary: other tests' runtimes would have threads of the same
//! names.)

use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Flags, Runtime};

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
    let rt = Runtime::builder().publish(true).build().unwrap();
    let wq = rt.workqueue("q").build().unwrap();
    wq.submit(|| ()).unwrap().wait().unwrap();
    // A thread names itself once it first runs: wait for both to have run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut names = thread_names();
    while !(names.contains(&"wq/manager".to_owned()) && names.contains(&"wq/monitor".to_owned())) {
        assert!(Instant::now() < deadline, "no manager and monitor threads: {names:?}");
        std::thread::sleep(Duration::from_millis(5));
        names = thread_names();
    }
    assert!(!names.iter().any(|n| n == "wq/timer" || n == "wq/publish"), "{names:?}");

    // The first delayed item is armed from a highpri worker pinned to CPU 0:
    // the timer thread it starts must not keep that worker's CPU or priority.
    let (tx, rx) = std::sync::mpsc::channel();
    let dwork = DelayedWork::new(move || tx.send(Instant::now()).unwrap());
    let highpri = rt.workqueue("hi").flags(Flags::HIGHPRI).build().unwrap();
    let (wq2, dwork2) = (wq.clone(), dwork.clone());
    let armed = highpri.submit(move || (Instant::now(), wq2.queue_delayed(&dwork2, Duration::from_millis(20))));
    let (armed, queued) = armed.unwrap().wait().unwrap();
    assert!(queued);
    let fired = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(fired >= armed + Duration::from_millis(20));
    let timers: Vec<_> = tasks().into_iter().filter(|(name, _)| name == "wq/timer").collect();
    assert_eq!(timers.len(), 1, "{:?}", thread_names());
    let status = std::fs::read_to_string(timers[0].1.join("status")).unwrap();
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let cpus = |s: &str| s.lines().find(|l| l.starts_with("Cpus_allowed_list")).map(str::to_owned);
    assert_eq!(cpus(&status), cpus(&own), "the timer thread kept its arming worker's affinity");
    let stat = std::fs::read_to_string(timers[0].1.join("stat")).unwrap();
    let nice_of =
        |stat: &str| -> i64 { stat.rsplit(')').next().unwrap().split_whitespace().nth(16).unwrap().parse().unwrap() };
    let own_nice = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    assert_eq!(nice_of(&stat), own_nice, "the timer thread kept its arming worker's priority");
}

/// `(comm, /proc path)` of every thread of this process.
fn tasks() -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| Some((std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_owned(), t.path())))
        .collect()
}
