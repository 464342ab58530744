//! What threads a runtime keeps: the monitor, which is also the manager
//! (it creates workers and publishes counters for the `wq` tool), plus one
//! per worker. The timer thread starts with the first delayed item.
//! Threads started by other threads must not keep those threads' CPUs,
//! priority or timer slack. (Alone in its test binary: other tests'
//! runtimes would have threads of the same names.)

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
    let worker_tid = wq.submit(current_tid).unwrap().wait().unwrap();
    // A thread names itself once it first runs: wait for the monitor to have run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut names = thread_names();
    while !names.contains(&"wq/monitor".to_owned()) {
        assert!(Instant::now() < deadline, "no monitor thread: {names:?}");
        std::thread::sleep(Duration::from_millis(5));
        names = thread_names();
    }
    // Besides the monitor, only workers (`wq/<cpu>:<id>`), which the monitor started.
    let worker = |n: &str| n.strip_prefix("wq/").is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()));
    assert!(names.iter().all(|n| n == "wq/monitor" || worker(n)), "{names:?}");

    // The worker was started by the monitor (nice -10, timer slack 1 ns).
    let slack = |tid: &str| std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns")).unwrap();
    assert_eq!(slack(&worker_tid), slack(&current_tid()), "the worker kept the monitor's timer slack");
    let stat_nice = |path: String| -> i64 {
        let stat = std::fs::read_to_string(path).unwrap();
        stat.rsplit(')').next().unwrap().split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    assert_eq!(
        stat_nice(format!("/proc/{worker_tid}/stat")),
        stat_nice("/proc/thread-self/stat".into()),
        "the worker kept the monitor's priority"
    );

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
    assert_eq!(
        stat_nice(timers[0].1.join("stat").to_string_lossy().into_owned()),
        stat_nice("/proc/thread-self/stat".into()),
        "the timer thread kept its arming worker's priority"
    );
}

/// `(comm, /proc path)` of every thread of this process.
fn tasks() -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| Some((std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_owned(), t.path())))
        .collect()
}

/// The calling thread's id, as procfs names it.
fn current_tid() -> String {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().into_owned()
}
